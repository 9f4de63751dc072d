#!/usr/bin/env python3
"""Full-flow boot storm: N simulated UEFI machines (EDK2 PXE, then iPXE) against proxydhcp
and against the reference setup (dnsmasq proxy + dnsmasq TFTP + busybox httpd), same run.

Lab (network namespaces, nothing on the machine's own interfaces):
    <p>srv  10.79.0.2/16  the server(s) under test
    <p>gen  10.79.0.3/16  the load generator (bench/storm_gen.py), plus one address per
                          simulated machine (10.79.1.1, 10.79.1.2, ...): the lease the corporate
                          DHCP server would have given it, so a session's IP and MAC match
Both on a bridge. The server namespace gets a permanent neighbour entry for every machine
address: the kernel's ARP table is shared by all namespaces and its default hard limit
(gc_thresh3 = 1024) would otherwise drop replies at 1,000 machines. A real segment of that
size needs the same sysctl raised.

Per machine (see storm_gen.py): DISCOVER 67 -> proxy OFFER -> REQUEST 4011 -> ACK ipxe.efi ->
TFTP tsize probe + lock-step transfer at blksize 1468 -> iPXE DISCOVER -> OFFER -> 4011
REQUEST -> ACK script URL -> HTTP GET of the script. Printed per server: machines completed
and failed (by the stage they stopped at), the time from the first DISCOVER to the last script,
per-stage latency p50/p99, CPU seconds and peak RSS (VmHWM) of every server process, bytes
on the wire; for proxydhcp also its succeeded sessions (/api/sessions and `proxydhcp
sessions`) and proxydhcp_boot_sessions_total{outcome="succeeded"} from /metrics.

usage (root): .venv/bin/python bench/storm.py [--machines 1000] [--spread 10]
              [--arrival even|random] [--servers proxydhcp,reference] [--workers 1]
              [--windowsize 1] [--l2 machine|shared] [--py-spy FILE] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.netlab import Lab, wait_for  # noqa: E402

PY = sys.executable
SERVER = "10.79.0.2"
GEN = "10.79.0.3"
BASE = "10.79"
HTTP_PORT = 8080
IPXE_EFI = "/usr/lib/ipxe/ipxe.efi"
GEN_SCRIPT = os.path.join(ROOT, "bench", "storm_gen.py")
STAGES = ("discover", "request", "tftp_probe", "tftp", "ipxe_discover", "ipxe_request", "http")
REFERENCE_SCRIPT = "#!ipxe\necho reference boot script for ${mac}\nexit\n"


def machine_ip(i: int) -> str:
    return f"{BASE}.{1 + i // 254}.{1 + i % 254}"


# --- lab ----------------------------------------------------------------------------------

def build_lab(machines: int) -> Lab:
    lab = Lab("10.79.0")
    try:
        lab.workdir = tempfile.mkdtemp(prefix="storm-")
        os.chmod(lab.workdir, 0o755)   # the daemon drops root after binding (run.user)
        lab.srv = lab.host("srv", f"{SERVER}/16")
        lab.gen = lab.host("gen", f"{GEN}/16")
        batch = os.path.join(lab.workdir, "addrs.batch")
        with open(batch, "w") as fh:
            for i in range(machines):
                fh.write(f"addr add {machine_ip(i)}/16 dev eth0\n")
        subprocess.run(["ip", "-n", lab.gen, "-batch", batch], check=True, capture_output=True)
        gen_mac = lab.sh(lab.gen, "cat /sys/class/net/eth0/address").stdout.strip()
        with open(batch, "w") as fh:
            for i in range(machines):
                fh.write(f"neigh replace {machine_ip(i)} lladdr {gen_mac} dev eth0 nud permanent\n")
        subprocess.run(["ip", "-n", lab.srv, "-batch", batch], check=True, capture_output=True)
        lab.tftp_root = os.path.join(lab.workdir, "tftp")
        os.makedirs(lab.tftp_root)
        shutil.copy(os.path.realpath(IPXE_EFI), os.path.join(lab.tftp_root, "ipxe.efi"))
    except BaseException:
        lab.close()
        raise
    return lab


def close_lab(lab: Lab) -> None:
    workdir = getattr(lab, "workdir", None)
    lab.close()
    if workdir:
        shutil.rmtree(workdir, ignore_errors=True)


# --- servers ------------------------------------------------------------------------------

PROXYDHCP_CONFIG = """\
dhcp:
  interfaces: [eth0]{dhcp_extra}
