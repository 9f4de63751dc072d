"""The HTTP service over real HTTP on loopback: per-MAC scripts, Range, traversal refused,
firmware, metrics, and a reload with a broken file that keeps the old config."""

import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from tests.netlab import wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CONFIG = """
state: {{dir: {state}}}
http: {{port: 0, root: {root}}}
tftp: {{root: {tftp}}}
boot: {{firmware: {{bios: undionly.kpxe, x64-uefi: ipxe.efi}}}}
profiles:
  local: {{exit: true}}
  hello: {{script: "echo hello {{{{ mac }}}} ${{net0/ip}}"}}
  debian: {{kernel: debian/linux, initrd: debian/initrd.gz, cmdline: "auto=true"}}
groups:
  - {{name: default, profile: local}}
  - {{name: lab, profile: hello, selectors: {{mac: "52:54:00:aa:*"}}}}
  - {{name: installers, profile: debian, selectors: {{arch: 7}}}}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("http")
    root = tmp / "www"
    (root / "debian").mkdir(parents=True)
    big = os.urandom(5 * 1024 * 1024 + 123)
    (root / "debian" / "big.iso").write_bytes(big)
    (tmp / "secret.txt").write_text("secret")
    os.symlink(tmp / "secret.txt", root / "escape")
    tftp = tmp / "tftp"
    tftp.mkdir()
    (tmp / "real.efi").write_bytes(b"EFI" * 1000)
    os.symlink(tmp / "real.efi", tftp / "ipxe.efi")          # like Debian's /usr/lib/ipxe/ipxe.efi
    (tftp / "undionly.kpxe").write_bytes(b"KPXE" * 100)
    cfg = tmp / "proxydhcp.yaml"
    state = tmp / "state"
    from proxydhcp.events.sessions import Tracker
    from proxydhcp.events.store import EventStore
    store = EventStore(str(state))
    store.open()
    store.start()
    tracker = Tracker("boot_script", 120, 3, 3600)
    for i, (kind, fields) in enumerate([
            ("dhcp.reply", dict(port="67", message="offer", request="discover", firmware="ipxe", arch=7,
                                boot_file="http://x/boot.ipxe")),
            ("http.fetch", dict(path="/boot.ipxe", fetch="script", code=200, bytes=100, client_ip="10.0.0.9"))]):
        tracker.feed({"kind": kind, "time": 1000.0 + i, "mac": "52:54:00:aa:00:09", **fields})
    for sess in tracker.by_mac.values():
        store.save_session(sess.as_dict())
    store.flush()
    store.stop()
    cfg.write_text(CONFIG.format(root=root, tftp=tftp, state=state))
    proc = subprocess.Popen([sys.executable, "-m", "tests.http_harness", str(cfg)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    port = int(proc.stdout.readline())
    proc.base = f"http://127.0.0.1:{port}"
    proc.cfg, proc.big = cfg, big
    yield proc
    proc.terminate()
    proc.wait(5)


def get(server, path, headers=None):
    req = urllib.request.Request(server.base + path, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def test_different_macs_get_different_scripts(server):
    code, a, _ = get(server, "/boot.ipxe?mac=52:54:00:aa:00:01&arch=0")
    assert code == 200 and a.startswith(b"#!ipxe\n") and b"echo hello 52:54:00:aa:00:01 ${net0/ip}" in a
    code, b, _ = get(server, "/boot.ipxe?mac=52:54:00:bb:00:01&arch=7")
    assert code == 200 and b"kernel http://127.0.0.1:" in b and b"/debian/linux auto=true" in b
    code, c, _ = get(server, "/boot.ipxe?mac=52:54:00:bb:00:01&arch=0")
    assert code == 200 and b"exit 0" in c


def test_bad_mac_is_a_clear_400(server):
    code, body, _ = get(server, "/boot.ipxe?mac=nonsense")
    assert code == 400 and b"needs ?mac=" in body


@pytest.mark.parametrize("rng,start,end", [("bytes=0-99", 0, 99), ("bytes=1048576-2097151", 1048576, 2097151),
                                           ("bytes=-500", None, None)])
def test_range_requests_return_the_right_bytes(server, rng, start, end):
    code, body, headers = get(server, "/debian/big.iso", {"Range": rng})
    assert code == 206
    if start is None:
        assert body == server.big[-500:]
    else:
        assert body == server.big[start:end + 1]


def test_whole_file_byte_compare(server):
    code, body, _ = get(server, "/debian/big.iso")
    assert code == 200 and body == server.big


@pytest.mark.parametrize("path", ["/../secret.txt", "/debian/../../secret.txt", "/%2e%2e/secret.txt",
                                  "/debian/%2e%2e%2f%2e%2e%2fsecret.txt", "/escape", "/debian%5c..%5c..%5csecret.txt"])
def test_traversal_is_refused(server, path):
    code, body, _ = get(server, path)
    assert code in (400, 403, 404) and b"secret" not in body


def test_firmware_serves_configured_boot_files_through_links_only(server):
    code, body, _ = get(server, "/firmware/ipxe.efi")
    assert code == 200 and body == b"EFI" * 1000
    assert get(server, "/firmware/secret.txt")[0] == 404
    assert get(server, "/firmware/..%2fsecret.txt")[0] == 404


def test_metrics_and_health(server):
    get(server, "/boot.ipxe?mac=52:54:00:aa:00:02")
    code, body, headers = get(server, "/metrics")
    assert code == 200 and b'proxydhcp_http_requests_total{code="200",kind="script"}' in body
    assert get(server, "/healthz")[:2] == (200, b"ok\n")


def test_reload_with_a_broken_file_keeps_the_old_config(server):
    good = server.cfg.read_text()
    server.cfg.write_text(good + "\ngroups: [{profile: missing}]\n")
    try:
        server.send_signal(signal.SIGHUP)
        line = server.stdout.readline()
        assert line.startswith("RELOAD-FAILED") and "not defined" in line
        code, body, _ = get(server, "/boot.ipxe?mac=52:54:00:aa:00:03")
        assert code == 200 and b"echo hello" in body
        code, body, _ = get(server, "/metrics")
        assert b'proxydhcp_config_reloads_total{result="failed"} 1.0' in body
        assert b"proxydhcp_config_last_reload_successful 0.0" in body
    finally:
        server.cfg.write_text(good.replace("hello {{ mac }}", "bonjour {{ mac }}"))
    server.send_signal(signal.SIGHUP)
    assert server.stdout.readline().startswith("RELOAD-OK")
    assert b"echo bonjour" in get(server, "/boot.ipxe?mac=52:54:00:aa:00:03")[1]


def test_api_sessions(server):
    code, body, headers = get(server, "/api/sessions")
    import json
    rows = json.loads(body)
    assert code == 200 and headers["Content-Type"] == "application/json"
    assert [r["mac"] for r in rows] == ["52:54:00:aa:00:09"]
    code, body, _ = get(server, "/api/sessions/52:54:00:aa:00:09")
    one = json.loads(body)
    assert code == 200 and one["mac"] == "52:54:00:aa:00:09" and "boot_script" in json.dumps(one)
    assert get(server, "/api/sessions/52:54:00:ff:ff:ff")[0] == 404
    assert get(server, "/api/sessions/bogus")[0] == 400
