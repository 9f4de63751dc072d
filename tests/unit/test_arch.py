"""The option-93 table (proxydhcp/arch.py) against PROTOCOL.md section 3 and the IANA
registry it cites, and classification reading it."""

import struct

from proxydhcp import arch
from proxydhcp.client import LEGACY_PXE, UEFI_HTTP, classify
from proxydhcp.dhcp import options as opt
from proxydhcp.dhcp.packet import BOOTREQUEST, Packet


def test_the_whole_registry_once():
    assert sorted(arch.BY_CODE) == list(range(42))            # 0..41, no gap, no duplicate
    assert len(arch.BY_NAME) == 42 and arch.UNKNOWN not in arch.BY_NAME
    assert arch.LABELS == tuple(a.name for a in arch.BY_CODE.values()) + (arch.UNKNOWN,)


def test_codes_mean_what_protocol_md_says():
    d = {c: arch.BY_CODE[c].description for c in arch.BY_CODE}
    assert d[0] == "x86 BIOS" and d[6] == "x86 UEFI"
    assert d[7] == "x64 UEFI" and d[9] == "EFI Byte Code"      # erratum 4624, as EDK2, iPXE, dnsmasq
    assert (d[10], d[11]) == ("ARM 32-bit UEFI", "ARM 64-bit UEFI")
    assert all(arch.BY_CODE[c].http for c in (15, 16, 18, 19, 20, 23, 24, 26, 28, 30, 38, 40))
    assert not any(arch.BY_CODE[c].http for c in (0, 6, 7, 9, 10, 11, 21, 22, 25, 27, 29, 37, 39, 41))
    assert "U-Boot" in d[21] and "U-Boot" in d[22]
    assert all("RISC-V" in d[c] for c in range(25, 31)) and all("LoongArch" in d[c] for c in range(37, 41))
    assert d[41] == "ARM rpiboot"
    assert arch.BY_CODE[16].firmware == "x64-uefi" and arch.BY_CODE[20].firmware == "bios"
    assert arch.label(7) == "x64-uefi" and arch.label(999) == arch.UNKNOWN and arch.label(None) == arch.UNKNOWN


def _discover(vendor: bytes, arch_codes=None) -> Packet:
    o = {opt.MESSAGE_TYPE: b"\x01", opt.VENDOR_CLASS: vendor}
    if arch_codes is not None:
        o[opt.CLIENT_ARCH] = struct.pack(f"!{len(arch_codes)}H", *arch_codes)
    return Packet(op=BOOTREQUEST, chaddr=bytes.fromhex("525400770002").ljust(16, b"\0"), options=o)


def test_classify_takes_the_first_code_of_93_then_option_60():
    c = classify(_discover(b"PXEClient:Arch:00000:UNDI:002001", [7, 6]))
    assert (c.arch_code, c.arch_codes, c.arch.name, c.firmware) == (7, (7, 6), "x64-uefi", LEGACY_PXE)
    c = classify(_discover(b"PXEClient:Arch:00011:UNDI:003000"))
    assert (c.arch_code, c.arch_label) == (11, "arm64-uefi")          # no 93: the arch in option 60
    c = classify(_discover(b"HTTPClient:Arch:00016:UNDI:003000", [16]))
    assert (c.firmware, c.arch_label, c.vendor_class) == (UEFI_HTTP, "x64-uefi-http", "HTTPClient:Arch:00016:UNDI:003000")
    c = classify(_discover(b"PXEClient:Arch:00007:UNDI:003000", [4242]))
    assert c.arch_code == 4242 and c.arch is None and c.arch_label == arch.UNKNOWN
