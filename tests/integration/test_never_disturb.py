"""Never disturb: real DHCP clients see exactly the same network with proxydhcp as without it.

One scripted scenario is run twice in a fresh namespace lab, first without proxydhcp and then
with proxydhcp serving the same segment. A corporate dnsmasq (2-minute leases, a fixed address
per MAC) serves two real clients, ISC dhclient and busybox udhcpc, with fixed MACs:

  both get a lease (DISCOVER/OFFER/REQUEST/ACK);
  udhcpc renews on SIGUSR1, dhclient renews by itself at the short T1 dnsmasq gives it only
  (REQUEST/ACK, unicast);
  both release (udhcpc on SIGUSR2, dhclient with `dhclient -r`).

tcpdump on the bridge (promiscuous, so it sees every frame between any two ports) records
everything. Compared between the runs, per client: every DHCP frame, byte for byte, after
zeroing only the fields that vary from run to run by design (BOOTP xid and secs; IPv4
identification and the IPv4/UDP checksums, which follow from those); and the leases as the
clients report them (their script environment, dhclient's lease file without its timestamps).
In the run with proxydhcp, no frame on the bridge has proxydhcp's MAC as its source, except
kernel ARP and IPv6 neighbour discovery / multicast listener reports, filtered explicitly (the
namespace's kernel sends those whether proxydhcp runs or not); no IPv4 packet carries its
address; and proxydhcp's own metrics show it did receive the clients' broadcasts and stayed
silent.

Held fixed so that the runs can be compared byte for byte: every MAC (corporate server,
proxydhcp, both clients), each client's address (dnsmasq dhcp-host), T1 and T2 (dnsmasq
otherwise takes a random few seconds off both in renewal ACKs), and the moment udhcpc's
unicast renewal ACK arrives (see renew_udhcpc).

Also here: a rogue PXE server on the segment is reported in the log and in
proxydhcp_foreign_pxe_replies_total.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import struct
import subprocess
import sys

import dpkt
import pytest

from tests.netlab import Lab, have_root, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PY = sys.executable

CORP, CORP_MAC = "10.77.0.1", "52:54:00:4e:44:01"
PROXY, PROXY_MAC = "10.77.0.2", "52:54:00:4e:44:02"
DHCLIENT_MAC, DHCLIENT_IP = "52:54:00:4e:44:10", "10.77.0.110"
UDHCPC_MAC, UDHCPC_IP = "52:54:00:4e:44:11", "10.77.0.111"
DHCLIENT_T1 = 3   # seconds: dhclient renews by itself about then (ISC takes 3/4 T1 + random T1/4)
UDHCPC_T1 = 7     # busybox udhcpc ignores option 58 (renews at lease/2); renewed here by SIGUSR1

pytestmark = pytest.mark.skipif(
    not have_root() or not all(shutil.which(t) for t in ("dnsmasq", "udhcpc", "dhclient", "tcpdump")),
    reason="needs root, iproute2, dnsmasq, udhcpc, dhclient and tcpdump")

PROXY_CONFIG = """
dhcp: {interfaces: [eth0]}
tftp: {enabled: false}
http: {enabled: true, port: 8080}
state: {dir: %s}
log: {level: info}
"""

# Both scripts configure the address (the renewal REQUEST and the RELEASE go out through a
# normal UDP socket, which needs it), then record what the client reports: the test waits for
# that record, so the client is done with its script when the next step starts. Only the
# variables that describe the lease are kept; those holding absolute times (new_expiry) are not.
DHCLIENT_SCRIPT = """#!/bin/sh
case "$reason" in
  BOUND|RENEW|REBIND|REBOOT) ip addr replace "$new_ip_address/$new_subnet_mask" dev "$interface" ;;
  RELEASE|EXPIRE|STOP) [ -n "$old_ip_address" ] && ip addr del "$old_ip_address/$old_subnet_mask" dev "$interface" ;;
esac
{ echo "reason=$reason"; env | grep -E '^(new|old)_' | grep -v '_expiry=' | sort; echo; } >> %(out)s
exit 0
"""
UDHCPC_SCRIPT = """#!/bin/sh
case "$1" in
  bound|renew) ip addr replace "$ip/$mask" dev "$interface" ;;
  deconfig) ip addr flush dev "$interface" ;;
