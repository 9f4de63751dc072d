"""The event store's writer holds back batches that nobody waits for while the daemon's
reactor is kept from a CPU (proxydhcp.events.writer.Contention): read from scheduler
statistics, bounded by PAUSE_MAX, never for a hook's event or a call."""

from __future__ import annotations

import os

from proxydhcp.events import store
from proxydhcp.events.writer import Contention, waited_for

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
