"""Running a tool (gpg, openssl) on what came from outside, bounded in the bytes it may produce and the time it
may take, with every pipe drained all along and the process always reaped."""

from __future__ import annotations

import os
import selectors
import subprocess
import time
from contextlib import suppress
from dataclasses import dataclass
from typing import IO, cast

from gateway.errors import GatewayError


class LimitExceeded(GatewayError):
    """A tool was stopped: what it was given made it produce more than allowed, or take longer."""


class ToolUnavailable(GatewayError):
    """A tool cannot be run at all: this machine's fault, never the sender's."""


MAX_STATUS_BYTES = 1024 * 1024  # a few status lines per key and signature: more is somebody's doing


CHUNK = 64 * 1024


@dataclass(frozen=True)
class Finished:
    output: bytes
    # gpg's status lines (--status-fd), on a pipe of their own, its messages on stderr dropped; for a tool with
    # no status channel (openssl), what it wrote on stderr.
    status: str
    returncode: int


@dataclass(frozen=True)
class _Limits:
    max_output: int
    what: str  # names the output in an error: "the decrypted message is larger than ..."
    tool: str  # names the tool in an error: "gpg did not finish within ..."
    error: type[LimitExceeded]


class _Pump:
    """One running tool and its pipes: stdin fed, stdout, stderr and status read, all as they allow."""

    def __init__(self, process: subprocess.Popen[bytes], status: int | None, data: bytes, limits: _Limits):
        self.process = process
        # Started with all three as PIPE, so none is None.
        self.stdin = cast(IO[bytes], process.stdin)
        self.stdout = cast(IO[bytes], process.stdout)
        self.stderr = cast(IO[bytes], process.stderr)
        self.status_fd = status
        self.pending = memoryview(data)
        self.limits = limits
        self.output: list[bytes] = []
        self.size = 0
        self.status = bytearray()

    def run(self, timeout: float) -> Finished:
        limits = self.limits
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(self.stdout.fileno(), selectors.EVENT_READ, self._output)
            if self.status_fd is None:
                selector.register(self.stderr.fileno(), selectors.EVENT_READ, self._status)
            else:
                selector.register(self.stderr.fileno(), selectors.EVENT_READ, lambda chunk: None)  # drained
                selector.register(self.status_fd, selectors.EVENT_READ, self._status)
            if self.pending:
                os.set_blocking(self.stdin.fileno(), False)
                selector.register(self.stdin.fileno(), selectors.EVENT_WRITE, None)
            else:
                self.stdin.close()
            reading = 2 if self.status_fd is None else 3
            while reading:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise limits.error(f"{limits.tool} did not finish within {timeout:g} seconds")
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
            raise limits.error(f"{limits.tool} did not finish within {timeout:g} seconds") from None
        return Finished(b"".join(self.output), self.status.decode("utf-8", "replace"), self.process.returncode)

    def _feed(self, selector: selectors.BaseSelector, fd: int) -> None:
        try:
            self.pending = self.pending[os.write(fd, self.pending[:CHUNK]) :]
        except BlockingIOError:
            return
        except BrokenPipeError:  # the tool stopped reading; its status says why
            self.pending = self.pending[:0]
        if not self.pending:
            selector.unregister(fd)
            self.stdin.close()

    def _output(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limits.max_output:
            raise self.limits.error(f"{self.limits.what} is larger than {self.limits.max_output} bytes")
        self.output.append(chunk)

    def _status(self, chunk: bytes) -> None:
        self.status += chunk
        if len(self.status) > MAX_STATUS_BYTES:
            raise self.limits.error(f"{self.limits.tool} reported more than {MAX_STATUS_BYTES} bytes of status")

    def close(self) -> None:
        """Kill the tool if it still runs, reap it, close every pipe."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for stream in (self.stdin, self.stdout, self.stderr):
            with suppress(OSError):
                stream.close()
        if self.status_fd is not None:
            os.close(self.status_fd)


def run_bounded(
    command: list[str],
    data: bytes,
    *,
    max_output: int,
    timeout: float,
    what: str,
    tool: str,
    status_option: str | None = None,
    limit_error: type[LimitExceeded] = LimitExceeded,
    unavailable_error: type[ToolUnavailable] = ToolUnavailable,
) -> Finished:
    """Run `command` on `data` (its stdin), reading its output, status and messages as they come.

    With `status_option` (gpg's "--status-fd"), the tool gets a pipe of its own for status, named by that option
    right after the program; without, its stderr is the status. The tool is killed and `limit_error` raised once
    its output passes `max_output` bytes (`what` names that output in the error), its status passes
    MAX_STATUS_BYTES, or it has run `timeout` seconds; `unavailable_error` when it cannot be started. Every pipe
    is drained all along, so the tool never blocks on a full one, and the process is always reaped.
    """
    status_read: int | None = None
    argv = command
    pass_fds: tuple[int, ...] = ()
    if status_option is not None:
        status_read, status_write = os.pipe()
        argv = [command[0], status_option, str(status_write), *command[1:]]
        pass_fds = (status_write,)
    try:
        process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=pass_fds
        )
    except OSError as exc:
        if status_read is not None:
            os.close(status_read)
        raise unavailable_error(f"cannot run {command[0]}: {exc.strerror or exc}") from None
    finally:
        for fd in pass_fds:
            os.close(fd)
    pump = _Pump(process, status_read, data, _Limits(max_output, what, tool, limit_error))
    try:
        return pump.run(timeout)
    finally:
        pump.close()
