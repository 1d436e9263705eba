"""The optional inbound SMTP listener: accepts mail for the gateway's address only, and stores it before 250."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from collections.abc import Awaitable, Callable

from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy import select

from gateway.addresses import normalise_address
from gateway.config import InboundSmtpSettings
from gateway.db.engine import Database
from gateway.db.models import SpooledMessage

# A bare LF passes through DATA and Python's parser would then read a header line that was not there (Bcc:
# injection); a bare CR is no better. Mail from a real MTA never has either.
_BARE_LINE_END = re.compile(rb"(?<!\r)\n|\r(?!\n)")


class Handler:
    """aiosmtpd hooks: one recipient allowed, the message spooled durably, then (and only then) 250."""

    def __init__(self, db: Database, address: str, max_size: int, wake: asyncio.Event) -> None:
        self._db = db
        self._address = address
        self._max_size = max_size
        self._wake = wake

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        try:
            wanted = normalise_address(address) == self._address
        except ValueError:
            wanted = False
        if not wanted:
            return "550 5.1.1 This server accepts mail for one address only"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content
        content = raw if isinstance(raw, bytes) else b""
        if len(content) > self._max_size:
            return "552 5.3.4 Message too big"
        if _BARE_LINE_END.search(content):
            return "550 5.6.0 Bare CR or LF is not allowed"
        peer = session.peer[0] if isinstance(session.peer, tuple) else str(session.peer)
        async with self._db.transaction() as db_session:
            db_session.add(
                SpooledMessage(
                    received_at=dt.datetime.now(dt.UTC),
                    peer=str(peer)[:100],
                    mail_from=str(envelope.mail_from or "")[:998],
                    content=content,
                    status="pending",
                )
            )
        self._wake.set()
        return "250 2.0.0 Stored"


async def start_listener(
    settings: InboundSmtpSettings, db: Database, address: str, wake: asyncio.Event
) -> asyncio.Server:
    handler = Handler(db, address, settings.max_size, wake)
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: SMTP(handler, data_size_limit=settings.max_size, enable_SMTPUTF8=False, hostname="gateway"),
        settings.host,
        settings.port,
    )


async def drain_spool(db: Database, process: Callable[[bytes], Awaitable[int | None]], *, limit: int = 20) -> int:
    """Process what the listener stored, oldest first; a message is marked done once its outcome is recorded."""
    async with db.transaction(write=False) as session:
        pending = list(
            (
                await session.execute(
                    select(SpooledMessage.id)
                    .where(SpooledMessage.status == "pending")
                    .order_by(SpooledMessage.id)
                    .limit(limit)
                )
            ).scalars()
        )
    for spool_id in pending:
        async with db.transaction(write=False) as session:
            row = await session.get(SpooledMessage, spool_id)
            content = row.content if row is not None and row.status == "pending" else None
        if content is None:
            continue
        inbound_id = await process(content)  # a repeat after a crash is a duplicate, recorded once
        async with db.transaction() as session:
            row = await session.get(SpooledMessage, spool_id)
            if row is not None:
                row.status, row.inbound_id = "done", inbound_id
    return len(pending)
