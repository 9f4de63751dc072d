"""The ProxyDHCP decision. Pure: (request, interface, config) -> Reply, or Silence with a
named reason. Never an address, never a NAK, never a word to a client that is not PXE.

Follows PROTOCOL.md 1-4: proxy OFFER on 67 (yiaddr 0; options 53, 54, 60, 97; BIOS gets
43.6=8 + file + siaddr; legacy UEFI gets a bare offer that sends it to 4011, per quirk);
ACK on 4011 to the request's source; iPXE gets its boot-script URL; UEFI HTTP gets a URL
and HTTPClient; relayed requests are answered to giaddr:67.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from urllib.parse import quote

from proxydhcp import client as clientmod
from proxydhcp.client import Client
from proxydhcp.config import Config, boot_file_name
from proxydhcp.config import script_url as config_script_url
from proxydhcp.dhcp import options as opt
from proxydhcp.dhcp import pxe
from proxydhcp.dhcp.packet import BOOTREPLY, BOOTREQUEST, BROADCAST_FLAG, MalformedPacket, Packet

PORT_DHCP = "67"
PORT_PROXY = "4011"

# Why we stayed silent: a bounded set (metric label `result`).
NOT_PXE = "not_pxe"
NOT_BOOTREQUEST = "not_bootrequest"
IGNORED_MESSAGE = "ignored_message"   # a message type we never answer on this port
NO_BOOT_FILE = "no_boot_file"         # PXE client whose arch has no firmware configured
MALFORMED = "malformed"
POLICY = "policy"                     # refused by allow/deny rules
RATE_LIMITED = "rate_limited"         # over the per-MAC or per-source reply rate (decided by the service)
UNKNOWN_MACHINE = "unknown_machine"   # dhcp.known_machines_only and no group matches the machine
BUSY = "busy"                         # a new machine while dhcp.max_sessions_in_progress are mid-boot (service)
BAD_FRAME = "bad_frame"               # 67: not a whole unfragmented IPv4/UDP datagram (service)
INTERNAL_ERROR = "internal_error"     # handling raised: logged with its traceback, the port stays open (service)
SILENCE_REASONS = (NOT_PXE, NOT_BOOTREQUEST, IGNORED_MESSAGE, NO_BOOT_FILE, MALFORMED, POLICY, RATE_LIMITED,
                   UNKNOWN_MACHINE, BUSY, BAD_FRAME, INTERNAL_ERROR)
REPLIED = "replied"


@dataclass(frozen=True)
class Interface:
    """Where a request arrived: our interface name and our IPv4 address on it."""
    name: str
    address: str
    index: int = 0


@dataclass
class Reply:
    packet: Packet
    dest: tuple[str, int]
    message: str          # "offer" | "ack"
    boot_file: str
    delay: float          # seconds to wait before sending (quirk)
    client: Client
    server: str


@dataclass
class Silence:
    reason: str
    detail: str = ""
    client: Client | None = None


@dataclass
class Settings:
    """Per-client settings after quirks: what this class of firmware needs."""
    redirect_4011: bool
    reply_delay_ms: int
    firmware: str | None = None
    notes: list = field(default_factory=list)


def settings_for(c: Client, cfg: Config) -> Settings:
    """Global settings, then each matching quirk in order (later quirks win)."""
    s = Settings(redirect_4011=cfg.dhcp.uefi_4011_redirect, reply_delay_ms=cfg.dhcp.reply_delay_ms)
    for i, q in enumerate(cfg.dhcp.quirks):
        m = q.match
        if "arch" in m and c.arch_code not in m["arch"]:
            continue
        if "vendor_class_prefix" in m and not c.vendor_class.startswith(m["vendor_class_prefix"]):
            continue
        if "mac_prefix" in m and not c.mac.startswith(m["mac_prefix"].lower()):
            continue
        if "firmware_kind" in m and c.firmware != m["firmware_kind"]:
            continue
        for key, value in q.set.items():
            setattr(s, key, value)
        s.notes.append(f"quirk {i}")
    return s


def firmware_file(c: Client, cfg: Config, s: Settings) -> str | None:
    """The iPXE build a legacy client should fetch, as the name the TFTP server knows it by."""
    value = s.firmware
    if not value:
        a = c.arch
        value = cfg.boot.firmware.get(a.firmware) if a is not None else None
    return _boot_file_name(value, cfg.tftp.root) if value else None


# Pure functions of their (string) arguments, asked the same question for every packet.
_boot_file_name = functools.lru_cache(maxsize=1024)(boot_file_name)


def server_address(iface: Interface, cfg: Config) -> str:
    return cfg.dhcp.server_address or iface.address


def script_url(c: Client, server: str, cfg: Config) -> str:
    return config_script_url(server, cfg.http.port, cfg.boot.script_path, c.mac, c.arch_code, c.uuid)


def firmware_url(name: str, server: str, cfg: Config) -> str:
    return f"http://{server}:{cfg.http.port}/firmware/{quote(os.path.basename(name))}"


def _base_reply(req: Packet, message: int, server: str, vendor: bytes) -> Packet:
    rep = Packet(op=BOOTREPLY, htype=req.htype, hlen=req.hlen, xid=req.xid, flags=req.flags,
                 giaddr=req.giaddr, chaddr=req.chaddr, siaddr=server)
    o = rep.options
    o[opt.MESSAGE_TYPE] = bytes((message,))
    o[opt.SERVER_ID] = _inet(server)
    o[opt.VENDOR_CLASS] = vendor
    uuid = req.options.get(opt.CLIENT_UUID)
    if uuid is not None:
        o[opt.CLIENT_UUID] = uuid  # echoed byte for byte
    return rep


@functools.lru_cache(maxsize=256)
def _inet(address: str) -> bytes:
    return bytes(int(x) for x in address.split("."))


def _set_boot_file(rep: Packet, name: str) -> None:
    raw = name.encode()
    if len(raw) <= 127:
        rep.file = raw
    else:
        rep.options[opt.BOOTFILE_NAME] = raw  # too long for the header field


def _boot_target(c: Client, cfg: Config, s: Settings, server: str) -> str | Silence:
    if c.firmware == clientmod.IPXE:
        return script_url(c, server, cfg)
    name = firmware_file(c, cfg, s)
    if name is None:
        return Silence(NO_BOOT_FILE, f"no boot.firmware entry for arch {c.arch_label} "
                                     f"(key {c.arch.firmware if c.arch else '?'})", c)
    if c.firmware == clientmod.UEFI_HTTP:
        return firmware_url(name, server, cfg)
    return name


# Selectors that name a boot stage rather than a machine: the same machine asks first as
# legacy-pxe, then as ipxe with user class iPXE; "known" must not change between the two.
STAGE_SELECTORS = frozenset(("firmware", "user_class"))


def known_group(cfg: Config, mac: str, uuid=None, arch=None, interface=None, ip=None, vendor_class=None):
    """The first group (policy `groups`) whose machine selectors (all but firmware and
    user_class) this machine matches, or None: who dhcp.known_machines_only answers. `ip` is
    an address on the machine's subnet (a DISCOVER has none of its own yet: ciaddr, else the
    relay's giaddr, else our interface address), for subnet selectors."""
    pol = cfg.policy
    if pol is None:
        from proxydhcp import policy
        pol = cfg.policy = policy.load(cfg)
    key = (pol, mac, uuid, arch, interface, ip, vendor_class)   # the same machine asks again and again
    hit = _known.get(key, _known)
    if hit is not _known:
        return hit
    from proxydhcp.policy import groups as groupmod
    m = groupmod.Machine(mac=mac, ip=ip, uuid=uuid, arch=arch, interface=interface, vendor_class=vendor_class)
    found = next((g for g in pol.groups if groupmod.matches(g, m, ignore=STAGE_SELECTORS)), None)
    if len(_known) >= 4096:
        _known.clear()
    _known[key] = found
    return found


