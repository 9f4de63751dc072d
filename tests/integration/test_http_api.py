"""The api profile over real HTTP on loopback: a local stand-in for a CMDB/Pixiecore API that
answers, answers slowly, fails or is absent. The script request never waits longer than the
timeout, falls back to the local groups, and nothing else waits at all."""

import http.server
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from tests.netlab import wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class API(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        self.mode, self.delay, self.hits, self.answered = "ok", 0.0, [], 0
        self.gate = None   # a threading.Event: every answer is held until it is set
        super().__init__(("127.0.0.1", 0), Handler)


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        api = self.server
        api.hits.append(self.path)
        if api.delay:
            time.sleep(api.delay)
        if api.gate is not None:
            api.gate.wait(20)
        api.answered += 1
        mac = self.path.rsplit("/", 1)[-1]
        if api.mode == "500":
            self.send_response(500)
            self.end_headers()
            return
        if api.mode == "404" or mac.endswith(":ff"):
            self.send_response(404)
            self.end_headers()
            return
        if mac.endswith(":01"):
            body = {"profile": "debian"}
        else:
            body = {"kernel": "http://mirror.test/vmlinuz", "initrd": ["http://mirror.test/initrd"],
                    "cmdline": {"console": "ttyS0", "quiet": True}, "message": f"booting {mac} from the API"}
        data = json.dumps(body).encode()
        try:
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            pass


CONFIG = """
http: {{port: 0}}
profiles:
  cmdb: {{api: {{url: "http://127.0.0.1:{api}/v1/boot/{{{{ mac }}}}", timeout: 0.5, cache: {cache}, retry_after: 2}}}}
  debian: {{kernel: "http://mirror.test/debian/linux"}}
  local: {{exit: true}}
groups:
  - {{name: everyone, profile: cmdb}}
  - {{name: uefi-local, profile: local, selectors: {{arch: 7}}}}
"""


@pytest.fixture
def api():
    server = API()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def start(tmp_path, api_port, cache=60):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CONFIG.format(api=api_port, cache=cache))
    proc = subprocess.Popen([sys.executable, "-m", "proxydhcp.web", str(cfg)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    proc.base = f"http://127.0.0.1:{int(proc.stdout.readline())}"
    return proc


@pytest.fixture
def web(tmp_path, api):
    proc = start(tmp_path, api.server_address[1])
    yield proc
    proc.terminate()
    proc.wait(5)


def fetch(base, path):
    t = time.monotonic()
    with urllib.request.urlopen(base + path, timeout=10) as r:
        return r.read().decode(), time.monotonic() - t


def test_the_api_decides(web, api):
    text, _ = fetch(web.base, "/boot.ipxe?mac=52:54:00:00:00:01&arch=0")
    assert "kernel http://mirror.test/debian/linux" in text                       # a local profile by name
    text, _ = fetch(web.base, "/boot.ipxe?mac=52:54:00:00:00:02&arch=0")
    assert text.startswith("#!ipxe\n") and "echo booting 52:54:00:00:00:02 from the API" in text
    assert "kernel http://mirror.test/vmlinuz console=ttyS0 quiet" in text and "initrd http://mirror.test/initrd" in text
    assert api.hits == ["/v1/boot/52:54:00:00:00:01", "/v1/boot/52:54:00:00:00:02"]
    fetch(web.base, "/boot.ipxe?mac=52:54:00:00:00:01&arch=0")
    assert len(api.hits) == 2                                                       # cached
    text, _ = fetch(web.base, "/boot.ipxe?mac=52:54:00:00:00:03&arch=7")
    assert "profile local" in text and len(api.hits) == 2                           # a more specific local group


def test_404_falls_back_to_the_local_groups(web, api):
    text, _ = fetch(web.base, "/boot.ipxe?mac=52:54:00:00:00:ff&arch=0")
    assert "built-in menu" in text and "no group matches (without api groups)" in text


def test_a_slow_api_costs_one_timeout_then_nothing_and_stalls_nobody(web, api):
    """Shown by order, not by timing: the API holds its answer until the test releases it,
    and everything below is answered while it still holds."""
    api.gate = threading.Event()
    results = {}
    t = threading.Thread(target=lambda: results.update(script=fetch(web.base, "/boot.ipxe?mac=52:54:00:00:00:02&arch=0")))
    try:
        t.start()
        assert wait_for(lambda: len(api.hits) == 1)                                   # the API is asked, and holds
        assert fetch(web.base, "/healthz")[0] == "ok\n"                            # nothing else waits meanwhile
        t.join(10)
        assert "script" in results and api.answered == 0                            # the timeout answered, not the API
        text, _ = results["script"]
        assert "built-in menu" in text and "kernel http://mirror.test/vmlinuz" not in text
        # the API is left alone for retry_after: another machine gets the fallback, the API is not asked
        text, _ = fetch(web.base, "/boot.ipxe?mac=52:54:00:00:00:04&arch=0")
        assert "built-in menu" in text and len(api.hits) == 1 and api.answered == 0
    finally:
        api.gate.set()
    # after retry_after (2 s), a recovered API is asked again
    assert wait_for(lambda: "from the API" in fetch(web.base, "/boot.ipxe?mac=52:54:00:00:00:04&arch=0")[0])


def test_a_failing_or_absent_api_falls_back(tmp_path, api):
    api.mode = "500"
    proc = start(tmp_path, api.server_address[1])
    try:
        text, _ = fetch(proc.base, "/boot.ipxe?mac=52:54:00:00:00:02&arch=0")
        assert "built-in menu" in text and api.hits == ["/v1/boot/52:54:00:00:00:02"]
    finally:
        proc.terminate()
        proc.wait(5)
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = s.getsockname()[1]
    s.close()
    proc = start(tmp_path, dead)
    try:
        text, _ = fetch(proc.base, "/boot.ipxe?mac=52:54:00:00:00:02&arch=7")
        assert "profile local" in text                                              # local group, API not asked
        text, _ = fetch(proc.base, "/boot.ipxe?mac=52:54:00:00:00:02&arch=0")
        assert "built-in menu" in text                                              # refused connection: fallback
    finally:
        proc.terminate()
        proc.wait(5)


def test_many_concurrent_requests_for_one_machine_ask_once(web, api):
    api.delay = 0.3
    out = []
    threads = [threading.Thread(target=lambda: out.append(fetch(web.base, "/boot.ipxe?mac=52:54:00:00:00:05&arch=0")))
               for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert len(out) == 10 and all("from the API" in text for text, _ in out)
    assert api.hits.count("/v1/boot/52:54:00:00:00:05") == 1
