"""IPv4/UDP framing for the passive port-67 path. Pure.

On UDP 67 proxydhcp never binds the port (a DHCP server on the same host keeps it): it
reads IPv4 datagrams from a packet socket and sends replies through a raw IP socket, so it
builds and parses the IPv4 and UDP headers itself.
"""

from __future__ import annotations

import socket
import struct
from array import array

_IP = struct.Struct("!BBHHHBBH4s4s")
_UDP = struct.Struct("!HHHH")
PROTO_UDP = 17


_LITTLE = socket.htons(1) != 1
_PSEUDO = struct.Struct("!4s4sBBH")


def _checksum(data: bytes) -> int:
    """RFC 1071 Internet checksum. The one's-complement sum does not depend on byte order
    (RFC 1071 2(B)): sum native-order words and swap the result once."""
    if len(data) % 2:
        data += b"\x00"
    total = sum(array("H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    total = ~total & 0xFFFF
    return ((total >> 8) | (total << 8)) & 0xFFFF if _LITTLE else total


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
    """An IPv4 header + UDP header (with checksum) + payload, for a raw IP socket."""
    s, d = socket.inet_aton(src), socket.inet_aton(dst)
    length = 8 + len(payload)
    csum = _checksum(_PSEUDO.pack(s, d, 0, PROTO_UDP, length) + _UDP.pack(sport, dport, length, 0) + payload) or 0xFFFF
    udp = _UDP.pack(sport, dport, length, csum) + payload
    header = _IP.pack(0x45, 0, 20 + length, 0, 0x4000, ttl, PROTO_UDP, 0, s, d)
    header = _IP.pack(0x45, 0, 20 + length, 0, 0x4000, ttl, PROTO_UDP, _checksum(header), s, d)
    return header + udp


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
