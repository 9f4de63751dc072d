"""Logging setup: one line per record, text or JSON, journald-friendly.

- text: `2026-01-01 12:00:00,000 INFO proxydhcp.tftp: message`; a traceback or a message with
  newlines stays on its line (newlines shown as ` | `).
- text under journald (stderr is the journal stream named by $JOURNAL_STREAM): no timestamp
  (the journal adds its own) and a syslog `<N>` priority prefix, so `journalctl -p warning`
  works: `<4>proxydhcp.dhcp: message`.
- json: one object per line: time, level, logger, message, and the event's fields for
  event lines (and `exception` for a traceback).
- Boot events (proxydhcp.events kinds) are logged one line each by logger `proxydhcp.event`
  when log.events is true: `event tftp_transfer client=... outcome=ok` in text, the
  event's fields as keys in JSON.
- During start-up records are held; a failed start prints only its one error line.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

EVENT_LOGGER = "proxydhcp.event"
_SYSLOG = ((logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))   # else 7 (debug)


def stderr_is_journal(env=os.environ, fd: int = 2) -> bool:
    """True when fd is the journal stream systemd named in JOURNAL_STREAM (device:inode)."""
    value = env.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def syslog_priority(levelno: int) -> int:
    for level, prio in _SYSLOG:
        if levelno >= level:
            return prio
    return 7


def _event_text(fields: dict) -> str:
    kind = fields.get("kind", "?")
    rest = " ".join(f"{k}={_value(v)}" for k, v in fields.items() if k not in ("kind",) and v is not None)
    return f"event {kind} {rest}".rstrip()


def _value(v) -> str:
    s = v if isinstance(v, str) else json.dumps(v, default=str, separators=(",", ":"))
    return json.dumps(s) if (not s or any(c in s for c in ' "=\n')) else s


class TextFormatter(logging.Formatter):
    """One line per record; journal=True: `<N>logger: message`, no timestamp."""

    def __init__(self, journal: bool = False) -> None:
        super().__init__("%(name)s: %(message)s" if journal else "%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record).replace("\r", "").replace("\n", " | ")
        if self.journal:
            line = f"<{syslog_priority(record.levelno)}>{line}"
        return line


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                       + f".{int(record.msecs):03d}Z",
               "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        fields = getattr(record, "fields", None)
        if fields:
            for key, value in fields.items():
                out.setdefault(key, value)      # an event field never hides the four above
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, separators=(",", ":"))


class _Held(logging.Handler):
    """Holds records during start-up; release() passes them on (or drops them)."""

    def __init__(self, target: logging.Handler) -> None:
        super().__init__()
        self.target = target
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def setup(level: str = "info", fmt: str = "text", hold: bool = False) -> None:
    """Log to stderr. hold=True: keep records until release() (a failed start prints one line)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(TextFormatter(journal=stderr_is_journal()))
    root = logging.getLogger()
    root.handlers[:] = [_Held(handler) if hold else handler]
    root.setLevel(level.upper())
    logging.getLogger("pyroute2").setLevel(logging.WARNING)  # its debug dumps every netlink message


def release(emit: bool = True) -> None:
    """End start-up holding: write the held records (emit=False: drop them)."""
    root = logging.getLogger()
    for i, h in enumerate(root.handlers):
        if isinstance(h, _Held):
            root.handlers[i] = h.target
            if emit:
                for record in h.records:
                    h.target.handle(record)


def event_logger(enabled):
    """A bus observer logging each event as one INFO line (enabled(): log.events now)."""
    logger = logging.getLogger(EVENT_LOGGER)

    def observe(event: dict) -> None:
        if not enabled() or not logger.isEnabledFor(logging.INFO):
            return
        logger.info("%s", _LazyEvent(event), extra={"fields": event})
    return observe


class _LazyEvent:
    __slots__ = ("event",)

    def __init__(self, event: dict) -> None:
        self.event = event

    def __str__(self) -> str:
        return _event_text(self.event)
