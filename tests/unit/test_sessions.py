"""The boot-session tracker, fed event sequences as the services emit them."""

import pytest

from proxydhcp.events import sessions as S

MAC = "52:54:00:12:34:56"
IP = "10.77.0.50"
T0 = 1_700_000_000.0


def discover(t, fw="legacy-pxe", arch=7, boot_file="", mac=MAC):
    return {"kind": "dhcp.reply", "time": T0 + t, "port": "67", "message": "offer", "request": "discover",
            "mac": mac, "iface": "eth0", "arch": arch, "firmware": fw, "client_ip": None,
            "boot_file": boot_file, "xid": 1}


def silent_discover(t, reason="no_boot_file", mac=MAC, arch=7):
    return {"kind": "dhcp.silence", "time": T0 + t, "port": "67", "reason": reason,
            "detail": "no firmware for x64-uefi", "mac": mac, "iface": "eth0", "arch": arch,
            "firmware": "legacy-pxe", "message": "discover"}


def request4011(t, boot_file="ipxe.efi", ip=IP, mac=MAC):
    return {"kind": "dhcp.reply", "time": T0 + t, "port": "4011", "message": "ack", "request": "request",
            "mac": mac, "arch": 7, "firmware": "legacy-pxe", "client_ip": ip, "boot_file": boot_file}


def ipxe_dhcp(t, mac=MAC, arch=7):
    return {"kind": "dhcp.reply", "time": T0 + t, "port": "67", "message": "offer", "request": "discover",
            "mac": mac, "arch": arch, "firmware": "ipxe", "client_ip": None,
            "boot_file": "http://10.77.0.1:8080/boot.ipxe"}


def tftp(t, file="ipxe.efi", outcome="ok", ip=IP):
    return {"kind": "tftp.transfer", "time": T0 + t, "client": f"{ip}:1234", "client_ip": ip,
            "file": file, "size": 1000, "outcome": outcome}


def http(t, fetch="script", path="/boot.ipxe", code=200, mac=MAC, ip=IP):
    return {"kind": "http.fetch", "time": T0 + t, "mac": mac, "client_ip": ip, "path": path,
            "fetch": fetch, "code": code, "bytes": 100}


def lease(t, action="commit", ip=IP, mac=MAC):
    return {"kind": "lease", "time": T0 + t, "source": "dnsmasq", "action": action, "mac": mac,
            "ip": ip, "hostname": "host1", "lease_time": 3600}


def run(events, tick=None, **kw):
    tr = S.Tracker(**kw)
    updates = []
    for ev in events:
        updates += tr.feed(ev)
    if tick is not None:
        updates += tr.tick(T0 + tick)
    return tr, updates


def kinds(updates):
    return [(u.kind, u.stage) for u in updates if u.kind != "updated"]


UEFI_OK = [discover(0), request4011(4), tftp(4.5, outcome="probe"), tftp(5), ipxe_dhcp(7), http(8)]


def test_uefi_boot_succeeds_at_the_boot_script():
    tr, ups = run(UEFI_OK)
    s = tr.get(MAC)
    assert s.state == S.SUCCEEDED
    assert list(s.stages) == [S.PXE_DISCOVER, S.PROXY_OFFER, S.PROXY_REQUEST, S.FIRMWARE_TRANSFER,
                              S.IPXE_DHCP, S.BOOT_SCRIPT]
    assert ("succeeded", S.BOOT_SCRIPT) in kinds(ups)
    assert s.finished == T0 + 8 and s.duration == 8
    assert s.n("probes") == 1 and s.arch_label == "x64-uefi" and s.firmware == "legacy-pxe"
    # later stages still join, the success stays; idle closes without a diagnosis
    tr.feed(http(20, fetch="file", path="/vmlinuz"))
    tr.feed(lease(60))
    assert S.BOOT_DOWNLOAD in s.stages and S.OS_LEASE in s.stages
    ups = tr.tick(T0 + 60 + 121)
    assert kinds(ups) == [("closed", None)] and s.closed and s.diagnosis is None


def test_success_stage_is_configurable():
    tr, ups = run(UEFI_OK, success_stage=S.OS_LEASE)
    assert tr.get(MAC).state == S.OPEN
    tr.feed(http(10, fetch="file", path="/vmlinuz"))
    ups = tr.feed(lease(40))
    assert ("succeeded", S.OS_LEASE) in kinds(ups)
    with pytest.raises(ValueError):
        S.Tracker(success_stage="nonsense")