esac
{ echo "event=$1"; for v in interface ip subnet mask router lease serverid opt53 siaddr sname boot_file; do
    eval "echo $v=\\"\\${$v}\\""; done; echo; } >> %(out)s
exit 0
"""
DHCLIENT_CONF = """request subnet-mask, broadcast-address, routers, dhcp-lease-time, dhcp-server-identifier,
        dhcp-renewal-time, dhcp-rebinding-time;
timeout 10;
retry 1;
"""


def write(path: str, text: str, mode: int = 0o644) -> str:
    with open(path, "w") as fh:
        fh.write(text)
    os.chmod(path, mode)
    return path


def read(path: str) -> str:
    try:
        with open(path, errors="replace") as fh:
            return fh.read()
    except FileNotFoundError:
        return ""


def metrics_text(lab: Lab, ns: str) -> str:
    return lab.sh(ns, "curl -s --max-time 5 http://127.0.0.1:8080/metrics").stdout


def metric(text: str, name: str, **labels) -> float:
    """Sum of a metric's samples whose labels include the given ones."""
    total = 0.0
    for m in re.finditer(rf"^{re.escape(name)}(?:\{{([^}}]*)\}})? (\S+)$", text, re.M):
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(2))
    return total


def start_proxydhcp(lab: Lab, ns: str) -> tuple[subprocess.Popen, str]:
    """As the other integration tests start it: `python -m proxydhcp serve -c CONFIG` serving eth0."""
    os.chmod(lab.tmp, 0o755)   # the daemon drops to nobody: its state dir and config must stay reachable
    cfg = write(os.path.join(lab.tmp, "proxydhcp.yaml"), PROXY_CONFIG % os.path.join(lab.tmp, "state"))
    log = os.path.join(lab.tmp, "proxydhcp.log")
    proc = lab.spawn(ns, PY, "-m", "proxydhcp", "serve", "-c", cfg, stdout=open(log, "w"),
                     stderr=subprocess.STDOUT, cwd=ROOT)
    assert wait_for(lambda: "listening on eth0" in read(log) or proc.poll() is not None, 20), read(log)
    assert proc.poll() is None, read(log)
    assert wait_for(lambda: "proxydhcp_dhcp_packets" in metrics_text(lab, ns), 10), read(log)
    return proc, log


def start_capture(lab: Lab, path: str) -> subprocess.Popen:
    """Everything crossing the segment: br0 in promiscuous mode receives every forwarded frame."""
    err = os.path.join(lab.tmp, "tcpdump.err")
    proc = lab.spawn(lab.bridge_ns, "tcpdump", "-U", "--immediate-mode", "-i", "br0", "-s", "0", "-w", path,
                     stdout=subprocess.DEVNULL, stderr=open(err, "w"))
    assert wait_for(lambda: "listening on br0" in read(err) or proc.poll() is not None, 10), read(err)
    assert proc.poll() is None, read(err)
    return proc


def renew_udhcpc(lab: Lab, udhcpc: subprocess.Popen, dnsmasq: subprocess.Popen) -> None:
    """SIGUSR1: udhcpc renews by unicast. busybox 1.35 sends that REQUEST from a second socket
    bound to ciaddr:68 and connected to the server, and closes it right after the write; an ACK
    arriving before the close lands on that socket and is lost, and udhcpc broadcasts a REQUEST
    2 s later. On a veth lab dnsmasq can answer within that fraction of a millisecond or not,
    differently from run to run. So dnsmasq is held (SIGSTOP) until udhcpc has sent and is back
    in poll(), and the ACK always comes after the close, as on any network with some latency."""
    sent = lab.output(udhcpc).count("sending renew")
    dnsmasq.send_signal(signal.SIGSTOP)
    try:
        udhcpc.send_signal(signal.SIGUSR1)
        assert wait_for(lambda: lab.output(udhcpc).count("sending renew") > sent
                        and "poll" in read(f"/proc/{udhcpc.pid}/wchan"), 5), lab.output(udhcpc)
    finally:
        dnsmasq.send_signal(signal.SIGCONT)


