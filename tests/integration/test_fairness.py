"""Fairness under floods, through the real DHCP service's hot path (DHCPService.handle: the
responder, access rules, per-MAC and per-source rate limits, the cap on sessions in
progress, the counters) with a simulated clock, so that hundreds of packets per second for
many seconds run in a moment and the outcome does not depend on the machine's speed.

Shown: one MAC in a boot loop and a flood of invented MACs from one sender cannot starve
other clients; machines already mid-boot keep being answered while new ones get "busy".
"""

import random

import pytest

from proxydhcp import config, metrics
from proxydhcp.dhcp import options as opt
from proxydhcp.dhcp.packet import decode
from proxydhcp.events import HTTP_FETCH, EventBus
from proxydhcp.net import dhcp_service
from proxydhcp.responder import BUSY, PORT_DHCP, PORT_PROXY, RATE_LIMITED, Interface
from tests.dhcp_clients import request_bytes

IFACE = Interface("eth0", "10.77.0.2", 2)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def monotonic(self):
        return self.now

    def perf_counter(self):
        return self.now

    def time(self):
        return self.now


class Tx:
    def __init__(self):
        self.to = []   # chaddr MAC of each reply sent

    def send(self, payload, server, dest, *rest):
        self.to.append(decode(payload).chaddr[:6].hex(":"))


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(dhcp_service, "time", c)
    return c


def service(text=""):
    bus = EventBus()
    return dhcp_service.DHCPService(config.LiveConfig(config.parse(text)), bus, interfaces=lambda: {}), bus


def counted(result, port="67", message="discover"):
    return metrics.REGISTRY.get_sample_value("proxydhcp_dhcp_packets_total",
                                             {"port": port, "message": message, "result": result}) or 0


def mac_bytes(mac):
    return bytes.fromhex(mac.replace(":", ""))


def discover(svc, tx, mac, source_key=None, kind="legacy-bios"):
    svc.handle(request_bytes(kind, mac=mac, uuid=None), PORT_DHCP, IFACE, ("0.0.0.0", 68), tx,
               source_key=source_key or mac_bytes(mac))


def test_a_boot_loop_and_a_flood_from_one_sender_do_not_starve_the_others(clock):
    """For 10 s: one MAC loops at 300 DISCOVERs/s, one sender floods 2000 DISCOVERs/s with
    a new MAC each, and 200 honest machines each send a DISCOVER once a second (their
    firmware retrying). Defaults apart from the flood's scale: every honest DISCOVER is
    answered."""
    svc, _ = service()
    tx = Tx()
    rng = random.Random(9)
    looper = "52:54:00:ee:00:01"
    honest = [f"52:54:00:01:{i >> 8:02x}:{i & 0xff:02x}" for i in range(200)]
    busy0, limited0 = counted(BUSY), counted(RATE_LIMITED)
    honest_sent = loop_sent = flood_sent = 0
    honest_missed = []
    for tick in range(10 * 100):                 # 10 ms steps
        clock.now += 0.01
        for _ in range(3):                       # 300/s
            discover(svc, tx, looper)
            loop_sent += 1
        for _ in range(20):                      # 2000/s, each from a MAC never seen before
            mac = "02:" + ":".join(f"{rng.randrange(256):02x}" for _ in range(5))
            discover(svc, tx, mac, source_key=b"\x02\xf1\x00\xd0\x00\x01")
            flood_sent += 1
        if tick % 100 < len(honest) // 2:        # each honest machine twice per 100 ticks
            for mac in honest[(tick % 100) * 2:(tick % 100) * 2 + 2]:
                before = len(tx.to)
                discover(svc, tx, mac)
                honest_sent += 1
                if len(tx.to) != before + 1 or tx.to[-1] != mac:
                    honest_missed.append((tick, mac))
    to_looper = tx.to.count(looper)
    to_flood = sum(1 for m in tx.to if m.startswith("02:"))
    from tests.conftest import record_report
    record_report(f"fairness: boot loop sent {loop_sent}, answered {to_looper}; flood sent {flood_sent}, "
          f"answered {to_flood}; honest sent {honest_sent}, missed {len(honest_missed)}; "
          f"busy {counted(BUSY) - busy0:.0f}, rate_limited {counted(RATE_LIMITED) - limited0:.0f}")
    assert honest_missed == []
    assert honest_sent == 200 * 10
    d = config.parse(None).dhcp
    assert to_looper <= d.burst_per_mac + d.rate_per_mac * 10      # the loop is held to its rate
    assert to_flood <= d.max_sessions_per_source                    # the flood holds only its share
    assert len(svc._in_progress) <= d.max_sessions_in_progress
    assert counted(BUSY) - busy0 + counted(RATE_LIMITED) - limited0 == \
        (loop_sent - to_looper) + (flood_sent - to_flood)           # every unanswered packet counted


