"""Composition: builds the running daemon from a Config (DHCP, TFTP, HTTP services sharing
one event bus) as a Twisted MultiService. Owns wiring only, no protocol logic."""

from __future__ import annotations

import logging

from twisted.application.service import MultiService

from proxydhcp.config import Config
from proxydhcp.events import EventBus

log = logging.getLogger(__name__)


class StartupError(Exception):
    """The daemon cannot start; the message says what to fix, in one line."""


def build(cfg: Config, bus: EventBus | None = None) -> MultiService:
    bus = bus or EventBus()
    top = MultiService()
    top.bus = bus
    top.config = cfg

    from proxydhcp.net.dhcp_service import DHCPService
    DHCPService(cfg, bus).setServiceParent(top)
    return top
