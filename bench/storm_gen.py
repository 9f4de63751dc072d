"""Boot-storm load generator: N simulated machines doing what UEFI firmware + iPXE do.

Runs inside the client namespace of a lab (bench/storm.py builds it and starts this as
`python bench/storm_gen.py --server A ...`). Each machine has its own MAC, GUID and a
pre-assigned IPv4 address on the generator's interface (the lease the corporate DHCP server
would have given it; the addresses are added beforehand with `ip addr add`). Per machine:

  1. discover    EDK2's DHCPDISCOVER, broadcast from 68 to 67 in a frame from the machine's
                 own MAC (a packet socket; --l2 shared: a UDP socket, the interface's MAC) (options 53 57 55 97 94 93 60,
                 60 = PXEClient:Arch:00007:UNDI:003016); waits for a proxy offer (yiaddr 0,
                 option 60 PXEClient) with its xid and MAC. Acts on the first proxy offer (EDK2
                 collects offers for 4 s; that wait costs the server nothing).
  2. request     EDK2's DHCPREQUEST from <its IP>:4011 to the boot server's 4011 (new xid,
                 ciaddr set; 43.71 boot item when the offer carried a PXE menu, as EDK2 does
                 with dnsmasq); waits for the ACK and takes its boot file. (An offer that
                 already names a file with discovery control bit 3 skips this step.)
  3. tftp_probe  RRQ <file> tsize=0 blksize=1468 from a fresh port; OACK; ERROR 8 (EDK2).
  4. tftp        RRQ <file> blksize=1468 from another port; OACK; ACK 0; lock-step DATA/ACK
                 to the short last block (with --windowsize N, as EDK2's windowsize=4: ACK the
                 last block of each window); the size must equal the probe's tsize.
  5. ipxe_discover  iPXE's DISCOVER (user-class iPXE, option 175, 61; new xid) from 68;
                 waits for the proxy offer.
  6. ipxe_request   iPXE's ProxyDHCPREQUEST from <its IP>:68 to 4011 (same xid, BCAST flag,
                 option 54 = the proxy); the ACK's file (else the offer's) is the script URL.
  7. http        GET of that URL from its IP over TCP; the body must start with #!ipxe.

Retransmissions (bounded): DHCP after 4, 8, 16 s then the stage fails; TFTP resends its
last packet after 2 s, five times at most; HTTP gives up after 30 s. Everything ends at
--deadline seconds after the first arrival. One epoll loop multiplexes all machines of a
process; --workers K forks K processes, each with a slice of the machines (broadcast
replies reach every worker's port-68 socket and are demultiplexed by xid + chaddr; unicast
replies go to per-machine sockets bound to the machine's own address).

Prints one JSON object on stdout: per-machine results, counters and the generator's CPU.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import random
import selectors
import socket
import struct
import sys
import time

SO_BINDTODEVICE = 25
COOKIE = b"\x63\x82\x53\x63"
DISCOVER, OFFER, REQUEST, ACK = 1, 2, 3, 5

EDK2_VC = b"PXEClient:Arch:00007:UNDI:003016"
EDK2_NDI = b"\x01\x03\x10"
EDK2_PRL = bytes([1, 2, 3, 4, 5, 6, 12, 13, 15, 17, 18, 22, 23, 28, 40, 41, 42, 43, 50, 51, 54, 58, 59,
                  60, 66, 67, 97, 128, 129, 130, 131, 132, 133, 134, 135])
IPXE_VC = b"PXEClient:Arch:00007:UNDI:003010"
IPXE_NDI = b"\x01\x03\x0a"
IPXE_PRL = bytes([1, 3, 6, 7, 12, 15, 17, 26, 43, 60, 66, 67, 119, 128, 129, 130, 131, 132, 133, 134,
                  135, 175, 203])
# iPXE's option 175 as captured from iPXE 1.0.0 on QEMU virtio (bus id, version, features)
IPXE_175 = bytes.fromhex("b105011af41000eb0301000017010122010113010127010119010129010110010221"
                         "010115010118010112010100ff")
ARCH = struct.pack("!H", 7)

STAGES = ("discover", "request", "tftp_probe", "tftp", "ipxe_discover", "ipxe_request", "http")
DHCP_RETRIES = (4.0, 8.0, 16.0)
TFTP_TIMEOUT, TFTP_RETRIES = 2.0, 5
HTTP_TIMEOUT = 30.0
BLKSIZE = 1468


def machine_mac(i: int) -> bytes:
    return bytes((0x52, 0x54, 0x01, (i >> 16) & 255, (i >> 8) & 255, i & 255))


def machine_ip(i: int, base: str) -> str:
    """base '10.79' -> 10.79.1.1, 10.79.1.2, ... (254 per /24, from 10.79.1.0 up)."""
    return f"{base}.{1 + i // 254}.{1 + i % 254}"


def machine_guid(i: int) -> bytes:
    return bytes.fromhex("6c74656e62610040") + struct.pack("!Q", 0x8000000000000000 | i)


# --- broadcast frames with the machine's own link-layer source --------------------------

def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def broadcast_frame(src_mac: bytes, payload: bytes, sport: int = 68, dport: int = 67) -> bytes:
    """Ethernet + IPv4 (0.0.0.0 -> 255.255.255.255) + UDP, as a NIC's PXE stack sends it."""
    src, dst = b"\0" * 4, b"\xff" * 4
    udp_len = 8 + len(payload)
    udp = struct.pack("!HHHH", sport, dport, udp_len, 0) + payload
    csum = _checksum(src + dst + struct.pack("!BBH", 0, 17, udp_len) + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", csum) + udp[8:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, 0, 0, 64, 17, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    return b"\xff" * 6 + src_mac + b"\x08\x00" + ip + udp


# --- DHCP wire format (written here, independent of the daemon's codec) ------------------

def dhcp_bytes(xid: int, mac: bytes, options: list, ciaddr: str = "0.0.0.0", flags: int = 0) -> bytes:
    head = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, xid, 0, flags, socket.inet_aton(ciaddr),
                       b"\0" * 4, b"\0" * 4, b"\0" * 4, mac.ljust(16, b"\0"), b"", b"")
    body = b"".join(bytes((code, len(value))) + value for code, value in options)
    out = head + COOKIE + body + b"\xff"
    return out.ljust(300, b"\0")


