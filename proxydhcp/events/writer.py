"""The event store's writer process: `python -m proxydhcp.events.writer DATABASE [TRACKER]`.

Started by proxydhcp.events.store.EventStore, never by hand. It owns the work behind each
event that a DHCP reply must not wait for: the JSON and SQLite rows, and, given TRACKER (the
boot-session settings as JSON), the boot-session tracker itself (proxydhcp.events.sessions):
it restores the open sessions from the database, feeds it every event, ticks it when the
daemon says (TICK carries the daemon's clock) and writes the sessions that changed in the
same transaction as the events.

Runs at idle priority (idle_priority), and holds back batches that nobody waits for while
the daemon's reactor is kept from a CPU (Contention): replies first.

Reads batches (marshal frames) on stdin; answers each on stdout with (events written, error
or None, [(token, result)], summary or None), the summary being sessions.summarise(): what
the daemon turns into metrics, log lines and user hooks. A USER item makes it drop root as
the daemon does. It ignores SIGINT, SIGTERM and SIGHUP (a terminal's Ctrl-C and systemd's
stop reach the whole process group: the daemon then sends what is left and closes stdin),
and it ends at the end of stdin, after writing what it read.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

from proxydhcp.events import sessions, store



def drop_to(uid: int, gid: int) -> None:
    if os.getuid() == uid and os.getgid() == gid:
        return
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)


def idle_priority() -> str:
    """Run only on CPU time nobody else wants (SCHED_IDLE): when this process shares a core
    with the daemon's reactor, the reactor's replies always go first. Measured with perfdhcp
    at 5,000 DISCOVERs/s: p99 0.6-0.7 ms this way, 2-3 ms at normal priority (nice 10 or
    SCHED_BATCH alike). A CPU saturated for long starves it: the daemon's queue then grows
    (proxydhcp_event_store_queue) up to its bound, and what does not fit is counted in
    proxydhcp_event_store_dropped_total. Returns what it got: "idle", "nice 19" or "normal"
    (a syscall filter may refuse both; the daemon then says so in its log)."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        return "idle"
    except (OSError, AttributeError):
        try:
            os.nice(19)
            return "nice 19"
        except OSError:
            return "normal"


class Contention:
    """Whether the daemon's reactor thread is kept from a CPU, read from the kernel's
    scheduler statistics of the daemon's main thread (/proc/PID/schedstat: nanoseconds run,
    nanoseconds waited on a run queue, slices). SCHED_IDLE keeps this process off a core the
    reactor wants, but not out of the reactor's way: on two cores shared with a load
    generator, an idle-priority writer at work still cost the reactor replies (perfdhcp at
    28,000 DISCOVERs/s: 1-2% unanswered with the writer at work, 0.5-0.7% with it waiting;
    bench/dhcp_bench.py). So while the reactor both works (RUN of a window) and waits for a
    CPU (WAIT of it), a batch of events that nobody waits for is held back, window by window,
    for PAUSE_MAX at most; a batch with a waiting hook or call is never held."""

    WINDOW = 0.05        # seconds between looks while holding
    MIN_LOOK = 0.005     # a shorter span since the last look keeps the last verdict
    RUN = 0.30           # held when the reactor ran at least this share of a span ...
    WAIT = 0.15          # ... and waited on a run queue at least this share;
    RELEASE = 0.075      # released when it waits less than this share (or runs less than RUN)
    PAUSE_MAX = 10.0     # a batch is held this long at most (the queue shows it meanwhile)

    def __init__(self, pid: int, read=None, clock=time.monotonic_ns, sleep=time.sleep) -> None:
        self.path = f"/proc/{pid}/schedstat"
        self.read = read or self._read
        self.clock, self.sleep = clock, sleep
        self.last = self.sample()
        self.busy = False

    def _read(self):
        with open(self.path) as fh:
            ran, waited, _slices = fh.read().split()
        return int(ran), int(waited)

    def sample(self):
        try:
            ran, waited = self.read()
        except (OSError, ValueError):
            return None               # no scheduler statistics: never hold
        return self.clock(), ran, waited

    @classmethod
    def contended(cls, before, after, wait: float | None = None) -> bool:
        span = after[0] - before[0]
        if span <= 0:
            return False
        return (after[1] - before[1] >= cls.RUN * span
                and after[2] - before[2] >= (cls.WAIT if wait is None else wait) * span)

    def hold(self) -> float:
        """Wait while the reactor is contended (at most PAUSE_MAX); seconds waited. Costs
        one read of /proc when it is not."""
        if self.last is None:
            return 0.0
        now = self.sample()
        if now is None:
            return 0.0
        if now[0] - self.last[0] >= self.MIN_LOOK * 1e9:
            self.busy = self.contended(self.last, now)
            self.last = now
        held = 0.0
        while self.busy and held < self.PAUSE_MAX:
            self.sleep(self.WINDOW)
            held += self.WINDOW
            now = self.sample()
            if now is None:
                self.busy = False
                break
            self.busy = self.contended(self.last, now, self.RELEASE)
            self.last = now
        return held


