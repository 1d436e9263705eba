"""An SMTP relay on loopback that refuses as long as a test says, mail queued in the outbox for it, and the replies it
took."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy import select

from gateway.config import SmtpSettings
from gateway.db.engine import Database
from gateway.db.models import Authority, AuthorityAddress, OutboxMessage
from tests.support.addresses import GATEWAY_ADDRESS, POLICE_ADDRESS

START = dt.datetime(2026, 11, 25, 9, 0, tzinfo=dt.UTC)


@dataclass
class Relay:
    """An SMTP relay on loopback that says `refusal` to the first `refuse` messages, then accepts."""

    refuse: int = 0
    refusal: str = "451 4.3.0 Try again later"
    received: list[Envelope] = field(default_factory=list)
    refused: int = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.refused < self.refuse:
            self.refused += 1
            return self.refusal
        self.received.append(envelope)
        return "250 2.0.0 Queued"


async def serve(relay: Relay) -> tuple[asyncio.Server, int]:
    # loop.create_server, not aiosmtpd's threaded Controller, which cannot listen on port 0.
    server = await asyncio.get_running_loop().create_server(lambda: SMTP(relay), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, port


def plain_relay(port: int, tls: Any = "none") -> SmtpSettings:
    return SmtpSettings(host="127.0.0.1", port=port, username=None, password=None, tls=tls)


async def queue(
    db: Database, kind: str = "disclosure", sealed: tuple[str, str] | None = None, *, recorded: bool = True
) -> int:
    """A message queued for the police, sealed to `sealed` (method, fingerprint): unless said, to what is pinned
    for their address now, as the gateway records it. `recorded=False`: as queued before schema 0018, which
    recorded nothing of what a message was sealed to."""
    async with db.transaction() as session:
        if recorded and sealed is None:
            query = (
                select(AuthorityAddress.method, AuthorityAddress.cert_fingerprint, Authority.key_fingerprint)
                .join(Authority, Authority.id == AuthorityAddress.authority_id)
                .where(AuthorityAddress.address == POLICE_ADDRESS)
            )
            method, certificate, key = (await session.execute(query)).one()
            pinned = certificate if method == "smime" else key
            assert pinned is not None, "nothing is pinned for the police to seal to"
            sealed = (method, pinned)
        row = OutboxMessage(
            kind=kind, inbound_id=None, sender=GATEWAY_ADDRESS, recipient=POLICE_ADDRESS,
            message_id="<m1@hmci.example>", content=b"From: x\r\nTo: y\r\nSubject: [OFFICIAL-SENSITIVE] R\r\n\r\nb\r\n",
            status="pending", attempts=0, created_at=START, next_attempt_at=START,
            sealed_method=sealed[0] if sealed else None, sealed_fingerprint=sealed[1] if sealed else None,
        )  # fmt: skip
        session.add(row)
        await session.flush()
        return row.id


def answers(relay: Relay) -> dict[str, set[str]]:
    """For each request (In-Reply-To), the distinct replies (Message-IDs) the relay accepted."""
    found: dict[str, set[str]] = defaultdict(set)
    for envelope in relay.received:
        mail = message_from_bytes(bytes(envelope.original_content or b""), policy=policy.default)
        found[str(mail.get("In-Reply-To", ""))].add(str(mail.get("Message-ID", "")))
    return found