def scenario(with_proxy: bool) -> dict:
    """The scripted scenario; returns the capture's frames and what the clients reported."""
    with Lab() as lab:
        corp = lab.host("corp", f"{CORP}/24", mac=CORP_MAC)
        pxe = lab.host("pxe", f"{PROXY}/24", mac=PROXY_MAC)
        dhc = lab.host("dhc", None, mac=DHCLIENT_MAC)
        udh = lab.host("udh", None, mac=UDHCPC_MAC)
        t = lab.tmp
        pcap = os.path.join(t, "segment.pcap")
        capture = start_capture(lab, pcap)

        dnsmasq = lab.spawn(corp, "dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0", "--user=root",
                            "--log-dhcp", "--no-ping", "--dhcp-authoritative",
                            "--dhcp-range=10.77.0.100,10.77.0.150,255.255.255.0,2m",
                            f"--dhcp-host={DHCLIENT_MAC},set:dhc,{DHCLIENT_IP}",
                            f"--dhcp-host={UDHCPC_MAC},{UDHCPC_IP}",
                            f"--dhcp-option=option:router,{CORP}",
                            # dnsmasq takes a random "fuzz" off T1 and T2 in renewal ACKs, at most
                            # T1/8 (integer): with T1 < 8 s it is 0 and the ACKs are reproducible
                            f"--dhcp-option=tag:dhc,option:T1,{DHCLIENT_T1}",
                            f"--dhcp-option=tag:!dhc,option:T1,{UDHCPC_T1}", "--dhcp-option=option:T2,105",
                            f"--dhcp-leasefile={t}/corp.leases", f"--pid-file={t}/corp.pid")
        assert wait_for(lambda: "DHCP, IP range" in lab.output(dnsmasq) or dnsmasq.poll() is not None, 10)
        assert dnsmasq.poll() is None, lab.output(dnsmasq)

        proxy = log = None
        if with_proxy:
            proxy, log = start_proxydhcp(lab, pxe)
            before = metrics_text(lab, pxe)

        # --- lease ---------------------------------------------------------------------------
        dh_out, ud_out = os.path.join(t, "dhclient.env"), os.path.join(t, "udhcpc.env")
        dh_script = write(os.path.join(t, "dhclient-script"), DHCLIENT_SCRIPT % {"out": dh_out}, 0o755)
        ud_script = write(os.path.join(t, "udhcpc-script"), UDHCPC_SCRIPT % {"out": ud_out}, 0o755)
        dh_conf = write(os.path.join(t, "dhclient.conf"), DHCLIENT_CONF)
        dh_args = ("-4", "-v", "-cf", dh_conf, "-lf", f"{t}/dhclient.leases", "-pf", f"{t}/dhclient.pid",
                   "-sf", dh_script)
        dhclient = lab.spawn(dhc, "dhclient", "-d", *dh_args, "eth0")
        udhcpc = lab.spawn(udh, "udhcpc", "-f", "-i", "eth0", "-s", ud_script, "-t", "5", "-T", "2", "-A", "2")
        assert wait_for(lambda: "reason=BOUND" in read(dh_out), 15), lab.output(dhclient)
        assert wait_for(lambda: "event=bound" in read(ud_out), 15), lab.output(udhcpc)

        # --- renewals --------------------------------------------------------------------------
        renew_udhcpc(lab, udhcpc, dnsmasq)
        assert wait_for(lambda: "event=renew" in read(ud_out), 10), lab.output(udhcpc)
        assert wait_for(lambda: "reason=RENEW" in read(dh_out), 3 * DHCLIENT_T1 + 5), lab.output(dhclient)

        # --- releases (dhclient at once: it would renew again T1 later) ---------------------------
        lab.sh(dhc, "dhclient -r " + " ".join(dh_args) + " eth0")
        udhcpc.send_signal(signal.SIGUSR2)
        assert wait_for(lambda: lab.output(dnsmasq).count("DHCPRELEASE(eth0)") >= 2, 10), lab.output(dnsmasq)
        assert wait_for(lambda: "event=deconfig" in read(ud_out).split("event=renew", 1)[-1], 5)

        silent = None
        if with_proxy:
            after = metrics_text(lab, pxe)
            silent = {
                "not_pxe": metric(after, "proxydhcp_dhcp_packets_total", port="67", result="not_pxe")
                - metric(before, "proxydhcp_dhcp_packets_total", port="67", result="not_pxe"),
                "replied": metric(after, "proxydhcp_dhcp_packets_total", result="replied"),
            }
            lab.stop(proxy)
        lab.stop(udhcpc)
        lab.stop(dhclient)
        lab.stop(dnsmasq)
        lab.stop(capture)
        with open(pcap, "rb") as fh:
            frames = [bytes(frame) for _ts, frame in dpkt.pcap.Reader(fh)]
        leases = re.sub(r"^\s*(renew|rebind|expire) .*$\n", "", read(f"{t}/dhclient.leases"), flags=re.M)
        return {"frames": frames, "dhclient_env": read(dh_out), "udhcpc_env": read(ud_out),
                "dhclient_leases": leases, "silent": silent, "proxy_log": read(log) if log else "",
                "dnsmasq_log": lab.output(dnsmasq), "client_logs": lab.output(dhclient) + lab.output(udhcpc)}