def test_bios_path_joins_tftp_by_the_only_waiting_session():
    # BIOS: the offer carries the file, no 4011, so the TFTP client's IP is unknown
    tr, ups = run([discover(0, arch=0, boot_file="undionly.kpxe"), tftp(1, file="undionly.kpxe", ip="10.77.0.9"),
                   ipxe_dhcp(2, arch=0), http(3, ip="10.77.0.9")])
    s = tr.get(MAC)
    assert s.state == S.SUCCEEDED and S.FIRMWARE_TRANSFER in s.stages and s.ips == ["10.77.0.9"]


def test_tftp_of_unknown_ip_is_not_guessed_between_two_machines():
    other = "52:54:00:00:00:02"
    tr, ups = run([discover(0, arch=0, boot_file="undionly.kpxe"),
                   discover(0.1, arch=0, boot_file="undionly.kpxe", mac=other),
                   tftp(1, file="undionly.kpxe", ip="10.77.0.9")])
    assert S.FIRMWARE_TRANSFER not in tr.get(MAC).stages
    assert S.FIRMWARE_TRANSFER not in tr.get(other).stages


def test_lease_hook_gives_the_ip_that_joins_tftp():
    other = "52:54:00:00:00:02"
    tr, ups = run([lease(-1, ip="10.77.0.9"), discover(0, arch=0, boot_file="undionly.kpxe"),
                   discover(0.1, arch=0, boot_file="undionly.kpxe", mac=other),
                   tftp(1, file="undionly.kpxe", ip="10.77.0.9")])
    s = tr.get(MAC)
    assert S.FIRMWARE_TRANSFER in s.stages and s.lease["ip"] == "10.77.0.9"
    assert S.OS_LEASE not in s.stages  # the firmware's own lease is not the OS's


def diagnosis_of(events, stall_at, **kw):
    tr, ups = run(events, tick=stall_at, **kw)
    failed = [u for u in ups if u.kind == "failed"]
    assert len(failed) == 1, kinds(ups)
    s = failed[0].session
    assert s.state == S.FAILED and s.closed and s.diagnosis.advice
    return s


def test_diagnosis_no_offer():
    s = diagnosis_of([silent_discover(0), silent_discover(4), silent_discover(12)], 200)
    assert s.diagnosis.code == S.NO_OFFER and "boot.firmware" in s.diagnosis.advice
    assert s.last_stage == S.PXE_DISCOVER and "3 DISCOVER" in s.diagnosis.summary


def test_diagnosis_offer_ignored():
    s = diagnosis_of([discover(0), discover(4), discover(12), discover(28)], 200)
    assert s.diagnosis.code == S.OFFER_IGNORED and s.last_stage == S.PROXY_OFFER
    assert "4 DISCOVER" in s.diagnosis.summary and "reply_delay_ms" in s.diagnosis.advice


def test_stall_needs_the_timeout():
    tr, ups = run([discover(0), discover(4)], tick=100, stall_timeout=120)
    assert tr.get(MAC).state == S.OPEN and not [u for u in ups if u.kind == "failed"]


def test_diagnosis_firmware_never_fetched():
    s = diagnosis_of([discover(0), request4011(4)], 200)
    assert s.diagnosis.code == S.FIRMWARE_NEVER_FETCHED and "UDP 69" in s.diagnosis.advice
    assert s.last_stage == S.PROXY_REQUEST


@pytest.mark.parametrize("outcome,hint", [("not_found", "tftp.root"), ("timeout", "MTU"),
                                          ("access_denied", "permissions")])
def test_diagnosis_firmware_transfer_failed(outcome, hint):
    s = diagnosis_of([discover(0), request4011(4), tftp(5, outcome=outcome), tftp(9, outcome=outcome)], 200)
    assert s.diagnosis.code == S.FIRMWARE_TRANSFER_FAILED
    assert outcome in s.diagnosis.summary and "2 time" in s.diagnosis.summary
    assert hint in s.diagnosis.advice


def test_diagnosis_firmware_transfer_failed_over_http():
    ev = discover(0, fw="uefi-http", arch=16, boot_file="http://x/ipxe.efi")
    s = diagnosis_of([ev, http(2, fetch="firmware", path="/ipxe.efi", code=404)], 200)
    assert s.diagnosis.code == S.FIRMWARE_TRANSFER_FAILED and "404" in s.diagnosis.summary


