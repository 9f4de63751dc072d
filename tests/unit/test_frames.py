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


def test_bpf_program_targets_the_configured_port():
    prog = frames.udp_port_filter(67)
    assert prog[6] == (0x15, 0, 1, 67) and len(prog) == 9
