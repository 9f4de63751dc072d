"""The ProxyDHCP service: moves datagrams between the network and proxydhcp.responder.

UDP 67 is listened to passively, per interface, with a packet socket and a BPF filter,
and answered through a raw IP socket bound to the same interface: proxydhcp never takes
port 67 from a DHCP server on the same host. UDP 4011 is an ordinary socket with
IP_PKTINFO, answered from port 4011 out of the interface the request came in on.
Interfaces and addresses are read with pyroute2 and re-read on every netlink change.
Owns no protocol decision: that is responder.respond().
"""

from __future__ import annotations

import ctypes
import errno
import logging
import socket
import struct
import time

from twisted.application.service import Service

from proxydhcp import memo, metrics, responder
from proxydhcp.arch import label as arch_label
from proxydhcp.access import AccessRules, InProgress, TokenBuckets
from proxydhcp.config import LiveConfig
from proxydhcp.dhcp import options as opt
from proxydhcp.dhcp.packet import MalformedPacket, decode, encode
from proxydhcp.events import DHCP_REPLY, DHCP_SILENCE, HTTP_FETCH, EventBus
from proxydhcp.net import frames, receive_buffer, udp_drops
from proxydhcp.net.interfaces import InterfaceAddress, NetlinkWatch, read_interfaces
from proxydhcp.service import StartupError
from proxydhcp.responder import BAD_FRAME, BUSY, INTERNAL_ERROR, RATE_LIMITED, MALFORMED, PORT_DHCP, PORT_PROXY, REPLIED, Interface, Reply, respond
from proxydhcp.reactors import UsesReactor

log = logging.getLogger("proxydhcp.dhcp")

ETH_P_IP = 0x0800
SO_ATTACH_FILTER = 26
SO_BINDTODEVICE = 25
IP_PKTINFO = 8
PACKET_OUTGOING = 4
SOL_PACKET = 263
PACKET_IGNORE_OUTGOING = 23  # Linux 4.20: the packet socket is not handed our own sends
PACKET_STATISTICS = 6        # struct tpacket_stats {tp_packets, tp_drops}; reading resets them
RCVBUF = 4 << 20             # bytes of requests the kernel may hold for us (thousands of them)
NOT_SERVED = "not_served"   # arrived on an interface we do not serve
_PKTINFO = struct.Struct("=I4s4s")


