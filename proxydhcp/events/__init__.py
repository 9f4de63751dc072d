"""The event bus: services publish what happened, observers subscribe.

Owns the event shape only. Publishers (the DHCP responder's service, the TFTP server, the
HTTP service, the hook listener) call `EventBus.emit`; observers (the event store, the
boot-session tracker, metrics, user hooks) subscribe. Emitting never blocks on disk or on
another process: an observer that needs I/O queues the event and does the work later.

An event is a plain dict with at least:
  kind  one of KINDS ("dhcp.reply", "dhcp.silence", "tftp.transfer", "http.fetch", "lease")
  time  float, seconds since the epoch
  mac   "aa:bb:cc:dd:ee:ff" when the event concerns one machine, else absent
"""

from __future__ import annotations

import logging
import time
from typing import Callable

log = logging.getLogger(__name__)

Event = dict
Observer = Callable[[Event], None]

DHCP_REPLY = "dhcp.reply"        # we answered a PXE client (fields: port, message, firmware, arch, file, ...)
DHCP_SILENCE = "dhcp.silence"    # we decided not to answer (fields: port, reason, ...)
TFTP_TRANSFER = "tftp.transfer"  # a TFTP transfer ended (fields: client, file, size, blksize, windowsize, duration, retransmits, outcome)
HTTP_FETCH = "http.fetch"        # an HTTP request was served (fields: mac, client_ip, path, fetch (script|file|firmware), code, bytes, duration, profile, group)
LEASE = "lease"                  # a DHCP server hook reported a lease event (fields: source, action, ip, hostname)
KINDS = (DHCP_REPLY, DHCP_SILENCE, TFTP_TRANSFER, HTTP_FETCH, LEASE)


class EventBus:
    def __init__(self) -> None:
        self._observers: list[Observer] = []

    def subscribe(self, observer: Observer) -> None:
        self._observers.append(observer)

    def unsubscribe(self, observer: Observer) -> None:
        self._observers.remove(observer)

    def emit(self, kind: str, **fields) -> Event:
        event: Event = {"kind": kind, "time": fields.pop("time", None) or time.time(), **fields}
        for observer in self._observers:
            try:
                observer(event)
            except Exception:  # an observer's bug must never stop a reply
                log.exception("event observer %r failed on %s", observer, kind)
        return event
