"""The transfer reader's hold (proxydhcp.tftp.server._Transfers.doRead) with Twisted's epoll
reactor: one reactor wake-up serves the datagrams that keep arriving for a while, gives the
reactor back as soon as anything else it watches is ready, at its next timed call, or when
the transfers go quiet, and busy-polls only while the client's answers come back fast.
A real (not running) EPollReactor; transfers talk over loopback; the client runs in a thread."""

from __future__ import annotations

import os
import select
import socket
import threading
import time

import pytest
from twisted.internet.epollreactor import EPollReactor

from proxydhcp import config
from proxydhcp.events import EventBus
from proxydhcp.tftp import packet as pk
from proxydhcp.tftp import server as tftp_server
from proxydhcp.tftp.transfer import OK

BLOCKS = 200


@pytest.fixture
def service(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "f.bin").write_bytes(os.urandom(512 * BLOCKS + 100))
    cfg = config.parse(f"tftp: {{root: {root}, port: 0}}\nstate: {{dir: {tmp_path}/state}}")
    reactor = EPollReactor()
    svc = tftp_server.TFTPService(config.LiveConfig(cfg), EventBus(), address="127.0.0.1", reactor=reactor)
    svc.startService()
    svc.root = str(root)
    yield svc
    svc.stopService()
    for reader in list(reactor.getReaders()):
        reactor.removeReader(reader)
    reactor._poller.close()


