#!/usr/bin/env python3
"""TFTP benchmark: proxydhcp's TFTP service beside tftpd-hpa and dnsmasq's TFTP.

Run as root from the project root:  .venv/bin/python bench/tftp_bench.py
(--servers proxydhcp,tftpd-hpa,dnsmasq --repeat 3 --clients 100 --cases all)

It makes two network namespaces joined by veth through a bridge (tests/netlab.Lab): the
server side, where each server listens on port 69 of its own address (proxydhcp 10.77.9.2,
tftpd-hpa 10.77.9.3, dnsmasq 10.77.9.4; all three run for the whole bench, pinned to CPU 0),
and the client side, which holds --clients addresses (10.77.9.10...) so a storm looks like
a rack of machines, not one host. The bench's own client runs in the client namespace,
pinned to CPU 1: this file's `client` subcommand for single transfers, and for the storms
bench/tftp_storm.c (built here with cc; the same protocol as this file's `storm`
subcommand, which --storm-client python selects: in Python the client's core fills up before
either server's does, and the storms then measure the client). Cases:

- lockstep_1468, lockstep_512: one 32 MiB transfer lock-step at blksize 1468, and at 512
  (65537 blocks: rollover); window16: blksize 1468 with windowsize 16 (a server without
  windowsize falls back to lock-step: the negotiated window is printed);
- storm500_c100: the storm of issue 3, 500 transfers of ipxe.efi, 100 at a time, each from a
  new port of one of the client addresses, iPXE-style (blksize 1432, tsize 0);
- storm200_c50, storm200_c200: the same with 200 transfers, 50 (200) at a time;
- edk2: 200 EDK2-style boots, 50 at a time: RRQ tsize=0 blksize=1468 windowsize=4, ERROR 8
  after the OACK, then a second RRQ blksize=1468 windowsize=4 from a new port for the file
  (../shared/captures/ovmf-edk2-pxe-then-ipxe-efi.txt); timed from the probe to the last block.

Every received file is CRC-checked and its size compared (a wrong byte is a failure). Each
case runs --repeat times; the rounds interleave the servers (round 1: every case on every
server, then round 2, ...), so a burst of load from elsewhere on the machine hits all of them
alike. Per case it prints each server's median and best throughput over the rounds, the
failures summed over all rounds, and proxydhcp / best peer (by median, and by best).
Server CPU is the median over the rounds of the user + system time the server used during
the case (the client's CPU is not in it): it shows which server does the same work
cheaper, which a noisy throughput figure may hide (n/a for tftpd-hpa, whose exited
per-transfer processes are not all counted).
Peak RSS is summed over each server's processes (tftpd-hpa forks per transfer), for the whole
bench and for each case alone (the main process's high-water mark is reset before each case).
After the cases, the targets of issue 3 against tftpd-hpa are printed, each MET or NOT MET.

Everything it starts is killed by PID and the namespaces are deleted at the end. No
traffic leaves the namespaces. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
PROJECT = os.path.dirname(HERE)
sys.path.insert(0, PROJECT)

SERVER_IPS = {"proxydhcp": "10.77.9.2", "tftpd-hpa": "10.77.9.3", "dnsmasq": "10.77.9.4",
              "proxydhcp-alt": "10.77.9.5"}       # --alt-tree: another checkout, for an A/B
OURS = ("proxydhcp", "proxydhcp-alt")                # never peers of each other
ALT_TREE = None
CLIENT_BASE = "10.77.9."
BIG = "big.bin"
BIG_SIZE = 32 * 1024 * 1024
STORM_FILE = "ipxe.efi"

# name -> (kind, parameters)
CASES = {
    "lockstep_1468": ("single", {"blksize": 1468, "window": 1}),
    "lockstep_512": ("single", {"blksize": 512, "window": 1}),
    "window16": ("single", {"blksize": 1468, "window": 16}),
    "storm500_c100": ("storm", {"n": 500, "concurrency": 100, "style": "ipxe"}),     # issue 3's storm
    "storm200_c50": ("storm", {"n": 200, "concurrency": 50, "style": "ipxe"}),
    "storm200_c200": ("storm", {"n": 200, "concurrency": 200, "style": "ipxe"}),
    "edk2": ("storm", {"n": 200, "concurrency": 50, "style": "edk2"}),
}


# -- the load client (runs inside the client namespace) -----------------------------------

def _ack(n: int) -> bytes:
    return b"\x00\x04" + bytes(((n >> 8) & 0xFF, n & 0xFF))


def _rrq(name: str, opts: dict) -> bytes:
    return (b"\x00\x01" + name.encode() + b"\x00octet\x00"
            + b"".join(f"{k}\x00{v}\x00".encode() for k, v in opts.items()))


def _oack(d: bytes) -> dict:
    f = d[2:-1].split(b"\x00")
    return {f[i].decode().lower(): f[i + 1].decode() for i in range(0, len(f) - 1, 2)}


ERROR8 = b"\x00\x05\x00\x08User aborted the transfer\x00"     # EDK2's words (captures)
ACKS = [_ack(n) for n in range(65536)]


def fetch_one(server: str, name: str, blksize: int, window: int, source: str = "0.0.0.0",
              timeout: float = 1.0, retries: int = 10) -> dict:
    """One blocking transfer; ACKs each window's last block (RFC 7440), resends on timeout.
    Kept cheap, so that a lock-step round trip is mostly the server's and the network's: the
    receive timeout is the kernel's (SO_RCVTIMEO: no poll before each read), datagrams are
    read into one buffer and CRC'd in place, ACKs are prebuilt, and the socket is connect()ed
    to the server's TID once it answers."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                 struct.pack("ll", int(timeout), int((timeout % 1) * 1e6)))
    s.bind((source, 0))
    opts = {"tsize": "0"}
    if blksize != 512:
        opts["blksize"] = str(blksize)
    if window > 1:
        opts["windowsize"] = str(window)
    rrq = _rrq(name, opts)
    buf = bytearray(70000)
    view = memoryview(buf)
    acks = ACKS
    t0 = time.perf_counter()
    s.sendto(rrq, (server, 69))
    peer = None
    expected, in_window, total, crc = 1, 0, 0, 0
    last_sent = rrq
    misses = 0
    negotiated = {"blksize": 512, "windowsize": 1}
    try:
        while True:
            try:
                if peer is None:
                    got, peer = s.recvfrom_into(buf)
                    s.connect(peer)             # from now on only the server's TID gets in
                else:
                    got = s.recv_into(buf)
            except BlockingIOError:             # SO_RCVTIMEO ran out
                misses += 1
                if misses > retries:
                    return {"ok": False, "error": "timeout", "bytes": total}
                if peer is None:
                    s.sendto(last_sent, (server, 69))
                else:
                    s.send(last_sent)
                continue
            op = buf[1]
            if op == 6:
                o = _oack(bytes(buf[:got]))
                negotiated = {"blksize": int(o.get("blksize", 512)), "windowsize": int(o.get("windowsize", 1))}
                blksize, window = negotiated["blksize"], negotiated["windowsize"]
                last_sent = acks[0]
                s.send(last_sent)
                continue
            if op == 5:
                return {"ok": False, "error": bytes(buf[4:got - 1]).decode(errors="replace"), "bytes": total}
            if op != 3:
                continue
            misses = 0
            block = (buf[2] << 8) | buf[3]
            if block == expected & 0xFFFF:
                size = got - 4
                crc = zlib.crc32(view[4:got], crc)
                total += size
                expected += 1
                in_window += 1
                last = size < blksize
                if last or in_window >= window:
                    in_window = 0
                    last_sent = acks[(expected - 1) & 0xFFFF]
                    s.send(last_sent)
                if last:
                    dt = time.perf_counter() - t0
                    return {"ok": True, "bytes": total, "crc": crc, "seconds": dt, **negotiated}
            else:
                in_window = 0
                last_sent = acks[(expected - 1) & 0xFFFF]
                s.send(last_sent)
    finally:
        s.close()


