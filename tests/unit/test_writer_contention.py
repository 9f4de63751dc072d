"""The event store's writer holds back batches that nobody waits for while the daemon's
reactor is kept from a CPU (proxydhcp.events.writer.Contention): read from scheduler
statistics, bounded by PAUSE_MAX, never for a hook's event or a call."""

from __future__ import annotations

import os

from proxydhcp.events import store
from proxydhcp.events.writer import Contention, Inbox, waited_for

MS = 1_000_000


class FakeTask:
    """A clock and a reactor thread whose run and wait shares per window are scripted."""

    def __init__(self, shares):
        self.now = 0
        self.ran = self.waited = 0
        self.shares = list(shares)       # (run share, wait share) for each window slept
        self.slept = 0.0

    def clock(self):
        return self.now

    def read(self):
        return self.ran, self.waited

    def sleep(self, seconds):
        ns = int(seconds * 1e9)
        run, wait = self.shares.pop(0) if self.shares else (0.0, 0.0)
        self.now += ns
        self.ran += int(run * ns)
        self.waited += int(wait * ns)
        self.slept += seconds


def contention(task):
    return Contention(0, read=task.read, clock=task.clock, sleep=task.sleep)


def _looked_after(task, c, seconds):
    """Time passes (the writer's own work), with the reactor at the task's next shares."""
    task.sleep(seconds)
    task.slept -= seconds
    return c.hold()


def test_a_quiet_reactor_is_not_waited_for_and_costs_no_sleep():
    task = FakeTask([(0.1, 0.0)])
    c = contention(task)
    assert _looked_after(task, c, 0.01) == 0.0
    assert task.slept == 0.0


def test_a_busy_but_uncontended_reactor_is_not_waited_for():
    task = FakeTask([(0.95, 0.02)])                      # it has a core to itself
    c = contention(task)
    assert _looked_after(task, c, 0.01) == 0.0


def test_a_background_load_with_an_idle_reactor_is_not_waited_for():
    task = FakeTask([(0.05, 0.5)])                       # something else is busy; no replies to make
    c = contention(task)
    assert _looked_after(task, c, 0.01) == 0.0


def test_held_while_the_reactor_works_and_waits_then_released():
    task = FakeTask([(0.6, 0.3)] + [(0.6, 0.1)] * 5 + [(0.6, 0.05)])
    c = contention(task)
    held = _looked_after(task, c, 0.01)        # contended: held until the wait share falls below RELEASE
    assert abs(held - 6 * Contention.WINDOW) < 1e-9
    assert _looked_after(task, c, 0.01) == 0.0            # free again


def test_a_look_too_soon_after_the_last_keeps_its_verdict():
    task = FakeTask([(0.6, 0.3), (0.6, 0.01)])
    c = contention(task)
    task.now += 1000                                       # 1 us later: no new verdict
    assert c.hold() == 0.0 and task.slept == 0.0


def test_never_held_past_pause_max():
    task = FakeTask([(0.6, 0.4)] * 100000)
    c = contention(task)
    held = _looked_after(task, c, 0.01)
    assert Contention.PAUSE_MAX <= held < Contention.PAUSE_MAX + 2 * Contention.WINDOW


def test_without_scheduler_statistics_nothing_is_held():
    def missing():
        raise FileNotFoundError("/proc/1/schedstat")
    c = Contention(0, read=missing)
    assert c.hold() == 0.0


def test_the_kernels_statistics_are_read():
    c = Contention(os.getpid())
    assert c.last is not None and c.last[1] > 0          # this thread has run


def test_a_batch_somebody_waits_for_is_never_held():
    assert not waited_for([(store.EVENT, {"kind": "dhcp.reply"}, None), (store.TICK, 1.0, None)])
    assert waited_for([(store.EVENT, {"kind": "lease"}, 7)])          # a hook waits for "stored"
    assert waited_for([(store.CALL, None, 8)])
    assert waited_for([(store.STOP, None, None)])
    assert waited_for([(store.USER, (65534, 65534), None)])


def test_a_hold_ends_when_interrupted():
    task = FakeTask([(0.6, 0.4)] * 1000)
    c = contention(task)
    asked = []
    task.sleep(0.01)
    held = c.hold(lambda: asked.append(1) or len(asked) >= 3)
    assert len(asked) == 3 and abs(held - 3 * Contention.WINDOW) < 1e-9


def _pipe_with(*frames, close=False):
    r, w = os.pipe()
    for frame in frames:
        os.write(w, store.encode_frame(frame))
    if close:
        os.close(w)
        w = None
    return r, w


EV = (store.EVENT, {"kind": "dhcp.reply", "mac": "52:54:00:00:00:01"}, None)


def test_frames_that_arrive_during_a_hold_join_the_batch():
    r, w = _pipe_with([EV], [EV, EV])
    inbox = Inbox(r)
    assert inbox.next() == [EV]
    assert inbox.arrived() is False           # nobody waits for these: the hold goes on
    assert inbox.batch == [EV, EV, EV]
    assert inbox.arrived() is False           # nothing more in the pipe
    os.write(w, store.encode_frame([(store.EVENT, {"kind": "lease"}, 7)]))
    assert inbox.arrived() is True            # a hook waits: the hold ends, its event joins
    assert len(inbox.batch) == 4 and not inbox.ended
    os.close(w)
    os.close(r)


def test_the_end_of_input_ends_a_hold_and_keeps_what_was_read():
    r, _ = _pipe_with([EV], [EV], close=True)
    inbox = Inbox(r)
    inbox.next()
    assert inbox.arrived() is True
    assert inbox.ended and inbox.batch == [EV, EV]
    os.close(r)


def test_a_held_batch_takes_in_no_more_than_max_held(monkeypatch):
    monkeypatch.setattr(Inbox, "MAX_HELD", 3)
    r, w = _pipe_with([EV, EV], [EV, EV], [EV, EV])
    inbox = Inbox(r)
    inbox.next()
    assert inbox.arrived() is False
    assert len(inbox.batch) == 4              # the third frame stays in the pipe
    assert inbox.next() == [EV, EV]
    os.close(w)
    os.close(r)
