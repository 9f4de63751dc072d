"""Intake of DHCP-server hook events: the unix socket the hooks talk to, and their spool.

Owns the daemon side of the hook protocol (hooks/proxydhcp_hook.py is the other side):
one JSON event per line in, one answer per line out, in order: "ok" once the event is
committed to the store, "reject <why>" for an event we will never accept, "retry <why>"
when it could not be stored. Only after the commit is the event emitted on the bus (so the
session tracker and metrics see it) and a spool file deleted. The reactor never waits on
the disk: the store's results thread calls back through reactor.callFromThread.
Must not parse DHCP servers' arguments (the hooks do that) nor decide sessions.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re

from twisted.internet import protocol
from twisted.protocols.basic import LineOnlyReceiver

from proxydhcp import metrics
from proxydhcp.events import LEASE, TFTP_TRANSFER
from proxydhcp.events.store import FAILED, STORED

log = logging.getLogger(__name__)

SOURCES = ("dnsmasq", "isc-dhcpd", "kea")
LEASE_ACTIONS = ("commit", "renew", "release", "expire", "decline", "recover")
TFTP_ACTION = "tftp"
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_UID = re.compile(r"^[0-9A-Za-z_-]{8,64}$")
MAX_LINE = 16384
_STR_FIELDS = ("hostname", "iface", "client_id", "vendor_class", "relay", "tags", "domain",
               "server_action", "query", "state", "file")


class BadEvent(Exception):
    pass


def _ipv4(value, name: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except (ValueError, TypeError):
        raise BadEvent(f"{name}: not an IPv4 address: {value!r}") from None


def validate(obj) -> dict:
    """A hook's JSON object -> the event dict we store and emit (kind, time, uid, ...)."""
    if not isinstance(obj, dict):
        raise BadEvent("not a JSON object")
    if obj.get("v") != 1:
        raise BadEvent(f"unknown event format version {obj.get('v')!r} (this daemon reads 1)")
    uid = obj.get("uid")
    if not isinstance(uid, str) or not _UID.match(uid):
        raise BadEvent("uid: expected 8-64 characters [0-9A-Za-z_-]")
    t = obj.get("time")
    if not isinstance(t, (int, float)) or isinstance(t, bool) or t <= 0:
        raise BadEvent("time: expected seconds since the epoch")
    source = obj.get("source")
    if source not in SOURCES:
        raise BadEvent(f"source: one of {', '.join(SOURCES)}, got {source!r}")
    kind = obj.get("kind")
    ev = {"kind": kind, "time": float(t), "uid": uid, "source": source}
    for name in _STR_FIELDS:
        value = obj.get(name)
        if value is not None:
            if not isinstance(value, str):
                raise BadEvent(f"{name}: expected a string")
            ev[name] = value[:512]
    if kind == LEASE:
        action = obj.get("action")
        if action not in LEASE_ACTIONS:
            raise BadEvent(f"action: one of {', '.join(LEASE_ACTIONS)}, got {action!r}")
        mac = obj.get("mac")
        if not isinstance(mac, str) or not _MAC.match(mac):
            raise BadEvent(f"mac: expected aa:bb:cc:dd:ee:ff, got {mac!r}")
        ev.update(action=action, mac=mac, ip=_ipv4(obj.get("ip"), "ip"))
        for name in ("lease_time", "expires"):
            value = obj.get(name)
            if value is not None:
                if not isinstance(value, int) or isinstance(value, bool):
                    raise BadEvent(f"{name}: expected an integer")
                ev[name] = value
        uc = obj.get("user_classes")
        if uc is not None:
            if not isinstance(uc, list) or not all(isinstance(u, str) for u in uc):
                raise BadEvent("user_classes: expected a list of strings")
            ev["user_classes"] = [u[:256] for u in uc[:16]]
    elif kind == TFTP_TRANSFER:
        ev.update(action=TFTP_ACTION, client_ip=_ipv4(obj.get("client_ip"), "client_ip"),
                  outcome="ok")
        if not ev.get("file"):
            raise BadEvent("file: missing")
        size = obj.get("size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool):
                raise BadEvent("size: expected an integer")
            ev["size"] = size
    else:
        raise BadEvent(f"kind: {LEASE} or {TFTP_TRANSFER}, got {kind!r}")
    return ev


class HookConnection(LineOnlyReceiver):
    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE

    def connectionMade(self) -> None:
        self.answers: list = []   # [answer or None while the commit is pending], in arrival order

    def lineReceived(self, line: bytes) -> None:
        slot = [None]
        self.answers.append(slot)
        try:
            ev = validate(json.loads(line))
        except (BadEvent, ValueError) as exc:
            log.warning("hook event rejected: %s", exc)
            slot[0] = f"reject {exc}"
            self._flush()
            return

        def done(result: str) -> None:
            slot[0] = "retry the store could not write the event" if result == FAILED else "ok"
            self._flush()

        self.factory.listener.accept(ev, done)

    def lineLengthExceeded(self, line):
        self.sendLine(b"reject line too long")
        self.transport.loseConnection()

    def _flush(self) -> None:
        while self.answers and self.answers[0][0] is not None:
            answer = self.answers.pop(0)[0]
            if self.transport is not None and self.connected:
                self.sendLine(answer.encode())


class HookListener:
    """The socket and the spool. accept(ev, done) stores durably, then emits on the bus."""

    def __init__(self, store, bus, reactor, socket_path: str, spool_dir: str) -> None:
        self.store = store
        self.bus = bus
        self.reactor = reactor
        self.socket_path = socket_path
        self.spool_dir = spool_dir
        self.port = None
        self._in_flight: set[str] = set()
        self._counters: dict = {}
        self.accepted = 0

    def start(self) -> None:
        os.makedirs(os.path.dirname(self.socket_path) or ".", exist_ok=True)
        os.makedirs(self.spool_dir, exist_ok=True)
        # hooks run as the DHCP server's user: they may drop files but not read others'
        os.chmod(self.spool_dir, 0o1733)
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)   # a socket left by a killed daemon
        factory = protocol.ServerFactory.forProtocol(HookConnection)
        factory.listener = self
        self.port = self.reactor.listenUNIX(self.socket_path, factory, mode=0o666)
        self.intake_spool()

    def stop(self):
        if self.port is not None:
            d = self.port.stopListening()
            self.port = None
            if d is not None:
                # Twisted unlinks the socket file on close; after a privilege drop the state dir
                # may no longer let us: say so in one line rather than an unhandled error.
                d.addErrback(lambda f: log.warning("could not remove the hook socket %s: %s",
                                                   self.socket_path, f.getErrorMessage()))
            return d
        return None

    def _count(self, ev: dict) -> None:
        key = (ev["source"], ev["action"])
        child = self._counters.get(key)
        if child is None:
            child = self._counters[key] = metrics.LEASE_EVENTS.labels(*key)
        child.inc()

    def accept(self, ev: dict, done=None) -> None:
        """Store ev durably; then emit it and call done(ok) on the reactor thread."""
        def committed(result: str) -> None:
            self.reactor.callFromThread(self._committed, ev, result, done)
        self.store.record_durable(ev, committed)

    def _committed(self, ev: dict, result: str, done) -> None:
        if result == STORED:   # a duplicate (socket, then spool) was seen once already
            self.accepted += 1
            self._count(ev)
            fields = {k: v for k, v in ev.items() if k != "kind"}
            self.bus.emit(ev["kind"], **fields)
        if done is not None:
            done(result)

    def intake_spool(self) -> int:
        """Take in the events hooks spooled while we were away; returns how many files."""
        try:
            names = sorted(n for n in os.listdir(self.spool_dir)
                           if n.endswith(".json") and not n.startswith("."))
        except OSError as exc:
            log.error("cannot read the hook spool %s: %s", self.spool_dir, exc)
            return 0
        taken = 0
        for name in names:
            path = os.path.join(self.spool_dir, name)
            if path in self._in_flight:
                continue
            try:
                with open(path, "rb") as fh:
                    ev = validate(json.loads(fh.read()))
            except (OSError, ValueError, BadEvent) as exc:
                log.warning("hook spool file %s rejected: %s (kept as .rejected)", path, exc)
                try:
                    os.rename(path, path + ".rejected")
                except OSError:
                    pass
                continue
            self._in_flight.add(path)
            taken += 1

            def done(result: str, path=path) -> None:
                self._in_flight.discard(path)
                if result != FAILED:
                    try:
                        os.unlink(path)
                    except OSError as exc:
                        log.warning("cannot remove spool file %s: %s", path, exc)
            self.accept(ev, done)
        if taken:
            log.info("taking in %d spooled hook event(s) from %s", taken, self.spool_dir)
        return taken
