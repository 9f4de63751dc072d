"""A real Prometheus scrapes a real proxydhcp while scripted PXE clients boot, one of them
failing; then every panel query of contrib/grafana goes through Prometheus's HTTP API and
the boot-health panels must show what was booted.

The daemon (DHCP 67/4011, TFTP, HTTP) and Prometheus share one network namespace: Prometheus
scrapes the daemon's /metrics on that namespace's loopback, with contrib/prometheus's scrape
config (scrape and evaluation every second) and its recording and alert rules. Each client
machine is a namespace of its own on the bridge and boots step by step as firmware does:
DISCOVER on 67 (and REQUEST on 4011 for UEFI), the iPXE build over TFTP (curl), iPXE's own
DISCOVER, then the boot script over HTTP. One arm64 machine is handed a firmware file that was
removed from the TFTP root after the daemon started: its transfer fails (not_found), and the
session is failed when it stalls.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile

import dpkt
import pytest
import yaml

from proxydhcp import __version__
from tests.netlab import Lab, have_root, wait_for
from tests.unit.test_promql import DASHBOARDS, PROMETHEUS, RULE_FILES, walk_panels

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PY = sys.executable
SERVER = "10.77.0.2"
PROM_PORT = 9090
HOOK = os.path.join(ROOT, "hooks", "dnsmasq-hook")

pytestmark = pytest.mark.skipif(
    not have_root() or not shutil.which("prometheus") or not shutil.which("promtool") or not shutil.which("curl"),
    reason="needs root, iproute2, prometheus + promtool (Debian package prometheus) and curl")

CONFIG = """
dhcp: {{interfaces: [eth0]}}
tftp: {{root: {root}, port: 69}}
http: {{port: 8080}}
boot: {{firmware: {{bios: undionly.kpxe, x64-uefi: ipxe.efi, arm64-uefi: snp-arm64.efi}}}}
state: {{dir: {state}}}
events: {{stall_timeout: 5}}
profiles:
  hello: {{script: "echo hello {{{{ mac }}}}"}}
groups:
  - {{name: default, profile: hello}}
log: {{level: debug}}
"""

# What Grafana substitutes (the range covers the whole run; the rate interval too, so the
# rate panels see the boots).
VARS = {"$__rate_interval": "10m", "$__interval": "5s", "$__range": "1h", "${datasource}": "prometheus",
        "$instance": ".*"}

# The machines: (name, kind, arch code, arch label, expected outcome)
MACHINES = [
    ("bios1", "legacy-bios", 0, "bios", "succeeded"),
    ("bios2", "legacy-bios", 0, "bios", "succeeded"),
    ("uefi1", "edk2", 7, "x64-uefi", "succeeded"),
    ("arm1", "edk2", 11, "arm64-uefi", "failed"),
]
STAGE_COUNTS = {"pxe_discover": 4, "proxy_offer": 4, "proxy_request": 2, "firmware_transfer": 3,
                "ipxe_dhcp": 3, "boot_script": 3, "boot_download": 0, "os_lease": 1}

QUERY = r"""
import json, sys, urllib.error, urllib.parse, urllib.request
base, jobs = sys.argv[1], json.load(open(sys.argv[2]))
out = []
for path, params in jobs:
    try:
        with urllib.request.urlopen(base + path + "?" + urllib.parse.urlencode(params), timeout=10) as r:
            out.append(json.loads(r.read()))
    except urllib.error.HTTPError as e:
        out.append(json.loads(e.read()))
