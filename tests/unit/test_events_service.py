"""The events service with the tracker in the store's writer process: a storm of sessions
is tracked, written and expired there, and what comes back (summaries) turns into the boot
metrics and log lines here, on the reactor."""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock

from proxydhcp import config, metrics
from proxydhcp.events import DHCP_REPLY, HTTP_FETCH, EventBus
from proxydhcp.events import service as es
from proxydhcp.events.store import Reader

T0 = 1_700_000_000.0


def _mac(i: int) -> str:
    return f"52:54:00:77:{i >> 8:02x}:{i & 255:02x}"


def _reply(i: int, t: float) -> dict:
    return {"time": t, "port": "67", "message": "offer", "request": "discover",
            "mac": _mac(i), "arch": 7, "firmware": "legacy-pxe", "boot_file": "", "client_ip": None}


def _sample(name, labels):
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


class Reactor(MemoryReactorClock):
    """A fake reactor that also takes calls from the store's threads (run by _settle)."""

    def __init__(self) -> None:
        super().__init__()
        self.from_threads: list = []

    def callFromThread(self, f, *args, **kw) -> None:
        self.from_threads.append((f, args, kw))


def _settle(reactor, svc) -> None:
    """Wait until the writer has answered all that was queued, then apply its summaries as
    the reactor would (the summaries come before the flush's answer)."""
    assert svc.store.flush()
    calls, reactor.from_threads = reactor.from_threads, []
    for f, args, kw in calls:
        f(*args, **kw)


def test_a_storm_of_sessions_is_tracked_written_and_expired_in_the_writer(tmp_path):
    now = [T0]
    live = config.LiveConfig(config.parse(f"state: {{dir: {tmp_path}}}\nevents: {{stall_timeout: 120}}\n"))
    reactor, bus = Reactor(), EventBus()
    svc = es.EventsService(live, bus, reactor=reactor, clock=lambda: now[0])
    svc.startService()
    offers = {"stage": "proxy_offer", "arch": "x64-uefi"}
    failed = {"outcome": "failed", "arch": "x64-uefi", "firmware": "legacy-pxe"}
    ignored = {"diagnosis": "offer_ignored", "arch": "x64-uefi"}
    succeeded = {"outcome": "succeeded", "arch": "x64-uefi", "firmware": "legacy-pxe"}
    before = [_sample("proxydhcp_boot_stage_total", offers), _sample("proxydhcp_boot_sessions_total", failed),
              _sample("proxydhcp_boot_failures_total", ignored), _sample("proxydhcp_boot_sessions_total", succeeded)]
    try:
        n = 1000
        for i in range(n):
            bus.emit(DHCP_REPLY, **_reply(i, T0 + i * 0.001))
        # one of them goes on to its boot script: it succeeds
        bus.emit(HTTP_FETCH, time=T0 + 5, mac=_mac(0), client_ip="10.0.0.9", path="/boot.ipxe",
                 fetch="script", code=200, bytes=10)
        _settle(reactor, svc)
        reader = Reader(svc.store.path)
        assert len(reader.sessions(limit=2 * n)) == n
        assert len(reader.events(limit=3 * n)) == n + 1
        assert _sample("proxydhcp_boot_stage_total", offers) == before[0] + n
        assert _sample("proxydhcp_boot_sessions_total", succeeded) == before[3] + 1

        now[0] = T0 + 200                     # every other session stalled after its offer
        svc.tick()
        _settle(reactor, svc)
        assert len(reader.sessions(failed=True, limit=2 * n)) == n - 1
        assert _sample("proxydhcp_boot_sessions_total", failed) == before[1] + n - 1
        assert _sample("proxydhcp_boot_failures_total", ignored) == before[2] + n - 1
        assert svc.summaries >= 2
        reader.close()
    finally:
        svc.stopService()


def test_open_sessions_survive_a_restart(tmp_path):
    live = config.LiveConfig(config.parse(f"state: {{dir: {tmp_path}}}\n"))
    reactor, bus = Reactor(), EventBus()
    svc = es.EventsService(live, bus, reactor=reactor, clock=lambda: T0)
    svc.startService()
    bus.emit(DHCP_REPLY, **_reply(1, T0))
    _settle(reactor, svc)
    svc.stopService()

    svc = es.EventsService(live, bus, reactor=reactor, clock=lambda: T0 + 1)
    svc.startService()
    try:   # the same machine's 4011 request joins the restored session instead of opening one
        bus.emit(DHCP_REPLY, **dict(_reply(1, T0 + 1), port="4011", message="ack", request="request",
                                    boot_file="ipxe.efi", client_ip="10.0.0.9"))
        _settle(reactor, svc)
        reader = Reader(svc.store.path)
        [s] = reader.sessions()
        assert list(s["stages"]) == ["pxe_discover", "proxy_offer", "proxy_request"]
        reader.close()
    finally:
        svc.stopService()


def test_a_writer_without_idle_priority_is_reported_once(tmp_path, caplog):
    from proxydhcp.events import store as st
    from proxydhcp.events import writer
    conn = st.connect(str(tmp_path / "x.sqlite"))
    st.migrate(conn)
    work = writer.Work(conn, None, "normal")          # as when a syscall filter refuses both
    assert work.batch([(st.CALL, None, 1)])[3] == {"priority": "normal"}
    assert work.batch([(st.CALL, None, 2)])[3] is None
    live = config.LiveConfig(config.parse(f"state: {{dir: {tmp_path}}}\n"))
    svc = es.EventsService(live, EventBus(), reactor=Reactor())
    svc.apply({"priority": "normal"})
    assert "could not take idle CPU priority and runs at normal" in caplog.text
    caplog.clear()
    svc.apply({"priority": "idle"})
    assert "idle CPU priority" not in caplog.text