def test_diagnosis_chainload_loop_closes_at_once():
    # iPXE not recognised: its DHCP looks like the firmware's, and it gets iPXE again
    events = []
    for i in range(3):
        events += [discover(10 * i), request4011(10 * i + 1), tftp(10 * i + 2)]
    tr, ups = run(events)
    s = tr.get(MAC)
    assert s.state == S.FAILED and s.diagnosis.code == S.CHAINLOAD_LOOP
    assert "3 times" in s.diagnosis.summary and "user-class" in s.diagnosis.advice
    assert s.finished == T0 + 22


def test_diagnosis_chainload_loop_when_script_chains_back():
    tr, ups = run([discover(0, arch=0, boot_file="undionly.kpxe"), tftp(1, file="undionly.kpxe"),
                   ipxe_dhcp(2, arch=0), tftp(3, file="undionly.kpxe"), ipxe_dhcp(4, arch=0),
                   tftp(5, file="undionly.kpxe")])
    assert tr.get(MAC).diagnosis.code == S.CHAINLOAD_LOOP


def test_diagnosis_ipxe_never_asked():
    s = diagnosis_of([discover(0), request4011(4), tftp(5)], 200)
    assert s.diagnosis.code == S.IPXE_NEVER_ASKED and s.last_stage == S.FIRMWARE_TRANSFER
    assert "Secure Boot" in s.diagnosis.advice and "x64-uefi" in s.diagnosis.summary


def test_diagnosis_script_never_fetched():
    s = diagnosis_of(UEFI_OK[:-1], 200)
    assert s.diagnosis.code == S.SCRIPT_NEVER_FETCHED and s.last_stage == S.IPXE_DHCP
    assert "http.port" in s.diagnosis.advice


def test_diagnosis_script_failed():
    s = diagnosis_of(UEFI_OK[:-1] + [http(8, code=500)], 200)
    assert s.diagnosis.code == S.SCRIPT_FAILED and "500" in s.diagnosis.summary


def test_diagnosis_downloads_when_success_is_later():
    s = diagnosis_of(UEFI_OK, 200, success_stage=S.BOOT_DOWNLOAD)
    assert s.diagnosis.code == S.NOTHING_DOWNLOADED
    s = diagnosis_of(UEFI_OK + [http(9, fetch="file", path="/initrd", code=404)], 200,
                     success_stage=S.BOOT_DOWNLOAD)
    assert s.diagnosis.code == S.DOWNLOAD_FAILED and "/initrd" in s.diagnosis.summary


def test_diagnosis_os_never_leased():
    s = diagnosis_of(UEFI_OK + [http(9, fetch="file", path="/vmlinuz")], 200, success_stage=S.OS_LEASE)
    assert s.diagnosis.code == S.OS_NEVER_LEASED and "ip=dhcp" in s.diagnosis.advice


def test_every_diagnosis_is_reachable_and_has_advice():
    # the codes above cover the list except the generic fallback
    tested = {S.NO_OFFER, S.OFFER_IGNORED, S.FIRMWARE_NEVER_FETCHED, S.FIRMWARE_TRANSFER_FAILED,
              S.CHAINLOAD_LOOP, S.IPXE_NEVER_ASKED, S.SCRIPT_NEVER_FETCHED, S.SCRIPT_FAILED,
              S.DOWNLOAD_FAILED, S.NOTHING_DOWNLOADED, S.OS_NEVER_LEASED}
    assert set(S.DIAGNOSES) - tested == {S.STALLED}


def test_a_new_pxe_discover_after_success_starts_a_new_session():
    tr, ups = run(UEFI_OK + [discover(300)])
    s = tr.get(MAC)
    assert s.started == T0 + 300 and s.state == S.OPEN and list(s.stages) == [S.PXE_DISCOVER, S.PROXY_OFFER]
    opened = [u.session for u in ups if u.kind == "opened"]
    closed = [u.session for u in ups if u.kind == "closed"]
    assert len(opened) == 2 and closed and closed[0].state == S.SUCCEEDED


def test_ipxe_rom_starts_a_session_at_ipxe_dhcp():
    tr, ups = run([ipxe_dhcp(0, arch=0), http(1)])
    s = tr.get(MAC)
    assert s.state == S.SUCCEEDED and list(s.stages) == [S.IPXE_DHCP, S.BOOT_SCRIPT] and s.firmware == "ipxe"


def test_a_late_os_lease_joins_a_closed_successful_session():
    tr, _ = run(UEFI_OK, tick=200)
    s = tr.get(MAC)
    assert s.closed and s.state == S.SUCCEEDED
    ups = tr.feed(lease(900))
    assert ("stage", S.OS_LEASE) in kinds(ups) and s.lease["hostname"] == "host1"


