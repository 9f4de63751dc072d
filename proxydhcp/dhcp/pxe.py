"""Decoders and encoders for the option values PXE and iPXE use (43, 60, 77, 93, 94, 97,
175). Pure; malformed values raise MalformedPacket. Meaning (which firmware is this?) lives
in proxydhcp.client, not here."""

from __future__ import annotations

import functools
import struct
import uuid as uuidlib
from dataclasses import dataclass

from proxydhcp.dhcp import options as opt
from proxydhcp.dhcp.packet import MalformedPacket, option_spans


def decode_suboptions(value: bytes, where: str) -> dict[int, bytes]:
    """RFC 2132 8.4 encapsulated options (option 43, option 175): code, len, data; 0 pads;
    255 ends. Repeated codes are concatenated."""
    out: dict[int, bytes] = {}
    for code, i, j in option_spans(value, 0, len(value), where, "sub-option"):
        out[code] = out.get(code, b"") + value[i:j]
    return out


def encode_suboptions(items) -> bytes:
    """Encapsulated options (iterable of (code, bytes)), ending with 255."""
    out = bytearray()
    for code, data in items:
        if len(data) > 255:
            raise ValueError(f"sub-option {code} longer than 255 bytes")
        out += bytes((code, len(data))) + data
    out.append(255)
    return bytes(out)


def decode_user_classes(value: bytes) -> list[bytes]:
    """Option 77. RFC 3004 is a list of (len, data); iPXE sends the raw bytes `iPXE`.
    If the value parses exactly as RFC 3004 with non-empty entries, use that; else it is
    one raw class."""
    classes: list[bytes] = []
    i, n = 0, len(value)
    while i < n:
        length = value[i]
        if length == 0 or i + 1 + length > n:
            return [value] if value else []
        classes.append(value[i + 1:i + 1 + length])
        i += 1 + length
    return classes


def decode_arch_list(value: bytes) -> list[int]:
    """Option 93: one or more u16, the client's preference first."""
    if not value or len(value) % 2:
        raise MalformedPacket(f"option 93 (client arch) must be a non-empty list of 16-bit codes, got {len(value)} bytes")
    return list(struct.unpack(f"!{len(value) // 2}H", value))


@dataclass(frozen=True)
class NetworkInterfaceId:
    type: int
    major: int
    minor: int


def decode_ndi(value: bytes) -> NetworkInterfaceId:
    """Option 94: {type=1, major, minor}, UNDI version."""
    if len(value) != 3:
        raise MalformedPacket(f"option 94 (client NDI) must be 3 bytes, got {len(value)}")
    return NetworkInterfaceId(value[0], value[1], value[2])


def decode_uuid(value: bytes) -> str:
    """Option 97 (type 0 + 16-byte GUID) as the canonical UUID the machine reports (SMBIOS):
    the first three fields arrive little-endian."""
    if len(value) != 17 or value[0] != 0:
        raise MalformedPacket(f"option 97 (client UUID) must be type 0 and 16 bytes, got {len(value)} bytes type {value[:1].hex() or '-'}")
    b = bytes(value)  # = str(uuid.UUID(bytes_le=value[1:])), without building a UUID object
    h = (b[4:0:-1] + b[6:4:-1] + b[8:6:-1] + b[9:]).hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def encode_uuid(text: str) -> bytes:
    """Inverse of decode_uuid: canonical UUID -> option 97 value."""
    return b"\x00" + uuidlib.UUID(text).bytes_le


def decode_ipxe_features(value: bytes) -> dict[str, object]:
    """Option 175 as {feature name: value}; one-byte flags become ints, bus_id and version
    readable forms; unknown codes appear as 'opt<N>'."""
    raw = decode_suboptions(value, "option 175 (iPXE)")
    out: dict[str, object] = {}
    for code, data in raw.items():
        name = opt.IPXE_FEATURES.get(code, f"opt{code}")
        if code == 0xEB and len(data) == 3:
            out[name] = "%d.%d.%d" % tuple(data)
        elif code == 0xB1 and len(data) == 5:
            bus, vendor, device = data[0], int.from_bytes(data[1:3], "big"), int.from_bytes(data[3:5], "big")
            out[name] = ("PCI" if bus == 1 else f"bus{bus}") + f":{vendor:04x}:{device:04x}"
        elif len(data) == 1:
            out[name] = data[0]
        else:
            out[name] = data.hex()
    return out


@dataclass(frozen=True)
class BootItem:
    """43.71: boot server type and layer."""
    type: int
    layer: int


def decode_boot_item(value: bytes) -> BootItem:
    if len(value) != 4:
        raise MalformedPacket(f"option 43.71 (boot item) must be 4 bytes, got {len(value)}")
    t, layer = struct.unpack("!HH", value)
    return BootItem(t, layer)


def encode_boot_item(item: BootItem) -> bytes:
    return struct.pack("!HH", item.type, item.layer)


@functools.lru_cache(maxsize=256)  # a handful of distinct answers, asked for every reply
def pxe_vendor_options(boot_file_present: bool = True, boot_item: BootItem | None = None) -> bytes:
    """Option 43 for a proxy reply. With a boot file: discovery control 8 (skip prompt, menu
    and discovery) and a zero-timeout prompt, as dnsmasq sends; 43.71 echoed when given."""
    items = []
    if boot_file_present:
        items.append((opt.PXE_DISCOVERY_CONTROL, bytes((opt.DISCOVERY_BOOTFILE_PRESENT,))))
        items.append((opt.PXE_MENU_PROMPT, b"\x00PXE"))
    if boot_item is not None:
        items.append((opt.PXE_BOOT_ITEM, encode_boot_item(boot_item)))
    return encode_suboptions(items)
