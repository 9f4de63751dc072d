"""The pure TFTP transfer state machine, without sockets: negotiation, lock-step and
windows, loss and duplicates (no Sorcerer's Apprentice), rollover past 65535 blocks,
timeouts, and the EDK2 and iPXE exchanges replayed from the real captures."""

from __future__ import annotations

import os
import random

import pytest

from proxydhcp.tftp import packet as pk
from proxydhcp.tftp.transfer import (CLIENT_ERROR, OK, PROBE, TIMEOUT, Blocks, PrecomputedBlocks,
                                     Transfer, negotiate)
from tests import captures


def data_blocks(datagrams):
    return [pk.decode(d) for d in datagrams]


class Client:
    """A receiver that ACKs the last in-order block at each window end or on a gap (RFC 7440),
    over a network that may drop or duplicate packets in either direction."""

    def __init__(self, transfer: Transfer, windowsize: int = 1, drop_to_client=None,
                 drop_to_server=None, duplicate_to_server=None) -> None:
        self.t = transfer
        self.window = windowsize
        self.drop_to_client = drop_to_client or (lambda n, d: False)
        self.drop_to_server = drop_to_server or (lambda n, d: False)
        self.dup_to_server = duplicate_to_server or (lambda n, d: False)
        self.received = bytearray()
        self.expected = 1           # absolute next block
        self.in_window = 0
        self.data_sent = 0          # DATA datagrams the server emitted
        self.now = 0.0
        self.n_out = 0
        self.n_in = 0
        self.finished = False

    def run(self, first, max_steps=10_000_000) -> None:
        pending = list(first)
        steps = 0
        while not self.t.done and steps < max_steps:
            steps += 1
            if pending:
                to_server = []
                for d in pending:
                    self.n_out += 1
                    if d[:2] == b"\x00\x03":
                        self.data_sent += 1
                    if self.drop_to_client(self.n_out, d):
                        continue
                    to_server.extend(self.on_datagram(d))
                pending = []
                for a in to_server:
                    self.n_in += 1
                    if self.drop_to_server(self.n_in, a):
                        continue
                    copies = 2 if self.dup_to_server(self.n_in, a) else 1
                    for _ in range(copies):
                        pending.extend(self.t.receive(a, self.now))
            else:
                self.now = max(self.now, self.t.timer_deadline())
                pending = self.t.expire(self.now)

    def on_datagram(self, d: bytes) -> list:
        p = pk.decode(d)
        if isinstance(p, pk.OptionAck):
            return [pk.encode_ack(0)] if self.expected == 1 else []
        assert isinstance(p, pk.Data)
        if p.block == self.expected & 0xFFFF:
            self.received += p.payload
            self.expected += 1
            self.in_window += 1
            last = len(p.payload) < self.t.blksize
            if last or self.in_window >= self.window:
                self.in_window = 0
                return [pk.encode_ack(self.expected - 1)]
            return []
        # out of order or a duplicate: ACK the last in-order block
        self.in_window = 0
        return [pk.encode_ack(self.expected - 1)]


def make(data, options=None, **kw):
    kw.setdefault("now", 0.0)
    return Transfer(data, options, **kw)


# -- negotiation -------------------------------------------------------------------------------

def test_no_options_no_oack_512_lockstep():
    t = make(b"x" * 1000)
    first = t.start()
    assert first == [b"\x00\x03\x00\x01" + b"x" * 512]
    assert t.blksize == 512 and t.windowsize == 1 and t.oack == {}


def test_oack_lists_only_asked_options_in_client_order():
    oack, bs, ws, to = negotiate({"windowsize": "8", "unknown": "1", "tsize": "0", "blksize": "1432"}, 1234, 1500)
    assert list(oack.items()) == [("windowsize", "8"), ("tsize", "1234"), ("blksize", "1432")]
    assert (bs, ws, to) == (1432, 8, None)


