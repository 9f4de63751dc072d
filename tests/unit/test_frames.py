"""IPv4/UDP framing of the passive port-67 path, checked against dpkt."""

import socket

import dpkt
from hypothesis import given
from hypothesis import strategies as st

from proxydhcp.net import frames


@given(st.binary(max_size=1400), st.integers(1, 65535), st.integers(1, 65535))
def test_build_udp_is_valid_for_an_independent_decoder(payload, sport, dport):
    raw = frames.build_udp("10.77.0.2", sport, "255.255.255.255", dport, payload)
    ip = dpkt.ip.IP(raw)
    assert socket.inet_ntoa(ip.src) == "10.77.0.2" and ip.p == 17
    udp = ip.data
    assert (udp.sport, udp.dport, bytes(udp.data)) == (sport, dport, payload)
    # recompute both checksums with dpkt and compare
    ip_sum, udp_sum = ip.sum, udp.sum
    ip.sum = 0
    udp.sum = 0
    again = dpkt.ip.IP(bytes(ip))
    assert again.sum == ip_sum and again.data.sum == udp_sum
    assert frames.parse_udp(raw) == ("10.77.0.2", sport, "255.255.255.255", dport, payload)


def _rfc1071(data: bytes) -> int:
    """The checksum the slow, obvious way: add 16-bit words with end-around carry."""
    if len(data) % 2:
        data += b"\x00"
    total = 0
    for i in range(0, len(data), 2):
        total += data[i] << 8 | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


@given(st.binary(max_size=1500), st.integers(0, 65535), st.integers(0, 65535), st.integers(1, 255),
       st.sampled_from(["0.0.0.0", "10.77.0.2", "255.255.255.255", "192.168.1.1"]))
def test_checksums_are_rfc_1071(payload, sport, dport, ttl, src):
    raw = frames.build_udp(src, sport, "10.0.0.255", dport, payload, ttl=ttl)
    assert _rfc1071(raw[:20]) == 0                      # a valid header sums to 0xFFFF
    pseudo = raw[12:20] + bytes([0, 17]) + raw[24:26]
    udp = bytearray(raw[20:])
    sent = int.from_bytes(udp[6:8], "big")
    udp[6:8] = b"\x00\x00"
    assert sent == (_rfc1071(pseudo + bytes(udp)) or 0xFFFF)


def test_checksum_edge_cases():
    # payloads whose sum folds to 0 / 0xFFFF, odd lengths, all zeros
    for payload in (b"", b"\x00", b"\xff", b"\xff\xff" * 700, b"\x00" * 1401, bytes(range(256)) * 3):
        test_checksums_are_rfc_1071.hypothesis.inner_test(payload, 68, 67, 64, "0.0.0.0")
    # a 2-byte payload that makes the UDP sum exactly 0xFFFF: its checksum is 0, sent as 0xFFFF
    base = frames.build_udp("0.0.0.0", 68, "10.0.0.255", 67, b"\x00\x00")
    pseudo = base[12:20] + bytes([0, 17]) + base[24:26]
    word = (0xFFFF - _rfc1071(pseudo + base[20:26] + b"\x00\x00")) % 0xFFFF   # sum without the payload
    zero = (0xFFFF - word).to_bytes(2, "big")
    raw = frames.build_udp("0.0.0.0", 68, "10.0.0.255", 67, zero)
    assert raw[26:28] == b"\xff\xff"
    test_checksums_are_rfc_1071.hypothesis.inner_test(zero, 68, 67, 64, "0.0.0.0")


@given(st.binary(max_size=200))
def test_parse_udp_never_raises(data):
    frames.parse_udp(data)


def test_parse_rejects_fragments_and_other_protocols():
    raw = bytearray(frames.build_udp("1.2.3.4", 68, "5.6.7.8", 67, b"x" * 10))
    assert frames.parse_udp(bytes(raw))
    frag = bytearray(raw)
    frag[6] = 0x20  # more fragments
    assert frames.parse_udp(bytes(frag)) is None
    tcp = bytearray(raw)
    tcp[9] = 6
    assert frames.parse_udp(bytes(tcp)) is None


def run_bpf(prog, pkt: bytes) -> bool:
    """A tiny classic-BPF interpreter for the instructions our filters use."""
    a = x = pc = 0
    while True:
        code, jt, jf, k = prog[pc]
        if code == 0x30:
            a = pkt[k]
        elif code == 0x28:
            a = int.from_bytes(pkt[k:k + 2], "big")
        elif code == 0x48:
            a = int.from_bytes(pkt[x + k:x + k + 2], "big")
        elif code == 0xB1:
            x = 4 * (pkt[k] & 0xF)
        elif code == 0x15:
            pc += jt if a == k else jf
        elif code == 0x45:
            pc += jt if a & k else jf
        elif code == 0x06:
            return k > 0
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")
        pc += 1


def test_bpf_programs_accept_exactly_what_they_should():
    cases = {
        (68, 67): True,     # a client request
        (67, 67): True,     # a relay
        (67, 68): True,     # another server's reply (watched)
        (5000, 68): False,
        (68, 4011): False,
        (53, 53): False,
    }
    for watch in (True, False):
        prog = frames.udp_port_filter(67, watch_replies=watch)
        for (sport, dport), want in cases.items():
            pkt = frames.build_udp("10.0.0.1", sport, "10.0.0.2", dport, b"x" * 20)
            expected = want and (watch or dport == 67)
            assert run_bpf(prog, pkt) == expected, (watch, sport, dport)
        frag = bytearray(frames.build_udp("10.0.0.1", 68, "10.0.0.2", 67, b"x"))
        frag[7] = 8  # fragment offset
        assert not run_bpf(prog, bytes(frag))
        tcp = bytearray(frames.build_udp("10.0.0.1", 68, "10.0.0.2", 67, b"x"))
        tcp[9] = 6
        assert not run_bpf(prog, bytes(tcp))
