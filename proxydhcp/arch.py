"""The client system architecture table (DHCP option 93, RFC 4578 + IANA registry).

The one place that knows arch codes. Everything else (classification, firmware choice,
metric labels) asks this module. Codes 7 and 9 follow RFC 4578 erratum 4624, as EDK2,
iPXE and dnsmasq do: 7 is x64 UEFI, 9 is EBC.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Arch:
    code: int
    name: str          # short label, used in metrics and config ("x64-uefi")
    description: str   # IANA text
    firmware: str      # key of the boot-file table: which firmware build this machine runs
    http: bool = False  # the client boots from an HTTP URL (UEFI HTTP boot)


_TABLE = [
    Arch(0, "bios", "x86 BIOS", "bios"),
    Arch(1, "pc98", "NEC/PC98 (deprecated)", "pc98"),
    Arch(2, "ia64", "Itanium", "ia64"),
    Arch(3, "alpha", "DEC Alpha (deprecated)", "alpha"),
    Arch(4, "arcx86", "Arc x86 (deprecated)", "arcx86"),
    Arch(5, "lean-client", "Intel Lean Client (deprecated)", "lean-client"),
    Arch(6, "x86-uefi", "x86 UEFI", "x86-uefi"),
    Arch(7, "x64-uefi", "x64 UEFI", "x64-uefi"),
    Arch(8, "xscale-uefi", "Xscale UEFI", "xscale-uefi"),
    Arch(9, "ebc", "EFI Byte Code", "x64-uefi"),  # some old x64 firmware sends 9
    Arch(10, "arm32-uefi", "ARM 32-bit UEFI", "arm32-uefi"),
    Arch(11, "arm64-uefi", "ARM 64-bit UEFI", "arm64-uefi"),
    Arch(12, "ppc-openfirmware", "PowerPC Open Firmware", "ppc-openfirmware"),
    Arch(13, "ppc-epapr", "PowerPC ePAPR", "ppc-epapr"),
    Arch(14, "power-opal", "POWER OPAL v3", "power-opal"),
    Arch(15, "x86-uefi-http", "x86 UEFI boot from HTTP", "x86-uefi", True),
    Arch(16, "x64-uefi-http", "x64 UEFI boot from HTTP", "x64-uefi", True),
    Arch(17, "ebc-http", "EBC boot from HTTP", "x64-uefi", True),
    Arch(18, "arm32-uefi-http", "ARM 32-bit UEFI boot from HTTP", "arm32-uefi", True),
    Arch(19, "arm64-uefi-http", "ARM 64-bit UEFI boot from HTTP", "arm64-uefi", True),
    Arch(20, "bios-http", "x86 BIOS boot from HTTP", "bios", True),
    Arch(21, "arm32-uboot", "ARM 32-bit U-Boot", "arm32-uboot"),
    Arch(22, "arm64-uboot", "ARM 64-bit U-Boot", "arm64-uboot"),
    Arch(23, "arm32-uboot-http", "ARM 32-bit U-Boot boot from HTTP", "arm32-uboot", True),
    Arch(24, "arm64-uboot-http", "ARM 64-bit U-Boot boot from HTTP", "arm64-uboot", True),
    Arch(25, "riscv32-uefi", "RISC-V 32-bit UEFI", "riscv32-uefi"),
    Arch(26, "riscv32-uefi-http", "RISC-V 32-bit UEFI boot from HTTP", "riscv32-uefi", True),
    Arch(27, "riscv64-uefi", "RISC-V 64-bit UEFI", "riscv64-uefi"),
    Arch(28, "riscv64-uefi-http", "RISC-V 64-bit UEFI boot from HTTP", "riscv64-uefi", True),
    Arch(29, "riscv128-uefi", "RISC-V 128-bit UEFI", "riscv128-uefi"),
    Arch(30, "riscv128-uefi-http", "RISC-V 128-bit UEFI boot from HTTP", "riscv128-uefi", True),
    Arch(31, "s390-basic", "s390 Basic", "s390-basic"),
    Arch(32, "s390-extended", "s390 Extended", "s390-extended"),
    Arch(33, "mips32-uefi", "MIPS 32-bit UEFI", "mips32-uefi"),
    Arch(34, "mips64-uefi", "MIPS 64-bit UEFI", "mips64-uefi"),
    Arch(35, "sunway32-uefi", "Sunway 32-bit UEFI", "sunway32-uefi"),
    Arch(36, "sunway64-uefi", "Sunway 64-bit UEFI", "sunway64-uefi"),
    Arch(37, "loongarch32-uefi", "LoongArch 32-bit UEFI", "loongarch32-uefi"),
    Arch(38, "loongarch32-uefi-http", "LoongArch 32-bit UEFI boot from HTTP", "loongarch32-uefi", True),
    Arch(39, "loongarch64-uefi", "LoongArch 64-bit UEFI", "loongarch64-uefi"),
    Arch(40, "loongarch64-uefi-http", "LoongArch 64-bit UEFI boot from HTTP", "loongarch64-uefi", True),
    Arch(41, "arm-rpiboot", "ARM rpiboot", "arm-rpiboot"),
]

BY_CODE: dict[int, Arch] = {a.code: a for a in _TABLE}
BY_NAME: dict[str, Arch] = {a.name: a for a in _TABLE}
#: Every firmware key; the boot-file table in the config is keyed by these.
FIRMWARE_KEYS: frozenset[str] = frozenset(a.firmware for a in _TABLE)
#: Other spellings of a firmware key that the boot-file table accepts: "efi-<cpu>" for
#: "<cpu>-uefi" (efi-x64, efi-arm64, ...), the order iPXE's and GRUB's build names use.
FIRMWARE_ALIASES: dict[str, str] = {f"efi-{k[:-len('-uefi')]}": k for k in sorted(FIRMWARE_KEYS)
                                    if k.endswith("-uefi")}


def firmware_key(name: str) -> str | None:
    """The firmware key a boot-file table key names (itself or an alias), or None."""
    return name if name in FIRMWARE_KEYS else FIRMWARE_ALIASES.get(name)


#: Label used for a code outside the table (metrics stay bounded).
UNKNOWN = "unknown"
#: All label values an arch metric label can take.
LABELS: tuple[str, ...] = tuple(a.name for a in _TABLE) + (UNKNOWN,)


def lookup(code: int | None) -> Arch | None:
    """The table entry for an option-93 code, or None when absent or unassigned."""
    if code is None:
        return None
    return BY_CODE.get(code)


def label(code: int | None) -> str:
    """A bounded metric/log label for an arch code."""
    a = lookup(code)
    return a.name if a else UNKNOWN


def is_uefi(code: int) -> bool:
    """True for UEFI firmware of any CPU (PXE or HTTP)."""
    a = BY_CODE.get(code)
    return bool(a) and "uefi" in a.firmware
