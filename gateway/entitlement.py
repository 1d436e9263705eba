"""Whether a monthly subscription is still allowed to its authority as registered now, and ending one that is not."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway import audit
from gateway.compose import admin_notice, new_reference
from gateway.crypto import KeyProblem
from gateway.db.models import Authority, Subscription, SubscriptionEvent
from gateway.notices import encrypted_notice
from gateway.outbox import enqueue
from gateway.scope import Scope, ScopeRefusal, entitled
from gateway.values import Context

ENDED = "ended"


def still_allowed(authority: Authority, subscription: Subscription) -> Scope | ScopeRefusal:
    """The mail path's rules, asked again of the authority as registered now: its kind and area must still
    cover the subscription's area, and the address that asked must still be one of its addresses. Whether the
    authority is suspended is the caller's question: suspension pauses deliveries, it does not end them."""
    if subscription.address not in {a.address for a in authority.addresses}:
        return ScopeRefusal(f"{subscription.address} is no longer one of the authority's registered addresses")
    return entitled(authority.kind, authority.area, Scope(subscription.police_force_area, subscription.local_authority))


@dataclass(frozen=True)
class Ending:
    subscription: Subscription
    why: str


def _notice_lines(ending: Ending) -> list[str]:
    sub = ending.subscription
    return [
        f"Your monthly subscription for {sub.area} (number {sub.id}) has ended: no further deliveries will be made.",
        f"Why: {ending.why}.",
        "",
        "This follows a change to your authority's registration with HMCI. If you still need monthly updates",
        "for an area your registration covers, send a new request with Request: disclosure and Frequency: monthly.",
    ]


def _recipient(authority: Authority, subscription: Subscription) -> str | None:
    """Where a notice about this subscription goes: the address that asked while it is still the authority's,
    else the authority's first address now (never an address it no longer holds)."""
    current = [a.address for a in authority.addresses]
    if subscription.address in current:
        return subscription.address
    return current[0] if current else None


async def end(
    ctx: Context,
    session: AsyncSession,
    authority: Authority,
    endings: Sequence[Ending],
    *,
    actor: str,
    now: dt.datetime,
) -> tuple[str, ...]:
    """In the caller's transaction: each subscription ends, its authority is told (encrypted, or not at all),
    the admins get one alert, and each ending is audited. Returns one line per ending for the admin at hand."""
    lines: list[str] = []
    audits: list[tuple[Subscription, str, str, int | None]] = []
    for ending in endings:
        sub = ending.subscription
        sub.status, sub.updated_at = ENDED, now
        recipient = _recipient(authority, sub)
        reference = new_reference(now)
        outbox_id: int | None = None
        if authority.status != "active":
            told = "not told: the authority is suspended and is sent nothing"
        elif recipient is None:
            told = "not told: the authority has no registered address"
        else:
            try:
                notice = await encrypted_notice(
                    ctx, authority, kind="subscription-end", reference=reference, recipient=recipient,
                    subject="Register gateway: monthly subscription ended", template="authority-notice.txt.j2",
                    values={"title": "monthly subscription ended", "lines": _notice_lines(ending)},
                )  # fmt: skip
            except KeyProblem as exc:
                notice, told = None, f"not told: no notice could be encrypted to its key ({exc})"
            if notice is not None:
                outbox_id = await enqueue(session, now=now, sender=ctx.config.gateway.address, **notice.queued())
                told = f"told at {recipient}, encrypted (reference {reference})"
        session.add(
            SubscriptionEvent(
                subscription_id=sub.id, kind=ENDED, key=ENDED, happened_at=now, outbox_id=outbox_id,
                reference=reference if outbox_id else None,
            )
        )  # fmt: skip
        lines.append(f"subscription {sub.id} ({sub.area}, {sub.address}) ended: {ending.why}; {told}")
        audits.append((sub, ending.why, told, outbox_id))
    if not lines:
        return ()
    warning = admin_notice(
        ctx,
        f"monthly subscriptions of {authority.name} ended",
        [
            f"{authority.name!r}, as registered now, may no longer have these monthly subscriptions ({actor}):",
            "",
            *lines,
            "",
            "Nothing more is delivered for them. The authority may ask again for an area its registration covers.",
        ],
    )
    alert_id = await enqueue(session, now=now, sender=ctx.config.gateway.address, **warning.queued())
    for sub, why, told, outbox_id in audits:
        await audit.record(
            session, actor=actor, action="subscription.end", subject=f"subscription {sub.id}",
            details={
                "authority": authority.name, "area": sub.area, "address": sub.address, "why": why, "told": told,
                "notice_outbox_id": outbox_id, "alert_outbox_id": alert_id,
            },
            now=now,
        )  # fmt: skip
    return tuple(lines)


@dataclass(frozen=True)
class Keeper:
    """What the allowlist asks, in each change's own transaction, of the authority's subscriptions."""

    ctx: Context

    async def review(
        self, session: AsyncSession, authority: Authority, *, actor: str, ending: str | None = None
    ) -> tuple[str, ...]:
        """End each active subscription the authority's registration no longer allows (all of them, saying
        `ending`, when the authority is being removed); lines for the admin, also for those paused."""
        await session.flush()  # the change itself, so that what is read here is the authority as it will be
        rows = (
            await session.execute(
                select(Subscription)
                .where(Subscription.authority_id == authority.id, Subscription.status == "active")
                .order_by(Subscription.id)
            )
        ).scalars()
        endings: list[Ending] = []
        kept = 0
        for sub in rows:
            verdict = ScopeRefusal(ending) if ending else still_allowed(authority, sub)
            if isinstance(verdict, ScopeRefusal):
                endings.append(Ending(sub, verdict.reason))
            else:
                kept += 1
        lines = await end(self.ctx, session, authority, endings, actor=actor, now=self.ctx.clock())
        if kept and authority.status != "active":
            lines = (*lines, f"{kept} monthly subscription(s) paused while {authority.name!r} is suspended")
        return lines
