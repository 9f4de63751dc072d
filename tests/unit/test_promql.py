"""Every PromQL expression in contrib/grafana and contrib/prometheus parses (promtool) and
names only metrics the daemon exports (proxydhcp.metrics), recording rules defined in
contrib/prometheus, or `up`; label names it groups or matches on exist on those metrics.
The dashboards are checked for what a Grafana import needs (datasource and instance
variables, every query filtered by $instance)."""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess

import pytest
import yaml

from proxydhcp import metrics

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GRAFANA = os.path.join(ROOT, "contrib", "grafana")
PROMETHEUS = os.path.join(ROOT, "contrib", "prometheus")
DASHBOARDS = sorted(glob.glob(os.path.join(GRAFANA, "*.json")))
RULE_FILES = sorted(glob.glob(os.path.join(PROMETHEUS, "*.rules.yml")))

# What Grafana substitutes before a query reaches Prometheus (tests/integration uses the same).
GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h", "${datasource}": "prometheus",
                "$instance": ".*"}

KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "and", "or",
            "unless", "inf", "nan", "atan2", "start", "end"}
AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk",
                "topk", "quantile"}
ALWAYS_LABELS = {"instance", "job", "le", "__name__"}

needs_promtool = pytest.mark.skipif(not shutil.which("promtool"), reason="promtool (Debian package prometheus)")


def substitute(expr: str) -> str:
    for k, v in GRAFANA_VARS.items():
        expr = expr.replace(k, v)
    assert "$" not in re.sub(r'"[^"]*"', "", expr), f"unknown Grafana variable in {expr!r}"
    return expr


def walk_panels(panels):
    for p in panels:
        yield p
        yield from walk_panels(p.get("panels", []))


def dashboard_exprs(path: str) -> list[tuple[str, str]]:
    """(where, expr) for every panel target and every query variable of one dashboard."""
    with open(path) as fh:
        d = json.load(fh)
    out = []
    for p in walk_panels(d["panels"]):
        for t in p.get("targets", []):
            out.append((f"{os.path.basename(path)}: panel {p['title']!r} {t['refId']}", t["expr"]))
    for v in d["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", q)
            assert m, f"variable {v['name']}: only label_values(<selector>, <label>) is expected, got {q!r}"
            out.append((f"{os.path.basename(path)}: variable {v['name']}", m.group(1)))
    return out


def rules() -> list[dict]:
    out = []
    for path in RULE_FILES:
        with open(path) as fh:
            for group in yaml.safe_load(fh)["groups"]:
                for r in group["rules"]:
                    out.append(dict(r, file=os.path.basename(path)))
    return out


def all_exprs() -> list[tuple[str, str]]:
    out = [x for path in DASHBOARDS for x in dashboard_exprs(path)]
    out += [(f"{r['file']}: {r.get('record') or r.get('alert')}", r["expr"]) for r in rules()]
    return out


# --- a small PromQL reader: enough to find the metric and label names an expression uses --------
def _strip_strings(expr: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)


