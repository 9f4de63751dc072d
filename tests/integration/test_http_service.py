"""The HTTP service over real HTTP on loopback (`python -m proxydhcp.web`, no root needed):
per-MAC scripts for an iPXE-like client, Range byte-compares, traversal refused, firmware,
metrics, fetch events, and reloads (SIGHUP and file change) that keep the old config when
the new one is broken."""

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from tests.netlab import wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CONFIG = """
http: {{port: 0, root: {root}}}
tftp: {{root: {tftp}}}
boot: {{firmware: {{bios: undionly.kpxe, x64-uefi: ipxe.efi}}}}
profiles:
  local: {{description: Local disk, exit: true}}
  hello: {{script: "echo hello {{{{ mac }}}} rack {{{{ rack }}}} ${{net0/ip}}"}}
  debian: {{description: Debian, kernel: debian/linux, initrd: debian/initrd.gz, cmdline: "auto=true"}}
  iso: {{sanboot: debian/big.iso}}
  menu: {{menu: {{items: [debian, iso, local], default: local, timeout: 3}}}}
  who: {{script: "echo who {{{{ mac }}}} uuid {{{{ uuid }}}} arch {{{{ arch }}}} ip {{{{ ip }}}}"}}
groups:
  - {{name: default, profile: local}}
  - {{name: lab, profile: hello, selectors: {{mac: "52:54:00:aa:*"}}, metadata: {{rack: r2}}}}
  - {{name: installers, profile: debian, selectors: {{arch: 7, mac: "52:54:00:bb:*"}}}}
  - {{name: menu, profile: menu, selectors: {{mac: "52:54:00:cc:00:01"}}}}
  - {{name: by-uuid, profile: who, selectors: {{uuid: 6e65746c-6162-4000-8000-0000000000e1, arch: 0}}}}
"""


