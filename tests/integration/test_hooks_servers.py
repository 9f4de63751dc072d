"""The DHCP-server hooks called by the real servers, in network namespaces.

proxydhcp runs in one namespace; dnsmasq, ISC dhcpd and Kea each run in their own, call
their hook (hooks/) on each lease, each configured by its ready-to-use snippet in contrib/,
and a real client (udhcpc) takes leases. The events
must land in the store, join the boot session of the same MAC, and show in
`proxydhcp sessions`. dnsmasq's own TFTP server reports its transfers through the same hook.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile

import pytest

from tests.netlab import Lab, have_root, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOOKS = os.path.join(ROOT, "hooks")
PY = sys.executable
KEA_RUN_SCRIPT = "/usr/lib/x86_64-linux-gnu/kea/hooks/libdhcp_run_script.so"

pytestmark = pytest.mark.skipif(
    not have_root() or not shutil.which("dnsmasq") or not shutil.which("udhcpc"),
    reason="needs root, iproute2, dnsmasq and udhcpc (make test installs them)")

CONFIG = """
dhcp: {interfaces: [eth0]}
boot: {firmware: {bios: undionly.kpxe, x64-uefi: ipxe.efi}}
tftp: {enabled: false}
http: {enabled: false, port: 8080}
state: {dir: %s}
log: {level: debug}
"""


@pytest.fixture(scope="module")
def env():
    work = tempfile.mkdtemp(prefix="proxydhcp-hooks-")
    os.chmod(work, 0o755)
    with Lab("10.79.0") as lab:
        lab.work = work
        lab.state = os.path.join(work, "state")
        lab.proxy = lab.host("proxy", "10.79.0.2/24")
        cfg = os.path.join(work, "proxydhcp.yaml")
        with open(cfg, "w") as fh:
            fh.write(CONFIG % lab.state)
        lab.daemon = lab.spawn(lab.proxy, PY, "-m", "proxydhcp", "serve", "-c", cfg, cwd=ROOT)
        ok = wait_for(lambda: "listening on eth0" in lab.output(lab.daemon) or lab.daemon.poll() is not None, 15)
        assert ok and lab.daemon.poll() is None, lab.output(lab.daemon)
        lab.hook_env = {"PROXYDHCP_SOCKET": os.path.join(lab.state, "hook.sock"),
                        "PROXYDHCP_SPOOL": os.path.join(lab.state, "spool")}
        yield lab
    shutil.rmtree(work, ignore_errors=True)


def contrib(lab, relpath: str) -> str:
    """A ready-to-use snippet from contrib/, as an operator installs it: only the install paths
    are this checkout's hooks/ and this lab's state dir. Returns the copy's path."""
    with open(os.path.join(ROOT, "contrib", relpath)) as fh:
        text = fh.read()
    assert "/usr/lib/proxydhcp/hooks/" in text, relpath   # the snippet names its hook
    text = text.replace("/usr/lib/proxydhcp/hooks", HOOKS).replace("/var/lib/proxydhcp", lab.state)
    path = os.path.join(lab.work, os.path.basename(relpath))
    with open(path, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o755)
    return path


def client(lab, role: str) -> tuple[str, str]:
    ns = lab.host(role, None)
    mac = lab.sh(ns, "cat /sys/class/net/eth0/address").stdout.strip()
    return ns, mac


def udhcpc(lab, ns: str, *extra: str) -> str:
    """A lease from a real client; the address is configured, so a release (-R) can be sent."""
    script = os.path.join(lab.work, "udhcpc.script")
    with open(script, "w") as fh:
        fh.write('#!/bin/sh\n[ "$1" = bound ] && ip addr add "$ip/${mask:-24}" dev "$interface"\nexit 0\n')
    os.chmod(script, 0o755)
    out = lab.sh(ns, f"udhcpc -i eth0 -n -q -f -t 6 -T 1 -s {script} " + " ".join(extra), check=False)
    lab.last_udhcpc = out.stdout + out.stderr
    m = re.search(r"lease of (\S+) obtained", out.stdout + out.stderr)
    assert m, out.stdout + out.stderr
    return m.group(1)