class _Slot:
    __slots__ = ("sock", "src", "peer", "phase", "tsize", "expected", "in_window", "total", "crc", "t0",
                 "last", "sent_at", "misses", "blksize", "window")


def storm(server: str, name: str, n: int, concurrency: int, sources: list[str], style: str = "ipxe",
          expect_size: int | None = None, expect_crc: int | None = None,
          rto: float = 1.0, max_misses: int = 8) -> dict:
    """n transfers, `concurrency` at a time, one epoll loop.
    style ipxe: RRQ blksize=1432 tsize=0, lock-step.
    style edk2: RRQ tsize=0 blksize=1468 windowsize=4, ERROR 8 after the OACK, then from a new
    port RRQ blksize=1468 windowsize=4 and the transfer (ACK per window, RFC 7440)."""
    ep = select.epoll()
    slots: dict[int, _Slot] = {}
    started = 0
    durations, failures = [], []
    ok_bytes = 0
    if style == "edk2":
        first = _rrq(name, {"tsize": "0", "blksize": "1468", "windowsize": "4"})
        second = _rrq(name, {"blksize": "1468", "windowsize": "4"})
    else:
        first = second = _rrq(name, {"blksize": "1432", "tsize": "0"})
    t_start = time.perf_counter()

    def open_sock(sl, rrq):
        sl.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sl.sock.bind((sl.src, 0))
        sl.sock.setblocking(False)
        sl.peer, sl.expected, sl.in_window, sl.total, sl.crc, sl.misses = None, 1, 0, 0, 0, 0
        sl.blksize, sl.window = 512, 1
        sl.last = rrq
        sl.sent_at = time.perf_counter()
        sl.sock.sendto(rrq, (server, 69))
        fd = sl.sock.fileno()
        slots[fd] = sl
        ep.register(fd, select.EPOLLIN)

    def close_sock(fd, sl):
        ep.unregister(fd)
        sl.sock.close()
        del slots[fd]

    def launch():
        nonlocal started
        sl = _Slot()
        sl.src = sources[started % len(sources)]
        sl.phase = "probe" if style == "edk2" else "xfer"
        sl.tsize = None
        sl.t0 = time.perf_counter()
        started += 1
        open_sock(sl, first)

    def finish(fd, sl, ok, why=""):
        nonlocal ok_bytes
        close_sock(fd, sl)
        if ok and expect_size is not None and (sl.total != expect_size or sl.crc != expect_crc):
            ok, why = False, f"wrong bytes ({sl.total} bytes)"
        if ok and sl.tsize is not None and sl.tsize != sl.total:
            ok, why = False, f"tsize {sl.tsize} but {sl.total} bytes"
        if ok:
            durations.append(time.perf_counter() - sl.t0)
            ok_bytes += sl.total
        else:
            failures.append(why)
        if started < n:
            launch()

    while started < min(concurrency, n):
        launch()
    last_sweep = time.perf_counter()
    # The client must not be the limit: per datagram it reads into one buffer, CRCs the
    # payload in place, sends a prebuilt ACK on a socket connect()ed to the server's TID.
    buf = bytearray(70000)
    view = memoryview(buf)
    acks = ACKS
    while slots:
        events = ep.poll(0.05)
        now = time.perf_counter()
        for fd, _ev in events:
            sl = slots.get(fd)
            if sl is None:
                continue
            sock = sl.sock
            while True:
                try:
                    if sl.peer is None:
                        got, addr = sock.recvfrom_into(buf)
                        sl.peer = addr
                        sock.connect(addr)          # from now on only the server's TID gets in
                    else:
                        got = sock.recv_into(buf)
                except BlockingIOError:
                    break
                except OSError as exc:
                    finish(fd, sl, False, str(exc))
                    break
                op = buf[1]
                sl.misses = 0
                if op == 3 and sl.phase == "xfer":
                    block = (buf[2] << 8) | buf[3]
                    last = False
                    if block == sl.expected & 0xFFFF:
                        size = got - 4
                        sl.crc = zlib.crc32(view[4:got], sl.crc)
                        sl.total += size
                        sl.expected += 1
                        sl.in_window += 1
                        last = size < sl.blksize
                        if not last and sl.in_window < sl.window:
                            continue
                    sl.in_window = 0
                    sl.last = acks[(sl.expected - 1) & 0xFFFF]
                    sl.sent_at = now
                    sock.send(sl.last)
                    if last:
                        finish(fd, sl, True)
                        break
                elif op == 6 and sl.phase == "probe":
                    sl.tsize = int(_oack(bytes(buf[:got])).get("tsize", -1))
                    sock.send(ERROR8)
                    close_sock(fd, sl)
                    sl.phase = "xfer"
                    open_sock(sl, second)
                    break
                elif op == 6:
                    o = _oack(bytes(buf[:got]))
                    sl.blksize = int(o.get("blksize", 512))
                    sl.window = int(o.get("windowsize", 1))
                    sl.last = acks[0]
                    sl.sent_at = now
                    sock.send(sl.last)
                elif op == 5:
                    finish(fd, sl, False, bytes(buf[4:got - 1]).decode(errors="replace"))
                    break
                else:
                    finish(fd, sl, False, f"unexpected opcode {op} in phase {sl.phase}")
                    break
        now = time.perf_counter()
        if now - last_sweep > 0.1:
            last_sweep = now
            for fd, sl in list(slots.items()):
                if now - sl.sent_at > rto:
                    sl.misses += 1
                    if sl.misses > max_misses:
                        finish(fd, sl, False, "timeout")
                        continue
                    sl.sent_at = now
                    sl.sock.sendto(sl.last, sl.peer or (server, 69))
    total = time.perf_counter() - t_start
    ds = sorted(durations)
    return {"ok": not failures, "transfers": n, "done": len(ds), "failures": len(failures),
            "failure_reasons": sorted(set(failures))[:5], "seconds": total, "bytes": ok_bytes,
            "p50": statistics.median(ds) if ds else None,
            "p95": ds[int(0.95 * (len(ds) - 1))] if ds else None}