def referenced(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, label names) an expression refers to."""
    e = _strip_strings(substitute(expr))
    labels = set()
    for body in re.findall(r"\{([^}]*)\}", e):
        labels |= set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", body))
    e = re.sub(r"\{[^}]*\}", " ", e)
    for body in re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", e):
        labels |= {x.strip() for x in body.split(",") if x.strip()}
    e = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)                          # range and subquery durations
    e = re.sub(r"\boffset\s+-?[0-9a-z]+", " ", e)
    names = set()
    for m in re.finditer(r"(?<![A-Za-z0-9_:.])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?", e):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in KEYWORDS or word in AGGREGATIONS:
            continue
        names.add(word)
    return names, labels


def base_name(name: str) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name[: -len(suffix)] in HISTOGRAMS:
            return name[: -len(suffix)]
    return name


HISTOGRAMS = {m.name for m in metrics.REGISTRY.collect() if m.type == "histogram"}


def exported_labels() -> dict[str, set[str]]:
    """Sample name -> its label names, from the metric definitions (proxydhcp.metrics)."""
    families = metrics.label_names()
    out: dict[str, set[str]] = {}
    for sample in metrics.names():
        family = max((f for f in families if sample == f or sample.startswith(f + "_")), key=len)
        out[sample] = set(families[family])
    out["proxydhcp_build_info"] = {"version"}   # an Info: its labels are its keys
    out["up"] = set()
    return out


def recording_rules() -> dict[str, set[str]]:
    """Recording rule name -> labels it keeps (from its outer `by (...)` when it has one)."""
    out = {}
    for r in rules():
        if "record" in r:
            _, labels = referenced(r["expr"])
            out[r["record"]] = labels
    return out


# --- the tests ------------------------------------------------------------------------------
def test_there_is_something_to_check():
    assert DASHBOARDS and RULE_FILES
    where = {w.split(":")[0] for w, _ in all_exprs()}
    assert {os.path.basename(p) for p in DASHBOARDS + RULE_FILES} <= where
    assert len(all_exprs()) >= 30


def test_the_reader_finds_names_and_labels():
    names, labels = referenced('histogram_quantile(0.9, sum by (le, port) (rate(x_seconds_bucket{instance=~"$instance",'
                               'port="67"}[$__rate_interval]))) / on (job) group_left y:z:rate5m offset 1h and up == 0')
    assert names == {"x_seconds_bucket", "y:z:rate5m", "up"}
    assert labels == {"le", "port", "instance", "job"}


@needs_promtool
def test_every_expression_parses(tmp_path):
    exprs = all_exprs()
    doc = {"groups": [{"name": "parse-check", "rules": [
        {"record": f"check:expr_{i}", "expr": substitute(e)} for i, (_, e) in enumerate(exprs)]}]}
    path = tmp_path / "exprs.rules.yml"
    path.write_text(yaml.safe_dump(doc))
    out = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True)
    failing = "\n".join(f"  {i}: {w}: {e}" for i, (w, e) in enumerate(exprs) if f"expr_{i}" in out.stderr)
    assert out.returncode == 0, out.stdout + out.stderr + failing
    assert f"SUCCESS: {len(exprs)} rules found" in out.stdout


@needs_promtool
def test_promtool_checks_the_rule_files():
    out = subprocess.run(["promtool", "check", "rules", *RULE_FILES], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("SUCCESS") == len(RULE_FILES), out.stdout
    assert "WARNING" not in (out.stdout + out.stderr).upper(), out.stdout + out.stderr


def test_a_parse_error_is_reported(tmp_path):
    """The parse check is not vacuous: promtool rejects a broken expression."""
    if not shutil.which("promtool"):
        pytest.skip("promtool (Debian package prometheus)")
    path = tmp_path / "bad.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "g", "rules": [
        {"record": "check:bad", "expr": "sum by (le (rate(proxydhcp_boot_stage_total[5m]))"}]}]}))
    out = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True)
    assert out.returncode != 0 and "parse error" in out.stderr


@pytest.mark.parametrize("where,expr", all_exprs(), ids=[w for w, _ in all_exprs()])
def test_names_and_labels_exist(where, expr):
    exported = exported_labels()
    recorded = recording_rules()
    names, labels = referenced(expr)
    assert names, f"{where}: no metric in {expr!r}"
    unknown = {n for n in names if base_name(n) not in exported and n not in exported and n not in recorded}
    assert not unknown, f"{where}: not exported by proxydhcp nor recorded in contrib/prometheus: {sorted(unknown)}"
    known_labels = set(ALWAYS_LABELS)
    for n in names:
        known_labels |= exported.get(n, set()) | exported.get(base_name(n), set()) | recorded.get(n, set())
    assert labels <= known_labels, f"{where}: labels {sorted(labels - known_labels)} are on none of {sorted(names)}"


def test_recording_rules_are_used_and_named_by_convention():
    recorded = recording_rules()
    for name in recorded:
        assert re.fullmatch(r"[a-z_]+:proxydhcp_[a-z0-9_]+:[a-z0-9_]+", name), name
    used = set()
    for r in rules():
        if "alert" in r:
            used |= referenced(r["expr"])[0]
    for r in rules():
        if "record" in r:
            used |= referenced(r["expr"])[0] & set(recorded)
    assert {"instance:proxydhcp_boot_success:ratio15m",
            "instance_diagnosis_arch:proxydhcp_boot_failures:increase15m"} <= used


def test_alerts_cover_the_issue_and_say_what_to_check():
    alerts = {r["alert"]: r for r in rules() if "alert" in r}
    assert {"ProxydhcpDown", "ProxydhcpBootSuccessRatioLow", "ProxydhcpBootFailuresRising",
            "ProxydhcpTFTPFailures"} <= set(alerts)
    for name, r in alerts.items():
        ann = r["annotations"]
        assert ann.get("summary") and ann.get("description"), name
        assert r["labels"].get("severity") in ("warning", "critical"), name
    assert "proxydhcp sessions --failed" in alerts["ProxydhcpBootSuccessRatioLow"]["annotations"]["description"]
    rising = alerts["ProxydhcpBootFailuresRising"]["annotations"]["description"]
    assert "proxydhcp sessions --failed" in rising and "tftp.root" in rising and "boot.firmware" in rising
    tftp = alerts["ProxydhcpTFTPFailures"]["annotations"]["description"]
    assert "tftp.root" in tftp and "firmware" in tftp
    assert "up{job=\"proxydhcp\"}" in alerts["ProxydhcpDown"]["expr"]


def test_scrape_config_matches_the_alerts():
    with open(os.path.join(PROMETHEUS, "proxydhcp.yml")) as fh:
        cfg = yaml.safe_load(fh)
    [job] = cfg["scrape_configs"]
    assert job["job_name"] == "proxydhcp" and job.get("metrics_path", "/metrics") == "/metrics"
    listed = {os.path.basename(p) for p in cfg["rule_files"]}
    assert listed == {os.path.basename(p) for p in RULE_FILES}


@pytest.mark.parametrize("path", DASHBOARDS, ids=os.path.basename)
def test_dashboard_is_importable(path):
    with open(path) as fh:
        d = json.load(fh)
    assert d["schemaVersion"] >= 36 and d["uid"] and d["title"] and d.get("id") is None
    [ds_input] = [i for i in d["__inputs"] if i["type"] == "datasource"]
    assert ds_input["pluginId"] == "prometheus"
    variables = {v["name"]: v for v in d["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    assert ds["current"]["value"] == "${%s}" % ds_input["name"]
    inst = variables["instance"]
    assert inst["type"] == "query" and inst["includeAll"] and inst["allValue"] == ".*"
    assert inst["datasource"]["uid"] == "${datasource}"
    assert re.search(r"label_values\(proxydhcp_build_info, instance\)", json.dumps(inst["query"]))
    ids = [p["id"] for p in walk_panels(d["panels"])]
    assert len(ids) == len(set(ids))
    for p in walk_panels(d["panels"]):
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"] and p.get("description"), p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}"
            assert 'instance=~"$instance"' in t["expr"], f"{p['title']}: not filtered by $instance"
    # no stray references to a datasource other than the variable (or the built-in annotations)
    text = json.dumps(d["panels"])
    assert set(re.findall(r'"uid": "([^"]*)"', text)) == {"${datasource}"}


def test_dashboards_have_the_issue_panels():
    titles = set()
    for path in DASHBOARDS:
        with open(path) as fh:
            titles |= {p["title"] for p in walk_panels(json.load(fh)["panels"])}
    for want in ("Boot success ratio", "Stage funnel", "Failures by diagnosis", "Boot duration percentiles",
                 "TFTP transfer latency by file", "TFTP throughput", "DHCP reply latency", "Lease events",
                 "DHCP packets by result"):
        assert want in titles, want


def test_an_unknown_name_or_label_is_caught():
    """The name check is not vacuous: a misspelt metric or label is reported."""
    exported = exported_labels()
    names, labels = referenced('sum by (diagnosis) (increase(proxydhcp_boot_failure_total{instance=~"$instance"}[5m]))')
    assert names == {"proxydhcp_boot_failure_total"} and base_name("proxydhcp_boot_failure_total") not in exported
    names, labels = referenced('sum by (result) (rate(proxydhcp_tftp_transfers_total[5m]))')
    assert "result" in labels and "result" not in exported["proxydhcp_tftp_transfers_total"]


# --- the alerts fire when they should (promtool test rules, on synthetic series) --------------
SERIES = {   # interval 1m, 121 samples (0..120m)
    'up{job="proxydhcp",instance="pxe1:8080"}': "1x120",
    'up{job="proxydhcp",instance="pxe2:8080"}': "1x30 0x89",                     # down from 31m
    'proxydhcp_config_last_reload_successful{job="proxydhcp",instance="pxe1:8080"}': "1x120",
    'proxydhcp_boot_sessions_total{job="proxydhcp",instance="pxe1:8080",outcome="succeeded",arch="bios",'
    'firmware="legacy-pxe"}': "0+10x120",
    'proxydhcp_boot_sessions_total{job="proxydhcp",instance="pxe1:8080",outcome="failed",arch="arm64-uefi",'
    'firmware="legacy-pxe"}': "0x60 0+10x59",                                    # half fail from 61m
    'proxydhcp_boot_failures_total{job="proxydhcp",instance="pxe1:8080",diagnosis="firmware_transfer_failed",'
    'arch="arm64-uefi"}': "0x60 0+10x59",                                        # new: rising
    'proxydhcp_boot_failures_total{job="proxydhcp",instance="pxe1:8080",diagnosis="no_offer",arch="bios"}':
        "0+1x120",                                                               # steady: not rising
    'proxydhcp_tftp_transfers_total{job="proxydhcp",instance="pxe1:8080",outcome="ok"}': "0+10x120",
    'proxydhcp_tftp_transfers_total{job="proxydhcp",instance="pxe1:8080",outcome="probe"}': "0+5x120",
    'proxydhcp_tftp_transfers_total{job="proxydhcp",instance="pxe1:8080",outcome="not_found"}': "0x60 0+1x59",
}
P1, P2 = {"job": "proxydhcp", "instance": "pxe1:8080"}, {"job": "proxydhcp", "instance": "pxe2:8080"}
EXPECTED = {   # eval time -> alert -> expected label sets
    "30m": {"ProxydhcpDown": [], "ProxydhcpBootSuccessRatioLow": [], "ProxydhcpTFTPFailures": [],
            "ProxydhcpConfigReloadFailed": []},
    "40m": {"ProxydhcpDown": [dict(P2, severity="critical")]},
    "80m": {"ProxydhcpDown": [dict(P2, severity="critical")],
            "ProxydhcpBootSuccessRatioLow": [dict(P1, severity="warning")],
            "ProxydhcpBootFailuresRising": [dict(P1, severity="warning", diagnosis="firmware_transfer_failed",
                                                 arch="arm64-uefi")],
            "ProxydhcpTFTPFailures": [dict(P1, severity="warning", outcome="not_found")],
            "ProxydhcpConfigReloadFailed": []},
}


@needs_promtool
def test_alerts_fire_on_synthetic_series(tmp_path):
    """Each alert fires for the failing instance / diagnosis / outcome and stays quiet for the
    healthy ones (a steady failure rate, EDK2's probes, successful transfers). Annotations are
    left out here; their templates are checked by promtool check rules and rendered below."""
    names = []
    for path in RULE_FILES:
        with open(path) as fh:
            doc = yaml.safe_load(fh)
        for group in doc["groups"]:
            for r in group["rules"]:
                r.pop("annotations", None)
        (tmp_path / os.path.basename(path)).write_text(yaml.safe_dump(doc))
        names.append(os.path.basename(path))
    tests = [{"interval": "1m",
              "input_series": [{"series": s, "values": v} for s, v in SERIES.items()],
              "alert_rule_test": [{"eval_time": t, "alertname": a, "exp_alerts": [{"exp_labels": l} for l in ls]}
                                  for t, alerts in EXPECTED.items() for a, ls in alerts.items()]}]
    (tmp_path / "test.yml").write_text(yaml.safe_dump({"rule_files": names, "evaluation_interval": "1m",
                                                       "tests": tests}))
    out = subprocess.run(["promtool", "test", "rules", "test.yml"], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0 and "SUCCESS" in out.stdout, out.stdout + out.stderr


RENDERED = {   # what the on-call person reads at 80m of SERIES
    "ProxydhcpBootFailuresRising": (
        dict(P1, severity="warning", diagnosis="firmware_transfer_failed", arch="arm64-uefi"),
        "150 arm64-uefi boots failed with firmware_transfer_failed on pxe1:8080 in 15 minutes (more than twice "
        "the hour before)",
        "Run `proxydhcp sessions --failed` on pxe1:8080 for the machines and their timelines. The firmware (iPXE) "
        "transfer failed: check that the boot.firmware file for arm64-uefi exists in the TFTP root (tftp.root) and "
        "is readable, and the TFTP failures on the dashboard."),
    "ProxydhcpTFTPFailures": (
        dict(P1, severity="warning", outcome="not_found"),
        "10 TFTP transfers ended not_found on pxe1:8080 in 10 minutes",
        "Clients ask for a file that is not in the TFTP root: check tftp.root and the firmware file names in "
        "boot.firmware and the profiles. `proxydhcp events --kind tftp.transfer` shows each transfer with client "
        "and file; `proxydhcp sessions --failed` shows the boots that stopped there."),
    "ProxydhcpBootSuccessRatioLow": (
        dict(P1, severity="warning"),
        "Only 50% of boots succeeded on pxe1:8080 in 15 minutes",
        "Fewer than 80% of the boot sessions that ended in the last 15 minutes reached the success stage. Run "
        "`proxydhcp sessions --failed` on pxe1:8080: each failed session shows the last stage it reached and a "
        "diagnosis with what to try. The dashboard's stage funnel shows which stage loses machines."),
}


@needs_promtool
def test_alert_annotations_render_what_to_check(tmp_path):
    for path in RULE_FILES:
        shutil.copy(path, tmp_path)
    tests = [{"interval": "1m",
              "input_series": [{"series": s, "values": v} for s, v in SERIES.items()],
              "alert_rule_test": [{"eval_time": "80m", "alertname": a, "exp_alerts": [
                  {"exp_labels": labels, "exp_annotations": {"summary": summary, "description": description}}]}
                  for a, (labels, summary, description) in RENDERED.items()]}]
    (tmp_path / "test.yml").write_text(yaml.safe_dump({
        "rule_files": [os.path.basename(p) for p in RULE_FILES], "evaluation_interval": "1m", "tests": tests}))
    out = subprocess.run(["promtool", "test", "rules", "test.yml"], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0 and "SUCCESS" in out.stdout, out.stdout + out.stderr


def test_every_exported_metric_has_a_panel():
    """A metric nobody can see is a metric nobody reads: each family the daemon exports is
    on the dashboard (add a panel or a target to contrib/grafana when you add a metric)."""
    shown = set()
    for path in DASHBOARDS:
        for _, expr in dashboard_exprs(path):
            shown |= {base_name(n) for n in referenced(expr)[0]}
    missing = []
    for family in metrics.label_names():
        exposed = {f"{family}_total", f"{family}_info", family}
        if not exposed & shown:
            missing.append(family)
    assert not missing, f"exported but on no dashboard panel: {missing}"