class Server:
    def __init__(self, proc, cfg, big):
        self.proc, self.cfg, self.big = proc, cfg, big
        self.lines = queue.Queue()
        self.port = int(proc.stdout.readline())
        self.base = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))

    def events(self, timeout=2.0, until=None):
        out, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                out.append(self.lines.get(timeout=0.05))
            except queue.Empty:
                if until is None or until(out):
                    if until is not None:
                        break
        return out


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("http")
    root = tmp / "www"
    (root / "debian").mkdir(parents=True)
    big = os.urandom(5 * 1024 * 1024 + 123)
    (root / "debian" / "big.iso").write_bytes(big)
    (tmp / "secret.txt").write_text("secret")
    os.symlink(tmp / "secret.txt", root / "escape")
    os.symlink(root / "debian" / "big.iso", root / "inside-link.iso")
    os.symlink(tmp, root / "debian" / "up")
    tftp = tmp / "tftp"
    tftp.mkdir()
    (tmp / "real.efi").write_bytes(b"EFI" * 1000)
    os.symlink(tmp / "real.efi", tftp / "ipxe.efi")          # like Debian's /usr/lib/ipxe/ipxe.efi -> /boot/ipxe.efi
    (tftp / "undionly.kpxe").write_bytes(b"KPXE" * 100)
    (tftp / "other.efi").write_bytes(b"not configured")
    cfg = tmp / "proxydhcp.yaml"
    cfg.write_text(CONFIG.format(root=root, tftp=tftp))
    proc = subprocess.Popen([sys.executable, "-m", "proxydhcp.web", str(cfg), "--events", "--watch-interval", "0.2"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    s = Server(proc, cfg, big)
    yield s
    proc.terminate()
    proc.wait(5)


def get(server, path, headers=None, method="GET"):
    req = urllib.request.Request(server.base + path, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def ipxe_fetch(server, mac, arch=None, uuid=None):
    """What iPXE does with the URL the ProxyDHCP hands it."""
    q = f"mac={mac}" + (f"&arch={arch}" if arch is not None else "") + (f"&uuid={uuid}" if uuid else "")
    code, body, headers = get(server, f"/boot.ipxe?{q}")
    text = body.decode()
    assert text.startswith("#!ipxe\n"), text
    return code, text


def test_different_macs_get_different_scripts(server):
    code, a = ipxe_fetch(server, "52:54:00:aa:00:01", 0)
    assert code == 200 and "echo hello 52:54:00:aa:00:01 rack r2 ${net0/ip}" in a
    code, b = ipxe_fetch(server, "52:54:00:bb:00:01", 7, "6e65746c-6162-4000-8000-000000000001")
    assert code == 200 and f"kernel http://127.0.0.1:{server.port}/debian/linux auto=true" in b
    code, c = ipxe_fetch(server, "52:54:00:bb:00:01", 0)
    assert code == 200 and "# proxydhcp: profile local" in c and "\nexit\n" in c
    code, d = ipxe_fetch(server, "52:54:00:cc:00:01")
    assert "choose --default proxydhcp-local --timeout 3000" in d
    # the URLs the script names are served
    url = re.search(r"sanboot --no-describe (\S+)", d).group(1)
    assert url == f"{server.base}/debian/big.iso"
    assert len({a, b, c, d}) == 4


def test_the_script_url_carries_mac_uuid_arch_and_ip(server):
    uuid = "6e65746c-6162-4000-8000-0000000000e1"
    code, text = ipxe_fetch(server, "52-54-00-EE-00-01", 0, uuid.upper())       # selected by the URL's uuid and arch
    assert code == 200 and f"echo who 52:54:00:ee:00:01 uuid {uuid} arch 0 ip 127.0.0.1\n" in text  # ip: the peer
    code, body, _ = get(server, f"/boot.ipxe?mac=52:54:00:ee:00:01&arch=0&uuid={uuid}&ip=10.9.0.44")
    assert code == 200 and f"uuid {uuid} arch 0 ip 10.9.0.44\n" in body.decode()  # ip: as iPXE's ${ip} says
    # an iPXE that did not expand the URL's ${netX/ip} sends it as is: the peer's address stands
    code, body, _ = get(server, f"/boot.ipxe?mac=52:54:00:ee:00:01&arch=0&uuid={uuid}&ip=%24%7BnetX/ip%7D")
    assert code == 200 and f"uuid {uuid} arch 0 ip 127.0.0.1\n" in body.decode()
    assert "# proxydhcp: profile local" in ipxe_fetch(server, "52:54:00:ee:00:01", 7, uuid)[1]  # arch 7: not by-uuid


def test_fetches_emit_events(server):
    server.events(timeout=0.3)  # drain
    ipxe_fetch(server, "52:54:00:aa:00:07", 0)
    get(server, "/debian/big.iso", {"Range": "bytes=0-9"})
    get(server, "/healthz")
    get(server, "/firmware/ipxe.efi")
    get(server, "/debian/missing.iso")
    evs = server.events(timeout=3, until=lambda out: len(out) >= 4)
    script, download, firmware, missing = evs[:4]
    assert script["kind"] == "http.fetch" and script["fetch"] == "script" and script["mac"] == "52:54:00:aa:00:07"
    assert script["code"] == 200 and script["profile"] == "hello" and script["group"] == "lab"
    assert script["client_ip"] == "127.0.0.1" and script["bytes"] > 0 and script["duration"] >= 0
    assert download["fetch"] == "file" and download["code"] == 206 and download["bytes"] == 10
    assert download["path"] == "/debian/big.iso"
    assert firmware["fetch"] == "firmware" and firmware["code"] == 200 and firmware["bytes"] == 3000
    assert firmware["path"] == "/firmware/ipxe.efi"
    assert missing["fetch"] == "file" and missing["code"] == 404 and missing["path"] == "/debian/missing.iso"
    assert all(e["fetch"] != "health" for e in evs)


def test_bad_mac_is_a_clear_400(server):
    code, body, _ = get(server, "/boot.ipxe?mac=nonsense")
    assert code == 400 and b"needs ?mac=" in body


def test_injected_query_values_do_not_reach_the_script(server):
    code, body, _ = get(server, "/boot.ipxe?mac=52:54:00:99:00:01&uuid=x%0Ashell&arch=7%0Ashell")
    assert code == 200 and b"\nshell\n" not in body.split(b":proxydhcp-failed")[0]


@pytest.mark.parametrize("rng,start,end", [("bytes=0-99", 0, 99), ("bytes=1048576-2097151", 1048576, 2097151),
                                           ("bytes=5242000-", 5242000, None), ("bytes=-500", -500, None)])
def test_range_requests_return_the_right_bytes(server, rng, start, end):
    code, body, headers = get(server, "/debian/big.iso", {"Range": rng})
    assert code == 206
    expect = server.big[start:] if end is None else server.big[start:end + 1]
    assert body == expect
    assert headers["Content-Range"].endswith(f"/{len(server.big)}")


def _parts(body, content_type):
    """The parts of a multipart/byteranges body: [(Content-Range value, bytes)]."""
    boundary = re.search(r"boundary=\"?([^\";]+)", content_type).group(1).encode()
    out = []
    for chunk in body.split(b"--" + boundary)[1:]:
        if chunk.startswith(b"--"):
            break
        head, data = chunk.split(b"\r\n\r\n", 1)
        assert data.endswith(b"\r\n")
        crange = re.search(rb"(?im)^content-range: *(.+?)\r?$", head).group(1).decode()
        out.append((crange, data[:-2]))
    return out


def test_multiple_ranges_are_a_multipart_answer_with_the_right_bytes(server):
    size = len(server.big)
    code, body, headers = get(server, "/debian/big.iso", {"Range": "bytes=0-9,4194304-4194403,-7"})
    assert code == 206 and headers["Content-Type"].startswith("multipart/byteranges")
    assert _parts(body, headers["Content-Type"]) == [
        (f"bytes 0-9/{size}", server.big[0:10]),
        (f"bytes 4194304-4194403/{size}", server.big[4194304:4194404]),
        (f"bytes {size - 7}-{size - 1}/{size}", server.big[-7:])]
    assert int(headers["Content-Length"]) == len(body)


@pytest.mark.parametrize("rng", ["bytes=9-1", "bytes=abc", "items=0-5", "bytes=", "bytes=0-9,,x"])
def test_a_malformed_range_is_ignored_and_the_whole_file_sent(server, rng):
    code, body, headers = get(server, "/debian/big.iso", {"Range": rng})
    assert code == 200 and body == server.big and "Content-Range" not in headers


def test_an_unsatisfiable_range_is_a_416_naming_the_size(server):
    size = len(server.big)
    for rng in (f"bytes={size}-", f"bytes={size + 100}-{size + 200}"):
        code, body, headers = get(server, "/debian/big.iso", {"Range": rng})
        assert code == 416 and headers["Content-Range"] == f"bytes */{size}" and server.big[:64] not in body
    # a last byte past the end is cut to the end (RFC 9110 14.1.1)
    code, body, headers = get(server, "/debian/big.iso", {"Range": f"bytes={size - 3}-{size + 1000}"})
    assert code == 206 and body == server.big[-3:] and headers["Content-Range"] == f"bytes {size - 3}-{size - 1}/{size}"


def test_whole_file_head_and_links_inside_the_root(server):
    code, body, headers = get(server, "/debian/big.iso")
    assert code == 200 and body == server.big and headers["Accept-Ranges"] == "bytes"
    code, body, headers = get(server, "/debian/big.iso", method="HEAD")
    assert code == 200 and body == b"" and int(headers["Content-Length"]) == len(server.big)
    assert get(server, "/inside-link.iso", {"Range": "bytes=7-8"})[1] == server.big[7:9]


@pytest.mark.parametrize("path", ["/../secret.txt", "/debian/../../secret.txt", "/%2e%2e/secret.txt",
                                  "/debian/%2e%2e%2f%2e%2e%2fsecret.txt", "/escape", "/debian/up/secret.txt",
                                  "/debian%5c..%5c..%5csecret.txt", "/debian/%00", "/%2fetc%2fpasswd",
                                  "//etc/passwd", "/debian/", "/"])
def test_traversal_and_listings_are_refused(server, path):
    code, body, _ = get(server, path)
    assert code in (400, 403, 404) or body == b"proxydhcp\n"
    assert b"secret" not in body and b"root:" not in body and b"big.iso" not in body


def test_traversal_with_a_raw_socket(server):
    import socket
    for raw in (b"GET /../../secret.txt HTTP/1.0\r\n\r\n", b"GET /debian/../../secret.txt HTTP/1.0\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
            s.sendall(raw)
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
        assert reply.split(b" ")[1] in (b"400", b"403", b"404") and b"secret" not in reply.split(b"\r\n\r\n", 1)[1]


def test_firmware_serves_configured_boot_files_through_links_only(server):
    code, body, _ = get(server, "/firmware/ipxe.efi")
    assert code == 200 and body == b"EFI" * 1000
    code, body, _ = get(server, "/firmware/ipxe.efi", {"Range": "bytes=3-5"})
    assert code == 206 and body == b"EFI"
    assert get(server, "/firmware/undionly.kpxe")[1] == b"KPXE" * 100
    for path in ("/firmware/other.efi", "/firmware/secret.txt", "/firmware/..%2fsecret.txt", "/firmware/",
                 "/firmware/ipxe.efi/x", "/firmware"):
        assert get(server, path)[0] == 404, path


def test_metrics_and_health(server):
    ipxe_fetch(server, "52:54:00:aa:00:02")
    code, body, headers = get(server, "/metrics")
    assert code == 200 and b'proxydhcp_http_requests_total{code="200",kind="script"}' in body
    assert b'proxydhcp_http_transfer_duration_seconds_bucket{kind="file"' in body
    code, body, headers = get(server, "/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"})
    assert headers["Content-Type"].startswith("application/openmetrics-text") and body.rstrip().endswith(b"# EOF")
    assert get(server, "/healthz")[:2] == (200, b"ok\n")
    assert get(server, "/metrics")[1].count(b'kind="health"') >= 1


def _metric(server, name):
    m = re.search(rf"^{re.escape(name)} (\S+)$", get(server, "/metrics")[1].decode(), re.M)
    return float(m.group(1)) if m else 0.0


def test_reload_on_sighup_with_a_broken_file_keeps_the_old_config(server):
    good = server.cfg.read_text()
    failed = 'proxydhcp_config_reloads_total{result="failed"}'
    before = _metric(server, failed)
    try:
        server.cfg.write_text(good + "\n  - {name: broken, profile: missing}\n")
        server.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: _metric(server, failed) >= before + 1)
        assert _metric(server, "proxydhcp_config_last_reload_successful") == 0.0
        assert "echo hello" in ipxe_fetch(server, "52:54:00:aa:00:03")[1]
    finally:
        server.cfg.write_text(good.replace("echo hello", "echo bonjour"))
    server.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: "echo bonjour" in ipxe_fetch(server, "52:54:00:aa:00:03")[1])
    assert _metric(server, "proxydhcp_config_last_reload_successful") == 1.0
    server.cfg.write_text(good)
    assert wait_for(lambda: "echo hello" in ipxe_fetch(server, "52:54:00:aa:00:03")[1])


def test_reload_on_file_change_and_a_tie_is_refused(server):
    good = server.cfg.read_text()
    failed = 'proxydhcp_config_reloads_total{result="failed"}'
    before = _metric(server, failed)
    try:
        # a second default group: a tie, refused; the running config keeps serving
        server.cfg.write_text(good + "  - {name: default2, profile: hello}\n")
        assert wait_for(lambda: _metric(server, failed) >= before + 1)
        assert "# proxydhcp: profile local" in ipxe_fetch(server, "52:54:00:dd:00:01")[1]
        server.cfg.write_text(good.replace("{name: default, profile: local}", "{name: default, profile: menu}"))
        assert wait_for(lambda: "# proxydhcp: profile menu" in ipxe_fetch(server, "52:54:00:dd:00:01")[1])
    finally:
        server.cfg.write_text(good)
    assert wait_for(lambda: "# proxydhcp: profile local" in ipxe_fetch(server, "52:54:00:dd:00:01")[1])


def test_an_interrupted_download_still_emits_an_event(server):
    import socket
    server.events(timeout=0.3)  # drain
    s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    s.sendall(b"GET /debian/big.iso HTTP/1.1\r\nHost: x\r\n\r\n")
    s.recv(65536)
    s.close()
    evs = server.events(timeout=5, until=lambda out: any(e.get("aborted") for e in out))
    ev = next(e for e in evs if e.get("aborted"))
    assert ev["fetch"] == "file" and ev["path"] == "/debian/big.iso" and 0 < ev["bytes"] < len(server.big)
    assert b'proxydhcp_http_requests_total{code="aborted",kind="file"}' in get(server, "/metrics")[1]
