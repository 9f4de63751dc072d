"""Fuzzing the DHCP service's hot path (not only the codec): random, truncated, oversize
and mutated packets (the real captures in ../shared/captures and hand-built requests of
each firmware kind) through DHCPService.handle on 67 and 4011, and whole IPv4 frames through
the port-67 listener's frame parsing.

Properties: nothing raises; each datagram is counted exactly once in
proxydhcp_dhcp_packets_total with a result from the fixed list; a reply never carries an
address (yiaddr 0) and is a BOOTREPLY."""

from __future__ import annotations

import os
import time
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxydhcp import config, metrics
from proxydhcp.dhcp import packet
from proxydhcp.events import EventBus
from proxydhcp.net import dhcp_service, frames
from proxydhcp.net.interfaces import InterfaceAddress
from proxydhcp.responder import PORT_DHCP, PORT_PROXY, REPLIED, SILENCE_REASONS, Interface
from tests import captures
from tests.dhcp_clients import request_bytes

SEEDS = [d.payload for n in captures.capture_names() for d in captures.udp_datagrams(n)]
SEEDS += [request_bytes(k, mac=f"52:54:00:00:00:0{i}") for i, k in
          enumerate(("legacy-bios", "edk2", "ipxe", "uefi-http", "plain"))]
IFACE = Interface("eth0", "10.77.0.2", 2)
RESULTS = set(SILENCE_REASONS) | {REPLIED, "send_failed", dhcp_service.NOT_SERVED}
STATE = tempfile.mkdtemp(prefix="proxydhcp-fuzz-dhcp-")
SERVICE = dhcp_service.DHCPService(config.LiveConfig(config.parse(f"state: {{dir: {STATE}}}")), EventBus(),
                                   interfaces=lambda: {})


class Tx:
    def __init__(self):
        self.sent = []

    def send(self, payload, server, dest, *rest):
        self.sent.append(payload)


def _counts() -> dict:
    out = {}
    for m in metrics.DHCP_PACKETS.collect():
        if m.name == "proxydhcp_dhcp_packets":
            for s in m.samples:
                if s.name.endswith("_total"):
                    out[(s.labels["port"], s.labels["message"], s.labels["result"])] = s.value
    return out


def _moved(before: dict, after: dict) -> list:
    return [(k, after[k] - before.get(k, 0)) for k in after if after[k] != before.get(k, 0)]


def through_handle(data: bytes, port: str) -> None:
    tx = Tx()
    before = _counts()
    source = ("0.0.0.0", 68) if port == PORT_DHCP else ("10.77.0.131", 4011)
    SERVICE.handle(data, port, IFACE, source, tx, source_key=os.urandom(6))
    moved = _moved(before, _counts())
    assert len(moved) == 1 and moved[0][1] == 1, moved
    (p, _message, result), _ = moved[0]
    assert p == port and result in RESULTS, moved
    assert len(tx.sent) == (result == REPLIED)
    for payload in tx.sent:
        rep = packet.decode(payload)
        assert rep.op == 2 and rep.yiaddr == "0.0.0.0"


def mutate(seed: bytes, flips, cut: int, tail: bytes) -> bytes:
    b = bytearray(seed)
    for i, v in flips:
        if b:
            b[i % len(b)] = v
    return bytes(b[:cut]) + tail


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=1500), st.sampled_from([PORT_DHCP, PORT_PROXY]))
def test_random_bytes_are_counted_once(data, port):
    through_handle(data, port)


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 1499), st.integers(0, 255)), max_size=10),
       st.integers(0, 700), st.one_of(st.just(b""), st.binary(max_size=64), st.binary(min_size=900, max_size=1200)),
       st.sampled_from([PORT_DHCP, PORT_PROXY]))
def test_mutated_captures_are_counted_once(seed, flips, cut, tail, port):
    through_handle(mutate(seed, flips, cut, tail), port)


class _Sock:
    def __init__(self, frame, source=b"\x02\x00\x00\x00\x00\x09"):
        self.frame, self.source = frame, source

    def recvfrom(self, n):
        return self.frame[:n], ("eth0", 0x0800, 0, 1, self.source)


class _RawOut:
    def __init__(self):
        self.sent = []

    def sendto(self, frame, addr):
        self.sent.append(frame)


def _listener():
    """The port-67 listener's receive path, without its sockets (no packet socket needed)."""
    lst = object.__new__(dhcp_service._Port67)
    lst.service, lst.port, lst.send_sock = SERVICE, 67, _RawOut()
    lst.iface = InterfaceAddress(name="eth0", index=2, address="10.77.0.2", prefixlen=24, mtu=1500, up=True)
    return lst


LISTENER = _listener()


def through_frame(frame: bytes, source: bytes = b"\x02\x00\x00\x00\x00\x09") -> None:
    before = _counts()
    LISTENER._recv(_Sock(frame, source))
    moved = _moved(before, _counts())
    parsed = frames.parse_udp(frame[:4096])
    if parsed is None:
        assert moved == [((PORT_DHCP, "unknown", "bad_frame"), 1)]
    elif parsed[3] != 67:
        assert moved == []                     # another server's reply: watched, not a request
    else:
        assert len(moved) == 1 and moved[0][1] == 1 and moved[0][0][2] in RESULTS
    for out in LISTENER.send_sock.sent:
        reply = frames.parse_udp(out)
        assert reply[1] == 67 and packet.decode(reply[4]).yiaddr == "0.0.0.0"
    LISTENER.send_sock.sent.clear()


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(
    st.binary(max_size=600),
    st.tuples(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 1499), st.integers(0, 255)), max_size=4),
              st.integers(0, 700), st.sampled_from([67, 67, 68, 4011]), st.integers(0, 60),
              st.lists(st.tuples(st.integers(0, 27), st.integers(0, 255)), max_size=3))
    .map(lambda a: mutate(frames.build_udp("10.77.0.131", 68, "255.255.255.255", a[3],
                                           mutate(a[0], a[1], a[2], b"")), a[5], 28 + a[2] + a[4] + 300, b""))))
def test_frames_to_port_67_are_counted_once(frame):
    through_frame(frame)


def test_the_frame_harness_reaches_the_responder():
    before = _counts()
    # its own MAC and link-layer source: the fuzz tests before it may have emptied the rate
    # limiters' buckets of the shared ones (and filled the machines-in-progress cap)
    assert SERVICE._in_progress.count(time.monotonic()) < SERVICE._in_progress.cap, "cap full"
    through_frame(frames.build_udp("0.0.0.0", 68, "255.255.255.255", 67,
                                   request_bytes("legacy-bios", mac="52:54:00:fe:fe:01")),
                  source=b"\x02\x00\x00\xfe\xfe\x01")
    assert [r for (_p, _m, r), _ in _moved(before, _counts())] == [REPLIED]


def test_a_datagram_that_raises_is_counted_and_the_port_stays_open():
    """A bug on one datagram must not reach the reactor (which would close the port): the
    reader logs it, counts it (internal_error) and reads on."""
    calls = []

    def on_datagram(sock):
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("a bug")
        if len(calls) == 2:
            return
        raise BlockingIOError

    errors = []
    reader = dhcp_service._Reader(None, on_datagram, "test", on_error=lambda: errors.append(1))
    reader.doRead()
    assert len(calls) == 3 and errors == [1]
    assert "internal_error" in RESULTS