def dhcp_parse(data: bytes) -> dict | None:
    if len(data) < 240 or data[0] != 2 or data[236:240] != COOKIE:
        return None
    opts: dict[int, bytes] = {}
    i = 240
    n = len(data)
    while i < n:
        code = data[i]
        if code == 255:
            break
        if code == 0:
            i += 1
            continue
        if i + 1 >= n:
            break
        ln = data[i + 1]
        opts[code] = opts.get(code, b"") + data[i + 2:i + 2 + ln]
        i += 2 + ln
    return {"xid": int.from_bytes(data[4:8], "big"), "chaddr": data[28:34],
            "yiaddr": socket.inet_ntoa(data[16:20]), "siaddr": socket.inet_ntoa(data[20:24]),
            "file": data[108:236].split(b"\0", 1)[0].decode("latin-1"), "opts": opts}


def pxe_suboptions(value: bytes) -> dict[int, bytes]:
    out, i = {}, 0
    while i < len(value):
        code = value[i]
        if code == 255:
            break
        if code == 0:
            i += 1
            continue
        ln = value[i + 1] if i + 1 < len(value) else 0
        out[code] = value[i + 2:i + 2 + ln]
        i += 2 + ln
    return out


def boot_item(offer: dict) -> tuple[bytes | None, str | None]:
    """From a proxy offer's option 43: the 43.71 boot item to ask for (first menu entry)
    and the boot server to ask (43.8), as EDK2/iPXE do; (None, None) without a menu."""
    sub = pxe_suboptions(offer["opts"].get(43, b""))
    menu = sub.get(9)
    if not menu or len(menu) < 3:
        return None, None
    item = menu[:2] + b"\0\0"
    server = None
    servers = sub.get(8, b"")
    i = 0
    while i + 3 <= len(servers):      # {type u16, count u8, IPv4 * count}
        stype, count = servers[i:i + 2], servers[i + 2]
        if stype == menu[:2] and count:
            server = socket.inet_ntoa(servers[i + 3:i + 7])
            break
        i += 3 + 4 * count
    return item, server


# --- one machine --------------------------------------------------------------------------

