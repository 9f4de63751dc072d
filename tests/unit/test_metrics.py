"""The metric definitions (proxydhcp.metrics): every metric issue 7 lists, with its labels,
type and base unit; no label that could carry a MAC or an IP; label values from fixed sets;
the exposition passes `promtool check metrics` with every family populated."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest

from proxydhcp import arch, metrics
from proxydhcp.events import hooks, sessions
from proxydhcp.tftp import transfer

# name as exposed -> (type, label names), from the issue
REQUIRED = {
    "proxydhcp_dhcp_packets_total": ("counter", {"port", "message", "result"}),
    "proxydhcp_dhcp_reply_duration_seconds": ("histogram", {"port"}),
    "proxydhcp_boot_sessions_total": ("counter", {"outcome", "arch", "firmware"}),
    "proxydhcp_boot_failures_total": ("counter", {"diagnosis", "arch"}),
    "proxydhcp_boot_stage_total": ("counter", {"stage", "arch"}),
    "proxydhcp_boot_duration_seconds": ("histogram", {"arch"}),
    "proxydhcp_tftp_transfers_total": ("counter", {"outcome"}),
    "proxydhcp_tftp_transfer_duration_seconds": ("histogram", {"file"}),
    "proxydhcp_tftp_bytes_sent_total": ("counter", set()),
    "proxydhcp_tftp_retransmits_total": ("counter", set()),
    "proxydhcp_tftp_active_transfers": ("gauge", set()),
    "proxydhcp_http_requests_total": ("counter", {"kind", "code"}),
    "proxydhcp_http_transfer_duration_seconds": ("histogram", {"kind"}),
    "proxydhcp_lease_events_total": ("counter", {"source", "action"}),
    "proxydhcp_hook_runs_total": ("counter", {"hook", "result"}),
    "proxydhcp_config_reloads_total": ("counter", {"result"}),
    "proxydhcp_build_info": ("info", {"version"}),
}
FORBIDDEN_LABELS = re.compile(r"mac|ip|addr|client|host|uuid|serial|path|url", re.I)


def families() -> dict[str, tuple[str, set[str]]]:
    """Exposed name -> (type, label names) for every metric in the registry."""
    labels = metrics.label_names()
    out = {}
    for m in metrics.REGISTRY.collect():
        name = {"counter": m.name + "_total", "info": m.name + "_info"}.get(m.type, m.name)
        extra = {"version"} if m.type == "info" else set()
        out[name] = (m.type, set(labels[m.name]) | extra)
    return out


def test_every_required_metric_exists_with_its_labels():
    have = families()
    for name, (kind, labels) in REQUIRED.items():
        assert name in have, name
        assert have[name] == (kind, labels), (name, have[name])
        assert name in metrics.names()


def test_dhcp_reply_buckets_span_50us_to_100ms():
    bounds = metrics.DHCP_REPLY_DURATION._upper_bounds
    assert bounds[0] == pytest.approx(50e-6) and bounds[-2] == pytest.approx(0.1) and bounds[-1] == float("inf")


def test_base_units_and_no_identifying_labels():
    for name, (kind, labels) in families().items():
        assert name.startswith("proxydhcp_"), name
        assert not re.search(r"_(ms|milliseconds|us|microseconds|kb|mb|kilobytes|megabytes|minutes|hours)(_|$)",
                             name), name
        if kind == "histogram" and "duration" in name:
            assert name.endswith("_seconds"), name
        for label in labels:
            assert not FORBIDDEN_LABELS.search(label), f"{name}: label {label!r} could carry a MAC, IP or path"


def test_zero_series_use_the_fixed_sets():
    metrics.init_boot_series(metrics.arch_labels_for({"bios", "x64-uefi"}))
    text = generate_latest(metrics.REGISTRY).decode()
    seen = lambda family, label: set(re.findall(rf'^{family}{{[^}}]*{label}="([^"]*)"', text, re.M))  # noqa: E731
    assert seen("proxydhcp_boot_stage_total", "stage") == set(sessions.STAGES)
    assert seen("proxydhcp_boot_failures_total", "diagnosis") == set(sessions.DIAGNOSES)
    assert seen("proxydhcp_boot_sessions_total", "firmware") == set(sessions.FIRMWARE_LABELS)
    assert {"bios", "bios-http", "x64-uefi", "ebc", "x64-uefi-http", "ebc-http"} <= \
        seen("proxydhcp_boot_stage_total", "arch") <= set(arch.LABELS)
    assert seen("proxydhcp_tftp_transfers_total", "outcome") == set(transfer.OUTCOMES)
    assert metrics.arch_labels_for({"arm64-uefi"}) == {"arm64-uefi", "arm64-uefi-http"}
    # created once: a second call adds nothing and does not reset a count
    metrics.BOOT_STAGES.labels("pxe_discover", "bios").inc()
    before = metrics.BOOT_STAGES.labels("pxe_discover", "bios")._value.get()
    metrics.init_boot_series(["bios"])
    assert metrics.BOOT_STAGES.labels("pxe_discover", "bios")._value.get() == before


def test_init_series_makes_every_combination():
    reg = CollectorRegistry()
    c = Counter("x_events", "x", ["source", "action"], registry=reg)
    metrics.init_series(c, hooks.SOURCES, hooks.LEASE_ACTIONS)
    text = generate_latest(reg).decode()
    assert text.count("x_events_total{") == len(hooks.SOURCES) * len(hooks.LEASE_ACTIONS)
    assert 'x_events_total{action="commit",source="kea"} 0.0' in text


@pytest.mark.skipif(not shutil.which("promtool"), reason="promtool (Debian package prometheus)")
def test_promtool_accepts_the_exposition_with_every_family_populated():
    metrics.DHCP_PACKETS.labels("67", "discover", "replied").inc()
    metrics.DHCP_REPLY_DURATION.labels("67").observe(0.0002)
    metrics.TFTP_TRANSFER_DURATION.labels("ipxe.efi").observe(0.3)
    metrics.TFTP_BYTES_SENT.inc(1000)
    metrics.HTTP_REQUESTS.labels("script", "200").inc()
    metrics.HTTP_TRANSFER_DURATION.labels("script").observe(0.002)
    metrics.BOOT_SESSIONS.labels("succeeded", "bios", "legacy-pxe").inc()
    metrics.BOOT_DURATION.labels("bios").observe(4.2)
    metrics.LEASE_EVENTS.labels("kea", "commit").inc()
    metrics.HOOK_RUNS.labels("notify", "ok").inc()
    text = generate_latest(metrics.REGISTRY).decode()
    for name in REQUIRED:
        assert re.search(rf"^{name}(_bucket)?[{{ ]", text, re.M), name
    out = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout == "" and out.stderr == "", out.stdout + out.stderr


@pytest.mark.skipif(not shutil.which("promtool"), reason="promtool (Debian package prometheus)")
def test_promtool_check_metrics_is_not_vacuous():
    reg = CollectorRegistry()
    Counter("proxydhcp_bad_milliseconds", "a counter in milliseconds", registry=reg).inc()
    text = generate_latest(reg).decode()
    out = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert out.returncode != 0 and 'use base unit "seconds"' in out.stdout + out.stderr
