"""Registers the shared fixtures and hooks in tests/support/ for the whole suite."""

import pytest

# The helpers there assert as the tests do: rewritten, a failing assert shows its values, as it did in a test module.
pytest.register_assert_rewrite("tests.support")

pytest_plugins = [
    "tests.support.databases",
    "tests.support.keys",
    "tests.support.smime",
    "tests.support.smime_live",
    "tests.support.gateway_cli",
    "tests.support.fuzz_report",
    "tests.support.dovecot",
    "tests.support.live",
    "tests.support.mailbox",
    "tests.support.schedule",
    "tests.support.oauth",
]
