"""Registers the shared fixtures and hooks in tests/support/ for the whole suite."""

pytest_plugins = [
    "tests.support.databases",
    "tests.support.keys",
    "tests.support.gateway_cli",
    "tests.support.fuzz_report",
]
