"""The events service: the store, the session tracker and the hook intake, on the bus.

Owns the wiring of proxydhcp.events.store (writer process), .sessions (pure tracker) and
.hooks (socket + spool) into one Twisted service, the timers (stall check, retention,
spool rescan) and the boot-session metrics. On the hot path it only queues the event and
feeds the tracker (microseconds); serialising changed sessions happens a moment later in
one reactor call, writing them happens in the store's writer process.
"""

from __future__ import annotations

import logging
import os
import time

from twisted.application.service import Service
from twisted.internet.task import LoopingCall

from proxydhcp import arch as archtable, metrics
from proxydhcp.config import LiveConfig
from proxydhcp.events import EventBus
from proxydhcp.events import hooks as hookmod
from proxydhcp.events.hooks import HookListener
from proxydhcp.events.sessions import Session, Tracker
from proxydhcp.events.store import EventStore, Reader, StoreError
from proxydhcp.events.userhooks import UserHooks
from proxydhcp.reactors import UsesReactor

log = logging.getLogger(__name__)

SESSION_FLUSH_DELAY = 0.2    # seconds: changed sessions are written in batches
FLUSH_SLICE = 64             # sessions serialised per reactor turn
TICK_SLICE = 256             # sessions closed per reactor turn
SPOOL_RESCAN = 10.0          # seconds: spool files written while we were busy
PRUNE_EVERY = 3600.0


def paths(cfg) -> tuple[str, str, str]:
    """(database, hook socket, spool dir) for a Config."""
    from proxydhcp.events.store import db_path
    state = cfg.state.dir
    return (db_path(state), cfg.events.socket or os.path.join(state, "hook.sock"),
            cfg.events.spool or os.path.join(state, "spool"))