def udhcpc_cycle(lab, ns: str, hostname: str) -> str:
    """A real client through a lease's life: lease, renew (SIGUSR1), release (SIGUSR2), exit."""
    udhcpc(lab, ns, f"-x hostname:{hostname}")  # writes the script; its address stays configured for the unicasts below
    lab.sh(ns, "ip addr flush dev eth0")
    script = os.path.join(lab.work, "udhcpc.script")
    out = lab.sh(ns, f"udhcpc -i eth0 -f -t 6 -T 1 -s {script} -x hostname:{hostname} & pid=$!; "
                     "for i in $(seq 50); do ip -4 addr show eth0 | grep -q inet && break; sleep 0.1; done; "
                     "sleep 0.3; kill -USR1 $pid; sleep 1; kill -USR2 $pid; sleep 0.5; kill $pid; wait $pid",
                 check=False)
    lab.last_udhcpc = out.stdout + out.stderr
    m = re.search(r"lease of (\S+) obtained", lab.last_udhcpc)
    assert m and "unicasting a release" in lab.last_udhcpc, lab.last_udhcpc
    return m.group(1)


def pxe_discover(lab, ns: str, kind: str, mac: str, arch: int | None = None) -> None:
    args = [f"cd {ROOT} &&", PY, "-m", "tests.pxe_client", kind, "--mac", mac, "--wait", "1.0"]
    if arch is not None:
        args += ["--arch", str(arch)]
    lab.sh(ns, " ".join(args))


def stored(lab, sql: str, *args):
    conn = sqlite3.connect(os.path.join(lab.state, "events.sqlite"))
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def lease_events(lab, mac: str, source: str) -> list[dict]:
    rows = stored(lab, "SELECT data FROM events WHERE kind='lease' AND mac=? ORDER BY id", mac)
    return [e for e in (json.loads(r[0]) for r in rows) if e.get("source") == source]