@pytest.mark.parametrize("asked,mtu,expect", [("1468", 1500, 1468), ("9000", 1500, 1468), ("65464", None, 65464),
                                               ("70000", None, 65464), ("1432", 1400, 1368), ("8", 1500, 8),
                                               ("65464", 65536, 65464)])
def test_blksize_capped_at_mtu_minus_32(asked, mtu, expect):
    oack, bs, _, _ = negotiate({"blksize": asked}, 10, mtu)
    assert bs == expect and oack["blksize"] == str(expect)


@pytest.mark.parametrize("opts", [{"blksize": "7"}, {"blksize": "abc"}, {"timeout": "0"}, {"timeout": "256"},
                                  {"windowsize": "0"}, {"tsize": "-1"}])
def test_bad_option_values_ignored(opts):
    oack, bs, ws, to = negotiate(opts, 10, 1500)
    assert oack == {} and bs == 512 and ws == 1 and to is None


def test_windowsize_capped_and_timeout_used():
    oack, _, ws, to = negotiate({"windowsize": "65535", "timeout": "3"}, 10, 1500)
    assert ws == 64 and oack == {"windowsize": "64", "timeout": "3"} and to == 3.0
    t = make(b"abc", {"timeout": "3"})
    t.start()
    assert t.deadline == 3.0


def test_tsize_answers_the_size_whatever_the_client_sent():
    assert negotiate({"tsize": "0"}, 850528, 1500)[0] == {"tsize": "850528"}


# -- transfers -----------------------------------------------------------------------------

@pytest.mark.parametrize("size,blksize", [(0, 512), (1, 512), (511, 512), (512, 512), (513, 512),
                                          (4096, 1024), (100_000, 1468), (65464 * 2, 65464)])
def test_lockstep_exact_bytes_and_final_block(size, blksize):
    data = os.urandom(size)
    t = make(data, {"blksize": str(blksize)} if blksize != 512 else None)
    c = Client(t)
    c.run(t.start())
    assert t.outcome == OK and bytes(c.received) == data
    assert c.data_sent == size // blksize + 1   # a zero-length block ends a multiple of blksize


def test_multiple_of_blksize_ends_with_empty_block():
    t = make(b"a" * 1024)
    pkts = Blocks(b"a" * 1024, 512).packets(1, 4)
    assert [len(p) for p in pkts] == [516, 516, 4]
    c = Client(t)
    c.run(t.start())
    assert t.outcome == OK and c.data_sent == 3


