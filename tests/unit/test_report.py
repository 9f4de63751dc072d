"""`proxydhcp sessions [--failed] [--mac M] [--json] [--timeline]` and `proxydhcp events`:
what an operator reads, from a store holding a failed and a succeeded boot (built by the
tracker from event sequences, written by the store's writer process)."""

import json

import pytest

from proxydhcp import cli
from proxydhcp.events import sessions as S
from proxydhcp.events.store import EventStore

OK_MAC = "52:54:00:00:00:0a"
BAD_MAC = "52:54:00:00:00:0b"
IP = "10.77.0.60"
T0 = 1_700_000_000.0


def _events():
    ok = [
        {"kind": "dhcp.reply", "time": T0, "port": "67", "message": "offer", "request": "discover", "mac": OK_MAC,
         "arch": 7, "firmware": "legacy-pxe", "client_ip": None, "boot_file": ""},
        {"kind": "dhcp.reply", "time": T0 + 4, "port": "4011", "message": "ack", "request": "request",
         "mac": OK_MAC, "arch": 7, "firmware": "legacy-pxe", "client_ip": IP, "boot_file": "ipxe.efi"},
        {"kind": "tftp.transfer", "time": T0 + 5, "client_ip": IP, "file": "ipxe.efi", "size": 1000, "outcome": "ok"},
        {"kind": "dhcp.reply", "time": T0 + 7, "port": "67", "message": "offer", "request": "discover",
         "mac": OK_MAC, "arch": 7, "firmware": "ipxe", "client_ip": None, "boot_file": "http://x/boot.ipxe"},
        {"kind": "http.fetch", "time": T0 + 8.25, "mac": OK_MAC, "client_ip": IP, "path": "/boot.ipxe",
         "fetch": "script", "code": 200, "bytes": 100},
        {"kind": "lease", "time": T0 + 60, "source": "kea", "action": "commit", "mac": OK_MAC, "ip": IP,
         "hostname": "web1", "lease_time": 900, "uid": "0123456789ab"},
    ]
    bad = [
        {"kind": "dhcp.reply", "time": T0 + 1, "port": "67", "message": "offer", "request": "discover",
         "mac": BAD_MAC, "arch": 7, "firmware": "legacy-pxe", "client_ip": None, "boot_file": ""},
        {"kind": "dhcp.reply", "time": T0 + 2, "port": "4011", "message": "ack", "request": "request",
         "mac": BAD_MAC, "arch": 7, "firmware": "legacy-pxe", "client_ip": "10.77.0.61", "boot_file": "ipxe.efi"},
        {"kind": "tftp.transfer", "time": T0 + 3, "client_ip": "10.77.0.61", "file": "ipxe.efi",
         "outcome": "not_found"},
    ]
    return ok, bad


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    state = tmp_path_factory.mktemp("report") / "state"
    store = EventStore(str(state))
    store.start()
    tracker = S.Tracker()
    ok, bad = _events()
    for ev in sorted(ok + bad, key=lambda e: e["time"]):
        store.record(ev)
        tracker.feed(ev)
    tracker.tick(T0 + 500)          # the bad one stalls: failed, diagnosed
    for s in tracker.by_mac.values():
        store.save_session(s.as_dict())
    assert store.flush()
    store.stop()
    return store.path


def run(capsys, *argv):
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_sessions_one_line_each_newest_first_with_the_diagnosis(db, capsys):
    code, out, _ = run(capsys, "sessions", "--db", db)
    assert code == 0
    heads = [line for line in out.splitlines() if not line.startswith(" ")]
    assert [h.split()[0] for h in heads] == [BAD_MAC, OK_MAC]
    bad, ok = heads
    assert "failed" in bad and "last stage: proxy_request" in bad
    assert "succeeded" in ok and "last stage: os_lease" in ok and f"lease: {IP} (web1) via kea" in ok
    assert "    8.2 s" in ok      # the session's duration: from its DISCOVER to its success
    assert "diagnosis: firmware_transfer_failed: the firmware transfer of ipxe.efi over tftp failed" in out
    assert "try: the file is not in tftp.root" in out
    assert "+" not in out         # no timelines without --mac / --timeline


def test_sessions_failed_only(db, capsys):
    code, out, _ = run(capsys, "sessions", "--db", db, "--failed")
    assert code == 0 and BAD_MAC in out and OK_MAC not in out