_known: dict = {}   # known_group's answers, keyed by the policy object (a reload makes a new one)


def destination(port: str, source: tuple[str, int], giaddr: str, ciaddr: str) -> tuple[str, int]:
    """Where a reply goes (RFC 2131 4.1; PXE: 4011 answers go back where they came from)."""
    if port == PORT_PROXY and source[0] != "0.0.0.0":
        return source
    if giaddr != "0.0.0.0":
        return (giaddr, 67)
    if ciaddr != "0.0.0.0":
        return (ciaddr, 68)
    return ("255.255.255.255", 68)


def respond(req: Packet, port: str, iface: Interface, source: tuple[str, int], cfg: Config,
            allowed=None) -> Reply | Silence:
    """Decide what to answer a request that arrived on `port` ("67" or "4011") through
    `iface` from `source` (ip, udp port). `allowed(client) -> str | None` may refuse a client
    (returns why)."""
    if req.op != BOOTREQUEST:
        return Silence(NOT_BOOTREQUEST, f"op {req.op}")
    mtype = req.message_type
    try:
        c = clientmod.classify(req, cfg.dhcp.ipxe_user_classes, cfg.dhcp.custom_user_class)
    except MalformedPacket as exc:
        return Silence(MALFORMED, str(exc))
    if not c.is_pxe:
        return Silence(NOT_PXE, f"vendor class {c.vendor_class[:32]!r}", c)

    if port == PORT_DHCP:
        if mtype == opt.DISCOVER:
            message = opt.OFFER
        elif mtype in (opt.REQUEST, opt.INFORM) and c.boot_item is not None:
            message = opt.ACK  # boot-server discovery broadcast to 67
        else:
            return Silence(IGNORED_MESSAGE, f"{opt.message_name(mtype)} on 67", c)
    else:
        if mtype not in (opt.REQUEST, opt.INFORM):
            return Silence(IGNORED_MESSAGE, f"{opt.message_name(mtype)} on 4011", c)
        message = opt.ACK

    if allowed is not None:
        why = allowed(c)
        if why:
            return Silence(POLICY, why, c)
    if cfg.dhcp.known_machines_only:
        net = req.ciaddr if req.ciaddr != "0.0.0.0" else req.giaddr if req.giaddr != "0.0.0.0" else iface.address
        if known_group(cfg, c.mac, c.uuid, c.arch_code, iface.name, net, c.vendor_class) is None:
            return Silence(UNKNOWN_MACHINE, f"no group matches {c.mac} (dhcp.known_machines_only)", c)

    s = settings_for(c, cfg)
    server = server_address(iface, cfg)
    target = _boot_target(c, cfg, s, server)
    if isinstance(target, Silence):
        return target

    vendor = opt.VENDOR_HTTP if c.firmware == clientmod.UEFI_HTTP else opt.VENDOR_PXE
    rep = _base_reply(req, message, server, vendor)
    boot_file = target

    if message == opt.OFFER:
        uefi_redirect = (c.firmware == clientmod.LEGACY_PXE and c.arch is not None
                         and "uefi" in c.arch.firmware and s.redirect_4011)
        if uefi_redirect:
            boot_file = ""  # no 43, no file: the firmware asks us on 4011
        else:
            _set_boot_file(rep, target)
            if c.firmware != clientmod.UEFI_HTTP:
                rep.options[opt.VENDOR_SPECIFIC] = pxe.pxe_vendor_options(True)
    else:
        rep.ciaddr = req.ciaddr
        rep.sname = server.encode()
        _set_boot_file(rep, target)
        if c.boot_item is not None:
            rep.options[opt.VENDOR_SPECIFIC] = pxe.pxe_vendor_options(False, c.boot_item)

    dest = destination(port, source, req.giaddr, req.ciaddr)
    to_relay = req.giaddr != "0.0.0.0" and not (port == PORT_PROXY and source[0] != "0.0.0.0")
    if to_relay and req.ciaddr == "0.0.0.0":
        rep.flags |= BROADCAST_FLAG  # the relay cannot unicast to a client without an address
    return Reply(rep, dest, opt.message_name(message), boot_file, s.reply_delay_ms / 1000.0, c, server)