tftp:
  root: {root}
  max_transfers: {max_transfers}
http:
  port: {port}
boot:
  firmware: {{x64-uefi: ipxe.efi}}
state:
  dir: {state}
log:
  level: info
"""


def start_proxydhcp(lab: Lab, machines: int) -> dict:
    work = os.path.join(lab.workdir, "proxydhcp")
    os.makedirs(work, exist_ok=True)
    cfg = os.path.join(work, "proxydhcp.yaml")
    with open(cfg, "w") as fh:
        extra = "" if getattr(lab, "l2", "machine") == "machine" else \
            "\n  rate_per_source: 0          # one link-layer sender for every machine (--l2 shared)" \
            "\n  max_sessions_per_source: 0"
        fh.write(PROXYDHCP_CONFIG.format(dhcp_extra=extra, root=lab.tftp_root, max_transfers=max(1000, 2 * machines),
                                         port=HTTP_PORT, state=os.path.join(work, "state")))
    log = os.path.join(work, "proxydhcp.log")
    with open(log, "wb") as out:
        proc = lab.spawn(lab.srv, PY, "-m", "proxydhcp", "serve", "-c", cfg, stdout=out,
                         stderr=subprocess.STDOUT, cwd=ROOT)
    proc.log_path = log
    up = wait_for(lambda: proc.poll() is not None or (
        "listening on eth0" in open(log).read() and http_get(lab, "/healthz") is not None), 20)
    if not up or proc.poll() is not None:
        raise RuntimeError("proxydhcp did not start:\n" + open(log).read()[-2000:])
    return {"name": "proxydhcp", "procs": {"proxydhcp": proc}, "config": cfg, "log": log}


def start_reference(lab: Lab, machines: int) -> dict:
    work = os.path.join(lab.workdir, "reference")
    www = os.path.join(work, "www")
    os.makedirs(www, exist_ok=True)
    with open(os.path.join(www, "boot.ipxe"), "w") as fh:
        fh.write(REFERENCE_SCRIPT)
    url = f"http://{SERVER}:{HTTP_PORT}/boot.ipxe"
    dns_log = os.path.join(work, "dnsmasq.log")
    with open(dns_log, "wb") as out:
        dnsmasq = lab.spawn(
            lab.srv, "dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0", "--user=root",
            "--interface=eth0", "--dhcp-range=10.79.0.0,proxy,255.255.0.0",
            "--dhcp-userclass=set:ipxe,iPXE",
            "--pxe-service=tag:!ipxe,X86-64_EFI,Network boot,ipxe.efi",
            f"--pxe-service=tag:ipxe,X86-64_EFI,iPXE boot script,{url}",
            "--enable-tftp", f"--tftp-root={lab.tftp_root}", f"--tftp-max={max(1000, 2 * machines)}",
            f"--pid-file={work}/dnsmasq.pid", f"--log-facility={work}/dnsmasq-syslog.log",
            stdout=out, stderr=subprocess.STDOUT)
    dnsmasq.log_path = dns_log
    httpd_log = os.path.join(work, "httpd.log")
    with open(httpd_log, "wb") as out:
        httpd = lab.spawn(lab.srv, "busybox", "httpd", "-f", "-p", f"{SERVER}:{HTTP_PORT}", "-h", www,
                          stdout=out, stderr=subprocess.STDOUT)
    httpd.log_path = httpd_log
    up = wait_for(lambda: dnsmasq.poll() is not None or httpd.poll() is not None or (
        "proxy on subnet" in open(f"{work}/dnsmasq-syslog.log").read()
        if os.path.exists(f"{work}/dnsmasq-syslog.log") else False), 10)
    wait_for(lambda: http_get(lab, "/boot.ipxe") is not None, 10)
    if not up or dnsmasq.poll() is not None or httpd.poll() is not None:
        raise RuntimeError("reference setup did not start:\n" + open(dns_log).read()[-2000:]
                           + open(httpd_log).read()[-2000:])
    return {"name": "dnsmasq+busybox", "procs": {"dnsmasq": dnsmasq, "busybox httpd": httpd}}


def http_get(lab: Lab, path: str, timeout: float = 10.0) -> str | None:
    out = lab.sh(lab.gen, f"curl -s -f -m {timeout} 'http://{SERVER}:{HTTP_PORT}{path}'", check=False)
    return out.stdout if out.returncode == 0 else None


# --- process figures ----------------------------------------------------------------------

def proc_cpu(pid: int) -> float:
    """utime + stime of the process and of its children it has waited for (busybox httpd
    forks one per connection), in seconds."""
    with open(f"/proc/{pid}/stat") as fh:
        f = fh.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in f[11:15]) / os.sysconf("SC_CLK_TCK")


def proc_hwm_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def descendants(pid: int) -> list[int]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            kids.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for c in kids.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def snapshot(setup: dict) -> dict:
    snap = {}
    for name, proc in setup["procs"].items():
        pids = [proc.pid] + descendants(proc.pid)
        cpu = hwm = 0
        for p in pids:
            try:
                cpu += proc_cpu(p)
                hwm = max(hwm, proc_hwm_kb(p))
            except OSError:
                pass
        snap[name] = {"cpu": cpu, "hwm_kb": hwm, "pids": len(pids)}
    return snap


# --- running ------------------------------------------------------------------------------

def run_generator(lab: Lab, machines: int, spread: float, arrival: str, workers: int,
                  deadline: float = 120.0, l2: str = "machine",
                  windowsize: int = 1) -> dict:
    cmd = ["ip", "netns", "exec", lab.gen, PY, GEN_SCRIPT, "--machines", str(machines),
           "--spread", str(spread), "--arrival", arrival, "--base", BASE, "--workers", str(workers),
           "--deadline", str(deadline), "--l2", l2, "--windowsize", str(windowsize)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=spread + deadline + 60)
    if out.returncode != 0 or not out.stdout.strip():
        raise RuntimeError(f"generator failed ({out.returncode}): {out.stderr[-2000:]}")
    return json.loads(out.stdout)


def proxydhcp_sessions(lab: Lab, setup: dict, machines: int, settle: float = 15.0) -> dict:
    """Succeeded sessions as the daemon reports them: /api/sessions, `proxydhcp sessions`
    (the event store) and the boot-session counter in /metrics. Waits up to `settle` s
    for the event store to catch up."""
    def api_count():
        body = http_get(lab, f"/api/sessions?limit={min(1000, max(1, machines))}")
        rows = json.loads(body) if body else []
        return sum(1 for r in rows if r.get("state") == "succeeded"), rows

    def cli_rows():
        out = subprocess.run([PY, "-m", "proxydhcp", "sessions", "-c", setup["config"], "--json",
                              "--limit", str(machines + 100)], capture_output=True, text=True, cwd=ROOT)
        return json.loads(out.stdout) if out.returncode == 0 and out.stdout.strip() else []

    def metric():
        body = http_get(lab, "/metrics") or ""
        total = 0.0
        for line in body.splitlines():
            if line.startswith("proxydhcp_boot_sessions_total{") and 'outcome="succeeded"' in line:
                total += float(line.rsplit(" ", 1)[1])
        return total

    deadline = time.monotonic() + settle
    while True:
        rows = cli_rows()
        ok = sum(1 for r in rows if r.get("state") == "succeeded")
        if ok >= machines or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    api_ok, _ = api_count()
    stages: dict[str, int] = {}
    for r in rows:
        if r.get("state") != "succeeded":
            key = f"{r.get('state')} at {r.get('last_stage')}"
            stages[key] = stages.get(key, 0) + 1
    return {"cli_succeeded": ok, "cli_sessions": len(rows), "api_succeeded": api_ok,
            "api_limit": min(1000, machines), "metric_succeeded": metric(), "not_succeeded": stages}


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(p * len(values)))]


def summarize(result: dict) -> dict:
    ms = result["machines"]
    ok = [m for m in ms if m["ok"]]
    failed: dict[str, int] = {}
    errors: dict[str, int] = {}
    for m in ms:
        if not m["ok"]:
            failed[m["failed_stage"] or "not_started"] = failed.get(m["failed_stage"] or "not_started", 0) + 1
            key = f"{m['failed_stage']}: {m['error']}"
            errors[key] = errors.get(key, 0) + 1
    starts = [m["start"] for m in ms if m["start"] is not None]
    ends = [m["end"] for m in ok]
    lat = {}
    for st in STAGES + ("total",):
        if st == "total":
            vals = [m["end"] - m["start"] for m in ok]
        else:
            vals = [m["lat"][st] for m in ms if st in m["lat"]]
        lat[st] = {"p50_ms": pct(vals, 0.5) and round(1000 * pct(vals, 0.5), 2),
                   "p99_ms": pct(vals, 0.99) and round(1000 * pct(vals, 0.99), 2),
                   "max_ms": vals and round(1000 * max(vals), 2), "n": len(vals)}
    return {"machines": len(ms), "completed": len(ok), "failed": len(ms) - len(ok),
            "failed_by_stage": failed, "errors": dict(sorted(errors.items(), key=lambda kv: -kv[1])[:8]),
            "first_discover_to_last_script_s": round(max(ends) - min(starts), 2) if ends and starts else None,
            "latency": lat, "retransmits": sum(m["retrans"] for m in ms),
            "counts": result["counts"], "generator_cpu_s": result["generator_cpu"], "wire": result["wire"]}


def measure(lab: Lab, start, args) -> dict:
    setup = start(lab, args.machines)
    try:
        time.sleep(0.5)
        before = snapshot(setup)
        spy = None
        if args.py_spy and setup["name"] == "proxydhcp":
            spy = subprocess.Popen([os.path.join(os.path.dirname(PY), "py-spy"), "record", "--nonblocking",
                                    "-r", "200", "-f", "raw", "-o", args.py_spy,
                                    "-p", str(setup["procs"]["proxydhcp"].pid)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        result = run_generator(lab, args.machines, args.spread, args.arrival, args.workers, args.deadline,
                               args.l2, args.windowsize)
        after = snapshot(setup)
        if spy is not None:
            spy.send_signal(2)
            spy.wait(30)
        s = summarize(result)
        s["server"] = setup["name"]
        s["processes"] = {name: {"cpu_s": round(after[name]["cpu"] - before[name]["cpu"], 2),
                                 "peak_rss_mb": round(after[name]["hwm_kb"] / 1024, 1),
                                 "processes": after[name]["pids"]} for name in after}
        if setup["name"] == "proxydhcp":
            s["sessions"] = proxydhcp_sessions(lab, setup, args.machines)
        for name, proc in setup["procs"].items():
            if proc.poll() is not None:
                s.setdefault("died", []).append(f"{name} exited {proc.returncode}")
    finally:
        for proc in setup["procs"].values():
            lab.stop(proc)
    return s


def report(s: dict) -> None:
    n = s["machines"]
    print(f"\n== {s['server']}: {s['completed']}/{n} machines completed, {s['failed']} failed"
          + (f" {s['failed_by_stage']}" if s["failed"] else ""))
    for err, count in s["errors"].items():
        print(f"   {count:5d} x {err}")
    print(f"   first DISCOVER to last script: {s['first_discover_to_last_script_s']} s; "
          f"client retransmissions: {s['retransmits']}; generator CPU {s['generator_cpu_s']} s")
    print("   stage            p50 ms     p99 ms     max ms      n")
    for st, v in s["latency"].items():
        print(f"   {st:14s} {v['p50_ms'] if v['p50_ms'] is not None else '-':>8} {v['p99_ms'] if v['p99_ms'] is not None else '-':>10}"
              f" {v['max_ms'] if v['max_ms'] else '-':>10} {v['n']:6d}")
    total_cpu = 0.0
    for name, p in s["processes"].items():
        total_cpu += p["cpu_s"]
        print(f"   {name:16s} CPU {p['cpu_s']:7.2f} s   peak RSS (VmHWM) {p['peak_rss_mb']:6.1f} MB"
              f"   ({p['processes']} process{'es' if p['processes'] != 1 else ''})")
    w = s["wire"]
    done = max(1, s["completed"])
    print(f"   per completed boot: server CPU {1000 * total_cpu / done:.1f} ms, on the wire "
          f"{(w['rx_bytes'] + w['tx_bytes']) / done / 1024:.0f} KiB in {(w['rx_packets'] + w['tx_packets']) / done:.0f} "
          f"frames (generator interface, both directions)")
    if "sessions" in s:
        x = s["sessions"]
        print(f"   proxydhcp sessions succeeded: {x['cli_succeeded']} (`proxydhcp sessions`, of {x['cli_sessions']}),"
              f" {x['api_succeeded']} (/api/sessions, limit {x['api_limit']}),"
              f" proxydhcp_boot_sessions_total{{outcome=\"succeeded\"}} {x['metric_succeeded']:.0f}")
        if x["not_succeeded"]:
            print(f"   sessions not succeeded: {x['not_succeeded']}")
    for d in s.get("died", []):
        print(f"   !! {d}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--machines", "-n", type=int, default=1000)
    ap.add_argument("--spread", type=float, default=10.0, help="all machines arrive within this many seconds")
    ap.add_argument("--arrival", choices=("even", "random"), default="even")
    ap.add_argument("--servers", default="proxydhcp,reference")
    ap.add_argument("--workers", type=int, default=1, help="generator processes")
    ap.add_argument("--deadline", type=float, default=120.0, help="seconds after the last arrival")
    ap.add_argument("--l2", choices=("machine", "shared"), default="machine",
                    help="link-layer source of the machines' broadcasts: their own MACs (default) or the "
                         "generator's one interface (then proxydhcp's per-sender caps see one sender)")
    ap.add_argument("--windowsize", type=int, default=1,
                    help="TFTP windowsize the machines ask for (EDK2 asks 4; default 1: lock-step)")
    ap.add_argument("--json", help="write the summaries here")
    ap.add_argument("--py-spy", metavar="FILE", help="profile proxydhcp during the storm (py-spy, collapsed stacks)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("storm.py needs root (network namespaces)", file=sys.stderr)
        return 2
    starters = {"proxydhcp": start_proxydhcp, "reference": start_reference}
    summaries = []
    lab = build_lab(args.machines)
    lab.l2 = args.l2
    try:
        print(f"boot storm: {args.machines} machines arriving within {args.spread} s ({args.arrival}), "
              f"ipxe.efi {os.path.getsize(os.path.join(lab.tftp_root, 'ipxe.efi'))} bytes, "
              f"{os.cpu_count()} CPUs, generator workers {args.workers}, TFTP windowsize {args.windowsize}", flush=True)
        for name in args.servers.split(","):
            s = measure(lab, starters[name], args)
            summaries.append(s)
            report(s)
    finally:
        close_lab(lab)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(summaries, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
