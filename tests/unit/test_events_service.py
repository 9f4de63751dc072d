"""The events service's reactor side: a storm's sessions reach the store and expire in
bounded slices per reactor turn (never thousands in one call), and all of them get there."""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock

from proxydhcp import config
from proxydhcp.events import DHCP_REPLY, EventBus
from proxydhcp.events import service as es
from proxydhcp.events.store import Reader

T0 = 1_700_000_000.0


def _reply(i: int, t: float) -> dict:
    return {"kind": DHCP_REPLY, "time": t, "port": "67", "message": "offer", "request": "discover",
            "mac": f"52:54:00:00:{i >> 8:02x}:{i & 255:02x}", "arch": 7, "firmware": "legacy-pxe",
            "boot_file": "", "client_ip": None}


def test_a_storm_of_sessions_is_flushed_and_expired_in_slices(tmp_path):
    now = [T0]
    live = config.LiveConfig(config.parse(f"state: {{dir: {tmp_path}}}\nevents: {{stall_timeout: 120}}\n"))
    reactor, bus = MemoryReactorClock(), EventBus()
    svc = es.EventsService(live, bus, reactor=reactor, clock=lambda: now[0])
    svc.startService()
    try:
        handed, saved = [], svc.store.save_session
        svc.store.save_session = lambda d: (handed.append(d["id"]), saved(d))
        slices, some = [], svc._flush_some
        svc._flush_some = lambda k: (slices.append(len(svc._flushing[:k])), some(k))
        n = 1000
        for i in range(n):
            svc.observe(_reply(i, T0 + i * 0.001))   # as the bus calls it
        reactor.advance(es.SESSION_FLUSH_DELAY)         # the timer, then a turn per slice
        assert slices == [es.FLUSH_SLICE] * (n // es.FLUSH_SLICE) + [n % es.FLUSH_SLICE]
        assert sorted(handed) == sorted(s.id for s in svc.tracker.by_mac.values()) and len(handed) == n

        applied = []
        real_apply = svc._apply
        svc._apply = lambda ups: (applied.append(len(ups)), real_apply(ups))
        now[0] = T0 + 200                              # every session stalled
        svc.tick()                                     # the LoopingCall's tick, then a turn per slice
        reactor.advance(0)
        assert [a for a in applied if a] == [es.TICK_SLICE] * (n // es.TICK_SLICE) + [n % es.TICK_SLICE]
        assert not svc.tracker.due(now[0])
        assert all(s.state == "failed" for s in svc.tracker.by_mac.values())
        while svc._flushing or svc._dirty:
            reactor.advance(es.SESSION_FLUSH_DELAY)
        assert svc.store.flush()
        assert len(Reader(svc.store.path).sessions(failed=True, limit=2 * n)) == n
    finally:
        svc.stopService()