def sessions_cli(lab, *args: str) -> str:
    out = subprocess.run([PY, "-m", "proxydhcp", "sessions", "--db", os.path.join(lab.state, "events.sqlite"),
                          *args], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_dnsmasq_leases_and_its_tftp_join_the_boot_session(env):
    lab = env
    ns = lab.host("dnsmasq", "10.79.0.1/24")
    tftp_root = os.path.join(lab.work, "tftp")
    os.makedirs(tftp_root, exist_ok=True)
    with open(os.path.join(tftp_root, "undionly.kpxe"), "wb") as fh:
        fh.write(os.urandom(70000))
    server = lab.spawn(ns, "env", *(f"{k}={v}" for k, v in lab.hook_env.items()),
                       "dnsmasq", "--no-daemon", f"--conf-file={contrib(lab, 'dnsmasq/proxydhcp-hook.conf')}",
                       "--port=0", "--user=root",
                       "--dhcp-range=10.79.0.100,10.79.0.150,255.255.255.0,1h", "--no-ping",
                       f"--dhcp-leasefile={lab.work}/dnsmasq.leases", "--log-dhcp",
                       "--enable-tftp", f"--tftp-root={tftp_root}",
                       f"--pid-file={lab.work}/dnsmasq.pid")
    try:
        cns, mac = client(lab, "c1")
        pxe_discover(lab, cns, "legacy-bios", mac, arch=0)      # the BIOS's PXE DISCOVER -> our offer
        ip = udhcpc(lab, cns, "-x hostname:pxe1")                # its lease from dnsmasq -> hook "add"
        evs = wait_for(lambda: lease_events(lab, mac, "dnsmasq"), 10)
        assert evs, lab.output(server)
        assert evs[0]["action"] == "commit" and evs[0]["ip"] == ip and evs[0]["hostname"] == "pxe1"
        assert evs[0]["lease_time"] > 3000 and evs[0]["iface"] == "eth0"
        # the firmware reads its boot file from dnsmasq's TFTP -> hook "tftp"
        got = lab.sh(cns, f"cd {lab.work} && tftp 10.79.0.1 -m binary -c get undionly.kpxe got.kpxe", check=False)
        assert os.path.getsize(os.path.join(lab.work, "got.kpxe")) == 70000, got.stderr
        rows = wait_for(lambda: stored(lab, "SELECT data FROM events WHERE kind='tftp.transfer' AND ip=?", ip), 10)
        assert rows, lab.output(server)
        t = json.loads(rows[0][0])
        assert t["source"] == "dnsmasq" and t["file"].endswith("undionly.kpxe") and t["size"] == 70000

        def session():
            rows = stored(lab, "SELECT data FROM sessions WHERE mac=? ORDER BY started DESC", mac)
            s = json.loads(rows[0][0]) if rows else None
            return s if s and "firmware_transfer" in s["stages"] else None
        s = wait_for(session, 10)
        assert s, stored(lab, "SELECT data FROM sessions WHERE mac=?", mac)
        assert list(s["stages"]) == ["pxe_discover", "proxy_offer", "firmware_transfer"]
        assert s["lease"]["ip"] == ip and s["lease"]["source"] == "dnsmasq" and s["arch_label"] == "bios"
        text = sessions_cli(lab, "--mac", mac)
        assert "firmware_transfer" in text and f"lease: {ip} (pxe1) via dnsmasq" in text
        assert "tftp" in text and "undionly.kpxe: firmware transferred (1x)" in text   # each hook event once
        assert s["counts"]["firmware_ok"] == 1 and s["counts"]["leases"] == 1, s["counts"]
    finally:
        lab.stop(server)


def test_dnsmasq_renew_and_release_from_a_real_client(env):
    """A real client's renew (SIGUSR1) and release (SIGUSR2): dnsmasq's old and del."""
    lab = env
    ns = lab.host("dnsm2", "10.79.0.6/24")   # veth peer names are cut at 15 characters
    server = lab.spawn(ns, "env", *(f"{k}={v}" for k, v in lab.hook_env.items()),
                       "dnsmasq", "--no-daemon", f"--conf-file={contrib(lab, 'dnsmasq/proxydhcp-hook.conf')}",
                       "--port=0", "--user=root", "--dhcp-range=10.79.0.151,10.79.0.159,255.255.255.0,1h",
                       "--no-ping", f"--dhcp-leasefile={lab.work}/dnsmasq2.leases", "--log-dhcp",
                       f"--pid-file={lab.work}/dnsmasq2.pid")
    try:
        cns, mac = client(lab, "c5")
        ip = udhcpc_cycle(lab, cns, "cycle1")
        evs = wait_for(lambda: "release" in str(lease_events(lab, mac, "dnsmasq")) and lease_events(lab, mac, "dnsmasq"), 10)
        assert evs, (lab.output(server), lab.last_udhcpc, lease_events(lab, mac, "dnsmasq"))
        assert evs[0]["action"] == "commit" and evs[-1]["action"] == "release"
        assert {e["ip"] for e in evs} == {ip}
        assert {(e["action"], e["server_action"]) for e in evs} >= {("commit", "add"), ("renew", "old"),
                                                                    ("release", "del")}, evs
    finally:
        lab.stop(server)


ISC_CONF = """
ddns-update-style none;
default-lease-time 600;
max-lease-time 600;
authoritative;
include "%(snippet)s";
subnet 10.79.0.0 netmask 255.255.255.0 {
  range 10.79.0.160 10.79.0.180;
}
"""


def start_isc_dhcpd(lab, ns: str, name: str, conf_text: str):
    """ISC dhcpd in the foreground with the hook's environment, once it serves eth0."""
    conf = os.path.join(lab.work, f"{name}.conf")
    with open(conf, "w") as fh:
        fh.write(conf_text)
    leases = os.path.join(lab.work, f"{name}.leases")
    open(leases, "w").close()
    server = lab.spawn(ns, "env", *(f"{k}={v}" for k, v in lab.hook_env.items()),
                       "dhcpd", "-f", "-d", "-4", "-cf", conf, "-lf", leases,
                       "-pf", os.path.join(lab.work, f"{name}.pid"), "eth0")
    assert wait_for(lambda: "Sending on" in lab.output(server) or server.poll() is not None, 10)
    assert server.poll() is None, lab.output(server)
    return server


@pytest.mark.skipif(not shutil.which("dhcpd"), reason="needs isc-dhcp-server")
def test_isc_dhcpd_execute_commit_and_release(env):
    lab = env
    ns = lab.host("isc", "10.79.0.3/24")
    server = start_isc_dhcpd(lab, ns, "dhcpd", ISC_CONF % {"snippet": contrib(lab, "isc-dhcpd/proxydhcp-hook.conf")})
    try:
        cns, mac = client(lab, "c2")
        pxe_discover(lab, cns, "edk2", mac, arch=7)
        ip = udhcpc_cycle(lab, cns, "isc1")
        evs = wait_for(lambda: "release" in str(lease_events(lab, mac, "isc-dhcpd")) and lease_events(lab, mac, "isc-dhcpd"), 10)
        assert evs, (lab.output(server), lab.last_udhcpc, lease_events(lab, mac, "isc-dhcpd"))
        commit, release = evs[0], evs[-1]
        assert commit["action"] == "commit" and commit["ip"] == ip and commit["mac"] == mac
        assert commit["hostname"] == "isc1" and commit["lease_time"] == 600
        assert release["action"] == "release" and release["ip"] == ip
        s = json.loads(stored(lab, "SELECT data FROM sessions WHERE mac=? ORDER BY started DESC", mac)[0][0])
        assert s["lease"]["source"] == "isc-dhcpd" and ip in s["ips"] and s["arch_label"] == "x64-uefi"
        assert f"via isc-dhcpd" in sessions_cli(lab, "--mac", mac)
    finally:
        lab.stop(server)


@pytest.mark.skipif(not shutil.which("dhcpd"), reason="needs isc-dhcp-server")
def test_isc_dhcpd_expiry_names_the_mac_saved_at_commit(env):
    """on expiry has no packet in scope: the snippet's MAC is the one saved with the lease at
    commit (set pd_mac). A client that leaves without a release; its 5 s lease expires."""
    lab = env
    ns = lab.host("isc2", "10.79.0.5/24")
    server = start_isc_dhcpd(lab, ns, "dhcpd-expiry",
                             ISC_CONF.replace("600", "5").replace("160 10.79.0.180", "181 10.79.0.190") %
                             {"snippet": contrib(lab, "isc-dhcpd/proxydhcp-hook.conf")} + "min-lease-time 5;\n")
    try:
        cns, mac = client(lab, "c4")
        ip = udhcpc(lab, cns, "-x hostname:gone1")       # -q: it quits with its lease, no release
        evs = wait_for(lambda: "expire" in str(lease_events(lab, mac, "isc-dhcpd")) and lease_events(lab, mac, "isc-dhcpd"), 30)
        assert evs, (lab.output(server), lease_events(lab, mac, "isc-dhcpd"))
        assert evs[0]["action"] == "commit" and evs[0]["lease_time"] == 5
        expire = evs[-1]
        assert expire["action"] == "expire" and expire["mac"] == mac and expire["ip"] == ip
        assert expire["server_action"] == "expiry"
    finally:
        lab.stop(server)


@pytest.mark.skipif(not shutil.which("kea-dhcp4") or not os.path.exists(KEA_RUN_SCRIPT),
                    reason="needs kea-dhcp4-server (libdhcp_run_script.so)")
def test_kea_run_script_committed_and_release(env):
    lab = env
    ns = lab.host("kea", "10.79.0.4/24")
    conf = os.path.join(lab.work, "kea.json")
    with open(contrib(lab, "kea/kea-dhcp4-hook.json")) as fh:
        snippet = json.load(fh)              # merged into Dhcp4, as its comment says
    (lib,) = snippet["hooks-libraries"]
    assert lib["library"] == KEA_RUN_SCRIPT and lib["parameters"]["name"] == os.path.join(HOOKS, "kea-hook")
    lib["parameters"]["name"] = contrib(lab, "kea/proxydhcp-kea-wrapper")   # this lab's state dir
    dhcp4 = {"interfaces-config": {"interfaces": ["eth0"], "dhcp-socket-type": "raw"},
             "lease-database": {"type": "memfile", "persist": False},
             "valid-lifetime": 900,
             "subnet4": [{"id": 1, "subnet": "10.79.0.0/24", "pools": [{"pool": "10.79.0.200 - 10.79.0.220"}]}],
             "loggers": [{"name": "kea-dhcp4", "output_options": [{"output": "stdout"}], "severity": "INFO"}]}
    dhcp4.update(snippet)
    with open(conf, "w") as fh:
        json.dump({"Dhcp4": dhcp4}, fh)
    kea_env = dict(os.environ, KEA_PIDFILE_DIR=lab.work, KEA_LOCKFILE_DIR=lab.work)
    server = lab.spawn(ns, "kea-dhcp4", "-c", conf, env=kea_env)
    try:
        assert wait_for(lambda: "DHCP4_STARTED" in lab.output(server) or server.poll() is not None, 10)
        assert server.poll() is None, lab.output(server)
        cns, mac = client(lab, "c3")
        pxe_discover(lab, cns, "edk2", mac, arch=7)
        ip = udhcpc_cycle(lab, cns, "kea1")
        evs = wait_for(lambda: "release" in str(lease_events(lab, mac, "kea")) and lease_events(lab, mac, "kea"), 10)
        assert evs, (lab.output(server), lab.last_udhcpc, lease_events(lab, mac, "kea"))
        actions = [e["action"] for e in evs]
        assert actions[0] == "commit" and "release" in actions
        commit = evs[0]
        assert commit["ip"] == ip and commit["hostname"] == "kea1" and commit["lease_time"] == 900
        assert commit["iface"] == "eth0" and commit["server_action"] == "leases4_committed"
        assert "via kea" in sessions_cli(lab, "--mac", mac)
    finally:
        lab.stop(server)
