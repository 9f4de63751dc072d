"""Shared part of the DHCP-server hooks: one event format, delivery to the daemon, the spool.

Stdlib only and imported by the three small executables beside it (dnsmasq-hook,
isc-dhcpd-hook, kea-hook), which run once per lease event: keep imports few, start fast.

Delivery: one JSON line per event to the daemon's unix socket; the daemon answers one line
per event, "ok" once the event is committed to its store, "reject <why>" when the event is
unusable (not retried), "retry <why>" when it cannot store it now. Anything not acknowledged
in PROXYDHCP_HOOK_TIMEOUT seconds (default 0.08) is written to the spool directory, which
the daemon takes in at start and every few seconds. Events carry a random uid, so one that
was both stored and spooled (the daemon died before answering) is kept once.

The DHCP server must never fail or wait because of us: main() always exits 0 and reports
misuse and failures on stderr (which the servers log).

Settings (environment): PROXYDHCP_SOCKET (default /var/lib/proxydhcp/hook.sock),
PROXYDHCP_SPOOL (default /var/lib/proxydhcp/spool), PROXYDHCP_HOOK_TIMEOUT.
Kea passes no environment of its own to the script: point it at a wrapper that exports
these when the daemon's state.dir is not the default.
"""

import json
import os
import socket
import sys
import time

VERSION = 1
DEFAULT_SOCKET = "/var/lib/proxydhcp/hook.sock"
DEFAULT_SPOOL = "/var/lib/proxydhcp/spool"
LEASE_ACTIONS = ("commit", "renew", "release", "expire", "decline", "recover")


class Misuse(Exception):
    """The hook was called in a way its server never calls it: say how it should be."""


def norm_mac(raw):
    """'0:1b:2:..' / 'AA-BB-..' / '1:aa:..' (ISC hardware with its type) -> 'aa:bb:..', else None."""
    if not raw:
        return None
    parts = raw.strip().lower().replace("-", ":").split(":")
    if len(parts) == 7 and parts[0] in ("1", "01"):
        parts = parts[1:]
    if len(parts) != 6:
        return None
    try:
        octets = [int(p, 16) for p in parts]
    except ValueError:
        return None
    if any(len(p) > 2 or p == "" for p in parts) or any(o > 255 for o in octets):
        return None
    return ":".join("%02x" % o for o in octets)


def is_ipv4(text):
    try:
        socket.inet_pton(socket.AF_INET, text)
        return True
    except (OSError, TypeError):
        return False


def to_int(text):
    try:
        return int(text)
    except (TypeError, ValueError):
        return None


def new_event(kind, source, **fields):
    ev = {"v": VERSION, "uid": os.urandom(12).hex(), "kind": kind, "time": time.time(), "source": source}
    ev.update({k: v for k, v in fields.items() if v not in (None, "", [])})
    return ev


def _spool(events, spool_dir):
    for ev in events:
        name = "%d-%s.json" % (time.time_ns(), ev["uid"])
        tmp = os.path.join(spool_dir, "." + name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, json.dumps(ev).encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, os.path.join(spool_dir, name))


def deliver(events, prog):
    """Hand events to the daemon, or spool them. Returns how many were spooled."""
    if not events:
        return 0
    path = os.environ.get("PROXYDHCP_SOCKET") or DEFAULT_SOCKET
    timeout = float(os.environ.get("PROXYDHCP_HOOK_TIMEOUT") or 0.08)
    pending = list(events)
    why = None
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        deadline = time.monotonic() + timeout
        s.connect(path)
        s.sendall(b"".join(json.dumps(ev, separators=(",", ":")).encode() + b"\n" for ev in events))
        buf = b""
        while pending:
            s.settimeout(max(deadline - time.monotonic(), 0.001))
            chunk = s.recv(4096)
            if not chunk:
                why = "the daemon closed the connection"
                break
            buf += chunk
            while b"\n" in buf and pending:
                line, buf = buf.split(b"\n", 1)
                answer = line.decode("utf-8", "replace")
                ev = pending.pop(0)
                if answer.startswith("reject"):
                    print("%s: the daemon rejected event %s: %s" % (prog, ev["uid"], answer), file=sys.stderr)
                elif not answer.startswith("ok"):
                    pending.insert(0, ev)
                    why = answer
                    break
            if why:
                break
        s.close()
    except socket.timeout:
        why = "no answer from %s within %.0f ms" % (path, timeout * 1000)
    except OSError as exc:
        why = "cannot reach the daemon at %s: %s" % (path, exc.strerror or exc)
    if not pending:
        return 0
    spool_dir = os.environ.get("PROXYDHCP_SPOOL") or DEFAULT_SPOOL
    try:
        _spool(pending, spool_dir)
    except OSError as exc:
        print("%s: %s, and cannot spool to %s (%s): %d event(s) lost"
              % (prog, why, spool_dir, exc.strerror or exc, len(pending)), file=sys.stderr)
        return 0
    print("%s: %s; spooled %d event(s) to %s" % (prog, why, len(pending), spool_dir), file=sys.stderr)
    return len(pending)


def main(prog, parse, usage):
    """Run one hook: parse(argv, env) -> list of events (or raise Misuse). Always exit 0."""
    argv = sys.argv[1:]
    if argv[:1] in (["-h"], ["--help"]):
        print(usage)
        return 0
    try:
        events = parse(argv, os.environ)
    except Misuse as exc:
        print("%s: %s\nusage: %s" % (prog, exc, usage), file=sys.stderr)
        return 0
    except Exception as exc:  # a bug here must still not fail the DHCP server
        print("%s: internal error on %r: %r" % (prog, argv, exc), file=sys.stderr)
        return 0
    try:
        deliver(events, prog)
    except Exception as exc:
        print("%s: internal error delivering: %r" % (prog, exc), file=sys.stderr)
    return 0


def run(prog, parse, usage):
    try:
        code = main(prog, parse, usage)
    except BaseException:
        code = 0
    sys.exit(code)