@pytest.mark.parametrize("windowsize", [2, 4, 16, 64])
def test_windows(windowsize):
    data = os.urandom(200_000)
    t = make(data, {"blksize": "1024", "windowsize": str(windowsize)})
    c = Client(t, windowsize)
    c.run(t.start())
    assert t.outcome == OK and bytes(c.received) == data
    assert c.data_sent == len(data) // 1024 + 1 and t.retransmits == 0
    assert c.n_in == -(-(len(data) // 1024 + 1) // windowsize) + 1   # one ACK per window (+ ACK 0)


def test_window_ack_mid_window_resends_from_the_gap():
    data = bytes(range(256)) * 40   # 10240 bytes, 20 blocks of 512
    t = make(data, {"windowsize": "4"})
    assert t.start() == [pk.encode_oack({"windowsize": "4"})]
    w = t.receive(pk.encode_ack(0), 0.0)
    assert [pk.decode(p).block for p in w] == [1, 2, 3, 4]
    # block 2 lost: the client ACKs 1 on seeing 3
    w = t.receive(pk.encode_ack(1), 0.1)
    assert [pk.decode(p).block for p in w] == [2, 3, 4, 5]
    # the same ACK again (client saw 4 as well): nothing
    assert t.receive(pk.encode_ack(1), 0.1) == []


@pytest.mark.parametrize("windowsize", [1, 8])
def test_loss_both_ways_recovers_on_timer(windowsize):
    rnd = random.Random(7 + windowsize)
    data = os.urandom(300_000)
    t = make(data, {"blksize": "1024", "windowsize": str(windowsize)}, max_retries=50, transfer_timeout=1e9)
    c = Client(t, windowsize, drop_to_client=lambda n, d: rnd.random() < 0.1,
               drop_to_server=lambda n, d: rnd.random() < 0.1)
    c.run(t.start())
    assert t.outcome == OK and bytes(c.received) == data
    assert t.retransmits > 0
    # every DATA sent is either a first send, a timer retransmission, or a go-back-N resend
    # after a loss: never growth driven by duplicate ACKs
    assert c.data_sent <= (len(data) // 1024 + 1) + t.retransmits + windowsize * t.retransmits


def test_no_sorcerers_apprentice():
    """Every ACK duplicated and the first DATA delayed (retransmitted): a server that
    answers duplicate ACKs would send every later block twice."""
    data = os.urandom(512 * 200 + 7)
    t = make(data)
    first = t.start()
    # the client's ACK 1 is slow: our timer fires and we resend block 1
    assert t.expire(t.timer_deadline()) == first and t.retransmits == 1
    c = Client(t, duplicate_to_server=lambda n, d: True)
    c.now = t.deadline
    c.run(first + first)    # the client gets block 1 twice and ACKs both (each ACK duplicated)
    assert t.outcome == OK and bytes(c.received) == data
    assert c.data_sent == 2 + 200      # the two block-1 copies, then each later block once
    assert t.duplicate_acks >= 200


def test_duplicate_ack_sends_nothing_and_stale_acks_ignored():
    t = make(os.urandom(5000))
    t.start()
    assert len(t.receive(pk.encode_ack(1), 0.01)) == 1
    assert t.receive(pk.encode_ack(1), 0.02) == []
    assert t.receive(pk.encode_ack(0), 0.02) == []
    assert t.receive(pk.encode_ack(9), 0.02) == []      # not sent yet
    assert t.duplicate_acks == 3


def test_rollover_past_65535_blocks():
    blksize = 8
    nblocks = 65536 + 300
    data = bytes(random.Random(1).getrandbits(8) for _ in range(blksize * nblocks + 3))
    t = make(data, {"blksize": "8", "windowsize": "16"})
    c = Client(t, 16)
    c.run(t.start())
    assert t.outcome == OK and bytes(c.received) == data
    assert c.data_sent == nblocks + 1
    assert Blocks(data, 8).packets(65535, 65538)[0][:4] == b"\x00\x03\xff\xff"
    assert [p[2:4] for p in Blocks(data, 8).packets(65536, 65538)] == [b"\x00\x00", b"\x00\x01"]


def test_rollover_lockstep_with_loss():
    data = os.urandom(16 * 70000)
    rnd = random.Random(3)
    t = make(data, {"blksize": "16"}, max_retries=20, transfer_timeout=1e9)
    c = Client(t, drop_to_client=lambda n, d: rnd.random() < 0.01, drop_to_server=lambda n, d: rnd.random() < 0.01)
    c.run(t.start())
    assert t.outcome == OK and bytes(c.received) == data


def test_retransmission_backoff_then_timeout():
    t = make(b"x" * 2000, retransmit_timeout=1.0, max_retries=3, transfer_timeout=1000)
    first = t.start()
    times = []
    now = 0.0
    while not t.done:
        now = t.timer_deadline()
        out = t.expire(now)
        if out:
            assert out == first
            times.append(now)
    assert times == [1.0, 3.0, 7.0]          # 1, then 2, then 4 s
    assert t.outcome == TIMEOUT and t.retransmits == 3 and "after 3 retransmissions" in t.error
    assert now == 15.0


def test_progress_resets_backoff():
    t = make(b"x" * 2000, retransmit_timeout=1.0)
    t.start()
    t.expire(1.0)
    t.expire(3.0)
    t.receive(pk.encode_ack(1), 3.5)
    assert t.deadline == 4.5


def test_expire_before_deadline_does_nothing():
    t = make(b"x" * 2000)
    t.start()
    assert t.expire(0.5) == [] and t.retransmits == 0


def test_transfer_timeout_sends_error():
    """A client that keeps ACKing, but too slowly for transfer_timeout."""
    t = make(b"x" * 20000, transfer_timeout=5.0, retransmit_timeout=1.0)
    t.start()
    now = 0.0
    for block in range(1, 6):
        now += 0.9
        assert len(t.receive(pk.encode_ack(block), now)) == 1
    assert t.timer_deadline() == 5.0
    out = t.expire(5.0)
    assert t.outcome == TIMEOUT and "longer than 5 s" in t.error
    assert pk.decode(out[0]).code == 0


def test_oack_retransmitted_on_timer():
    t = make(b"x", {"tsize": "0"})
    first = t.start()
    assert t.expire(1.0) == first and t.retransmits == 1


def test_client_error_and_illegal_packets():
    t = make(b"x" * 5000)
    t.start()
    assert t.receive(pk.encode_error(0, "disk full"), 0.1) == []
    assert t.outcome == CLIENT_ERROR and "disk full" in t.error
    t = make(b"x" * 5000)
    t.start()
    out = t.receive(pk.encode_data(1, b"zz"), 0.1)
    assert pk.decode(out[0]).code == pk.ERR_ILLEGAL and t.outcome == CLIENT_ERROR
    t = make(b"x" * 5000)
    t.start()
    assert t.receive(b"\x00", 0.1) == [] and not t.done     # garbage from the peer: ignored


def test_error8_after_data_started_is_a_client_error_not_a_probe():
    t = make(b"x" * 5000, {"blksize": "1024"})
    t.start()
    t.receive(pk.encode_ack(0), 0.0)
    t.receive(pk.encode_error(8, "late"), 0.1)
    assert t.outcome == CLIENT_ERROR


def test_precomputed_blocks_equal_lazy_blocks():
    data = os.urandom(10_000)
    for bs in (8, 512, 1432, 10_000, 20_000):
        lazy = Blocks(data, bs)
        assert PrecomputedBlocks(data, bs).packets(1, lazy.count + 1) == lazy.packets(1, lazy.count + 1)
        assert b"".join(p[4:] for p in lazy.packets(1, lazy.count + 1)) == data


# -- the real clients, from the captures ----------------------------------------------------

def _tftp(name):
    return [d for d in captures.udp_datagrams(name, ports=None)
            if d.sport not in (67, 68, 4011, 53) and d.dport not in (67, 68, 4011, 53)]


needs_captures = pytest.mark.skipif(not captures.capture_names(), reason="../shared/captures not present")


@needs_captures
@pytest.mark.parametrize("name", ["ovmf-ipxe-efi-rom", "seabios-ipxe-rom"])
def test_ipxe_replayed_byte_for_byte(name):
    """iPXE: RRQ blksize=1432 tsize=0. Replaying its exact packets, our OACK and every DATA
    datagram equal what the reference server sent."""
    ds = _tftp(name)
    rrq = next(d for d in ds if d.dport == 69)
    client = (rrq.src, rrq.sport)
    from_server = [d.payload for d in ds if (d.dst, d.dport) == client]
    from_client = [d.payload for d in ds if (d.src, d.sport) == client and d.dport != 69]
    file_bytes = b"".join(p[4:] for p in from_server if p[:2] == b"\x00\x03")
    req = pk.decode(rrq.payload)
    assert req.options == {"blksize": "1432", "tsize": "0"}
    t = Transfer(file_bytes, req.options, now=0.0, mtu=1500)
    sent = list(t.start())
    for i, ack in enumerate(from_client):
        sent.extend(t.receive(ack, 0.001 * i))
    assert sent == from_server
    assert t.outcome == OK and t.retransmits == 0 and t.size == 65536


@needs_captures
def test_edk2_probe_then_windowed_transfer():
    """EDK2: RRQ tsize+blksize+windowsize, takes tsize from our OACK and answers ERROR 8
    (a probe, not a failure); then RRQ blksize=1468 windowsize=4 for the real transfer."""
    ds = _tftp("ovmf-edk2-pxe-then-ipxe-efi")
    rrqs = [d for d in ds if d.dport == 69 and pk.decode(d.payload).filename == "ipxe.efi"]
    probe_rrq, real_rrq = rrqs
    probe_client = (probe_rrq.src, probe_rrq.sport)
    real_client = (real_rrq.src, real_rrq.sport)
    ipxe_efi = b"".join(d.payload[4:] for d in ds if (d.dst, d.dport) == real_client and d.payload[:2] == b"\x00\x03")
    assert len(ipxe_efi) == 850528

    req = pk.decode(probe_rrq.payload)
    t = Transfer(ipxe_efi, req.options, now=0.0, mtu=1500)
    oack = pk.decode(t.start()[0])
    captured_oack = pk.decode(next(d.payload for d in ds if (d.dst, d.dport) == probe_client))
    assert oack.options["tsize"] == captured_oack.options["tsize"] == "850528"
    assert oack.options["blksize"] == captured_oack.options["blksize"] == "1468"
    assert oack.options["windowsize"] == "4"
    error8 = next(d.payload for d in ds if (d.src, d.sport) == probe_client and d.dport != 69)
    assert t.receive(error8, 0.006) == []
    assert t.outcome == PROBE and t.done and "User aborted" in t.error

    req = pk.decode(real_rrq.payload)
    assert req.options == {"blksize": "1468", "windowsize": "4"}
    t = Transfer(ipxe_efi, req.options, now=0.0, mtu=1500)
    assert pk.decode(t.start()[0]).options == {"blksize": "1468", "windowsize": "4"}
    # the captured ACK 0, then an EDK2-like client acking each window of 4
    ack0 = next(d.payload for d in ds if (d.src, d.sport) == real_client and d.dport != 69)
    assert ack0 == b"\x00\x04\x00\x00"
    c = Client(t, 4)
    c.on_datagram(pk.encode_oack(t.oack))
    c.run(t.receive(ack0, 0.0))
    assert t.outcome == OK and bytes(c.received) == ipxe_efi and c.data_sent == 580


def test_ack_method_is_what_receive_does_with_the_ack_bytes():
    """Transfer.ack(block) (the server's decoded fast path) and receive(ACK datagram) agree,
    packet for packet, through a whole windowed transfer with duplicates and stale ACKs."""
    data = os.urandom(1468 * 40 + 77)
    a = Transfer(data, {"blksize": "1468", "windowsize": "4"}, now=0.0)
    b = Transfer(data, {"blksize": "1468", "windowsize": "4"}, now=0.0)
    assert a.start() == b.start()
    for block in [0, 4, 4, 2, 8, 12, 12, 16, 20, 24, 28, 32, 36, 40, 41]:
        assert a.ack(block, 1.0) == b.receive(pk.encode_ack(block), 1.0)
        assert (a.done, a.outcome, a.blocks_acked) == (b.done, b.outcome, b.blocks_acked)
    assert a.outcome == OK and a.duplicate_acks == b.duplicate_acks == 3   # 4 again, stale 2, 12 again


def test_a_repeated_rrq_restarts_only_a_transfer_whose_client_went_quiet():
    """Before any DATA is acknowledged a repeated RRQ is the first one retransmitted; while
    ACKs arrive it is a late copy (queued behind the first on a loaded server); only after a
    retransmission interval without progress does it mean the client started over."""
    t = Transfer(os.urandom(5000), {"blksize": "512"}, now=10.0, retransmit_timeout=1.0)
    t.start()
    t.ack(0, 10.1)                     # the OACK acknowledged: DATA 1 goes out
    assert not t.restarted_by(10.2) and not t.restarted_by(30.0)   # no DATA acknowledged yet
    t.ack(1, 10.3)
    t.ack(2, 10.4)
    assert not t.restarted_by(10.5)    # ACKs are arriving: a late copy of the RRQ
    assert not t.restarted_by(11.3)    # still within one retransmission interval
    assert t.restarted_by(11.4)        # quiet for 1 s: the client starts over
