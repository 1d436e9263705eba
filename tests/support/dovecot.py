"""The Dovecot fixture: a fresh private IMAP server (gateway/dev/dovecot.py) for one test, or a skip without Dovecot."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.dev.dovecot import DovecotUnavailable, ImapServer, OAuth2Passdb, start_dovecot

REQUIRE_DOVECOT_ENV = "GATEWAY_TEST_REQUIRE_DOVECOT"


@contextlib.contextmanager
def running_dovecot(directory: Path, *, oauth2: OAuth2Passdb | None = None, sasl: bool = False) -> Iterator[ImapServer]:
    """A private Dovecot in `directory` for the block, stopped after it; the test skipped (failed if
    GATEWAY_TEST_REQUIRE_DOVECOT is set) when Dovecot is not installed."""
    try:
        server = start_dovecot(directory, oauth2=oauth2, sasl=sasl)
    except DovecotUnavailable as exc:
        if os.environ.get(REQUIRE_DOVECOT_ENV):
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def dovecot_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImapServer]:
    """A fresh Dovecot for one test."""
    # mktemp, not tmp_path: tmp_path carries the test's name, which can push socket paths past their limit.
    with running_dovecot(tmp_path_factory.mktemp("dovecot")) as server:
        yield server
