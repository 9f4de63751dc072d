"""The event store's writer process: `python -m proxydhcp.events.writer DATABASE`.

Started by proxydhcp.events.store.EventStore, never by hand. Reads batches (marshal frames)
on stdin, writes each in one SQLite transaction (store.write_batch) and answers on stdout
with (events written, error or None, [(token, result)]). A USER item makes it drop root as
the daemon does; it ignores SIGINT, SIGTERM and SIGHUP (a terminal's Ctrl-C and systemd's
stop reach the whole process group: the daemon then sends what is left and closes stdin),
and it ends at a STOP item or at the end of stdin, after writing what it read.
"""

from __future__ import annotations

import os
import signal
import sys

from proxydhcp.events import store


def drop_to(uid: int, gid: int) -> None:
    if os.getuid() == uid and os.getgid() == gid:
        return
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)


def main(argv: list[str]) -> int:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    if len(argv) != 2:
        print("usage: python -m proxydhcp.events.writer DATABASE (started by the daemon)", file=sys.stderr)
        return 2
    conn = store.connect(argv[1])
    inp, out = sys.stdin.fileno(), sys.stdout.fileno()
    while True:
        batch = store.read_frame(inp)
        if batch is None:
            break
        for kind, payload, _token in batch:
            if kind == store.USER:
                drop_to(*payload)
        written, error, results = store.write_batch(conn, batch)
        try:
            store.write_all(out, store.encode_frame((written, error, results)))
        except BrokenPipeError:
            break
    conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