def _client_main(argv) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["client", "storm"])
    p.add_argument("--server", required=True)
    p.add_argument("--file", default=BIG)
    p.add_argument("--blksize", type=int, default=1468)
    p.add_argument("--window", type=int, default=1)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--style", choices=["ipxe", "edk2"], default="ipxe")
    p.add_argument("--sources", default="0.0.0.0")
    p.add_argument("--expect-size", type=int)
    p.add_argument("--expect-crc", type=int)
    a = p.parse_args(argv)
    if a.mode == "client":
        print(json.dumps(fetch_one(a.server, a.file, a.blksize, a.window)))
    else:
        print(json.dumps(storm(a.server, a.file, a.n, a.concurrency, a.sources.split(","), a.style,
                               a.expect_size, a.expect_crc)))


# -- orchestration (root namespace) ---------------------------------------------------------

def _proc_parents() -> dict[int, int]:
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    parents[int(entry)] = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    return parents


def _rss_kb(pid: int, field: str = "VmRSS:") -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(root: int) -> float:
    """CPU time (user + system) of a server so far: its process, its live descendants, and
    the children it has reaped (tftpd-hpa's per-transfer processes)."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    for pid, ppid in _proc_parents().items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0, [root]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/stat") as fh:
                f = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(f[11]) + int(f[12]) + (int(f[13]) + int(f[14]) if p == root else 0)
        todo.extend(children.get(p, ()))
    return total / tick


class RSSSampler(threading.Thread):
    """Peak of the summed RSS of each server and its descendants (one /proc pass per sample)."""

    def __init__(self, pids: dict[str, int], interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pids, self.interval, self.stop_flag = pids, interval, False
        self.peak_kb = {k: 0 for k in pids}
        self.max_procs = {k: 0 for k in pids}
        self.seen: dict[str, set] = {k: set() for k in pids}
        self.current: tuple[str, str] | None = None        # (server, case) being run
        self.case_peak_kb: dict[tuple[str, str], int] = {}

    def begin(self, kind: str, case: str) -> None:
        """A case starts on one server: fold its main process's high-water mark into the
        bench's peak, then reset it (clear_refs 5), so the case's own peak can be read."""
        pid = self.pids[kind]
        self.peak_kb[kind] = max(self.peak_kb[kind], _rss_kb(pid, "VmHWM:"))
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as fh:
                fh.write("5")
        except OSError:
            pass
        self.case_peak_kb[(kind, case)] = max(self.case_peak_kb.get((kind, case), 0), _rss_kb(pid))
        self.current = (kind, case)

    def end(self) -> None:
        kind, case = self.current
        hwm = _rss_kb(self.pids[kind], "VmHWM:")
        self.case_peak_kb[(kind, case)] = max(self.case_peak_kb[(kind, case)], hwm)
        self.peak_kb[kind] = max(self.peak_kb[kind], hwm)
        self.current = None

    def run(self) -> None:
        while not self.stop_flag:
            children: dict[int, list[int]] = {}
            for pid, ppid in _proc_parents().items():
                children.setdefault(ppid, []).append(pid)
            for kind, root in self.pids.items():
                tree, todo = [], [root]
                while todo:
                    p = todo.pop()
                    tree.append(p)
                    todo.extend(children.get(p, ()))
                self.seen[kind].update(tree)
                self.max_procs[kind] = max(self.max_procs[kind], len(tree))
                # the main process's own high-water mark catches a peak between two samples
                total = sum(_rss_kb(p) for p in tree)
                self.peak_kb[kind] = max(self.peak_kb[kind], total, _rss_kb(root, "VmHWM:"))
                cur = self.current
                if cur is not None and cur[0] == kind:
                    self.case_peak_kb[cur] = max(self.case_peak_kb.get(cur, 0), total)
            time.sleep(self.interval)


def _server_argv(kind: str, root: str, workdir: str) -> list[str]:
    ip = SERVER_IPS[kind]
    if kind in OURS:
        cfg = os.path.join(workdir, "proxydhcp.yaml")
        with open(cfg, "w") as fh:
            fh.write(f"tftp: {{root: {root}, port: 69}}\nboot: {{firmware: {{x64-uefi: ipxe.efi}}}}\n"
                     f"log: {{level: warning}}\n")
        return [sys.executable, "-m", "proxydhcp.tftp", "-c", cfg, "--address", ip]
    if kind == "tftpd-hpa":
        return ["in.tftpd", "--foreground", "--secure", "--address", f"{ip}:69", root]
    if kind == "dnsmasq":
        return ["dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0", "--enable-tftp",
                f"--tftp-root={root}", f"--listen-address={ip}", "--bind-interfaces", "--user=root",
                "--tftp-max=1000", f"--pid-file={workdir}/dnsmasq.pid", "--log-facility=/dev/null"]
    raise ValueError(kind)


NICE = 0


def _pin(cpu: int) -> list[str]:
    """taskset prefix: servers on CPU 0, client on CPU 1, the same for every server, so a
    lock-step figure does not depend on where the scheduler happened to put the two;
    with --nice, also a scheduling priority (the same for every server and the client)."""
    prefix = ["nice", "-n", str(NICE)] if NICE else []
    if (os.cpu_count() or 1) >= 2 and shutil.which("taskset"):
        return prefix + ["taskset", "-c", str(cpu)]
    return prefix


def _run_client(ns: str, *args: str, timeout: float = 300, exe: list[str] | None = None) -> dict:
    """Runs this file's client (or `exe`) in the client namespace, pinned to CPU 1."""
    c0 = os.times()
    exe = exe or [sys.executable, os.path.abspath(__file__)]
    try:
        out = subprocess.run(["ip", "netns", "exec", ns, *_pin(1), *exe, *args],
                             capture_output=True, text=True, timeout=timeout, cwd=PROJECT)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"client ran over {timeout} s"}
    if out.returncode != 0:
        return {"ok": False, "error": out.stderr.strip()[-300:]}
    c1 = os.times()
    result = json.loads(out.stdout)
    # The client's own CPU (it is pinned alone on CPU 1): at about its wall time, the client
    # is the ceiling of the case and the servers cannot be told apart by it.
    result["client_cpu"] = c1.children_user + c1.children_system - c0.children_user - c0.children_system
    return result


