"""Hand-built client requests of each firmware kind, shaped as the real firmware sends
them (see ../shared/captures/*.txt): used by unit tests and by the scripted clients of the
integration tests."""

from __future__ import annotations

import struct

from proxydhcp.dhcp import options as opt
from proxydhcp.dhcp import pxe
from proxydhcp.dhcp.packet import BOOTREQUEST, BROADCAST_FLAG, Packet, encode

UUID = "6e65746c-6162-4000-8000-000000000002"
IPXE_175 = bytes.fromhex("b105011af41000eb0301000017010122010113010127010119010129010110010221010115010118010112 0101".replace(" ", "")) + b"\xff"


def _mac(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def request(kind: str, mac: str = "52:54:00:77:00:02", message: int = opt.DISCOVER, arch: int | None = None,
            xid: int = 0x1234ABCD, ciaddr: str = "0.0.0.0", giaddr: str = "0.0.0.0", uuid: str | None = UUID,
            user_class: bytes | None = None, extra: dict | None = None) -> Packet:
    """kind: legacy-bios | edk2 (legacy UEFI PXE) | ipxe | uefi-http | plain (a DHCP client, not PXE)."""
    o: dict[int, bytes] = {opt.MESSAGE_TYPE: bytes((message,))}
    if kind == "legacy-bios":
        arch = 0 if arch is None else arch
        o[opt.PARAMETER_LIST] = bytes([1, 2, 3, 5, 6, 11, 12, 13, 15, 16, 17, 18, 43, 54, 60, 66, 67, 128, 129, 130, 131, 132, 133, 134, 135])
        o[opt.MAX_MESSAGE_SIZE] = struct.pack("!H", 1260)
        o[opt.CLIENT_UUID] = pxe.encode_uuid(uuid) if uuid else None
        o[opt.CLIENT_NDI] = b"\x01\x02\x01"
        o[opt.CLIENT_ARCH] = struct.pack("!H", arch)
        o[opt.VENDOR_CLASS] = b"PXEClient:Arch:%05d:UNDI:002001" % arch
    elif kind == "edk2":
        arch = 7 if arch is None else arch
        o[opt.MAX_MESSAGE_SIZE] = struct.pack("!H", 1472)
        o[opt.PARAMETER_LIST] = bytes([1, 2, 3, 4, 5, 6, 12, 13, 15, 17, 18, 22, 23, 28, 40, 41, 42, 43, 50, 51, 54, 58, 59, 60, 66, 67, 97, 128, 129, 130, 131, 132, 133, 134, 135])
        o[opt.CLIENT_UUID] = pxe.encode_uuid(uuid) if uuid else None
        o[opt.CLIENT_NDI] = b"\x01\x03\x00"
        o[opt.CLIENT_ARCH] = struct.pack("!H", arch)
        o[opt.VENDOR_CLASS] = b"PXEClient:Arch:%05d:UNDI:003000" % arch
    elif kind == "ipxe":
        arch = 7 if arch is None else arch
        o[opt.MAX_MESSAGE_SIZE] = struct.pack("!H", 1472)
        o[opt.CLIENT_ARCH] = struct.pack("!H", arch)
        o[opt.CLIENT_NDI] = b"\x01\x03\x0a"
        o[opt.VENDOR_CLASS] = b"PXEClient:Arch:%05d:UNDI:003010" % arch
        o[opt.USER_CLASS] = b"iPXE" if user_class is None else user_class
        o[opt.PARAMETER_LIST] = bytes([1, 3, 6, 7, 12, 15, 17, 26, 43, 60, 66, 67, 119, 128, 129, 130, 131, 132, 133, 134, 135, 175, 203])
        o[opt.IPXE_ENCAP] = IPXE_175
        o[opt.CLIENT_ID] = b"\x01" + _mac(mac)
        o[opt.CLIENT_UUID] = pxe.encode_uuid(uuid) if uuid else None
    elif kind == "uefi-http":
        arch = 16 if arch is None else arch
        o[opt.PARAMETER_LIST] = bytes([1, 3, 6, 15, 28, 43, 60, 66, 67])
        o[opt.CLIENT_UUID] = pxe.encode_uuid(uuid) if uuid else None
        o[opt.CLIENT_NDI] = b"\x01\x03\x00"
        o[opt.CLIENT_ARCH] = struct.pack("!H", arch)
        o[opt.VENDOR_CLASS] = b"HTTPClient:Arch:%05d:UNDI:003000" % arch
    elif kind == "plain":
        o[opt.PARAMETER_LIST] = bytes([1, 3, 6, 12, 15, 28, 42])
        o[opt.CLIENT_ID] = b"\x01" + _mac(mac)
        o[opt.VENDOR_CLASS] = b"udhcp 1.35.0"
    else:
        raise ValueError(kind)
    o = {k: v for k, v in o.items() if v is not None}
    if extra:
        o.update(extra)
    flags = BROADCAST_FLAG if ciaddr == "0.0.0.0" and kind != "edk2" else 0
    return Packet(op=BOOTREQUEST, xid=xid, flags=flags, ciaddr=ciaddr, giaddr=giaddr,
                  chaddr=_mac(mac).ljust(16, b"\x00"), options=o)


def request_bytes(*args, **kw) -> bytes:
    return encode(request(*args, **kw))
