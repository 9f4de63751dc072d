"""Composition: builds the running daemon from a Config (DHCP, TFTP, HTTP services sharing
one event bus) as a Twisted MultiService. Owns wiring only, no protocol logic."""

from __future__ import annotations

import logging

from twisted.application.service import MultiService

from proxydhcp.config import LiveConfig
from proxydhcp.events import EventBus

log = logging.getLogger(__name__)


class StartupError(Exception):
    """The daemon cannot start; the message says what to fix, in one line."""


def build(live: LiveConfig, bus: EventBus | None = None) -> MultiService:
    """Each service takes (live, bus): it reads live.current per request and emits on bus.
    startService raises StartupError (one line naming the fix) when it cannot run."""
    bus = bus or EventBus()
    top = MultiService()
    top.bus = bus
    top.live = live
    cfg = live.current

    if cfg.events.enabled:  # first: it subscribes before anything emits
        from proxydhcp.events.service import EventsService
        EventsService(live, bus).setServiceParent(top)
    from proxydhcp.net.dhcp_service import DHCPService
    DHCPService(live, bus).setServiceParent(top)
    if cfg.tftp.enabled:
        from proxydhcp.tftp.server import TFTPService
        TFTPService(live, bus).setServiceParent(top)
    if cfg.http.enabled:
        from proxydhcp.web.server import HTTPService
        HTTPService(live, bus).setServiceParent(top)
    return top