def run_case(case: str, kind: str, cli_ns: str, args) -> dict:
    what, prm = CASES[case]
    server = SERVER_IPS[kind]
    if what == "single":
        r = _run_client(cli_ns, "client", "--server", server, "--file", BIG,
                        "--blksize", str(prm["blksize"]), "--window", str(prm["window"]))
        if r.get("ok") and (r["bytes"] != BIG_SIZE or r["crc"] != args.big_crc):
            r = {"ok": False, "error": f"wrong bytes ({r['bytes']} bytes)"}
        r["failures"] = 0 if r.get("ok") else 1
        return r
    sources = ",".join(f"{CLIENT_BASE}{10 + i}" for i in range(args.clients))
    if args.storm_exe:
        r = _run_client(cli_ns, server, STORM_FILE, str(prm["n"]), str(prm["concurrency"]), prm["style"],
                        sources, args.storm_path, exe=[args.storm_exe])
    else:
        r = _run_client(cli_ns, "storm", "--server", server, "--file", STORM_FILE, "--n", str(prm["n"]),
                        "--concurrency", str(prm["concurrency"]), "--style", prm["style"], "--sources", sources,
                        "--expect-size", str(args.storm_size), "--expect-crc", str(args.storm_crc))
    r.setdefault("failures", prm["n"])
    return r


