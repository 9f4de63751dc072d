"""Fuzzing the TFTP server (not only its codec): random, mutated and generated datagrams to
the request port and to a transfer, through the real TFTPService's handlers (bound on
127.0.0.1, with a fake reactor: the test calls the handlers; transfers talk over loopback).

Properties: the answer is a TFTP ERROR or silence (a transfer's DATA/OACK only for a valid
read request or ACK); nothing raises; and every datagram is accounted for exactly once: a
drop counted with its reason (proxydhcp_tftp_packets_dropped_total), a refusal counted by
outcome (proxydhcp_tftp_transfers_total), a transfer started, or, on a transfer, an ACK or
the client's ERROR moving it."""

from __future__ import annotations

import os
import socket
import tempfile

import pytest

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxydhcp import config, metrics
from proxydhcp.events import EventBus
from proxydhcp.tftp import packet as pk
from proxydhcp.tftp import server as tftp_server
from proxydhcp.tftp.transfer import ABORTED
from tests.fake_reactor import FakeReactor


ROOT = tempfile.mkdtemp(prefix="proxydhcp-fuzz-tftp-")
os.makedirs(os.path.join(ROOT, "sub"))
with open(os.path.join(ROOT, "f.bin"), "wb") as fh:
    fh.write(os.urandom(3000))
with open(os.path.join(ROOT, "sub", "g.bin"), "wb") as fh:
    fh.write(b"g" * 100)
CFG = config.parse(f"tftp: {{root: {ROOT}, port: 0, max_transfers_per_client: 1000}}\n"
                   f"state: {{dir: {ROOT}/state}}")
SERVICE = tftp_server.TFTPService(config.LiveConfig(CFG), EventBus(), address="127.0.0.1", reactor=FakeReactor())
SERVICE.startService()
REPLIES: list = []
SERVICE._reply = lambda datagram, addr, local, ifindex: REPLIES.append(datagram)
CLIENT = ("127.0.0.1", 9)   # discard: whatever a started transfer sends there goes nowhere


def _total(name: str) -> float:
    assert name == "proxydhcp_tftp_transfers"
    return sum(s.value for m in metrics.TFTP_TRANSFERS.collect() for s in m.samples if s.name == name + "_total")


def _drops(port: str) -> dict:
    values = {s.labels["reason"]: s.value for m in metrics.TFTP_DROPPED.collect() for s in m.samples
              if s.name.endswith("_total") and s.labels["port"] == port}
    return {r: values.get(r, 0) for r in tftp_server.DROP_REASONS[port]}


def _reset() -> None:
    for session in list(SERVICE.sessions.values()):
        session.transfer.abort(ABORTED, 0.0, "test reset")
        SERVICE._end(session)


def request_port(data: bytes) -> None:
    """One datagram to the request port; check the answer and that it is counted once."""
    _reset()
    REPLIES.clear()
    drops, outcomes, sessions, dedup = (sum(_drops("request").values()), _total("proxydhcp_tftp_transfers"),
                                        len(SERVICE.sessions), SERVICE.deduplicated)
    SERVICE._on_request(data, CLIENT, "127.0.0.1", 0)
    for reply in REPLIES:
        assert isinstance(pk.decode(reply), pk.Error), reply
    moved = (sum(_drops("request").values()) - drops, _total("proxydhcp_tftp_transfers") - outcomes,
             len(SERVICE.sessions) - sessions)
    assert sorted(moved) == [0, 0, 1], (data, moved)
    assert SERVICE.deduplicated == dedup
    if moved[2]:                                   # a transfer started: only for a valid read request
        req = pk.decode(data)
        assert isinstance(req, pk.Request) and req.opcode == pk.RRQ and not REPLIES


SEEDS = [b"\x00\x01f.bin\x00octet\x00", b"\x00\x01sub/g.bin\x00octet\x00blksize\x001432\x00tsize\x000\x00",
         b"\x00\x01f.bin\x00octet\x00tsize\x000\x00blksize\x001468\x00windowsize\x004\x00",
         b"\x00\x01../etc/passwd\x00octet\x00", b"\x00\x02f.bin\x00octet\x00", b"\x00\x01f.bin\x00netascii\x00",
         b"\x00\x04\x00\x01", b"\x00\x05\x00\x08x\x00", b"\x00\x03\x00\x01data", b"\x00\x06blksize\x00512\x00"]
