"""Every Prometheus metric proxydhcp exports, defined once.

Services import the objects from here; the dashboard/rules tests import `NAMES`.
Labels take values from fixed sets only (arch table, stage list, result names): never a MAC
or an IP.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from proxydhcp import __version__

REGISTRY = CollectorRegistry(auto_describe=True)

DHCP_PACKETS = Counter(
    "proxydhcp_dhcp_packets", "DHCP packets received, by port, message type and what we did",
    ["port", "message", "result"], registry=REGISTRY)
DHCP_REPLY_DURATION = Histogram(
    "proxydhcp_dhcp_reply_duration_seconds", "Time from receiving a request to sending the reply",
    ["port"], registry=REGISTRY,
    buckets=(50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3))

DHCP_SESSIONS_IN_PROGRESS = Gauge(
    "proxydhcp_dhcp_sessions_in_progress", "Machines answered and still mid-boot (dhcp.max_sessions_in_progress "
    "caps them)", registry=REGISTRY)

class _CounterAtScrape:
    """A counter read at scrape time, for counts kept elsewhere than in a prometheus_client
    child: sources[label values]() per series, set by the service that counts (an unlabelled
    counter has the one key (), and is 0 until its source is set)."""

    def __init__(self, name: str, documentation: str, labelnames: tuple = ()) -> None:
        self.name, self.documentation, self._labelnames = name, documentation, labelnames
        self.sources: dict = {}

    def _family(self, values: dict):
        from prometheus_client.core import CounterMetricFamily
        if not self._labelnames:
            return CounterMetricFamily(self.name, self.documentation, value=values.get((), 0))
        family = CounterMetricFamily(self.name, self.documentation, labels=self._labelnames)
        for key, value in sorted(values.items()):
            family.add_metric(list(key), value)
        return family

    def describe(self):
        yield self._family({})

    def collect(self):
        yield self._family({key: source() for key, source in list(self.sources.items())})


# UDP-67 datagrams the kernel dropped because a port-67 packet socket's buffer was full
# (PACKET_STATISTICS, read by the DHCP service). They never reach the packet counters above.
SOCKET_DROPS = _CounterAtScrape("proxydhcp_dhcp_socket_drops", "UDP 67 datagrams dropped by the kernel "
                                "before proxydhcp read them (socket buffer full)")
REGISTRY.register(SOCKET_DROPS)
# Events and sessions the event store refused because its writer fell 100,000 items behind
# (the writer runs at idle priority: only a CPU saturated for long starves it).
EVENT_STORE_DROPS = _CounterAtScrape("proxydhcp_event_store_dropped", "Events not stored because the "
                                     "event store's queue was full (its writer process fell behind)")
REGISTRY.register(EVENT_STORE_DROPS)


# Datagrams the kernel dropped on the UDP sockets we read (4011, 69): /proc/net/udp's drops
# column, read at scrape time (the 67 listeners are packet sockets: SOCKET_DROPS above).
UDP_SOCKET_DROPS = _CounterAtScrape("proxydhcp_udp_socket_drops", "UDP datagrams to 4011 or 69 dropped "
                                    "by the kernel before proxydhcp read them (socket buffer full)", ("port",))
REGISTRY.register(UDP_SOCKET_DROPS)
EVENT_STORE_QUEUE = Gauge("proxydhcp_event_store_queue", "Events and sessions waiting for the event "
                          "store's writer process", registry=REGISTRY)

FOREIGN_PXE_REPLIES = Counter(
    "proxydhcp_foreign_pxe_replies", "PXE boot replies seen from another DHCP server on a served segment",
    registry=REGISTRY)

TFTP_TRANSFERS = Counter(
    "proxydhcp_tftp_transfers", "TFTP transfers ended, by outcome", ["outcome"], registry=REGISTRY)
TFTP_TRANSFER_DURATION = Histogram(
    "proxydhcp_tftp_transfer_duration_seconds", "Duration of completed TFTP transfers",
    ["file"], registry=REGISTRY,
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
TFTP_BYTES_SENT = Counter(
    "proxydhcp_tftp_bytes_sent", "Payload bytes sent by the TFTP server", registry=REGISTRY)
TFTP_RETRANSMITS = Counter(
    "proxydhcp_tftp_retransmits", "TFTP DATA/OACK packets resent on timeout", registry=REGISTRY)
TFTP_ACTIVE = Gauge(
    "proxydhcp_tftp_active_transfers", "TFTP transfers in progress", registry=REGISTRY)
TFTP_DROPPED = Counter(
    "proxydhcp_tftp_packets_dropped", "TFTP datagrams that started or moved no transfer, by where they "
    "arrived (request: tftp.port, transfer: a transfer's port) and why", ["port", "reason"], registry=REGISTRY)

HTTP_REQUESTS = Counter(
    "proxydhcp_http_requests", "HTTP requests served, by kind (script, file, metrics...) and status code",
    ["kind", "code"], registry=REGISTRY)
HTTP_TRANSFER_DURATION = Histogram(
    "proxydhcp_http_transfer_duration_seconds", "Time to serve an HTTP request completely",
    ["kind"], registry=REGISTRY,
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300))

BOOT_SESSIONS = Counter(
    "proxydhcp_boot_sessions", "Boot sessions ended, by outcome (succeeded, failed), arch and firmware kind",
    ["outcome", "arch", "firmware"], registry=REGISTRY)
BOOT_FAILURES = Counter(
    "proxydhcp_boot_failures", "Failed boot sessions, by diagnosis and arch", ["diagnosis", "arch"], registry=REGISTRY)
BOOT_STAGES = Counter(
    "proxydhcp_boot_stage", "Boot sessions reaching a stage, by stage and arch", ["stage", "arch"], registry=REGISTRY)
BOOT_DURATION = Histogram(
    "proxydhcp_boot_duration_seconds", "Time from a session's first event to its success stage",
    ["arch"], registry=REGISTRY, buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800))
LEASE_EVENTS = Counter(
    "proxydhcp_lease_events", "Events from the DHCP-server hooks, by server and action",
    ["source", "action"], registry=REGISTRY)
HOOK_RUNS = Counter(
    "proxydhcp_hook_runs", "User hook runs (events.user_hooks), by configured hook name and result "
    "(ok, failed, timeout, dropped)", ["hook", "result"], registry=REGISTRY)

CONFIG_RELOADS = Counter(
    "proxydhcp_config_reloads", "Configuration reloads, by result", ["result"], registry=REGISTRY)
CONFIG_LAST_RELOAD_OK = Gauge(
    "proxydhcp_config_last_reload_successful", "1 if the last configuration load succeeded", registry=REGISTRY)
BUILD_INFO = Info("proxydhcp_build", "proxydhcp version", registry=REGISTRY)
BUILD_INFO.info({"version": __version__})


# --- zero series ---------------------------------------------------------------------------
# Prometheus' increase()/rate() cannot see the first increment of a series that appears with
# value 1, so a counter series an alert or a dashboard counts must exist at 0 before it moves.
# The label sets come from the fixed lists (stage list, diagnoses, firmware kinds, TFTP outcomes).
_boot_arches: set[str] = set()


def init_boot_series(arch_labels) -> None:
    """Create the boot counters at 0 for these arch labels (each label once)."""
    from proxydhcp.events import sessions   # the one stage / diagnosis list (no metrics import there)
    for a in arch_labels:
        if a in _boot_arches:
            continue
        _boot_arches.add(a)
        for stage in sessions.STAGES:
            BOOT_STAGES.labels(stage, a)
        for outcome in sessions.OUTCOMES:
            for fw in sessions.FIRMWARE_LABELS:
                BOOT_SESSIONS.labels(outcome, a, fw)
        for diagnosis in sessions.DIAGNOSES:
            BOOT_FAILURES.labels(diagnosis, a)


def arch_labels_for(firmware_keys) -> set[str]:
    """The arch labels whose machines run one of these firmware keys (the boot.firmware table)."""
    from proxydhcp import arch
    keys = set(firmware_keys)
    return {a.name for a in arch.BY_CODE.values() if a.firmware in keys}


def init_series(metric, *label_values) -> None:
    """Create metric's series at 0 for every combination of these label values (fixed sets)."""
    import itertools
    for combo in itertools.product(*label_values):
        metric.labels(*combo)


