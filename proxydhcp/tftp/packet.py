"""TFTP packet codec (RFC 1350, options of RFC 2347): bytes <-> values, nothing else.

Owns the wire format of RRQ, WRQ, DATA, ACK, ERROR and OACK. Knows no policy (which
options to accept, which files exist) and does no I/O. `decode` raises only
`TFTPPacketError`, whatever bytes it is given.

Names of options are returned lower-cased (RFC 2347: case-insensitive); values as text.
File names are decoded as UTF-8 with surrogateescape, so any byte sequence survives the
round trip to an `os` path call unchanged.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

RRQ, WRQ, DATA, ACK, ERROR, OACK = 1, 2, 3, 4, 5, 6
OPCODE_NAMES = {RRQ: "RRQ", WRQ: "WRQ", DATA: "DATA", ACK: "ACK", ERROR: "ERROR", OACK: "OACK"}

# Error codes (RFC 1350 + RFC 2347)
ERR_UNDEFINED = 0
ERR_NOT_FOUND = 1
ERR_ACCESS = 2
ERR_DISK_FULL = 3
ERR_ILLEGAL = 4
ERR_UNKNOWN_TID = 5
ERR_EXISTS = 6
ERR_NO_USER = 7
ERR_OPTION = 8

_HEADER = struct.Struct("!HH")


class TFTPPacketError(ValueError):
    """The bytes are not a well-formed TFTP packet."""


@dataclass(frozen=True)
class Request:
    """RRQ or WRQ. `options` keeps the client's order; names lower-cased."""
    opcode: int
    filename: str
    mode: str
    options: dict = field(default_factory=dict)

    @property
    def is_read(self) -> bool:
        return self.opcode == RRQ


@dataclass(frozen=True)
class Data:
    block: int
    payload: bytes


@dataclass(frozen=True)
class Ack:
    block: int


@dataclass(frozen=True)
class Error:
    code: int
    message: str


@dataclass(frozen=True)
class OptionAck:
    options: dict


Packet = Request | Data | Ack | Error | OptionAck


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _fields(body: bytes, what: str) -> list[bytes]:
    """NUL-terminated strings; trailing NUL padding (some ROMs add it) is dropped."""
    if not body.endswith(b"\0"):
        raise TFTPPacketError(f"{what}: last string is not NUL-terminated")
    parts = body[:-1].split(b"\0")
    while len(parts) > 1 and parts[-1] == b"":
        parts.pop()
    return parts


def _options(parts: list[bytes]) -> dict:
    """Pairs of name, value. A dangling name without a value is ignored; the first
    occurrence of a repeated name wins."""
    out: dict = {}
    for i in range(0, len(parts) - 1, 2):
        name = parts[i].decode("latin-1").lower()
        if name and name not in out:
            out[name] = parts[i + 1].decode("latin-1")
    return out


def decode(data: bytes) -> Packet:
    """Parse one datagram. Raises TFTPPacketError and nothing else."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TFTPPacketError("not bytes")
    data = bytes(data)
    if len(data) < 2:
        raise TFTPPacketError("shorter than an opcode")
    opcode = (data[0] << 8) | data[1]
    if opcode in (RRQ, WRQ):
        parts = _fields(data[2:], OPCODE_NAMES[opcode])
        if len(parts) < 2:
            raise TFTPPacketError(f"{OPCODE_NAMES[opcode]}: no transfer mode")
        return Request(opcode, _text(parts[0]), parts[1].decode("latin-1").lower(), _options(parts[2:]))
    if opcode == OACK:
        return OptionAck(_options(_fields(data[2:], "OACK")) if len(data) > 2 else {})
    if len(data) < 4:
        raise TFTPPacketError(f"opcode {opcode}: shorter than 4 bytes")
    if opcode == DATA:
        return Data((data[2] << 8) | data[3], data[4:])
    if opcode == ACK:
        return Ack((data[2] << 8) | data[3])  # extra bytes after the block number: ignored
    if opcode == ERROR:
        raw = data[4:]
        end = raw.find(b"\0")
        message = raw if end < 0 else raw[:end]
        return Error((data[2] << 8) | data[3], message.decode("utf-8", "replace"))
    raise TFTPPacketError(f"unknown opcode {opcode}")


def _opt_bytes(options: dict) -> bytes:
    return b"".join(str(k).encode("latin-1") + b"\0" + str(v).encode("latin-1") + b"\0"
                    for k, v in options.items())


def encode_request(opcode: int, filename: str, mode: str = "octet", options: dict | None = None) -> bytes:
    return (struct.pack("!H", opcode) + filename.encode("utf-8", "surrogateescape") + b"\0"
            + mode.encode("latin-1") + b"\0" + _opt_bytes(options or {}))


def encode_rrq(filename: str, mode: str = "octet", options: dict | None = None) -> bytes:
    return encode_request(RRQ, filename, mode, options)


def encode_wrq(filename: str, mode: str = "octet", options: dict | None = None) -> bytes:
    return encode_request(WRQ, filename, mode, options)


def encode_data(block: int, payload: bytes) -> bytes:
    return _HEADER.pack(DATA, block & 0xFFFF) + bytes(payload)


def encode_ack(block: int) -> bytes:
    return _HEADER.pack(ACK, block & 0xFFFF)


def encode_error(code: int, message: str) -> bytes:
    return _HEADER.pack(ERROR, code & 0xFFFF) + message.encode("utf-8", "replace") + b"\0"


def encode_oack(options: dict) -> bytes:
    return struct.pack("!H", OACK) + _opt_bytes(options)


def encode(packet: Packet) -> bytes:
    if isinstance(packet, Request):
        return encode_request(packet.opcode, packet.filename, packet.mode, packet.options)
    if isinstance(packet, Data):
        return encode_data(packet.block, packet.payload)
    if isinstance(packet, Ack):
        return encode_ack(packet.block)
    if isinstance(packet, Error):
        return encode_error(packet.code, packet.message)
    if isinstance(packet, OptionAck):
        return encode_oack(packet.options)
    raise TypeError(f"not a TFTP packet: {packet!r}")


#: The 4-byte DATA header for each 16-bit block number, built once and shared.
DATA_HEADERS: tuple[bytes, ...] = tuple(_HEADER.pack(DATA, n) for n in range(65536))
