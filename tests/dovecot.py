"""A stand-in for bench/run.py only, until bench/ stops importing the tests: Dovecot now lives in tests/support/."""

from tests.support.dovecot import ImapServer, start_dovecot

__all__ = ["ImapServer", "start_dovecot"]
