#!/usr/bin/env python3
"""Per-packet Python cost of the ProxyDHCP path, without sockets: replays N EDK2-shaped
DISCOVERs (via a relay, one new MAC each, as perfdhcp sends them) or 4011 REQUESTs through
DHCPService.handle() -- decode, classify, decide, encode, IPv4/UDP framing, metrics, the
dhcp.reply event -- with and without the event store and boot-session tracker on the bus
(as `serve` wires them). Prints CPU microseconds per packet: the daemon's process (all
threads), its reactor thread alone, and the event store's writer process (until it has
written everything); --profile adds a cProfile table.
usage: .venv/bin/python bench/dhcp_replay.py [--n 20000] [--port 67|4011] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import os
import pstats
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from proxydhcp import config, metrics  # noqa: E402
from proxydhcp.dhcp import options as opt  # noqa: E402
from proxydhcp.events import EventBus  # noqa: E402
from proxydhcp.net import frames  # noqa: E402
from proxydhcp.net.dhcp_service import DHCPService  # noqa: E402
from proxydhcp.responder import PORT_DHCP, PORT_PROXY, Interface  # noqa: E402
from tests.dhcp_clients import request_bytes  # noqa: E402


def _dhcp_limits_off() -> str:
    """Every per-sender limit and session cap off (the ones this version knows): the replay
    is one relay with 20,000 new machines."""
    keys = ["rate_per_mac", "rate_per_source", "max_sessions_in_progress", "max_sessions_per_source"]
    known = [k for k in keys if hasattr(config.parse("").dhcp, k)]
    return "dhcp: {" + ", ".join(f"{k}: 0" for k in known) + "}\n"


class FramingSender:
    """Does what the real senders do before the system call."""

    def send(self, payload, server, dest, *rest):
        frames.build_udp(server, 67, dest[0], dest[1], payload)


def _replied(port: str) -> float:
    return sum(v for m in metrics.DHCP_PACKETS.collect() for sm in m.samples
               if sm.name.endswith("_total") and sm.labels.get("port") == port
               and sm.labels.get("result") == "replied" for v in [sm.value])


REACTOR_US: dict = {}   # events on/off -> CPU us per packet on the calling (reactor) thread
WRITER_US: dict = {}    # events on/off -> CPU us per packet in the store's writer process


def replay(port: str, n: int, events: bool, profile: bool) -> float:
    from twisted.internet import reactor
    state = tempfile.mkdtemp(prefix="dhcp-replay-")
    try:
        live = config.LiveConfig(config.parse(
            f"tftp: {{enabled: false}}\nhttp: {{enabled: false}}\nstate: {{dir: {state}}}\n"
            + _dhcp_limits_off()))
        bus = EventBus()
        ev = None
        if events:
            from proxydhcp.events.service import EventsService
            ev = EventsService(live, bus, reactor=reactor)
            ev.startService()
        svc = DHCPService(live, bus, reactor=reactor, interfaces=lambda: {})
        mac = lambda i: "52:54:%02x:%02x:%02x:%02x" % (port == PORT_DHCP, i >> 16 & 255, i >> 8 & 255, i & 255)  # noqa: E731
        if port == PORT_DHCP:
            reqs = [request_bytes("edk2", mac=mac(i), xid=i + 1, giaddr="10.78.0.3") for i in range(n)]
        else:
            reqs = [request_bytes("edk2", mac=mac(i), xid=i + 1, message=opt.REQUEST, ciaddr="10.78.0.3")
                    for i in range(n)]
        iface, tx = Interface("eth0", "10.78.0.2", 2), FramingSender()
        before = _replied(port)
        prof = cProfile.Profile() if profile else None
        t0 = time.process_time()   # CPU of this process (all threads): other programs' load does not count
        r0 = time.thread_time()    # CPU of this thread alone: what the reactor thread pays
        c0 = os.times()            # children: the event store's writer process, once reaped
        if prof:
            prof.enable()
        for i, data in enumerate(reqs):
            svc.handle(data, port, iface, ("10.78.0.3", 67), tx, source_key=b"relay")
            if i % 200 == 199:
                reactor.iterate(0)   # timers (session flush) run as they would between reads
        if prof:
            prof.disable()
        if ev is not None:
            ev.stopService()   # writes the changed sessions and waits for the writer thread: its work counts
        elapsed = time.process_time() - t0
        REACTOR_US[events] = (time.thread_time() - r0) / n * 1e6
        c1 = os.times()
        WRITER_US[events] = (c1.children_user + c1.children_system - c0.children_user - c0.children_system) / n * 1e6
        if _replied(port) - before != n:
            raise SystemExit(f"only {_replied(port) - before:.0f} of {n} requests were answered: not a fair replay")
        if prof:
            pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        return elapsed / n * 1e6
    finally:
        shutil.rmtree(state, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--port", choices=("67", "4011"), default="67")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, stream=open(os.devnull, "w"))  # as `serve`: INFO
    port = PORT_DHCP if args.port == "67" else PORT_PROXY
    bare = replay(port, args.n, False, args.profile)
    full = replay(port, args.n, True, args.profile)
    print(f"port {args.port}, {args.n} requests, one new MAC each:")
    print(f"  DHCP path alone (events off)            {bare:6.1f} us CPU/packet "
          f"({REACTOR_US[False]:.1f} on the reactor thread)")
    print(f"  with the event store and boot sessions  {full:6.1f} us CPU/packet "
          f"({REACTOR_US[True]:.1f} on the reactor thread), and {WRITER_US[True]:.1f} us in the "
          f"store's writer process")
    return 0


if __name__ == "__main__":
    sys.exit(main())
