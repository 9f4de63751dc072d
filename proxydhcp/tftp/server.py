"""The TFTP service: moves datagrams between sockets and proxydhcp.tftp.transfer.

Owns the sockets, the timer sweep, the limits and the events; no protocol decision (that
is transfer.Transfer) and no path rule (that is files.resolve).

- Requests arrive on tftp.port (IP_PKTINFO tells which local address and interface).
  Refusals (missing file, access violation, WRQ, over a limit) are answered from there.
- Each transfer gets its own port (its TID) on the address the client asked, with two
  sockets in one SO_REUSEPORT group: one connect()ed to the client, which carries the
  transfer (the kernel matches the client's packets to it, a send needs no address and
  no route lookup: less work per packet in the kernel and in Python), and one unconnected,
  which gets only the packets of other peers, so a stray peer is answered with ERROR 5
  from the transfer's port while the transfer goes on. IP_RECVERR on the connected socket
  reports an ICMP port-unreachable from the client, so a client that went away ends its
  transfer at once. SO_REUSEPORT needs the same user for every socket on the port, so no
  other user's program can bind it.
- A client that repeats its RRQ (same address, port and file) before acknowledging any
  DATA, or while its ACKs still arrive, is a retransmission (or a late copy), not a new
  transfer: it is ignored (our own timer resends). Only a client that went quiet for a
  retransmission interval restarts its transfer with a repeated RRQ.
  Servers that start a second transfer here flood dead ports in a storm (PROTOCOL.md 5).
- A window of several DATA packets (windowsize, or a retransmission) leaves in one
  sendmsg with UDP_SEGMENT (UDP GSO, Linux 4.18+): the kernel cuts it into the datagrams,
  and a NIC or veth carries it as one until it must be cut. Where the kernel or the route
  refuses it, the packets go one by one.
- One timer sweep (every SWEEP_INTERVAL while transfers run) fires retransmissions and
  timeouts, so the per-packet path sets a number instead of rescheduling a timer.
- All transfer sockets sit in one epoll set that the reactor watches as one descriptor
  (_Transfers). With Twisted's epoll reactor a wake-up is held for up to HOLD_MAX (never
  past the reactor's next timed call, and given back at once when anything else the
  reactor watches is ready), serving datagrams as they come; while the clients' answers
  come back within SPIN_MAX it busy-polls instead of sleeping, which halves a lock-step
  round trip on a fast link. A spin that catches nothing turns spinning off until a
  wake-up shows that one would have paid (the idea of the kernel's haltpoll).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import resource
import select
import socket
import struct
import time

from twisted.application.service import Service

from proxydhcp import events, metrics
from proxydhcp.config import LiveConfig
from proxydhcp.net import receive_buffer, udp_drops
from proxydhcp.events import EventBus
from proxydhcp.tftp import files
from proxydhcp.tftp import packet as pk
from proxydhcp.tftp.transfer import (ABORTED, BAD_REQUEST, CLIENT_GONE, OK, REFUSED_LIMIT,
                                     Transfer)

log = logging.getLogger("proxydhcp.tftp")

IP_PKTINFO = 8
IP_RECVERR = 11
UDP_SEGMENT = 103                        # linux/udp.h; not in Python's socket module
UDP_MAX_SEGMENTS = 64
GSO_MAX_BYTES = 65000                    # the whole window must fit in one IP datagram
SIOCGIFMTU = 0x8921
SWEEP_INTERVAL = 0.05
LISTEN_BATCH = 64
HOLD_MAX = 0.002                         # a reactor wake-up serves transfers this long at most
HOLD_BATCHES = 256                       # ... and at most this many batches of datagrams
SPIN_MAX = 0.0002                        # busy-poll this long for the next datagram (see _Transfers)
RCVBUF = 4 << 20
_PKTINFO = struct.Struct("=I4s4s")
_GSO_SIZE = struct.Struct("=H")
_RECV_BUF = bytearray(2048)          # one reader (the reactor thread): a datagram at a time
_EPOLLIN, _EPOLLERR = select.EPOLLIN, select.EPOLLERR
_CMSG_SPACE = socket.CMSG_SPACE(_PKTINFO.size)

_outcome_counters: dict = {}
_duration_hists: dict = {}


def _count_outcome(outcome: str) -> None:
    c = _outcome_counters.get(outcome)
    if c is None:
        c = _outcome_counters[outcome] = metrics.TFTP_TRANSFERS.labels(outcome)
    c.inc()


# Datagrams that start or move no transfer (proxydhcp_tftp_packets_dropped_total), by where
# they arrived and why; refused requests are counted by outcome in TFTP_TRANSFERS instead.
REQUEST, TRANSFER = "request", "transfer"
MALFORMED = "malformed"                  # not a TFTP packet (pk.decode refused it)
NOT_REQUEST = "not_request"              # DATA/ACK/ERROR/OACK on the request port
DUPLICATE_REQUEST = "duplicate_request"  # the client repeated its RRQ: same transfer
UNKNOWN_TID = "unknown_tid"              # from another address/port than the transfer's client
ILLEGAL_OPERATION = "illegal_operation"  # a request or DATA from the client during its read transfer
INTERNAL_ERROR = "internal_error"        # handling raised (logged with its traceback)
DROP_REASONS = {REQUEST: (MALFORMED, NOT_REQUEST, DUPLICATE_REQUEST, INTERNAL_ERROR),
                TRANSFER: (MALFORMED, UNKNOWN_TID, ILLEGAL_OPERATION)}
_drop_counters: dict = {}


def _count_drop(port: str, reason: str) -> None:
    c = _drop_counters.get((port, reason))
    if c is None:
        c = _drop_counters[(port, reason)] = metrics.TFTP_DROPPED.labels(port, reason)
    c.inc()


for _port, _reasons in DROP_REASONS.items():     # every series at 0 before it moves
    for _reason in _reasons:
        metrics.TFTP_DROPPED.labels(_port, _reason)


def _count_not_ack(data: bytes) -> None:
    """A datagram from the client that is not an ACK (the slow path only)."""
    try:
        p = pk.decode(data)
    except pk.TFTPPacketError:
        _count_drop(TRANSFER, MALFORMED)
        return
    if not isinstance(p, pk.Error):
        _count_drop(TRANSFER, ILLEGAL_OPERATION)


def _observe_duration(label: str, seconds: float) -> None:
    h = _duration_hists.get(label)
    if h is None:
        h = _duration_hists[label] = metrics.TFTP_TRANSFER_DURATION.labels(label)
    h.observe(seconds)


class _Listener:
    """tftp.port: reads requests in batches and hands them to the service."""

    def __init__(self, service: "TFTPService", sock: socket.socket) -> None:
        self.service, self.sock = service, sock

    def fileno(self) -> int:
        return self.sock.fileno()

    def doRead(self) -> None:
        recvmsg, handle = self.sock.recvmsg, self.service._on_request
        for _ in range(LISTEN_BATCH):
            try:
                data, anc, _flags, addr = recvmsg(2048, _CMSG_SPACE)
            except BlockingIOError:
                return
            except OSError as exc:      # ICMP noise from an earlier refusal, or similar
                log.debug("tftp listener: receive failed: %s", exc)
                continue
            local, ifindex = None, 0
            for level, kind, value in anc:
                if level == socket.IPPROTO_IP and kind == IP_PKTINFO:
                    ifindex, spec_dst, _dst = _PKTINFO.unpack(value[:_PKTINFO.size])
                    local = socket.inet_ntoa(spec_dst)
            try:
                handle(data, addr, local, ifindex)
            except Exception:  # one bad request must never stop the listener
                _count_drop(REQUEST, INTERNAL_ERROR)
                log.exception("tftp: request from %s:%s failed", *addr)

    def connectionLost(self, reason) -> None:
        pass

    def logPrefix(self) -> str:
        return "tftp-listener"


def _transfer_sockets(local: str, peer) -> tuple[socket.socket, socket.socket]:
    """(connected, stray) sockets of a new transfer on one ephemeral port of `local`.
    The stray socket binds first without SO_REUSEPORT, so the kernel picks a port nobody
    uses; SO_REUSEPORT set after the bind then lets the connected socket join it."""
    stray = sock = None
    try:
        stray = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        stray.bind((local, 0))
        stray.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        stray.setblocking(False)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
        sock.bind(stray.getsockname())
        sock.connect(peer)
        sock.setblocking(False)
    except OSError:
        for s in (sock, stray):
            if s is not None:
                s.close()
        raise
    return sock, stray


class _Session:
    """One transfer: its sockets (its TID; see _transfer_sockets) and its state machine."""

    __slots__ = ("service", "sock", "stray", "peer", "transfer", "client", "file", "label", "key", "ended",
                 "fd", "stray_fd", "gso", "_recv_into", "_send1", "_ack")

    def __init__(self, service, sock, stray, peer, transfer, file, label, key) -> None:
        self.service, self.sock, self.stray, self.peer, self.transfer = service, sock, stray, peer, transfer
        self.client = f"{peer[0]}:{peer[1]}"
        self.file, self.label, self.key = file, label, key
        self.ended = False
        self.fd = sock.fileno()
        self.stray_fd = stray.fileno()
        self.gso = service.gso
        # bound once: the per-datagram path (handle) makes no attribute lookups for them
        self._recv_into, self._send1, self._ack = sock.recv_into, sock.send, transfer.ack

    def send(self, datagrams) -> None:
        send = self.sock.send
        try:
            if len(datagrams) > 1 and self.gso and self._send_gso(datagrams):
                return
            for d in datagrams:
                send(d)
        except BlockingIOError:
            pass                          # socket buffer full: as if lost, the timer resends
        except ConnectionRefusedError:
            self._icmp_error()
        except OSError as exc:
            self.service._end(self, ABORTED, f"send failed: {exc.strerror}")

    def _send_gso(self, datagrams) -> bool:
        """Several datagrams of one size (the last may be shorter) in one sendmsg. False if
        they do not fit one GSO send or the kernel refused it (then not tried again)."""
        size = len(datagrams[0])
        if (len(datagrams) > UDP_MAX_SEGMENTS or len(datagrams[-1]) > size
                or size * len(datagrams) > GSO_MAX_BYTES):
            return False
        for d in datagrams[1:-1]:
            if len(d) != size:
                return False
        try:
            self.sock.sendmsg(datagrams, [(socket.SOL_UDP, UDP_SEGMENT, _GSO_SIZE.pack(size))])
        except (BlockingIOError, ConnectionRefusedError):
            raise
        except OSError as exc:
            if exc.errno in (errno.ENOPROTOOPT, errno.EOPNOTSUPP):
                self.service.gso = False        # this kernel has no UDP GSO
            self.gso = False                    # EIO/EINVAL: not on this route (no checksum offload, MTU)
            log.debug("tftp %s: UDP GSO refused (%s), sending packets one by one", self.client, exc.strerror)
            return False
        return True

    def handle(self, now: float) -> None:
        """One datagram from the client is waiting on the connected socket. It is read into
        one shared buffer; an ACK (almost every datagram) goes to the transfer as a number,
        without a bytes object for it."""
        buf = _RECV_BUF
        try:
            n = self._recv_into(buf)
        except BlockingIOError:
            return
        except ConnectionRefusedError:
            self._icmp_error()
            return
        except OSError as exc:
            self.service._end(self, ABORTED, f"receive failed: {exc.strerror}")
            return
        if n >= 4 and buf[1] == 4 and buf[0] == 0:
            out = self._ack((buf[2] << 8) | buf[3], now)
            if out:
                if len(out) == 1:           # lock-step: _emit's common case, inlined
                    try:
                        self._send1(out[0])
                        return
                    except BlockingIOError:
                        return              # socket buffer full: as if lost, the timer resends
                    except ConnectionRefusedError:
                        self._icmp_error()
                        return
                    except OSError:
                        pass                # _emit sorts out which error
                self._emit(out)
            elif self.transfer.done and not self.ended:
                self.service._end(self)
        else:
            self._packet(bytes(buf[:n]), now)

    def handle_stray(self, now: float) -> None:
        """A datagram on the unconnected socket: another peer's (or, in the instant before
        connect(), the client's own)."""
        try:
            data, addr = self.stray.recvfrom(2048)
        except OSError:
            return
        if addr == self.peer:
            self._packet(data, now)
            return
        _count_drop(TRANSFER, UNKNOWN_TID)
        self._stray(addr)

    def _packet(self, data: bytes, now: float) -> None:
        if not (len(data) >= 4 and data[1] == 4 and data[0] == 0):
            _count_not_ack(data)
        self._emit(self.transfer.receive(data, now))

    def _emit(self, out: list) -> None:
        """Send what the transfer returned; end the session if the transfer is over."""
        transfer = self.transfer
        if out:
            if len(out) == 1:
                try:
                    self.sock.send(out[0])
                except BlockingIOError:
                    pass
                except ConnectionRefusedError:
                    self._icmp_error()
                except OSError:
                    self.send(out)      # the slow path sorts out which error
            else:
                self.send(out)
        if transfer.done and not self.ended:
            self.service._end(self)

    def _stray(self, addr) -> None:
        """RFC 1350: a packet from another TID gets ERROR 5; the transfer goes on."""
        try:
            self.stray.sendto(pk.encode_error(pk.ERR_UNKNOWN_TID, "unknown transfer ID"), addr)
        except OSError:
            pass

    def _icmp_error(self) -> None:
        """The kernel reported an ICMP error: end the transfer if it came from our client."""
        offenders = set()
        while True:
            try:
                _data, _anc, _flags, addr = self.sock.recvmsg(64, 512, socket.MSG_ERRQUEUE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            offenders.add(addr)
        if self.peer in offenders or not offenders:
            self.service._end(self, CLIENT_GONE, "ICMP port unreachable from the client")



class _Transfers:
    """Every transfer socket in one epoll set, watched by the reactor as one descriptor:
    a wake-up serves all the transfers that have a datagram waiting, without the
    reactor's per-descriptor dispatch (most of the per-packet cost in a storm).

    With Twisted's epoll reactor, doRead also holds on to the wake-up for a short while
    (HOLD_MAX, and never past the reactor's next timed call): it waits in one poll() on
    both its own epoll set and the reactor's, serving transfer datagrams as they arrive,
    and returns to the reactor as soon as anything else the reactor watches is ready (the
    request port, DHCP, a thread's wake-up) or nothing came within the hold. A lock-step
    transfer then costs the reactor one dispatch per ~HOLD_MAX instead of one per
    round trip (the dispatch, with its logging context, was most of the Python time of
    a round trip)."""

    def __init__(self, service: "TFTPService") -> None:
        self.service = service
        self.epoll = select.epoll()
        self.waiter, self.reactor_fd = None, -1
        self.spinning = False       # busy-poll before sleeping (see doRead)
        self.spins_wasted = 0
        poller = getattr(service.reactor, "_poller", None)    # EPollReactor's select.epoll
        if isinstance(poller, select.epoll):
            self.reactor_fd = poller.fileno()
            self.waiter = select.poll()
            self.waiter.register(self.epoll.fileno(), select.POLLIN)
            self.waiter.register(self.reactor_fd, select.POLLIN)

    def fileno(self) -> int:
        return self.epoll.fileno()

    def logPrefix(self) -> str:
        return "tftp-transfers"

    def add(self, session: _Session) -> None:
        self.epoll.register(session.fd, select.EPOLLIN)
        self.epoll.register(session.stray_fd, select.EPOLLIN)

    def remove(self, session: _Session) -> None:
        for fd in (session.fd, session.stray_fd):
            try:
                self.epoll.unregister(fd)
            except (OSError, ValueError):
                pass

    def doRead(self) -> None:
        service = self.service
        sessions, strays, poll = service.sessions, service._strays, self.epoll.poll
        monotonic = time.monotonic
        waiter = self.waiter
        epollin = _EPOLLIN
        until = None
        entered = monotonic()
        # Poll again after each batch: in a storm the ACKs for what was just sent are often
        # back already, and one more poll costs less than a reactor wake-up. Bounded by
        # HOLD_MAX even when datagrams never stop coming, so the reactor's other work goes on.
        for _ in range(HOLD_BATCHES):
            ready = poll(0, 512)
            if ready:
                now = monotonic()
                for fd, ev in ready:
                    session = sessions.get(fd)
                    if session is not None:
                        if ev & epollin:
                            session.handle(now)
                        elif ev & _EPOLLERR:
                            session._icmp_error()      # ICMP error queued (IP_RECVERR), no data
                    else:
                        session = strays.get(fd)
                        if session is not None:
                            session.handle_stray(now)
                if now - entered >= HOLD_MAX:
                    return                             # busy all along: the reactor's turn now
                continue
            if waiter is None or not sessions:
                return
            now = monotonic()
            if until is None:
                until = now + HOLD_MAX
                timer = service.reactor.timeout()
                if timer is not None and now + timer < until:
                    until = now + timer
            if now >= until:
                return
            got = None
            if self.spinning:
                # Busy-poll (one poll() on both epoll sets, no sleep) while the client's
                # next datagram is expected within SPIN_MAX: on a fast link a lock-step
                # round trip is then not lengthened by going to sleep and being woken.
                spin_end = now + SPIN_MAX
                if spin_end > until:
                    spin_end = until
                wpoll = waiter.poll
                while True:
                    got = wpoll(0)
                    if got or monotonic() >= spin_end:
                        break
                if not got:
                    if spin_end == until:
                        return                     # the hold is over: back to the reactor
                    self.spinning = False          # wasted: no more spins until one would pay
                    self.spins_wasted += 1
            if not got:
                left = until - monotonic()
                if left <= 0:
                    return
                got = waiter.poll(left * 1000.0)
                if not got:
                    return                         # quiet: back to the reactor (its timers)
                if monotonic() - now < SPIN_MAX:
                    self.spinning = True           # a spin would have caught this one
            if len(got) == 1 and got[0][0] == self.reactor_fd and not poll(0, 1):
                # Something else is ready: the reactor's turn. (The reactor's set holds ours,
                # so a datagram that lands between poll()'s checks of the two descriptors
                # shows as the reactor's alone: hence the second look at ours.)
                return

    def connectionLost(self, reason) -> None:
        pass

    def close(self) -> None:
        self.epoll.close()


class TFTPService(Service):
    """Read-only TFTP on cfg.tftp.port. `port` is the bound port once started."""

    name = "tftp"

    def __init__(self, live: LiveConfig, bus: EventBus, address: str = "0.0.0.0", reactor=None) -> None:
        self.live, self.bus, self.address = live, bus, address
        if reactor is None:
            from twisted.internet import reactor as default_reactor
            reactor = default_reactor
        self.reactor = reactor
        self.port: int | None = None
        self.cache = files.ContentCache()
        self.sessions: dict[int, _Session] = {}       # by the connected socket's fd
        self.gso = True                               # until the kernel says it has no UDP GSO
        self._strays: dict[int, _Session] = {}        # by the stray socket's fd
        self._by_key: dict[tuple, _Session] = {}
        self._per_client: dict[str, int] = {}
        self._listener: _Listener | None = None
        self._transfers: _Transfers | None = None
        self._sweep_call = None
        self._mtus: dict[int, tuple[int, float]] = {}
        self.deduplicated = 0

    # -- lifecycle ---------------------------------------------------------------------------
    def startService(self) -> None:
        cfg = self.live.current.tftp
        root = cfg.root
        if not os.path.isdir(root) or not os.access(root, os.R_OK | os.X_OK):
            raise _startup_error(f"tftp.root {root!r} is not a readable directory: create it, fix its "
                                 f"permissions, or set tftp.root (or tftp.enabled: false)")
        _ensure_fd_limit(cfg.max_transfers)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            receive_buffer(sock, RCVBUF)
            sock.bind((self.address, cfg.port))
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise _startup_error(f"UDP port {cfg.port} (tftp.port) is in use by another program "
                                     f"(another TFTP server?): stop it, or set tftp.port or "
                                     f"tftp.enabled: false") from None
            if exc.errno == errno.EACCES:
                raise _startup_error(f"cannot bind UDP port {cfg.port} (tftp.port): run as root or grant "
                                     f"CAP_NET_BIND_SERVICE") from None
            raise _startup_error(f"cannot bind UDP {self.address}:{cfg.port} (tftp.port): {exc.strerror}") from None
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        self._listener = _Listener(self, sock)
        self.reactor.addReader(self._listener)
        metrics.UDP_SOCKET_DROPS.sources[(str(self.port),)] = lambda: udp_drops(sock)
        self._transfers = _Transfers(self)
        self.reactor.addReader(self._transfers)
        for name in files.boot_files(self.live.current):   # their duration series exist at 0 (metrics.py)
            metrics.TFTP_TRANSFER_DURATION.labels(name)
        Service.startService(self)
        log.info("TFTP listening on %s:%d, root %s", self.address, self.port, root)

    def stopService(self):
        Service.stopService(self)
        if self._listener is not None:
            self.reactor.removeReader(self._listener)
            self._listener.sock.close()
            self._listener = None
        for session in list(self.sessions.values()):
            session.transfer.abort(ABORTED, time.monotonic(), "server stopping")
            self._end(session)
        if self._sweep_call is not None and self._sweep_call.active():
            self._sweep_call.cancel()
        self._sweep_call = None
        if self._transfers is not None:
            self.reactor.removeReader(self._transfers)
            self._transfers.close()
            self._transfers = None

    def stop_accepting(self) -> None:
        """Graceful stop: close the request port; running transfers go on (self.sessions)
        until they end or stopService aborts them."""
        if self._listener is not None:
            self.reactor.removeReader(self._listener)
            self._listener.sock.close()
            self._listener = None

    # -- requests ----------------------------------------------------------------------------
    def _on_request(self, data: bytes, addr, local: str | None, ifindex: int) -> None:
        try:
            req = pk.decode(data)
        except pk.TFTPPacketError as exc:
            _count_drop(REQUEST, MALFORMED)
            self._reply(pk.encode_error(pk.ERR_ILLEGAL, f"malformed request: {exc}"), addr, local, ifindex)
            return
        if not isinstance(req, pk.Request):
            _count_drop(REQUEST, NOT_REQUEST)
            return          # a DATA/ACK/ERROR on the request port: nobody's transfer, ignore
        key = (addr[0], addr[1], req.filename)
        existing = self._by_key.get(key)
        if existing is not None and not existing.ended:
            if not existing.transfer.restarted_by(time.monotonic()):
                self.deduplicated += 1          # the client repeated its RRQ: same transfer
                _count_drop(REQUEST, DUPLICATE_REQUEST)
                return
            existing.transfer.abort(ABORTED, time.monotonic(), "the client asked for the file again")
            self._end(existing)
        cfg = self.live.current
        tcfg = cfg.tftp
        display = req.filename
        if req.opcode == pk.WRQ:
            return self._refuse(addr, local, ifindex, display, pk.ERR_ACCESS,
                                "access violation: this TFTP server is read-only", BAD_REQUEST)
        if req.mode not in ("octet", "netascii"):
            if req.mode == "mail":
                return self._refuse(addr, local, ifindex, display, pk.ERR_ILLEGAL,
                                    "mail mode is not supported", BAD_REQUEST)
            return self._refuse(addr, local, ifindex, display, pk.ERR_ACCESS,
                                "access violation: no transfer mode after the file name "
                                "(a NUL byte in the name?)", BAD_REQUEST)
        if len(self.sessions) >= tcfg.max_transfers:
            return self._refuse(addr, local, ifindex, display, pk.ERR_UNDEFINED,
                                f"server busy: {len(self.sessions)} transfers in progress "
                                f"(tftp.max_transfers), try again later", REFUSED_LIMIT)
        if self._per_client.get(addr[0], 0) >= tcfg.max_transfers_per_client:
            return self._refuse(addr, local, ifindex, display, pk.ERR_UNDEFINED,
                                f"too many transfers from {addr[0]} "
                                f"(tftp.max_transfers_per_client={tcfg.max_transfers_per_client}), "
                                f"try again later", REFUSED_LIMIT)
        try:
            resolved = files.resolve(req.filename, tcfg.root, files.boot_files(cfg), tcfg.backslash_as_slash)
            content = self.cache.open(resolved, tcfg.root, display)
        except files.FileRefused as exc:
            return self._refuse(addr, local, ifindex, display, exc.code, exc.message, exc.outcome)
        if req.mode == "netascii":
            content = content.netascii()
        try:
            sock, stray = _transfer_sockets(local or self.address, (addr[0], addr[1]))
        except OSError as exc:
            return self._refuse(addr, local, ifindex, display, pk.ERR_UNDEFINED,
                                f"server cannot open a transfer socket: {exc.strerror}", ABORTED)
        now = time.monotonic()
        transfer = Transfer(content.data, req.options, now=now, mtu=self._mtu(ifindex),
                            retransmit_timeout=tcfg.retransmit_timeout, max_retries=tcfg.max_retries,
                            transfer_timeout=tcfg.transfer_timeout, blocks_for=content.blocks)
        session = _Session(self, sock, stray, (addr[0], addr[1]), transfer, display, resolved.name, key)
        self.sessions[session.fd] = session
        self._strays[session.stray_fd] = session
        self._by_key[key] = session
        self._per_client[addr[0]] = self._per_client.get(addr[0], 0) + 1
        metrics.TFTP_ACTIVE.inc()
        self._transfers.add(session)
        session.send(transfer.start())
        if self._sweep_call is None:
            self._sweep_call = self.reactor.callLater(SWEEP_INTERVAL, self._sweep)

    def _reply(self, datagram: bytes, addr, local: str | None, ifindex: int) -> None:
        """Send from the request port, out of the address the client asked."""
        if self._listener is None:
            return
        try:
            if local:
                anc = [(socket.IPPROTO_IP, IP_PKTINFO,
                        _PKTINFO.pack(ifindex, socket.inet_aton(local), b"\0\0\0\0"))]
                self._listener.sock.sendmsg([datagram], anc, 0, addr)
            else:
                self._listener.sock.sendto(datagram, addr)
        except OSError as exc:
            log.debug("tftp: cannot answer %s:%s: %s", addr[0], addr[1], exc)

    def _refuse(self, addr, local, ifindex, display: str, code: int, message: str, outcome: str) -> None:
        self._reply(pk.encode_error(code, message), addr, local, ifindex)
        _count_outcome(outcome)
        log.debug("tftp %s:%s %r refused: %s", addr[0], addr[1], display, message)
        self.bus.emit(events.TFTP_TRANSFER, client=f"{addr[0]}:{addr[1]}", client_ip=addr[0],
                      file=_printable(display), size=None, blksize=None, windowsize=None, duration=0.0,
                      retransmits=0, outcome=outcome, error=message)

    # -- timers and ends ---------------------------------------------------------------------
    def _sweep(self) -> None:
        self._sweep_call = None
        now = time.monotonic()
        for session in list(self.sessions.values()):
            t = session.transfer
            if now >= t.deadline or now >= t.expires:
                out = t.expire(now)
                if out:
                    session.send(out)
                if t.done and not session.ended:
                    self._end(session)
        if self.sessions and self.running:
            self._sweep_call = self.reactor.callLater(SWEEP_INTERVAL, self._sweep)

    def _end(self, session: _Session, outcome: str | None = None, error: str | None = None) -> None:
        if session.ended:
            return
        session.ended = True
        t = session.transfer
        now = time.monotonic()
        if outcome is not None:
            t.abort(outcome, now, error or outcome)
        if self._transfers is not None:
            self._transfers.remove(session)
        session.sock.close()
        session.stray.close()
        self.sessions.pop(session.fd, None)
        self._strays.pop(session.stray_fd, None)
        if self._by_key.get(session.key) is session:
            del self._by_key[session.key]
        ip = session.peer[0]
        left = self._per_client.get(ip, 1) - 1
        if left > 0:
            self._per_client[ip] = left
        else:
            self._per_client.pop(ip, None)
        metrics.TFTP_ACTIVE.dec()
        _count_outcome(t.outcome)
        metrics.TFTP_BYTES_SENT.inc(t.bytes_acked)
        if t.retransmits:
            metrics.TFTP_RETRANSMITS.inc(t.retransmits)
        if t.outcome == OK:
            _observe_duration(session.label, t.duration)
        log.debug("tftp %s %r %s: %d bytes, blksize %d, window %d, %.3f s, %d retransmits%s",
                  session.client, session.file, t.outcome, t.size, t.blksize, t.windowsize,
                  t.duration, t.retransmits, f" ({t.error})" if t.error else "")
        self.bus.emit(events.TFTP_TRANSFER, client=session.client, client_ip=ip,
                      file=_printable(session.file), size=t.size, blksize=t.blksize,
                      windowsize=t.windowsize, duration=round(t.duration, 6),
                      retransmits=t.retransmits, outcome=t.outcome, error=t.error)

    def _mtu(self, ifindex: int) -> int | None:
        """The MTU of the interface a request came in on (cached for a few seconds)."""
        if not ifindex:
            return None
        now = time.monotonic()
        hit = self._mtus.get(ifindex)
        if hit is not None and hit[1] > now:
            return hit[0]
        try:
            name = socket.if_indextoname(ifindex)
            ifreq = struct.pack("16si", name.encode(), 0)
            mtu = struct.unpack("16si", fcntl.ioctl(self._listener.sock.fileno(), SIOCGIFMTU, ifreq))[1]
        except OSError:
            return None
        self._mtus[ifindex] = (mtu, now + 5.0)
        return mtu


def _ensure_fd_limit(max_transfers: int) -> None:
    """A transfer holds two descriptors (_transfer_sockets): raise the soft open-file limit
    to fit tftp.max_transfers (a service manager's default is often 1024), up to the hard
    limit, and say so at start if even that is too low."""
    need = 2 * max_transfers + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return
    new = need if hard == resource.RLIM_INFINITY else min(need, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    except (ValueError, OSError):
        new = soft
    if new < need:
        log.warning("open-file limit %d fits about %d TFTP transfers, fewer than tftp.max_transfers=%d: "
                    "raise it (LimitNOFILE= in the systemd unit) or lower tftp.max_transfers; over it a "
                    "client gets a TFTP error", new, max(0, (new - 256) // 2), max_transfers)


def _printable(name: str) -> str:
    """The requested name for events and logs (undecodable bytes shown as U+FFFD)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _startup_error(message: str) -> Exception:
    from proxydhcp.service import StartupError
    return StartupError(message)
