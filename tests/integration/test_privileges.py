"""Least privilege: `proxydhcp serve` started as root in a namespace binds everything, then
runs as the unprivileged user with only CAP_NET_RAW and CAP_NET_BIND_SERVICE, and a
scripted PXE client still boots end to end (DHCP on 67 and 4011, TFTP, HTTP). A new
interface after the drop is listened on (a packet socket needs CAP_NET_RAW), and the
event store, owned by that user, records the transfer.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile

import dpkt
import pytest

from proxydhcp import events, privileges
from tests.netlab import Lab, have_root, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PY = sys.executable
PROXY = "10.81.0.2"

pytestmark = pytest.mark.skipif(not have_root() or not shutil.which("curl"),
                                reason="needs root, iproute2 and curl")

CONFIG = """
dhcp: {{interfaces: []}}
boot: {{firmware: {{bios: undionly.kpxe, x64-uefi: snponly.efi}}}}
tftp: {{root: {root}}}
http: {{port: 8080}}
state: {{dir: {state}}}
log: {{level: info}}
"""


def pxe_client(lab: Lab, ns: str, kind: str, *args: str) -> list[dict]:
    out = lab.sh(ns, " ".join([f"cd {ROOT} &&", PY, "-m", "tests.pxe_client", kind, "--wait", "1.5", *args]))
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def ours(replies) -> dpkt.dhcp.DHCP:
    [r] = [r for r in replies if r["src"] == PROXY]
    return dpkt.dhcp.DHCP(bytes.fromhex(r["hex"])), r["sport"]


@pytest.fixture(scope="module")
def lab():
    work = tempfile.mkdtemp(prefix="proxydhcp-priv-")
    os.chmod(work, 0o755)          # the dropped user must reach the TFTP root
    root = os.path.join(work, "tftp")
    os.mkdir(root)
    for name in ("undionly.kpxe", "snponly.efi"):
        shutil.copyfile(f"/usr/lib/ipxe/{name}", os.path.join(root, name))
    state = os.path.join(work, "state")
    cfg = os.path.join(work, "proxydhcp.yaml")
    with open(cfg, "w") as fh:
        fh.write(CONFIG.format(root=root, state=state))
    with Lab("10.81.0") as lab:
        lab.work, lab.root, lab.state = work, root, state
        lab.pxe = lab.host("pxe", f"{PROXY}/24")
        lab.client = lab.host("client", "10.81.0.50/24")
        lab.proxy = lab.spawn(lab.pxe, PY, "-m", "proxydhcp", "serve", "-c", cfg, cwd=ROOT)
        ok = wait_for(lambda: " running (config:" in lab.output(lab.proxy) or lab.proxy.poll() is not None, 20)
        assert ok and lab.proxy.poll() is None, lab.output(lab.proxy)
        yield lab
    shutil.rmtree(work, ignore_errors=True)


def status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as fh:
        return dict(line.split(":\t", 1) for line in fh.read().splitlines() if ":\t" in line)


def test_runs_as_the_unprivileged_user_with_two_capabilities(lab):
    user = privileges.choose_user(None)          # proxydhcp if it exists, else nobody
    st = status(lab.proxy.pid)
    assert st["Name"].startswith("python"), st["Name"]     # ip netns exec ran the daemon itself
    assert st["Uid"].split() == [str(user.pw_uid)] * 4
    assert st["Gid"].split() == [str(user.pw_gid)] * 4
    caps = privileges.status_caps("\n".join(f"{k}:\t{v}" for k, v in st.items()))
    two = {privileges.CAP_NET_RAW, privileges.CAP_NET_BIND_SERVICE}
    assert privileges.caps_in(caps["CapEff"]) == two
    assert privileges.caps_in(caps["CapPrm"]) == two
    assert caps["CapInh"] == 0 and caps.get("CapAmb", 0) == 0
    assert privileges.caps_in(caps["CapBnd"]) == two
    assert st["NoNewPrivs"].strip() == "1"
    assert "dropped privileges: uid %d (%s)" % (user.pw_uid, user.pw_name) in lab.output(lab.proxy)
    # the state it writes belongs to that user
    for path in (lab.state, os.path.join(lab.state, "events.sqlite"), os.path.join(lab.state, "spool")):
        assert os.stat(path).st_uid == user.pw_uid, path
    # its event-store writer process dropped root too, and keeps no capability
    writers = [int(d) for d in os.listdir("/proc") if d.isdigit() and _ppid(int(d)) == lab.proxy.pid]
    assert len(writers) == 1, writers
    assert wait_for(lambda: status(writers[0])["Uid"].split() == [str(user.pw_uid)] * 4, 5), status(writers[0])
    w = status(writers[0])
    assert w["Gid"].split() == [str(user.pw_gid)] * 4 and w["Groups"].strip() == ""
    wcaps = privileges.status_caps("\n".join(f"{k}:\t{v}" for k, v in w.items()))
    assert wcaps["CapEff"] == 0 and wcaps["CapPrm"] == 0


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return -1


def test_pxe_client_boots_end_to_end_after_the_drop(lab):
    mac = "52:54:00:81:00:01"
    offer, sport = ours(pxe_client(lab, lab.client, "legacy-bios", "--mac", mac))      # 67
    assert sport == 67 and offer.file.rstrip(b"\0") == b"undionly.kpxe"
    ack, sport = ours(pxe_client(lab, lab.client, "edk2", "--mac", "52:54:00:81:00:02", "--message", "request",
                                 "--to", PROXY, "--port", "4011", "--sport", "4011", "--ciaddr", "10.81.0.50"))
    assert sport == 4011 and ack.file.rstrip(b"\0") == b"snponly.efi"
    out = os.path.join(lab.work, "got.kpxe")            # TFTP: a new per-transfer socket
    lab.sh(lab.client, f"curl -sS --fail -o {out} tftp://{PROXY}/undionly.kpxe")
    with open(out, "rb") as a, open(os.path.join(lab.root, "undionly.kpxe"), "rb") as b:
        assert a.read() == b.read()
    offer, _ = ours(pxe_client(lab, lab.client, "ipxe", "--mac", mac, "--arch", "0"))   # iPXE: script URL
    url = offer.file.rstrip(b"\0").decode()
    assert url.startswith(f"http://{PROXY}:8080/boot.ipxe?mac={mac}")
    script = lab.sh(lab.client, f"curl -sS --fail '{url}'").stdout
    assert script.startswith("#!ipxe"), script
    assert lab.proxy.poll() is None


def test_new_interface_after_the_drop_is_listened_on(lab):
    lab.sh(lab.pxe, "ip link add pd81x type veth peer name pd81y && ip addr add 10.181.0.1/24 dev pd81x "
                   "&& ip link set pd81y up && ip link set pd81x up")
    assert wait_for(lambda: "listening on pd81x (10.181.0.1)" in lab.output(lab.proxy), 10), lab.output(lab.proxy)
    assert "pd81x: cannot listen" not in lab.output(lab.proxy)


def test_event_store_written_by_the_unprivileged_daemon(lab):
    """Last: stops the daemon (SIGTERM), which writes the store and exits 0."""
    lab.proxy.send_signal(signal.SIGTERM)
    assert lab.proxy.wait(30) == 0, lab.output(lab.proxy)
    conn = sqlite3.connect(os.path.join(lab.state, "events.sqlite"))
    rows = [json.loads(d) for (d,) in conn.execute("SELECT data FROM events WHERE kind = ?",
                                                      (events.TFTP_TRANSFER,))]
    conn.close()
    assert any(r["file"] == "undionly.kpxe" and r["outcome"] == "ok" for r in rows), rows
    assert "Traceback" not in lab.output(lab.proxy)


@pytest.mark.skipif(not shutil.which("setpriv"), reason="needs setpriv (util-linux)")
def test_started_as_a_user_with_ambient_caps_it_changes_nothing():
    """As systemd starts it (User= + AmbientCapabilities=): no drop, it binds 67/69/4011/HTTP
    with the two capabilities it was given, and says so."""
    import pathlib
    user = privileges.choose_user(None)
    tmp_path = pathlib.Path(tempfile.mkdtemp(prefix="proxydhcp-amb-"))
    os.chmod(tmp_path, 0o777)                # its state dir is created by that user
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CONFIG.format(root="/usr/lib/ipxe", state=tmp_path / "state")
                   .replace("x64-uefi: snponly.efi", "x64-uefi: ipxe.efi"))
    with Lab("10.84.0") as lab:
        ns = lab.host("pxe", "10.84.0.2/24")
        proc = lab.spawn(ns, "setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups",
                         "--inh-caps=+net_raw,+net_bind_service", "--ambient-caps=+net_raw,+net_bind_service",
                         PY, "-m", "proxydhcp", "serve", "-c", str(cfg), cwd=ROOT)
        ok = wait_for(lambda: " running (config:" in lab.output(proc) or proc.poll() is not None, 20)
        assert ok and proc.poll() is None, lab.output(proc)
        log = lab.output(proc)
        assert "not started as root: running with the privileges given" in log and "dropped privileges" not in log
        assert "listening on eth0" in log and "TFTP listening on 0.0.0.0:69" in log
        st = status(proc.pid)
        assert st["Uid"].split() == [str(user.pw_uid)] * 4
        caps = privileges.status_caps("\n".join(f"{k}:\t{v}" for k, v in st.items()))
        assert privileges.caps_in(caps["CapEff"]) == {privileges.CAP_NET_RAW, privileges.CAP_NET_BIND_SERVICE}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, lab.output(proc)
    shutil.rmtree(tmp_path, ignore_errors=True)