def _init_fixed() -> None:
    from proxydhcp.tftp import transfer
    for outcome in transfer.OUTCOMES:
        TFTP_TRANSFERS.labels(outcome)
    for result in ("ok", "failed"):
        CONFIG_RELOADS.labels(result)
    # Nothing serves /metrics before its config has loaded: the first load succeeded (a
    # reload sets it again); left at 0 it would read as a failed reload from the start.
    CONFIG_LAST_RELOAD_OK.set(1)


_init_fixed()


def names() -> set[str]:
    """All sample names the registry can expose (for the dashboard/rules tests), also for
    labelled metrics that have no series yet."""
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                "summary": ("", "_sum", "_count", "_created"), "info": ("_info",), "gauge": ("",)}
    out = set()
    for metric in REGISTRY.collect():
        out.add(metric.name)
        out.update(metric.name + s for s in suffixes.get(metric.type, ("",)))
        for sample in metric.samples:
            out.add(sample.name)
    return out


def label_names() -> dict[str, tuple[str, ...]]:
    """Metric family name -> its label names (for the dashboard/rules tests)."""
    out = {}
    for collector in list(REGISTRY._collector_to_names):
        for metric in collector.describe():
            out[metric.name] = tuple(getattr(collector, "_labelnames", ()))
    return out