def _rate(r: dict) -> float | None:
    """MB/s of one run, counted only if it had no failure."""
    if not r or r.get("failures") or not r.get("seconds"):
        return None
    return r["bytes"] / r["seconds"] / 1e6


def _describe(r: dict) -> str:
    if "p50" in r:
        s = f"total {r['seconds']:.2f} s, p50 {r['p50']:.3f} s, p95 {r['p95']:.3f} s" if r.get("p50") is not None else ""
    else:
        s = f"{r['seconds']:.2f} s, blksize {r['blksize']}, window {r['windowsize']}" if r.get("ok") else ""
    if r.get("client_cpu") is not None and r.get("seconds"):
        s += f", client CPU {r['client_cpu']:.2f} s"
    if r.get("failures"):
        s += f"  FAILED: {r.get('failure_reasons') or r.get('error')}"
    return s


def summarise(results: dict, kinds: list[str], cases: list[str]) -> dict:
    out = {}
    for case in cases:
        row = {}
        for kind in kinds:
            runs = results[kind][case]
            rates = [x for x in (_rate(r) for r in runs) if x is not None]
            cpus = [r["server_cpu"] for r in runs if "server_cpu" in r]
            row[kind] = {"median": statistics.median(rates) if rates else None,
                         "cpu_median": statistics.median(cpus) if cpus else None,
                         "best": max(rates) if rates else None,
                         "failures": sum(r.get("failures", 0) for r in runs), "runs": len(runs)}
        out[case] = row
    return out


