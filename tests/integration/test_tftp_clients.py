"""The TFTP service against real clients on loopback: curl, atftp and tftp-hpa fetch files
and what arrived is byte-compared; raw-socket clients try every bad path kind, a WRQ,
the limits, a stray peer, a repeated RRQ, a client that goes away, and EDK2's probe.

The server runs as `python -m proxydhcp.tftp` (the TFTPService alone) bound to 127.0.0.1,
writing its transfer events to a JSON-lines file that the tests read.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time

import pytest

from proxydhcp import config
from proxydhcp.tftp import packet as pk
from tests.netlab import wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOST = "127.0.0.1"


class Server:
    def __init__(self, workdir, root, extra_yaml: str = "",
                 tftp: str = "retransmit_timeout: 0.3, max_retries: 3") -> None:
        self.workdir, self.root = workdir, root
        self.events_path = os.path.join(workdir, "events.jsonl")
        cfg = os.path.join(workdir, "proxydhcp.yaml")
        with open(cfg, "w") as fh:
            fh.write(f"tftp: {{root: {root}, port: 0, {tftp}}}\n"
                     f"log: {{level: debug}}\n{extra_yaml}")
        self.log_path = os.path.join(workdir, "tftp.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "proxydhcp.tftp", "-c", cfg, "--address", HOST,
                                      "--events", self.events_path], cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True)
        line = self.proc.stdout.readline()
        assert line.startswith("TFTP listening on"), (line, open(self.log_path).read())
        self.port = int(line.rsplit(":", 1)[1])

    def events(self) -> list[dict]:
        if not os.path.exists(self.events_path):
            return []
        with open(self.events_path) as fh:
            return [json.loads(line) for line in fh if line.strip()]

    def wait_events(self, n: int, timeout: float = 10.0, **match) -> list[dict]:
        def found():
            evs = [e for e in self.events() if all(e.get(k) == v for k, v in match.items())]
            return evs if len(evs) >= n else None
        evs = wait_for(found, timeout)
        assert evs, (match, self.events())
        return evs

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()          # our own child, by PID
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    base = tmp_path_factory.mktemp("tftp")
    root = base / "root"
    (root / "sub").mkdir(parents=True)
    os.chmod(base, 0o755)
    files = {
        "small.bin": os.urandom(1000),
        "exact512.bin": os.urandom(512 * 8),
        "exact1468.bin": os.urandom(1468 * 20),
        "empty.bin": b"",
        "medium.bin": os.urandom(3_000_000),
        "sub/deep.bin": os.urandom(7777),
        "rollover.bin": os.urandom(512 * 65536 + 1000),     # > 65535 blocks at 512
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    (base / "secret.txt").write_bytes(b"do not serve")
    (base / "chosen").mkdir()
    (base / "chosen" / "boot.efi").write_bytes(os.urandom(50_000))
    os.symlink(str(base / "secret.txt"), root / "escape")
    os.symlink(str(base), root / "up")
    os.symlink(str(base / "chosen" / "boot.efi"), root / "boot.efi")
    os.symlink(str(base / "chosen" / "boot.efi"), root / "notconfigured.efi")
    return base, str(root), files


@pytest.fixture(scope="module")
def server(tree, tmp_path_factory):
    base, root, _ = tree
    s = Server(str(tmp_path_factory.mktemp("srv")), root, "boot: {firmware: {x64-uefi: boot.efi}}\n")
    yield s
    s.stop()


def read(path):
    with open(path, "rb") as fh:
        return fh.read()


# -- real clients ---------------------------------------------------------------------------

@pytest.mark.skipif(not shutil.which("curl"), reason="curl not installed")
# (no empty file: curl 7.88 itself fails on one, with tftpd-hpa too: "getpeername() failed")
@pytest.mark.parametrize("name,blksize", [("small.bin", 512), ("medium.bin", 1468), ("medium.bin", 8192),
                                          ("exact512.bin", 512), ("sub/deep.bin", 1024),
                                          ("rollover.bin", 512)])
def test_curl(server, tree, tmp_path, name, blksize):
    out = tmp_path / "out"
    subprocess.run(["curl", "-sS", "--fail", "--tftp-blksize", str(blksize), "-o", str(out),
                    f"tftp://{HOST}:{server.port}/{name}"], check=True, timeout=120)
    assert read(out) == tree[2][name]


@pytest.mark.skipif(not shutil.which("atftp"), reason="atftp not installed")
@pytest.mark.parametrize("name,options", [("medium.bin", ["blksize 1468", "windowsize 16"]),
                                          ("medium.bin", ["windowsize 4", "tsize 0"]),
                                          ("exact1468.bin", ["blksize 1468", "windowsize 8"]),
                                          ("small.bin", [])])
def test_atftp(server, tree, tmp_path, name, options):
    out = tmp_path / "out"
    argv = ["atftp", "-g", "-r", name, "-l", str(out)]
    for o in options:
        argv += ["--option", o]
    subprocess.run(argv + [HOST, str(server.port)], check=True, timeout=60, capture_output=True)
    assert read(out) == tree[2][name]
    if options:
        ev = server.wait_events(1, file=name, outcome="ok",
                                windowsize=int(dict(o.split() for o in options).get("windowsize", 1)))
        assert ev[-1]["size"] == len(tree[2][name])


@pytest.mark.skipif(not shutil.which("tftp"), reason="tftp-hpa not installed")
@pytest.mark.parametrize("name", ["small.bin", "exact512.bin", "empty.bin", "sub/deep.bin", "boot.efi"])
def test_tftp_hpa(server, tree, tmp_path, name):
    out = tmp_path / "out"
    subprocess.run(["tftp", "-m", "binary", HOST, str(server.port), "-c", "get", name, str(out)],
                   check=True, timeout=60, capture_output=True)
    expect = read(os.path.join(tree[0], "chosen", "boot.efi")) if name == "boot.efi" else tree[2][name]
    assert read(out) == expect


@pytest.mark.skipif(not shutil.which("tftp"), reason="tftp-hpa not installed")
def test_tftp_hpa_put_refused(server, tmp_path):
    src = tmp_path / "up.bin"
    src.write_bytes(b"upload")
    r = subprocess.run(["tftp", "-m", "binary", HOST, str(server.port), "-c", "put", str(src), "up.bin"],
                       timeout=30, capture_output=True, text=True)
    assert "read-only" in (r.stdout + r.stderr)
    assert not os.path.exists(os.path.join(server.root, "up.bin"))


# -- raw clients ----------------------------------------------------------------------------

def client(timeout=3.0, address=HOST) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((address, 0))
    s.settimeout(timeout)
    return s


def request(server, payload: bytes, sock=None):
    s = sock or client()
    s.sendto(payload, (HOST, server.port))
    data, addr = s.recvfrom(70000)
    return pk.decode(data), addr, s


BAD_PATHS = ["../secret.txt", "sub/../../secret.txt", "..\\secret.txt", "sub\\..\\..\\secret.txt", "sub\\deep.bin",
             "/etc/passwd", "escape", "up/secret.txt", "notconfigured.efi", "x" * 600, "sub",
             "missing.bin", "/../../../../etc/passwd"]


@pytest.mark.parametrize("name", BAD_PATHS)
def test_bad_paths_refused(server, name):
    reply, _, _ = request(server, pk.encode_rrq(name, "octet", {"blksize": "1468"}))
    assert isinstance(reply, pk.Error) and reply.code in (1, 2), reply
    ev = server.wait_events(1, file=name)[-1]
    assert ev["outcome"] in ("access_denied", "not_found") and ev["error"]


def test_nul_in_name_refused(server):
    reply, _, _ = request(server, b"\x00\x01small.bin\x00../secret.txt\x00octet\x00")
    assert isinstance(reply, pk.Error) and reply.code == 2 and "NUL" in reply.message


def test_curl_traversal_refused(server, tmp_path):
    r = subprocess.run(["curl", "-sS", "--path-as-is", "-o", str(tmp_path / "o"),
                        f"tftp://{HOST}:{server.port}/../secret.txt"], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert not (tmp_path / "o").exists() or read(tmp_path / "o") != b"do not serve"


def test_wrq_refused(server):
    reply, _, _ = request(server, pk.encode_wrq("new.bin"))
    assert reply == pk.Error(2, "access violation: this TFTP server is read-only")


def test_mail_mode_refused(server):
    reply, _, _ = request(server, pk.encode_rrq("small.bin", "mail"))
    assert isinstance(reply, pk.Error) and reply.code == 4


def test_malformed_request_answered(server):
    reply, _, _ = request(server, b"\x00\x01no-terminator")
    assert isinstance(reply, pk.Error) and reply.code == 4


def fetch(sock, server_addr_first, first, blksize):
    """Finish a lock-step transfer that started with `first` (DATA 1 or OACK)."""
    out = bytearray()
    peer = server_addr_first
    p = first
    while True:
        if isinstance(p, pk.OptionAck):
            sock.sendto(pk.encode_ack(0), peer)
        else:
            assert isinstance(p, pk.Data), p
            out += p.payload
            sock.sendto(pk.encode_ack(p.block), peer)
            if len(p.payload) < blksize:
                return bytes(out)
        data, addr = sock.recvfrom(70000)
        assert addr == peer
        p = pk.decode(data)


def test_stray_peer_gets_error5_and_transfer_goes_on(server, tree):
    first, peer, s = request(server, pk.encode_rrq("small.bin", "octet", {"blksize": "512"}))
    assert peer[0] == HOST and peer[1] != server.port      # RFC 1350: a new port (TID) per transfer
    stray = client()
    stray.sendto(pk.encode_ack(1), peer)
    reply, addr = stray.recvfrom(1000)
    assert addr == peer and pk.decode(reply) == pk.Error(5, "unknown transfer ID")
    assert fetch(s, peer, first, 512) == tree[2]["small.bin"]


def test_repeated_rrq_is_one_transfer(server, tree):
    s = client()
    rrq = pk.encode_rrq("exact512.bin", "octet", {"tsize": "0"})
    s.sendto(rrq, (HOST, server.port))
    s.sendto(rrq, (HOST, server.port))       # retransmitted before any DATA arrived
    s.sendto(rrq, (HOST, server.port))
    first, peer = s.recvfrom(1000)
    assert fetch(s, peer, pk.decode(first), 512) == tree[2]["exact512.bin"]
    s.settimeout(0.5)
    with pytest.raises(socket.timeout):      # no second OACK from a second transfer
        s.recvfrom(1000)
    port = s.getsockname()[1]
    evs = server.wait_events(1, client=f"{HOST}:{port}")
    time.sleep(0.3)
    assert len([e for e in server.events() if e["client"] == f"{HOST}:{port}"]) == 1
    assert evs[0]["outcome"] == "ok" and evs[0]["size"] == 4096


def test_edk2_probe_recorded_as_probe(server, tree):
    first, peer, s = request(server, pk.encode_rrq("medium.bin", "octet",
                                                   {"tsize": "0", "blksize": "1468", "windowsize": "4"}))
    assert first == pk.OptionAck({"tsize": str(len(tree[2]["medium.bin"])), "blksize": "1468", "windowsize": "4"})
    s.sendto(pk.encode_error(8, "User aborted the transfer"), peer)
    ev = server.wait_events(1, client=f"{HOST}:{s.getsockname()[1]}")[0]
    assert ev["outcome"] == "probe" and ev["error"]


def test_client_gone_ends_transfer_at_once(server):
    """ICMP port unreachable from a client that closed its socket ends the transfer well
    before retransmissions would (0.3 s, doubled 3 times)."""
    first, peer, s = request(server, pk.encode_rrq("medium.bin", "octet", {"blksize": "1024"}))
    port = s.getsockname()[1]
    s.close()
    ev = server.wait_events(1, client=f"{HOST}:{port}")[0]
    assert ev["outcome"] == "client_gone", ev       # not "timeout": the ICMP error ended it
    assert ev["retransmits"] < 3                    # before max_retries (3) ran out


def test_silent_client_times_out(server):
    first, peer, s = request(server, pk.encode_rrq("medium.bin", "octet", {"blksize": "1024"}))
    port = s.getsockname()[1]
    seen = [first]
    s.settimeout(0.3)
    t_end = time.monotonic() + 6
    while time.monotonic() < t_end:
        try:
            seen.append(pk.decode(s.recvfrom(2000)[0]))
        except socket.timeout:
            if [e for e in server.events() if e["client"] == f"{HOST}:{port}"]:
                break
    ev = server.wait_events(1, client=f"{HOST}:{port}")[0]
    assert ev["outcome"] == "timeout" and ev["retransmits"] == 3
    assert all(p == first for p in seen) and len(seen) == 4   # the same OACK, resent on the timer


def test_default_config_serves_debian_ipxe_efi(tmp_path):
    """The built-in default: root /usr/lib/ipxe, where ipxe.efi links out to /boot."""
    if not os.path.islink("/usr/lib/ipxe/ipxe.efi"):
        pytest.skip("Debian's ipxe package is not installed")
    s = Server(str(tmp_path), "/usr/lib/ipxe")
    try:
        out = tmp_path / "ipxe.efi"
        subprocess.run(["curl", "-sS", "--fail", "--tftp-blksize", "1432", "-o", str(out),
                        f"tftp://{HOST}:{s.port}/ipxe.efi"], check=True, timeout=60)
        assert read(out) == read("/boot/ipxe.efi")
        reply, _, _ = request(s, pk.encode_rrq("ipxe.lkrn"))    # same kind of link, not a boot file
        assert isinstance(reply, pk.Error) and reply.code in (1, 2)
    finally:
        s.stop()


def test_limits_refuse_with_error_and_stay_responsive(tree, tmp_path):
    base, root, data = tree
    srv = Server(str(tmp_path), root, tftp="max_transfers: 3, max_transfers_per_client: 2, "
                                           "retransmit_timeout: 5, transfer_timeout: 30")
    try:
        held = [request(srv, pk.encode_rrq("medium.bin")) for _ in range(2)]     # 2 open transfers
        reply, _, _ = request(srv, pk.encode_rrq("small.bin"))
        assert isinstance(reply, pk.Error) and reply.code == 0 and "max_transfers_per_client" in reply.message
        # another client address is still served
        other = client(address="127.0.0.2")
        first, peer, _ = request(srv, pk.encode_rrq("small.bin"), other)
        held.append((first, peer, other))
        reply, _, _ = request(srv, pk.encode_rrq("small.bin"), client(address="127.0.0.3"))
        assert isinstance(reply, pk.Error) and reply.code == 0 and "tftp.max_transfers" in reply.message
        assert len(srv.wait_events(2, outcome="refused_limit")) == 2
        # finishing one frees a slot
        first, peer, sock = held[0]
        assert fetch(sock, peer, first, 512) == data["medium.bin"]
        first, peer, sock = request(srv, pk.encode_rrq("small.bin"), client(address="127.0.0.3"))
        assert fetch(sock, peer, first, 512) == data["small.bin"]
    finally:
        srv.stop()


def test_transfer_timeout_ends_a_slow_transfer_with_an_error_and_stays_responsive(tree, tmp_path):
    """tftp.transfer_timeout: a client that keeps ACKing, but too slowly to finish in time,
    gets a TFTP ERROR saying so; the event says timeout; the next client is served."""
    base, root, data = tree
    srv = Server(str(tmp_path), root, tftp="transfer_timeout: 1, retransmit_timeout: 5")
    try:
        first, peer, s = request(srv, pk.encode_rrq("medium.bin"))    # 5860 blocks of 512
        p, got = first, 0
        for _ in range(40):                          # bounded: the server must end it first
            if not isinstance(p, pk.Data):
                break
            got += 1
            time.sleep(0.1)                          # a slow client: 5860 blocks would take 10 min
            s.sendto(pk.encode_ack(p.block), peer)
            p = pk.decode(s.recvfrom(2000)[0])
        assert isinstance(p, pk.Error) and p.code == 0 and "timed out" in p.message, p
        assert got < 5860
        ev = srv.wait_events(1, client=f"{HOST}:{s.getsockname()[1]}")[0]
        assert ev["outcome"] == "timeout" and "longer than 1 s" in ev["error"] and ev["retransmits"] == 0
        first, peer, sock = request(srv, pk.encode_rrq("small.bin"))          # still serving
        assert fetch(sock, peer, first, 512) == data["small.bin"]
    finally:
        srv.stop()


def test_startup_errors(tmp_path):
    from twisted.internet import reactor

    from proxydhcp.events import EventBus
    from proxydhcp.service import StartupError
    from proxydhcp.tftp.server import TFTPService

    busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    busy.bind((HOST, 0))
    cfg = config.parse(f"tftp: {{root: {tmp_path}, port: {busy.getsockname()[1]}}}")
    with pytest.raises(StartupError, match=r"in use by another program.*tftp\.port"):
        TFTPService(config.LiveConfig(cfg), EventBus(), address=HOST, reactor=reactor).startService()
    busy.close()
    cfg = config.parse(f"tftp: {{root: {tmp_path / 'nope'}, port: 0}}")
    with pytest.raises(StartupError, match=r"tftp\.root .* not a readable directory"):
        TFTPService(config.LiveConfig(cfg), EventBus(), address=HOST, reactor=reactor).startService()
    cfg = config.parse(f"tftp: {{root: {tmp_path}, port: 0}}")
    svc = TFTPService(config.LiveConfig(cfg), EventBus(), address=HOST, reactor=reactor)
    svc.startService()
    assert svc.port and svc.port > 0
    svc.stopService()


def test_event_fields(server, tree):
    match = dict(file="boot.efi", outcome="ok", blksize=1432)
    before = len([e for e in server.events() if all(e.get(k) == v for k, v in match.items())])
    out = subprocess.run(["curl", "-sS", "--fail", "--tftp-blksize", "1432", "-o", "/dev/null",
                          f"tftp://{HOST}:{server.port}/boot.efi"], check=True, timeout=30)
    ev = server.wait_events(before + 1, **match)[-1]  # this transfer's, not an earlier test's
    assert set(ev) >= {"kind", "time", "client", "client_ip", "file", "size", "blksize", "windowsize",
                       "duration", "retransmits", "outcome", "error"}
    assert ev["kind"] == "tftp.transfer" and ev["client_ip"] == HOST and ev["blksize"] == 1432
    assert ev["size"] == 50_000 and ev["error"] is None and ev["duration"] >= 0
