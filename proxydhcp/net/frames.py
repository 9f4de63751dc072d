"""IPv4/UDP framing for the passive port-67 path. Pure.

On UDP 67 proxydhcp never binds the port (a DHCP server on the same host keeps it): it
reads IPv4 datagrams from a packet socket and sends replies through a raw IP socket, so it
builds and parses the IPv4 and UDP headers itself.
"""

from __future__ import annotations

import socket
import struct

_IP = struct.Struct("!BBHHHBBH4s4s")
_UDP = struct.Struct("!HHHH")
PROTO_UDP = 17


def parse_udp(ip_packet: bytes) -> tuple[str, int, str, int, bytes] | None:
    """(src, sport, dst, dport, payload) of an unfragmented IPv4/UDP datagram, else None."""
    if len(ip_packet) < 28:
        return None
    vihl, _tos, total, _id, frag, _ttl, proto, _csum, src, dst = _IP.unpack_from(ip_packet)
    ihl = (vihl & 0x0F) * 4
    if vihl >> 4 != 4 or proto != PROTO_UDP or frag & 0x3FFF or ihl < 20 or total > len(ip_packet):
        return None
    if total < ihl + 8:
        return None
    sport, dport, length, _ = _UDP.unpack_from(ip_packet, ihl)
    end = ihl + length
    if length < 8 or end > total:
        return None
    return (socket.inet_ntoa(src), sport, socket.inet_ntoa(dst), dport, bytes(ip_packet[ihl + 8:end]))


def build_udp(src: str, sport: int, dst: str, dport: int, payload: bytes, ttl: int = 64) -> bytes:
    """An IPv4 header + UDP header (with checksum) + payload, for a raw IP socket.

    The RFC 1071 sums are taken arithmetically: a one's-complement sum of 16-bit words is
    congruent to the words read as one big-endian integer modulo 0xFFFF (2**16 = 1 mod
    0xFFFF), and it is 0xFFFF where that remainder is 0 (neither header is all zeros). So
    the payload is read once, by int.from_bytes, and no pseudo-header is built."""
    s, d = socket.inet_aton(src), socket.inet_aton(dst)
    s32, d32 = int.from_bytes(s, "big"), int.from_bytes(d, "big")
    length = 8 + len(payload)
    body = int.from_bytes(payload, "big")
    if len(payload) & 1:
        body <<= 8                                   # the zero byte that pads the last word
    rest = (s32 + d32 + PROTO_UDP + length + sport + dport + length + body) % 0xFFFF
    csum = 0xFFFF - rest if rest else 0xFFFF          # a computed 0 is sent as 0xFFFF (RFC 768)
    rest = (0x4500 + 20 + length + 0x4000 + (ttl << 8 | PROTO_UDP) + s32 + d32) % 0xFFFF
    header = _IP.pack(0x45, 0, 20 + length, 0, 0x4000, ttl, PROTO_UDP, 0xFFFF - rest if rest else 0, s, d)
    return b"".join((header, _UDP.pack(sport, dport, length, csum), payload))


# Classic BPF over the IP header (the packet socket hands us the IP header first): accept
# unfragmented IPv4 UDP to `port`, and, when watch_replies, server replies (67 -> 68) too, so
# that another DHCP server's PXE offers on the segment can be noticed.
def udp_port_filter(port: int, watch_replies: bool = True) -> list[tuple[int, int, int, int]]:
    accept, drop = (0x06, 0, 0, 0x40000), (0x06, 0, 0, 0)
    if not watch_replies:
        return [
            (0x30, 0, 0, 9),           # 0 ldb [9]            protocol
            (0x15, 0, 6, PROTO_UDP),   # 1 jeq #17 else drop
            (0x28, 0, 0, 6),           # 2 ldh [6]            flags + fragment offset
            (0x45, 4, 0, 0x1FFF),      # 3 jset #0x1fff -> drop (a fragment)
            (0xB1, 0, 0, 0),           # 4 ldxb 4*([0]&0xf)   header length
            (0x48, 0, 0, 2),           # 5 ldh [x+2]          UDP destination port
            (0x15, 0, 1, port),        # 6 jeq #port else drop
            accept, drop,
        ]
    return [
        (0x30, 0, 0, 9),           # 0 ldb [9]
        (0x15, 0, 9, PROTO_UDP),   # 1 jeq #17 else drop (11)
        (0x28, 0, 0, 6),           # 2 ldh [6]
        (0x45, 7, 0, 0x1FFF),      # 3 jset #0x1fff -> drop (11)
        (0xB1, 0, 0, 0),           # 4 ldxb 4*([0]&0xf)
        (0x48, 0, 0, 2),           # 5 ldh [x+2]          destination port
        (0x15, 3, 0, port),        # 6 jeq #port -> accept (10)
        (0x15, 0, 3, 68),          # 7 jeq #68 else drop (11)
        (0x48, 0, 0, 0),           # 8 ldh [x+0]          source port
        (0x15, 0, 1, 67),          # 9 jeq #67 -> accept (10) else drop (11)
        accept, drop,              # 10, 11
    ]