def dhcp_frames(frames: list[bytes]) -> dict[str, list[tuple[int, bytes]]]:
    """DHCP frames per client MAC (the BOOTP chaddr), in capture order, as (message type,
    normalised frame). Normalised: BOOTP xid and secs, IPv4 identification and the IPv4 and
    UDP checksums are zeroed; every other byte of the frame is kept."""
    per_client: dict[str, list[tuple[int, bytes]]] = {}
    for frame in frames:
        eth = dpkt.ethernet.Ethernet(frame)
        if not isinstance(eth.data, dpkt.ip.IP) or not isinstance(eth.data.data, dpkt.udp.UDP):
            continue
        ip, udp = eth.data, eth.data.data
        if {udp.sport, udp.dport} != {67, 68}:
            continue
        d = dpkt.dhcp.DHCP(bytes(udp.data))
        mtype = dict(d.opts)[53][0]
        b = bytearray(frame)
        ihl = (b[14] & 0x0F) * 4
        u = 14 + ihl
        bootp = u + 8
        for start, end in ((14 + 4, 14 + 6), (14 + 10, 14 + 12), (u + 6, u + 8), (bootp + 4, bootp + 10)):
            b[start:end] = bytes(end - start)
        per_client.setdefault(d.chaddr[:6].hex(":"), []).append((mtype, bytes(b)))
    return per_client


# dpkt's DHCP message type numbers: 1 DISCOVER, 2 OFFER, 3 REQUEST, 5 ACK, 7 RELEASE
EXCHANGE = [1, 2, 3, 5, 3, 5, 7]
ALLOWED_KERNEL = "ARP, IPv6 neighbour/router discovery (ICMPv6 133-137) and MLD reports (131, 143)"


def kernel_chatter(frame: bytes) -> bool:
    """Frames a namespace's kernel sends by itself whatever runs in it: ARP, and IPv6 ND/MLD."""
    eth = dpkt.ethernet.Ethernet(frame)
    if eth.type == dpkt.ethernet.ETH_TYPE_ARP:
        return True
    if eth.type == dpkt.ethernet.ETH_TYPE_IP6:
        ip6 = eth.data            # dpkt walks extension headers (MLD's hop-by-hop): .p is the last
        return ip6.p == 58 and isinstance(ip6.data, dpkt.icmp6.ICMP6) and \
            ip6.data.type in (131, 133, 134, 135, 136, 137, 143)
    return False


def describe(frame: bytes) -> str:
    eth = dpkt.ethernet.Ethernet(frame)
    return f"type 0x{eth.type:04x} to {eth.dst.hex(':')}: {frame[:64].hex()}"


@pytest.fixture(scope="module")
def runs():
    return scenario(with_proxy=False), scenario(with_proxy=True)


def test_both_runs_hold_the_whole_exchange(runs):
    """Guards the comparison below: each client leased, renewed and released in each run."""
    for run in runs:
        per_client = dhcp_frames(run["frames"])
        for mac in (DHCLIENT_MAC, UDHCPC_MAC):
            assert [t for t, _f in per_client.get(mac, [])] == EXCHANGE, (mac, run["client_logs"], run["dnsmasq_log"])
        for mac, ip in ((DHCLIENT_MAC, DHCLIENT_IP), (UDHCPC_MAC, UDHCPC_IP)):
            assert f"DHCPACK(eth0) {ip} {mac}" in run["dnsmasq_log"]
    assert f"new_ip_address={DHCLIENT_IP}" in runs[0]["dhclient_env"]
    assert f"ip={UDHCPC_IP}" in runs[0]["udhcpc_env"]


