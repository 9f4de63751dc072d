#!/usr/bin/env python3
"""TFTP benchmark: proxydhcp's TFTP service beside tftpd-hpa and dnsmasq's TFTP.

Run as root from the project root:  .venv/bin/python bench/tftp_bench.py
(--servers proxydhcp,tftpd-hpa,dnsmasq --storm 500 --concurrency 100 --clients 100)

It makes two network namespaces joined by veth through a bridge (tests/netlab.Lab):
the server side (10.77.9.2) and the client side, which holds --clients addresses
(10.77.9.10...) so a storm looks like a rack of machines, not one host. Each server runs
alone in turn, bound to 10.77.9.2:69 in its namespace, and is measured with the same client
(this file's `client` and `storm` subcommands, run in the client namespace):

- one 32 MiB transfer lock-step at blksize 1468, at blksize 512 (65537 blocks: rollover),
  and at blksize 1468 with windowsize 16 (a server without windowsize falls back to
  lock-step: the negotiated window is printed);
- a storm: --storm transfers of ipxe.efi, --concurrency at a time, each from a new port
  of one of the client addresses, iPXE-style (blksize 1432, tsize 0): failures, total time,
  aggregate throughput, p50/p95 per transfer; every received file is CRC-checked;
- peak RSS of the server, summed over its processes (tftpd-hpa forks per transfer),
  sampled every 20 ms.

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
import subprocess
import sys
import tempfile
import threading
import time
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
PROJECT = os.path.dirname(HERE)
sys.path.insert(0, PROJECT)

SERVER_IP = "10.77.9.2"
CLIENT_BASE = "10.77.9."
BIG = "big.bin"
BIG_SIZE = 32 * 1024 * 1024
STORM_FILE = "ipxe.efi"


# -- the load client (runs inside the client namespace) -----------------------------------

def _ack(n: int) -> bytes:
    return b"\x00\x04" + bytes(((n >> 8) & 0xFF, n & 0xFF))


def _rrq(name: str, opts: dict) -> bytes:
    return (b"\x00\x01" + name.encode() + b"\x00octet\x00"
            + b"".join(f"{k}\x00{v}\x00".encode() for k, v in opts.items()))


def fetch_one(server: str, name: str, blksize: int, window: int, source: str = "0.0.0.0",
              timeout: float = 1.0, retries: int = 10) -> dict:
    """One blocking transfer; ACKs each window's last block (RFC 7440), resends on timeout."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind((source, 0))
    s.settimeout(timeout)
    opts = {"tsize": "0"}
    if blksize != 512:
        opts["blksize"] = str(blksize)
    if window > 1:
        opts["windowsize"] = str(window)
    rrq = _rrq(name, opts)
    t0 = time.perf_counter()
    s.sendto(rrq, (server, 69))
    peer = None
    expected, in_window, total, crc = 1, 0, 0, 0
    last_sent = rrq
    misses = 0
    negotiated = {"blksize": 512, "windowsize": 1}
    while True:
        try:
            d, addr = s.recvfrom(70000)
        except socket.timeout:
            misses += 1
            if misses > retries:
                return {"ok": False, "error": "timeout", "bytes": total}
            s.sendto(last_sent, peer or (server, 69))
            continue
        if peer is None:
            peer = addr
        elif addr != peer:
            continue
        op = d[1]
        if op == 6:
            f = d[2:-1].split(b"\x00")
            o = {f[i].decode().lower(): f[i + 1].decode() for i in range(0, len(f) - 1, 2)}
            negotiated = {"blksize": int(o.get("blksize", 512)), "windowsize": int(o.get("windowsize", 1))}
            blksize, window = negotiated["blksize"], negotiated["windowsize"]
            last_sent = _ack(0)
            s.sendto(last_sent, peer)
            continue
        if op == 5:
            return {"ok": False, "error": d[4:-1].decode(errors="replace"), "bytes": total}
        if op != 3:
            continue
        misses = 0
        block = (d[2] << 8) | d[3]
        if block == expected & 0xFFFF:
            payload = d[4:]
            crc = zlib.crc32(payload, crc)
            total += len(payload)
            expected += 1
            in_window += 1
            last = len(payload) < blksize
            if last or in_window >= window:
                in_window = 0
                last_sent = _ack(expected - 1)
                s.sendto(last_sent, peer)
            if last:
                dt = time.perf_counter() - t0
                s.close()
                return {"ok": True, "bytes": total, "crc": crc, "seconds": dt, **negotiated}
        else:
            in_window = 0
            last_sent = _ack(expected - 1)
            s.sendto(last_sent, peer)


