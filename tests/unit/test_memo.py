"""proxydhcp.memo: a remembered reply is, byte for byte, what the full path (decode,
classify, respond, encode) answers the same request, with the same destination and the
same dhcp.reply event; and nothing is remembered where the decision reads the MAC or UUID."""

from __future__ import annotations

import struct

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxydhcp import config, memo
from proxydhcp.client import IPXE, classify
from proxydhcp.dhcp.packet import decode
from proxydhcp.dhcp import options as opt
from proxydhcp.dhcp import pxe
from proxydhcp.events import EventBus
from proxydhcp.net.dhcp_service import DHCPService
from proxydhcp.responder import PORT_DHCP, PORT_PROXY, Interface
from tests import captures
from tests.dhcp_clients import request_bytes

IFACE = Interface("eth0", "10.77.0.2", 2)


class Sender:
    def __init__(self):
        self.sent = []

    def send(self, payload, server, dest, *rest):
        self.sent.append((payload, server, dest))


class NowReactor:
    """callLater runs at once (a quirk's reply delay), so both paths can be compared."""

    def callLater(self, delay, fn, *args):
        fn(*args)


def _service(text: str):
    bus = EventBus()
    events = []
    bus.subscribe(events.append)
    svc = DHCPService(config.LiveConfig(config.parse(text)), bus, reactor=NowReactor(), interfaces=lambda: {})
    return svc, events


LIMITS_OFF = "dhcp: {rate_per_mac: 0, rate_per_source: 0, max_sessions_in_progress: 0, max_sessions_per_source: 0}\n"


def _answer(svc, events, data, port, source):
    tx = Sender()
    n = len(events)
    svc.handle(data, port, IFACE, source, tx, source_key=b"k")
    got = [{k: v for k, v in e.items() if k != "time"} for e in events[n:]]
    return tx.sent, got


def full(text, data, port, source):
    """The full path's answer: a service that has remembered nothing."""
    svc, events = _service(text)
    return _answer(svc, events, data, port, source)


def second(text, first, data, port, first_source, source):
    """The answer to `data` from a service that answered `first` just before, and its hits."""
    svc, events = _service(text)
    _answer(svc, events, first, port, first_source)
    hits = svc._memo.hits
    out = _answer(svc, events, data, port, source)
    return out, svc._memo.hits - hits


def _with_secs(data: bytes, secs: int) -> bytes:
    return data[:8] + struct.pack("!H", secs) + data[10:]


macs = st.binary(min_size=6, max_size=6).map(lambda b: b.hex(":"))
uuids = st.one_of(st.none(), st.uuids().map(str), st.just("00000000-0000-0000-0000-000000000000"))
addresses = st.tuples(*[st.integers(1, 254)] * 4).map(lambda t: "%d.%d.%d.%d" % t)
CONFIGS = [
    LIMITS_OFF,
    LIMITS_OFF + "dhcp: {uefi_4011_redirect: false}\n",
    LIMITS_OFF + "dhcp: {quirks: [{match: {arch: [7]}, set: {reply_delay_ms: 5, redirect_4011: false}}]}\n",
    LIMITS_OFF + "dhcp: {server_address: 10.1.2.3}\n",
]


def _merge(text: str) -> str:
    """The CONFIGS lines as one YAML mapping (later `dhcp:` keys join the first)."""
    dhcp = {}
    for line in text.splitlines():
        if line.strip():
            dhcp.update(yaml.safe_load(line)["dhcp"])
    return yaml.safe_dump({"dhcp": dhcp})


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["legacy-bios", "edk2", "uefi-http", "ipxe"]),
       port=st.sampled_from([PORT_DHCP, PORT_PROXY]),
       relayed=st.booleans(), with_ciaddr=st.booleans(), cfg=st.sampled_from(CONFIGS),
       arch=st.sampled_from([None, 0, 6, 7, 9, 10, 11, 16]),
       a=st.tuples(macs, uuids, st.integers(0, 2**32 - 1), st.integers(0, 65535), addresses, st.integers(1, 65535)),
       b=st.tuples(macs, uuids, st.integers(0, 2**32 - 1), st.integers(0, 65535), addresses, st.integers(1, 65535)),
       uuid_present=st.booleans(), client_id=st.booleans())
