#!/usr/bin/env python3
"""ProxyDHCP rate and latency: proxydhcp against dnsmasq in proxy mode, same run, same machine.

Builds two namespaces on a bridge (server 10.78.0.2, load 10.78.0.3, probe 10.78.0.4),
then for each server:
  * UDP 67: Kea's perfdhcp -4 -i (a relay: replies go to giaddr:67) sends PXE DISCOVERs
    (options 60, 93, 97) at increasing rates; the highest rate with < 1% drops is reported.
  * p99 reply latency at 5,000 DISCOVERs/s: while perfdhcp loads the server, a probe relay
    times 500 DISCOVERs one by one.
  * UDP 4011: a load generator sends REQUESTs (EDK2's shape) at increasing rates from
    several sockets and counts ACKs; highest rate with < 1% drops, and p99 latency at 5,000/s.
usage (root): .venv/bin/python bench/dhcp_bench.py [--seconds 5] [--rates 2000,5000,...]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.netlab import Lab, wait_for  # noqa: E402

VC = "PXEClient:Arch:00007:UNDI:003000".encode().hex()
UUID = "00" + "6c74656e62610040800000000000000a"

PROBE = r'''
import socket, sys, time, json, os, select
sys.path.insert(0, %(root)r)
from tests.dhcp_clients import request_bytes
from proxydhcp.dhcp import options as opt
mode, n, rate, target, me = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
mac = lambda i, k: "52:54:%%02x:%%02x:%%02x:%%02x" %% (k, i >> 16 & 255, i >> 8 & 255, i & 255)
if mode == "relay":      # a relay agent: giaddr = us, replies to us:67
    s.bind(("0.0.0.0", 67))
    reqs = [request_bytes("edk2", mac=mac(i, 1), xid=i + 1, giaddr=me) for i in range(n)]
    dest = (target, 67)
elif mode == "bcast":    # what firmware does: broadcast from 68, replies broadcast to 68
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    s.setsockopt(socket.SOL_SOCKET, 25, b"eth0")
    s.bind(("0.0.0.0", 68))
    reqs = [request_bytes("edk2", mac=mac(i, 3), xid=i + 1) for i in range(n)]
    dest = ("255.255.255.255", 67)
else:                    # 4011: EDK2's unicast REQUEST from its address
    s.bind(("0.0.0.0", 0))
    reqs = [request_bytes("edk2", mac=mac(i, 2), xid=i + 1, message=opt.REQUEST, ciaddr=me) for i in range(n)]
    dest = (target, 4011)
s.setblocking(False)
sent = {}
lat = []
interval = 1.0 / rate if rate > 0 else 0
start = time.perf_counter()
i = 0
def drain():
    while True:
        try:
            data = s.recv(4096)
        except BlockingIOError:
            return
        xid = int.from_bytes(data[4:8], "big")
        t = sent.pop(xid, None)
        if t is not None:
            lat.append(time.perf_counter() - t)
while i < n:
    now = time.perf_counter()
    due = start + i * interval
    if now < due:
        select.select([s], [], [], due - now)
        drain()
        continue
    sent[i + 1] = time.perf_counter()
    try:
        s.sendto(reqs[i], dest)
    except BlockingIOError:
        pass
    i += 1
    if interval == 0 or i %% 64 == 0:
        drain()
end = time.perf_counter() + 1.0
while time.perf_counter() < end and sent:
    select.select([s], [], [], 0.05)
    drain()
lat.sort()
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else None
print(json.dumps({"sent": n, "received": len(lat), "elapsed": round(time.perf_counter() - start - 1.0, 3),
                  "p50_ms": q(0.5), "p99_ms": q(0.99), "max_ms": q(1.0)}))
'''


def perfdhcp(lab: Lab, ns: str, rate: int, seconds: int) -> dict:
    cmd = (f"perfdhcp -4 -i -r {rate} -R 100000 -p {seconds} -o 60,{VC} -o 93,0007 -o 97,{UUID} 10.78.0.2")
    out = lab.sh(ns, cmd, check=False).stdout
    get = lambda key: float(re.search(rf"{key}: ([\d.]+)", out).group(1)) if re.search(rf"{key}: ([\d.]+)", out) else None
    sent, received = get("sent packets"), get("received packets")
    return {"rate": rate, "sent": sent, "received": received,
            "drops_pct": round(100.0 * (1 - received / sent), 2) if sent else 100.0,
            "avg_ms": get("avg delay"), "max_ms": get("max delay")}


def probe(lab: Lab, ns: str, mode: str, n: int, rate: float) -> dict:
    me = {lab.load: "10.78.0.3", lab.probe: "10.78.0.4"}[ns]
    script = os.path.join(lab.workdir, "probe.py")
    with open(script, "w") as fh:
        fh.write(PROBE % {"root": ROOT})
    out = lab.sh(ns, f"{sys.executable} {script} {mode} {n} {rate} 10.78.0.2 {me}", check=False)
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"error": out.stderr[-300:]}


def start_proxydhcp(lab: Lab, ns: str):
    cfg = os.path.join(lab.workdir, "proxydhcp.yaml")
    with open(cfg, "w") as fh:
        fh.write(f"tftp: {{enabled: false}}\nhttp: {{enabled: false}}\nstate: {{dir: {lab.workdir}/state}}\n"
                 "dhcp: {rate_per_mac: 0, rate_per_source: 0}\n")  # the load comes from one sender
    log = open(os.path.join(lab.workdir, "proxydhcp.log"), "w")
    proc = lab.spawn(ns, sys.executable, "-m", "proxydhcp", "serve", "-c", cfg, stdout=log,
                     stderr=subprocess.STDOUT, cwd=ROOT)
    wait_for(lambda: "listening on eth0" in open(log.name).read(), 15)
    return proc


def start_dnsmasq(lab: Lab, ns: str):
    proc = lab.spawn(ns, "dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0", "--user=root",
                     "--dhcp-range=10.78.0.0,proxy", "--pxe-service=X86-64_EFI,iPXE,ipxe.efi",
                     "--pxe-service=x86PC,iPXE,undionly", f"--pid-file={lab.workdir}/dnsmasq.pid",
                     "--log-facility=/dev/null")
    time.sleep(1.0)
    return proc


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        f = fh.read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def child_pid(proc) -> int:
    """`ip netns exec` execs the program, so the Popen pid is the server's."""
    return proc.pid