class _Slot:
    __slots__ = ("sock", "peer", "expected", "total", "crc", "t0", "last", "sent_at", "misses", "blksize")


def storm(server: str, name: str, n: int, concurrency: int, sources: list[str], blksize: int = 1432,
          rto: float = 1.0, max_misses: int = 8) -> dict:
    """n transfers, `concurrency` at a time, one epoll loop; iPXE-style lock-step."""
    ep = select.epoll()
    slots: dict[int, _Slot] = {}
    started = done = 0
    durations, failures, sizes, crcs = [], [], set(), set()
    ok_bytes = 0
    rrq = _rrq(name, {"blksize": str(blksize), "tsize": "0"})
    t_start = time.perf_counter()

    def launch():
        nonlocal started
        sl = _Slot()
        sl.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sl.sock.bind((sources[started % len(sources)], 0))
        sl.sock.setblocking(False)
        sl.peer, sl.expected, sl.total, sl.crc, sl.misses, sl.blksize = None, 1, 0, 0, 0, blksize
        sl.t0 = sl.sent_at = time.perf_counter()
        sl.last = rrq
        sl.sock.sendto(rrq, (server, 69))
        fd = sl.sock.fileno()
        slots[fd] = sl
        ep.register(fd, select.EPOLLIN)
        started += 1

    def finish(fd, sl, ok, why=""):
        nonlocal done, ok_bytes
        ep.unregister(fd)
        sl.sock.close()
        del slots[fd]
        done += 1
        if ok:
            durations.append(time.perf_counter() - sl.t0)
            sizes.add(sl.total)
            ok_bytes += sl.total
            crcs.add(sl.crc)
        else:
            failures.append(why)
        if started < n:
            launch()

    while started < min(concurrency, n):
        launch()
    last_sweep = time.perf_counter()
    while slots:
        for fd, _ev in ep.poll(0.05):
            sl = slots.get(fd)
            if sl is None:
                continue
            sock = sl.sock
            while True:
                try:
                    d, addr = sock.recvfrom(70000)
                except BlockingIOError:
                    break
                except OSError as exc:
                    finish(fd, sl, False, str(exc))
                    break
                if sl.peer is None:
                    sl.peer = addr
                elif addr != sl.peer:
                    continue
                op = d[1]
                sl.misses = 0
                if op == 3:
                    block = (d[2] << 8) | d[3]
                    if block == sl.expected & 0xFFFF:
                        payload = d[4:]
                        sl.crc = zlib.crc32(payload, sl.crc)
                        sl.total += len(payload)
                        sl.expected += 1
                    sl.last = _ack(sl.expected - 1)
                    sl.sent_at = time.perf_counter()
                    sock.sendto(sl.last, sl.peer)
                    if block == (sl.expected - 1) & 0xFFFF and len(d) - 4 < sl.blksize:
                        finish(fd, sl, True)
                        break
                elif op == 6:
                    f = d[2:-1].split(b"\x00")
                    o = {f[i].decode().lower(): f[i + 1].decode() for i in range(0, len(f) - 1, 2)}
                    sl.blksize = int(o.get("blksize", 512))
                    sl.last = _ack(0)
                    sl.sent_at = time.perf_counter()
                    sock.sendto(sl.last, sl.peer)
                elif op == 5:
                    finish(fd, sl, False, d[4:-1].decode(errors="replace"))
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
    return {"transfers": n, "ok": len(ds), "failures": len(failures), "failure_reasons": sorted(set(failures))[:5],
            "seconds": total, "bytes": ok_bytes,
            "distinct_sizes": len(sizes), "distinct_crcs": len(crcs),
            "p50": statistics.median(ds) if ds else None,
            "p95": ds[int(0.95 * (len(ds) - 1))] if ds else None}


def _client_main(argv) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["client", "storm"])
    p.add_argument("--server", default=SERVER_IP)
    p.add_argument("--file", default=BIG)
    p.add_argument("--blksize", type=int, default=1468)
    p.add_argument("--window", type=int, default=1)
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--concurrency", type=int, default=100)
    p.add_argument("--sources", default="0.0.0.0")
    a = p.parse_args(argv)
    if a.mode == "client":
        print(json.dumps(fetch_one(a.server, a.file, a.blksize, a.window)))
    else:
        print(json.dumps(storm(a.server, a.file, a.n, a.concurrency, a.sources.split(","), a.blksize)))


# -- orchestration (root namespace) ---------------------------------------------------------

