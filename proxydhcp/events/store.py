"""The event store: every event and every boot session, in SQLite (WAL) under state.dir.

Owns the database file, its schema (version in PRAGMA user_version, migrations applied in
order at open) and the one writer thread. Callers never touch the disk: `record()` and
`save_session()` only queue (the bus observer on the hot path costs a queue put);
`record_durable()` queues an event and calls back once its transaction is committed, which
is what a hook's acknowledgement waits for. Reads (`Reader`) use their own connection and
may run in any process (the CLI) while the daemon writes. Must not import Twisted.

Durability: WAL with synchronous=NORMAL survives a killed process; a batch that carries an
event a hook is waiting for is committed with synchronous=FULL (survives power loss too).
Hook events carry a `uid`: the same event delivered twice (socket, then spool) is kept once.
"""

from __future__ import annotations

import json
import logging
import os
import collections
import sqlite3
import threading
import time
from typing import Callable

log = logging.getLogger(__name__)

FILENAME = "events.sqlite"

# Each entry upgrades the schema by one version; never edit a released entry, append one.
MIGRATIONS: list[str] = [
    # 1: events and sessions
    """
    CREATE TABLE events (
        id      INTEGER PRIMARY KEY,
        uid     TEXT UNIQUE,            -- set by hooks: a re-delivered event is kept once
        time    REAL NOT NULL,
        kind    TEXT NOT NULL,
        mac     TEXT,
        ip      TEXT,
        data    TEXT NOT NULL           -- the whole event as JSON
    );
    CREATE INDEX events_time ON events(time);
    CREATE INDEX events_mac ON events(mac, time);
    CREATE TABLE sessions (
        id          TEXT PRIMARY KEY,
        mac         TEXT NOT NULL,
        started     REAL NOT NULL,
        updated     REAL NOT NULL,
        state       TEXT NOT NULL,      -- open | succeeded | failed
        closed      INTEGER NOT NULL,
        last_stage  TEXT,
        diagnosis   TEXT,
        arch        TEXT,
        firmware    TEXT,
        data        TEXT NOT NULL       -- the whole session as JSON
    );
    CREATE INDEX sessions_mac ON sessions(mac, started);
    CREATE INDEX sessions_updated ON sessions(updated);
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


class StoreError(Exception):
    """The store cannot be used; the message says what to fix."""


def db_path(state_dir: str) -> str:
    return os.path.join(state_dir, FILENAME)


def connect(path: str, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        if not os.path.exists(path):
            raise StoreError(f"{path}: no event store yet (the daemon creates it on start)")
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5, check_same_thread=False)
    else:
        conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
    conn.row_factory = sqlite3.Row
    return conn


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to SCHEMA_VERSION; returns the version found before."""
    found = conn.execute("PRAGMA user_version").fetchone()[0]
    if found > SCHEMA_VERSION:
        raise StoreError(f"the event store has schema {found}, newer than this proxydhcp knows "
                         f"({SCHEMA_VERSION}): upgrade proxydhcp or move the file away")
    for version in range(found + 1, SCHEMA_VERSION + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in MIGRATIONS[version - 1].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version={version}")
            conn.execute("COMMIT")
        except Exception:
            conn.execute("ROLLBACK")
            raise
        log.info("event store schema upgraded to version %d", version)
    return found


def _event_row(ev: dict) -> tuple:
    return (ev.get("uid"), float(ev.get("time") or time.time()), ev.get("kind") or "?", ev.get("mac"),
            ev.get("client_ip") or ev.get("ip"), json.dumps(ev, default=str, separators=(",", ":")))


def _session_row(s: dict) -> tuple:
    diag = s.get("diagnosis") or {}
    return (s["id"], s["mac"], s["started"], s["updated"], s["state"], int(bool(s.get("closed"))),
            s.get("last_stage"), diag.get("code"), s.get("arch_label"), s.get("firmware"),
            json.dumps(s, default=str, separators=(",", ":")))


_STOP = object()
# What record_durable's callback is told.
STORED, DUPLICATE, FAILED = "stored", "duplicate", "failed"


class EventStore:
    """The writing side. open() creates/migrates the file; start() runs the writer thread."""

    def __init__(self, state_dir: str, retention_days: float = 30.0, max_queue: int = 100_000,
                 max_batch: int = 2000) -> None:
        self.state_dir = state_dir
        self.path = db_path(state_dir)
        self.retention_days = retention_days
        self.max_batch = max_batch
        # The reactor appends, the writer thread pops: a deque's append and popleft are atomic,
        # and the wake-up Event is set only when it is not already (a queue.Queue put takes a
        # lock and a condition for every event, on the reactor thread).
        self.max_queue = max_queue
        self._items: collections.deque = collections.deque()
        self._wake = threading.Event()
        self._conn: sqlite3.Connection | None = None
        self._thread: threading.Thread | None = None
        self.dropped = 0           # events refused because the queue was full
        self.written = 0
        self.failed_batches = 0

    def open(self) -> None:
        try:
            os.makedirs(self.state_dir, exist_ok=True)
            self._conn = connect(self.path)
            migrate(self._conn)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the event store {self.path}: {exc} "
                             f"(check state.dir and its permissions)") from None

    def start(self) -> None:
        if self._conn is None:
            self.open()
        self._thread = threading.Thread(target=self._run, name="event-store", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop the thread and close the file."""
        if self._thread is not None:
            self._push(_STOP)
            self._thread.join(timeout)
            self._thread = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # --- queueing (any thread, never blocks) -----------------------------------------
    def _push(self, item) -> None:
        self._items.append(item)
        if not self._wake.is_set():
            self._wake.set()

    def _put(self, item) -> bool:
        if len(self._items) >= self.max_queue:
            self.dropped += 1
            return False
        self._push(item)
        return True

    def record(self, event: dict) -> None:
        """Bus observer: queue the event for the next batch."""
        self._put(("event", event, None))

    def record_durable(self, event: dict, on_done: Callable[[str], None]) -> None:
        """Queue the event; once its transaction is committed, on_done(STORED) (or DUPLICATE:
        its uid was already there; FAILED: not stored), called from the writer thread."""
        if not self._put(("event", event, on_done)):
            on_done(FAILED)

    def save_session(self, session: dict) -> None:
        self._put(("session", session, None))

    def prune(self, now: float | None = None, on_done: Callable[[int], None] | None = None) -> None:
        """Queue deletion of events and closed sessions older than the retention."""
        cutoff = (now or time.time()) - self.retention_days * 86400
        self._put(("prune", cutoff, on_done))

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far is written (tests, shutdown)."""
        done = threading.Event()
        self._push(("call", None, lambda _: done.set()))
        return done.wait(timeout)

    # --- the writer thread -----------------------------------------------------------
    def _run(self) -> None:
        stopping = False
        items, popleft = self._items, self._items.popleft
        while not stopping:
            if not items:
                self._wake.wait()
            self._wake.clear()     # before draining: an append after this sets it again
            batch = []
            while items and len(batch) < self.max_batch:
                batch.append(popleft())
            if not batch:
                continue
            if _STOP in batch:
                stopping = True
                batch = [b for b in batch if b is not _STOP]
            self._write(batch)

    def _write(self, batch: list) -> None:
        conn = self._conn
        events = [b for b in batch if b[0] == "event"]
        sessions: dict = {}
        for b in batch:
            if b[0] == "session":
                sessions[b[1]["id"]] = b[1]   # the latest state of each session wins
        prunes = [b for b in batch if b[0] == "prune"]
        durable = any(cb is not None for kind, _, cb in events)
        ok = True
        pruned = 0
        fresh: dict = {}
        if events or sessions or prunes:
            try:
                conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
                conn.execute("BEGIN IMMEDIATE")
                insert = "INSERT OR IGNORE INTO events(uid, time, kind, mac, ip, data) VALUES (?,?,?,?,?,?)"
                conn.executemany(insert, [_event_row(e) for _, e, cb in events if cb is None])
                for _, e, cb in events:
                    if cb is not None:   # a hook waits: tell it whether this was new
                        fresh[id(e)] = conn.execute(insert, _event_row(e)).rowcount == 1
                conn.executemany("INSERT OR REPLACE INTO sessions(id, mac, started, updated, state, closed, "
                                 "last_stage, diagnosis, arch, firmware, data) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                                 [_session_row(s) for s in sessions.values()])
                for _, cutoff, _ in prunes:
                    pruned += conn.execute("DELETE FROM events WHERE time < ?", (cutoff,)).rowcount
                    pruned += conn.execute("DELETE FROM sessions WHERE updated < ? AND closed = 1",
                                           (cutoff,)).rowcount
                conn.execute("COMMIT")
                self.written += len(events)
            except Exception:
                ok = False
                self.failed_batches += 1
                log.exception("event store: writing %d events failed", len(events))
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
        for kind, payload, cb in batch:
            if cb is None:
                continue
            if kind == "prune":
                result = pruned
            elif kind == "event":
                result = (STORED if fresh.get(id(payload)) else DUPLICATE) if ok else FAILED
            else:
                result = ok
            try:
                cb(result)
            except Exception:
                log.exception("event store callback failed")


class Reader:
    """Queries for the CLI and the HTTP API; its own read-only connection."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.conn = connect(path, readonly=True)
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(f"{path}: schema {version} is newer than this proxydhcp ({SCHEMA_VERSION})")

    def close(self) -> None:
        self.conn.close()

    def sessions(self, mac: str | None = None, failed: bool = False, limit: int = 50) -> list[dict]:
        """Newest first."""
        where, args = [], []
        if mac:
            where.append("mac = ?")
            args.append(mac)
        if failed:
            where.append("state = 'failed'")
        sql = "SELECT data FROM sessions" + (f" WHERE {' AND '.join(where)}" if where else "") + \
              " ORDER BY started DESC LIMIT ?"
        return [json.loads(r["data"]) for r in self.conn.execute(sql, (*args, limit))]

    def events(self, mac: str | None = None, kind: str | None = None, after_id: int = 0,
               since: float | None = None, limit: int = 1000) -> list[tuple[int, dict]]:
        """Oldest first, as (id, event)."""
        where, args = ["id > ?"], [after_id]
        if mac:
            where.append("mac = ?")
            args.append(mac)
        if kind:
            where.append("kind = ?")
            args.append(kind)
        if since is not None:
            where.append("time >= ?")
            args.append(since)
        sql = f"SELECT id, data FROM events WHERE {' AND '.join(where)} ORDER BY id LIMIT ?"
        return [(r["id"], json.loads(r["data"])) for r in self.conn.execute(sql, (*args, limit))]

    def last_event_id(self) -> int:
        return self.conn.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0]

    def open_sessions(self) -> list[dict]:
        return [json.loads(r["data"]) for r in
                self.conn.execute("SELECT data FROM sessions WHERE closed = 0 ORDER BY updated")]

    def uids(self) -> set[str]:
        return {r[0] for r in self.conn.execute("SELECT uid FROM events WHERE uid IS NOT NULL")}
