"""BOOTP/DHCP packet codec (RFC 951, 2131, 2132, 3396). Pure: bytes in, values out.

Decoding merges repeated options (RFC 3396 long options) and follows option overload (52)
into `file` and `sname`. Encoding splits values over 255 bytes into consecutive options,
never uses overload, and pads to the BOOTP minimum of 300 bytes. Malformed input raises
MalformedPacket and nothing else. Knows no policy and no PXE meaning: see pxe.py, client.py.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field

from proxydhcp.dhcp import options as opt

MAGIC_COOKIE = b"\x63\x82\x53\x63"
_HEADER = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")
HEADER_LEN = _HEADER.size  # 236
MIN_PACKET = 300
BOOTREQUEST = 1
BOOTREPLY = 2
BROADCAST_FLAG = 0x8000


class MalformedPacket(ValueError):
    """The bytes are not a well-formed BOOTP/DHCP packet (or option value)."""


@dataclass
class Packet:
    op: int = BOOTREPLY
    htype: int = 1
    hlen: int = 6
    hops: int = 0
    xid: int = 0
    secs: int = 0
    flags: int = 0
    ciaddr: str = "0.0.0.0"
    yiaddr: str = "0.0.0.0"
    siaddr: str = "0.0.0.0"
    giaddr: str = "0.0.0.0"
    chaddr: bytes = b"\x00" * 16
    sname: bytes = b""
    file: bytes = b""
    # Option code -> value, in first-seen order; repeated codes already concatenated.
    options: dict[int, bytes] = field(default_factory=dict)
    dhcp: bool = True  # False: plain BOOTP (no magic cookie)

    @property
    def message_type(self) -> int | None:
        v = self.options.get(opt.MESSAGE_TYPE)
        return v[0] if v and len(v) == 1 else None

    @property
    def mac(self) -> str:
        """Hardware address as aa:bb:..., hlen bytes of chaddr."""
        return self.chaddr[: self.hlen].hex(":")


def option_spans(buf: bytes, start: int, end: int, where: str = "options",
                 what: str = "option") -> list[tuple[int, int, int]]:
    """(code, first byte, end) of each option's value in buf[start:end], in order: the
    RFC 2132 layout (code, length, value; 0 pads; 255 ends) that options, the file and sname
    areas and encapsulated options (43, 175) share. Raises MalformedPacket on an option that
    runs past `end`."""
    spans = []
    i = start
    while i < end:
        code = buf[i]
        if code == 0:
            i += 1
            continue
        if code == 255:
            break
        if i + 1 >= end:
            raise MalformedPacket(f"{where}: {what} {code} has no length byte")
        j = i + 2 + buf[i + 1]
        if j > end:
            raise MalformedPacket(f"{where}: {what} {code} of length {buf[i + 1]} runs past the end")
        spans.append((code, i + 2, j))
        i = j
    return spans


def _parse_options(buf: bytes, start: int, end: int, into: dict[int, bytes], where: str) -> None:
    for code, i, j in option_spans(buf, start, end, where):
        existing = into.get(code)
        if existing is None:
            into[code] = buf[i:j]
        else:
            into[code] = existing + buf[i:j]  # RFC 3396: concatenate in order
    # A missing END at the end of the area is tolerated (real clients omit it in file/sname).


def _cstring(raw: bytes) -> bytes:
    n = raw.find(b"\x00")
    return raw if n < 0 else raw[:n]


def decode(data: bytes) -> Packet:
    """Parse one BOOTP/DHCP packet."""
    if type(data) is not bytes:
        data = bytes(data)  # option values are slices of it: they must be bytes
    if len(data) < HEADER_LEN:
        raise MalformedPacket(f"packet of {len(data)} bytes is shorter than the {HEADER_LEN}-byte BOOTP header")
    (op, htype, hlen, hops, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr,
     chaddr, sname, file) = _HEADER.unpack_from(data)
    if op not in (BOOTREQUEST, BOOTREPLY):
        raise MalformedPacket(f"op {op} is neither BOOTREQUEST nor BOOTREPLY")
    if hlen > 16:
        raise MalformedPacket(f"hlen {hlen} exceeds the 16-byte chaddr field")
    pkt = Packet(op, htype, hlen, hops, xid, secs, flags,
                 socket.inet_ntoa(ciaddr), socket.inet_ntoa(yiaddr), socket.inet_ntoa(siaddr),
                 socket.inet_ntoa(giaddr), chaddr, _cstring(sname), _cstring(file), {}, False)
    if len(data) < HEADER_LEN + 4 or data[HEADER_LEN:HEADER_LEN + 4] != MAGIC_COOKIE:
        return pkt  # BOOTP: the vendor area carries no DHCP options
    pkt.dhcp = True
    found: dict[int, bytes] = {}
    _parse_options(data, HEADER_LEN + 4, len(data), found, "options")
    overload = found.pop(opt.OVERLOAD, None)
    if overload is not None:
        if len(overload) != 1 or overload[0] not in (1, 2, 3):
            raise MalformedPacket(f"option 52 (overload) has invalid value {bytes(overload).hex()}")
        # RFC 3396 order: options, then file, then sname.
        if overload[0] & 1:
            _parse_options(data, 108, 236, found, "file field")
            pkt.file = b""
        if overload[0] & 2:
            _parse_options(data, 44, 108, found, "sname field")
            pkt.sname = b""
    pkt.options = found
    return pkt


def _ip(text: str, name: str) -> bytes:
    try:
        return socket.inet_aton(text)
    except OSError:
        raise ValueError(f"{name}: {text!r} is not an IPv4 address") from None


def encode_options(options) -> bytes:
    """Options (iterable of (code, value)) as wire bytes, long values split (RFC 3396)."""
    out = bytearray()
    for code, value in options:
        if not 0 < code < 255:
            raise ValueError(f"option code {code} cannot be encoded")
        if not value:
            out += bytes((code, 0))
            continue
        for i in range(0, len(value), 255):
            chunk = value[i:i + 255]
            out += bytes((code, len(chunk)))
            out += chunk
    return bytes(out)


def encode(pkt: Packet) -> bytes:
    """Wire bytes of a packet: header, cookie, options in dict order, END, padded to 300."""
    if len(pkt.sname) > 63 or len(pkt.file) > 127:
        raise ValueError("sname must fit 63 bytes and file 127 bytes (NUL-terminated)")
    head = _HEADER.pack(pkt.op, pkt.htype, pkt.hlen, pkt.hops, pkt.xid, pkt.secs, pkt.flags,
                        _ip(pkt.ciaddr, "ciaddr"), _ip(pkt.yiaddr, "yiaddr"), _ip(pkt.siaddr, "siaddr"),
                        _ip(pkt.giaddr, "giaddr"), pkt.chaddr.ljust(16, b"\x00")[:16],
                        pkt.sname, pkt.file)
    body = MAGIC_COOKIE + encode_options(pkt.options.items()) + b"\xff"
    data = head + body
    if len(data) < MIN_PACKET:
        data += b"\x00" * (MIN_PACKET - len(data))
    return data
