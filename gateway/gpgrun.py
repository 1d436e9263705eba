"""Running gpg on what came from outside: bounded in the bytes it may produce and the time it may take, and a
few calls at a time, off the event loop; with the errors a key or gpg itself can raise."""

from __future__ import annotations

import asyncio
import os
import selectors
import subprocess
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import IO, Any, TypeVar, cast

from gateway.errors import GatewayError

T = TypeVar("T")


# python-gnupg runs one gpg process per call; more than a few at once only queue on gpg-agent. A thread
# semaphore, not an asyncio one, because it must not belong to any one event loop.
_GPG_CALLS = threading.BoundedSemaphore(4)


class KeyProblem(GatewayError):
    """A key that cannot be used, or a keyring that cannot be opened."""


class GpgUnavailable(GatewayError):
    """gpg itself cannot be run: this machine's fault, never the sender's (so not a KeyProblem, which would make
    a genuine request look like an impostor's)."""


class GpgLimitExceeded(KeyProblem):
    """gpg was stopped: a message made it produce more than allowed, or take longer."""


# What gpg may make of one incoming message. A message is at most 10 MB (the inbound limit), so 25 MB of
# plaintext leaves room for base64 and ordinary compression; without a bound a compressed packet can turn a few
# MB of mail into gigabytes (a decompression bomb), all of it read into memory.
DECRYPT_MAX_BYTES = 25 * 1024 * 1024


GPG_TIMEOUT_SECONDS = 30.0


MAX_STATUS_BYTES = 1024 * 1024  # a few status lines per key and signature: more is somebody's doing


CHUNK = 64 * 1024


@dataclass(frozen=True)
class _Finished:
    output: bytes
    status: str  # gpg's status lines (--status-fd), on a pipe of their own: its messages on stderr are dropped
    returncode: int


class _Pump:
    """One running gpg and its four pipes: stdin fed, stdout, stderr and status read, all as they allow."""

    def __init__(self, process: subprocess.Popen[bytes], status: int, data: bytes, max_output: int, what: str):
        self.process = process
        # Started with all three as PIPE, so none is None.
        self.stdin = cast(IO[bytes], process.stdin)
        self.stdout = cast(IO[bytes], process.stdout)
        self.stderr = cast(IO[bytes], process.stderr)
        self.status_fd = status
        self.pending = memoryview(data)
        self.max_output = max_output
        self.what = what
        self.output: list[bytes] = []
        self.size = 0
        self.status = bytearray()

    def run(self, timeout: float) -> _Finished:
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(self.stdout.fileno(), selectors.EVENT_READ, self._output)
            selector.register(self.stderr.fileno(), selectors.EVENT_READ, lambda chunk: None)  # drained
            selector.register(self.status_fd, selectors.EVENT_READ, self._status)
            if self.pending:
                os.set_blocking(self.stdin.fileno(), False)
                selector.register(self.stdin.fileno(), selectors.EVENT_WRITE, None)
            else:
                self.stdin.close()
            reading = 3
            while reading:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise GpgLimitExceeded(f"gpg did not finish within {timeout:g} seconds")
                for key, _ in selector.select(remaining):
                    if key.data is None:
                        self._feed(selector, key.fd)
                        continue
                    chunk = os.read(key.fd, CHUNK)
                    if chunk:
                        key.data(chunk)
                    else:
                        selector.unregister(key.fd)
                        reading -= 1
        try:
            self.process.wait(max(deadline - time.monotonic(), 0.001))
        except subprocess.TimeoutExpired:
            raise GpgLimitExceeded(f"gpg did not finish within {timeout:g} seconds") from None
        return _Finished(b"".join(self.output), self.status.decode("utf-8", "replace"), self.process.returncode)

    def _feed(self, selector: selectors.BaseSelector, fd: int) -> None:
        try:
            self.pending = self.pending[os.write(fd, self.pending[:CHUNK]) :]
        except BlockingIOError:
            return
        except BrokenPipeError:  # gpg stopped reading; its status says why
            self.pending = self.pending[:0]
        if not self.pending:
            selector.unregister(fd)
            self.stdin.close()

    def _output(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.max_output:
            raise GpgLimitExceeded(f"{self.what} is larger than {self.max_output} bytes")
        self.output.append(chunk)

    def _status(self, chunk: bytes) -> None:
        self.status += chunk
        if len(self.status) > MAX_STATUS_BYTES:
            raise GpgLimitExceeded(f"gpg reported more than {MAX_STATUS_BYTES} bytes of status")

    def close(self) -> None:
        """Kill gpg if it still runs, reap it, close every pipe."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for stream in (self.stdin, self.stdout, self.stderr):
            with suppress(OSError):
                stream.close()
        os.close(self.status_fd)


def run_bounded(command: list[str], data: bytes, *, max_output: int, timeout: float, what: str) -> _Finished:
    """Run gpg on `data` (its stdin), reading its output, status and messages as they come.

    gpg is killed and GpgLimitExceeded raised once its output passes `max_output` bytes (`what` names that
    output in the error), its status passes MAX_STATUS_BYTES, or it has run `timeout` seconds. Every pipe is
    drained all along, so gpg never blocks on a full one, and the process is always reaped.
    """
    status_read, status_write = os.pipe()
    try:
        process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            [command[0], "--status-fd", str(status_write), *command[1:]],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(status_write,),
        )
    except OSError as exc:
        os.close(status_read)
        raise GpgUnavailable(f"cannot run {command[0]}: {exc.strerror or exc}") from None
    finally:
        os.close(status_write)
    pump = _Pump(process, status_read, data, max_output, what)
    try:
        return pump.run(timeout)
    finally:
        pump.close()


async def in_thread(call: Callable[..., T], *args: Any) -> T:
    """Run a blocking gpg call off the event loop, a few at a time."""

    def limited() -> T:
        with _GPG_CALLS:
            return call(*args)

    return await asyncio.to_thread(limited)