def explain(cfg: Config, mac: str, arch: int | None = None, vendor_class: str | None = None,
            user_classes=(), firmware: str | None = None, server: str = "SERVER") -> list[str]:
    """`proxydhcp explain`: what respond() answers a machine of this description on 67 and
    then on 4011, as report lines. The request is built the way such firmware sends it
    (option 60 PXEClient/HTTPClient:Arch:..., 93, 77), unless vendor_class is given."""
    import ipaddress
    import struct

    from proxydhcp import arch as archtable
    try:
        ipaddress.IPv4Address(server)
        address = server
    except ValueError:
        address = "192.0.2.1"           # stands for `server` in what the lines show
    http = firmware == clientmod.UEFI_HTTP or (arch is not None and getattr(archtable.lookup(arch), "http", False))
    if vendor_class is None:
        vendor_class = f"{'HTTPClient' if http else 'PXEClient'}:Arch:{arch or 0:05d}:UNDI:003000"
    classes = [c.encode() for c in user_classes or ()]
    if firmware == clientmod.IPXE and not classes:
        classes = [cfg.dhcp.custom_user_class.encode() if cfg.dhcp.custom_user_class else b"iPXE"]
    o = {opt.MESSAGE_TYPE: bytes((opt.DISCOVER,)), opt.VENDOR_CLASS: vendor_class.encode()}
    if arch is not None:
        o[opt.CLIENT_ARCH] = struct.pack("!H", arch)
    if classes:
        o[opt.USER_CLASS] = b"".join(bytes((len(c),)) + c for c in classes)   # RFC 3004
    req = Packet(op=BOOTREQUEST, chaddr=bytes.fromhex(mac.replace(":", "").replace("-", "")).ljust(16, b"\0"),
                 flags=BROADCAST_FLAG, options=o)
    iface = Interface("-", address)
    out = []
    for port, source in ((PORT_DHCP, ("0.0.0.0", 68)), (PORT_PROXY, ("192.0.2.200", 4011))):
        if port == PORT_PROXY:
            req.options[opt.MESSAGE_TYPE] = bytes((opt.REQUEST,))
            req.ciaddr = source[0]
        r = respond(req, port, iface, source, cfg)
        if isinstance(r, Silence):
            out.append(f"dhcp {port}: no reply ({r.reason}: {r.detail})")
            if port == PORT_DHCP:
                break
            continue
        c = r.client
        what = f"{r.message.upper()} (yiaddr 0.0.0.0, 60 {r.packet.options[opt.VENDOR_CLASS].decode()})"
        if r.boot_file:
            shown = r.boot_file.replace(address, server)
            out.append(f"dhcp {port}: {what}: boot file {shown} ({c.firmware}, arch {c.arch_label})")
        else:
            out.append(f"dhcp {port}: {what} with no boot file and no option 43: {c.firmware} firmware of "
                       f"arch {c.arch_label} asks again on {PORT_PROXY} (dhcp.uefi_4011_redirect / quirk)")
        if port == PORT_DHCP and c.firmware == clientmod.UEFI_HTTP:
            break                       # UEFI HTTP boot has no 4011 step
    return out