class _Client(threading.Thread):
    """Lock-step client: ACKs each DATA it receives (after `delay` seconds), until the
    last block or `stop`."""

    def __init__(self, sock: socket.socket, delay: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.sock, self.delay = sock, delay
        self.blocks = 0
        self.stop = False

    def run(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop:
            try:
                data, addr = self.sock.recvfrom(2048)
            except socket.timeout:
                continue
            except OSError:
                return
            if data[:2] != b"\x00\x03":
                continue
            self.blocks += 1
            if self.delay:
                time.sleep(self.delay)
            self.sock.sendto(b"\x00\x04" + data[2:4], addr)
            if len(data) < 516:
                return


def _start(service, client_sock) -> None:
    service._on_request(pk.encode_rrq("f.bin"), client_sock.getsockname(), "127.0.0.1", 0)
    assert len(service.sessions) == 1
    service._sweep_call.cancel()     # the reactor is not running: no timed call unless a test makes one
    service._sweep_call = None
    assert service.reactor.timeout() is None


@pytest.fixture
def client_sock():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    yield s
    s.close()


def test_epoll_reactor_gives_a_waiter_and_a_fake_reactor_does_not(service):
    assert service._transfers.waiter is not None
    assert service._transfers.reactor_fd == service.reactor._poller.fileno()

    class Fake:
        def addReader(self, r):
            pass

    svc = tftp_server.TFTPService(service.live, EventBus(), reactor=Fake())
    assert tftp_server._Transfers(svc).waiter is None      # no hold: one batch loop per call


def test_one_wake_up_serves_a_whole_lock_step_transfer(service, client_sock, monkeypatch):
    monkeypatch.setattr(tftp_server, "HOLD_MAX", 10.0)
    monkeypatch.setattr(tftp_server, "HOLD_BATCHES", 100000)
    events = []
    service.bus.subscribe(events.append)
    client = _Client(client_sock)
    client.start()
    _start(service, client_sock)
    transfers = service._transfers
    deadline = time.monotonic() + 10
    calls = 0
    while service.sessions and time.monotonic() < deadline:
        transfers.doRead()       # what the reactor calls when the transfer set is readable
        calls += 1
    client.join(5)
    assert not service.sessions
    assert client.blocks == BLOCKS + 1
    assert [e["outcome"] for e in events] == [OK]
    # Most ACKs were served inside the same doRead: without the hold, each round trip would be
    # one call (one reactor dispatch). A busy machine (the client thread descheduled past the
    # spin) costs a few more calls, never one per block.
    assert calls < BLOCKS // 10, calls


def test_an_answer_within_spin_max_turns_spinning_on(service, client_sock, monkeypatch):
    monkeypatch.setattr(tftp_server, "HOLD_MAX", 30.0)
    monkeypatch.setattr(tftp_server, "SPIN_MAX", 5.0)
    _start(service, client_sock)
    data, tid = client_sock.recvfrom(2048)
    assert data[:4] == b"\x00\x03\x00\x01"
    transfers = service._transfers
    assert not transfers.spinning
    threading.Timer(0.05, lambda: client_sock.sendto(b"\x00\x04\x00\x01", tid)).start()
    service.reactor.callLater(0.3, lambda: None)      # ends the hold once block 2 is out
    transfers.doRead()
    assert transfers.spinning            # it slept, and the ACK came 0.05 s later: < SPIN_MAX
    data, _ = client_sock.recvfrom(2048)
    assert data[:4] == b"\x00\x03\x00\x02"


def test_hold_returns_when_another_reactor_source_is_ready(service, client_sock, monkeypatch):
    monkeypatch.setattr(tftp_server, "HOLD_MAX", 30.0)
    _start(service, client_sock)        # the client never answers: nothing for the transfer set
    a, b = socket.socketpair()

    class Other:
        def fileno(self):
            return a.fileno()

        def doRead(self):
            pass

        def logPrefix(self):
            return "other"

    other = Other()
    service.reactor.addReader(other)
    b.send(b"x")
    t0 = time.monotonic()
    service._transfers.doRead()
    assert time.monotonic() - t0 < 10          # left at once for the other source, not after 30 s
    assert len(service.sessions) == 1
    service.reactor.removeReader(other)
    a.close()
    b.close()


def test_a_datagram_seen_only_through_the_reactors_set_is_served_not_handed_back(service, client_sock, monkeypatch):
    """The reactor's epoll set holds the transfer set, and poll() checks the two one after the
    other: a datagram landing between the checks shows as the reactor's descriptor alone. The
    hold looks at its own set again before giving the wake-up back (CI saw 24 wake-ups for one
    transfer when it did not)."""
    monkeypatch.setattr(tftp_server, "HOLD_MAX", 30.0)
    _start(service, client_sock)
    data, tid = client_sock.recvfrom(2048)
    assert data[:4] == b"\x00\x03\x00\x01"
    transfers = service._transfers
    real, calls = transfers.waiter, []

    class RacingWaiter:
        def poll(self, timeout=None):
            calls.append(timeout)
            if len(calls) == 1:
                client_sock.sendto(b"\x00\x04\x00\x01", tid)
                select.select([transfers.fileno()], [], [], 5)    # the ACK is in our set now
                return [(transfers.reactor_fd, select.POLLIN)]
            return real.poll(timeout)

    transfers.waiter = RacingWaiter()
    service.reactor.callLater(0.3, lambda: None)      # ends the hold once block 2 is out
    transfers.doRead()
    assert len(calls) >= 2               # it went on holding after the reactor-only answer
    client_sock.settimeout(5)
    data, _ = client_sock.recvfrom(2048)
    assert data[:4] == b"\x00\x03\x00\x02"


def test_hold_ends_at_the_reactors_next_timed_call(service, client_sock, monkeypatch):
    monkeypatch.setattr(tftp_server, "HOLD_MAX", 30.0)
    _start(service, client_sock)
    service.reactor.callLater(0.05, lambda: None)
    t0 = time.monotonic()
    service._transfers.doRead()
    assert time.monotonic() - t0 < 10


def test_quiet_transfers_give_the_reactor_back_and_stop_spinning(service, client_sock, monkeypatch):
    monkeypatch.setattr(tftp_server, "HOLD_MAX", 0.05)
    _start(service, client_sock)
    transfers = service._transfers
    transfers.spinning = True
    wasted = transfers.spins_wasted
    t0 = time.monotonic()
    transfers.doRead()
    assert time.monotonic() - t0 < 10
    assert not transfers.spinning            # a spin that caught nothing turns spinning off
    assert transfers.spins_wasted == wasted + 1


def test_slow_client_is_not_busy_polled(service, client_sock, monkeypatch):
    """A client that answers slower than SPIN_MAX: the reader sleeps for its ACKs (no spin
    turned on by them), and the transfer still completes inside the hold."""
    monkeypatch.setattr(tftp_server, "HOLD_MAX", 10.0)
    monkeypatch.setattr(tftp_server, "HOLD_BATCHES", 100000)
    monkeypatch.setattr(tftp_server, "SPIN_MAX", 0.0005)
    client = _Client(client_sock, delay=0.005)
    client.start()
    _start(service, client_sock)
    transfers = service._transfers
    turned_on = 0
    deadline = time.monotonic() + 20
    while service.sessions and time.monotonic() < deadline and client.blocks < 20:
        transfers.doRead()
        turned_on += transfers.spinning
    client.stop = True
    client.join(5)
    assert client.blocks >= 20
    assert turned_on == 0