class EventsService(UsesReactor, Service):
    name = "events"

    def __init__(self, live: LiveConfig, bus: EventBus, reactor=None, clock=time.time) -> None:
        self.live = live
        self.bus = bus
        self._reactor = reactor
        self.clock = clock
        self.store: EventStore | None = None
        self.tracker: Tracker | None = None
        self.hooks: HookListener | None = None
        self._dirty: dict[str, Session] = {}      # changed since the last flush began
        self._flushing: list[Session] = []          # being handed to the store, a slice per turn
        self._flush_call = None
        self._tick_more = None
        self._arch_labels: dict = {}      # arch code -> metric label (its boot series exist)
        self._stage_children: dict = {}
        self._loops: list[LoopingCall] = []
        self.user_hooks: UserHooks | None = None

    def startService(self) -> None:
        from proxydhcp.service import StartupError
        cfg = self.live.current
        e = cfg.events
        _, sock, spool = paths(cfg)
        self.store = EventStore(cfg.state.dir, e.retention_days)
        try:
            self.store.open()
        except StoreError as exc:
            raise StartupError(str(exc)) from None
        self.store.start()
        self.tracker = Tracker(e.success_stage, e.stall_timeout, e.loop_threshold, e.lease_window)
        metrics.init_boot_series(metrics.arch_labels_for(cfg.boot.firmware))   # counters at 0 before they move
        metrics.init_series(metrics.LEASE_EVENTS, hookmod.SOURCES, hookmod.LEASE_ACTIONS + (hookmod.TFTP_ACTION,))
        self._restore()
        self.user_hooks = UserHooks(lambda: self.live.current.events, self.reactor)
        self.bus.subscribe(self.observe)
        self.hooks = HookListener(self.store, self.bus, self.reactor, sock, spool)
        try:
            self.hooks.start()
        except Exception as exc:
            raise StartupError(f"cannot open the hook socket {sock} / spool {spool}: {exc} "
                               f"(set events.socket / events.spool or fix state.dir permissions)") from None
        for fn, every in ((self.tick, max(1.0, min(5.0, e.stall_timeout / 4))),
                          (self.hooks.intake_spool, SPOOL_RESCAN), (self.store.prune, PRUNE_EVERY)):
            loop = LoopingCall(fn)
            loop.clock = self.reactor
            loop.start(every, now=False)
            self._loops.append(loop)
        log.info("event store %s, hook socket %s, spool %s", self.store.path, sock, spool)
        Service.startService(self)

    def stopService(self):
        for loop in self._loops:
            if loop.running:
                loop.stop()
        if self._tick_more is not None and self._tick_more.active():
            self._tick_more.cancel()
        self._loops.clear()
        if self.hooks is not None:
            self.hooks.stop()
        if self.user_hooks is not None:
            self.user_hooks.stop()
        try:
            self.bus.unsubscribe(self.observe)
        except ValueError:
            pass
        self._flush_sessions()
        if self.store is not None:
            self.store.stop()
        return Service.stopService(self)

    def _restore(self) -> None:
        try:
            reader = Reader(self.store.path)
            open_sessions = [Session.from_dict(d) for d in reader.open_sessions()]
            reader.close()
        except (StoreError, Exception) as exc:  # a session we cannot read is not worth a failed start
            log.warning("cannot restore open boot sessions: %s", exc)
            return
        self.tracker.restore(open_sessions)
        if open_sessions:
            log.info("restored %d open boot session(s)", len(open_sessions))

    # --- the bus observer (hot path) ---------------------------------------------------
    def observe(self, event: dict) -> None:
        self.store.record(event)
        self._apply(self.tracker.feed(event))
        if self.user_hooks is not None:
            self.user_hooks.on_event(event)   # lease events; only queues

    def tick(self) -> None:
        """Stalled sessions fail, old ones are forgotten: TICK_SLICE per reactor turn, so that a
        storm's sessions expiring together do not hold the reactor for a second."""
        now = self.clock()
        self._apply(self.tracker.tick(now, TICK_SLICE))
        if self.tracker.due(now) and (self._tick_more is None or not self._tick_more.active()):
            self._tick_more = self.reactor.callLater(0, self.tick)

    def _apply(self, updates) -> None:
        if not updates:
            return
        hooks = self.user_hooks if self.user_hooks is not None and self.user_hooks.configured() else None
        dirty, labels = self._dirty, self._arch_labels
        for u in updates:
            s = u.session
            dirty[s.id] = s
            a = labels.get(s.arch)
            if a is None:
                a = labels[s.arch] = archtable.label(s.arch)
                metrics.init_boot_series((a,))
            if hooks is not None:
                hooks.on_update(u)   # only queues; runs in a later reactor turn
            if u.kind == "opened":
                pass
            elif u.kind == "stage":
                key = (u.stage, a)
                child = self._stage_children.get(key)
                if child is None:   # .labels() costs microseconds: bind each child once
                    child = self._stage_children[key] = metrics.BOOT_STAGES.labels(u.stage, a)
                child.inc()
            elif u.kind == "succeeded":
                metrics.BOOT_SESSIONS.labels("succeeded", a, s.firmware_label).inc()
                metrics.BOOT_DURATION.labels(a).observe(max(0.0, s.duration))
                log.info("boot session %s (%s): succeeded at %s in %.1f s", s.id, s.mac, u.stage, s.duration)
            elif u.kind == "failed":
                metrics.BOOT_SESSIONS.labels("failed", a, s.firmware_label).inc()
                metrics.BOOT_FAILURES.labels(s.diagnosis.code, a).inc()
                log.warning("boot session %s (%s) failed after %s: %s: %s Try: %s", s.id, s.mac,
                            s.last_stage, s.diagnosis.code, s.diagnosis.summary, s.diagnosis.advice)
        if self._dirty and self._flush_call is None:
            self._flush_call = self.reactor.callLater(SESSION_FLUSH_DELAY, self._flush_slice)

    def _flush_sessions(self) -> None:
        """Hand every changed session to the store now (at stop)."""
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        self._take_dirty()
        self._flush_some(len(self._flushing))

    def _flush_slice(self) -> None:
        """The timer: at most FLUSH_SLICE sessions per reactor turn, so that a storm's thousands
        of new sessions never hold the reactor for milliseconds while packets wait."""
        self._flush_call = None
        if not self._flushing:
            self._take_dirty()
        self._flush_some(FLUSH_SLICE)
        if self._flushing:
            self._flush_call = self.reactor.callLater(0, self._flush_slice)
        elif self._dirty:
            self._flush_call = self.reactor.callLater(SESSION_FLUSH_DELAY, self._flush_slice)

    def _take_dirty(self) -> None:
        self._flushing.extend(self._dirty.values())   # each is written as it is when its turn comes
        self._dirty = {}

    def _flush_some(self, n: int) -> None:
        todo = self._flushing
        now, self._flushing = todo[:n], todo[n:]
        if self.store is None:
            return
        save = self.store.save_session
        for s in now:
            save(s.as_dict())