def test_dhcp_exchanges_are_byte_for_byte_identical(runs):
    without, with_proxy = (dhcp_frames(r["frames"]) for r in runs)
    assert set(without) == set(with_proxy) == {DHCLIENT_MAC, UDHCPC_MAC}
    for mac in without:
        a, b = without[mac], with_proxy[mac]
        assert len(a) == len(b), mac
        for i, ((ta, fa), (tb, fb)) in enumerate(zip(a, b)):
            assert (ta, fa.hex()) == (tb, fb.hex()), f"{mac}: DHCP frame {i} differs"


def test_leases_as_the_clients_report_them_are_identical(runs):
    without, with_proxy = runs
    for key in ("dhclient_env", "udhcpc_env", "dhclient_leases"):
        assert without[key] and without[key] == with_proxy[key], key
    env = without["dhclient_env"]
    for line in (f"new_ip_address={DHCLIENT_IP}", "new_subnet_mask=255.255.255.0", f"new_routers={CORP}",
                 "new_dhcp_lease_time=120", f"new_dhcp_renewal_time={DHCLIENT_T1}"):
        assert line in env, (line, env)
    assert "reason=RELEASE" in env
    env = without["udhcpc_env"]
    for line in (f"ip={UDHCPC_IP}", "mask=24", f"router={CORP}", "lease=120", f"serverid={CORP}"):
        assert line in env, (line, env)
    assert env.count("event=deconfig") >= 2   # at start, and after the release


def test_not_a_frame_from_proxydhcp_reaches_the_clients(runs):
    _without, with_proxy = runs
    from_proxy = [f for f in with_proxy["frames"] if f[6:12] == bytes.fromhex(PROXY_MAC.replace(":", ""))]
    others = [describe(f) for f in from_proxy if not kernel_chatter(f)]
    assert others == [], f"proxydhcp's host sent frames other than {ALLOWED_KERNEL}"
    # and nothing at all from its address (a frame forwarded under another MAC would show here)
    for frame in with_proxy["frames"]:
        eth = dpkt.ethernet.Ethernet(frame)
        if isinstance(eth.data, dpkt.ip.IP):
            assert eth.data.src != bytes(map(int, PROXY.split("."))), describe(frame)
    # proxydhcp was listening and did see the clients' broadcasts: it kept silent on purpose
    silent = with_proxy["silent"]
    assert silent["replied"] == 0, with_proxy["proxy_log"]
    assert silent["not_pxe"] >= 4, (silent, with_proxy["proxy_log"])  # 2 DISCOVERs + 2 REQUESTs at least
    assert "Traceback" not in with_proxy["proxy_log"]


def test_foreign_pxe_server_is_reported_in_log_and_metric():
    """A rogue dnsmasq in proxy mode offers PXE boot on proxydhcp's segment: proxydhcp counts
    every such reply in proxydhcp_foreign_pxe_replies_total and warns once (per server per
    10 minutes) in its log, naming the server."""
    with Lab() as lab:
        pxe = lab.host("pxe", f"{PROXY}/24", mac=PROXY_MAC)
        rogue = lab.host("rogue", "10.77.0.66/24")
        client = lab.host("client", "10.77.0.131/24")
        proxy, log = start_proxydhcp(lab, pxe)
        assert metric(metrics_text(lab, pxe), "proxydhcp_foreign_pxe_replies_total") == 0
        dns = lab.spawn(rogue, "dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0", "--user=root",
                        "--log-dhcp", "--dhcp-range=10.77.0.0,proxy", "--pxe-service=x86PC,rogue,pxelinux",
                        f"--pid-file={lab.tmp}/rogue.pid")
        assert wait_for(lambda: "proxy on subnet" in lab.output(dns), 5), lab.output(dns)
        for n, mac in enumerate(("52:54:00:aa:00:07", "52:54:00:aa:00:08"), 1):
            lab.sh(client, f"cd {ROOT} && {PY} -m tests.pxe_client legacy-bios --mac {mac} --wait 1")
            assert wait_for(lambda: lab.output(dns).count("PXE(eth0)") >= n, 5), lab.output(dns)
        seen = wait_for(lambda: metric(metrics_text(lab, pxe), "proxydhcp_foreign_pxe_replies_total") >= 2, 5)
        assert seen, (metrics_text(lab, pxe), read(log))
        warnings = [line for line in read(log).splitlines() if "another DHCP server (10.77.0.66)" in line]
        assert len(warnings) == 1, read(log)
        assert "WARNING" in warnings[0] and "PXE boot information on eth0" in warnings[0]
        assert proxy.poll() is None