def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                out.append(int(entry))
        except (OSError, IndexError, ValueError):
            pass
    return out


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo.extend(_children(p))
    return pids


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class RSSSampler(threading.Thread):
    """Peak of the summed RSS of a process and its descendants."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak_kb, self.max_procs, self.stop_flag, self.seen = pid, 0, 0, False, set()

    def run(self) -> None:
        while not self.stop_flag:
            pids = _tree(self.pid)
            self.seen.update(pids)
            self.max_procs = max(self.max_procs, len(pids))
            self.peak_kb = max(self.peak_kb, sum(_rss_kb(p) for p in pids))
            time.sleep(0.02)


def _server_argv(kind: str, root: str, workdir: str) -> list[str]:
    if kind == "proxydhcp":
        cfg = os.path.join(workdir, "proxydhcp.yaml")
        with open(cfg, "w") as fh:
            fh.write(f"tftp: {{root: {root}, port: 69}}\nboot: {{firmware: {{x64-uefi: ipxe.efi}}}}\n"
                     f"log: {{level: warning}}\n")
        return [sys.executable, "-m", "proxydhcp.tftp", "-c", cfg, "--address", SERVER_IP]
    if kind == "tftpd-hpa":
        return ["in.tftpd", "--foreground", "--secure", "--address", f"{SERVER_IP}:69", root]
    if kind == "dnsmasq":
        return ["dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0", "--enable-tftp",
                f"--tftp-root={root}", f"--listen-address={SERVER_IP}", "--bind-interfaces", "--user=root",
                "--tftp-max=1000", f"--pid-file={workdir}/dnsmasq.pid", "--log-facility=/dev/null"]
    raise ValueError(kind)


def _pin(cpu: int) -> list[str]:
    """taskset prefix: server on CPU 0, client on CPU 1, the same for every server, so a
    lock-step figure does not depend on where the scheduler happened to put the two."""
    if (os.cpu_count() or 1) >= 2 and shutil.which("taskset"):
        return ["taskset", "-c", str(cpu)]
    return []


def _run_client(lab, ns: str, *args: str, timeout: float = 600) -> dict:
    out = subprocess.run(["ip", "netns", "exec", ns, *_pin(1), sys.executable, os.path.abspath(__file__), *args],
                         capture_output=True, text=True, timeout=timeout, cwd=PROJECT)
    if out.returncode != 0:
        return {"ok": False, "error": out.stderr.strip()[-300:]}
    return json.loads(out.stdout)


def bench_server(kind: str, lab, srv_ns: str, cli_ns: str, root: str, workdir: str, args) -> dict:
    log = open(os.path.join(workdir, f"{kind}.log"), "w")
    proc = lab.spawn(srv_ns, *_pin(0), *_server_argv(kind, root, workdir), stdout=log, stderr=subprocess.STDOUT,
                     cwd=PROJECT)
    sampler = RSSSampler(proc.pid)
    sampler.start()
    result: dict = {"server": kind}
    try:
        deadline = time.monotonic() + 15
        while True:
            probe = _run_client(lab, cli_ns, "client", "--file", STORM_FILE, "--blksize", "1432")
            if probe.get("ok") or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if not probe.get("ok"):
            result["error"] = f"server not answering: {probe}"
            return result
        for label, bs, win in (("lockstep_1468", 1468, 1), ("lockstep_512", 512, 1), ("window16_1468", 1468, 16)):
            runs = []
            for _ in range(args.repeat):
                r = _run_client(lab, cli_ns, "client", "--file", BIG, "--blksize", str(bs), "--window", str(win))
                if r.get("ok") and (r["bytes"] != BIG_SIZE or r["crc"] != args.big_crc):
                    r = {"ok": False, "error": "wrong bytes"}
                runs.append(r)
            good = sorted((r for r in runs if r.get("ok")), key=lambda r: r["seconds"])
            result[label] = good[len(good) // 2] if len(good) == len(runs) else next(r for r in runs if not r.get("ok"))
        sources = ",".join(f"{CLIENT_BASE}{10 + i}" for i in range(args.clients))
        result["storm"] = _run_client(lab, cli_ns, "storm", "--file", STORM_FILE, "--n", str(args.storm),
                                      "--concurrency", str(args.concurrency), "--sources", sources)
        s = result["storm"]
        if "distinct_crcs" in s and s["ok"] and (s["distinct_crcs"] != 1 or s["distinct_sizes"] != 1):
            s["failures"] = s.get("failures", 0) + s["ok"]
            s["failure_reasons"] = ["corrupted files"]
        time.sleep(0.3)
    finally:
        sampler.stop_flag = True
        sampler.join()
        result["peak_rss_mb"] = sampler.peak_kb / 1024
        result["max_procs"] = sampler.max_procs
        lab.stop(proc)
        for pid in sampler.seen - {proc.pid}:       # forked children we started, by PID
            try:
                os.kill(pid, 15)
            except ProcessLookupError:
                pass
        log.close()
    return result


def _mbps(r: dict) -> str:
    if not r or not r.get("ok"):
        return f"FAILED ({(r or {}).get('error', '?')})"
    return f"{r['bytes'] / r['seconds'] / 1e6:7.1f} MB/s  ({r['seconds']:.2f} s, blksize {r['blksize']}, window {r['windowsize']})"


def report(results: list[dict], args) -> None:
    print()
    print(f"TFTP benchmark over veth between namespaces ({os.cpu_count()} CPUs); client: bench/tftp_bench.py")
    for r in results:
        print(f"\n== {r['server']}")
        if "error" in r:
            print(f"  {r['error']}")
            continue
        print(f"  (single transfers: median of {args.repeat} runs)")
        print(f"  32 MiB lock-step blksize 1468 : {_mbps(r.get('lockstep_1468'))}")
        print(f"  32 MiB lock-step blksize 512  : {_mbps(r.get('lockstep_512'))}")
        print(f"  32 MiB blksize 1468 window 16 : {_mbps(r.get('window16_1468'))}")
        s = r.get("storm") or {}
        if "seconds" in s:
            print(f"  storm {s['transfers']} x {STORM_FILE}, {args.concurrency} concurrent from {args.clients} addresses: "
                  f"{s['failures']} failures, {s['seconds']:.2f} s, {s['bytes'] / s['seconds'] / 1e6:.1f} MB/s aggregate, "
                  f"p50 {s['p50']:.3f} s, p95 {s['p95']:.3f} s"
                  + (f"  reasons: {s['failure_reasons']}" if s['failures'] else ""))
        else:
            print(f"  storm: FAILED {s}")
        print(f"  peak RSS {r['peak_rss_mb']:.1f} MB (summed over up to {r['max_procs']} processes)")
    by = {r["server"]: r for r in results}
    me, hpa = by.get("proxydhcp"), by.get("tftpd-hpa")

    def rate(r, key):
        x = (r or {}).get(key) or {}
        return x["bytes"] / x["seconds"] if x.get("ok") else None
    if me and hpa:
        print("\n== targets (proxydhcp vs tftpd-hpa)")
        for key in ("lockstep_1468", "lockstep_512"):
            a, b = rate(me, key), rate(hpa, key)
            if a and b:
                print(f"  {key}: {a / b:.2f}x tftpd-hpa (target >= 1.0x)")
        a, b = rate(me, "window16_1468"), rate(hpa, "lockstep_1468")
        if a and b:
            print(f"  window16 vs tftpd-hpa lock-step 1468: {a / b:.2f}x (target >= 2x)")
        sm, sh = me.get("storm") or {}, hpa.get("storm") or {}
        if "seconds" in sm and "seconds" in sh:
            print(f"  storm: {sm['failures']} failures (target 0); aggregate "
                  f"{(sm['bytes'] / sm['seconds']) / (sh['bytes'] / sh['seconds']):.2f}x tftpd-hpa (target >= 1.0x)")
        print(f"  peak RSS {me['peak_rss_mb']:.1f} MB (target < 150 MB)")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] in ("client", "storm"):
        _client_main(sys.argv[1:])
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--servers", default="proxydhcp,tftpd-hpa,dnsmasq")
    p.add_argument("--storm", type=int, default=500)
    p.add_argument("--concurrency", type=int, default=100)
    p.add_argument("--clients", type=int, default=100, help="client addresses the storm comes from")
    p.add_argument("--repeat", type=int, default=3, help="runs of each single transfer (the median is shown)")
    p.add_argument("--json", action="store_true", help="also print the raw results as JSON")
    args = p.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    from tests.netlab import Lab
    kinds = [k for k in args.servers.split(",") if k]
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
    with open(os.path.join(root, STORM_FILE), "wb") as fh:
        fh.write(open(src, "rb").read() if src else os.urandom(850528))
    for f in os.listdir(root):
        os.chmod(os.path.join(root, f), 0o644)
    results = []
    try:
        with Lab(subnet="10.77.9") as lab:
            srv_ns = lab.host("srv", f"{SERVER_IP}/24")
            cli_ns = lab.host("cli", f"{CLIENT_BASE}10/24")
            batch = "".join(f"addr add {CLIENT_BASE}{10 + i}/24 dev eth0\n" for i in range(1, args.clients))
            subprocess.run(["ip", "netns", "exec", cli_ns, "ip", "-batch", "-"], input=batch, text=True, check=True)
            for kind in kinds:
                print(f"-- {kind} ...", flush=True)
                results.append(bench_server(kind, lab, srv_ns, cli_ns, root, workdir, args))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report(results, args)
    if args.json:
        print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