def test_the_cap_refuses_new_machines_and_keeps_answering_those_in_progress(clock):
    svc, bus = service("dhcp: {max_sessions_in_progress: 10, max_sessions_per_source: 0}\n"
                       "events: {stall_timeout: 60}")
    tx = Tx()
    first = [f"52:54:00:02:00:{i:02x}" for i in range(10)]
    for mac in first:
        discover(svc, tx, mac, kind="edk2")
    assert tx.to == first
    busy0 = counted(BUSY)
    clock.now += 1
    discover(svc, tx, "52:54:00:02:01:00", kind="edk2")              # the 11th machine: busy
    assert len(tx.to) == 10 and counted(BUSY) == busy0 + 1
    # Those in progress go on: their 4011 request, and iPXE's DISCOVER.
    svc.handle(request_bytes("edk2", mac=first[0], message=opt.REQUEST, ciaddr="10.77.0.130", uuid=None),
               PORT_PROXY, IFACE, ("10.77.0.130", 4011), tx)
    discover(svc, tx, first[1], kind="ipxe")
    assert tx.to[-2:] == [first[0], first[1]]
    # A machine whose iPXE fetched its script is done: its place goes to a new one.
    bus.emit(HTTP_FETCH, mac=first[1], fetch="script", code=200, path="/boot.ipxe")
    discover(svc, tx, "52:54:00:02:01:00", kind="edk2")
    assert tx.to[-1] == "52:54:00:02:01:00"
    discover(svc, tx, "52:54:00:02:01:01", kind="edk2")
    assert tx.to[-1] != "52:54:00:02:01:01" and counted(BUSY) == busy0 + 2
    # A machine that went quiet for events.stall_timeout is no longer in progress.
    clock.now += 61
    discover(svc, tx, "52:54:00:02:01:01", kind="edk2")
    assert tx.to[-1] == "52:54:00:02:01:01"
    assert metrics.REGISTRY.get_sample_value("proxydhcp_dhcp_sessions_in_progress") == 1


def test_no_cap_when_set_to_zero(clock):
    svc, _ = service("dhcp: {max_sessions_in_progress: 0, max_sessions_per_source: 0, rate_per_source: 0}")
    tx = Tx()
    for i in range(3000):
        discover(svc, tx, f"52:54:00:03:{i >> 8:02x}:{i & 0xff:02x}")
    assert len(tx.to) == 3000


def test_a_failed_script_fetch_does_not_end_the_session(clock):
    svc, bus = service("dhcp: {max_sessions_in_progress: 1}")
    tx = Tx()
    discover(svc, tx, "52:54:00:04:00:01")
    bus.emit(HTTP_FETCH, mac="52:54:00:04:00:01", fetch="script", code=500, path="/boot.ipxe")
    bus.emit(HTTP_FETCH, mac="52:54:00:04:00:01", fetch="file", code=200, path="/vmlinuz")
    discover(svc, tx, "52:54:00:04:00:02")
    assert tx.to == ["52:54:00:04:00:01"]
