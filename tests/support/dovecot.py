"""The Dovecot fixture: a fresh private IMAP server (gateway/dev/dovecot.py) for one test, or a skip without Dovecot."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from gateway.dev.dovecot import DovecotUnavailable, ImapServer, start_dovecot

REQUIRE_DOVECOT_ENV = "GATEWAY_TEST_REQUIRE_DOVECOT"


@pytest.fixture
def dovecot_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImapServer]:
    """A fresh Dovecot for one test; skipped (failed if GATEWAY_TEST_REQUIRE_DOVECOT is set) without Dovecot."""
    # mktemp, not tmp_path: tmp_path carries the test's name, which can push socket paths past their limit.
    directory = tmp_path_factory.mktemp("dovecot")
    try:
        server = start_dovecot(directory)
    except DovecotUnavailable as exc:
        if os.environ.get(REQUIRE_DOVECOT_ENV):
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    try:
        yield server
    finally:
        server.stop()
