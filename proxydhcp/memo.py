"""Replies remembered by request shape. Pure: bytes in, bytes out.

When a rack boots, its machines send the same request bytes but for who they are: the
transaction id (xid), secs, the hardware address (chaddr), the client's address (ciaddr),
the client identifier (option 61, which the decision never reads and no reply carries)
and the SMBIOS UUID (option 97). Where responder.respond's decision cannot depend on who
asks, the reply to one of them, with those fields put in, is the reply to every other one;
the memo keeps it, keyed by the request with those fields blanked (its *shape*), and the
next machine of the same shape costs a dictionary lookup and a few byte copies instead of
decode, classify, decide and encode.

What the decision may read about the asker, and so when a reply is kept
(`ReplyMemo.use`, `ReplyMemo.keepable`):
  - the MAC: allow/deny rules, known_machines_only groups and `mac_prefix` quirks read it,
    so nothing is kept while any of them is configured;
  - the MAC and UUID: an iPXE client's boot-script URL carries both, so iPXE replies are
    never kept;
  - ciaddr: an ACK copies it, a relayed OFFER sets the broadcast flag when it is 0.0.0.0,
    and a request that is not relayed is answered to it: whether it is 0.0.0.0 is part of
    the shape, and responder.destination tells each request where its reply goes;
  - the source address of a 4011 request (its answer goes back there): whether it is
    0.0.0.0 is part of the shape.
Anything else in the request is in the shape as it came. A request with option overload
(52), option 61 or 97 more than once or options that do not parse has no shape: it takes the
full path, whose verdict on it stands. Silences are never kept. tests/unit/test_memo.py checks,
request pair by request pair, that a remembered reply is byte for byte what the full path
answers.
"""

from __future__ import annotations

from proxydhcp import client as clientmod
from proxydhcp.dhcp.options import CLIENT_ID, CLIENT_UUID, OVERLOAD
from proxydhcp.dhcp.packet import HEADER_LEN, MAGIC_COOKIE, MalformedPacket, option_spans

OPTIONS = HEADER_LEN + len(MAGIC_COOKIE)
XID, CHADDR, CIADDR = slice(4, 8), slice(28, 44), slice(12, 16)
MAX_ENTRIES = 512             # shapes kept; all forgotten at once when full (a storm has a few)


def shape(data: bytes, port: str, source_unset: bool):
    """(key, uuid offset, uuid length) of a request, or None when it has no shape (see the
    module's docstring). The offset is -1 when there is no option 97."""
    n = len(data)
    if n < OPTIONS or data[0] != 1 or data[HEADER_LEN:OPTIONS] != MAGIC_COOKIE:
        return None
    try:
        spans = option_spans(data, OPTIONS, n)
    except MalformedPacket:
        return None
    u, ulen, c, clen = -1, 0, -1, 0
    for code, i, j in spans:
        if code == CLIENT_UUID:
            if u >= 0:
                return None
            u, ulen = i, j - i
        elif code == CLIENT_ID:
            if c >= 0:
                return None
            c, clen = i, j - i
        elif code == OVERLOAD:
            return None
    unset = b"\x01" if data[12:16] == b"\0\0\0\0" else b"\x00"
    key = [port.encode(), b"\x01" if source_unset else b"\x00", unset, data[:4], data[10:12], data[16:28]]
    at = 44
    for start, length in sorted(((u, ulen), (c, clen))):   # the values of 61 and 97 left out
        if start >= 0:
            key.append(data[at:start])
            at = start + length
    key.append(data[at:])
    return b"".join(key), u, ulen


class Entry:
    """One remembered reply: its bytes and what is sent, logged and recorded with it."""

    __slots__ = ("template", "uuid_at", "copy_ciaddr", "port", "request", "reply", "boot_file", "delay",
                 "server", "firmware", "arch_code", "vendor_class", "user_classes", "giaddr")

    def __init__(self, reply, req, data: bytes, payload: bytes, port: str) -> None:
        c = reply.client
        self.template, self.port = payload, port
        self.request = req.message_type
        self.reply, self.boot_file, self.delay, self.server = reply.message, reply.boot_file, reply.delay, reply.server
        self.firmware, self.arch_code = c.firmware, c.arch_code
        self.vendor_class, self.user_classes = c.vendor_class, c.user_classes
        self.giaddr = req.giaddr
        self.copy_ciaddr = data[CIADDR] != b"\0\0\0\0" and payload[CIADDR] == data[CIADDR]
        self.uuid_at = _option_value_at(payload, CLIENT_UUID) if CLIENT_UUID in req.options else -1



def _option_value_at(payload: bytes, code: int) -> int:
    for found, i, _j in option_spans(payload, OPTIONS, len(payload)):
        if found == code:
            return i
    raise ValueError(f"option {code} is not in the reply")


class ReplyMemo:
    """Shape -> Entry for one config (a reload starts it afresh)."""

    def __init__(self) -> None:
        self.entries: dict = {}
        self.cfg = None
        self.usable = False
        self.hits = 0

    def use(self, cfg, rules_empty: bool) -> bool:
        """Whether replies may be remembered under this config: none of its decisions reads
        the MAC (no allow/deny rules, known_machines_only or mac_prefix quirk). Decided once
        per config; a new config forgets what the old one answered."""
        if cfg is not self.cfg:
            self.entries.clear()
            self.cfg = cfg
            self.usable = (rules_empty and not cfg.dhcp.known_machines_only
                           and not any("mac_prefix" in q.match for q in cfg.dhcp.quirks))
        return self.usable

    def get(self, key):
        return self.entries.get(key)

    @staticmethod
    def keepable(reply) -> bool:
        """An iPXE client's script URL carries its MAC and UUID: its replies are never kept."""
        return reply.client.firmware != clientmod.IPXE

    def put(self, key, entry: Entry) -> None:
        if len(self.entries) >= MAX_ENTRIES:
            self.entries.clear()
        self.entries[key] = entry


def patch(entry: Entry, data: bytes, u: int, ulen: int) -> bytes:
    """The remembered reply for this request: its xid, chaddr, ciaddr (when the reply
    carries it) and UUID put in."""
    out = bytearray(entry.template)
    out[XID] = data[XID]
    out[CHADDR] = data[CHADDR]
    if entry.copy_ciaddr:
        out[CIADDR] = data[CIADDR]
    if u >= 0:
        at = entry.uuid_at
        out[at:at + ulen] = data[u:u + ulen]
    return bytes(out)


def read_uuid(data: bytes, u: int, ulen: int) -> str | None:
    """The UUID of a request of a remembered shape (as classify reads it)."""
    return clientmod.read_uuid(data[u:u + ulen])[0] if u >= 0 else None
