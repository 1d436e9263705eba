"""Standing monthly requests: every change of a subscription's status is made here: by mail (a monthly,
renewal or cancel request), by an admin, at its lapse, and when its authority may no longer have it."""

from __future__ import annotations

import calendar
import datetime as dt
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway import audit
from gateway.compose import admin_notice, new_reference
from gateway.db.engine import Database
from gateway.db.models import Authority, Subscription, SubscriptionEvent
from gateway.errors import Field, FieldError
from gateway.extracts import HOME_EXTRACT_COLUMNS, EnforcementLike, HomeLike
from gateway.gpgrun import KeyProblem
from gateway.notices import encrypted_notice
from gateway.outbox import enqueue
from gateway.scope import Scope, ScopeRefusal, still_allowed
from gateway.values import GATEWAY_ACTOR, Context, Decision, SubscriptionChange

REVIEW_MONTHS = 12
ENDED = "ended"


def add_months(day: dt.date, months: int) -> dt.date:
    """The same day `months` later, or the month's last day when it has no such day (29 February)."""
    index = day.month - 1 + months
    year, month = day.year + index // 12, index % 12 + 1
    return dt.date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def review_date(confirmed_on: dt.date) -> dt.date:
    return add_months(confirmed_on, REVIEW_MONTHS)


def snapshot(homes: Sequence[HomeLike], actions: Sequence[EnforcementLike]) -> dict[str, Any]:
    """A fingerprint of each disclosed home and each enforcement action, to compare the next delivery against."""
    rows = {
        home.urn: hashlib.sha256(json.dumps([getattr(home, c) for c in HOME_EXTRACT_COLUMNS]).encode()).hexdigest()
        for home in homes
    }
    return {"homes": rows, "enforcement": sorted(f"{a.urn}|{a.date}|{a.nature}" for a in actions)}


class SubscriptionError(FieldError):
    """An admin action on a subscription that cannot be done as asked."""


async def change_by_hand(
    db: Database, subscription_id: int, *, actor: str, cancel: bool = False, review_on: dt.date | None = None
) -> Subscription:
    """An admin cancels a subscription, or moves its review date; audited with the actor."""
    async with db.transaction() as session:
        row = await session.get(Subscription, subscription_id)
        if row is None:
            raise SubscriptionError(f"no subscription {subscription_id} (see `gateway subscription list`)")
        if row.status != "active":
            raise SubscriptionError(f"subscription {subscription_id} is {row.status}, not active")
        before = row.review_on
        if cancel:
            row.status = "cancelled"
        elif review_on is not None:
            if review_on <= dt.datetime.now(dt.UTC).date():
                raise SubscriptionError(Field("review_on"), f" {review_on.isoformat()} is not in the future")
            row.review_on = review_on
        row.updated_at = dt.datetime.now(dt.UTC)
        await audit.record(
            session,
            actor=actor,
            action="subscription.cancel" if cancel else "subscription.extend",
            subject=f"subscription {row.id}",
            details={"area": row.area, "review_before": before, "review_on": row.review_on, "status": row.status},
        )
        return row


async def history(db: Database, subscription_id: int) -> tuple[Subscription, str, list[SubscriptionEvent]]:
    async with db.transaction(write=False) as session:
        row = await session.get(Subscription, subscription_id)
        if row is None:
            raise SubscriptionError(f"no subscription {subscription_id} (see `gateway subscription list`)")
        authority = await session.get(Authority, row.authority_id)
        events = list(
            (
                await session.execute(
                    select(SubscriptionEvent)
                    .where(SubscriptionEvent.subscription_id == subscription_id)
                    .order_by(SubscriptionEvent.id)
                )
            ).scalars()
        )
    return row, authority.name if authority else "?", events