class Machine:
    __slots__ = ("i", "mac", "ip", "guid", "stage", "t_stage", "lat", "start", "end", "error",
                 "xid", "tries", "token", "sock", "server", "file", "item", "tsize", "expect",
                 "received", "last", "peer", "url", "offer", "buf", "retrans", "failed_stage", "tftp_host",
                 "window", "acked")

    def __init__(self, i: int, ip: str) -> None:
        self.i, self.ip = i, ip
        self.mac = machine_mac(i)
        self.guid = machine_guid(i)
        self.stage = None
        self.lat: dict[str, float] = {}
        self.start = self.end = None
        self.error = None
        self.token = 0
        self.sock = None
        self.tsize = None
        self.retrans = 0
        self.failed_stage = None
        self.xid = None
        self.offer = None
        self.tftp_host = None

    def result(self) -> dict:
        return {"i": self.i, "ok": self.stage == "done", "failed_stage": self.failed_stage, "error": self.error,
                "start": self.start, "end": self.end, "lat": self.lat, "retrans": self.retrans}


class Storm:
    def __init__(self, a) -> None:
        self.a = a
        self.sel = selectors.EpollSelector()
        self.timers: list = []
        self.seq = 0
        self.by_xid: dict[int, Machine] = {}     # broadcast replies on 68, by xid (+ chaddr)
        self.active = 0
        self.counts = {"dhcp_sent": 0, "dhcp_recv": 0, "dhcp_stray": 0, "tftp_data": 0,
                       "tftp_dup": 0, "retransmits": 0}
        self.rng = random.Random(a.seed)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        s.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, a.iface.encode())
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        s.bind(("0.0.0.0", 68))
        s.setblocking(False)
        self.s68 = s
        self.sel.register(s, selectors.EVENT_READ, self._on_68)
        self.raw = None
        if a.l2 == "machine":     # broadcasts leave with the machine's MAC as link-layer source
            self.raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
            self.raw.bind((a.iface, 0))

    # -- timers --------------------------------------------------------------------------
    def later(self, delay: float, fn, m: Machine | None = None) -> None:
        self.seq += 1
        heapq.heappush(self.timers, (time.monotonic() + delay, self.seq, fn, m, m.token if m else 0))

    def _arm(self, m: Machine, delay: float, fn) -> None:
        m.token += 1
        self.later(delay, fn, m)

    # -- stage bookkeeping ----------------------------------------------------------------
    def _enter(self, m: Machine, stage: str) -> None:
        now = time.monotonic()
        if m.stage is not None and m.stage in STAGES:
            m.lat[m.stage] = now - m.t_stage
        m.stage, m.t_stage, m.tries = stage, now, 0

    def _close_sock(self, m: Machine) -> None:
        if m.sock is not None:
            try:
                self.sel.unregister(m.sock)
            except (KeyError, ValueError):
                pass
            m.sock.close()
            m.sock = None

    def fail(self, m: Machine, error: str) -> None:
        if m.stage in ("done", "failed"):
            return
        self._close_sock(m)
        if self.by_xid.get(getattr(m, "xid", None)) is m:
            del self.by_xid[m.xid]
        m.token += 1
        self.active -= 1
        m.end = time.monotonic()
        m.error, m.failed_stage, m.stage = error, m.stage, "failed"

    def done(self, m: Machine) -> None:
        self._enter(m, "done")
        m.end = time.monotonic()
        self._close_sock(m)
        m.token += 1
        self.active -= 1

    # -- 1. discover ---------------------------------------------------------------------
    def begin(self, m: Machine) -> None:
        m.start = time.monotonic()
        self.active += 1
        self._enter(m, "discover")
        m.xid = self.rng.getrandbits(32)
        self.by_xid[m.xid] = m
        self._send_discover(m)

    def _discover_bytes(self, m: Machine) -> bytes:
        return dhcp_bytes(m.xid, m.mac, [(53, b"\x01"), (57, struct.pack("!H", 1472)), (55, EDK2_PRL),
                                         (97, b"\0" + m.guid), (94, EDK2_NDI), (93, ARCH), (60, EDK2_VC)],
                          flags=0x8000)

    def _ipxe_options(self, m: Machine, message: int, server: str | None = None) -> list:
        o = [(53, bytes((message,))), (57, struct.pack("!H", 1472)), (93, ARCH), (94, IPXE_NDI),
             (60, IPXE_VC), (77, b"iPXE"), (55, IPXE_PRL), (175, IPXE_175), (61, b"\x01" + m.mac),
             (97, b"\0" + m.guid)]
        if server:
            o.append((54, socket.inet_aton(server)))
        return o

    def _send_broadcast(self, m: Machine, data: bytes) -> None:
        try:
            if self.raw is not None:
                self.raw.send(broadcast_frame(m.mac, data))
            else:
                self.s68.sendto(data, ("255.255.255.255", 67))
            self.counts["dhcp_sent"] += 1
        except BlockingIOError:
            self.counts["send_blocked"] = self.counts.get("send_blocked", 0) + 1
        except OSError as exc:
            return self.fail(m, f"send: {exc}")
        self._arm(m, DHCP_RETRIES[min(m.tries, len(DHCP_RETRIES) - 1)], self._dhcp_timeout)

    def _send_discover(self, m: Machine) -> None:
        data = self._discover_bytes(m) if m.stage == "discover" else \
            dhcp_bytes(m.xid, m.mac, self._ipxe_options(m, DISCOVER))
        self._send_broadcast(m, data)

    def _dhcp_timeout(self, m: Machine) -> None:
        m.tries += 1
        m.retrans += 1
        self.counts["retransmits"] += 1
        if m.tries > len(DHCP_RETRIES):
            return self.fail(m, "no reply")
        if m.stage in ("discover", "ipxe_discover"):
            self._send_discover(m)
        elif m.stage in ("request", "ipxe_request"):
            self._send_request(m)

    def _on_68(self, sock) -> None:
        while True:
            try:
                data, src = sock.recvfrom(4096)
            except BlockingIOError:
                return
            self.counts["dhcp_recv"] += 1
            if len(data) < 240:
                continue
            m = self.by_xid.get(int.from_bytes(data[4:8], "big"))
            if m is None or data[28:34] != m.mac:
                self.counts["dhcp_stray"] += 1
                continue
            d = dhcp_parse(data)
            if d is None:
                continue
            self._dhcp_reply(m, d, src)

    def _dhcp_reply(self, m: Machine, d: dict, src) -> None:
        kind = d["opts"].get(53, b"\0")[0]
        is_proxy = d["yiaddr"] == "0.0.0.0" and d["opts"].get(60, b"").startswith((b"PXEClient", b"HTTPClient"))
        if m.stage in ("discover", "ipxe_discover") and kind == OFFER and is_proxy:
            m.offer = d
            server_id = d["opts"].get(54)
            m.server = socket.inet_ntoa(server_id) if server_id and len(server_id) == 4 else \
                (d["siaddr"] if d["siaddr"] != "0.0.0.0" else src[0])
            m.item, boot_server = boot_item(d)
            m.peer = boot_server or (d["siaddr"] if d["siaddr"] != "0.0.0.0" else m.server)
            self.by_xid.pop(m.xid, None)
            if m.stage == "discover":
                sub = pxe_suboptions(d["opts"].get(43, b""))
                if d["file"] and sub.get(6, b"\0")[0] & 8:
                    m.file = d["file"]        # BIOS style: boot file in the offer, no 4011 step
                    m.tftp_host = m.peer
                    self._enter(m, "request")
                    return self._begin_probe(m)
                self._enter(m, "request")
                m.xid = self.rng.getrandbits(32)
            else:
                self._enter(m, "ipxe_request")   # iPXE keeps its xid
            self._send_request(m)
        elif m.stage in ("request", "ipxe_request") and kind == ACK:
            if m.stage == "request":
                if not d["file"]:
                    return self.fail(m, "ACK without a boot file")
                m.file = d["file"]
                m.tftp_host = d["siaddr"] if d["siaddr"] != "0.0.0.0" else m.server
                self._close_sock(m)
                self._begin_probe(m)
            else:
                m.url = d["file"] or m.offer["file"]
                self._close_sock(m)
                self._begin_http(m)

    # -- 2 / 6. requests to 4011 from the machine's own address -----------------------------
    def _send_request(self, m: Machine) -> None:
        if m.sock is None:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            try:
                s.bind((m.ip, 4011 if m.stage == "request" else 68))
            except OSError as exc:
                s.close()
                return self.fail(m, f"bind {m.ip}: {exc}")
            s.setblocking(False)
            m.sock = s
            self.sel.register(s, selectors.EVENT_READ, lambda sock, m=m: self._on_unicast(m, sock))
        item = [(43, b"\x47\x04" + m.item + b"\xff")] if m.item else []
        if m.stage == "request":
            data = dhcp_bytes(m.xid, m.mac, [(53, b"\x03"), (55, EDK2_PRL), (57, struct.pack("!H", 1472)),
                                             (60, EDK2_VC), (93, ARCH), (94, EDK2_NDI), (97, b"\0" + m.guid)]
                              + item, ciaddr=m.ip)
        else:
            data = dhcp_bytes(m.xid, m.mac, self._ipxe_options(m, REQUEST, m.server) + item,
                              ciaddr=m.ip, flags=0x8000)
        try:
            m.sock.sendto(data, (m.peer, 4011))
            self.counts["dhcp_sent"] += 1
        except OSError as exc:
            return self.fail(m, f"send: {exc}")
        self._arm(m, DHCP_RETRIES[min(m.tries, len(DHCP_RETRIES) - 1)], self._dhcp_timeout)

    def _on_unicast(self, m: Machine, sock) -> None:
        while True:
            try:
                data, src = sock.recvfrom(4096)
            except (BlockingIOError, OSError):
                return
            self.counts["dhcp_recv"] += 1
            d = dhcp_parse(data)
            if d is None or d["xid"] != m.xid or d["chaddr"] != m.mac:
                self.counts["dhcp_stray"] += 1
                continue
            self._dhcp_reply(m, d, src)
            if m.sock is not sock:
                return

    # -- 3 / 4. TFTP ---------------------------------------------------------------------
    def _tftp_sock(self, m: Machine, handler) -> bool:
        self._close_sock(m)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.bind((m.ip, 0))
        except OSError as exc:
            s.close()
            self.fail(m, f"bind {m.ip}: {exc}")
            return False
        s.setblocking(False)
        m.sock = s
        self.sel.register(s, selectors.EVENT_READ, lambda sock, m=m: handler(m, sock))
        return True

    def _begin_probe(self, m: Machine) -> None:
        self._enter(m, "tftp_probe")
        if not self._tftp_sock(m, self._on_probe):
            return
        m.last = b"\0\x01" + m.file.encode() + b"\0octet\0tsize\0" + b"0\0blksize\0" + str(BLKSIZE).encode() + b"\0"
        m.peer = (m.tftp_host, 69)
        self._tftp_send(m)

    def _tftp_send(self, m: Machine) -> None:
        try:
            m.sock.sendto(m.last, m.peer)
        except OSError as exc:
            return self.fail(m, f"send: {exc}")
        self._arm(m, TFTP_TIMEOUT, self._tftp_timeout)

    def _tftp_timeout(self, m: Machine) -> None:
        m.tries += 1
        m.retrans += 1
        self.counts["retransmits"] += 1
        if m.tries > TFTP_RETRIES:
            return self.fail(m, f"timeout after {m.received if m.stage == 'tftp' else 0} bytes")
        if m.stage == "tftp" and m.expect:
            m.acked = m.expect - 1      # m.last is the ACK of the last block received in order
        self._tftp_send(m)

    def _on_probe(self, m: Machine, sock) -> None:
        try:
            data, src = sock.recvfrom(65536)
        except OSError as exc:
            return self.fail(m, f"recv: {exc}")
        op = data[1] if len(data) > 1 else 0
        if op == 5:
            return self.fail(m, "ERROR %d %s" % (int.from_bytes(data[2:4], "big"), data[4:-1].decode("latin-1")))
        if op != 6:
            return self.fail(m, f"expected OACK, got opcode {op}")
        fields = data[2:].split(b"\0")
        opts = {fields[k].decode().lower(): fields[k + 1].decode() for k in range(0, len(fields) - 1, 2)}
        if "tsize" not in opts:
            return self.fail(m, "OACK without tsize")
        m.tsize = int(opts["tsize"])
        try:
            sock.sendto(b"\0\x05\0\x08User aborted the transfer\0", src)   # what EDK2 sends
        except OSError:
            pass
        self._begin_transfer(m)

    def _begin_transfer(self, m: Machine) -> None:
        self._enter(m, "tftp")
        if not self._tftp_sock(m, self._on_data):
            return
        m.last = b"\0\x01" + m.file.encode() + b"\0octet\0blksize\0" + str(BLKSIZE).encode() + b"\0"
        if self.a.windowsize > 1:        # EDK2 asks windowsize=4 (RFC 7440)
            m.last += b"windowsize\0" + str(self.a.windowsize).encode() + b"\0"
        m.peer = (m.tftp_host, 69)
        m.expect, m.received = 0, 0      # 0: waiting for the OACK
        m.window, m.acked = 1, 0
        self._tftp_send(m)

    def _on_data(self, m: Machine, sock) -> None:
        while True:
            try:
                data, src = sock.recvfrom(65536)
            except BlockingIOError:
                return
            except OSError as exc:
                return self.fail(m, f"recv: {exc}")
            op = data[1] if len(data) > 1 else 0
            if op == 3:
                block = (data[2] << 8) | data[3]
                if m.expect == 0:
                    m.expect = 1          # a server that ignores options starts with DATA 1
                    m.peer = src
                if block != (m.expect & 0xFFFF) or src != m.peer:
                    self.counts["tftp_dup"] += 1
                    continue
                self.counts["tftp_data"] += 1
                n = len(data) - 4
                m.received += n
                m.last = b"\0\x04" + data[2:4]
                if n < BLKSIZE or m.expect - m.acked >= m.window:   # the window's last block: ACK it
                    sock.sendto(m.last, src)
                    m.acked = m.expect
                m.expect += 1
                m.tries = 0
                if n < BLKSIZE:
                    if m.tsize is not None and m.received != m.tsize:
                        return self.fail(m, f"got {m.received} bytes, tsize said {m.tsize}")
                    return self._begin_ipxe(m)
                self._arm(m, TFTP_TIMEOUT, self._tftp_timeout)
            elif op == 6 and m.expect == 0:
                fields = data[2:].split(b"\0")
                opts = {fields[k].lower(): fields[k + 1] for k in range(0, len(fields) - 1, 2)}
                m.window = int(opts.get(b"windowsize", b"1"))
                m.peer = src
                m.expect = 1
                m.last = b"\0\x04\0\0"
                sock.sendto(m.last, src)
                self._arm(m, TFTP_TIMEOUT, self._tftp_timeout)
            elif op == 5:
                return self.fail(m, "ERROR %d %s" % (int.from_bytes(data[2:4], "big"), data[4:-1].decode("latin-1")))
            else:
                self.counts["tftp_dup"] += 1

    # -- 5. iPXE's DHCP --------------------------------------------------------------------
    def _begin_ipxe(self, m: Machine) -> None:
        self._close_sock(m)
        self._enter(m, "ipxe_discover")
        m.xid = self.rng.getrandbits(32)
        m.item = None
        self.by_xid[m.xid] = m
        self._send_discover(m)

    # -- 7. HTTP ---------------------------------------------------------------------------
    def _begin_http(self, m: Machine) -> None:
        self._enter(m, "http")
        url = m.url or ""
        if not url.startswith("http://"):
            return self.fail(m, f"not an http URL: {url!r}")
        hostport, _, path = url[7:].partition("/")
        host, _, port = hostport.partition(":")
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.bind((m.ip, 0))
            s.connect_ex((host, int(port or 80)))
        except OSError as exc:
            s.close()
            return self.fail(m, f"connect: {exc}")
        m.sock = s
        m.buf = bytearray()
        m.last = (f"GET /{path} HTTP/1.1\r\nConnection: close\r\nUser-Agent: iPXE/1.21.1+ (storm)\r\n"
                  f"Host: {hostport}\r\n\r\n").encode()
        self.sel.register(s, selectors.EVENT_WRITE, lambda sock, m=m: self._on_http(m, sock))
        self._arm(m, HTTP_TIMEOUT, lambda m: self.fail(m, "timeout"))

    def _on_http(self, m: Machine, sock) -> None:
        if m.last is not None:
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                return self.fail(m, f"connect: {os.strerror(err)}")
            try:
                sock.sendall(m.last)
            except OSError as exc:
                return self.fail(m, f"send: {exc}")
            m.last = None
            self.sel.modify(sock, selectors.EVENT_READ, lambda sock, m=m: self._on_http(m, sock))
            return
        try:
            chunk = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as exc:
            return self.fail(m, f"recv: {exc}")
        if chunk:
            m.buf += chunk
            head, sep, body = bytes(m.buf).partition(b"\r\n\r\n")
            if sep:
                length = None
                for line in head.split(b"\r\n")[1:]:
                    k, _, v = line.partition(b":")
                    if k.strip().lower() == b"content-length":
                        length = int(v.strip())
                if length is None or len(body) < length:
                    return
            else:
                return
        head, sep, body = bytes(m.buf).partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0].split(b" ")
        if len(status) < 2 or status[1] != b"200":
            return self.fail(m, f"HTTP {head[:40]!r}")
        if not body.lstrip().startswith(b"#!ipxe"):
            return self.fail(m, f"not an iPXE script: {body[:30]!r}")
        self.script_bytes = getattr(self, "script_bytes", 0) + len(body)
        self.done(m)

    # -- loop ------------------------------------------------------------------------------
    def run(self, machines: list[Machine], offsets: list[float]) -> None:
        t0 = time.monotonic()
        for m, off in zip(machines, offsets):
            self.later(off, self.begin, m)
        hard_end = t0 + max(offsets, default=0) + self.a.deadline
        pending = len(machines)
        while True:
            now = time.monotonic()
            while self.timers and self.timers[0][0] <= now:
                _, _, fn, m, token = heapq.heappop(self.timers)
                if m is not None and fn == self.begin:
                    pending -= 1
                    fn(m)
                elif m is None or m.token == token:
                    fn(m)
            if pending == 0 and self.active == 0:
                break
            if now > hard_end:
                for m in machines:
                    if m.stage not in (None, "done", "failed"):
                        self.fail(m, "deadline")
                break
            timeout = max(0.0, min(self.timers[0][0] - now, 0.5)) if self.timers else 0.5
            for key, _ in self.sel.select(timeout):
                key.data(key.fileobj)