def measure(lab, name, start, rates, seconds):
    proc = start(lab, lab.srv)
    res = {"server": name, "perfdhcp": [], "bcast": [], "4011": []}
    try:
        for rate in rates:
            r = perfdhcp(lab, lab.load, rate, seconds)
            res["perfdhcp"].append(r)
            print(f"  {name:10s} 67   perfdhcp {rate:6d}/s: drops {r['drops_pct']:6.2f}%  avg {r['avg_ms']} ms  max {r['max_ms']} ms", flush=True)
            if r["drops_pct"] >= 1.0:
                break
        # p99 at 5,000/s: background perfdhcp at 5000/s, probe meanwhile at 200/s
        bg = subprocess.Popen(["ip", "netns", "exec", lab.load, "sh", "-c",
                               f"perfdhcp -4 -i -r 4800 -R 100000 -p {seconds + 2} -o 60,{VC} -o 93,0007 -o 97,{UUID} 10.78.0.2"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        cpu0 = cpu_seconds(child_pid(proc))
        p = probe(lab, lab.probe, "relay", 200 * seconds, 200)
        cpu1 = cpu_seconds(child_pid(proc))
        bg.wait()
        res["p99_67_at_5000"] = p
        print(f"  {name:10s} 67   latency at 5000/s: p50 {p.get('p50_ms') and round(p['p50_ms'], 3)} ms  p99 {p.get('p99_ms') and round(p['p99_ms'], 3)} ms "
              f" ({p.get('received')}/{p.get('sent')} answered), server CPU {100 * (cpu1 - cpu0) / seconds:.0f}%", flush=True)
        for mode, key in (("bcast", "bcast"), ("4011", "4011")):
            for rate in rates:
                n = rate * seconds
                p = probe(lab, lab.load, mode, n, rate)
                drops = 100.0 * (1 - p.get("received", 0) / n)
                p["rate"], p["drops_pct"] = rate, round(drops, 2)
                res[key].append(p)
                print(f"  {name:10s} {mode:5s} load    {rate:6d}/s: drops {drops:6.2f}%  "
                      f"p50 {p.get('p50_ms') and round(p['p50_ms'], 3)} ms  "
                      f"p99 {p.get('p99_ms') and round(p['p99_ms'], 3)} ms", flush=True)
                if drops >= 1.0:
                    break
    finally:
        lab.stop(proc)
    return res


def best(rows):
    ok = [r["rate"] for r in rows if r.get("drops_pct", 100) < 1.0]
    return max(ok) if ok else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rates", default="1000,2000,5000,8000,12000,16000,20000")
    args = ap.parse_args()
    rates = [int(x) for x in args.rates.split(",")]
    with Lab("10.78.0") as lab:
        lab.workdir = tempfile.mkdtemp(prefix="dhcp-bench-")
        lab.srv = lab.host("srv", "10.78.0.2/24")
        lab.load = lab.host("load", "10.78.0.3/24")
        lab.probe = lab.host("probe", "10.78.0.4/24")
        results = [measure(lab, "proxydhcp", start_proxydhcp, rates, args.seconds),
                   measure(lab, "dnsmasq", start_dnsmasq, rates, args.seconds)]
    print("\nsummary (highest rate with < 1% drops; p99 latency at 5,000 DISCOVERs/s)")
    ours, peer = results
    for key, label in (("perfdhcp", "67 perfdhcp (relay)"), ("bcast", "67 broadcast"), ("4011", "4011 REQUEST")):
        a, b = best(ours[key]), best(peer[key])
        ratio = f"{a / b:.2f}x" if b else "peer answered none"
        print(f"  {label:18s} proxydhcp {a:6d}/s   dnsmasq {b:6d}/s   ratio {ratio}")
    for r in results:
        p = r["p99_67_at_5000"]
        print(f"  p99 at 5000/s      {r['server']:10s} {p.get('p99_ms') and round(p['p99_ms'], 3)} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
