"""SIGTERM and logs, on a daemon running as root in a namespace (privileges dropped).

SIGTERM during a slow TFTP transfer (a client that ACKs slowly) and a slow HTTP download:
new requests are no longer taken, both complete byte for byte, the daemon exits 0 without aborting
it (within run.stop_grace), and the event store holds the transfer's event.
The daemon logs as JSON (--log-format json, log.events: true): every stderr line parses,
and each carries level, logger and message; event lines carry the event's fields.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import sys
import tempfile

import pytest

from proxydhcp import events
from tests.netlab import Lab, have_root, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PY = sys.executable
SERVER = "10.83.0.2"

pytestmark = pytest.mark.skipif(not have_root() or not shutil.which("curl"),
                                reason="needs root, iproute2 and curl")

CONFIG = """
dhcp: {{interfaces: [eth0]}}
boot: {{firmware: {{bios: undionly.kpxe}}}}
tftp: {{root: {root}}}
http: {{port: 8080, root: {http_root}}}
state: {{dir: {state}}}
log: {{events: true}}
run: {{stop_grace: 60}}
"""

# A TFTP client that waits `delay` seconds before each ACK; prints "started" after 20 blocks.
SLOW_CLIENT = r"""
import hashlib, socket, struct, sys, time
server, name, out, delay = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(10)
s.sendto(b"\x00\x01" + name.encode() + b"\x00octet\x00", (server, 69))
data, expect, told = bytearray(), 1, False
while True:
    pkt, peer = s.recvfrom(2048)
    op, block = struct.unpack("!HH", pkt[:4])
    if op == 5:
        print("error", pkt[4:], flush=True)
        sys.exit(1)
    if block == expect & 0xFFFF:
        data += pkt[4:]
        expect += 1
    time.sleep(delay)
    s.sendto(struct.pack("!HH", 4, block), peer)
    if expect > 20 and not told:
        print("started", flush=True)
        told = True
    if len(pkt) - 4 < 512 and block == (expect - 1) & 0xFFFF:
        break
open(out, "wb").write(data)
print("done", len(data), hashlib.sha256(data).hexdigest(), flush=True)
"""


@pytest.fixture
def env():
    work = tempfile.mkdtemp(prefix="proxydhcp-term-")
    os.chmod(work, 0o755)
    root = os.path.join(work, "tftp")
    os.mkdir(root)
    shutil.copyfile("/usr/lib/ipxe/undionly.kpxe", os.path.join(root, "undionly.kpxe"))
    payload = os.urandom(150 * 1024 + 77)
    with open(os.path.join(root, "slow.bin"), "wb") as fh:
        fh.write(payload)
    http_root = os.path.join(work, "www")
    os.mkdir(http_root)
    big = os.urandom(8 << 20)
    with open(os.path.join(http_root, "big.bin"), "wb") as fh:
        fh.write(big)
    client = os.path.join(work, "slow_client.py")
    with open(client, "w") as fh:
        fh.write(SLOW_CLIENT)
    cfg = os.path.join(work, "c.yaml")
    with open(cfg, "w") as fh:
        fh.write(CONFIG.format(root=root, http_root=http_root, state=os.path.join(work, "state")))
    with Lab("10.83.0") as lab:
        lab.work, lab.payload, lab.client_py, lab.big = work, payload, client, big
        lab.srv = lab.host("srv", f"{SERVER}/24")
        lab.cli = lab.host("cli", "10.83.0.50/24")
        # small TCP buffers in both namespaces (per-netns sysctls), so the kernel cannot take the
        # whole HTTP body at once and the response is still under way at SIGTERM on any host
        lab.sh(lab.srv, "sysctl -qw net.ipv4.tcp_wmem='4096 16384 262144'")
        lab.sh(lab.cli, "sysctl -qw net.ipv4.tcp_rmem='4096 65536 262144'")
        lab.proxy = lab.spawn(lab.srv, PY, "-m", "proxydhcp", "serve", "-c", cfg, "--log-format", "json", cwd=ROOT)
        ok = wait_for(lambda: " running (config:" in lab.output(lab.proxy) or lab.proxy.poll() is not None, 20)
        assert ok and lab.proxy.poll() is None, lab.output(lab.proxy)
        yield lab
    shutil.rmtree(work, ignore_errors=True)


def test_sigterm_lets_a_slow_transfer_finish_and_flushes_the_event(env):
    out = os.path.join(env.work, "got.bin")
    client = env.spawn(env.cli, PY, env.client_py, SERVER, "slow.bin", out, "0.03")
    assert wait_for(lambda: "started" in env.output(client) or client.poll() is not None, 20), env.output(client)
    got_big = os.path.join(env.work, "got-big.bin")     # a slow HTTP download (8 MiB at 2 MiB/s, 4 s)
    curl = env.spawn(env.cli, "curl", "-sS", "--fail", "--limit-rate", "2M", "-o", got_big,
                     f"http://{SERVER}:8080/big.bin")
    assert wait_for(lambda: os.path.exists(got_big) and os.path.getsize(got_big) > 0 or curl.poll() is not None, 10)
    env.proxy.send_signal(signal.SIGTERM)
    assert wait_for(lambda: "stopping: no new requests" in env.output(env.proxy), 10), env.output(env.proxy)
    assert "for 1 TFTP transfer(s) and 1 HTTP response(s)" in env.output(env.proxy)
    # no new work: a new request is not answered while the slow transfer is still running
    late = env.sh(env.cli, f"curl -sS --max-time 2 -o /dev/null tftp://{SERVER}/undionly.kpxe", check=False)
    assert late.returncode != 0
    assert client.poll() is None, "the slow transfer should still be running"
    assert client.wait(60) == 0, env.output(client)
    assert env.proxy.wait(60) == 0, env.output(env.proxy)
    with open(out, "rb") as fh:
        assert fh.read() == env.payload
    assert curl.wait(60) == 0, env.output(curl)
    with open(got_big, "rb") as fh:
        assert fh.read() == env.big
    assert f"done {len(env.payload)} {hashlib.sha256(env.payload).hexdigest()}" in env.output(client)
    log = env.output(env.proxy)
    assert "stop grace" not in log and "server stopping" not in log     # nothing was aborted
    conn = sqlite3.connect(os.path.join(env.work, "state", "events.sqlite"))
    rows = [json.loads(d) for (d,) in conn.execute("SELECT data FROM events WHERE kind = ?", (events.TFTP_TRANSFER,))]
    conn.close()
    [slow] = [r for r in rows if r["file"] == "slow.bin"]
    assert slow["outcome"] == "ok" and slow["size"] == len(env.payload)

    # the log: JSON, one object per line, every line
    records = [json.loads(line) for line in log.splitlines()]
    assert records and all({"time", "level", "logger", "message"} <= set(r) for r in records)
    assert {r["level"] for r in records} <= {"debug", "info", "warning", "error"}
    [ev] = [r for r in records if r["logger"] == "proxydhcp.event" and r.get("kind") == events.TFTP_TRANSFER
            and r.get("file") == "slow.bin"]
    assert ev["outcome"] == "ok" and ev["size"] == len(env.payload) and ev["client_ip"] == "10.83.0.50"
    assert ev["message"].startswith(f"event {events.TFTP_TRANSFER} ") and "file=slow.bin" in ev["message"]
    assert any(r["message"].startswith("dropped privileges:") for r in records)
    assert records[-1]["message"] == "stopped"
