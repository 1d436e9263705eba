"""`gateway run` in a process of its own: its settings for a test Dovecot and relay, its start awaited, its URLs."""

from __future__ import annotations

import asyncio
import sys
import urllib.error
import urllib.request

from gateway.dev.dovecot import ImapServer
from tests.support.gateway_cli import Gateway


def daemon_settings(imap: ImapServer, smtp_port: int, extra: str = "") -> str:
    """The [imap] and [smtp] sections for `gateway run` against a test Dovecot and a relay on loopback."""
    return (
        f'\n[imap]\nhost = "{imap.host}"\nport = {imap.port}\n'
        f'username = "{imap.username}"\npassword = "{imap.password}"\ntls = "none"\n'
        f'\n[smtp]\nhost = "127.0.0.1"\nport = {smtp_port}\ntls = "none"\n{extra}'
    )


async def wait_started(daemon: asyncio.subprocess.Process) -> bytes:
    """Read the daemon's log until it says it started; returns what it read."""
    assert daemon.stderr is not None
    seen = b""
    while b'"event": "started"' not in seen and daemon.returncode is None:
        line = await asyncio.wait_for(daemon.stderr.readline(), 60)
        if not line:
            break
        seen += line
    return seen


async def until(check: object, timeout: float, what: str = "") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():  # type: ignore[operator]
        if loop.time() > deadline:
            raise AssertionError(f"not there in {timeout:.0f} s: {what or 'the condition'}")
        await asyncio.sleep(0.2)


async def started(gateway: Gateway) -> asyncio.subprocess.Process:
    """A daemon, once it says it has started (so a kill lands while it works, not while Python imports).

    Its log goes to daemon.log in the gateway's directory, for a person to read when a test fails.
    """
    log = gateway.directory / "daemon.log"
    offset = log.stat().st_size if log.exists() else 0
    with log.open("ab") as sink:
        daemon = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "--config", str(gateway.config_path), "run",
            stdout=asyncio.subprocess.DEVNULL, stderr=sink,
        )  # fmt: skip

    def said_started() -> bool:
        with log.open("rb") as text:
            text.seek(offset)
            return any(b'"event": "started"' in line for line in text)

    await until(said_started, 30)
    return daemon


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - a loopback URL the test made
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
