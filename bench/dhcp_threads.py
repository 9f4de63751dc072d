#!/usr/bin/env python3
"""Where the CPU goes while proxydhcp answers perfdhcp on 67: for each rate, one perfdhcp run
(a relay sending PXE DISCOVERs, as in dhcp_bench.py) against one proxydhcp that stays up, and
for it the share of DISCOVERs unanswered, the reactor thread's time run and time waited for a
CPU (/proc/PID/schedstat), each daemon thread's and the event-store writer's CPU, and
perfdhcp's. No peer: dhcp_bench.py compares with dnsmasq; this shows why a figure is what it is.
usage (root): .venv/bin/python bench/dhcp_threads.py [--seconds 6] [--no-events] RATE [RATE ...]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

import dhcp_bench  # noqa: E402
from tests.netlab import Lab  # noqa: E402

HZ = os.sysconf("SC_CLK_TCK")


def _cpu(stat_path: str) -> tuple[str, float]:
    """(name, user + system seconds) of a process or thread."""
    text = open(stat_path).read()
    name = text[text.index("(") + 1:text.rindex(")")]
    fields = text[text.rindex(")") + 2:].split()
    return name, (int(fields[11]) + int(fields[12])) / HZ


def _children(pid: int) -> list[int]:
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                if int(open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(p))
            except (OSError, IndexError, ValueError):
                pass
    return out


def snapshot(pid: int) -> dict:
    """CPU seconds by thread of the daemon and by child process, and the reactor's schedstat."""
    cpu = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        name, seconds = _cpu(f"/proc/{pid}/task/{tid}/stat")
        cpu["reactor (main thread)" if int(tid) == pid else f"thread {tid} {name}"] = seconds
    for child in _children(pid):
        try:
            cpu[f"writer process {child}"] = _cpu(f"/proc/{child}/stat")[1]
        except OSError:
            pass
    ran, waited, _ = map(int, open(f"/proc/{pid}/schedstat").read().split())
    return {"cpu": cpu, "ran": ran, "waited": waited, "at": time.monotonic()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rates", nargs="+", type=int)
    ap.add_argument("--seconds", type=int, default=6)
    ap.add_argument("--no-events", action="store_true", help="proxydhcp without its event store")
    args = ap.parse_args()
    with Lab("10.78.0") as lab:
        srv = lab.host("srv", "10.78.0.2/24")
        load = lab.host("load", "10.78.0.3/24")
        proc = dhcp_bench.start_proxydhcp(lab, srv, not args.no_events)
        time.sleep(1)
        for rate in args.rates:
            before = snapshot(proc.pid)
            c0 = os.times()
            run = lab.sh(load, f"exec {dhcp_bench.perfdhcp_cmd(rate, args.seconds, '10.78.0.2')}", check=False)
            after = snapshot(proc.pid)
            c1 = os.times()
            span = after["at"] - before["at"]
            sent = int(re.search(r"sent packets: (\d+)", run.stdout).group(1))
            got = int(re.search(r"received packets: (\d+)", run.stdout).group(1))
            print(f"{rate}/s for {args.seconds} s: {sent} sent, {100 - got * 100 / max(sent, 1):.2f}% unanswered; "
                  f"reactor ran {(after['ran'] - before['ran']) / span / 1e7:.0f}% and waited for a CPU "
                  f"{(after['waited'] - before['waited']) / span / 1e7:.0f}% of the time")
            perfdhcp = c1.children_user + c1.children_system - c0.children_user - c0.children_system
            print(f"    {'perfdhcp (the load)':32s} {perfdhcp / span * 100:5.1f}% of a core")
            for name, seconds in after["cpu"].items():
                share = (seconds - before["cpu"].get(name, 0.0)) / span * 100
                print(f"    {name:32s} {share:5.1f}% of a core")
            time.sleep(2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
