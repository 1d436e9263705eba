"""Running gpg on what came from outside: bounded in the bytes it may produce and the time it may take (the
runner in bounded.py), and a few calls at a time, off the event loop; with the errors a key or gpg itself can
raise."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from gateway import bounded
from gateway.bounded import Finished, LimitExceeded, ToolUnavailable
from gateway.errors import GatewayError

T = TypeVar("T")


# python-gnupg runs one gpg process per call; more than a few at once only queue on gpg-agent. A thread
# semaphore, not an asyncio one, because it must not belong to any one event loop.
_GPG_CALLS = threading.BoundedSemaphore(4)


class KeyProblem(GatewayError):
    """A key that cannot be used, or a keyring that cannot be opened."""


class GpgUnavailable(ToolUnavailable):
    """gpg itself cannot be run: this machine's fault, never the sender's (so not a KeyProblem, which would make
    a genuine request look like an impostor's)."""


class GpgLimitExceeded(KeyProblem, LimitExceeded):
    """gpg was stopped: a message made it produce more than allowed, or take longer."""


# What gpg may make of one incoming message. A message is at most 10 MB (the inbound limit), so 25 MB of
# plaintext leaves room for base64 and ordinary compression; without a bound a compressed packet can turn a few
# MB of mail into gigabytes (a decompression bomb), all of it read into memory.
DECRYPT_MAX_BYTES = 25 * 1024 * 1024


GPG_TIMEOUT_SECONDS = 30.0


def run_bounded(command: list[str], data: bytes, *, max_output: int, timeout: float, what: str) -> Finished:
    """Run gpg on `data` (its stdin), reading its output, status (--status-fd) and messages as they come.

    gpg is killed and GpgLimitExceeded raised once its output passes `max_output` bytes (`what` names that
    output in the error), its status passes MAX_STATUS_BYTES, or it has run `timeout` seconds (bounded.py).
    """
    return bounded.run_bounded(
        command, data, max_output=max_output, timeout=timeout, what=what, tool="gpg", status_option="--status-fd",
        limit_error=GpgLimitExceeded, unavailable_error=GpgUnavailable,
    )  # fmt: skip


async def in_thread(call: Callable[..., T], *args: Any) -> T:
    """Run a blocking gpg call off the event loop, a few at a time."""

    def limited() -> T:
        with _GPG_CALLS:
            return call(*args)

    return await asyncio.to_thread(limited)