async def find_subscription(db: Database, authority: Authority, scope: Scope, status: str) -> Subscription | None:
    """The authority's latest subscription for the scope's area with this status."""
    async with db.transaction(write=False) as session:
        return (
            await session.execute(
                select(Subscription)
                .where(
                    Subscription.authority_id == authority.id,
                    Subscription.status == status,
                    Subscription.area == scope.description,
                )
                .order_by(Subscription.id.desc())
                .limit(1)
            )
        ).scalar()


async def monthly_change(db: Database, authority: Authority, scope: Scope, today: dt.date) -> SubscriptionChange:
    """What a monthly request does: start a subscription for the area, or note the one already active."""
    current = await find_subscription(db, authority, scope, "active")
    if current is not None:
        return SubscriptionChange("already-active", scope, current.review_on, current.id)
    return SubscriptionChange("create", scope, review_date(today))


def subscription_note(change: SubscriptionChange | None) -> str | None:
    if change is None:
        return None
    when = f"{change.review_on:%d %B %Y}"
    if change.action == "already-active":
        return f"Your monthly subscription for this area is already active; its review falls on {when}."
    return (
        f"Monthly updates: you will receive this area's register every month. Please confirm by {when} that you "
        "still need it, by sending an email whose body is: Request: renewal"
    )


async def apply_by_mail(
    session: Any, change: SubscriptionChange, decision: Decision, inbound_id: int, now: dt.datetime
) -> None:
    """A subscription change, in the transaction of the outcome that answered it, checked again under the lock."""
    authority = decision.authority
    if authority is None or change.action == "already-active":
        return
    if change.action == "create":
        active = await session.execute(
            select(Subscription.id).where(
                Subscription.authority_id == authority.id,
                Subscription.status == "active",
                Subscription.area == change.scope.description,
            )
        )
        if active.scalar() is not None:  # a concurrent monthly request made it a moment ago
            return
        row = Subscription(
            authority_id=authority.id,
            police_force_area=change.scope.police_force_area,
            local_authority=change.scope.local_authority,
            area=change.scope.description,
            # The registered address that asked: deliveries and notices go there, not to whichever sorts first.
            address=decision.sender or authority.addresses[0].address,
            status="active",
            started_on=now.date(),
            review_on=change.review_on,
            purpose=decision.disclosure.purpose if decision.disclosure else "",
            created_by_inbound_id=inbound_id,
            updated_at=now,
        )
        session.add(row)
        await session.flush()
        # The first answer's content, so that the first monthly delivery can say what changed since.
        session.add(
            SubscriptionEvent(
                subscription_id=row.id, kind="initial", key="start", happened_at=now, outbox_id=None,
                reference=decision.reference, snapshot=change.snapshot,
            )
        )  # fmt: skip
    else:
        row = await session.get(Subscription, change.subscription_id)
        if row is None or row.status != "active":
            return
        if change.action == "renew":
            row.review_on = change.review_on
        else:
            row.status = "cancelled"
        row.updated_at = now
    await audit.record(
        session,
        actor=GATEWAY_ACTOR,
        action=f"subscription.{change.action}",
        subject=f"subscription {row.id}",
        details={"authority": authority.name, "area": row.area, "review_on": row.review_on, "status": row.status},
        now=now,
    )


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


async def lapse(session: AsyncSession, subscription_id: int, now: dt.datetime) -> None:
    """No confirmation in twelve months (the protocol): no more data, in the caller's transaction."""
    row = await session.get(Subscription, subscription_id)
    if row is not None:
        row.status, row.updated_at = "lapsed", now


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


async def listing(db: Database, *, active_only: bool = False) -> list[tuple[Subscription, str]]:
    """The subscriptions (or only the active ones) with their authority's name, by status and then id."""
    query = select(Subscription, Authority.name).join(Authority).order_by(Subscription.status, Subscription.id)
    if active_only:
        query = query.where(Subscription.status == "active")
    async with db.transaction(write=False) as session:
        return [(sub, str(name)) for sub, name in (await session.execute(query)).all()]