def test_the_configured_success_stage_reaches_the_writers_tracker(tmp_path):
    """events.success_stage: os_lease: a boot that fetched its script is still open; the OS's
    own lease (a DHCP-server hook's event) makes it succeed."""
    live = config.LiveConfig(config.parse(f"state: {{dir: {tmp_path}}}\nevents: {{success_stage: os_lease}}\n"))
    reactor, bus = Reactor(), EventBus()
    svc = es.EventsService(live, bus, reactor=reactor, clock=lambda: T0)
    svc.startService()
    try:
        bus.emit(DHCP_REPLY, **dict(_reply(5, T0), firmware="ipxe", boot_file="http://x/boot.ipxe"))
        bus.emit(HTTP_FETCH, time=T0 + 1, mac=_mac(5), client_ip="10.0.0.5", path="/boot.ipxe",
                 fetch="script", code=200, bytes=10)
        _settle(reactor, svc)
        reader = Reader(svc.store.path)
        [s] = reader.sessions()
        assert s["state"] == "open" and s["success_stage"] == "os_lease" and s["last_stage"] == "boot_script"
        svc.hooks.accept({"kind": "lease", "time": T0 + 30, "source": "kea", "action": "commit", "mac": _mac(5),
                          "ip": "10.0.0.5", "hostname": "h5", "lease_time": 900, "uid": "0123456789ab"})
        _settle(reactor, svc)
        [s] = reader.sessions()
        assert s["state"] == "succeeded" and s["last_stage"] == "os_lease"
        assert s["lease"]["hostname"] == "h5" and s["lease"]["lease_time"] == 900 and s["lease"]["ip"] == "10.0.0.5"
        reader.close()
    finally:
        svc.stopService()


def test_a_bad_success_stage_is_a_config_error_naming_the_key():
    import pytest
    with pytest.raises(config.ConfigError, match="events.success_stage: one of pxe_discover.*got 'booted'"):
        config.parse("events: {success_stage: booted}\n")


def test_the_hourly_prune_deletes_what_is_older_than_the_configured_retention(tmp_path):
    import time
    live = config.LiveConfig(config.parse(f"state: {{dir: {tmp_path}}}\nevents: {{retention_days: 2}}\n"))
    reactor, bus = Reactor(), EventBus()
    svc = es.EventsService(live, bus, reactor=reactor, clock=lambda: T0)
    svc.startService()
    try:
        now = time.time()
        bus.emit("old.kind", time=now - 3 * 86400)
        bus.emit("kept.kind", time=now - 1 * 86400)
        _settle(reactor, svc)
        reader = Reader(svc.store.path)
        assert len(reader.events()) == 2
        reactor.advance(es.PRUNE_EVERY)       # the service's retention timer
        _settle(reactor, svc)
        assert [e["kind"] for _, e in reader.events()] == ["kept.kind"]
        reader.close()
    finally:
        svc.stopService()


def test_a_hook_event_joins_its_session_once(tmp_path):
    """The hook listener stores a hook's event durably (the writer's tracker sees it then) and,
    once committed, emits it on the bus, whose observer queues it for the store again (kept
    once by its uid): the tracker must not take it twice. Twice, a dnsmasq TFTP transfer of
    the firmware counted double and two boots' worth made a chainload loop."""
    live = config.LiveConfig(config.parse(f"state: {{dir: {tmp_path}}}\n"))
    reactor, bus = Reactor(), EventBus()
    svc = es.EventsService(live, bus, reactor=reactor, clock=lambda: T0)
    svc.startService()
    try:
        mac, ip = _mac(7), "10.0.0.7"
        bus.emit(DHCP_REPLY, **dict(_reply(7, T0), boot_file="undionly.kpxe", arch=0))
        _settle(reactor, svc)
        results = []
        for i, ev in enumerate(({"kind": "lease", "time": T0 + 1, "source": "dnsmasq", "action": "commit",
                                 "mac": mac, "ip": ip, "uid": "lease-uid-0001"},
                                {"kind": "tftp.transfer", "time": T0 + 2, "source": "dnsmasq", "action": "tftp",
                                 "client_ip": ip, "file": "/srv/tftp/undionly.kpxe", "size": 70000,
                                 "outcome": "ok", "uid": "tftp-uid-0001"})):
            svc.hooks.accept(ev, results.append)
            _settle(reactor, svc)       # the commit: "ok" to the hook, the event on the bus ...
            _settle(reactor, svc)       # ... and the bus observer's copy written
        svc.hooks.accept(dict(ev), results.append)   # the same transfer again (socket, then spool)
        _settle(reactor, svc)
        _settle(reactor, svc)
        assert results == ["stored", "stored", "duplicate"]
        reader = Reader(svc.store.path)
        [s] = reader.sessions()
        assert s["counts"]["leases"] == 1 and s["counts"]["firmware_ok"] == 1, s["counts"]
        assert [e["kind"] for e in s["timeline"]] == ["dhcp.reply", "lease", "tftp.transfer"]
        assert s["state"] == "open" and "firmware_transfer" in s["stages"]
        assert len(reader.events()) == 3
        reader.close()
    finally:
        svc.stopService()
