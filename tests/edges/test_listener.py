"""The inbound SMTP listener: one address only, no bare line ends, a size limit, and stored before it says 250."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select

from gateway.config import DatabaseSettings, InboundSmtpSettings
from gateway.db.engine import Database, create_database
from gateway.db.models import SpooledMessage
from gateway.inbound.smtp import drain_spool, start_listener
from tests.support.addresses import GATEWAY_ADDRESS, POLICE_ADDRESS

MESSAGE = f"From: {POLICE_ADDRESS}\r\nTo: {GATEWAY_ADDRESS}\r\nSubject: r\r\n\r\nRequest: disclosure\r\n".encode()


@pytest.fixture
async def listener(migrated_settings: DatabaseSettings) -> AsyncIterator[tuple[Database, int]]:
    db = create_database(migrated_settings)
    server = await start_listener(InboundSmtpSettings("127.0.0.1", 0, 4096), db, GATEWAY_ADDRESS, asyncio.Event())
    try:
        yield db, server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await db.close()


async def converse(port: int, recipient: str, data: bytes) -> list[str]:
    """A raw SMTP conversation: smtplib would quietly repair bare line ends, and that is what is tested."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    replies = [(await reader.readline()).decode()]
    for command in (
        b"EHLO client.example",
        f"MAIL FROM:<{POLICE_ADDRESS}>".encode(),
        f"RCPT TO:<{recipient}>".encode(),
    ):
        writer.write(command + b"\r\n")
        await writer.drain()
        line = await reader.readline()
        while line[3:4] == b"-":  # multi-line EHLO answer
            line = await reader.readline()
        replies.append(line.decode())
    if replies[-1].startswith("250"):
        writer.write(b"DATA\r\n")
        await writer.drain()
        replies.append((await reader.readline()).decode())
        writer.write(data + b"\r\n.\r\n")
        await writer.drain()
        replies.append((await reader.readline()).decode())
    writer.close()
    return [reply.strip() for reply in replies]


async def spooled(db: Database) -> list[SpooledMessage]:
    async with db.transaction(write=False) as session:
        return list((await session.execute(select(SpooledMessage))).scalars())


async def test_mail_for_the_gateway_is_stored_before_the_250(listener: tuple[Database, int]) -> None:
    db, port = listener
    replies = await converse(port, GATEWAY_ADDRESS.upper(), MESSAGE)
    assert replies[-1] == "250 2.0.0 Stored"
    [row] = await spooled(db)  # already there the moment the client heard 250
    assert row.content.rstrip(b"\r\n") == MESSAGE.rstrip(b"\r\n")
    seen: list[bytes] = []

    async def process(raw: bytes) -> int | None:
        seen.append(raw)
        return None

    assert await drain_spool(db, process) == 1
    assert await drain_spool(db, process) == 0
    assert len(seen) == 1


async def test_other_recipients_are_refused(listener: tuple[Database, int]) -> None:
    db, port = listener
    replies = await converse(port, "someone@hmci.example", MESSAGE)
    assert replies[-1] == "550 5.1.1 This server accepts mail for one address only"
    assert await spooled(db) == []


async def test_bare_line_ends_are_refused(listener: tuple[Database, int]) -> None:
    db, port = listener
    smuggled = MESSAGE.replace(b"Subject: r\r\n", b"Subject: r\nBcc: evil@attacker.example\r\n")
    replies = await converse(port, GATEWAY_ADDRESS, smuggled)
    assert replies[-1] == "550 5.6.0 Bare CR or LF is not allowed"
    assert await spooled(db) == []


async def test_oversized_mail_is_refused(listener: tuple[Database, int]) -> None:
    db, port = listener
    replies = await converse(port, GATEWAY_ADDRESS, MESSAGE + (b"x" * 70 + b"\r\n") * 100)
    assert replies[-1].startswith("552")
    assert await spooled(db) == []