def test_sessions_for_one_mac_print_its_timeline_with_offsets(db, capsys):
    code, out, _ = run(capsys, "sessions", "--db", db, "--mac", OK_MAC.upper().replace(":", "-"))
    assert code == 0 and BAD_MAC not in out
    lines = out.splitlines()
    assert lines[0].startswith(OK_MAC)
    timeline = [line.replace("+", " ").split() for line in lines[1:]]   # "+   8.250 s  stage  text"
    offsets = [float(t[0]) for t in timeline]
    assert offsets == sorted(offsets) and offsets[0] == 0.0 and 8.25 in offsets and 60.0 in offsets
    assert all(t[1] == "s" for t in timeline)
    stages = [t[2] for t in timeline]
    assert stages[:6] == ["proxy_offer", "proxy_request", "firmware_transfer", "ipxe_dhcp", "boot_script", "os_lease"]


def test_sessions_json_is_the_stored_session(db, capsys):
    code, out, _ = run(capsys, "sessions", "--db", db, "--json", "--failed")
    (s,) = json.loads(out)
    assert code == 0 and s["mac"] == BAD_MAC and s["state"] == "failed"
    assert s["diagnosis"]["code"] == S.FIRMWARE_TRANSFER_FAILED and "tftp.root" in s["diagnosis"]["advice"]
    assert [e["stage"] for e in s["timeline"] if e["stage"]] == ["proxy_offer", "proxy_request"]


def test_sessions_for_an_unknown_mac_and_nothing_failed_say_so(tmp_path, capsys):
    store = EventStore(str(tmp_path))
    store.open()
    code, out, _ = run(capsys, "sessions", "--db", store.path, "--failed", "--mac", OK_MAC)
    assert code == 0 and out.strip() == f"no boot sessions for {OK_MAC} that failed"


def test_a_bad_mac_and_a_missing_store_are_clear_errors(tmp_path, db, capsys):
    with pytest.raises(SystemExit, match="not a MAC address: 'nonsense'"):
        run(capsys, "sessions", "--db", db, "--mac", "nonsense")
    with pytest.raises(SystemExit, match="no event store yet"):
        run(capsys, "events", "--db", str(tmp_path / "none.sqlite"))


def test_events_text_json_and_filters(db, capsys):
    code, out, _ = run(capsys, "events", "--db", db)
    lines = out.splitlines()
    assert code == 0 and len(lines) == 9
    assert lines[0].split()[2:4] == ["dhcp.reply", OK_MAC] and "port=67" in lines[0]
    tftp = next(line for line in lines if "tftp.transfer" in line and "outcome=ok" in line)
    assert "client_ip=10.77.0.60" in tftp and "file=ipxe.efi" in tftp and " - " in tftp   # no MAC
    code, out, _ = run(capsys, "events", "--db", db, "--json", "--kind", "lease")
    (lease,) = [json.loads(line) for line in out.splitlines()]
    assert lease["hostname"] == "web1" and lease["lease_time"] == 900 and lease["uid"] == "0123456789ab"
    code, out, _ = run(capsys, "events", "--db", db, "--json", "--mac", BAD_MAC)
    assert [json.loads(line)["time"] for line in out.splitlines()] == [T0 + 1, T0 + 2]
    code, out, _ = run(capsys, "events", "--db", db, "--limit", "2")
    assert len(out.splitlines()) == 2


def test_events_follow_streams_what_is_written_after_it_started(tmp_path):
    """`proxydhcp events -f` prints the newest events, then each new one as it is stored."""
    import os
    import select
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    store = EventStore(str(tmp_path))
    store.start()
    try:
        store.record({"kind": "dhcp.reply", "time": T0, "mac": OK_MAC, "n": 0})
        assert store.flush()
        proc = subprocess.Popen([sys.executable, "-m", "proxydhcp", "events", "-f", "--json", "--db", store.path],
                                cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            def line():
                ready, _, _ = select.select([proc.stdout], [], [], 20)
                assert ready, proc.stderr.read() if proc.poll() is not None else "no line within 20 s"
                return json.loads(proc.stdout.readline())
            assert line()["n"] == 0                      # what was there (the newest --limit)
            for n in (1, 2):
                store.record({"kind": "lease", "time": T0 + n, "mac": OK_MAC, "n": n})
                assert store.flush()
                assert line()["n"] == n                  # and each one written since
        finally:
            proc.kill()                                  # ours, by its Popen
            proc.wait()
    finally:
        store.stop()
