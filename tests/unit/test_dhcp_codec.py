"""DHCP codec: hand-built edge cases and property tests over random and mutated packets."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxydhcp import config
from proxydhcp.client import classify
from proxydhcp.dhcp import options as opt
from proxydhcp.dhcp import packet, pxe
from proxydhcp.dhcp.packet import MalformedPacket
from proxydhcp.responder import PORT_DHCP, PORT_PROXY, Interface, Reply, respond
from tests import captures
from tests.dhcp_clients import request_bytes

SEEDS = [d.payload for n in captures.capture_names() for d in captures.udp_datagrams(n)] or [
    request_bytes("edk2"), request_bytes("ipxe")]
SEEDS += [request_bytes(k) for k in ("legacy-bios", "edk2", "ipxe", "uefi-http", "plain")]
CFG = config.parse(None)
IFACE = Interface("eth0", "10.77.0.2")


def header(options: bytes, sname: bytes = b"", file: bytes = b"") -> bytes:
    head = bytes([1, 1, 6, 0]) + b"\x00" * 24 + bytes.fromhex("525400770002") + b"\x00" * 10
    return head + sname.ljust(64, b"\x00") + file.ljust(128, b"\x00") + packet.MAGIC_COOKIE + options


def test_long_option_is_concatenated_rfc3396():
    raw = header(bytes([60, 3]) + b"PXE" + bytes([53, 1, 1, 60, 6]) + b"Client" + b"\xff")
    p = packet.decode(raw)
    assert p.options[60] == b"PXEClient" and list(p.options) == [60, 53]


def test_long_option_is_split_on_encode():
    p = packet.Packet(options={43: bytes(range(256)) * 2})
    wire = packet.encode(p)
    assert packet.decode(wire).options[43] == bytes(range(256)) * 2
    assert wire[240] == 43 and wire[241] == 255


@pytest.mark.parametrize("overload,field", [(1, "file"), (2, "sname"), (3, "both")])
def test_option_overload_reads_file_and_sname(overload, field):
    in_file = bytes([60, 9]) + b"PXEClient" + b"\xff"
    in_sname = bytes([93, 2, 0, 7]) + b"\xff"
    raw = header(bytes([53, 1, 1, 52, 1, overload, 255]),
                 sname=in_sname if overload & 2 else b"host", file=in_file if overload & 1 else b"boot.0")
    p = packet.decode(raw)
    assert (60 in p.options) == bool(overload & 1)
    assert (93 in p.options) == bool(overload & 2)
    assert p.file == (b"" if overload & 1 else b"boot.0")
    assert p.sname == (b"" if overload & 2 else b"host")
    assert 52 not in p.options


@pytest.mark.parametrize("raw,why", [
    (b"\x01" * 100, "shorter"),
    (header(bytes([53, 5, 1])), "runs past"),
    (header(bytes([53])), "no length"),
    (header(bytes([52, 1, 9, 255])), "overload"),
    (b"\x07" + header(b"")[1:], "op 7"),
])
def test_malformed_raises_one_clear_error(raw, why):
    with pytest.raises(MalformedPacket, match=why):
        packet.decode(raw)


def test_bootp_without_cookie_has_no_options():
    p = packet.decode(header(b"")[:236] + b"\x00" * 64)
    assert p.options == {} and p.message_type is None and not p.dhcp


def test_user_class_forms():
    assert pxe.decode_user_classes(b"iPXE") == [b"iPXE"]
    assert pxe.decode_user_classes(b"\x04iPXE\x02ab") == [b"iPXE", b"ab"]
    assert pxe.decode_user_classes(b"") == []
    assert pxe.decode_user_classes(b"\x05iPXE") == [b"\x05iPXE"]  # not RFC 3004: raw


def test_arch_list_and_uuid_errors():
    assert pxe.decode_arch_list(b"\x00\x07\x00\x06") == [7, 6]
    for bad in (b"", b"\x00"):
        with pytest.raises(MalformedPacket):
            pxe.decode_arch_list(bad)
    with pytest.raises(MalformedPacket):
        pxe.decode_uuid(b"\x01" + b"\x00" * 16)
    u = "6e65746c-6162-4000-8000-000000000002"
    assert pxe.decode_uuid(pxe.encode_uuid(u)) == u
    assert pxe.encode_uuid(u)[1:5] == bytes.fromhex("6c74656e")


options_st = st.dictionaries(st.integers(1, 254).filter(lambda c: c != 52), st.binary(max_size=600), max_size=12)
ip_st = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: "%d.%d.%d.%d" % t)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.builds(packet.Packet, op=st.sampled_from([1, 2]), htype=st.integers(0, 255), hlen=st.integers(0, 16),
                 hops=st.integers(0, 255), xid=st.integers(0, 2**32 - 1), secs=st.integers(0, 65535),
                 flags=st.integers(0, 65535), ciaddr=ip_st, yiaddr=ip_st, siaddr=ip_st, giaddr=ip_st,
                 chaddr=st.binary(min_size=16, max_size=16),
                 sname=st.binary(max_size=63).map(lambda b: b.replace(b"\x00", b"x")),
                 file=st.binary(max_size=127).map(lambda b: b.replace(b"\x00", b"x")),
                 options=options_st))
def test_encode_decode_roundtrip(p):
    assert packet.decode(packet.encode(p)) == p


def _never_crashes(data: bytes):
    try:
        p = packet.decode(data)
    except MalformedPacket:
        return
    try:
        classify(p)
    except MalformedPacket:
        pass
    for port in (PORT_DHCP, PORT_PROXY):
        r = respond(p, port, IFACE, ("10.0.0.9", 68), CFG)
        if isinstance(r, Reply):
            again = packet.decode(packet.encode(r.packet))
            assert again.yiaddr == "0.0.0.0" and again.message_type in (opt.OFFER, opt.ACK)


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=700))
def test_random_bytes_raise_only_malformed(data):
    _never_crashes(data)


@settings(max_examples=3000, deadline=None)
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 699), st.integers(0, 255)), max_size=12),
       st.integers(0, 700))
def test_mutated_real_packets_raise_only_malformed(seed, flips, cut):
    data = bytearray(seed)
    for pos, val in flips:
        if pos < len(data):
            data[pos] = val
    _never_crashes(bytes(data[: max(cut, 200)]))


@settings(max_examples=2000, deadline=None)
@given(st.sampled_from(SEEDS), st.binary(max_size=300))
def test_appended_option_garbage(seed, tail):
    _never_crashes(seed[:240] + tail)


VALUE_DECODERS = [lambda v: pxe.decode_suboptions(v, "43"), pxe.decode_ipxe_features, pxe.decode_user_classes,
                  pxe.decode_arch_list, pxe.decode_ndi, pxe.decode_uuid, pxe.decode_boot_item]


@settings(max_examples=2000, deadline=None)
@given(st.sampled_from(VALUE_DECODERS), st.binary(max_size=300))
def test_option_value_decoders_raise_only_malformed(decoder, value):
    """Each PXE/iPXE option value decoder (43, 175, 77, 93, 94, 97, 43.71) on any bytes:
    a value, or MalformedPacket, nothing else."""
    try:
        decoder(value)
    except MalformedPacket as exc:
        assert str(exc)


pxe_options_st = st.dictionaries(
    st.sampled_from([opt.VENDOR_SPECIFIC, opt.MESSAGE_TYPE, opt.VENDOR_CLASS, opt.USER_CLASS, opt.CLIENT_ARCH,
                     opt.CLIENT_NDI, opt.CLIENT_UUID, opt.IPXE_ENCAP]),
    st.one_of(st.binary(max_size=40), st.sampled_from([b"PXEClient", b"HTTPClient:Arch:00016", b"iPXE", b"\x01",
                                                       b"\x03", b"\x00\x07"])), max_size=8)


@settings(max_examples=2000, deadline=None)
@given(pxe_options_st, st.sampled_from([PORT_DHCP, PORT_PROXY]))
def test_any_pxe_option_values_give_a_reply_or_a_named_silence(options, port):
    """Options that survive the packet codec but carry nonsense values: classify raises
    MalformedPacket at most, and respond() answers a Reply or a Silence with a known reason."""
    from proxydhcp.responder import SILENCE_REASONS, Silence
    p = packet.Packet(op=packet.BOOTREQUEST, chaddr=bytes.fromhex("525400770002").ljust(16, b"\0"), options=options)
    try:
        classify(p)
    except MalformedPacket:
        pass
    r = respond(p, port, IFACE, ("10.0.0.9", 68), CFG)
    assert isinstance(r, Reply) or (isinstance(r, Silence) and r.reason in SILENCE_REASONS)
