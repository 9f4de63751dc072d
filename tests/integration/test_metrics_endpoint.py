"""`promtool check metrics` on the live /metrics of the HTTP service (`python -m proxydhcp.web`
on loopback, ephemeral port, no root needed), after it has served scripts, a file, a 404
and /metrics itself. (The full daemon's /metrics, with boot sessions, TFTP and DHCP
families populated, is checked the same way in test_prometheus_boot_health.)"""

import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.skipif(not shutil.which("promtool"), reason="promtool (Debian package prometheus)")


@pytest.fixture
def server(tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    (www / "vmlinuz").write_bytes(os.urandom(50_000))
    tftp = tmp_path / "tftp"
    tftp.mkdir()
    (tftp / "ipxe.efi").write_bytes(b"EFI" * 100)
    cfg = tmp_path / "proxydhcp.yaml"
    cfg.write_text(f"http: {{port: 0, root: {www}}}\ntftp: {{root: {tftp}}}\nstate: {{dir: {tmp_path / 'state'}}}\n"
                   "boot: {firmware: {x64-uefi: ipxe.efi}}\n")
    proc = subprocess.Popen([sys.executable, "-m", "proxydhcp.web", str(cfg)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        proc.base = f"http://127.0.0.1:{int(proc.stdout.readline())}"
        yield proc
    finally:
        proc.terminate()
        proc.wait(5)


def fetch(url: str, accept: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_promtool_accepts_live_metrics(server):
    assert fetch(server.base + "/boot.ipxe?mac=52:54:00:12:34:56&arch=7")[0] == 200
    assert fetch(server.base + "/vmlinuz")[0] == 200
    assert fetch(server.base + "/firmware/ipxe.efi")[0] == 200
    assert fetch(server.base + "/nothing-here")[0] == 404
    fetch(server.base + "/metrics")
    code, body = fetch(server.base + "/metrics")
    text = body.decode()
    assert code == 200
    for family in ("proxydhcp_http_requests_total", "proxydhcp_http_transfer_duration_seconds_bucket",
                   "proxydhcp_build_info", "proxydhcp_tftp_transfers_total", "proxydhcp_config_reloads_total"):
        assert re.search(rf"^{family}{{", text, re.M), family
    assert re.search(r'^proxydhcp_http_requests_total{code="200",kind="script"} 1\.0$', text, re.M), text
    out = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout == "" and out.stderr == "", out.stdout + out.stderr
    assert "52:54:00:12:34:56" not in text and "127.0.0.1" not in text
