"""TFTP codec: known bytes, round trips, and a property test that decode raises only
TFTPPacketError on any input (random and mutated real packets)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxydhcp.tftp import packet as pk

EDK2_RRQ = b"\x00\x01ipxe.efi\x00octet\x00tsize\x000\x00blksize\x001468\x00windowsize\x004\x00"
IPXE_RRQ = b"\x00\x01netlab-probe.bin\x00octet\x00blksize\x001432\x00tsize\x000\x00"


def test_decode_edk2_rrq():
    req = pk.decode(EDK2_RRQ)
    assert req == pk.Request(pk.RRQ, "ipxe.efi", "octet", {"tsize": "0", "blksize": "1468", "windowsize": "4"})
    assert list(req.options) == ["tsize", "blksize", "windowsize"]   # client order kept
    assert req.is_read


def test_option_names_and_mode_are_case_insensitive():
    req = pk.decode(b"\x00\x01F\x00OcTeT\x00BLKSIZE\x00512\x00")
    assert req.mode == "octet" and req.options == {"blksize": "512"} and req.filename == "F"


def test_padding_and_dangling_option_tolerated():
    req = pk.decode(b"\x00\x01f\x00octet\x00blksize\x00512\x00tsize\x00\x00\x00")
    assert req.options == {"blksize": "512"}


def test_ack_data_error_oack():
    assert pk.decode(b"\x00\x04\xff\xfe") == pk.Ack(65534)
    assert pk.decode(b"\x00\x04\x00\x01pad") == pk.Ack(1)
    assert pk.decode(b"\x00\x03\x00\x02abc") == pk.Data(2, b"abc")
    assert pk.decode(b"\x00\x05\x00\x08User aborted the transfer\x00") == pk.Error(8, "User aborted the transfer")
    assert pk.decode(b"\x00\x05\x00\x01no nul") == pk.Error(1, "no nul")
    assert pk.decode(b"\x00\x06blksize\x001468\x00tsize\x00850528\x00") == \
        pk.OptionAck({"blksize": "1468", "tsize": "850528"})


@pytest.mark.parametrize("raw", [b"", b"\x00", b"\x00\x01", b"\x00\x01name", b"\x00\x01name\x00",
                                 b"\x00\x03\x00", b"\x00\x04\x00", b"\x00\x07\x00\x00", b"\xff\xff\x00\x00",
                                 b"\x00\x06blksize"])
def test_malformed(raw):
    with pytest.raises(pk.TFTPPacketError):
        pk.decode(raw)


def test_encoders():
    assert pk.encode_ack(65536 + 3) == b"\x00\x04\x00\x03"
    assert pk.encode_data(1, b"MZ") == b"\x00\x03\x00\x01MZ"
    assert pk.encode_error(5, "unknown transfer ID") == b"\x00\x05\x00\x05unknown transfer ID\x00"
    assert pk.encode_oack({"blksize": "1432", "tsize": "65536"}) == b"\x00\x06blksize\x001432\x00tsize\x0065536\x00"
    assert pk.encode_rrq("netlab-probe.bin", "octet", {"blksize": 1432, "tsize": 0}) == IPXE_RRQ
    assert pk.DATA_HEADERS[0] == b"\x00\x03\x00\x00" and pk.DATA_HEADERS[65535] == b"\x00\x03\xff\xff"


names = st.text(alphabet=st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=40)
opt_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=10)
opt_values = st.text(alphabet="0123456789", min_size=1, max_size=6)


@given(st.sampled_from([pk.RRQ, pk.WRQ]), names, st.sampled_from(["octet", "netascii"]),
       st.dictionaries(opt_names, opt_values, max_size=5))
def test_request_round_trip(opcode, name, mode, options):
    raw = pk.encode_request(opcode, name, mode, options)
    assert pk.decode(raw) == pk.Request(opcode, name, mode, options)
    assert pk.encode(pk.decode(raw)) == raw


@given(st.one_of(
    st.builds(pk.Data, st.integers(0, 65535), st.binary(max_size=600)),
    st.builds(pk.Ack, st.integers(0, 65535)),
    st.builds(pk.Error, st.integers(0, 8), st.text(alphabet="abc xyz", max_size=30)),
    st.builds(pk.OptionAck, st.dictionaries(opt_names, opt_values, max_size=4))))
def test_round_trip(p):
    assert pk.decode(pk.encode(p)) == p


def _decode_or_packet_error(raw):
    try:
        return pk.decode(raw)
    except pk.TFTPPacketError:
        return None


@settings(max_examples=1500)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_packet_error(raw):
    _decode_or_packet_error(raw)


@settings(max_examples=1500)
@given(st.sampled_from([EDK2_RRQ, IPXE_RRQ, b"\x00\x04\x00\x00", b"\x00\x05\x00\x08x\x00",
                        b"\x00\x06blksize\x001468\x00"]),
       st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=8),
       st.integers(0, 400))
def test_mutated_real_packets_raise_only_packet_error(raw, flips, cut):
    b = bytearray(raw)
    for pos, value in flips:
        if b:
            b[pos % len(b)] = value
    _decode_or_packet_error(bytes(b[:cut]))
    _decode_or_packet_error(bytes(b))