def _attach_filter(sock: socket.socket, program) -> None:
    raw = b"".join(struct.pack("HBBI", *ins) for ins in program)
    buf = ctypes.create_string_buffer(raw)
    fprog = struct.pack("HL", len(program), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


class _Reader:
    """A socket watched by the reactor; drains up to `batch` datagrams per wake-up."""

    def __init__(self, sock: socket.socket, on_datagram, name: str, batch: int = 64, on_error=None) -> None:
        self.sock, self.on_datagram, self.name, self.batch = sock, on_datagram, name, batch
        self.on_error = on_error

    def fileno(self) -> int:
        return self.sock.fileno()

    def doRead(self) -> None:
        for _ in range(self.batch):
            try:
                self.on_datagram(self.sock)
            except BlockingIOError:
                return
            except OSError as exc:
                log.warning("%s: receive failed: %s", self.name, exc)
                return
            except Exception:   # a bug on one packet must never close the port (the reactor would)
                log.exception("%s: a datagram could not be handled", self.name)
                if self.on_error is not None:
                    self.on_error()

    def logPrefix(self) -> str:
        return self.name

    def connectionLost(self, reason) -> None:
        self.sock.close()


class _Port67:
    """Passive listener on one interface: packet socket in, raw IP socket out."""

    def __init__(self, service: "DHCPService", iface: InterfaceAddress, port: int) -> None:
        self.iface = iface
        recv = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK, socket.htons(ETH_P_IP))
        _attach_filter(recv, frames.udp_port_filter(port))
        recv.bind((iface.name, ETH_P_IP))
        try:  # replies to a relay go to giaddr:67 and would pass the filter: not even queued
            recv.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        except OSError:
            pass  # older kernel: _recv drops them by packet type
        receive_buffer(recv, RCVBUF)
        send = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        send.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        send.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, iface.name.encode())
        self.send_sock = send
        self.port = port
        self.reader = _Reader(recv, self._recv, f"dhcp67:{iface.name}",
                              on_error=lambda: service._count(PORT_DHCP, "unknown", INTERNAL_ERROR))
        self.service = service

    @property
    def iface(self) -> InterfaceAddress:
        return self._iface

    @iface.setter
    def iface(self, value: InterfaceAddress) -> None:
        self._iface = value
        self.served = Interface(value.name, value.address, value.index)  # built once, not per packet

    def _recv(self, sock: socket.socket) -> None:
        data, addr = sock.recvfrom(4096)
        if addr[2] == PACKET_OUTGOING:
            return  # our own replies to a relay
        parsed = frames.parse_udp(data)
        if parsed is None:
            self.service._count(PORT_DHCP, "unknown", BAD_FRAME)
            return
        src, sport, _dst, dport, payload = parsed
        if dport != self.port:
            self.service.observe_reply(payload, src, self.iface)
            return
        self.service.handle(payload, PORT_DHCP, self.served, (src, sport), self,
                            source_key=addr[4])  # link-layer sender: a relay or the client

    def send(self, payload: bytes, server: str, dest: tuple[str, int]) -> None:
        packet = frames.build_udp(server, self.port, dest[0], dest[1], payload)
        self.send_sock.sendto(packet, (dest[0], 0))

    drops = 0

    def read_drops(self) -> int:
        """Datagrams the kernel dropped on this listener's full buffer, since it opened."""
        try:
            _packets, drops = struct.unpack("II", self.reader.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
        except OSError:
            return self.drops
        self.drops += drops
        return self.drops

    def close(self, reactor) -> None:
        self.service._closed_drops += self.read_drops()
        reactor.removeReader(self.reader)
        self.reader.sock.close()
        self.send_sock.close()


class _Port4011:
    def __init__(self, service: "DHCPService", port: int) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        receive_buffer(sock, RCVBUF)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise StartupError(f"UDP port {port} (dhcp.proxy_port) is in use by another program: "
                                   f"stop it or set dhcp.proxy_port") from None
            raise StartupError(f"cannot bind UDP port {port} (dhcp.proxy_port): {exc.strerror}") from None
        sock.setblocking(False)
        self.sock = sock
        self.port = sock.getsockname()[1]
        self.service = service
        self.reader = _Reader(sock, self._recv, "dhcp4011",
                              on_error=lambda: service._count(PORT_PROXY, "unknown", INTERNAL_ERROR))

    def _recv(self, sock: socket.socket) -> None:
        data, anc, _flags, source = sock.recvmsg(4096, 64)
        ifindex, spec_dst = 0, None
        for level, kind, value in anc:
            if level == socket.IPPROTO_IP and kind == IP_PKTINFO:
                ifindex, spec, _addr = _PKTINFO.unpack(value[:_PKTINFO.size])
                spec_dst = socket.inet_ntoa(spec)
        iface = self.service.served_interface(ifindex, spec_dst)
        if iface is None:
            metrics.DHCP_PACKETS.labels(PORT_PROXY, "unknown", NOT_SERVED).inc()
            return
        self.service.handle(data, PORT_PROXY, iface, source, self)

    def send(self, payload: bytes, server: str, dest: tuple[str, int], ifindex: int = 0) -> None:
        info = _PKTINFO.pack(ifindex, socket.inet_aton(server), b"\x00" * 4)
        self.sock.sendmsg([payload], [(socket.IPPROTO_IP, IP_PKTINFO, info)], 0, dest)


class DHCPService(UsesReactor, Service):
    name = "dhcp"

    def __init__(self, live: LiveConfig, bus: EventBus, reactor=None, interfaces=read_interfaces) -> None:
        self.live = live
        self.bus = bus
        self._reactor = reactor
        self._read_interfaces = interfaces
        self.interfaces: dict[str, InterfaceAddress] = {}
        self.listeners: dict[str, _Port67] = {}
        self.port4011: _Port4011 | None = None
        self.watch: NetlinkWatch | None = None
        self._counters: dict = {}
        self._durations: dict = {}
        self._served: dict = {}     # (ifindex, our address) -> Interface, for 4011; cleared on refresh
        self._limited = False       # any per-MAC / per-source rate limit configured
        self._limits_for = None
        self._rules = AccessRules()
        self._memo = memo.ReplyMemo()
        self._per_mac = self._per_source = None
        self._foreign_warned: dict[str, float] = {}
        d = live.current
        self._in_progress = InProgress(d.dhcp.max_sessions_in_progress, d.dhcp.max_sessions_per_source,
                                       d.events.stall_timeout)
        bus.subscribe(self._session_finished)
        metrics.DHCP_SESSIONS_IN_PROGRESS.set_function(lambda: self._in_progress.count(time.monotonic()))
        self._closed_drops = 0
        metrics.SOCKET_DROPS.sources[()] = lambda: self._closed_drops + sum(
            listener.read_drops() for listener in list(self.listeners.values()))

    def _session_finished(self, event) -> None:
        """A machine whose iPXE fetched its boot script needs the ProxyDHCP no more."""
        if event["kind"] == HTTP_FETCH and event.get("fetch") == "script" and (event.get("code") or 500) < 400:
            mac = event.get("mac")
            if mac:
                self._in_progress.release(mac)

    # --- lifecycle -------------------------------------------------------------------
    def startService(self) -> None:
        cfg = self.live.current
        if cfg.dhcp.proxy_port:
            self.port4011 = _Port4011(self, cfg.dhcp.proxy_port)
            self.reactor.addReader(self.port4011.reader)
            port = self.port4011
            metrics.UDP_SOCKET_DROPS.sources[(str(port.port),)] = lambda: udp_drops(port.sock)
        self.refresh()
        if not self.listeners:
            log.warning("no interface to serve yet (dhcp.interfaces=%s); waiting for addresses",
                        cfg.dhcp.interfaces or "all")
        self.watch = NetlinkWatch(self._refresh_soon)
        self.reactor.addReader(self.watch)
        Service.startService(self)

    def stopService(self):
        for name in list(self.listeners):
            self.listeners.pop(name).close(self.reactor)
        if self.port4011:
            self.reactor.removeReader(self.port4011.reader)
            self.port4011.sock.close()
            self.port4011 = None
        if self._pending_refresh is not None and self._pending_refresh.active():
            self._pending_refresh.cancel()
        if self.watch:
            self.reactor.removeReader(self.watch)
            self.watch.sock.close()
            self.watch = None
        return Service.stopService(self)

    _pending_refresh = None

    def _refresh_soon(self) -> None:
        """Netlink events come in bursts (a renumbering is a delete then an add): re-read once,
        50 ms after the first."""
        if self._pending_refresh is None or not self._pending_refresh.active():
            self._pending_refresh = self.reactor.callLater(0.05, self.refresh)

    def refresh(self) -> None:
        """Re-read interfaces; open listeners on new ones, close vanished ones, follow address changes."""
        cfg = self.live.current
        try:
            found = self._read_interfaces()
        except Exception as exc:
            log.error("cannot read interfaces: %s", exc)
            return
        wanted = {n: a for n, a in found.items() if a.up and (not cfg.dhcp.interfaces or n in cfg.dhcp.interfaces)}
        for name in list(self.listeners):
            if name not in wanted or wanted[name].index != self.listeners[name].iface.index:
                self.listeners.pop(name).close(self.reactor)
                log.info("interface %s gone: stopped listening", name)
        for name, addr in wanted.items():
            old = self.interfaces.get(name)
            if name in self.listeners:
                if old and old.address != addr.address:
                    log.info("interface %s address changed %s -> %s", name, old.address, addr.address)
                self.listeners[name].iface = addr
                continue
            try:
                listener = _Port67(self, addr, cfg.dhcp.port)
            except OSError as exc:
                log.error("interface %s: cannot listen: %s", name, exc)
                continue
            self.listeners[name] = listener
            self.reactor.addReader(listener.reader)
            log.info("listening on %s (%s) for PXE clients on UDP %d and %s", name, addr.address,
                     cfg.dhcp.port, self.port4011.port if self.port4011 else "no 4011")
        self.interfaces = wanted
        self._served = {}

    def served_interface(self, index: int, address: str | None) -> Interface | None:
        """The Interface a 4011 request arrived through (cached until the next refresh)."""
        key = (index, address)
        found = self._served.get(key)
        if found is None:
            a = self.interface_by_index(index)
            if a is None:
                return None
            found = self._served[key] = Interface(a.name, address or a.address, index)
        return found

    def interface_by_index(self, index: int) -> InterfaceAddress | None:
        for a in self.interfaces.values():
            if a.index == index:
                return a
        return None

    def observe_reply(self, payload: bytes, src: str, iface: InterfaceAddress) -> None:
        """Another server's reply seen on a served segment: warn (once per server per 10
        minutes) and count when it carries PXE boot information, which competes with ours."""
        try:
            rep = decode(payload)
        except MalformedPacket:
            return
        if rep.op != 2:
            return
        sid = rep.options.get(opt.SERVER_ID)
        server = socket.inet_ntoa(sid) if sid and len(sid) == 4 else src
        if server in self._our_addresses():
            return
        pxe_info = (rep.options.get(opt.VENDOR_CLASS, b"").startswith(opt.VENDOR_PXE)
                    or opt.VENDOR_SPECIFIC in rep.options or rep.file or opt.BOOTFILE_NAME in rep.options)
        if not pxe_info:
            return
        metrics.FOREIGN_PXE_REPLIES.inc()
        now = time.monotonic()
        if now - self._foreign_warned.get(server, -1e9) > 600:
            self._foreign_warned[server] = now
            log.warning("another DHCP server (%s) sends PXE boot information on %s (file %r): clients "
                        "may boot from it instead of proxydhcp; remove its PXE options or restrict "
                        "proxydhcp with dhcp.interfaces", server, iface.name, rep.file.decode("latin-1"))

    def _our_addresses(self) -> set[str]:
        ours = {a.address for a in self.interfaces.values()}
        if self.live.current.dhcp.server_address:
            ours.add(self.live.current.dhcp.server_address)
        return ours

    # --- the hot path ----------------------------------------------------------------
    def _count(self, port: str, message: str, result: str):
        key = (port, message, result)
        child = self._counters.get(key)
        if child is None:
            child = self._counters[key] = metrics.DHCP_PACKETS.labels(port, message, result)
        child.inc()

    def _limits(self, cfg):
        """Access rules and rate limiters for the running config (rebuilt after a reload)."""
        if self._limits_for is not cfg.dhcp:
            d = cfg.dhcp
            self._rules = AccessRules(d.allow_macs, d.deny_macs, d.allow_subnets, d.deny_subnets)
            self._per_mac = TokenBuckets(d.rate_per_mac, d.burst_per_mac)
            self._per_source = TokenBuckets(d.rate_per_source, d.burst_per_source)
            self._limited = d.rate_per_mac > 0 or d.rate_per_source > 0
            ip = self._in_progress
            ip.cap, ip.per_source, ip.hold = d.max_sessions_in_progress, d.max_sessions_per_source, \
                cfg.events.stall_timeout
            self._limits_for = d
        return self._rules

    def handle(self, data: bytes, port: str, iface: Interface, source: tuple[str, int], sender,
               source_key=None) -> None:
        started = time.perf_counter()
        cfg = self.live.current
        rules = self._limits(cfg)
        shape = memo.shape(data, port, source[0] == "0.0.0.0") if self._memo.use(cfg, rules.empty) else None
        if shape is not None:
            key, u, ulen = shape
            key = (iface, key)
            entry = self._memo.get(key)
            if entry is not None:     # a machine like one answered before (proxydhcp.memo)
                self._memo.hits += 1
                mac = data[28:28 + data[2]].hex(":")
                uuid = memo.read_uuid(data, u, ulen)
                ciaddr = socket.inet_ntoa(data[12:16])
                self._reply(sender, port, iface, entry, memo.patch(entry, data, u, ulen),
                            responder.destination(port, source, entry.giaddr, ciaddr), mac, uuid,
                            int.from_bytes(data[4:8], "big"), ciaddr, source_key or source[0], started)
                return
        try:
            req = decode(data)
        except MalformedPacket as exc:
            self._count(port, "unknown", MALFORMED)
            log.debug("malformed packet from %s:%d on %s: %s", source[0], source[1], iface.name, exc)
            return
        allowed = None
        if not rules.empty:
            net = req.giaddr if req.giaddr != "0.0.0.0" else req.ciaddr if req.ciaddr != "0.0.0.0" else iface.address
            allowed = lambda c: rules.refuse(c.mac, net)  # noqa: E731
        result = respond(req, port, iface, source, cfg, allowed)
        if not isinstance(result, Reply):
            message = opt.message_name(req.message_type)
            self._count(port, message, result.reason)
            c = result.client
            if c is not None and c.is_pxe:
                self.bus.emit(DHCP_SILENCE, port=port, reason=result.reason, detail=result.detail,
                              mac=c.mac, iface=iface.name, arch=c.arch_code, firmware=c.firmware,
                              message=message)
            return
        payload = encode(result.packet)
        entry = memo.Entry(result, req, data, payload, port)
        if shape is not None and memo.ReplyMemo.keepable(result):
            self._memo.put(key, entry)
        c = result.client
        self._reply(sender, port, iface, entry, payload, result.dest, c.mac, c.uuid, req.xid, req.ciaddr,
                    source_key or source[0], started)

    def _reply(self, sender, port: str, iface: Interface, entry: memo.Entry, payload: bytes, dest, mac: str,
               uuid, xid: int, ciaddr: str, source_key, started: float) -> None:
        """Limits, then the reply now or after its quirk's delay."""
        if self._limited:
            now = time.monotonic()
            if not (self._per_mac.allow(mac, now) and self._per_source.allow(source_key, now)):
                self._count(port, opt.message_name(entry.request), RATE_LIMITED)
                return
        ip = self._in_progress
        if (ip.cap or ip.per_source) and not ip.admit(mac, source_key, time.monotonic()):
            self._count(port, opt.message_name(entry.request), BUSY)   # no event: a flood must not reach the store
            return
        if entry.delay > 0:
            self.reactor.callLater(entry.delay, self._send, sender, port, iface, entry, payload, dest, mac, uuid,
                                   xid, ciaddr, started)
        else:
            self._send(sender, port, iface, entry, payload, dest, mac, uuid, xid, ciaddr, started)

    def _send(self, sender, port: str, iface: Interface, entry: memo.Entry, payload: bytes, dest, mac: str,
              uuid, xid: int, ciaddr: str, started: float) -> None:
        message = opt.message_name(entry.request)
        try:
            if port == PORT_PROXY:
                sender.send(payload, entry.server, dest, iface.index)
            else:
                sender.send(payload, entry.server, dest)
        except OSError as exc:
            log.warning("sending %s to %s:%d failed: %s", entry.reply, dest[0], dest[1], exc)
            self._count(port, message, "send_failed")
            return
        duration = self._durations.get(port)
        if duration is None:
            duration = self._durations[port] = metrics.DHCP_REPLY_DURATION.labels(port)
        duration.observe(time.perf_counter() - started)
        self._count(port, message, REPLIED)
        self.bus.emit(DHCP_REPLY, port=port, message=entry.reply, request=message, mac=mac,
                      iface=iface.name, arch=entry.arch_code, firmware=entry.firmware, uuid=uuid,
                      vendor_class=entry.vendor_class, user_classes=list(entry.user_classes),
                      client_ip=ciaddr if ciaddr != "0.0.0.0" else None,
                      server_ip=entry.server, boot_file=entry.boot_file, xid=xid,
                      relay=entry.giaddr if entry.giaddr != "0.0.0.0" else None)
        # Per reply only at DEBUG: at a boot storm's rates a line per packet costs as much as the
        # answer. Replies are recorded as dhcp.reply events (boot sessions) and counted in metrics.
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s to %s (%s, arch %s) on %s: %s", port, entry.reply, mac, entry.firmware,
                      arch_label(entry.arch_code), iface.name, entry.boot_file or "redirect to 4011")
