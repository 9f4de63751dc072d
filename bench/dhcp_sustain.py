#!/usr/bin/env python3
"""What a sustained DHCP flood does to the event store: perfdhcp sends --rate new machines a
second for --seconds to proxydhcp (default config but with the per-sender limits off, HTTP on
for /metrics), in namespaces over veth, as bench/dhcp_bench.py does. Every 5 s it prints the
event store's queue and its dropped events (proxydhcp_event_store_queue,
proxydhcp_event_store_dropped_total) and the proxy offers the boot sessions counted; at the
end, what perfdhcp sent and got answered. The writer process runs at idle CPU priority: this
shows where it falls behind (replies first) and that the losses are counted.
usage (root): .venv/bin/python bench/dhcp_sustain.py [--rate 15000] [--seconds 30]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

import dhcp_bench  # noqa: E402
from tests.netlab import Lab, wait_for  # noqa: E402

SERVER = "10.78.0.2"


def scrape(lab: Lab, ns: str) -> dict:
    text = lab.sh(ns, f"curl -s --max-time 5 http://{SERVER}:8080/metrics", check=False).stdout

    def value(pattern: str) -> float:
        m = re.search(rf"^{pattern} ([0-9.e+]+)$", text, re.M)
        return float(m.group(1)) if m else 0.0
    return {"queue": value("proxydhcp_event_store_queue"),
            "dropped": value("proxydhcp_event_store_dropped_total"),
            "offers": value(r'proxydhcp_boot_stage_total\{arch="x64-uefi",stage="proxy_offer"\}')}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=int, default=15000)
    ap.add_argument("--seconds", type=int, default=30)
    args = ap.parse_args()
    with Lab("10.78.0") as lab:
        srv = lab.host("srv", f"{SERVER}/24")
        load = lab.host("load", "10.78.0.3/24")
        cfg = os.path.join(lab.tmp, "proxydhcp.yaml")
        with open(cfg, "w") as fh:
            fh.write(f"tftp: {{enabled: false}}\nhttp: {{port: 8080}}\nstate: {{dir: {lab.tmp}/state}}\n"
                     + dhcp_bench._dhcp_limits_off())
        log = os.path.join(lab.tmp, "proxydhcp.log")
        lab.spawn(srv, sys.executable, "-m", "proxydhcp", "serve", "-c", cfg, stdout=open(log, "w"),
                  stderr=subprocess.STDOUT, cwd=ROOT)
        if not wait_for(lambda: " running (config:" in open(log).read(), 20):
            print(open(log).read())
            return 1
        gen = subprocess.Popen(["ip", "netns", "exec", load, "sh", "-c",
                                dhcp_bench.perfdhcp_cmd(args.rate, args.seconds, SERVER)],
                               stdout=subprocess.PIPE, text=True)
        t0 = time.monotonic()
        while gen.poll() is None or time.monotonic() - t0 < args.seconds + 15:
            time.sleep(5)
            m = scrape(lab, srv)
            print(f"t+{time.monotonic() - t0:4.0f} s  queue {m['queue']:7.0f}  dropped {m['dropped']:8.0f}  "
                  f"offers in boot sessions {m['offers']:8.0f}", flush=True)
            if gen.poll() is not None and m["queue"] == 0:
                break
        out = gen.communicate()[0]
        sent = re.search(r"sent packets: (\d+)", out)
        got = re.search(r"received packets: (\d+)", out)
        final = scrape(lab, srv)
        sent_n, got_n = int(sent.group(1)) if sent else 0, int(got.group(1)) if got else 0
        print(f"\nperfdhcp {args.rate}/s for {args.seconds} s: sent {sent_n}, answered {got_n} "
              f"({100.0 * got_n / max(1, sent_n):.2f}%); events dropped by the store "
              f"{final['dropped']:.0f} ({100.0 * final['dropped'] / max(1, got_n):.1f}% of the replies), "
              f"offers in boot sessions {final['offers']:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
