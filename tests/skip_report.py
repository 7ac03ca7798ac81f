"""No silent skip: what CI is, and the hooks that make a skipped test impossible to miss.

- CI is `CI=true` or `CI=1` (what GitHub Actions, GitLab and `.ci/run` set); any other value,
  `CI=false` included, is a developer's machine.
- In CI, a test that cannot run (PostgreSQL, Redis, nginx, Chromium or the JavaScript SDK
  missing) fails (`missing`), and a skipped test fails the run all the same, whatever skipped
  it: CI has everything installed.
- Elsewhere a test may skip for something the machine lacks, and the run ends with a banner
  saying how many tests skipped and why, so a green run that tested less is seen.

conftest.py imports the hooks; tests call `missing(reason)` instead of `pytest.skip`."""

from __future__ import annotations

import os
from collections import Counter

import pytest

_skipped: list[str] = []  # the reason of each test skipped in this run


def in_ci() -> bool:
    """Whether this run is CI's: `CI=true` or `CI=1`."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def missing(reason: str) -> None:
    """Skip on a developer's machine; in CI a test that cannot run is a failure."""
    if in_ci():
        pytest.fail(f"{reason} (CI is set, so this fails instead of skipping)", pytrace=False)
    pytest.skip(reason)


def _reason(report) -> str:
    if isinstance(report.longrepr, tuple) and len(report.longrepr) == 3:
        text = str(report.longrepr[2])
    else:
        text = str(report.longrepr)
    return text.removeprefix("Skipped: ")


def pytest_runtest_logreport(report) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        _skipped.append(_reason(report))


def pytest_sessionfinish(session, exitstatus) -> None:
    if in_ci() and _skipped and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if not _skipped:
        return
    write = terminalreporter
    write.section(f"{len(_skipped)} TEST{'S' if len(_skipped) > 1 else ''} SKIPPED: "
                  "NOT RUN HERE", sep="!", red=True, bold=True)
    for reason, count in Counter(_skipped).most_common():
        write.line(f"{count:6d} x {reason}", red=True)
    if in_ci():
        write.line("CI is set (CI=true): a skipped test fails the run.", red=True, bold=True)
    else:
        write.line("This run tested less than CI does: install what is named above (.ci/run "
                   "lists it), or run with CI=true to make each of these a failure.",
                   red=True, bold=True)
