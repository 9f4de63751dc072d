"""What a DHCP request says about the machine that sent it. Pure.

Firmware kinds (names from the field):
  legacy-pxe  PXE firmware in ROM or UEFI (EDK2 PxeBcDxe, Intel/Broadcom ROMs): must be told
              to fetch iPXE over TFTP
  ipxe        iPXE (user-class iPXE/gPXE, option 175, or the operator's custom class): gets
              its boot-script URL, which breaks the PXE -> iPXE -> iPXE loop
  uefi-http   UEFI HTTP boot (option 60 HTTPClient): gets a URL
  None        not a network-boot client: never answered
"""

from __future__ import annotations

from dataclasses import dataclass, field

from proxydhcp import arch as archtable
from proxydhcp.dhcp import options as opt
from proxydhcp.dhcp import pxe
from proxydhcp.dhcp.packet import MalformedPacket, Packet

LEGACY_PXE = "legacy-pxe"
IPXE = "ipxe"
UEFI_HTTP = "uefi-http"
FIRMWARE_KINDS = (LEGACY_PXE, IPXE, UEFI_HTTP)
NOT_PXE = "none"  # label for metrics/events when firmware is None


@dataclass(frozen=True)
class Client:
    mac: str
    message_type: int | None
    firmware: str | None
    arch_code: int | None              # first code of option 93 (or from option 60)
    arch_codes: tuple[int, ...] = ()
    uuid: str | None = None
    vendor_class: str = ""
    user_classes: tuple[str, ...] = ()
    ipxe_features: dict = field(default_factory=dict)
    ndi: pxe.NetworkInterfaceId | None = None
    boot_item: pxe.BootItem | None = None
    problems: tuple[str, ...] = ()     # options we could not read; the client is still classified

    @property
    def arch(self) -> archtable.Arch | None:
        return archtable.lookup(self.arch_code)

    @property
    def arch_label(self) -> str:
        return archtable.label(self.arch_code)

    @property
    def is_pxe(self) -> bool:
        return self.firmware is not None


_UNSET_UUIDS = ("00000000-0000-0000-0000-000000000000", "ffffffff-ffff-ffff-ffff-ffffffffffff")


def _text(value: bytes) -> str:
    return value.decode("latin-1")


def _arch_from_vendor_class(vc: bytes) -> int | None:
    # "PXEClient:Arch:00007:UNDI:003000"
    parts = vc.split(b":")
    if len(parts) >= 3 and parts[1] == b"Arch" and parts[2].isdigit():
        return int(parts[2])
    return None


def read_uuid(value: bytes) -> tuple[str | None, str | None]:
    """(UUID, None) from option 97; (None, None) when the firmware has no SMBIOS UUID and
    sends all zeros (or all ones); (None, why) when it cannot be read."""
    try:
        uuid = pxe.decode_uuid(value)
    except MalformedPacket as exc:
        return None, str(exc)
    return (None if uuid in _UNSET_UUIDS else uuid), None


def classify(pkt: Packet, ipxe_user_classes=("iPXE", "gPXE"), custom_user_class: str | None = None) -> Client:
    """Classify a request. Raises MalformedPacket only when a PXE client's architecture
    cannot be read at all; other unreadable options are listed in `problems`."""
    o = pkt.options
    problems: list[str] = []
    vc = o.get(opt.VENDOR_CLASS, b"")
    user_classes = tuple(_text(c) for c in pxe.decode_user_classes(o.get(opt.USER_CLASS, b"")))

    features: dict = {}
    if opt.IPXE_ENCAP in o:
        try:
            features = pxe.decode_ipxe_features(o[opt.IPXE_ENCAP])
        except MalformedPacket as exc:
            problems.append(str(exc))
            features = {"unreadable": 1}

    markers = set(ipxe_user_classes)
    if custom_user_class:
        markers.add(custom_user_class)
    is_ipxe = opt.IPXE_ENCAP in o or any(uc in markers for uc in user_classes)

    if vc.startswith(opt.VENDOR_HTTP):
        firmware = IPXE if is_ipxe else UEFI_HTTP
    elif vc.startswith(opt.VENDOR_PXE):
        firmware = IPXE if is_ipxe else LEGACY_PXE
    else:
        firmware = None

    codes: tuple[int, ...] = ()
    if opt.CLIENT_ARCH in o:
        try:
            codes = tuple(pxe.decode_arch_list(o[opt.CLIENT_ARCH]))
        except MalformedPacket as exc:
            problems.append(str(exc))
    arch_code = codes[0] if codes else _arch_from_vendor_class(vc)
    if arch_code is None and firmware is not None:
        if opt.CLIENT_ARCH in o:
            raise MalformedPacket(f"PXE client {pkt.mac}: unreadable option 93 and no arch in option 60")
        arch_code = 0  # PXE 2.0 ROMs send no option 93: x86 BIOS

    uuid = None
    if opt.CLIENT_UUID in o:
        uuid, problem = read_uuid(o[opt.CLIENT_UUID])
        if problem:
            problems.append(problem)

    ndi = None
    if opt.CLIENT_NDI in o:
        try:
            ndi = pxe.decode_ndi(o[opt.CLIENT_NDI])
        except MalformedPacket as exc:
            problems.append(str(exc))

    boot_item = None
    if opt.VENDOR_SPECIFIC in o and vc.startswith(opt.VENDOR_PXE):
        try:
            sub = pxe.decode_suboptions(o[opt.VENDOR_SPECIFIC], "option 43 (PXE)")
            if opt.PXE_BOOT_ITEM in sub:
                boot_item = pxe.decode_boot_item(sub[opt.PXE_BOOT_ITEM])
        except MalformedPacket as exc:
            problems.append(str(exc))

    return Client(mac=pkt.mac, message_type=pkt.message_type, firmware=firmware, arch_code=arch_code,
                  arch_codes=codes, uuid=uuid, vendor_class=_text(vc), user_classes=user_classes,
                  ipxe_features=features, ndi=ndi, boot_item=boot_item, problems=tuple(problems))
