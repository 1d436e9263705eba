"""The flood and replay rules, each written once: asked when a message is decided, and asked again under the
write lock when its outcome is recorded, so that messages decided side by side cannot pass one together."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway import shown
from gateway.config import LimitSettings
from gateway.db.models import Authority, InboundMessage, OutboxMessage, SeenSignature
from gateway.signatures import SignatureStatus

ANSWERS = ("disclosure", "refusal", "acknowledgement")  # what counts towards [limits] answers_per_day
DAY = dt.timedelta(days=1)


async def sent_since(session: AsyncSession, addresses: list[str], kinds: tuple[str, ...], since: dt.datetime) -> int:
    """How many messages of these kinds, caused by inbound mail, went to these addresses since then."""
    query = select(func.count(OutboxMessage.id)).where(
        OutboxMessage.recipient.in_(addresses),
        OutboxMessage.kind.in_(kinds),
        OutboxMessage.inbound_id.is_not(None),
        OutboxMessage.created_at >= since,
    )
    return int((await session.execute(query)).scalar() or 0)


async def message_id_replay(session: AsyncSession, message_id: str | None, itself: int | None = None) -> str | None:
    """A Message-ID already recorded on other bytes (other than `itself`, the message being released): the same
    request sent again, or someone replaying it."""
    if message_id is None:
        return None
    query = select(InboundMessage.id).where(InboundMessage.message_id == message_id, InboundMessage.id != (itself or 0))
    earlier = (await session.execute(query.limit(1))).scalar()
    if earlier is None:
        return None
    return f"Message-ID {shown.message_id(message_id)} was already processed as message {earlier}: a replay"


async def signature_replay(session: AsyncSession, signature: SignatureStatus, itself: int | None = None) -> str | None:
    """A signature acted on before (other than by `itself`), under whatever headers: a captured request sent
    again, or a copy."""
    keys = signature.replay_keys()
    if not keys:
        return None
    query = select(SeenSignature.inbound_id).where(
        SeenSignature.signature_id.in_(keys), SeenSignature.inbound_id != (itself or 0)
    )
    earlier = (await session.execute(query.limit(1))).scalar()
    if earlier is None:
        return None
    return f"its signature was already used by message {earlier}: a replay of what was signed, not acted on again"


async def answers_spent(
    session: AsyncSession, settings: LimitSettings, authority: Authority, now: dt.datetime
) -> str | None:
    """Past [limits] answers_per_day to one authority, requests wait in quarantine for a person to release."""
    sent = await sent_since(session, [a.address for a in authority.addresses], ANSWERS, now - DAY)
    if sent < settings.answers_per_day:
        return None
    return (
        f"the limit of {settings.answers_per_day} answers a day to {authority.name} is reached: "
        "kept for a person to release"
    )


async def impostor_notices_spent(
    session: AsyncSession, settings: LimitSettings, recipient: str, now: dt.datetime
) -> bool:
    """An authority is told of impostors at most [limits] impostor_notices_per_day times a day; the admins'
    alert goes regardless."""
    told = await sent_since(session, [recipient], ("impostor-notice",), now - DAY)
    return told >= settings.impostor_notices_per_day


async def alerts_spent(session: AsyncSession, settings: LimitSettings, now: dt.datetime) -> bool:
    """Past [limits] alerts_per_hour, alerts are held for one summary, so an attack cannot flood HMCI."""
    query = select(func.count(OutboxMessage.id)).where(
        OutboxMessage.kind == "alert",
        OutboxMessage.inbound_id.is_not(None),
        OutboxMessage.created_at >= now - dt.timedelta(hours=1),
    )
    return int((await session.execute(query)).scalar() or 0) >= settings.alerts_per_hour
