"""One TFTP read transfer as a pure state machine (no sockets, no clock, no files).

Owns option negotiation (RFC 2347 OACK, 2348 blksize, 2349 tsize/timeout, 7440
windowsize), windowed sending with block-number rollover past 65535, retransmission on a
timer with exponential backoff (never on a duplicate ACK: RFC 1123 4.2.3.1, the
Sorcerer's Apprentice), and the outcome of the transfer. It is fed the packets that came
from the client and the timer expiries, each with the current time, and returns the
datagrams to send. The caller (proxydhcp.tftp.server) owns sockets and timers: it sends
what is returned and calls `expire(now)` once `now >= timer_deadline()`.

Blocks are counted absolutely inside: block 0 is the OACK (when there is one), block n
carries bytes [(n-1)*blksize, n*blksize). There are always size // blksize + 1 blocks, so
a size that is a multiple of blksize ends with a zero-length block (RFC 1350).
"""

from __future__ import annotations

from proxydhcp.tftp import packet as pk

# Outcomes: a bounded set (metric label values).
OK = "ok"                       # every block acknowledged
PROBE = "probe"                 # the client refused our OACK with ERROR 8 (EDK2's tsize probe)
NOT_FOUND = "not_found"         # no such file (ERROR 1)
ACCESS_DENIED = "access_denied"  # path refused by confinement or permissions (ERROR 2)
BAD_REQUEST = "bad_request"     # WRQ, unsupported mode, malformed request (ERROR 4/2)
REFUSED_LIMIT = "refused_limit"  # over max_transfers or max_transfers_per_client
TIMEOUT = "timeout"             # no ACK after max_retries, or over transfer_timeout
CLIENT_ERROR = "client_error"   # the client sent an ERROR (other than the probe) or nonsense
CLIENT_GONE = "client_gone"     # ICMP port unreachable from the client
ABORTED = "aborted"             # the server stopped, or the client started over
OUTCOMES = (OK, PROBE, NOT_FOUND, ACCESS_DENIED, BAD_REQUEST, REFUSED_LIMIT, TIMEOUT,
            CLIENT_ERROR, CLIENT_GONE, ABORTED)

DEFAULT_BLKSIZE = 512
MIN_BLKSIZE, MAX_BLKSIZE = 8, 65464     # RFC 2348
MAX_WINDOWSIZE = 64                     # our cap (RFC 7440 allows 1..65535; reply <= request)
MAX_RTO = 10.0                          # backoff ceiling, seconds
IP_UDP_TFTP_HEADERS = 32                # 20 IPv4 + 8 UDP + 4 TFTP

_NOTHING: list = []


class Blocks:
    """DATA packets of one content at one blksize, built on demand from memoryview slices."""

    def __init__(self, data, blksize: int) -> None:
        self.view = memoryview(data).toreadonly()
        self.size = len(self.view)
        self.blksize = blksize
        self.count = self.size // blksize + 1   # last block short, maybe empty

    def packets(self, start: int, end: int) -> list:
        """DATA packets for absolute blocks start..end-1 (1 <= start)."""
        view, bs, hdr = self.view, self.blksize, pk.DATA_HEADERS
        if end - start == 1:                    # lock-step: no comprehension frame
            return [hdr[start & 0xFFFF] + view[(start - 1) * bs:start * bs]]
        return [hdr[n & 0xFFFF] + view[(n - 1) * bs:n * bs] for n in range(start, end)]


class PrecomputedBlocks(Blocks):
    """Every DATA packet built once (for small files served many times, e.g. in a storm):
    sending a window is one list slice."""

    def __init__(self, data, blksize: int) -> None:
        super().__init__(data, blksize)
        self._all = [b""] + Blocks.packets(self, 1, self.count + 1)

    def packets(self, start: int, end: int) -> list:
        return self._all[start:end]

    @property
    def nbytes(self) -> int:
        return self.size + 37 * self.count


