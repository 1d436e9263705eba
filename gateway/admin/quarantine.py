"""Quarantine for people: what is held and why, and releasing a message through the pipeline or discarding it."""

from __future__ import annotations

from dataclasses import dataclass
from email import policy
from email.parser import BytesHeaderParser
from typing import Any

from sqlalchemy import select

from gateway import audit
from gateway.db.models import Authority, InboundMessage, OutboxMessage, QuarantinedMessage
from gateway.errors import GatewayError
from gateway.lookalike import decoded
from gateway.pipeline import decide, settle
from gateway.values import Arrival, Context, Outcome, OutcomeKind

SHOWN_HEADERS = ("From", "Sender", "To", "Subject", "Date", "Message-ID", "Authentication-Results", "Received")


class QuarantineError(GatewayError):
    """A quarantine action that cannot be done as asked."""


@dataclass(frozen=True)
class Held:
    id: int
    received_at: str
    sender: str | None
    authority: str | None
    reason: str
    status: str
    size: int


async def listing(ctx: Context, *, everything: bool = False) -> list[Held]:
    async with ctx.db.transaction(write=False) as session:
        query = (
            select(QuarantinedMessage.status, InboundMessage, Authority.name)
            .join(InboundMessage, InboundMessage.id == QuarantinedMessage.inbound_id)
            .outerjoin(Authority, Authority.id == InboundMessage.authority_id)
            .order_by(InboundMessage.id)
        )
        if not everything:
            query = query.where(QuarantinedMessage.status == "held")
        rows = (await session.execute(query)).all()
    return [
        Held(
            inbound.id,
            inbound.received_at.isoformat(timespec="seconds"),
            inbound.sender,
            name,
            inbound.reason,
            status,
            inbound.size,
        )
        for status, inbound, name in rows
    ]


def _headers(raw: bytes) -> list[tuple[str, str]]:
    """The headers a person needs, one line each and bounded: they are an attacker's text."""
    parsed = BytesHeaderParser(policy=policy.compat32).parsebytes(raw[:262144])
    shown = []
    for name in SHOWN_HEADERS:
        for value in parsed.get_all(name) or []:
            text = " ".join(decoded(str(value)).split())
            shown.append((name, "".join(c if c.isprintable() else "?" for c in text)[:500]))
    return shown


async def show(ctx: Context, inbound_id: int) -> dict[str, Any]:
    async with ctx.db.transaction(write=False) as session:
        held, inbound = await _held(session, inbound_id, still_held=False)
        alerts = (
            await session.execute(
                select(OutboxMessage).where(OutboxMessage.inbound_id == inbound_id).order_by(OutboxMessage.id)
            )
        ).scalars()
        sent = [{"id": a.id, "kind": a.kind, "recipient": a.recipient, "status": a.status} for a in alerts]
    return {
        "id": inbound_id,
        "status": held.status,
        "received_at": inbound.received_at.isoformat(timespec="seconds"),
        "source": inbound.source,
        "size": inbound.size,
        "sha256": inbound.sha256,
        "why": inbound.reason,
        "headers": _headers(held.content),
        "sent": sent,
        "decided_by": held.decided_by,
    }


async def _held(session: Any, inbound_id: int, *, still_held: bool = True) -> tuple[QuarantinedMessage, InboundMessage]:
    """A quarantined message and its record; unless `still_held` is False, one not yet released or discarded."""
    held = await session.get(QuarantinedMessage, inbound_id)
    inbound = await session.get(InboundMessage, inbound_id)
    if held is None or inbound is None:
        raise QuarantineError(f"no quarantined message {inbound_id} (see `gateway quarantine list`)")
    if still_held and held.status != "held":
        raise QuarantineError(f"message {inbound_id} was already {held.status} by {held.decided_by}")
    return held, inbound


async def release(ctx: Context, inbound_id: int, *, actor: str) -> Outcome:
    """Run a held message through the pipeline again, as it arrived but without the daily answer limit.

    What quarantined it is checked again: an impostor stays held. Otherwise its new outcome replaces the old,
    its answer is queued, and the release is audited with the actor, all in one transaction.
    """
    async with ctx.db.transaction(write=False) as session:
        held, inbound = await _held(session, inbound_id)
        arrival = Arrival(held.content, inbound.sha256, inbound.message_id, inbound.source, inbound.received_at)
    decision = await decide(ctx, arrival, releasing=inbound_id)
    now = ctx.clock()
    async with ctx.db.transaction() as session:
        held, inbound = await _held(session, inbound_id)  # again, under the lock: one release only
        if decision.outcome == OutcomeKind.QUARANTINED:
            await audit.record(
                session, actor=actor, action="quarantine.release-refused", subject=f"message {inbound_id}",
                details={"reason": decision.reason}, now=now,
            )  # fmt: skip
            return Outcome(OutcomeKind.QUARANTINED, f"still quarantined: {decision.reason}", inbound_id)
        await audit.record(
            session,
            actor=actor,
            action="quarantine.release",
            subject=f"message {inbound_id}",
            details={"before": inbound.outcome, "outcome": decision.outcome, "reason": decision.reason},
            now=now,
        )
        held.status, held.decided_by, held.decided_at = "released", actor, now
        return await settle(ctx, session, arrival, decision, inbound=inbound, now=now)


async def discard(ctx: Context, inbound_id: int, *, actor: str) -> None:
    """A person decided nothing is to be done; the message stays on record, audited with the actor."""
    now = ctx.clock()
    async with ctx.db.transaction() as session:
        held, inbound = await _held(session, inbound_id)
        held.status, held.decided_by, held.decided_at = "discarded", actor, now
        await audit.record(
            session,
            actor=actor,
            action="quarantine.discard",
            subject=f"message {inbound_id}",
            details={"reason": inbound.reason},
            now=now,
        )
