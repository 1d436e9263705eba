"""The IMAP watcher on a test Dovecot with a gateway's settings, and the mailbox as a person looking at it sees it."""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from gateway.compose import Templates
from gateway.config import ImapSettings, Secret, load_config
from gateway.crypto import Keyring
from gateway.db.engine import Database, create_database
from gateway.dev.dovecot import ImapServer
from gateway.inbound.watcher import Watcher
from gateway.pipeline import process
from gateway.values import Context, Outcome
from tests.support.gateway_cli import Gateway


@dataclass
class Running:
    ctx: Context
    watcher: Watcher
    stop: asyncio.Event
    task: asyncio.Task[None]


def folder_counts(server: ImapServer, *folders: str) -> dict[str, int]:
    """What a person looking at the mailbox would see, through a separate IMAP client."""
    client = imaplib.IMAP4(server.host, server.port)
    try:
        client.login(server.username, server.password)
        counts = {}
        for folder in folders:
            status, data = client.select(folder, readonly=True)
            counts[folder] = int(data[0] or 0) if status == "OK" else -1
        return counts
    finally:
        client.logout()


def counts_are(server: ImapServer, expected: dict[str, int]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await asyncio.to_thread(folder_counts, server, *expected) == expected

    return check


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("the watcher did not get there in time")
        await asyncio.sleep(0.2)


def imap_settings(server: ImapServer) -> ImapSettings:
    return ImapSettings(
        host=server.host, port=server.port, username=server.username, password=Secret(server.password),
        tls="none", folder="INBOX", idle_seconds=30, poll_seconds=1,
    )  # fmt: skip


@contextlib.asynccontextmanager
async def watching(
    gateway: Gateway, server: ImapServer, handle: Callable[[Context, bytes], Awaitable[Outcome]] | None = None
) -> AsyncIterator[Running]:
    """A watcher on the server with the gateway's settings, running until the block ends; `handle` replaces
    the pipeline when a test needs to step in."""
    config = load_config(gateway.config_path)
    db: Database = create_database(config.database)
    ctx = Context(config, db, Keyring(config.gpg.home), Templates())
    stop = asyncio.Event()

    async def through_pipeline(raw: bytes) -> Outcome:
        return await (handle(ctx, raw) if handle else process(ctx, raw, source="imap"))

    watcher = Watcher(imap_settings(server), through_pipeline, db, stop=stop)
    task = asyncio.create_task(watcher.run())
    try:
        yield Running(ctx, watcher, stop, task)
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        await db.close()


@pytest.fixture
async def running(live: Gateway, dovecot_server: ImapServer) -> AsyncIterator[Running]:
    async with watching(live, dovecot_server) as watched:
        yield watched
