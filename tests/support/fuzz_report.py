"""The hostile-mail fuzzer's counts, gathered from every worker and printed in the terminal summary."""

from __future__ import annotations

from typing import Any

import pytest

_FUZZ_LINES: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """The fuzzer's counts travel as a user property, so they reach this process from xdist workers too."""
    if report.when == "call":
        _FUZZ_LINES.extend(str(value) for key, value in report.user_properties if key == "fuzz_summary")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _FUZZ_LINES:
        terminalreporter.write_sep("-", "hostile-mail fuzzer")
        for line in _FUZZ_LINES:
            terminalreporter.write_line(line)
