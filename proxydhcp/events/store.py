"""The event store: every event and every boot session, in SQLite (WAL) under state.dir.

Owns the database file, its schema (version in PRAGMA user_version, migrations applied in
order at open) and the one writer: a child process (proxydhcp.events.writer) that turns
batches into JSON rows and SQLite transactions, so that this work never holds the daemon's
GIL while the reactor answers packets. Callers never touch the disk: `record()` and
`save_session()` only queue (the bus observer on the hot path costs a deque append);
`record_durable()` queues an event and calls back once its transaction is committed, which
is what a hook's acknowledgement waits for. Reads (`Reader`) use their own connection and
may run in any process (the CLI) while the daemon writes. Must not import Twisted.

Durability: WAL with synchronous=NORMAL survives a killed process; a batch that carries an
event a hook is waiting for is committed with synchronous=FULL (survives power loss too).
Hook events carry a `uid`: the same event delivered twice (socket, then spool) is kept once.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import marshal
import os
import sqlite3
import struct
import subprocess
import sys
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


# One encoder for every row (json.dumps with arguments builds a new one per call).
_to_json = json.JSONEncoder(default=str, separators=(",", ":")).encode


def _event_row(ev: dict) -> tuple:
    return (ev.get("uid"), float(ev.get("time") or time.time()), ev.get("kind") or "?", ev.get("mac"),
            ev.get("client_ip") or ev.get("ip"), _to_json(ev))


def _session_row(s: dict) -> tuple:
    diag = s.get("diagnosis") or {}
    return (s["id"], s["mac"], s["started"], s["updated"], s["state"], int(bool(s.get("closed"))),
            s.get("last_stage"), diag.get("code"), s.get("arch_label"), s.get("firmware"), _to_json(s))


# What record_durable's callback is told.
STORED, DUPLICATE, FAILED = "stored", "duplicate", "failed"

# Items the daemon sends the writer process, each (kind, payload, token): token is None or the
# number under which a callback waits for the item's result.
EVENT, SESSION, PRUNE, CALL, USER, STOP = "event", "session", "prune", "call", "user", "stop"
TICK, HOOKS = "tick", "hooks"     # for the writer's session tracker: the daemon's clock, hook events wanted
_FRAME = struct.Struct("!I")
COALESCE = 0.01     # seconds the pump waits after a wake-up, so that a burst leaves as one batch;
                    # an item somebody waits for (a hook's event, a flush, a stop) ends the wait


def write_batch(conn: sqlite3.Connection, batch: list) -> tuple[int, str | None, list]:
    """Write one batch in one transaction (the writer process's work, testable without it).
    Returns (events written, an error text or None, [(token, result)] for every item with a
    token: STORED/DUPLICATE/FAILED for an event, rows deleted for a prune, True/False else)."""
    events = [b for b in batch if b[0] == EVENT]
    sessions: dict = {}
    for b in batch:
        if b[0] == SESSION:
            sessions[b[1]["id"]] = b[1]   # the latest state of each session wins
    prunes = [b for b in batch if b[0] == PRUNE]
    durable = any(token is not None for _, _, token in events)
    error = None
    pruned = 0
    fresh: dict = {}
    if events or sessions or prunes:
        try:
            conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            conn.execute("BEGIN IMMEDIATE")
            insert = "INSERT OR IGNORE INTO events(uid, time, kind, mac, ip, data) VALUES (?,?,?,?,?,?)"
            conn.executemany(insert, [_event_row(e) for _, e, token in events if token is None])
            for _, e, token in events:
                if token is not None:   # a hook waits: tell it whether this was new
                    fresh[token] = conn.execute(insert, _event_row(e)).rowcount == 1
            conn.executemany("INSERT OR REPLACE INTO sessions(id, mac, started, updated, state, closed, "
                             "last_stage, diagnosis, arch, firmware, data) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                             [_session_row(s) for s in sessions.values()])
            for _, cutoff, _ in prunes:
                pruned += conn.execute("DELETE FROM events WHERE time < ?", (cutoff,)).rowcount
                pruned += conn.execute("DELETE FROM sessions WHERE updated < ? AND closed = 1",
                                       (cutoff,)).rowcount
            conn.execute("COMMIT")
        except Exception as exc:
            error = f"writing {len(events)} events and {len(sessions)} sessions failed: {exc!r}"
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
    results = []
    for kind, _payload, token in batch:
        if token is None:
            continue
        if kind == PRUNE:
            results.append((token, pruned))
        elif kind == EVENT:
            results.append((token, FAILED if error else STORED if fresh.get(token) else DUPLICATE))
        else:
            results.append((token, error is None))
    return (0 if error else len(events)), error, results


def _plain(item: tuple) -> tuple:
    """An item marshal cannot carry (a value that is not plain data) made plain, as the JSON
    column would store it."""
    kind, payload, token = item
    return kind, json.loads(json.dumps(payload, default=str)), token


def encode_frame(batch: list) -> bytes:
    try:
        body = marshal.dumps(batch)
    except ValueError:
        body = marshal.dumps([_plain(item) for item in batch])
    return _FRAME.pack(len(body)) + body


def read_frame(fd: int):
    """One frame's decoded body from a pipe, or None at its end."""
    head = _read_exactly(fd, _FRAME.size)
    if head is None:
        return None
    body = _read_exactly(fd, _FRAME.unpack(head)[0])
    return None if body is None else marshal.loads(body)


def _read_exactly(fd: int, n: int):
    chunks, left = [], n
    while left:
        chunk = os.read(fd, left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class EventStore:
    """The writing side. open() creates/migrates the file; start() runs the writer process
    (proxydhcp.events.writer: JSON and SQLite there, so the reactor never shares the GIL with
    them) and, here, a pump thread that sends it batches and a thread that reads its results."""

    def __init__(self, state_dir: str, retention_days: float = 30.0, max_queue: int = 100_000,
                 max_batch: int = 2000, tracker: dict | None = None,
                 on_summary: Callable[[dict], None] | None = None) -> None:
        """tracker: the boot-session tracker's settings (sessions.Tracker keywords) to run it
        in the writer process; on_summary(summary) is then called, from a store thread, with
        what each batch's session updates mean (sessions.summarise)."""
        self.state_dir = state_dir
        self.tracker = tracker
        self.on_summary = on_summary
        self.path = db_path(state_dir)
        self.retention_days = retention_days
        self.max_batch = max_batch
        # The reactor appends, the pump thread pops: a deque's append and popleft are atomic,
        # and the wake-up Event is set only when it is not already.
        self.max_queue = max_queue
        self._items: collections.deque = collections.deque()
        self._wake = threading.Event()
        self._urgent = threading.Event()   # an item somebody waits for is queued: no coalescing
        self._proc: subprocess.Popen | None = None
        self._pump_thread: threading.Thread | None = None
        self._results_thread: threading.Thread | None = None
        self._callbacks: dict[int, Callable] = {}     # token -> callback, until the writer answers
        self._tokens = itertools.count(1)
        self._user: tuple[int, int] | None = None
        self._hooks_on: list = []
        self._respawned_at = 0.0
        self.dropped = 0           # events refused because the queue was full
        self.written = 0
        self.failed_batches = 0

    def open(self) -> None:
        """Create the file and bring its schema up to date (here, so that an error stops the
        start with a clear message)."""
        try:
            os.makedirs(self.state_dir, exist_ok=True)
            conn = connect(self.path)
            try:
                migrate(conn)
            finally:
                conn.close()
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the event store {self.path}: {exc} "
                             f"(check state.dir and its permissions)") from None

    def start(self) -> None:
        self.open()
        self._spawn()
        self._pump_thread = threading.Thread(target=self._pump, name="event-store-pump", daemon=True)
        self._pump_thread.start()

    def _spawn(self) -> None:
        package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
        # The running interpreter itself: its path may not be reachable by this user (a venv
        # whose python links into root's home, when started unprivileged with capabilities).
        exe = sys.executable if os.access(sys.executable, os.X_OK) else "/proc/self/exe"
        try:
            args = [sys.executable, "-m", "proxydhcp.events.writer", self.path]
            if self.tracker is not None:
                args.append(json.dumps(self.tracker))
            self._proc = subprocess.Popen(args,
                                          executable=exe, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          env=env, close_fds=True, bufsize=0)
        except OSError as exc:
            raise StoreError(f"cannot start the event store's writer ({sys.executable}): {exc}") from None
        first = [(HOOKS, self._hooks_on, None)]
        if self._user is not None:   # a writer started after the privilege drop drops too
            first.append((USER, list(self._user), None))
        write_all(self._proc.stdin.fileno(), encode_frame(first))
        self._results_thread = threading.Thread(target=self._results, args=(self._proc,),
                                                name="event-store-results", daemon=True)
        self._results_thread.start()

    def drop_to(self, uid: int, gid: int) -> None:
        """The daemon drops root: the writer process becomes uid:gid too (in queue order)."""
        self._user = (uid, gid)
        self._push((USER, [uid, gid], None))

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop the threads and the writer process."""
        if self._pump_thread is not None:
            self._push((STOP, None, None))
            self._urgent.set()
            self._pump_thread.join(timeout)
            self._pump_thread = None
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                proc.stdin.close()
            except OSError:
                pass
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.error("event store: the writer did not finish within %.0f s: killed", timeout)
                proc.kill()
                proc.wait()
        if self._results_thread is not None:
            self._results_thread.join(timeout)
            self._results_thread = None
        self._fail_waiting()

    def pending(self) -> int:
        """Items queued for the writer and not yet sent to it."""
        return len(self._items)

    @property
    def writer_pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    # --- queueing (any thread, never blocks) -----------------------------------------
    def _push(self, item) -> None:
        self._items.append(item)
        if not self._wake.is_set():
            self._wake.set()

    def _put(self, kind: str, payload, callback: Callable | None) -> bool:
        if len(self._items) >= self.max_queue:
            self.dropped += 1
            return False
        token = None
        if callback is not None:
            token = next(self._tokens)
            self._callbacks[token] = callback
        self._push((kind, payload, token))
        if token is not None:
            self._urgent.set()   # a DHCP-server hook waits for this commit (and spools at 80 ms)
        return True

    def record(self, event: dict) -> None:
        """Bus observer: queue the event for the next batch."""
        self._put(EVENT, event, None)

    def record_durable(self, event: dict, on_done: Callable[[str], None]) -> None:
        """Queue the event; once its transaction is committed, on_done(STORED) (or DUPLICATE:
        its uid was already there; FAILED: not stored), called from a store thread."""
        if not self._put(EVENT, event, on_done):
            on_done(FAILED)

    def save_session(self, session: dict) -> None:
        self._put(SESSION, session, None)

    def prune(self, now: float | None = None, on_done: Callable[[int], None] | None = None) -> None:
        """Queue deletion of events and closed sessions older than the retention."""
        cutoff = (now or time.time()) - self.retention_days * 86400
        self._put(PRUNE, cutoff, on_done)

    def tick(self, now: float) -> None:
        """The session tracker's clock: close what stalled by `now`, forget what is old."""
        self._push((TICK, now, None))

    def hooks(self, events) -> None:
        """The user-hook events (sessions.SESSION_SUCCEEDED ...) whose payloads summaries
        should carry: those the configured hooks are mapped to, none without hooks."""
        wanted = sorted(events or ())
        if wanted != self._hooks_on:
            self._hooks_on = wanted
            self._push((HOOKS, wanted, None))

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far is written (tests, shutdown)."""
        done = threading.Event()
        token = next(self._tokens)
        self._callbacks[token] = lambda _: done.set()
        self._push((CALL, None, token))
        self._urgent.set()
        return done.wait(timeout)

    # --- the pump thread: batches to the writer ----------------------------------------
    def _pump(self) -> None:
        items, popleft = self._items, self._items.popleft
        stopping = False
        while not stopping:
            if not items:
                self._wake.wait()
            self._wake.clear()     # before draining: an append after this sets it again
            self._urgent.wait(COALESCE)   # a burst gathers into one batch, unless somebody waits
            self._urgent.clear()
            while items:
                batch = []
                while items and len(batch) < self.max_batch:
                    batch.append(popleft())
                if any(b[0] == STOP for b in batch):
                    stopping = True
                    batch = [b for b in batch if b[0] != STOP]
                if batch:
                    self._send(batch)

    def _send(self, batch: list) -> None:
        for attempt in (1, 2):
            proc = self._proc
            try:
                if proc is None:
                    raise BrokenPipeError("no writer process")
                write_all(proc.stdin.fileno(), encode_frame(batch))
                return
            except (OSError, ValueError) as exc:
                if attempt == 2 or not self._respawn(exc):
                    break
        self.failed_batches += 1
        for _kind, _payload, token in batch:    # the lost batch: whoever waits is told
            self._answer(token, FAILED if _kind == EVENT else 0 if _kind == PRUNE else False)

    def _respawn(self, why) -> bool:
        """The writer died (it should not): start another, at most every 10 s."""
        now = time.monotonic()
        if now - self._respawned_at < 10.0:
            return False
        self._respawned_at = now
        log.error("event store: the writer process is gone (%s): starting a new one", why)
        try:
            self._spawn()
        except StoreError as exc:
            log.error("%s", exc)
            return False
        return True

    # --- the results thread: what the writer answered --------------------------------
    def _results(self, proc: subprocess.Popen) -> None:
        fd = proc.stdout.fileno()
        while True:
            try:
                frame = read_frame(fd)
            except (OSError, ValueError, EOFError, TypeError):
                frame = None
            if frame is None:
                break
            written, error, results = frame[:3]
            self.written += written
            if error:
                self.failed_batches += 1
                log.error("event store: %s", error)
            summary = frame[3] if len(frame) > 3 else None
            if summary and self.on_summary is not None:
                try:
                    self.on_summary(summary)
                except Exception:
                    log.exception("event store: the session summary could not be handed over")
            for token, result in results:
                self._answer(token, result)
        try:
            proc.stdout.close()
        except OSError:
            pass

    def _answer(self, token, result) -> None:
        cb = self._callbacks.pop(token, None) if token is not None else None
        if cb is None:
            return
        try:
            cb(result)
        except Exception:
            log.exception("event store callback failed")

    def _fail_waiting(self) -> None:
        for token in list(self._callbacks):
            self._answer(token, FAILED)


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