json.dump(out, open(sys.argv[3], "w"))
"""


def substitute(expr: str) -> str:
    for k, v in VARS.items():
        expr = expr.replace(k, v)
    return expr


class Rig:
    def __init__(self, lab: Lab, work: str) -> None:
        self.lab, self.work = lab, work
        self.query_script = os.path.join(work, "query.py")
        with open(self.query_script, "w") as fh:
            fh.write(QUERY)

    def api(self, *jobs: tuple[str, dict]) -> list[dict]:
        """Prometheus HTTP API calls (path, params), made inside the namespace."""
        src, dst = os.path.join(self.work, "jobs.json"), os.path.join(self.work, "results.json")
        with open(src, "w") as fh:
            json.dump(list(jobs), fh)
        self.lab.sh(self.ns, f"{PY} {self.query_script} http://127.0.0.1:{PROM_PORT} {src} {dst}")
        with open(dst) as fh:
            return json.load(fh)

    def query(self, expr: str, **params) -> list:
        [r] = self.api(("/api/v1/query", {"query": expr, **params}))
        assert r["status"] == "success", (expr, r)
        return r["data"]["result"]

    def metrics_text(self) -> str:
        return self.lab.sh(self.ns, "curl -sS --fail http://127.0.0.1:8080/metrics").stdout


def client(lab: Lab, ns: str, kind: str, mac: str, *args: str) -> list[dict]:
    out = lab.sh(ns, " ".join([f"cd {ROOT} &&", PY, "-m", "tests.pxe_client", kind, "--mac", mac,
                               "--wait", "0.7", *args]))
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def boot_file(replies: list[dict]) -> str:
    files = [dpkt.dhcp.DHCP(bytes.fromhex(r["hex"])).file.rstrip(b"\0").decode()
             for r in replies if r["src"] == SERVER]
    assert len(files) == 1, replies
    return files[0]


def boot(rig: Rig, i: int, name: str, kind: str, arch: int) -> None:
    """One machine, as its firmware and then iPXE would do it."""
    lab = rig.lab
    ip = f"10.77.0.{20 + i}"
    mac = f"52:54:00:7e:00:{i + 1:02x}"
    ns = lab.host(name, f"{ip}/24")
    offered = boot_file(client(lab, ns, kind, mac, "--arch", str(arch)))
    if kind == "edk2":   # UEFI PXE: redirected to the boot server on 4011
        assert offered == ""
        offered = boot_file(client(lab, ns, kind, mac, "--arch", str(arch), "--message", "request",
                                   "--to", SERVER, "--port", "4011", "--sport", "4011", "--ciaddr", ip))
    tftp = lab.sh(ns, f"curl -sS --fail -o /dev/null tftp://{SERVER}/{offered}", check=False)
    if tftp.returncode != 0:
        return   # the firmware gives up here
    url = boot_file(client(lab, ns, "ipxe", mac, "--arch", str(arch)))
    assert url.startswith(f"http://{SERVER}:8080/boot.ipxe?"), url
    script = lab.sh(ns, f"curl -sS --fail '{url}'").stdout
    assert script.startswith("#!ipxe") and "hello" in script, script
    if i == 0:   # the installed OS takes its lease: dnsmasq's hook tells proxydhcp
        env = {"PATH": "/usr/bin:/bin", "PROXYDHCP_SOCKET": os.path.join(rig.state, "hook.sock"),
               "PROXYDHCP_SPOOL": os.path.join(rig.state, "spool")}
        hook = subprocess.run([HOOK, "add", mac, ip, name], env=env, capture_output=True, text=True, timeout=10)
        assert hook.returncode == 0 and hook.stderr == "", hook.stderr


def prometheus_config(work: str) -> str:
    """contrib/prometheus/proxydhcp.yml, pointed at this daemon and these rule files."""
    with open(os.path.join(PROMETHEUS, "proxydhcp.yml")) as fh:
        cfg = yaml.safe_load(fh)
    cfg["global"].update(scrape_interval="1s", evaluation_interval="1s")
    by_name = {os.path.basename(p): p for p in RULE_FILES}
    cfg["rule_files"] = [by_name[os.path.basename(p)] for p in cfg["rule_files"]]
    [job] = cfg["scrape_configs"]
    job["static_configs"] = [{"targets": ["127.0.0.1:8080"]}]
    path = os.path.join(work, "prometheus.yml")
    with open(path, "w") as fh:
        yaml.safe_dump(cfg, fh)
    return path


@pytest.fixture(scope="module")
def rig():
    work = tempfile.mkdtemp(prefix="proxydhcp-prom-")
    os.chmod(work, 0o755)
    root = os.path.join(work, "tftp")
    os.mkdir(root)
    for name in ("undionly.kpxe", "ipxe.efi", "snp-arm64.efi"):
        with open(os.path.join(root, name), "wb") as fh:
            fh.write(os.urandom(70_000))
    state = os.path.join(work, "state")
    cfg = os.path.join(work, "proxydhcp.yaml")
    with open(cfg, "w") as fh:
        fh.write(CONFIG.format(root=root, state=state))
    prom_cfg = prometheus_config(work)
    check = subprocess.run(["promtool", "check", "config", prom_cfg], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    try:
        with Lab() as lab:
            r = Rig(lab, work)
            r.state = state
            r.ns = lab.host("srv", f"{SERVER}/24")
            r.daemon = lab.spawn(r.ns, PY, "-m", "proxydhcp", "serve", "-c", cfg, cwd=ROOT)
            ready = ("listening on eth0", "TFTP listening", "HTTP listening", "hook socket")
            assert wait_for(lambda: all(s in lab.output(r.daemon) for s in ready) or r.daemon.poll() is not None,
                            20), lab.output(r.daemon)
            assert r.daemon.poll() is None, lab.output(r.daemon)
            os.remove(os.path.join(root, "snp-arm64.efi"))   # the arm64 firmware vanishes after the start check
            r.prometheus = lab.spawn(r.ns, "prometheus", f"--config.file={prom_cfg}",
                                     f"--storage.tsdb.path={os.path.join(work, 'tsdb')}",
                                     f"--web.listen-address=127.0.0.1:{PROM_PORT}", "--log.level=warn")

            def scraped():
                try:
                    return r.query('up{job="proxydhcp"} == 1')
                except (subprocess.CalledProcessError, AssertionError, KeyError, ValueError):
                    return None
            assert wait_for(scraped, 30, 0.5), lab.output(r.prometheus)
            # a few scrapes of the zero series before anything moves
            assert wait_for(lambda: float(r.query('count_over_time(up{job="proxydhcp"}[1m])')[0]["value"][1]) >= 3,
                            15, 0.5)
            for i, (name, kind, arch, _, _) in enumerate(MACHINES):
                boot(r, i, name, kind, arch)
            # the failed machine is failed when it stalls (events.stall_timeout), then scraped
            assert wait_for(lambda: 'diagnosis="firmware_transfer_failed"} 1.0' in r.metrics_text(), 20), \
                r.metrics_text()
            assert wait_for(lambda: (lambda v: v and float(v[0]["value"][1]) == len(MACHINES))(
                r.query("sum(proxydhcp_boot_sessions_total)")), 15, 0.5)
            # evaluate at the last scrape: increase() over a range ending on a sample is exact
            [up] = r.query('timestamp(up{job="proxydhcp"})')
            r.time = float(up["value"][1])
            yield r
            assert r.daemon.poll() is None, lab.output(r.daemon)
            assert r.prometheus.poll() is None, lab.output(r.prometheus)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def panel_results(rig: Rig) -> dict[str, dict]:
    """Every dashboard panel's queries through the HTTP API: instant ones at rig.time, the
    rest as range queries over the last minute (as a time-series panel asks)."""
    jobs, keys = [], []
    for path in DASHBOARDS:
        with open(path) as fh:
            d = json.load(fh)
        for p in walk_panels(d["panels"]):
            for t in p.get("targets", []):
                expr = substitute(t["expr"])
                if t.get("instant"):
                    jobs.append(("/api/v1/query", {"query": expr, "time": rig.time}))
                else:
                    jobs.append(("/api/v1/query_range", {"query": expr, "start": rig.time - 60, "end": rig.time,
                                                         "step": 5}))
                keys.append((p["title"], t["refId"], t.get("legendFormat"), expr))
        for v in d["templating"]["list"]:
            if v["type"] == "query":
                q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
                selector, label = q[len("label_values("):-1].rsplit(",", 1)
                jobs.append((f"/api/v1/label/{label.strip()}/values", {"match[]": selector}))
                keys.append((f"variable {v['name']}", "", "", q))
    out = {}
    for key, res in zip(keys, rig.api(*jobs)):
        out.setdefault(key[0], {})[key[1]] = (key, res)
    return out


def values(result: dict, *labels: str) -> dict:
    """{label values: value} of an instant-vector result."""
    return {tuple(s["metric"].get(n, "") for n in labels): float(s["value"][1]) for s in result["data"]["result"]}


def last_values(result: dict, *labels: str) -> dict:
    """{label values: last value} of a range (matrix) result."""
    return {tuple(s["metric"].get(n, "") for n in labels): float(s["values"][-1][1])
            for s in result["data"]["result"]}


def test_every_panel_query_evaluates(rig):
    panels = panel_results(rig)
    n = 0
    for title, targets in panels.items():
        for ref, (key, res) in targets.items():
            assert res["status"] == "success", f"{title} {ref}: {key[3]}: {res}"
            assert not res.get("warnings"), f"{title} {ref}: {res['warnings']}"
            n += 1
    assert n >= 30
    inst = panels["variable instance"][""][1]
    assert inst["data"] == ["127.0.0.1:8080"]


def test_boot_health_panels_show_what_was_booted(rig):
    panels = panel_results(rig)
    one = lambda title, ref="A": panels[title][ref][1]   # noqa: E731

    [(_, ratio)] = values(one("Boot success ratio")).items()
    assert ratio == pytest.approx(3 / 4)
    assert values(one("Boots ended, by outcome"), "outcome") == {("succeeded",): 3, ("failed",): 1}

    funnel = {key[2]: float(res["data"]["result"][0]["value"][1]) for key, res in panels["Stage funnel"].values()}
    assert funnel == STAGE_COUNTS
    order = [key[2] for key, _ in sorted(panels["Stage funnel"].values(), key=lambda kr: kr[0][1])]
    assert order == list(STAGE_COUNTS)   # refIds A..H follow the boot order

    assert values(one("Failures by diagnosis"), "diagnosis", "arch") == {("firmware_transfer_failed", "arm64-uefi"): 1}
    over_time = last_values(one("Failures by diagnosis over time"), "diagnosis")
    assert {k: v for k, v in over_time.items() if v} == {("firmware_transfer_failed",): pytest.approx(1, rel=0.2)}

    by_arch = {k: round(v) for k, v in last_values(one("Boots by arch and outcome"), "arch", "outcome").items() if v}
    assert by_arch == {("bios", "succeeded"): 2, ("x64-uefi", "succeeded"): 1, ("arm64-uefi", "failed"): 1}
    [(_, ratio_now)] = last_values(one("Boot success ratio over time")).items()
    assert ratio_now == pytest.approx(3 / 4, rel=0.05)

    # boot duration: three successful boots, each within seconds
    durations = {ref: [float(s["value"][1]) for s in res["data"]["result"]]
                 for ref, (_, res) in panels["Boot duration (range)"].items()}
    for ref, vals in durations.items():
        assert len(vals) == 1 and 0 < vals[0] <= 30 and not math.isnan(vals[0]), (ref, vals)
    percentiles = {key[2]: last_values(res) for key, res in panels["Boot duration percentiles"].values()}
    assert all(0 < list(v.values())[0] <= 30 for v in percentiles.values()), percentiles


def test_transfer_dhcp_and_lease_panels_have_data(rig):
    panels = panel_results(rig)
    one = lambda title, ref="A": panels[title][ref][1]   # noqa: E731
    tftp = {k[0] for k, v in last_values(one("TFTP transfers by outcome"), "outcome").items() if v > 0}
    assert {"ok", "not_found"} <= tftp
    latency = last_values(one("TFTP transfer latency by file", "B"), "file")
    measured = {k for k, v in latency.items() if not math.isnan(v)}
    assert measured == {("undionly.kpxe",), ("ipxe.efi",)} and all(latency[k] > 0 for k in measured), latency
    assert math.isnan(latency[("snp-arm64.efi",)])   # a boot file with no completed transfer: no latency
    assert last_values(one("TFTP throughput", "A"))[()] > 0
    replies = last_values(one("DHCP reply latency", "B"), "port")
    assert set(replies) == {("67",), ("4011",)} and all(0 < v <= 0.1 for v in replies.values())
    packets = {k for k, v in last_values(one("DHCP packets by result"), "port", "message", "result").items() if v}
    assert {("67", "discover", "replied"), ("4011", "request", "replied")} <= packets
    leases = {k: v for k, v in last_values(one("Lease events"), "source", "action").items() if v}
    assert set(leases) == {("dnsmasq", "commit")}
    scripts = {k for k, v in last_values(one("HTTP requests by kind and code"), "kind", "code").items() if v}
    assert ("script", "200") in scripts
    assert values(one("Instances"), "version") == {(__version__,): 1}


def test_rules_load_and_evaluate_and_nothing_fires_wrongly(rig):
    [res] = rig.api(("/api/v1/rules", {}))
    assert res["status"] == "success"
    rules = [r for g in res["data"]["groups"] for r in g["rules"]]
    files = {os.path.basename(g["file"]) for g in res["data"]["groups"]}
    assert files == {os.path.basename(p) for p in RULE_FILES}
    for r in rules:
        assert r["health"] == "ok" and not r.get("lastError"), r
    # the recording rules carry the boot health too (once evaluated after the last scrape)
    def recorded(expr):
        return rig.query(f"{expr} and on () timestamp(up) > {rig.time}")
    assert wait_for(lambda: recorded("instance:proxydhcp_boot_success:ratio15m"), 10, 0.5)
    ratio = recorded("instance:proxydhcp_boot_success:ratio15m")
    assert [float(s["value"][1]) for s in ratio] == [pytest.approx(0.75, rel=0.1)]
    failures = recorded("instance_diagnosis_arch:proxydhcp_boot_failures:increase15m > 0")
    assert [(s["metric"]["diagnosis"], s["metric"]["arch"]) for s in failures] == [("firmware_transfer_failed", "arm64-uefi")]
    # one failure is below every alert threshold; the daemon is up
    [alerts] = rig.api(("/api/v1/alerts", {}))
    assert alerts["status"] == "success" and alerts["data"]["alerts"] == []


def test_promtool_accepts_the_live_metrics(rig):
    text = rig.metrics_text()
    for family in ("proxydhcp_boot_sessions_total", "proxydhcp_boot_stage_total", "proxydhcp_boot_failures_total",
                   "proxydhcp_tftp_transfer_duration_seconds_bucket", "proxydhcp_dhcp_reply_duration_seconds_bucket",
                   "proxydhcp_lease_events_total", "proxydhcp_http_requests_total", "proxydhcp_build_info"):
        assert family in text, family
    out = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout == "" and out.stderr == "", out.stdout + out.stderr
    # no MAC or IP in any label value
    assert not re.search(r'="[^"]*([0-9a-f]{2}:){5}[0-9a-f]{2}', text)
    assert not re.search(r'="[^"]*\d+\.\d+\.\d+\.\d+', text)
