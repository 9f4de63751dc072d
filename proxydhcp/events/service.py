"""The events service: the store, the boot-session tracker and the hook intake, on the bus.

Owns the wiring of proxydhcp.events.store and .hooks (socket + spool) into one Twisted
service, the timers (the tracker's tick, retention, spool rescan) and what the daemon makes
of boot sessions: metrics, log lines and user hooks. The tracker (proxydhcp.events.sessions)
runs in the store's writer process with the SQLite work: on the hot path this service only
queues the event (a deque append), and each written batch comes back as a summary
(sessions.summarise) that is applied here, on the reactor.
"""

from __future__ import annotations

import logging
import os
import time

from twisted.application.service import Service
from twisted.internet.task import LoopingCall

from proxydhcp import metrics
from proxydhcp.config import LiveConfig
from proxydhcp.events import EventBus
from proxydhcp.events import hooks as hookmod
from proxydhcp.events.hooks import HookListener
from proxydhcp.events.store import EventStore, StoreError
from proxydhcp.events.userhooks import UserHooks
from proxydhcp.reactors import UsesReactor

log = logging.getLogger(__name__)

SPOOL_RESCAN = 10.0          # seconds: spool files written while we were busy
PRUNE_EVERY = 3600.0


def paths(cfg) -> tuple[str, str, str]:
    """(database, hook socket, spool dir) for a Config."""
    from proxydhcp.events.store import db_path
    state = cfg.state.dir
    return (db_path(state), cfg.events.socket or os.path.join(state, "hook.sock"),
            cfg.events.spool or os.path.join(state, "spool"))


def tick_every(stall_timeout: float) -> float:
    return max(1.0, min(5.0, stall_timeout / 4))


class EventsService(UsesReactor, Service):
    name = "events"

    def __init__(self, live: LiveConfig, bus: EventBus, reactor=None, clock=time.time) -> None:
        self.live = live
        self.bus = bus
        self._reactor = reactor
        self.clock = clock
        self.store: EventStore | None = None
        self.hooks: HookListener | None = None
        self._stage_children: dict = {}
        self._loops: list[LoopingCall] = []
        self.user_hooks: UserHooks | None = None
        self.summaries = 0            # batch summaries applied (tests wait on it)

    def startService(self) -> None:
        from proxydhcp.service import StartupError
        cfg = self.live.current
        e = cfg.events
        _, sock, spool = paths(cfg)
        tracker = {"success_stage": e.success_stage, "stall_timeout": e.stall_timeout,
                   "loop_threshold": e.loop_threshold, "lease_window": e.lease_window}
        self.store = EventStore(cfg.state.dir, e.retention_days, tracker=tracker,
                                on_summary=lambda s: self.reactor.callFromThread(self.apply, s))
        try:
            self.store.start()
        except StoreError as exc:
            raise StartupError(str(exc)) from None
        store = self.store
        metrics.EVENT_STORE_DROPS.sources[()] = lambda: store.dropped
        metrics.EVENT_STORE_QUEUE.set_function(store.pending)
        metrics.init_boot_series(metrics.arch_labels_for(cfg.boot.firmware))   # counters at 0 before they move
        metrics.init_series(metrics.LEASE_EVENTS, hookmod.SOURCES, hookmod.LEASE_ACTIONS + (hookmod.TFTP_ACTION,))
        self.user_hooks = UserHooks(lambda: self.live.current.events, self.reactor)
        self.store.hooks(self.user_hooks.wanted())
        self.bus.subscribe(self.observe)
        self.hooks = HookListener(self.store, self.bus, self.reactor, sock, spool)
        try:
            self.hooks.start()
        except Exception as exc:
            raise StartupError(f"cannot open the hook socket {sock} / spool {spool}: {exc} "
                               f"(set events.socket / events.spool or fix state.dir permissions)") from None
        for fn, every in ((self.tick, tick_every(e.stall_timeout)),
                          (self.hooks.intake_spool, SPOOL_RESCAN), (self.store.prune, PRUNE_EVERY)):
            loop = LoopingCall(fn)
            loop.clock = self.reactor
            loop.start(every, now=False)
            self._loops.append(loop)
        log.info("event store %s (writer pid %s), hook socket %s, spool %s", self.store.path,
                 self.store.writer_pid, sock, spool)
        Service.startService(self)

    def stopService(self):
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops.clear()
        if self.hooks is not None:
            self.hooks.stop()
        if self.user_hooks is not None:
            self.user_hooks.stop()
        try:
            self.bus.unsubscribe(self.observe)
        except ValueError:
            pass
        if self.store is not None:
            self.store.stop()     # the writer writes what is queued (events and sessions), then ends
        return Service.stopService(self)

    # --- the bus observer (hot path) ---------------------------------------------------
    def observe(self, event: dict) -> None:
        if "uid" not in event:                # a hook's event is stored (and tracked) already
            self.store.record(event)          # the writer's tracker sees it too
        if self.user_hooks is not None:
            self.user_hooks.on_event(event)   # lease events; only queues

    def tick(self) -> None:
        """The tracker's clock (in the writer): stalled sessions fail, old ones are forgotten.
        Also tells the writer whether user hooks want session payloads (after a reload)."""
        if self.user_hooks is not None:
            self.store.hooks(self.user_hooks.wanted())
        self.store.tick(self.clock())

    # --- what the writer's tracker says (reactor thread) ---------------------------------
    def apply(self, summary: dict) -> None:
        """Metrics, log lines and user hooks for one batch's session updates."""
        self.summaries += 1
        if summary.get("priority") not in (None, "idle"):
            log.warning("the event store's writer (pid %s) could not take idle CPU priority and runs at %s: "
                        "under load, DHCP replies may wait behind it (a syscall filter refusing "
                        "sched_setscheduler?)", self.store.writer_pid if self.store else "?", summary["priority"])
        if summary.get("restored"):
            log.info("restored %d open boot session(s)", summary["restored"])
        arches = summary.get("arches")
        if arches:
            metrics.init_boot_series(arches)
        children = self._stage_children
        for stage, a, n in summary.get("stages", ()):
            child = children.get((stage, a))
            if child is None:   # .labels() costs microseconds: bind each child once
                child = children[(stage, a)] = metrics.BOOT_STAGES.labels(stage, a)
            child.inc(n)
        for outcome, a, fw, duration, code, sid, mac, last, summary_text, advice in summary.get("ended", ()):
            metrics.BOOT_SESSIONS.labels(outcome, a, fw).inc()
            if outcome == "succeeded":
                metrics.BOOT_DURATION.labels(a).observe(duration)
                log.info("boot session %s (%s): succeeded at %s in %.1f s", sid, mac, last, duration)
            else:
                metrics.BOOT_FAILURES.labels(code, a).inc()
                log.warning("boot session %s (%s) failed after %s: %s: %s Try: %s", sid, mac, last, code,
                            summary_text, advice)
        payloads = summary.get("hooks")
        if payloads and self.user_hooks is not None:
            for p in payloads:
                self.user_hooks.dispatch(p)
