"""Suite-wide pytest hooks.

Fuzz case counts: every Hypothesis test's number of generated cases (valid examples run,
and inputs the strategy rejected) is recorded from Hypothesis' own run statistics and
printed in the terminal summary, so `make test` shows how much fuzzing ran. Tests that fuzz
without Hypothesis (the live flood) add their own line with `record_fuzz_count`, and any
test may add figures to the summary with `record_report`.
"""

from __future__ import annotations

import pytest

FUZZ_COUNTS: dict[str, dict] = {}   # nodeid -> {"ran": n, "invalid": n}
REPORTS: list[str] = []              # figures a test wants shown even when its output is captured


def record_report(line: str) -> None:
    """A line for the terminal summary (the flood's packets by reason, for instance)."""
    REPORTS.append(line)


def record_fuzz_count(nodeid: str, ran: int, invalid: int = 0) -> None:
    FUZZ_COUNTS[nodeid] = {"ran": ran, "invalid": invalid}


def _cases(stats: dict) -> tuple[int, int]:
    ran = invalid = 0
    for key, phase in stats.items():
        if not (key.endswith("-phase") and isinstance(phase, dict)):
            continue
        for case in phase.get("test-cases", ()):
            if case.get("status") in ("valid", "interesting"):
                ran += 1
            else:
                invalid += 1
    return ran, invalid


@pytest.hookimpl(hookwrapper=True, trylast=True)
def pytest_runtest_call(item):
    from hypothesis.statistics import collector
    if not getattr(getattr(item, "obj", None), "is_hypothesis_test", False):
        yield
        return
    outer = collector.value     # the Hypothesis plugin's own (for --hypothesis-show-statistics)

    def note(stats):
        ran, invalid = _cases(stats)
        record_fuzz_count(item.nodeid, ran, invalid)
        if outer is not None:
            outer(stats)

    with collector.with_value(note):
        yield


def pytest_terminal_summary(terminalreporter):
    tr = terminalreporter
    if REPORTS:
        tr.section("figures")
        for line in REPORTS:
            tr.write_line(line)
    if not FUZZ_COUNTS:
        return
    tr.section("fuzz cases run")
    for nodeid, c in sorted(FUZZ_COUNTS.items()):
        extra = f" (+{c['invalid']} rejected inputs)" if c["invalid"] else ""
        tr.write_line(f"{c['ran']:>8}  {nodeid}{extra}")
    tr.write_line(f"{sum(c['ran'] for c in FUZZ_COUNTS.values()):>8}  in all, {len(FUZZ_COUNTS)} fuzz tests")
