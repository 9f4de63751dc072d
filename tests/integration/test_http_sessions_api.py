"""/api/sessions over real HTTP, from an event store holding one session."""

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from proxydhcp.events.sessions import Tracker
from proxydhcp.events.store import EventStore

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MAC = "52:54:00:aa:00:09"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("api")
    state = tmp / "state"
    store = EventStore(str(state))
    store.open()
    store.start()
    tracker = Tracker("boot_script", 120, 3, 3600)
    tracker.feed({"kind": "dhcp.reply", "time": 1000.0, "mac": MAC, "port": "67", "message": "offer",
                  "request": "discover", "firmware": "ipxe", "arch": 7, "boot_file": "http://x/boot.ipxe"})
    tracker.feed({"kind": "http.fetch", "time": 1001.0, "mac": MAC, "path": "/boot.ipxe", "fetch": "script",
                  "code": 200, "bytes": 100, "client_ip": "10.0.0.9"})
    for session in tracker.by_mac.values():
        store.save_session(session.as_dict())
    store.flush()
    store.stop()
    cfg = tmp / "proxydhcp.yaml"
    cfg.write_text(f"state: {{dir: {state}}}\nhttp: {{port: 0}}\n")
    proc = subprocess.Popen([sys.executable, "-m", "proxydhcp.web", str(cfg)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    proc.base = f"http://127.0.0.1:{int(line)}"
    yield proc
    proc.terminate()
    proc.wait(5)


def get(server, path):
    try:
        with urllib.request.urlopen(server.base + path, timeout=5) as r:
            return r.status, json.loads(r.read()), r.headers["Content-Type"]
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), e.headers["Content-Type"]


def test_list_and_one_session(server):
    code, rows, ctype = get(server, "/api/sessions")
    assert code == 200 and ctype == "application/json"
    assert [r["mac"] for r in rows] == [MAC]
    code, one, _ = get(server, f"/api/sessions/{MAC}")
    assert code == 200 and one["mac"] == MAC and "boot_script" in json.dumps(one)
    assert get(server, "/api/sessions?failed=1")[1] == []


def test_unknown_and_bad_requests(server):
    assert get(server, "/api/sessions/52:54:00:ff:ff:ff")[0] == 404
    assert get(server, "/api/sessions/bogus")[0] == 400
    assert get(server, "/api/sessions?limit=x")[0] == 400