names = st.one_of(st.sampled_from(["f.bin", "/f.bin", "sub/g.bin", "sub/../f.bin", "../f.bin", "..", "/", "",
                                   "sub", "sub/", "F.BIN", "f.bin\\", "state/x", "/etc/passwd", "f.bin/x"]),
                  st.text(max_size=30))
modes = st.one_of(st.sampled_from(["octet", "netascii", "mail", "OCTET", ""]), st.text(max_size=8))
opts = st.dictionaries(st.one_of(st.sampled_from(["blksize", "tsize", "timeout", "windowsize", "BLKSIZE"]),
                                 st.text(max_size=8)),
                       st.one_of(st.sampled_from(["0", "8", "512", "1468", "65464", "65465", "-1", "x", "", "1e3"]),
                                 st.text(max_size=8)), max_size=5)


def _encode(opcode, name, mode, options) -> bytes:
    enc = lambda s: s.encode("utf-8", "surrogateescape")  # noqa: E731
    return (opcode.to_bytes(2, "big") + enc(name) + b"\0" + enc(mode) + b"\0"
            + b"".join(enc(k) + b"\0" + enc(v) + b"\0" for k, v in options.items()))


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_to_the_request_port(data):
    request_port(data)


@settings(max_examples=1500, deadline=None)
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 80), st.integers(0, 255)), max_size=6),
       st.integers(0, 90), st.binary(max_size=20))
def test_mutated_requests_to_the_request_port(seed, flips, cut, tail):
    b = bytearray(seed)
    for i, v in flips:
        if i < len(b):
            b[i] = v
    request_port(bytes(b[:cut]) + tail if cut < len(b) else bytes(b) + tail)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([1, 2, 1, 1, 3, 4, 5, 6, 0, 7, 256]), names, modes, opts)
def test_generated_requests_to_the_request_port(opcode, name, mode, options):
    request_port(_encode(opcode, name, mode, options))


def _drain(sock) -> list:
    out = []
    while True:
        try:
            out.append(sock.recvfrom(4096))
        except BlockingIOError:
            return out


@pytest.fixture(scope="module")
def peers():
    client, stray = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2))
    for s in (client, stray):
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
    yield client, stray
    _reset()
    client.close()
    stray.close()


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.one_of(st.binary(max_size=40),
                                    st.integers(0, 12).map(pk.encode_ack),
                                    st.sampled_from([b"\x00\x04", b"\x00\x04\x00", b"\x00\x03\x00\x01x",
                                                     b"\x00\x01f.bin\x00octet\x00", b"\x00\x05\x00\x00bye\x00",
                                                     b"\x00\x06tsize\x000\x00"])),
                          st.booleans()), min_size=1, max_size=15))
def test_datagrams_to_a_transfer(peers, datagrams):
    """ACKs, junk and stray datagrams to a running transfer's port over loopback: DATA or
    ERROR answers only, and each datagram that moves nothing is counted (malformed,
    illegal_operation, unknown_tid)."""
    client, stray_peer = peers
    _reset()
    _drain(client), _drain(stray_peer)
    SERVICE._on_request(pk.encode_rrq("f.bin"), client.getsockname(), "127.0.0.1", 0)
    [(first, tport)] = _drain(client)
    assert pk.decode(first) == pk.Data(1, open(os.path.join(ROOT, "f.bin"), "rb").read()[:512])
    [session] = SERVICE.sessions.values()
    for data, stray in datagrams:
        if session.ended:
            break
        before = _drops("transfer")
        sender = stray_peer if stray else client
        sender.sendto(data, tport)
        SERVICE._transfers.doRead()
        after = _drops("transfer")
        for out, src in _drain(sender):
            assert src == tport
            p = pk.decode(out)
            assert isinstance(p, (pk.Data, pk.Error)), p
            if stray:
                assert p == pk.Error(pk.ERR_UNKNOWN_TID, "unknown transfer ID")
        is_ack = len(data) >= 4 and data[:2] == b"\x00\x04"
        if stray:
            expected = {tftp_server.UNKNOWN_TID}
        elif is_ack:
            expected = set()
        else:
            try:
                p = pk.decode(data)
                expected = set() if isinstance(p, pk.Error) else {tftp_server.ILLEGAL_OPERATION}
            except pk.TFTPPacketError:
                expected = {tftp_server.MALFORMED}
        assert {r for r in after if after[r] != before[r]} == expected, (data, stray)
        assert sum(after.values()) - sum(before.values()) == len(expected)
    _reset()