def test_a_remembered_reply_is_the_full_paths_reply(kind, port, relayed, with_ciaddr, cfg, arch, a, b,
                                                    uuid_present, client_id):
    text = _merge(cfg)
    message = opt.DISCOVER if port == PORT_DHCP else opt.REQUEST
    giaddr = "10.9.0.1" if relayed else "0.0.0.0"

    def make(who):
        mac, uuid, xid, secs, ip, sport = who
        if uuid_present and uuid is None:
            uuid = "00000000-0000-0000-0000-000000000000"
        extra = {opt.CLIENT_ID: b"\x01" + bytes.fromhex(mac.replace(":", ""))} if client_id else None
        data = request_bytes(kind, mac=mac, xid=xid, message=message, arch=arch, giaddr=giaddr,
                             ciaddr=ip if with_ciaddr else "0.0.0.0", uuid=uuid if uuid_present else None,
                             extra=extra)
        if port == PORT_PROXY:
            source = (ip, sport)
        else:
            source = (giaddr, 67) if relayed else ("0.0.0.0", 68)
        return _with_secs(data, secs), source

    first, first_source = make(a)
    data, source = make(b)
    (sent, events), hits = second(text, first, data, port, first_source, source)
    assert (sent, events) == full(text, data, port, source)
    if sent and kind != "ipxe":
        assert hits == 1       # the memo answered it
    if kind == "ipxe":
        assert hits == 0       # the script URL carries the MAC and UUID: never remembered


def _vary(payload: bytes, n: int) -> bytes:
    """Another machine of the same firmware: xid, secs, chaddr and option 97's GUID changed."""
    out = bytearray(payload)
    out[4:8] = (0x5EED0000 + n).to_bytes(4, "big")
    out[8:10] = (n % 7).to_bytes(2, "big")
    out[28:34] = bytes((0x52, 0x54, 0x00, 0xAB, 0xCD, n))
    shape = memo.shape(payload, PORT_DHCP, False)
    if shape is not None and shape[1] >= 0:
        u, ulen = shape[1], shape[2]
        out[u + 1:u + ulen] = bytes((i * 37 + n) & 255 for i in range(ulen - 1))
    return bytes(out)


CAPTURED = [pytest.param(d, id=f"{name}@{d.time:.2f}s") for name in captures.capture_names()
            for d in captures.client_requests(name)]


@pytest.mark.skipif(not CAPTURED, reason="../shared/captures is not beside the checkout")
@pytest.mark.parametrize("dgram", CAPTURED)
def test_captured_clients_get_the_full_paths_reply_from_the_memo(dgram):
    port = PORT_PROXY if dgram.dport == 4011 else PORT_DHCP
    source = (dgram.src, dgram.sport)
    other = _vary(dgram.payload, 9)
    (sent, events), hits = second(LIMITS_OFF, dgram.payload, other, port, source, source)
    assert (sent, events) == full(LIMITS_OFF, other, port, source)
    if sent:      # EDK2's replies come from the memo; iPXE's (its script URL) never do
        assert hits == (classify(decode(dgram.payload)).firmware != IPXE)
        assert events[0]["mac"] == "52:54:00:ab:cd:09"


def test_a_storm_of_one_firmware_is_answered_from_the_memo():
    svc, events = _service(LIMITS_OFF)
    tx = Sender()
    for i in range(50):
        svc.handle(request_bytes("edk2", mac=f"52:54:00:00:01:{i:02x}", xid=i, giaddr="10.9.0.1",
                                 uuid=f"6e65746c-6162-4000-8000-0000000000{i:02x}"),
                   PORT_DHCP, IFACE, ("10.9.0.1", 67), tx, source_key=b"relay")
    assert len(tx.sent) == 50 and svc._memo.hits == 49
    assert [e["uuid"][-2:] for e in events] == [f"{i:02x}" for i in range(50)]
    assert [e["xid"] for e in events] == list(range(50))


@pytest.mark.parametrize("dhcp,rest,who", [
    ({"deny_macs": ["52:54:00:66"]}, {}, "a denied MAC"),
    ({"allow_subnets": ["10.9.0.0/24"]}, {}, "allow rules"),
    ({"quirks": [{"match": {"mac_prefix": "52:54:00:66"}, "set": {"redirect_4011": False}}]}, {}, "a MAC quirk"),
    ({"known_machines_only": True}, {"profiles": {"p": {"exit": True}},
                                     "groups": [{"name": "g", "profile": "p", "selectors": {"mac": "52:54:00:11:*"}}]},
     "known machines only"),
])
def test_nothing_is_remembered_where_the_decision_reads_the_mac(dhcp, rest, who):
    text = yaml.safe_dump({"dhcp": {**yaml.safe_load(LIMITS_OFF)["dhcp"], **dhcp}, **rest})
    first = request_bytes("edk2", mac="52:54:00:11:00:01", giaddr="10.9.0.1")
    then = request_bytes("edk2", mac="52:54:00:66:00:01", giaddr="10.9.0.1")
    source = ("10.9.0.1", 67)
    (sent, events), hits = second(text, first, then, PORT_DHCP, source, source)
    assert hits == 0, who
    assert (sent, events) == full(text, then, PORT_DHCP, source)
    if who != "allow rules":     # (both are inside the allowed subnet)
        assert full(text, first, PORT_DHCP, source)[0] != sent      # the second machine is answered otherwise


