"""e2e: print every firmware boot's elapsed time at the end of the run (also under -q)."""

from __future__ import annotations

import os

from tests.e2e.firmware_lab import BOOT_TIMES


def pytest_terminal_summary(terminalreporter):
    if not BOOT_TIMES:
        return
    tr = terminalreporter
    tr.section("firmware boots through proxydhcp (QEMU TCG start -> boot script marker on serial)")
    lines = []
    for label, kind, seconds, ok in BOOT_TIMES:
        took = f"{seconds:6.1f} s" if seconds is not None else "  no boot"
        lines.append(f"{label:<34} {kind:<13} {took}  {'booted' if ok else 'FAILED'}")
    for line in lines:
        tr.write_line(line)
    path = os.environ.get("PROXYDHCP_E2E_TIMES")
    if path:
        with open(path, "a") as fh:
            fh.write("\n".join(lines) + "\n")
