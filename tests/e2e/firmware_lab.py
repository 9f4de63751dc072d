"""Real firmware booting through proxydhcp: the lab the e2e tests and `make demo` share.

A segment in network namespaces:

    <p>br   bridge br0 (and br1 for a relayed subnet), the VMs' tap devices, tcpdump
    <p>corp the corporate DHCP server: dnsmasq, plain leases, no PXE options; it also answers
            IPv6 Router Solicitations with a bare RA (iPXE otherwise waits ~16 s for one)
    <p>pxe  proxydhcp (ProxyDHCP + its own TFTP + HTTP), started as `python -m proxydhcp serve`
    <p>relay (relay case) ISC dhcrelay between br1 (10.78.0.0/24) and br0 (10.77.0.0/24)

QEMU runs with TCG in the bridge namespace, its NIC on a tap device there:
  - UEFI: OVMF with an empty romfile, so EDK2's own PXE client boots (TFTP ipxe.efi from
    proxydhcp), then iPXE fetches proxydhcp's HTTP boot script;
  - BIOS: SeaBIOS with QEMU's iPXE ROM, which asks proxydhcp for the script straight away.
The boot script prints a marker with ${ip} on serial and `reboot`s; `-no-reboot` ends QEMU.

Nothing is made in the root namespace except the namespaces; every process is started here
and killed by PID on close. Also `python -m tests.e2e.firmware_lab ra IFACE` (the RA
responder) and `python -m tests.e2e.firmware_lab demo` (what `make demo` runs).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

from tests.netlab import Lab, have_root, run, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PY = sys.executable

QEMU = "qemu-system-x86_64"
OVMF_CODE = "/usr/share/OVMF/OVMF_CODE.fd"
OVMF_VARS = "/usr/share/OVMF/OVMF_VARS.fd"
IPXE_DIR = "/usr/lib/ipxe"

SUBNET = "10.77.0"
CORP = "10.77.0.1"
PROXY = "10.77.0.2"
RELAY_UP = "10.77.0.3"
FAR_SUBNET = "10.78.0"
RELAY_DOWN = "10.78.0.1"
HTTP_PORT = 8080

MARKER = "PROXYDHCP-E2E-OK"
MARKER_RE = re.compile(MARKER + r" ip=(\S+) mac=(\S+)")
MARKER_SCRIPT = f"""#!ipxe
echo {MARKER} ip=${{ip}} mac=${{mac}}
reboot
"""

BOOT_TIMEOUT = float(os.environ.get("PROXYDHCP_E2E_BOOT_TIMEOUT", "180"))

# Every boot measured in this process: (label, kind, seconds to marker or None, ok).
BOOT_TIMES: list[tuple[str, str, float | None, bool]] = []


def qemu_unavailable() -> str | None:
    """Why QEMU cannot run here at all (the only reason the e2e tests skip), or None."""
    if not have_root():
        return "e2e firmware boots need root and iproute2 (network namespaces, tap devices)"
    if not shutil.which(QEMU):
        return f"e2e firmware boots need {QEMU} (Debian: qemu-system-x86; `make test` installs it)"
    return None


def missing_tools() -> list[str]:
    """What the lab needs besides QEMU; `make test` / `make demo` install all of it."""
    missing = [t for t in ("dnsmasq", "tcpdump") if not shutil.which(t)]
    missing += [f for f in (OVMF_CODE, OVMF_VARS, os.path.join(IPXE_DIR, "ipxe.efi"),
                            os.path.join(IPXE_DIR, "undionly.kpxe")) if not os.path.exists(f)]
    return missing


# --------------------------------------------------------------------------------------------
# IPv6 router advertisement responder (run inside a namespace)

def ra_responder(ifname: str) -> None:
    """Answer every Router Solicitation on ifname with a bare RA (no prefix, lifetime 0):
    iPXE then ends IPv6 autoconfiguration at once instead of waiting ~16 s."""
    ifindex = socket.if_nametoindex(ifname)
    s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP,
                 socket.inet_pton(socket.AF_INET6, "ff02::2") + struct.pack("@I", ifindex))
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, ifindex)
    ra = struct.pack("!BBHBBHII", 134, 0, 0, 0, 0, 0, 0, 0)  # kernel fills the checksum
    print(f"RA responder on {ifname}", flush=True)
    while True:
        data, addr = s.recvfrom(2048)
        if data and data[0] == 133:
            for _ in range(20):   # our link-local address may still be in DAD
                try:
                    s.sendto(ra, ("ff02::1", 0, 0, ifindex))
                    print(f"RA sent for RS from {addr[0]}", flush=True)
                    break
                except OSError:
                    time.sleep(0.1)


# --------------------------------------------------------------------------------------------
# The lab


@dataclasses.dataclass
class Boot:
    label: str
    kind: str                 # uefi | bios
    mac: str
    started: float            # time.time() when QEMU was started
    marker_after: float | None  # seconds from QEMU start to the marker on serial
    ended_after: float        # seconds until QEMU exited (or was stopped)
    exit_code: int | None
    serial: str
    ip: str | None            # ${ip} printed by the boot script
    serial_path: str

    @property
    def ok(self) -> bool:
        return self.marker_after is not None


class FirmwareLab:
    """One lab: corporate DHCP + proxydhcp (+ optional relayed subnet) on a bridge; boot VMs.

    same_host: dnsmasq (the corporate server) runs in proxydhcp's namespace, both on UDP 67.
    relay: a second bridge br1 with subnet 10.78.0.0/24 behind ISC dhcrelay.
    config_yaml: YAML appended to proxydhcp's config (which otherwise sets only state.dir and
    log.level over the built-in defaults), e.g. TEST_CONFIG or DEMO_CONFIG.
    """

    def __init__(self, workdir: str, *, same_host: bool = False, relay: bool = False,
                 config_yaml: str | None = None, record: str | None = None) -> None:
        self.workdir = workdir
        os.makedirs(workdir, exist_ok=True)
        self.same_host, self.relay = same_host, relay
        self.config_yaml = config_yaml
        self.record = record
        self.lab: Lab | None = None
        self.captures: list[str] = []
        self.boots: list[Boot] = []
        self.proxy_log = os.path.join(workdir, "proxydhcp.log")
        self.corp_leases = os.path.join(workdir, "corp.leases")
        self.proxy_cfg = os.path.join(workdir, "proxydhcp.yaml")
        # The daemon drops to an unprivileged user after binding: its state dir must be
        # reachable by that user, which a 0700 temp tree (pytest's, mkdtemp's) is not. It is
        # moved into the workdir on close, for the post-mortem.
        self.state_dir = tempfile.mkdtemp(prefix="proxydhcp-state-")
        os.chmod(self.state_dir, 0o755)
        self._taps = 0
        self.plain_macs: tuple = ()

    # -- helpers ----------------------------------------------------------------------------
    def _log_file(self, name: str):
        return open(os.path.join(self.workdir, name), "wb")

    def _record(self, line: str) -> None:
        """With record=PATH, note what must be undone (tools/demo's trap reads it)."""
        if self.record:
            with open(self.record, "a") as fh:
                fh.write(line + "\n")

    def spawn(self, ns: str, name: str, *argv: str, **kw) -> subprocess.Popen:
        with self._log_file(name + ".log") as out:   # the child keeps its own copy
            proc = self.lab.spawn(ns, *argv, stdout=out, stderr=subprocess.STDOUT, **kw)
        proc.log_path = out.name
        self._record(f"pid {proc.pid}")
        return proc

    def sh(self, ns: str, command: str) -> str:
        return self.lab.sh(ns, command).stdout

    def _veth(self, ns: str, ifname: str, bridge: str, address: str | None) -> None:
        peer = f"v{self._taps}{ns[-6:]}{ifname}"[:15]
        self._taps += 1
        run("ip", "link", "add", ifname, "netns", ns, "type", "veth", "peer", "name", peer,
            "netns", self.lab.bridge_ns)
        self.sh(self.lab.bridge_ns, f"ip link set {peer} master {bridge} && ip link set {peer} up")
        self.sh(ns, f"ip link set {ifname} up")
        if address:
            self.sh(ns, f"ip addr add {address} dev {ifname}")

    # -- building ---------------------------------------------------------------------------
    def start(self) -> "FirmwareLab":
        self.lab = Lab(SUBNET)
        self._record(f"prefix {self.lab.prefix}")
        br = self.lab.bridge_ns
        self.sh(br, "ip link set br0 type bridge mcast_snooping 0")
        if self.relay:
            self.sh(br, "ip link add br1 type bridge mcast_snooping 0 && ip link set br1 up")
        self.pxe_ns = self.lab.host("pxe", f"{PROXY}/24")
        self.corp_ns = self.pxe_ns if self.same_host else self.lab.host("corp", f"{CORP}/24")
        self.corp_ip = PROXY if self.same_host else CORP
        if self.relay:
            self.relay_ns = self.lab._netns("relay")
            self.sh(self.relay_ns, "ip link set lo up")
            self._veth(self.relay_ns, "eth0", "br0", f"{RELAY_UP}/24")
            self._veth(self.relay_ns, "eth1", "br1", f"{RELAY_DOWN}/24")
            self.sh(self.relay_ns, "sysctl -qw net.ipv4.ip_forward=1")
            for ns in {self.pxe_ns, self.corp_ns}:
                self.sh(ns, f"ip route add {FAR_SUBNET}.0/24 via {RELAY_UP}")

        for bridge in (["br0", "br1"] if self.relay else ["br0"]):
            path = os.path.join(self.workdir, f"{bridge}.pcap")
            proc = self.spawn(br, f"tcpdump-{bridge}", "tcpdump", "-U", "--immediate-mode", "-Z", "root",
                              "-n", "-i", bridge, "-w", path)
            if not wait_for(lambda: "listening on" in _read(proc.log_path) or proc.poll() is not None, 15) \
                    or proc.poll() is not None:
                raise RuntimeError(f"tcpdump on {bridge} did not start: {_read(proc.log_path)}")
            self.captures.append(path)

        # IPv6: a bare RA for iPXE's Router Solicitation on each client segment.
        self.spawn(self.corp_ns, "ra-br0", PY, "-m", "tests.e2e.firmware_lab", "ra", "eth0", cwd=ROOT)
        if self.relay:
            self.spawn(self.relay_ns, "ra-br1", PY, "-m", "tests.e2e.firmware_lab", "ra", "eth1", cwd=ROOT)

        if self.same_host:
            self._start_proxydhcp()     # first: dnsmasq must still get UDP 67 after us
            self._start_corp_dhcp()
        else:
            self._start_corp_dhcp()
            self._start_proxydhcp()
        if self.relay:
            self.dhcrelay = self.spawn(self.relay_ns, "dhcrelay", "dhcrelay", "-4", "-d", "-pf",
                                       os.path.join(self.workdir, "dhcrelay.pid"), "-iu", "eth0", "-id", "eth1",
                                       CORP, PROXY)
            ok = wait_for(lambda: "Sending on" in _read(self.dhcrelay.log_path) or self.dhcrelay.poll() is not None,
                          10)
            if not ok or self.dhcrelay.poll() is not None:
                raise RuntimeError(f"dhcrelay did not start:\n{_read(self.dhcrelay.log_path)}")
        return self

    def _start_corp_dhcp(self) -> None:
        argv = ["dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0", "--user=root", "--no-ping",
                "--log-dhcp", f"--dhcp-leasefile={self.corp_leases}",
                f"--pid-file={os.path.join(self.workdir, 'corp-dnsmasq.pid')}",
                f"--dhcp-range={SUBNET}.100,{SUBNET}.150,255.255.255.0,1h"]
        if self.relay:
            argv += [f"--dhcp-range=set:far,{FAR_SUBNET}.100,{FAR_SUBNET}.150,255.255.255.0,1h",
                     f"--dhcp-option=tag:far,option:router,{RELAY_DOWN}"]
        self.corp = self.spawn(self.corp_ns, "corp-dnsmasq", *argv)
        ok = wait_for(lambda: "DHCP, IP range" in _read(self.corp.log_path) or self.corp.poll() is not None, 10)
        if not ok or self.corp.poll() is not None:
            raise RuntimeError(f"corporate dnsmasq did not start:\n{_read(self.corp.log_path)}")

    def _start_proxydhcp(self) -> None:
        base = (f"state: {{dir: {self.state_dir}}}\n"
                f"log: {{level: info}}\n")
        with open(self.proxy_cfg, "w") as fh:
            fh.write(base + (self.config_yaml or ""))
        with open(self.proxy_log, "wb") as log:
            self.proxy = self.lab.spawn(self.pxe_ns, PY, "-m", "proxydhcp", "serve", "-c", self.proxy_cfg,
                                        stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        self.proxy.log_path = self.proxy_log
        self._record(f"pid {self.proxy.pid}")
        # "running" comes once every service (DHCP, TFTP, HTTP) has started
        ok = wait_for(lambda: (" running (config:" in _read(self.proxy_log) and "listening on eth0" in _read(self.proxy_log))
                      or self.proxy.poll() is not None, 30)
        if not ok or self.proxy.poll() is not None:
            raise RuntimeError(f"proxydhcp did not start:\n{_read(self.proxy_log)}")

    def plain_client(self, mac: str = "52:54:00:00:ee:01") -> str:
        """A non-PXE DHCP client (busybox udhcpc) on the segment gets its lease; returns its MAC."""
        ns = self.lab.host("plain", None)
        self.sh(ns, f"ip link set eth0 address {mac}")
        out = self.lab.sh(ns, "udhcpc -i eth0 -n -q -f -t 5 -T 1 -s /bin/true", check=False)
        if f"obtained from {self.corp_ip}" not in out.stdout + out.stderr:
            raise RuntimeError(f"the plain DHCP client got no lease:\n{out.stdout}{out.stderr}")
        return mac

    # -- booting ----------------------------------------------------------------------------
    def boot(self, kind: str, mac: str, label: str | None = None, bridge: str = "br0",
             uuid: str | None = None, timeout: float = BOOT_TIMEOUT,
             until: re.Pattern = MARKER_RE, ends_itself: bool = True) -> Boot:
        """Boot a VM until `until` shows on its serial console (by default the marker that
        the boot script prints with ${ip} and ${mac}). ends_itself: the VM resets after the
        marker (-no-reboot then ends QEMU), so give it a moment; else stop it at once."""
        label = label or kind
        fname = re.sub(r"[^A-Za-z0-9_.-]", "-", label)
        br = self.lab.bridge_ns
        tap = f"tap{len(self.boots)}"
        self.sh(br, f"ip tuntap add dev {tap} mode tap && ip link set {tap} master {bridge} && ip link set {tap} up")
        serial = os.path.join(self.workdir, f"serial-{fname}.log")
        argv = [QEMU, "-accel", "tcg", "-machine", "pc,graphics=off", "-display", "none", "-no-reboot",
                "-serial", f"file:{serial}", "-monitor", "none", "-nodefaults",
                "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no"]
        if uuid:
            argv += ["-uuid", uuid]
        if kind in ("uefi", "uefi-ipxe-rom"):
            # uefi: empty romfile, EDK2's own PXE client; uefi-ipxe-rom: QEMU's iPXE EFI ROM
            vars_copy = os.path.join(self.workdir, f"OVMF_VARS-{fname}.fd")
            shutil.copyfile(OVMF_VARS, vars_copy)
            romfile = ",romfile=" if kind == "uefi" else ""
            argv += ["-m", "256",
                     "-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
                     "-drive", f"if=pflash,format=raw,file={vars_copy}",
                     "-device", f"virtio-net-pci,netdev=n0,mac={mac}{romfile}"]
        elif kind == "bios":
            argv += ["-m", "128", "-boot", "n", "-device", f"virtio-net-pci,netdev=n0,mac={mac}"]
        else:
            raise ValueError(kind)
        started = time.time()
        vm = self.spawn(br, f"qemu-{fname}", *argv)
        marker_after = None
        ip = vmac = None
        deadline = started + timeout
        while time.time() < deadline:
            m = until.search(_read(serial))
            if m:
                marker_after = time.time() - started
                if until is MARKER_RE:
                    ip, vmac = m.group(1), m.group(2)
                break
            if vm.poll() is not None:
                break
            time.sleep(0.1)
        try:   # the script reboots: -no-reboot ends QEMU
            vm.wait(15 if marker_after is not None and ends_itself else 0.1)
        except subprocess.TimeoutExpired:
            pass
        self.lab.stop(vm)
        ended_after = time.time() - started
        self.sh(br, f"ip link del {tap}")
        b = Boot(label, kind, mac, started, marker_after, ended_after, vm.returncode, _read(serial), ip, serial)
        self.boots.append(b)
        BOOT_TIMES.append((label, kind, marker_after, b.ok))
        return b

    # -- reading what happened --------------------------------------------------------------
    def capture(self) -> "Capture":
        time.sleep(0.3)  # tcpdump -U writes each packet; give the last ones a moment
        return Capture(self.captures)

    def sessions(self, mac: str) -> str:
        out = run(PY, "-m", "proxydhcp", "sessions", "--db", os.path.join(self.state_dir, "events.sqlite"),
                  "--mac", mac, check=False, cwd=ROOT)
        return (out.stdout + out.stderr).strip()

    def close(self) -> None:
        if self.lab is not None:
            self.lab.close()
            self.lab = None
            self._record("closed")
        if os.path.isdir(self.state_dir) and not self.state_dir.startswith(self.workdir):
            kept = os.path.join(self.workdir, "state")
            shutil.rmtree(kept, ignore_errors=True)
            shutil.move(self.state_dir, kept)
            self.state_dir = kept

    def __enter__(self) -> "FirmwareLab":
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc) -> None:
        self.close()


def _plain(text: str) -> str:
    """Serial output without ANSI escapes and carriage-return overprints."""
    text = re.sub(r"\x1b\[[0-9;?=]*[A-Za-z]", "", text)
    return "\n".join(line.split("\r")[-1] if line.rstrip("\r") else "" for line in text.split("\n"))


def _text(raw: bytes) -> str:
    return raw.rstrip(b"\0").decode(errors="replace")


def _read(path: str) -> str:
    try:
        with open(path, errors="replace") as fh:
            return fh.read()
    except FileNotFoundError:
        return ""


# --------------------------------------------------------------------------------------------
# The capture, decoded with dpkt (independent of proxydhcp's own codec)


@dataclasses.dataclass
class DHCPPacket:
    time: float
    src: str
    sport: int
    dst: str
    dport: int
    op: int
    msg: str
    xid: int
    chaddr: str
    ciaddr: str
    yiaddr: str
    siaddr: str
    giaddr: str
    file: str
    options: dict

    @property
    def vendor_class(self) -> str:
        return self.options.get(60, b"").decode("latin-1")

    @property
    def user_class(self) -> bytes:
        return self.options.get(77, b"")

    @property
    def is_pxe(self) -> bool:
        return self.vendor_class.startswith(("PXEClient", "HTTPClient"))

    @property
    def is_ipxe(self) -> bool:
        return b"iPXE" in self.user_class or 175 in self.options

    @property
    def arch(self) -> int | None:
        v = self.options.get(93)
        return int.from_bytes(v[:2], "big") if v and len(v) >= 2 else None

    @property
    def server_id(self) -> str | None:
        v = self.options.get(54)
        return socket.inet_ntoa(v) if v and len(v) == 4 else None


@dataclasses.dataclass
class TFTPTransfer:
    time: float
    client: str
    cport: int
    server: str
    filename: str
    options: dict
    oack: dict | None = None
    blocks: set = dataclasses.field(default_factory=set)
    bytes: int = 0
    complete: bool = False
    error: str | None = None
    end: float | None = None


@dataclasses.dataclass
class HTTPRequest:
    time: float
    client: str
    server: str
    dport: int
    line: str
    status: str | None = None


MSG = {1: "DISCOVER", 2: "OFFER", 3: "REQUEST", 4: "DECLINE", 5: "ACK", 6: "NAK", 7: "RELEASE", 8: "INFORM"}


class Capture:
    def __init__(self, paths: list[str]) -> None:
        import dpkt
        self.dhcp: list[DHCPPacket] = []
        self.tftp: list[TFTPTransfer] = []
        self.http: list[HTTPRequest] = []
        self.ra = 0
        self.rs = 0
        frames = []
        for path in paths:
            with open(path, "rb") as fh:
                try:
                    for ts, frame in dpkt.pcap.Reader(fh):
                        frames.append((ts, frame))
                except (ValueError, dpkt.NeedData):
                    pass   # a truncated last record
        frames.sort(key=lambda f: f[0])
        seen = set()
        transfers: dict[tuple, TFTPTransfer] = {}
        for ts, frame in frames:
            eth = dpkt.ethernet.Ethernet(frame)
            ip = eth.data
            if isinstance(ip, dpkt.ip6.IP6) and isinstance(ip.data, dpkt.icmp6.ICMP6):
                self.rs += ip.data.type == 133
                self.ra += ip.data.type == 134
                continue
            if not isinstance(ip, dpkt.ip.IP):
                continue
            # the relay case captures two bridges: a routed packet shows up on both (TTL apart)
            key = (ip.src, ip.dst, ip.id, ip.p, bytes(ip.data))
            if key in seen:
                continue
            seen.add(key)
            src, dst = socket.inet_ntoa(ip.src), socket.inet_ntoa(ip.dst)
            l4 = ip.data
            if isinstance(l4, dpkt.udp.UDP):
                payload = bytes(l4.data)
                if {l4.sport, l4.dport} & {67, 68, 4011} and len(payload) >= 240:
                    self._dhcp(ts, src, l4.sport, dst, l4.dport, payload)
                elif l4.dport == 69 and len(payload) > 2 and payload[1] == 1:
                    parts = payload[2:].split(b"\0")
                    opts = {parts[i].decode().lower(): parts[i + 1].decode() for i in range(2, len(parts) - 1, 2)
                            if parts[i]}
                    t = TFTPTransfer(ts, src, l4.sport, dst, parts[0].decode(errors="replace"), opts)
                    transfers[(src, l4.sport)] = t
                    self.tftp.append(t)
                elif (dst, l4.dport) in transfers and len(payload) >= 4:
                    t = transfers[(dst, l4.dport)]
                    op = payload[1]
                    if op == 6:
                        parts = payload[2:].split(b"\0")
                        t.oack = {parts[i].decode().lower(): parts[i + 1].decode() for i in range(0, len(parts) - 1, 2)}
                    elif op == 3:
                        # A window sent with UDP GSO is one super-datagram on the capture: the
                        # kernel cuts it into DATA packets of 4 + blksize bytes later on.
                        blksize = int((t.oack or {}).get("blksize", 512))
                        for at in range(0, len(payload), 4 + blksize):
                            packet = payload[at:at + 4 + blksize]
                            block = struct.unpack("!H", packet[2:4])[0]
                            data = packet[4:]
                            if block not in t.blocks:
                                t.blocks.add(block)
                                t.bytes += len(data)
                            if len(data) < blksize:
                                t.complete, t.end = True, ts
                    elif op == 5:
                        t.error, t.end = f"server ERROR {payload[3]} {_text(payload[4:])}", ts
                elif (src, l4.sport) in transfers and len(payload) >= 4 and payload[1] == 5:
                    t = transfers[(src, l4.sport)]
                    t.error, t.end = f"client ERROR {payload[3]} {_text(payload[4:])}", ts
            elif isinstance(l4, dpkt.tcp.TCP) and l4.data:
                data = bytes(l4.data)
                if data.startswith((b"GET ", b"HEAD ")):
                    line = data.split(b"\r\n", 1)[0].decode(errors="replace")
                    self.http.append(HTTPRequest(ts, src, dst, l4.dport, line))
                elif data.startswith(b"HTTP/"):
                    for req in reversed(self.http):
                        if req.client == dst and req.server == src and req.status is None:
                            req.status = data.split(b"\r\n", 1)[0].decode(errors="replace")
                            break

    def _dhcp(self, ts, src, sport, dst, dport, payload) -> None:
        import dpkt
        try:
            d = dpkt.dhcp.DHCP(payload)
        except (dpkt.UnpackError, dpkt.NeedData):
            return
        opts = {}
        for code, value in d.opts:
            opts[code] = opts.get(code, b"") + bytes(value)
        msg = MSG.get(opts.get(53, b"\0")[0], "?")
        a = lambda n: socket.inet_ntoa(struct.pack("!I", n))  # noqa: E731
        self.dhcp.append(DHCPPacket(ts, src, sport, dst, dport, d.op, msg, d.xid, bytes(d.chaddr[:6]).hex(":"),
                                    a(d.ciaddr), a(d.yiaddr), a(d.siaddr), a(d.giaddr),
                                    bytes(d.file).rstrip(b"\0").decode(errors="replace"), opts))

    # -- queries ----------------------------------------------------------------------------
    def for_mac(self, mac: str) -> list[DHCPPacket]:
        return [p for p in self.dhcp if p.chaddr == mac]

    def from_server(self, server: str) -> list[DHCPPacket]:
        """Replies a server sent (by IP source, ports 67/4011): before a relay or after it."""
        return [p for p in self.dhcp if p.op == 2 and p.src == server]

    def request_of(self, reply: DHCPPacket) -> DHCPPacket | None:
        """The client request this reply answers (same xid and MAC, latest before it)."""
        reqs = [p for p in self.dhcp if p.op == 1 and p.xid == reply.xid and p.chaddr == reply.chaddr
                and p.time <= reply.time]
        return reqs[-1] if reqs else None


# --------------------------------------------------------------------------------------------
# Stage-by-stage account of one boot (demo output, and test failure messages)


def stages(boot: Boot, cap: Capture, proxy: str = PROXY) -> list[str]:
    t0 = boot.started
    lines = []

    def at(t: float, text: str) -> None:
        lines.append(f"  +{t - t0:6.2f} s  {text}")

    events = []
    client_ips = set()
    for p in cap.for_mac(boot.mac):
        if p.time < t0:
            continue
        if p.op == 1:
            who = "iPXE" if p.is_ipxe else ("EDK2 PXE" if p.arch and p.arch >= 6 else "PXE ROM") if p.is_pxe else "client"
            where = f" to {p.dst}:{p.dport}" if p.dst != "255.255.255.255" else ""
            relay = f" (relayed by {p.giaddr})" if p.giaddr != "0.0.0.0" else ""
            events.append((p.time, f"{who} DHCP{p.msg}{where}{relay}  arch {p.arch}  option 60 {p.vendor_class!r}"))
        else:
            if p.yiaddr != "0.0.0.0":
                client_ips.add(p.yiaddr)
                what = f"address {p.yiaddr}"
            else:
                what = "no address" + (f", boot file {p.file!r}" if p.file else ", no boot file (ask on 4011)"
                                       if p.sport == 67 else "")
            origin = p.server_id or p.src
            name = "proxydhcp" if origin == proxy and p.yiaddr == "0.0.0.0" and 51 not in p.options \
                else f"DHCP server {origin}"
            if p.giaddr != "0.0.0.0" and p.src == p.giaddr:
                events.append((p.time, f"relay {p.src} passes {name}'s DHCP{p.msg} on to the client"))
                continue
            via = f" to relay {p.dst}" if p.giaddr != "0.0.0.0" and p.dst == p.giaddr else ""
            events.append((p.time, f"{name} DHCP{p.msg} from port {p.sport}{via}: {what}"))
    for t in cap.tftp:
        if t.client in client_ips and t.time >= t0:
            if t.complete:
                text = f"TFTP {t.filename} from {t.server}: {t.bytes} bytes in {t.end - t.time:.2f} s"
            elif t.error:
                text = f"TFTP {t.filename} from {t.server}: {t.error}" + (
                    " (size probe)" if "ERROR 8" in t.error and "tsize" in t.options else "")
            else:
                text = f"TFTP {t.filename} from {t.server}: incomplete ({t.bytes} bytes)"
            events.append((t.time, text))
    for h in cap.http:
        if h.client in client_ips and h.time >= t0:
            events.append((h.time, f"HTTP {h.line} -> {h.status or 'no answer seen'}"))
    for t, text in sorted(events):
        at(t, text)
    if boot.ok:
        lines.append(f"  +{boot.marker_after:6.2f} s  boot script ran: serial shows '{MARKER} ip={boot.ip}'")
    else:
        lines.append(f"  no marker on serial after {boot.ended_after:.1f} s (QEMU exit code {boot.exit_code})")
    return lines


# --------------------------------------------------------------------------------------------
# Assertions shared by the tests (each returns a list of problems; empty means fine)


def proxy_replies(cap: Capture, proxy: str = PROXY, corp: str = CORP) -> list[DHCPPacket]:
    """Every reply proxydhcp sent. When the corporate dnsmasq shares its address (same
    namespace), dnsmasq's replies are told apart by the lease time (option 51) they carry."""
    return [r for r in cap.from_server(proxy) if proxy != corp or 51 not in r.options]


def check_proxy_discipline(cap: Capture, proxy: str = PROXY, corp: str = CORP,
                           plain_macs: tuple = ()) -> list[str]:
    """proxydhcp never offered an address and never answered a non-PXE client."""
    problems = []
    replies = proxy_replies(cap, proxy, corp)
    if not replies:
        problems.append("proxydhcp sent no reply at all in the capture")
    for mac in plain_macs:
        if not [p for p in cap.for_mac(mac) if p.op == 1]:
            problems.append(f"the plain DHCP client {mac} sent nothing (the check would prove nothing)")
        if [r for r in replies if r.chaddr == mac]:
            problems.append(f"proxydhcp answered the plain DHCP client {mac}")
    for r in replies:
        if r.yiaddr != "0.0.0.0":
            problems.append(f"proxydhcp sent {r.msg} with yiaddr {r.yiaddr} to {r.chaddr}")
        req = cap.request_of(r)
        if req is None:
            problems.append(f"proxydhcp {r.msg} xid {r.xid:08x} to {r.chaddr} answers no request in the capture")
        elif not req.is_pxe:
            problems.append(f"proxydhcp answered a non-PXE {req.msg} from {r.chaddr} (option 60 {req.vendor_class!r})")
        if r.msg in ("NAK",):
            problems.append(f"proxydhcp sent a NAK to {r.chaddr}")
    return problems


def check_boot(boot: Boot, cap: Capture, *, corp: str = CORP, proxy: str = PROXY,
               relay: str | None = None) -> list[str]:
    """What the firmware did, from the capture and the serial log."""
    problems = []
    pkts = [p for p in cap.for_mac(boot.mac) if p.time >= boot.started]
    if not boot.ok:
        problems.append(f"no marker on serial within the timeout (QEMU exit {boot.exit_code}); serial tail:\n"
                        + _plain(boot.serial)[-1500:])
    leases = {p.yiaddr for p in pkts if p.op == 2 and p.msg == "ACK" and p.yiaddr != "0.0.0.0"
              and p.server_id == corp}
    if not leases:
        problems.append(f"no DHCPACK with an address from the corporate server {corp}")
    if boot.ip and boot.ip not in leases:
        problems.append(f"the boot script saw ip {boot.ip}, not the corporate lease {sorted(leases)}")
    mine = [p for p in proxy_replies(cap, proxy, corp) if p.chaddr == boot.mac and p.time >= boot.started]
    if not mine:
        problems.append("no reply from proxydhcp to this client")
    for r in mine:
        req = cap.request_of(r)
        if req is not None and 97 in req.options and r.options.get(97) != req.options[97]:
            problems.append(f"proxydhcp {r.msg} did not echo option 97 byte for byte")
    if relay:
        to_relay = [p for p in mine if p.sport == 67 and p.dst == relay and p.dport == 67 and p.giaddr == relay]
        if not to_relay:
            problems.append(f"proxydhcp sent no offer to the relay {relay}:67")
    ipxe_offers = [p for p in mine if p.file.startswith(f"http://{proxy}:")]
    if not ipxe_offers:
        problems.append("proxydhcp never handed iPXE the HTTP script URL")
    http = [h for h in cap.http if h.client in leases and h.server == proxy and "/boot.ipxe" in h.line
            and h.time >= boot.started]
    if not http:
        problems.append("no HTTP GET /boot.ipxe from the client to proxydhcp in the capture")
    elif not any(h.status and " 200" in h.status for h in http):
        problems.append(f"boot script request not answered 200: {[(h.line, h.status) for h in http]}")
    elif boot.ip and not any(f"&ip={boot.ip} " in h.line for h in http):
        # the script URL asks iPXE for ${netX/ip}: iPXE expands it in the boot file name
        problems.append(f"iPXE did not send its address ({boot.ip}) in the script URL: {[h.line for h in http]}")
    if boot.kind == "uefi":
        first = next((p for p in pkts if p.op == 1), None)
        if first is None or first.is_ipxe or first.arch != 7:
            problems.append("the first DHCP request was not EDK2's own PXE client (arch 7, no iPXE user-class)")
        acks = [p for p in mine if p.sport == 4011 and p.msg == "ACK" and p.file]
        if not acks:
            problems.append("proxydhcp sent no 4011 ACK with a boot file to EDK2")
        want = acks[0].file if acks else "ipxe.efi"
        size = os.path.getsize(os.path.join(IPXE_DIR, want)) if os.path.exists(os.path.join(IPXE_DIR, want)) else None
        done = [t for t in cap.tftp if t.client in leases and t.server == proxy and t.filename == want and t.complete
                and t.time >= boot.started]
        if not done:
            problems.append(f"no complete TFTP transfer of {want} from proxydhcp ({proxy}:69) to the client")
        elif size is not None and done[0].bytes != size:
            problems.append(f"TFTP {want}: {done[0].bytes} bytes, the file has {size}")
    return problems


# --------------------------------------------------------------------------------------------
# `python -m tests.e2e.firmware_lab demo`


# proxydhcp's built-in defaults plus one profile for the demo VMs (policy format: profiles
# and groups, see the README); {{ name }} is proxydhcp's template, ${name} is iPXE's own.
DEMO_CONFIG = f"""
profiles:
  demo:
    description: proxydhcp demo
    script: |
      #!ipxe
      echo
      echo proxydhcp demo: group {{{{ group }}}}, arch {{{{ arch_name }}}}, firmware {{{{ firmware }}}}
      echo proxydhcp demo: ${{mac}} kept its corporate lease ${{ip}}
      echo {MARKER} ip=${{ip}} mac=${{mac}}
      reboot
groups:
  - name: demo-vms
    profile: demo
    selectors: {{mac: ["52:54:00:de:00:*"]}}
"""

# For the tests: every machine gets the marker script (a default group, no selectors).
TEST_CONFIG = f"""
profiles:
  marker:
    script: |
      #!ipxe
      echo {MARKER} ip=${{ip}} mac=${{mac}}
      reboot
groups:
  - name: everyone
    profile: marker
"""


def demo(argv: list[str]) -> int:
    reason = qemu_unavailable()
    if reason:
        print(f"demo: {reason}", file=sys.stderr)
        return 2
    missing = missing_tools()
    if missing:
        print(f"demo: missing {', '.join(missing)} (make demo installs them)", file=sys.stderr)
        return 2
    keep = "--keep" in argv
    record = argv[argv.index("--record") + 1] if "--record" in argv else None
    workdir = tempfile.mkdtemp(prefix="proxydhcp-demo-")
    lab = FirmwareLab(workdir, config_yaml=DEMO_CONFIG, record=record)
    if not keep:
        lab._record(f"workdir {workdir}")

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    failed = []
    try:
        print("proxydhcp demo: building the lab (network namespaces; nothing outside them)")
        print(f"  corporate DHCP {CORP}: dnsmasq, plain leases {SUBNET}.100-150, no PXE options")
        print(f"  proxydhcp {PROXY}: built-in default config + a 'demo' profile; ProxyDHCP 67/4011, "
              f"TFTP 69 ({IPXE_DIR}), HTTP {HTTP_PORT}")
        lab.start()
        vms = [("uefi", "52:54:00:de:00:01", "6e65746c-6162-4000-8000-00000000de01",
                "UEFI VM (OVMF, EDK2's own PXE client)"),
               ("bios", "52:54:00:de:00:02", "6e65746c-6162-4000-8000-00000000de02",
                "BIOS VM (SeaBIOS + QEMU's iPXE ROM)")]
        for kind, mac, uuid, title in vms:
            print(f"\n== {title}, MAC {mac}: booting (QEMU TCG, up to {BOOT_TIMEOUT:.0f} s)", flush=True)
            boot = lab.boot(kind, mac, label=kind, uuid=uuid)
            cap = lab.capture()
            print("  what went over the wire (times from QEMU start; capture of the segment):")
            print("\n".join(stages(boot, cap)))
            said = [line.strip() for line in _plain(boot.serial).splitlines()
                    if line.strip().startswith(("proxydhcp demo:", ">>Start PXE", "Downloading NBP", "NBP file",
                                                "iPXE initialising", "Configuring (net0", "http://"))]
            if said:
                print("  what the VM printed on its serial console (excerpt):")
                print("\n".join("    " + line[:150] for line in said))
            print("  proxydhcp sessions --mac " + mac + ":")
            print("\n".join("    " + line for line in lab.sessions(mac).splitlines()))
            if boot.ok:
                print(f"  RESULT: booted in {boot.marker_after:.1f} s (QEMU start -> boot script marker)")
            else:
                failed.append(kind)
                print(f"  RESULT: FAILED, no boot script after {boot.ended_after:.1f} s; serial tail:")
                print("\n".join("    " + line for line in _plain(boot.serial).strip().splitlines()[-15:]))
                print("  proxydhcp log tail:")
                print("\n".join("    " + line for line in _read(lab.proxy_log).strip().splitlines()[-15:]))
        problems = check_proxy_discipline(lab.capture())
        print()
        print("proxydhcp never offered an address and answered only PXE clients" if not problems
              else "PROBLEMS:\n  " + "\n  ".join(problems))
        if problems:
            failed.append("discipline")
    except KeyboardInterrupt:
        print("\ndemo: interrupted", file=sys.stderr)
        failed.append("interrupted")
    except Exception as exc:   # noqa: BLE001
        print(f"\ndemo: {exc}", file=sys.stderr)
        failed.append("error")
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        lab.close()
        if keep:
            print(f"demo: logs and captures kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    print("\ndemo: " + ("both VMs booted through proxydhcp; lab removed" if not failed
                        else f"FAILED ({', '.join(failed)}); lab removed"))
    return 1 if failed else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["ra"]:
        ra_responder(sys.argv[2])
    elif sys.argv[1:2] == ["demo"]:
        sys.exit(demo(sys.argv[2:]))
    else:
        print("usage: python -m tests.e2e.firmware_lab ra IFACE | demo [--keep]", file=sys.stderr)
        sys.exit(2)