def worker(a, indices: list[int], offsets: list[float], out_fd: int) -> None:
    storm = Storm(a)
    machines = [Machine(i, machine_ip(i, a.base)) for i in indices]
    cpu0 = os.times()
    storm.run(machines, offsets)
    cpu1 = os.times()
    res = {"machines": [], "counts": storm.counts,
           "cpu": (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)}
    res["machines"] = [m.result() for m in machines]
    res["script_bytes"] = getattr(storm, "script_bytes", 0)
    with os.fdopen(out_fd, "w") as fh:
        json.dump(res, fh)


def iface_bytes(iface: str) -> tuple[int, int, int, int]:
    base = f"/sys/class/net/{iface}/statistics/"
    vals = []
    for name in ("rx_bytes", "tx_bytes", "rx_packets", "tx_packets"):
        with open(base + name) as fh:
            vals.append(int(fh.read()))
    return tuple(vals)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--machines", "-n", type=int, default=1000)
    ap.add_argument("--spread", type=float, default=10.0, help="arrivals within this many seconds")
    ap.add_argument("--arrival", choices=("even", "random"), default="even")
    ap.add_argument("--base", default="10.79", help="machine addresses <base>.1.1 up (added beforehand)")
    ap.add_argument("--iface", default="eth0")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--deadline", type=float, default=120.0, help="seconds after the last arrival")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--windowsize", type=int, default=1,
                    help="TFTP windowsize to ask for (EDK2 asks 4); 1: lock-step, no option sent")
    ap.add_argument("--l2", choices=("machine", "shared"), default="machine",
                    help="link-layer source of the broadcasts: each machine's own MAC (a packet socket), "
                         "or the generator interface's (a UDP socket)")
    a = ap.parse_args(argv)
    rng = random.Random(a.seed)
    n = a.machines
    if a.arrival == "even":
        offsets = [a.spread * i / n for i in range(n)]
    else:
        offsets = sorted(rng.uniform(0, a.spread) for _ in range(n))
    wall0, net0 = time.time(), iface_bytes(a.iface)
    children = []
    for w in range(a.workers):
        idx = list(range(w, n, a.workers))
        r, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            try:
                worker(a, idx, [offsets[i] for i in idx], wfd)
            finally:
                os._exit(0)
        os.close(wfd)
        children.append((pid, r))
    results = []
    for pid, r in children:
        with os.fdopen(r) as fh:
            text = fh.read()
        os.waitpid(pid, 0)
        results.append(json.loads(text) if text else {"machines": [], "counts": {}, "cpu": 0.0})
    net1 = iface_bytes(a.iface)
    machines = sorted((m for r in results for m in r["machines"]), key=lambda m: m["i"])
    counts: dict[str, int] = {}
    for r in results:
        for k, v in r["counts"].items():
            counts[k] = counts.get(k, 0) + v
    json.dump({"wall_start": wall0, "machines": machines, "counts": counts,
               "generator_cpu": round(sum(r["cpu"] for r in results), 3),
               "wire": {"rx_bytes": net1[0] - net0[0], "tx_bytes": net1[1] - net0[1],
                        "rx_packets": net1[2] - net0[2], "tx_packets": net1[3] - net0[3]}}, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
