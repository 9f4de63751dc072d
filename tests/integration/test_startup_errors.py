"""Start-up and reload errors: each problem stops `proxydhcp serve` with exactly one line on
stderr naming the fix and a non-zero exit code (1: cannot start, 2: bad config), no
traceback; on SIGHUP the same problems keep the running config and log one line, counted
in proxydhcp_config_reloads_total{result="failed"}. Run as root in a namespace of their own
(a port in use is taken there by a holder process).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest

from tests.netlab import Lab, have_root, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PY = sys.executable

pytestmark = pytest.mark.skipif(not have_root() or not shutil.which("curl"),
                                reason="needs root, iproute2 and curl (a namespace for the daemon)")

BASE = """
dhcp: {{interfaces: [], proxy_port: 4011}}
boot: {{firmware: {{bios: undionly.kpxe, x64-uefi: snponly.efi}}}}
tftp: {{root: {root}, port: 69}}
http: {{port: 8080}}
state: {{dir: {state}}}
"""
HOLD = ("import socket, sys, time; s = socket.socket(socket.AF_INET, socket.SOCK_{kind}); "
        "s.bind(('0.0.0.0', {port})); {listen}print('held', flush=True); time.sleep(120)")


@pytest.fixture(scope="module")
def env():
    work = tempfile.mkdtemp(prefix="proxydhcp-start-")
    os.chmod(work, 0o755)
    root = os.path.join(work, "tftp")
    os.mkdir(root)
    for name in ("undionly.kpxe", "snponly.efi"):
        shutil.copyfile(f"/usr/lib/ipxe/{name}", os.path.join(root, name))
    with Lab("10.82.0") as lab:
        lab.ns = lab.host("pxe", "10.82.0.2/24")
        lab.work, lab.root = work, root
        yield lab
    shutil.rmtree(work, ignore_errors=True)


def write(env, name: str, text: str) -> str:
    path = os.path.join(env.work, name)
    with open(path + ".new", "w") as fh:
        fh.write(text)
    os.replace(path + ".new", path)     # an editor's save: the reloader never reads half a file
    return path


def config(env, extra: str = "", **kw) -> str:
    return BASE.format(root=kw.get("root", env.root), state=os.path.join(env.work, "state")) + extra


def serve(env, text: str, *args: str) -> subprocess.CompletedProcess:
    cfg = write(env, "c.yaml", text)
    return subprocess.run(["ip", "netns", "exec", env.ns, PY, "-m", "proxydhcp", "serve", "-c", cfg, *args],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


def one_line(out: subprocess.CompletedProcess, code: int, line: str) -> None:
    assert out.returncode == code, (out.returncode, out.stderr)
    assert out.stderr == line + "\n", out.stderr
    assert out.stdout == ""


def hold(env, kind: str, port: int):
    listen = "s.listen(); " if kind == "STREAM" else ""
    proc = env.spawn(env.ns, PY, "-c", HOLD.format(kind=kind, port=port, listen=listen))
    assert wait_for(lambda: "held" in env.output(proc) or proc.poll() is not None, 10), env.output(proc)
    return proc


def test_missing_firmware_file(env):
    missing = os.path.join(env.root, "ipxe-missing.efi")
    out = serve(env, config(env, "boot: {firmware: {bios: undionly.kpxe, x64-uefi: ipxe-missing.efi}}\n"))
    one_line(out, 1, f"proxydhcp: cannot start: boot file {missing} (boot.firmware.x64-uefi) is missing: put it "
                     f"there (Debian: apt install ipxe), or fix boot.firmware.x64-uefi or tftp.root")


def test_http_port_0_is_refused_by_serve(env):
    out = serve(env, config(env).replace("http: {port: 8080}", "http: {port: 0}"))
    one_line(out, 1, "proxydhcp: cannot start: http.port 0 would pick another free port at each start, but the "
                     "ProxyDHCP hands iPXE URLs with the port in them: set http.port (default 8080)")


def test_missing_tftp_root(env):
    out = serve(env, config(env, root="/nonexistent/tftp"))
    one_line(out, 1, "proxydhcp: cannot start: tftp.root /nonexistent/tftp does not exist or is not a directory: "
                     "create it, set tftp.root, or set tftp.enabled: false")


def test_tftp_root_unreadable_by_the_unprivileged_user(env):
    private = os.path.join(env.work, "private")
    shutil.copytree(env.root, private)
    os.chmod(private, 0o700)             # root's: the user the daemon becomes cannot read it
    out = serve(env, config(env, root=private), "--user", "nobody")
    one_line(out, 1, f"proxydhcp: cannot start: tftp.root {private} is not readable by user nobody: fix its "
                     f"permissions, make it readable by nobody or set run.user")


@pytest.mark.parametrize("kind,port,line", [
    ("DGRAM", 4011, "UDP port 4011 (dhcp.proxy_port) is in use by another program: stop it or set dhcp.proxy_port"),
    ("DGRAM", 69, "UDP port 69 (tftp.port) is in use by another program (another TFTP server?): stop it, or "
                  "set tftp.port or tftp.enabled: false"),
    ("STREAM", 8080, "TCP port 8080 (http.port) is in use by another program: stop it or set http.port "
                     "(or http.enabled: false)"),
])
def test_port_in_use(env, kind, port, line):
    holder = hold(env, kind, port)
    try:
        out = serve(env, config(env))
        one_line(out, 1, "proxydhcp: cannot start: " + line)
    finally:
        env.stop(holder)


@pytest.mark.parametrize("extra,line", [
    ("tftp: {port: sixty-nine}\n", "tftp.port: expected int, got str 'sixty-nine'"),
    ("tftp: {root: [unclosed\n", "not valid YAML at line"),
    ("log: {format: xml}\n", "log.format: must be text or json, got 'xml'"),
])
def test_bad_config(env, extra, line):
    out = serve(env, config(env) + extra)
    assert out.returncode == 2, out.stderr
    [only] = out.stderr.splitlines()
    assert only.startswith(f"proxydhcp: config error: {os.path.join(env.work, 'c.yaml')}: ") or \
        only.startswith("proxydhcp: config error: "), only
    assert line in only and "Traceback" not in out.stderr


def test_json_log_format_error_is_one_json_line(env):
    import json
    out = serve(env, config(env, root="/nonexistent/tftp"), "--log-format", "json")
    assert out.returncode == 1
    [only] = out.stderr.splitlines()
    record = json.loads(only)
    assert record["level"] == "error" and record["logger"] == "proxydhcp"
    assert record["message"].startswith("cannot start: tftp.root /nonexistent/tftp does not exist")


# --- the same problems on reload ---------------------------------------------------------------
def failed_reloads(env) -> float:
    text = env.sh(env.ns, "curl -sS --fail http://127.0.0.1:8080/metrics").stdout
    m = re.search(r'^proxydhcp_config_reloads_total\{result="failed"\} ([0-9.e+]+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


@pytest.fixture
def running(env):
    cfg = write(env, "r.yaml", config(env))
    proc = env.spawn(env.ns, PY, "-m", "proxydhcp", "serve", "-c", cfg, cwd=ROOT)
    ok = wait_for(lambda: " running (config:" in env.output(proc) or proc.poll() is not None, 20)
    assert ok and proc.poll() is None, env.output(proc)
    proc.cfg = cfg
    yield proc
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, env.output(proc)


def refused(env, proc, text: str, expected: str) -> None:
    before = failed_reloads(env)
    write(env, "r.yaml", text)
    proc.send_signal(signal.SIGHUP)
    # the one line, the message whole, after the file and line of the key when it has one
    line = re.compile(r"SIGHUP: reload refused, keeping the running config: (\S+r\.yaml, line \d+: )?"
                      + re.escape(expected) + "$")
    assert wait_for(lambda: any(line.search(l) for l in env.output(proc).splitlines()), 10), env.output(proc)
    assert failed_reloads(env) >= before + 1
    # the old config still serves: the firmware it names is fetched over TFTP
    got = os.path.join(env.work, "got.efi")
    env.sh(env.ns, f"curl -sS --fail -o {got} tftp://10.82.0.2/snponly.efi")
    with open(got, "rb") as a, open(os.path.join(env.root, "snponly.efi"), "rb") as b:
        assert a.read() == b.read()


def test_reload_problems_keep_the_running_config(env, running):
    missing = os.path.join(env.root, "gone.efi")
    refused(env, running, config(env, "boot: {firmware: {bios: undionly.kpxe, x64-uefi: gone.efi}}\n"),
            f"boot file {missing} (boot.firmware.x64-uefi) is missing: put it there (Debian: apt install ipxe), "
            f"or fix boot.firmware.x64-uefi or tftp.root")
    private = os.path.join(env.work, "private-reload")
    shutil.copytree(env.root, private)
    os.chmod(private, 0o700)
    user = "nobody" if "(nobody)" in env.output(running) else "proxydhcp"
    refused(env, running, config(env, root=private),
            f"tftp.root {private} is not readable by user {user}: fix its permissions, make it readable by "
            f"{user} or set run.user")
    refused(env, running, config(env).replace("port: 8080", "port: 8081"),
            "http.port changed (8080 -> 8081): restart proxydhcp to apply it")
    refused(env, running, config(env) + "log: {format: xml}\n", "log.format: must be text or json, got 'xml'")
    # a key in the file: the log line says where
    assert re.search(r"config: \S+r\.yaml, line \d+: log\.format: must be", env.output(running)), env.output(running)
    assert "Traceback" not in env.output(running)
