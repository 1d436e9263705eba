"""A server run in the foreground as the test's child, in a session of its own: started until it answers, and
stopped with every process it forked, so that nothing outlives the test (the tests' servers: Postfix, Rspamd, DNS)."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.dev.dovecot import HOST, STOP_TIMEOUT, accepts, find_binary, free_port, greets, stop_group

# The servers' harnesses import these from here.
__all__ = ["HOST", "STOP_TIMEOUT", "accepts", "binary", "free_port", "greets"]

START_TIMEOUT = 30.0
# Postfix, Rspamd and the DNS server come together as "the border"; scripts/test installs them (Debian packages).
REQUIRE_BORDER_ENV = "GATEWAY_TEST_REQUIRE_BORDER"


class ServerUnavailable(RuntimeError):
    """A server's program is not installed, or cannot run here: callers skip (or fail, when it is required)."""


def skip_unavailable(reason: str) -> None:
    """Skip the test for `reason`; fail it instead when GATEWAY_TEST_REQUIRE_BORDER is set (as in CI)."""
    if os.environ.get(REQUIRE_BORDER_ENV):
        pytest.fail(reason)
    pytest.skip(reason)


def binary(name: str, *fallbacks: str, hint: str) -> str:
    """The program's path (Debian keeps servers in /usr/sbin, which a non-root PATH often lacks)."""
    found = find_binary(name, *fallbacks)
    if found is None:
        raise ServerUnavailable(f"{name} is not installed: {hint}")
    return found


def private_directory(prefix: str) -> Path:
    """A new folder under the system's temporary folder that the servers' own users can reach (0711 root),
    unlike pytest's 0700 ones: Postfix, Rspamd and Dovecot drop root for users of their own. Remove it with
    shutil.rmtree when the servers in it have stopped."""
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    directory.chmod(0o711)
    return directory


@dataclass
class Foreground:
    """One server process, its output in `log`; `what` names it in errors."""

    what: str
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self, argv: Sequence[str], ready: Callable[[], bool], *, env: dict[str, str] | None = None) -> None:
        """Start `argv` and wait until `ready()`; on failure, stop what started and raise with its words."""
        with self.log.open("ab") as sink:
            # A session of its own: a terminal's signals are for pytest, and stop() signals the whole group.
            self.popen = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=sink, stderr=sink, start_new_session=True, env=env
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not ready():
            if self.popen.poll() is not None:
                status = self.popen.returncode
                self.stop()
                raise RuntimeError(f"{self.what} exited with status {status} on start: {self.said()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.what} did not become ready in {START_TIMEOUT:.0f} s: {self.said()}")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM to the process group, SIGKILL to what is left of it; the leader is reaped."""
        popen, self.popen = self.popen, None
        if popen is not None:
            stop_group(popen)

    def said(self, limit: int = 3000) -> str:
        """The end of the server's log, for a person reading a failure."""
        text = self.log.read_text(errors="replace").strip() if self.log.exists() else ""
        return text[-limit:] or "no output"
