"""ProxyDHCP beside a real DHCP server, in network namespaces.

A corporate dnsmasq hands out addresses; proxydhcp runs beside it (in another namespace,
and in a second case in the same namespace, both on UDP 67). A real DHCP client (udhcpc)
gets its lease and nothing from proxydhcp; scripted PXE clients of each kind get exactly
the replies PROTOCOL.md describes, checked with dpkt (an independent decoder).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile

import dpkt
import pytest

from proxydhcp.dhcp import pxe
from tests.dhcp_clients import UUID
from tests.netlab import Lab, have_root, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PY = sys.executable
PROXY = "10.77.0.2"

pytestmark = pytest.mark.skipif(
    not have_root() or not shutil.which("dnsmasq") or not shutil.which("udhcpc"),
    reason="needs root, iproute2, dnsmasq and udhcpc (make test installs them)")

CONFIG = """
dhcp: {interfaces: [eth0]}
tftp: {enabled: false}
http: {enabled: false, port: 8080}
state: {dir: %s}
log: {level: debug}
"""


def start_dnsmasq(lab: Lab, ns: str, workdir: str, name: str):
    return lab.spawn(ns, "dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0", "--user=root",
                     "--dhcp-range=10.77.0.100,10.77.0.150,255.255.255.0,1h", "--no-ping",
                     f"--dhcp-leasefile={workdir}/{name}.leases", "--log-dhcp", f"--pid-file={workdir}/{name}.pid")


def start_proxydhcp(lab: Lab, ns: str, workdir: str):
    cfg = os.path.join(workdir, "proxydhcp.yaml")
    with open(cfg, "w") as fh:
        fh.write(CONFIG % os.path.join(workdir, "state"))
    log = open(os.path.join(workdir, "proxydhcp.log"), "w")
    proc = lab.spawn(ns, PY, "-m", "proxydhcp", "serve", "-c", cfg, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    ok = wait_for(lambda: "listening on eth0" in open(log.name).read() or proc.poll() is not None, 15)
    assert ok and proc.poll() is None, open(log.name).read()
    return proc, log.name


def pxe_client(lab: Lab, ns: str, kind: str, *args: str, wait: float = 1.5) -> list[dict]:
    out = lab.sh(ns, " ".join([f"cd {ROOT} &&", PY, "-m", "tests.pxe_client", kind, "--wait", str(wait), *args]))
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def dhcp(reply: dict) -> dpkt.dhcp.DHCP:
    return dpkt.dhcp.DHCP(bytes.fromhex(reply["hex"]))


def opts(d: dpkt.dhcp.DHCP) -> dict:
    return {code: value for code, value in d.opts}


SENT_UUID = pxe.encode_uuid(UUID)   # option 97 every scripted client sends


def proxy_reply(r: dict, message: int, vendor: bytes = b"PXEClient", address: str = PROXY) -> dpkt.dhcp.DHCP:
    """What every proxydhcp reply must be, read by dpkt: a BOOTREPLY OFFER or ACK of at least
    300 bytes, yiaddr 0, siaddr and 54 our address, 60 the client's family, 97 echoed byte for
    byte, no overload; returns it for the checks of its kind."""
    d = dhcp(r)
    o = opts(d)
    assert len(bytes.fromhex(r["hex"])) >= 300
    assert (d.op, d.yiaddr, o[53]) == (2, 0, bytes((message,)))
    assert d.siaddr == int.from_bytes(socket.inet_aton(address), "big") and o[54] == socket.inet_aton(address)
    assert o[60] == vendor and o[97] == SENT_UUID and 52 not in o
    return d


def from_proxy(replies, address=PROXY):
    """Replies that came from proxydhcp: from its address, and never carrying an address."""
    return [r for r in replies if r["src"] == address and dhcp(r).yiaddr == 0]


@pytest.fixture(scope="module")
def lab():
    workdir = tempfile.mkdtemp(prefix="proxydhcp-it-")
    with Lab() as lab:
        lab.corp = lab.host("corp", "10.77.0.1/24")
        lab.pxe = lab.host("pxe", f"{PROXY}/24")
        lab.client = lab.host("client", "10.77.0.131/24")
        lab.relay = lab.host("relay", "10.77.0.3/24")
        lab.dhcpc = lab.host("dhcpc", None)
        lab.capture = os.path.join(workdir, "pxe.pcap")
        lab.tcpdump = lab.spawn(lab.pxe, "tcpdump", "-U", "--immediate-mode", "-i", "eth0", "-w", lab.capture,
                                "udp and src host %s" % PROXY)
        lab.dnsmasq = start_dnsmasq(lab, lab.corp, workdir, "corp")
        lab.proxy, lab.log = start_proxydhcp(lab, lab.pxe, workdir)
        lab.workdir = workdir
        yield lab
    shutil.rmtree(workdir, ignore_errors=True)


def test_real_dhcp_client_gets_its_lease_and_nothing_from_proxydhcp(lab):
    out = lab.sh(lab.dhcpc, "udhcpc -i eth0 -n -q -f -t 5 -T 1 -s /bin/true -x hostname:plain", check=False)
    assert "lease of 10.77.0.1" in out.stderr + out.stdout, out.stderr
    assert "obtained from 10.77.0.1" in out.stderr + out.stdout
    mac = lab.sh(lab.dhcpc, "cat /sys/class/net/eth0/address").stdout.strip()
    lab.stop(lab.tcpdump)
    sent = []
    with open(lab.capture, "rb") as fh:
        for _ts, frame in dpkt.pcap.Reader(fh):
            udp = dpkt.ethernet.Ethernet(frame).data.data
            if udp.sport in (67, 4011):
                sent.append(dpkt.dhcp.DHCP(bytes(udp.data)).chaddr.hex(":"))
    assert mac not in sent, "proxydhcp answered a plain DHCP client"
    assert "dhcp.proxy_offer" not in open(lab.log).read()


def test_scripted_plain_client_gets_no_word(lab):
    replies = pxe_client(lab, lab.client, "plain", "--mac", "52:54:00:aa:00:09")
    assert replies, "the corporate server should have offered"
    assert [r for r in replies if r["src"] == PROXY] == []


def test_legacy_bios_gets_offer_with_boot_file(lab):
    replies = pxe_client(lab, lab.client, "legacy-bios", "--mac", "52:54:00:aa:00:01")
    corp = [r for r in replies if r["src"] == "10.77.0.1"]
    assert corp and dhcp(corp[0]).yiaddr != 0      # the corporate address offer still arrives
    [r] = from_proxy(replies)
    d = proxy_reply(r, 2)
    o = opts(d)
    assert r["sport"] == 67
    assert d.file.rstrip(b"\x00") == b"undionly.kpxe" and d.siaddr == int.from_bytes(socket.inet_aton(PROXY), "big")
    assert o[43].startswith(b"\x06\x01\x08")


def test_uefi_edk2_is_redirected_then_acked_on_4011(lab):
    replies = pxe_client(lab, lab.client, "edk2", "--mac", "52:54:00:aa:00:02")
    [r] = from_proxy(replies)
    d = proxy_reply(r, 2)
    assert r["sport"] == 67 and d.file.rstrip(b"\x00") == b"" and 43 not in opts(d)
    replies = pxe_client(lab, lab.client, "edk2", "--mac", "52:54:00:aa:00:02", "--message", "request",
                         "--to", PROXY, "--port", "4011", "--sport", "4011", "--ciaddr", "10.77.0.131")
    [r] = from_proxy(replies)
    d = proxy_reply(r, 5)
    assert r["sport"] == 4011 and d.sname.rstrip(b"\x00") == PROXY.encode()
    assert d.file.rstrip(b"\x00") == b"ipxe.efi" and d.ciaddr == int.from_bytes(socket.inet_aton("10.77.0.131"), "big")


def test_ipxe_gets_script_url_on_67_and_on_4011_from_port_68(lab):
    replies = pxe_client(lab, lab.client, "ipxe", "--mac", "52:54:00:aa:00:03", "--arch", "0")
    [r] = from_proxy(replies)
    url = proxy_reply(r, 2).file.rstrip(b"\x00").decode()
    assert url.startswith(f"http://{PROXY}:8080/boot.ipxe?mac=52:54:00:aa:00:03&arch=0")
    replies = pxe_client(lab, lab.client, "ipxe", "--mac", "52:54:00:aa:00:03", "--message", "request",
                         "--to", PROXY, "--port", "4011", "--sport", "68", "--ciaddr", "10.77.0.131")
    [r] = from_proxy(replies)
    assert r["sport"] == 4011 and proxy_reply(r, 5).file.rstrip(b"\x00").decode().startswith(f"http://{PROXY}:8080/boot.ipxe")


def test_uefi_http_client_gets_url(lab):
    replies = pxe_client(lab, lab.client, "uefi-http", "--mac", "52:54:00:aa:00:04")
    [r] = from_proxy(replies)
    d = proxy_reply(r, 2, vendor=b"HTTPClient")
    assert d.file.rstrip(b"\x00") == f"http://{PROXY}:8080/firmware/ipxe.efi".encode()


def test_relayed_request_is_answered_to_the_relay(lab):
    replies = pxe_client(lab, lab.relay, "legacy-bios", "--mac", "52:54:00:aa:00:05", "--to", PROXY,
                         "--sport", "67", "--giaddr", "10.77.0.3")
    [r] = from_proxy(replies)
    d = proxy_reply(r, 2)
    assert r["sport"] == 67 and d.giaddr == int.from_bytes(socket.inet_aton("10.77.0.3"), "big")
    assert d.flags & 0x8000 and d.file.rstrip(b"\x00") == b"undionly.kpxe"


def test_address_change_is_followed_without_restart(lab):
    lab.sh(lab.pxe, f"ip addr del {PROXY}/24 dev eth0 && ip addr add 10.77.0.9/24 dev eth0")
    try:
        # one netlink batch gives "address changed", two give "gone" then "listening on eth0 (new)"
        assert wait_for(lambda: "-> 10.77.0.9" in open(lab.log).read()
                        or "listening on eth0 (10.77.0.9)" in open(lab.log).read(), 5), open(lab.log).read()
        replies = pxe_client(lab, lab.client, "legacy-bios", "--mac", "52:54:00:aa:00:06")
        [r] = from_proxy(replies, "10.77.0.9")
        assert opts(dhcp(r))[54] == socket.inet_aton("10.77.0.9")
    finally:
        lab.sh(lab.pxe, f"ip addr flush dev eth0 && ip addr add {PROXY}/24 dev eth0")
        wait_for(lambda: "-> 10.77.0.2" in open(lab.log).read()
                 or open(lab.log).read().count("listening on eth0 (10.77.0.2)") >= 2, 5)
    assert lab.proxy.poll() is None


def test_same_host_as_dnsmasq_both_on_port_67():
    """dnsmasq (wildcard bind of UDP 67, no SO_REUSEADDR) and proxydhcp in one namespace."""
    workdir = tempfile.mkdtemp(prefix="proxydhcp-it-")
    try:
        with Lab() as lab:
            pxe = lab.host("pxe", f"{PROXY}/24")
            client = lab.host("client", "10.77.0.131/24")
            dhcpc = lab.host("dhcpc", None)
            proxy, log = start_proxydhcp(lab, pxe, workdir)
            dns = start_dnsmasq(lab, pxe, workdir, "same")   # started after us: we must not hold 67
            assert wait_for(lambda: lab.sh(pxe, "ss -lun 'sport = :67'").stdout.count(":67") >= 1, 5)
            assert dns.poll() is None, lab.output(dns)
            out = lab.sh(dhcpc, "udhcpc -i eth0 -n -q -f -t 5 -T 1 -s /bin/true", check=False)
            assert f"obtained from {PROXY}" in out.stderr + out.stdout, out.stderr
            replies = pxe_client(lab, client, "legacy-bios", "--mac", "52:54:00:bb:00:01")
            address = [r for r in replies if dhcp(r).yiaddr != 0]
            proxy_offers = from_proxy(replies)
            assert len(address) == 1 and len(proxy_offers) == 1
            assert dhcp(proxy_offers[0]).file.rstrip(b"\x00") == b"undionly.kpxe"
            assert proxy.poll() is None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_warns_when_another_server_sends_pxe_options(lab):
    rogue = lab.host("rogue", "10.77.0.66/24")
    proc = lab.spawn(rogue, "dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0", "--user=root",
                     "--dhcp-range=10.77.0.0,proxy", "--pxe-service=x86PC,rogue,pxelinux",
                     f"--pid-file={lab.workdir}/rogue.pid")
    try:
        assert wait_for(lambda: "proxy on subnet" in lab.output(proc), 5), lab.output(proc)
        pxe_client(lab, lab.client, "legacy-bios", "--mac", "52:54:00:aa:00:07")
        assert wait_for(lambda: "another DHCP server (10.77.0.66)" in open(lab.log).read(), 5)
    finally:
        lab.stop(proc)


def _second_segment(lab: Lab, proxy_ns: str, client_ns_role: str) -> str:
    """A second segment: eth1 of proxydhcp's namespace (10.88.0.2/24) wired straight to eth0
    of a new client namespace (10.88.0.131/24), no bridge between it and the first one."""
    ns = lab._netns(client_ns_role)
    subprocess.run(["ip", "link", "add", "eth1", "netns", proxy_ns, "type", "veth", "peer", "name", "eth0",
                    "netns", ns], check=True)
    lab.sh(proxy_ns, "ip addr add 10.88.0.2/24 dev eth1 && ip link set eth1 up")
    lab.sh(ns, "ip link set lo up && ip addr add 10.88.0.131/24 dev eth0 && ip link set eth0 up")
    return ns


@pytest.mark.parametrize("interfaces,second_served", [("[]", True), ("[eth0]", False)])
def test_each_interface_is_answered_from_itself(interfaces, second_served):
    """Two segments on two interfaces of proxydhcp's host. With dhcp.interfaces empty (the
    default: every non-loopback IPv4 interface) a client on each segment gets the offer from
    that interface's own address, which can only reach it through that interface, and the 4011
    ACK likewise; with dhcp.interfaces [eth0] the second segment gets no word."""
    workdir = tempfile.mkdtemp(prefix="proxydhcp-it-")
    try:
        with Lab() as lab:
            pxe_ns = lab.host("pxe", f"{PROXY}/24")
            client = lab.host("client", "10.77.0.131/24")
            other = _second_segment(lab, pxe_ns, "seg2")
            cfg = os.path.join(workdir, "proxydhcp.yaml")
            with open(cfg, "w") as fh:
                fh.write((CONFIG % os.path.join(workdir, "state")).replace("[eth0]", interfaces))
            log = os.path.join(workdir, "proxydhcp.log")
            proc = lab.spawn(pxe_ns, PY, "-m", "proxydhcp", "serve", "-c", cfg, stdout=open(log, "w"),
                             stderr=subprocess.STDOUT, cwd=ROOT)
            wanted = ["listening on eth0"] + (["listening on eth1"] if second_served else [])
            assert wait_for(lambda: all(w in open(log).read() for w in wanted) or proc.poll() is not None, 15), \
                open(log).read()
            assert proc.poll() is None, open(log).read()
            [r] = from_proxy(pxe_client(lab, client, "legacy-bios", "--mac", "52:54:00:cc:00:01"))
            proxy_reply(r, 2)
            replies = pxe_client(lab, other, "edk2", "--mac", "52:54:00:cc:00:02")
            ack = pxe_client(lab, other, "edk2", "--mac", "52:54:00:cc:00:02", "--message", "request", "--to",
                             "10.88.0.2", "--port", "4011", "--sport", "4011", "--ciaddr", "10.88.0.131")
            if second_served:
                [r] = from_proxy(replies, "10.88.0.2")
                assert r["sport"] == 67 and proxy_reply(r, 2, address="10.88.0.2").file.rstrip(b"\0") == b""
                [r] = from_proxy(ack, "10.88.0.2")
                assert proxy_reply(r, 5, address="10.88.0.2").file.rstrip(b"\0") == b"ipxe.efi"
            else:
                assert replies == [] and ack == []
                assert "listening on eth1" not in open(log).read()
            assert proc.poll() is None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
