"""The SQLite event store: schema and migrations, batching, durability callbacks, retention."""

import sqlite3
import threading
import time

import pytest

from proxydhcp.events import store as st


@pytest.fixture
def store(tmp_path):
    s = st.EventStore(str(tmp_path / "state"), retention_days=1)
    s.start()
    yield s
    s.stop()


def test_fresh_store_is_wal_at_the_current_schema(store):
    conn = sqlite3.connect(store.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == st.SCHEMA_VERSION


def test_migrations_run_once_and_a_newer_schema_is_refused(tmp_path):
    conn = st.connect(str(tmp_path / "x.sqlite"))
    assert st.migrate(conn) == 0
    assert st.migrate(conn) == st.SCHEMA_VERSION
    conn.execute(f"PRAGMA user_version={st.SCHEMA_VERSION + 1}")
    with pytest.raises(st.StoreError, match="newer"):
        st.migrate(conn)


def test_a_later_migration_is_applied_to_an_old_file(tmp_path, monkeypatch):
    path = str(tmp_path / "x.sqlite")
    st.migrate(st.connect(path))
    monkeypatch.setattr(st, "MIGRATIONS", st.MIGRATIONS + ["ALTER TABLE events ADD COLUMN extra TEXT"])
    monkeypatch.setattr(st, "SCHEMA_VERSION", len(st.MIGRATIONS))
    conn = st.connect(path)
    assert st.migrate(conn) == 1
    assert "extra" in [r[1] for r in conn.execute("PRAGMA table_info(events)")]


def test_recorded_events_and_sessions_are_readable(store):
    now = time.time()
    store.record({"kind": "dhcp.reply", "time": now, "mac": "aa:bb:cc:dd:ee:ff", "port": "67"})
    store.record({"kind": "tftp.transfer", "time": now + 1, "client_ip": "10.0.0.5", "file": "ipxe.efi"})
    store.save_session({"id": "s1", "mac": "aa:bb:cc:dd:ee:ff", "started": now, "updated": now,
                        "state": "open", "closed": False, "last_stage": "proxy_offer"})
    store.save_session({"id": "s1", "mac": "aa:bb:cc:dd:ee:ff", "started": now, "updated": now + 5,
                        "state": "failed", "closed": True, "last_stage": "proxy_offer",
                        "diagnosis": {"code": "offer_ignored"}})
    assert store.flush()
    r = st.Reader(store.path)
    evs = r.events()
    assert [e["kind"] for _, e in evs] == ["dhcp.reply", "tftp.transfer"]
    assert [e["file"] for _, e in r.events(kind="tftp.transfer")] == ["ipxe.efi"]
    assert len(r.events(mac="aa:bb:cc:dd:ee:ff")) == 1 and r.events(after_id=evs[-1][0]) == []
    (s,) = r.sessions()
    assert s["state"] == "failed" and r.sessions(failed=True) == [s]
    assert r.sessions(mac="00:00:00:00:00:00") == [] and r.open_sessions() == []


def test_durable_callback_comes_after_the_commit_and_uids_dedupe(store):
    seen = []
    committed = threading.Event()

    def done(ok):
        # another connection must already see the row
        conn = sqlite3.connect(store.path)
        seen.append((ok, conn.execute("SELECT count(*) FROM events WHERE uid='u1'").fetchone()[0]))
        committed.set()

    ev = {"kind": "lease", "time": time.time(), "uid": "u1", "mac": "aa:bb:cc:dd:ee:ff", "ip": "10.0.0.9"}
    store.record_durable(ev, done)
    assert committed.wait(5) and seen == [(st.STORED, 1)]
    store.record(dict(ev))          # the same event again (as the bus observer sees it)
    again = []
    store.record_durable(dict(ev), again.append)
    store.flush()
    r = st.Reader(store.path)
    assert again == [st.DUPLICATE]
    assert len(r.events()) == 1 and r.uids() == {"u1"}
    assert r.events()[0][1]["ip"] == "10.0.0.9"


def test_a_full_queue_drops_and_says_so(tmp_path):
    s = st.EventStore(str(tmp_path), max_queue=2)   # not started: nothing drains
    s.open()
    results = []
    for i in range(3):
        s.record({"kind": "x", "time": 1.0})
    s.record_durable({"kind": "lease", "time": 1.0}, results.append)
    assert s.dropped == 2 and results == [st.FAILED]


def test_retention_deletes_old_events_and_closed_sessions(store):
    now = time.time()
    store.record({"kind": "old", "time": now - 3 * 86400})
    store.record({"kind": "new", "time": now})
    store.save_session({"id": "old", "mac": "m", "started": 1.0, "updated": now - 3 * 86400,
                        "state": "failed", "closed": True})
    store.save_session({"id": "open-old", "mac": "m", "started": 1.0, "updated": now - 3 * 86400,
                        "state": "open", "closed": False})
    got = []
    store.prune(now, got.append)
    store.flush()
    r = st.Reader(store.path)
    assert [e["kind"] for _, e in r.events()] == ["new"] and got == [2]
    assert [s["id"] for s in r.sessions()] == ["open-old"]


def test_batches_many_events_in_few_transactions(store):
    for i in range(5000):
        store.record({"kind": "dhcp.reply", "time": 1.0 + i})
    store.flush()
    assert store.written == 5000 and len(st.Reader(store.path).events(limit=10000)) == 5000


def test_reader_explains_a_missing_store(tmp_path):
    with pytest.raises(st.StoreError, match="no event store yet"):
        st.Reader(str(tmp_path / "none.sqlite"))


def test_an_unwritable_state_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(st.StoreError, match="state.dir"):
        st.EventStore(str(blocker / "sub")).open()


def test_a_killed_writer_is_replaced_and_nothing_after_it_is_lost(tmp_path, caplog):
    import os
    import signal
    s = st.EventStore(str(tmp_path / "state"))
    s.start()
    try:
        s.record({"kind": "before", "time": 1.0})
        assert s.flush()
        old = s.writer_pid
        os.kill(old, signal.SIGKILL)
        deadline = time.time() + 5
        while time.time() < deadline and s._proc.poll() is None:
            time.sleep(0.01)
        for i in range(3):
            s.record({"kind": "after", "time": 2.0 + i})
        assert s.flush()
        assert s.writer_pid != old
        kinds = [e["kind"] for _, e in st.Reader(s.path).events()]
        assert kinds == ["before", "after", "after", "after"]
        assert "the writer process is gone" in caplog.text
    finally:
        s.stop()


def test_the_writer_runs_at_idle_priority(tmp_path):
    s = st.EventStore(str(tmp_path / "state"))
    s.start()
    try:
        assert s.flush()
        import os
        assert os.sched_getscheduler(s.writer_pid) == os.SCHED_IDLE
    finally:
        s.stop()



def test_a_hooks_event_ends_the_pumps_wait_for_a_burst(tmp_path, monkeypatch):
    """After a wake-up the pump waits COALESCE for more events, so that a burst leaves as one
    batch. A DHCP-server hook waits for its event's commit (and spools after 80 ms): its
    event ends that wait, and takes what gathered so far along. So does a stop."""
    monkeypatch.setattr(st, "COALESCE", 3600.0)      # a wait nothing else would end in time
    s = st.EventStore(str(tmp_path / "state"))
    s.start()
    stopped = False
    try:
        s.record({"kind": "dhcp.reply", "time": 1.0})
        done = threading.Event()
        s.record_durable({"kind": "lease", "time": 2.0, "uid": "u-durable1"}, lambda r: done.set())
        assert done.wait(20)
        assert s.written == 2                           # the plain event went in the same batch
        s.record({"kind": "dhcp.reply", "time": 3.0})   # the pump waits for more ...
        s.stop(timeout=20)                              # ... and the stop ends the wait, then writes it
        stopped = True
        assert [e["time"] for _, e in st.Reader(s.path).events()] == [1.0, 2.0, 3.0]
    finally:
        if not stopped:
            s.stop()
