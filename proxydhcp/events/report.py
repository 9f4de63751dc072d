"""`proxydhcp sessions` and `proxydhcp events`: reading the event store for people.

Owns the text and JSON shapes of those two commands. Reads the store file directly
(read-only, while the daemon writes) and never talks to the daemon.
"""

from __future__ import annotations

import json
import sys
import time

from proxydhcp.events.store import Reader, StoreError, db_path


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _mac(text: str | None) -> str | None:
    if text is None:
        return None
    parts = text.strip().lower().replace("-", ":").split(":")
    if len(parts) != 6:
        raise SystemExit(f"proxydhcp: not a MAC address: {text!r}")
    return ":".join(p.zfill(2) for p in parts)


def format_session(s: dict, timeline: bool) -> list[str]:
    state = s["state"] + ("" if s.get("closed") or s["state"] != "open" else " (in progress)")
    lease = s.get("lease") or {}
    head = (f"{s['mac']}  {state:<10} {s.get('arch_label', '?'):<10} {s.get('firmware') or '-':<10} "
            f"{_when(s['started'])}  {s.get('duration', 0):7.1f} s  last stage: {s.get('last_stage') or '-'}")
    if lease.get("ip"):
        head += f"  lease: {lease['ip']}" + (f" ({lease['hostname']})" if lease.get("hostname") else "") + \
            f" via {lease.get('source')}"
    out = [head]
    if timeline:
        for entry in s.get("timeline", []):
            stage = entry.get("stage") or ""
            out.append(f"    +{entry['time'] - s['started']:8.3f} s  {stage:<18} {entry['text']}")
    diag = s.get("diagnosis")
    if diag:
        out.append(f"    diagnosis: {diag['code']}: {diag['summary']}")
        out.append(f"    try: {diag['advice']}")
    return out


def _reader(args) -> Reader:
    path = args.db
    if path is None:
        from proxydhcp import config
        path = db_path(config.load(args.config).state.dir)
    try:
        return Reader(path)
    except StoreError as exc:
        raise SystemExit(f"proxydhcp: {exc}") from None


def cmd_sessions(args) -> int:
    r = _reader(args)
    mac = _mac(args.mac)
    rows = r.sessions(mac=mac, failed=args.failed, limit=args.limit)
    if args.json:
        json.dump(rows, sys.stdout, indent=2, default=str)
        print()
        return 0
    if not rows:
        print("no boot sessions" + (f" for {mac}" if mac else "") + (" that failed" if args.failed else ""))
        return 0
    for s in rows:
        print("\n".join(format_session(s, timeline=bool(mac) or args.timeline)))
    return 0


def cmd_events(args) -> int:
    r = _reader(args)
    mac = _mac(args.mac)
    last = 0
    if args.follow and not args.all:
        last = max(0, r.last_event_id() - args.limit)
    while True:
        rows = r.events(mac=mac, kind=args.kind, after_id=last, limit=args.limit if not args.follow else 10000)
        for rid, ev in rows:
            last = rid
            if args.json:
                print(json.dumps(ev, default=str), flush=True)
            else:
                rest = " ".join(f"{k}={v}" for k, v in ev.items() if k not in ("kind", "time", "mac", "uid")
                                and v not in (None, "", []))
                print(f"{_when(ev['time'])} {ev['kind']:<14} {ev.get('mac') or '-':<17} {rest}", flush=True)
        if not args.follow:
            return 0
        time.sleep(0.5)


def add_parsers(sub) -> None:
    s = sub.add_parser("sessions", help="boot sessions: timelines, stages and diagnoses (from the event store)")
    s.add_argument("-c", "--config", help="YAML config file (for state.dir)")
    s.add_argument("--db", help="the event store file (default: <state.dir>/events.sqlite)")
    s.add_argument("--mac", help="only this machine, with its timeline")
    s.add_argument("--failed", action="store_true", help="only failed sessions")
    s.add_argument("--timeline", action="store_true", help="print every session's timeline")
    s.add_argument("--json", action="store_true", help="JSON instead of text")
    s.add_argument("--limit", type=int, default=50, help="newest N sessions (default 50)")
    s.set_defaults(func=cmd_sessions)
    s = sub.add_parser("events", help="raw events from the event store (--follow to stream)")
    s.add_argument("-c", "--config", help="YAML config file (for state.dir)")
    s.add_argument("--db", help="the event store file (default: <state.dir>/events.sqlite)")
    s.add_argument("--mac", help="only events naming this MAC")
    s.add_argument("--kind", help="only this kind (dhcp.reply, dhcp.silence, tftp.transfer, http.fetch, lease)")
    s.add_argument("-f", "--follow", action="store_true", help="keep printing new events")
    s.add_argument("--all", action="store_true", help="with --follow: start from the oldest event")
    s.add_argument("--json", action="store_true", help="one JSON object per line")
    s.add_argument("--limit", type=int, default=1000, help="at most N events (default 1000)")
    s.set_defaults(func=cmd_events)
