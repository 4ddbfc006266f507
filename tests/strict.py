"""One rule for what a test needs but cannot find: a missing server, cluster or feature fails.

The README's test command is strict, so a server that cannot start never turns a run green.
A developer who wants a partial run opts in with `FERRY_TESTS_PARTIAL=1`: then such tests
skip, and the skip says why.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

PARTIAL_ENV = "FERRY_TESTS_PARTIAL"


def partial() -> bool:
    return os.environ.get(PARTIAL_ENV) == "1"


def unavailable(msg: str) -> NoReturn:
    """Fail the test (skip it only in an explicitly partial run)."""
    if partial():
        pytest.skip(f"{msg} ({PARTIAL_ENV}=1)")
    pytest.fail(f"{msg} (set {PARTIAL_ENV}=1 for a partial run that skips this)", pytrace=False)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """A strict run with a skipped test fails, whoever skipped it: nothing skips silently."""
    skipped = terminalreporter.stats.get("skipped", [])
    if partial() or not skipped:
        return
    terminalreporter.section("skipped in a strict run", sep="=", red=True)
    for report in skipped:
        terminalreporter.write_line(f"{report.nodeid}: {report.longrepr}")
    terminalreporter.write_line(f"(set {PARTIAL_ENV}=1 for a partial run that may skip)")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped and not partial() and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
