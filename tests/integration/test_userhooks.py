"""User hooks end to end: the events service, fed boot events on its bus, runs a real
command hook (which writes a file) and posts a webhook to a small HTTP server on
127.0.0.1, on Twisted's real reactor."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import yaml
from twisted.internet import reactor, task
from twisted.trial import unittest

from proxydhcp import config, metrics
from proxydhcp.events import EventBus
from proxydhcp.events.service import EventsService

MAC = "52:54:00:aa:bb:01"
IP = "10.77.0.51"


async def until(cond, timeout=15.0, what="condition"):
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await task.deferLater(reactor, 0.05, lambda: None)


class Receiver(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.path, self.headers.get("Content-Type"), json.loads(body)))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def boot_events(t0):
    return [
        ("dhcp.reply", dict(time=t0, port="67", message="offer", request="discover", mac=MAC, arch=7,
                            firmware="legacy-pxe", client_ip=None, boot_file="", xid=1)),
        ("dhcp.reply", dict(time=t0 + 1, port="4011", message="ack", request="request", mac=MAC, arch=7,
                            firmware="legacy-pxe", client_ip=IP, boot_file="ipxe.efi")),
        ("tftp.transfer", dict(time=t0 + 2, client=f"{IP}:1234", client_ip=IP, file="ipxe.efi",
                               size=1000, outcome="ok")),
        ("dhcp.reply", dict(time=t0 + 3, port="67", message="offer", request="discover", mac=MAC, arch=7,
                            firmware="ipxe", client_ip=None, boot_file="http://10.77.0.1:8080/boot.ipxe")),
        ("http.fetch", dict(time=t0 + 4, mac=MAC, client_ip=IP, path="/boot.ipxe", fetch="script",
                            code=200, bytes=100)),
        ("lease", dict(time=t0 + 30, source="dnsmasq", action="add", mac=MAC, ip=IP, hostname="host1",
                       lease_time=3600)),
    ]


class UserHooksEndToEnd(unittest.TestCase):
    timeout = 60

    def mktemp(self):
        """A fresh path under a temporary directory (trial's own writes into the cwd)."""
        if not hasattr(self, "_tmp"):
            self._tmp = tempfile.mkdtemp(prefix="proxydhcp-userhooks-")
            # after the service's own cleanup: its unix socket goes away a reactor turn later
            self.addCleanup(lambda: task.deferLater(reactor, 0.2, shutil.rmtree, self._tmp, True))
        self._n = getattr(self, "_n", 0) + 1
        return os.path.join(self._tmp, f"t{self._n}")

    async def test_command_hook_writes_a_file_and_webhook_reaches_the_server(self):
        Receiver.received = []
        http = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
        threading.Thread(target=http.serve_forever, daemon=True).start()
        self.addCleanup(http.server_close)
        self.addCleanup(http.shutdown)

        state = self.mktemp()
        out = self.mktemp()
        cfg_path = self.mktemp()
        with open(cfg_path, "w") as f:
            yaml.safe_dump({"state": {"dir": state}, "events": {
                "user_hooks_max_concurrent": 2,
                "user_hooks": [
                    {"name": "it-booted", "on": ["session_succeeded"], "timeout": 10,
                     "command": ["/bin/sh", "-c",
                                 f'cat > {out}.tmp && echo "$PROXYDHCP_EVENT $PROXYDHCP_MAC $PROXYDHCP_STAGE" '
                                 f'>> {out}.tmp && mv {out}.tmp {out}']},
                    {"name": "it-web", "on": ["session_succeeded", "lease"],
                     "url": f"http://127.0.0.1:{http.server_address[1]}/proxydhcp"},
                    {"name": "it-failed", "on": ["session_failed"], "command": ["/bin/false"]},
                ]}}, f)
        live = config.LiveConfig(config.load(cfg_path), cfg_path)
        bus = EventBus()
        svc = EventsService(live, bus, reactor)
        svc.startService()
        self.addCleanup(svc.stopService)
        ok_before = metrics.REGISTRY.get_sample_value(
            "proxydhcp_hook_runs_total", {"hook": "it-web", "result": "ok"}) or 0.0

        t0 = time.time()
        for kind, fields in boot_events(t0):
            bus.emit(kind, **fields)
        assert not svc.user_hooks.running     # emitting returned before any hook started

        await until(lambda: svc.user_hooks.counts[("it-booted", "ok")] == 1
                    and svc.user_hooks.counts[("it-web", "ok")] == 2, what="the hooks")
        stdin, env_line = open(out).read().rsplit("\n", 2)[:2]
        event = json.loads(stdin)
        assert event["event"] == "session_succeeded" and event["mac"] == MAC
        assert event["stage"] == "boot_script" and event["arch"] == "x64-uefi"
        assert env_line == f"session_succeeded {MAC} boot_script"

        posts = sorted(Receiver.received, key=lambda r: r[2]["event"])
        assert [(p, ct, body["event"]) for p, ct, body in posts] == [
            ("/proxydhcp", "application/json", "lease"),
            ("/proxydhcp", "application/json", "session_succeeded")]
        lease = posts[0][2]
        assert lease["ip"] == IP and lease["hostname"] == "host1" and lease["action"] == "add"
        assert svc.user_hooks.counts[("it-failed", "failed")] == 0
        assert metrics.REGISTRY.get_sample_value(
            "proxydhcp_hook_runs_total", {"hook": "it-web", "result": "ok"}) == ok_before + 2