def negotiate(options: dict, size: int, mtu: int | None = None) -> tuple[dict, int, int, float | None]:
    """Which of the client's options we accept: (oack options, blksize, windowsize, timeout).
    The OACK lists only options the client asked for and we understood, in its order;
    an unusable value is ignored (no OACK entry) rather than refused."""
    cap = MAX_BLKSIZE if mtu is None else max(MIN_BLKSIZE, min(MAX_BLKSIZE, mtu - IP_UDP_TFTP_HEADERS))
    oack: dict = {}
    blksize, windowsize, timeout = DEFAULT_BLKSIZE, 1, None
    for name, value in options.items():
        try:
            n = int(value.strip(), 10)
        except (ValueError, AttributeError):
            continue
        if name == "blksize" and n >= MIN_BLKSIZE:
            blksize = min(n, cap)
            oack[name] = str(blksize)
        elif name == "tsize" and n >= 0:
            oack[name] = str(size)
        elif name == "timeout" and 1 <= n <= 255:
            timeout = float(n)
            oack[name] = str(n)
        elif name == "windowsize" and n >= 1:
            windowsize = min(n, MAX_WINDOWSIZE)
            oack[name] = str(windowsize)
    return oack, blksize, windowsize, timeout


class Transfer:
    """A read transfer of `data` to one client. Create it, send what `start` returns, then
    feed `receive(datagram, now)` and `expire(now)`; `outcome` is set once it is over."""

    def __init__(self, data, options: dict | None = None, *, now: float, mtu: int | None = None,
                 retransmit_timeout: float = 1.0, max_retries: int = 5,
                 transfer_timeout: float = 120.0, blocks_for=None) -> None:
        size = len(data)
        self.size = size
        self.requested = dict(options or {})
        self.oack, self.blksize, self.windowsize, client_timeout = negotiate(self.requested, size, mtu)
        self.blocks = (blocks_for or (lambda bs: Blocks(data, bs)))(self.blksize)
        self._packets = self.blocks.packets
        self._last = self.blocks.count          # absolute number of the last block
        self._window = self.windowsize
        self._rto0 = client_timeout or retransmit_timeout
        self._rto = self._rto0
        self._max_retries = max_retries
        self._retries = 0
        self._oack_packet = pk.encode_oack(self.oack) if self.oack else None
        # acked = highest block acknowledged; sent = highest block sent. OACK is block 0.
        self._acked = -1 if self._oack_packet else 0
        self._sent = self._acked
        self.started = now
        self.last_progress = now                # when the client last acknowledged new data
        self.ended: float | None = None
        self.expires = now + transfer_timeout
        self.deadline = now + self._rto
        self.transfer_timeout = transfer_timeout
        self.retransmits = 0
        self.duplicate_acks = 0
        self.outcome: str | None = None
        self.error: str | None = None
        self.done = False

    # -- what the caller needs -------------------------------------------------------------
    def timer_deadline(self) -> float:
        return min(self.deadline, self.expires)

    @property
    def blocks_acked(self) -> int:
        return max(self._acked, 0)

    @property
    def bytes_acked(self) -> int:
        return min(self.blocks_acked * self.blksize, self.size)

    @property
    def progressed(self) -> bool:
        """True once the client acknowledged any DATA."""
        return self._acked > 0

    def restarted_by(self, now: float) -> bool:
        """Whether the client's repeated RRQ (same address, port, file), arriving now, asks
        for a fresh transfer. Before any DATA is acknowledged it is a retransmission of the
        first RRQ. Once DATA flows it is a restart only if the client has gone quiet for a
        retransmission interval: an RRQ copy that queued behind the first on a loaded server
        can arrive after the client's ACKs, and restarting then would abort a transfer the
        client is happily following."""
        return self._acked > 0 and now - self.last_progress >= self._rto

    @property
    def duration(self) -> float:
        return (self.ended if self.ended is not None else self.started) - self.started

    def start(self) -> list:
        """The first datagrams: the OACK, or the first window of DATA."""
        if self._oack_packet:
            self._sent = 0
            return [self._oack_packet]
        return self._send_window(self.started)

    def _send_window(self, now: float) -> list:
        start = self._acked + 1
        end = start + self._window
        if end > self._last + 1:
            end = self._last + 1
        self._sent = end - 1
        self.deadline = now + self._rto
        return self.blocks.packets(start, end)

    def _outstanding(self) -> list:
        start = self._acked + 1
        out = []
        if start == 0:
            out.append(self._oack_packet)
            start = 1
        if self._sent >= start:
            out.extend(self.blocks.packets(start, self._sent + 1))
        return out

    def _finish(self, outcome: str, now: float, error: str | None = None) -> None:
        self.done = True
        self.outcome = outcome
        self.error = error
        self.ended = now

    # -- events ------------------------------------------------------------------------------
    def receive(self, data: bytes, now: float) -> list:
        """A datagram from the client's address and port. Returns datagrams to send."""
        if self.done:
            return _NOTHING
        if len(data) >= 4 and data[1] == 4 and data[0] == 0:          # ACK: the hot path
            return self.ack((data[2] << 8) | data[3], now)
        return self._not_ack(data, now)

    def ack(self, block: int, now: float) -> list:
        """An ACK of `block` (its 16-bit number on the wire) from the client: what `receive`
        does with an ACK, for a caller that decoded the 4 bytes itself. Returns datagrams."""
        if self.done:
            return _NOTHING
        acked = self._acked
        delta = (block - acked) & 0xFFFF
        if delta == 0 or delta > self._sent - acked:
            # A duplicate (or stale) ACK: never answered with DATA, or a lost packet
            # would double every packet after it (Sorcerer's Apprentice).
            self.duplicate_acks += 1
            return _NOTHING
        acked += delta
        self._acked = acked
        last = self._last
        if acked >= last:
            self._finish(OK, now)
            return _NOTHING
        self.last_progress = now
        if self._retries:
            self._retries = 0
            self._rto = self._rto0
        # _send_window, inlined: this runs once per ACK
        end = acked + 1 + self._window
        if end > last + 1:
            end = last + 1
        self._sent = end - 1
        self.deadline = now + self._rto
        return self._packets(acked + 1, end)

    def _not_ack(self, data: bytes, now: float) -> list:
        try:
            p = pk.decode(data)
        except pk.TFTPPacketError:
            return _NOTHING  # line noise from the right peer: the timer covers any loss
        if isinstance(p, pk.Error):
            if p.code == pk.ERR_OPTION and self._acked < 0:
                self._finish(PROBE, now, f"client refused the OACK: {p.message}".strip())
            else:
                self._finish(CLIENT_ERROR, now, f"client ERROR {p.code}: {p.message}")
            return _NOTHING
        name = pk.OPCODE_NAMES[p.opcode] if isinstance(p, pk.Request) else type(p).__name__
        self._finish(CLIENT_ERROR, now, f"unexpected {name} during a read transfer")
        return [pk.encode_error(pk.ERR_ILLEGAL, "illegal TFTP operation: expected ACK")]

    def expire(self, now: float) -> list:
        """The timer fired (now >= timer_deadline()): retransmit, or give up."""
        if self.done:
            return _NOTHING
        if now >= self.expires:
            self._finish(TIMEOUT, now, f"transfer took longer than {self.transfer_timeout:g} s")
            return [pk.encode_error(pk.ERR_UNDEFINED, "transfer timed out")]
        if now < self.deadline:
            return _NOTHING
        if self._retries >= self._max_retries:
            self._finish(TIMEOUT, now, f"no ACK for block {self._acked + 1} after {self._retries} retransmissions")
            return _NOTHING
        self._retries += 1
        self._rto = min(self._rto * 2, MAX_RTO)
        self.deadline = now + self._rto
        out = self._outstanding()
        self.retransmits += len(out)
        return out

    def abort(self, outcome: str, now: float, error: str) -> None:
        """The caller ends the transfer (server stopping, client gone, restart)."""
        if not self.done:
            self._finish(outcome, now, error)