def test_lease_release_is_recorded_but_not_a_stage():
    tr, ups = run(UEFI_OK + [lease(30, action="release")])
    s = tr.get(MAC)
    assert S.OS_LEASE not in s.stages and s.lease["action"] == "release"


def test_unrelated_events_are_ignored():
    tr, ups = run([tftp(0, ip="10.9.9.9"), lease(1, mac="00:11:22:33:44:55"),
                   {"kind": "http.fetch", "time": T0, "path": "/metrics", "fetch": "metrics", "code": 200},
                   {"kind": "something.else", "time": T0}])
    assert ups == [] and tr.by_mac == {}


def test_forgets_old_closed_sessions_and_round_trips_as_dict():
    tr, _ = run(UEFI_OK, tick=200, lease_window=600)
    d = tr.get(MAC).as_dict()
    assert d["last_stage"] == S.BOOT_SCRIPT and d["duration"] == 8
    assert S.Session.from_dict(d).as_dict() == d
    tr.tick(T0 + 2000)
    assert tr.get(MAC) is None


def test_restore_takes_back_open_sessions():
    tr, _ = run([discover(0), request4011(4)])
    saved = S.Session.from_dict(tr.get(MAC).as_dict())
    tr2 = S.Tracker()
    tr2.restore([saved])
    tr2.feed(tftp(5))
    assert S.FIRMWARE_TRANSFER in tr2.get(MAC).stages


def test_timeline_is_bounded():
    tr, _ = run([discover(i) for i in range(500)], stall_timeout=1e9)
    s = tr.get(MAC)
    assert len(s.timeline) <= 200 and s.timeline[0]["time"] == T0 and s.n("timeline_dropped") == 300


def test_as_dict_is_what_dataclasses_asdict_says_and_a_snapshot():
    """The hand-written as_dict covers every field (a new field must be added there) and later
    changes to the session do not reach a snapshot already taken."""
    import dataclasses
    from proxydhcp.events.sessions import Diagnosis, Session
    s = Session(id="x-1", mac="52:54:00:00:00:01", started=10.0, updated=11.0, arch=7,
                firmware="legacy-pxe", boot_file="ipxe.efi", stages={"pxe_discover": 10.0},
                ips=["10.0.0.5"], lease={"ip": "10.0.0.5"}, counts={"firmware_transfers": 1},
                silence={"reason": "busy"}, last_failure={"what": "firmware"}, finished=12.0,
                diagnosis=Diagnosis("code", "summary", "advice"),
                timeline=[{"time": 10.0, "kind": "dhcp", "stage": None, "text": "t"}])
    d = s.as_dict()
    expected = dataclasses.asdict(s)
    assert {k: d[k] for k in expected} == expected
    assert set(d) - set(expected) == {"last_stage", "arch_label", "duration"}
    s.stages["proxy_offer"] = 11.0
    s.ips.append("10.0.0.6")
    s.counts["firmware_transfers"] = 2
    s.timeline.append({"time": 11.0, "kind": "dhcp", "stage": None, "text": "u"})
    assert d["stages"] == {"pxe_discover": 10.0} and d["ips"] == ["10.0.0.5"]
    assert d["counts"] == {"firmware_transfers": 1} and len(d["timeline"]) == 1
    assert Session.from_dict(d).as_dict() == d


def corporate_request(t, mac=MAC, fw="legacy-pxe"):
    """The client's DHCPREQUEST for its corporate offer, seen on 67: we never answer it."""
    return {"kind": "dhcp.silence", "time": T0 + t, "port": "67", "reason": "ignored_message",
            "detail": "REQUEST on 67", "mac": mac, "iface": "eth0", "arch": 7, "firmware": fw,
            "message": "request"}


def test_the_clients_own_dhcp_request_is_counted_not_reported():
    """A REQUEST on 67 is the client's normal exchange with its DHCP server: it does not fill
    the timeline, open a session, or replace why we were silent to its DISCOVERs."""
    tr, ups = run([corporate_request(0, mac="52:54:00:00:00:99")])
    assert ups == [] and tr.get("52:54:00:00:00:99") is None
    tr, ups = run(UEFI_OK[:2] + [corporate_request(4.2)] + UEFI_OK[2:])
    s = tr.get(MAC)
    assert s.state == S.SUCCEEDED and s.n("dhcp_server_messages") == 1
    assert not any("stayed silent" in e["text"] for e in s.timeline)
    s = diagnosis_of([silent_discover(0), corporate_request(1), silent_discover(4)], 200)
    assert s.diagnosis.code == S.NO_OFFER and "no_boot_file" in s.diagnosis.summary