def test_a_reload_forgets_what_the_old_config_answered():
    svc, events = _service(LIMITS_OFF)
    tx = Sender()
    req = lambda i: request_bytes("legacy-bios", mac=f"52:54:00:00:02:{i:02x}", giaddr="10.9.0.1")  # noqa: E731
    svc.handle(req(1), PORT_DHCP, IFACE, ("10.9.0.1", 67), tx)
    svc.live.current = config.parse(_merge(LIMITS_OFF + "dhcp: {server_address: 10.1.2.3}\n"))
    svc.handle(req(2), PORT_DHCP, IFACE, ("10.9.0.1", 67), tx)
    assert [server for _, server, _ in tx.sent] == ["10.77.0.2", "10.1.2.3"]
    assert svc._memo.hits == 0


def test_requests_without_a_shape():
    base = request_bytes("edk2")
    assert memo.shape(base, PORT_DHCP, True) is not None
    overload = request_bytes("edk2", extra={opt.OVERLOAD: b"\x01"})
    assert memo.shape(overload, PORT_DHCP, True) is None
    twice = base[:-1] + bytes((opt.CLIENT_UUID, 17)) + pxe.encode_uuid("6e65746c-6162-4000-8000-000000000009") + b"\xff"
    assert memo.shape(twice, PORT_DHCP, True) is None
    ids = base[:-1] + bytes((opt.CLIENT_ID, 7, 1)) + b"RSTUVW" + bytes((opt.CLIENT_ID, 2)) + b"xy\xff"
    assert memo.shape(ids, PORT_DHCP, True) is None
    assert memo.shape(base[:245] + b"\x3c", PORT_DHCP, True) is None          # an option without a length
    assert memo.shape(base[:241] + b"\x3c\x40abc", PORT_DHCP, True) is None    # ... running past the end
    assert memo.shape(b"\x02" + base[1:], PORT_DHCP, True) is None            # a BOOTREPLY
    assert memo.shape(base[:236] + b"\0\0\0\0" + base[240:], PORT_DHCP, True) is None    # BOOTP


def test_the_shape_keeps_everything_but_who_asks():
    a = request_bytes("edk2", mac="52:54:00:00:00:01", xid=1, uuid="6e65746c-6162-4000-8000-000000000001")
    b = request_bytes("edk2", mac="52:54:00:00:00:02", xid=2, uuid="6e65746c-6162-4000-8000-000000000002")
    assert memo.shape(a, PORT_DHCP, True)[0] == memo.shape(b, PORT_DHCP, True)[0]
    with_id = [request_bytes("edk2", mac="52:54:00:00:00:0%d" % i, xid=i, extra={opt.CLIENT_ID: b"\x01RTU%d" % i})
               for i in (1, 2)]
    assert memo.shape(with_id[0], PORT_DHCP, True)[0] == memo.shape(with_id[1], PORT_DHCP, True)[0]
    assert memo.shape(with_id[0], PORT_DHCP, True)[0] != memo.shape(a, PORT_DHCP, True)[0]
    assert memo.shape(a, PORT_DHCP, True)[0] != memo.shape(a, PORT_PROXY, True)[0]
    assert memo.shape(a, PORT_PROXY, True)[0] != memo.shape(a, PORT_PROXY, False)[0]
    for arch in (0, 9):
        assert memo.shape(request_bytes("edk2", arch=arch), PORT_DHCP, True)[0] != memo.shape(a, PORT_DHCP, True)[0]
    ciaddr = request_bytes("edk2", mac="52:54:00:00:00:01", xid=1, ciaddr="10.0.0.9",
                           uuid="6e65746c-6162-4000-8000-000000000001")
    assert memo.shape(ciaddr, PORT_DHCP, True)[0] != memo.shape(a, PORT_DHCP, True)[0]