def waited_for(batch: list) -> bool:
    """Whether somebody waits for this batch's answer (a hook's event, a call, a stop)."""
    return any(token is not None or kind in (store.STOP, store.USER) for kind, _payload, token in batch)


def restore(conn, tracker: sessions.Tracker) -> int:
    """Take back the sessions that were open when the daemon stopped."""
    rows = conn.execute("SELECT data FROM sessions WHERE closed = 0 ORDER BY updated").fetchall()
    found = []
    for (data,) in rows:
        try:
            found.append(sessions.Session.from_dict(json.loads(data)))
        except (ValueError, TypeError, KeyError):
            continue          # a row this version cannot read is not worth a failed start
    tracker.restore(found)
    return len(found)


class Work:
    """One batch's work (testable without the process): tracker, then one transaction."""

    def __init__(self, conn, tracker: sessions.Tracker | None, priority: str = "idle") -> None:
        self.conn, self.tracker = conn, tracker
        self.priority = priority         # told once, in the first answer
        self.hooks: frozenset = frozenset()     # hook events the daemon wants payloads for
        self.restored = restore(conn, tracker) if tracker is not None else 0

    def fresh(self, event: dict, seen: set) -> bool:
        """Whether the tracker has not had this event yet. A hook's event (it has a uid) comes
        here more than once: stored for the hook, then again from the daemon's bus observer
        once committed, and once more when a hook spooled what was also stored. The tracker
        takes it once (else a dnsmasq TFTP transfer counted double: a chainload loop)."""
        uid = event.get("uid")
        if uid is None:
            return True
        if uid in seen:
            return False
        seen.add(uid)
        return self.conn.execute("SELECT 1 FROM events WHERE uid = ?", (uid,)).fetchone() is None

    def batch(self, batch: list) -> tuple:
        updates: list = []
        tracker = self.tracker
        seen: set = set()
        for kind, payload, _token in batch:
            if kind == store.EVENT:
                if tracker is not None and self.fresh(payload, seen):
                    updates += tracker.feed(payload)
            elif kind == store.TICK:
                if tracker is not None:
                    updates += tracker.tick(payload)
            elif kind == store.HOOKS:
                self.hooks = frozenset(payload or ())
            elif kind == store.USER:
                drop_to(*payload)
        if updates:
            changed = {u.session.id: u.session for u in updates}
            batch = batch + [(store.SESSION, s.as_dict(), None) for s in changed.values()]
        written, error, results = store.write_batch(self.conn, batch)
        summary = sessions.summarise(updates, self.hooks) if updates else None
        if self.restored:
            summary = dict(summary or {}, restored=self.restored)
            self.restored = 0
        if self.priority is not None:
            summary = dict(summary or {}, priority=self.priority)
            self.priority = None
        return written, error, results, summary


def main(argv: list[str]) -> int:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    priority = idle_priority()
    if len(argv) not in (2, 3):
        print("usage: python -m proxydhcp.events.writer DATABASE [TRACKER-JSON] (started by the daemon)",
              file=sys.stderr)
        return 2
    conn = store.connect(argv[1])
    tracker = sessions.Tracker(**json.loads(argv[2])) if len(argv) == 3 else None
    work = Work(conn, tracker, priority)
    inp, out = sys.stdin.fileno(), sys.stdout.fileno()
    contention = Contention(os.getppid())
    while True:
        batch = store.read_frame(inp)
        if batch is None:
            break
        if not waited_for(batch):
            contention.hold()
        answer = work.batch(batch)
        try:
            store.write_all(out, store.encode_frame(answer))
        except BrokenPipeError:
            break
    conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