def _macs(n):
    return [f"52:54:00:00:{i >> 8:02x}:{i & 255:02x}" for i in range(n)]


def test_tick_closes_only_what_is_due():
    tr = S.Tracker(stall_timeout=120)
    macs = _macs(1000)
    for i, mac in enumerate(macs):
        tr.feed(discover(i * 0.01, mac=mac))
    tr.feed(request4011(10, mac=macs[0]))          # touched later: due later than its DISCOVER says
    assert tr.tick(T0 + 100) == []
    now = T0 + 129.995                            # every DISCOVER-only session is due, macs[0] is not
    failed = {u.session.mac for u in tr.tick(now)}
    assert len(failed) == 999 and macs[0] not in failed
    assert all(tr.get(m).diagnosis.code == S.OFFER_IGNORED for m in failed)
    assert tr.tick(now) == []
    assert [u.session.mac for u in tr.tick(T0 + 131)] == [macs[0]]


def test_tick_takes_events_out_of_time_order():
    tr = S.Tracker(stall_timeout=120)
    a, b = _macs(2)
    tr.feed(discover(50, mac=a))
    tr.feed(discover(0, mac=b))       # fed later, but older: due first
    assert [u.session.mac for u in tr.tick(T0 + 121)] == [b]
    assert [u.session.mac for u in tr.tick(T0 + 171)] == [a]


def test_evicted_and_replaced_sessions_leave_no_work_behind():
    tr = S.Tracker(stall_timeout=120, max_sessions=100)
    for rnd in range(30):               # 3,000 sessions through a tracker that keeps 100
        for mac in _macs(100):
            tr.feed(discover(rnd, mac=f"{mac[:3]}{rnd:02x}{mac[5:]}"))
    tr.tick(T0 + 1)                       # nothing due yet; eviction consumed the evicted entries
    assert len(tr.by_mac) == 100 and len(tr._open_due) + len(tr._closed_due) == 100
    ups = tr.tick(T0 + 29 + 120)
    assert len(ups) == 100 and {u.session.mac[3:5] for u in ups} == {"1d"}   # only the kept (last) round
    tr.feed(discover(200))
    tr.feed(discover(201))              # a new session for the same MAC replaces the open one
    assert [u.session.id for u in tr.tick(T0 + 201 + 120)] == [tr.get(MAC).id]


def test_eviction_forgets_closed_sessions_first_then_the_idlest():
    tr = S.Tracker(stall_timeout=120, max_sessions=3)
    a, b, c, d, e = _macs(5)
    tr.feed(discover(0, mac=a))
    tr.feed(discover(1, mac=b))
    tr.feed(discover(2, mac=c))
    tr.feed(request4011(3, mac=a))            # a is busy again: b is now the idlest
    tr.feed(discover(4, mac=d))
    assert set(tr.by_mac) == {a, c, d}
    for _ in range(3):                        # c fetches iPXE three times: a loop, closed at once
        tr.feed(tftp(5, ip="10.77.0.9"))
    tr.feed(request4011(5, mac=c, ip="10.77.0.9"))
    for _ in range(3):
        tr.feed(tftp(6, ip="10.77.0.9"))
    assert tr.get(c).closed
    tr.feed(discover(7, mac=e))
    assert set(tr.by_mac) == {a, d, e}


def test_summary_counts_stages_lists_ended_sessions_and_only_the_wanted_hook_payloads():
    tr = S.Tracker()
    ups = []
    for ev in UEFI_OK:
        ups += tr.feed(ev)
    none = S.summarise(ups)
    assert none["hooks"] == [] and none["arches"] == ["x64-uefi"]
    assert sorted((st, n) for st, a, n in none["stages"]) == sorted((st, 1) for st in (
        S.PXE_DISCOVER, S.PROXY_OFFER, S.PROXY_REQUEST, S.FIRMWARE_TRANSFER, S.IPXE_DHCP, S.BOOT_SCRIPT))
    [ended] = none["ended"]
    assert ended[0] == "succeeded" and ended[1] == "x64-uefi" and ended[6] == MAC and ended[4] is None
    only = S.summarise(ups, {S.SESSION_SUCCEEDED})
    assert [p["event"] for p in only["hooks"]] == [S.SESSION_SUCCEEDED]
    assert only["hooks"][0]["stage"] == S.BOOT_SCRIPT
    stages = S.summarise(ups, {S.STAGE_REACHED})
    assert len(stages["hooks"]) == 6 and {p["event"] for p in stages["hooks"]} == {S.STAGE_REACHED}