def report(results: dict, summary: dict, kinds: list[str], cases: list[str], args, sampler) -> None:
    print()
    print(f"TFTP benchmark over veth between namespaces ({os.cpu_count()} CPUs), {args.repeat} rounds, "
          f"servers interleaved{f', nice {args.nice}' if args.nice else ''}; MB/s of file bytes; "
          f"median / best over the rounds; storm client: "
          f"{'bench/tftp_storm.c' if args.storm_exe else 'Python'}")
    peers = [k for k in kinds if k not in OURS]
    for case in cases:
        what, prm = CASES[case]
        title = {"single": f"one 32 MiB transfer, blksize {prm.get('blksize')}, windowsize {prm.get('window')}",
                 "storm": f"{prm.get('n')} x {STORM_FILE}, {prm.get('concurrency')} concurrent, {prm.get('style')}-style, "
                          f"from {args.clients} addresses"}[what]
        print(f"\n== {case}: {title}")
        row = summary[case]
        for kind in kinds:
            s = row[kind]
            fig = (f"{s['median']:7.1f} / {s['best']:7.1f} MB/s" if s["median"] is not None else "     no good run     ")
            runs = results[kind][case]
            detail = _describe(sorted(runs, key=lambda r: _rate(r) or 0)[len(runs) // 2]) if runs else ""
            cpu = f"server CPU {s['cpu_median']:.2f} s" if s.get("cpu_median") is not None else ""
            if sampler is not None and sampler.max_procs[kind] > 1:
                cpu = "server CPU n/a (forks)"      # exited children are not all counted
            rss = sampler.case_peak_kb.get((kind, case)) if sampler is not None else None
            rss = f"peak RSS {rss / 1024:.1f} MB   " if rss else ""
            print(f"  {kind:10s} {fig}   failures {s['failures']} in {s['runs']} runs   {rss}{cpu}   "
                  f"[median run: {detail}]")
        me = row.get("proxydhcp")
        if me and peers:
            parts = []
            for stat in ("median", "best"):
                cands = [(row[p][stat], p) for p in peers if row[p][stat] is not None]
                if me[stat] is not None and cands:
                    v, p = max(cands)
                    parts.append(f"{stat} {me[stat] / v:.2f}x ({p})")
            verdict = ""
            if parts:
                best_peer = max((row[p]["median"] or 0) for p in peers)
                ok = me["failures"] == 0 and me["median"] is not None and me["median"] >= best_peer
                verdict = "  target >= 1.0x, 0 failures: " + ("MET" if ok else "NOT MET")
            print(f"  proxydhcp / best peer: {', '.join(parts) or 'n/a'}{verdict}")
    print("\n== peak RSS over the whole bench (summed over each server's processes)")
    for kind in kinds:
        print(f"  {kind:10s} {sampler.peak_kb[kind] / 1024:6.1f} MB  (up to {sampler.max_procs[kind]} processes)")
    for line in issue3_targets(summary, cases, sampler):
        print(line)


RSS_TARGET_MB = 150


def issue3_targets(summary: dict, cases: list[str], sampler) -> list[str]:
    """Issue 3's targets, against tftpd-hpa, by the medians over the rounds: lock-step
    >= 1.0x tftpd-hpa; windowsize 16 >= 2x tftpd-hpa lock-step (blksize 1468); the storm of
    500 x 100 with zero failures and aggregate throughput >= tftpd-hpa's; RSS under 150 MB."""
    if "proxydhcp" not in next(iter(summary.values()), {}) or "tftpd-hpa" not in next(iter(summary.values()), {}):
        return []
    out = ["\n== issue 3 targets (proxydhcp against tftpd-hpa, medians over the rounds)"]

    def check(label: str, ok: bool, detail: str) -> None:
        out.append(f"  {label:58s} {'MET' if ok else 'NOT MET'}  ({detail})")

    def med(kind: str, case: str):
        return summary[case][kind]["median"] if case in summary else None

    for case in ("lockstep_1468", "lockstep_512"):
        me, peer = med("proxydhcp", case), med("tftpd-hpa", case)
        if case in cases:
            ok = bool(me and peer) and me >= peer and summary[case]["proxydhcp"]["failures"] == 0
            check(f"{case}: >= 1.0x tftpd-hpa", ok,
                  f"{me / peer:.2f}x" if me and peer else f"proxydhcp {me}, tftpd-hpa {peer}")
    if "window16" in cases and "lockstep_1468" in cases:
        me, peer = med("proxydhcp", "window16"), med("tftpd-hpa", "lockstep_1468")
        ok = bool(me and peer) and me >= 2 * peer and summary["window16"]["proxydhcp"]["failures"] == 0
        check("window16: >= 2x tftpd-hpa lock-step (blksize 1468)", ok,
              f"{me / peer:.2f}x" if me and peer else f"proxydhcp {me}, tftpd-hpa {peer}")
    if "storm500_c100" in cases:
        row = summary["storm500_c100"]
        me, peer = row["proxydhcp"]["median"], row["tftpd-hpa"]["median"]
        fails = row["proxydhcp"]["failures"]
        check("storm 500 x 100: zero failures", fails == 0, f"{fails} failed transfers in {row['proxydhcp']['runs']} runs")
        check("storm 500 x 100: aggregate throughput >= tftpd-hpa", bool(me and peer) and me >= peer,
              f"{me / peer:.2f}x" if me and peer else f"proxydhcp {me}, tftpd-hpa {peer}")
        storm_kb = sampler.case_peak_kb.get(("proxydhcp", "storm500_c100"), 0) if sampler else 0
        check(f"storm 500 x 100: peak RSS < {RSS_TARGET_MB} MB", 0 < storm_kb < RSS_TARGET_MB * 1024,
              f"{storm_kb / 1024:.1f} MB")
    if sampler is not None:
        kb = sampler.peak_kb["proxydhcp"]
        check(f"whole bench: peak RSS < {RSS_TARGET_MB} MB", 0 < kb < RSS_TARGET_MB * 1024,
              f"{kb / 1024:.1f} MB, with the 32 MiB file in the cache")
    return out


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] in ("client", "storm"):
        _client_main(sys.argv[1:])
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--servers", default="proxydhcp,tftpd-hpa,dnsmasq")
    p.add_argument("--cases", default="all", help=f"comma-separated, from: {', '.join(CASES)}")
    p.add_argument("--clients", type=int, default=100, help="client addresses the storms come from")
    p.add_argument("--repeat", type=int, default=3, help="rounds (each case on each server once per round)")
    p.add_argument("--nice", type=int, default=0,
                   help="run the servers and the client at this nice value (e.g. -5 on a machine shared "
                        "with other work: every server gets the same priority)")
    p.add_argument("--storm-client", choices=["c", "python"], default="c",
                   help="the storms' load client: bench/tftp_storm.c, built here with cc (default; the "
                        "Python client saturates its core before the servers do), or this file's own")
    p.add_argument("--alt-tree", metavar="DIR",
                   help="also run proxydhcp's TFTP from another checkout (as proxydhcp-alt, not a peer): "
                        "an A/B of two versions in the same rounds")
    p.add_argument("--json", action="store_true", help="also print the raw results as JSON")
    args = p.parse_args()
    global NICE
    NICE = args.nice
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    from tests.netlab import Lab
    if (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {1})    # the RSS sampler and this loop stay off the servers' CPU
    kinds = [k for k in args.servers.split(",") if k]
    global ALT_TREE
    if args.alt_tree:
        ALT_TREE = os.path.abspath(args.alt_tree)
        kinds.insert(1, "proxydhcp-alt")
    cases = list(CASES) if args.cases == "all" else [c for c in args.cases.split(",") if c]
    unknown = [k for k in kinds if k not in SERVER_IPS] + [c for c in cases if c not in CASES]
    if unknown:
        print(f"unknown server or case: {unknown}", file=sys.stderr)
        return 2
    missing = [k for k, exe in (("tftpd-hpa", "in.tftpd"), ("dnsmasq", "dnsmasq")) if k in kinds and not shutil.which(exe)]
    if missing:
        print(f"not installed: {missing}", file=sys.stderr)
        return 2
    workdir = tempfile.mkdtemp(prefix="tftp-bench-")
    os.chmod(workdir, 0o755)
    root = os.path.join(workdir, "root")
    os.mkdir(root)
    os.chmod(root, 0o755)
    big = os.urandom(BIG_SIZE)
    args.big_crc = zlib.crc32(big)
    with open(os.path.join(root, BIG), "wb") as fh:
        fh.write(big)
    del big
    src = "/boot/ipxe.efi" if os.path.exists("/boot/ipxe.efi") else None
    storm_data = open(src, "rb").read() if src else os.urandom(850528)
    args.storm_size, args.storm_crc = len(storm_data), zlib.crc32(storm_data)
    args.storm_path = os.path.join(root, STORM_FILE)
    with open(args.storm_path, "wb") as fh:
        fh.write(storm_data)
    for f in os.listdir(root):
        os.chmod(os.path.join(root, f), 0o644)
    args.storm_exe = None
    if args.storm_client == "c":
        args.storm_exe = os.path.join(workdir, "tftp_storm")
        cc = subprocess.run(["cc", "-O2", "-o", args.storm_exe, os.path.join(HERE, "tftp_storm.c")],
                            capture_output=True, text=True)
        if cc.returncode != 0:
            print(f"cannot build bench/tftp_storm.c (needs cc; or --storm-client python):\n"
                  f"{cc.stderr.strip()[-500:]}", file=sys.stderr)
            shutil.rmtree(workdir, ignore_errors=True)
            return 2
    results = {k: {c: [] for c in cases} for k in kinds}
    sampler = None
    procs, logs = {}, []
    try:
        with Lab(subnet="10.77.9") as lab:
            srv_ns = lab.host("srv", f"{SERVER_IPS['proxydhcp']}/24")
            cli_ns = lab.host("cli", f"{CLIENT_BASE}10/24")
            batch = "".join(f"addr add {SERVER_IPS[k]}/24 dev eth0\n" for k in kinds if k != "proxydhcp")
            if batch:
                subprocess.run(["ip", "netns", "exec", srv_ns, "ip", "-batch", "-"], input=batch, text=True, check=True)
            batch = "".join(f"addr add {CLIENT_BASE}{10 + i}/24 dev eth0\n" for i in range(1, args.clients))
            subprocess.run(["ip", "netns", "exec", cli_ns, "ip", "-batch", "-"], input=batch, text=True, check=True)
            for kind in kinds:
                log = open(os.path.join(workdir, f"{kind}.log"), "w")
                logs.append(log)
                procs[kind] = lab.spawn(srv_ns, *_pin(0), *_server_argv(kind, root, workdir), stdout=log,
                                        stderr=subprocess.STDOUT,
                                        cwd=ALT_TREE if kind == "proxydhcp-alt" else PROJECT)
            for kind in kinds:
                deadline = time.monotonic() + 15
                while True:
                    probe = _run_client(cli_ns, "client", "--server", SERVER_IPS[kind], "--file", STORM_FILE,
                                        "--blksize", "1432")
                    if probe.get("ok") or time.monotonic() > deadline:
                        break
                    time.sleep(0.2)
                if not probe.get("ok"):
                    print(f"{kind} is not answering: {probe}", file=sys.stderr)
                    return 1
            sampler = RSSSampler({k: p.pid for k, p in procs.items()})
            sampler.start()
            for rnd in range(args.repeat):
                for case in cases:
                    for kind in kinds:
                        c0 = cpu_seconds(procs[kind].pid)
                        sampler.begin(kind, case)
                        r = run_case(case, kind, cli_ns, args)
                        sampler.end()
                        r["server_cpu"] = cpu_seconds(procs[kind].pid) - c0
                        results[kind][case].append(r)
                        rate = _rate(r)
                        print(f"-- round {rnd + 1} {case:14s} {kind:10s} "
                              + (f"{rate:7.1f} MB/s" if rate is not None else f"FAILED {r.get('failure_reasons') or r.get('error')}"),
                              flush=True)
                        time.sleep(0.2)
            sampler.stop_flag = True
            sampler.join()
            for kind, proc in procs.items():
                lab.stop(proc)
                for pid in sampler.seen[kind] - {proc.pid}:     # forked children we started, by PID
                    try:
                        os.kill(pid, 15)
                    except ProcessLookupError:
                        pass
    finally:
        if sampler is not None:
            sampler.stop_flag = True
        for log in logs:
            log.close()
        shutil.rmtree(workdir, ignore_errors=True)
    summary = summarise(results, kinds, cases)
    report(results, summary, kinds, cases, args, sampler)
    if args.json:
        print(json.dumps({"summary": summary, "runs": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
