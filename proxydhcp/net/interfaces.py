"""Our interfaces and their IPv4 addresses (pyroute2), and a netlink watch that tells when
they change. The watch is only a trigger: on any link/address event the table is re-read."""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass

from pyroute2 import IPRoute

log = logging.getLogger(__name__)

IFF_LOOPBACK = 0x8
IFF_UP = 0x1
RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10


@dataclass(frozen=True)
class InterfaceAddress:
    name: str
    index: int
    address: str      # primary IPv4 address
    prefixlen: int
    mtu: int
    up: bool


def read_interfaces() -> dict[str, InterfaceAddress]:
    """Non-loopback interfaces with an IPv4 address, by name (first address wins)."""
    out: dict[str, InterfaceAddress] = {}
    with IPRoute() as ipr:
        links = {l["index"]: l for l in ipr.get_links()}
        for a in ipr.get_addr(family=socket.AF_INET):
            link = links.get(a["index"])
            if link is None or link["flags"] & IFF_LOOPBACK:
                continue
            name = link.get("IFLA_IFNAME")
            if name in out:
                continue
            out[name] = InterfaceAddress(name, a["index"], a.get("IFA_ADDRESS"), a["prefixlen"],
                                         link.get("IFLA_MTU") or 1500, bool(link["flags"] & IFF_UP))
    return out


class NetlinkWatch:
    """A raw rtnetlink socket subscribed to link and IPv4 address events, for a reactor."""

    def __init__(self, on_change) -> None:
        self.on_change = on_change
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, socket.NETLINK_ROUTE)
        self.sock.bind((0, RTMGRP_LINK | RTMGRP_IPV4_IFADDR))

    def fileno(self) -> int:
        return self.sock.fileno()

    def doRead(self) -> None:
        changed = False
        while True:
            try:
                self.sock.recv(65536)
                changed = True
            except BlockingIOError:
                break
            except OSError as exc:  # ENOBUFS: events lost, re-read anyway
                log.warning("netlink: %s; re-reading interfaces", exc)
                changed = True
                break
        if changed:
            self.on_change()

    def logPrefix(self) -> str:
        return "netlink"

    def connectionLost(self, reason) -> None:
        self.sock.close()
