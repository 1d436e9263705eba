"""Standing monthly requests: what a monthly, renewal or cancel request does to an authority's subscriptions."""

from __future__ import annotations

import calendar
import datetime as dt
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from gateway import audit
from gateway.db.engine import Database
from gateway.db.models import Authority, Subscription, SubscriptionEvent
from gateway.errors import GatewayError
from gateway.extracts import HOME_EXTRACT_COLUMNS, EnforcementLike, HomeLike
from gateway.scope import Scope

REVIEW_MONTHS = 12


def add_months(day: dt.date, months: int) -> dt.date:
    """The same day `months` later, or the month's last day when it has no such day (29 February)."""
    index = day.month - 1 + months
    year, month = day.year + index // 12, index % 12 + 1
    return dt.date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def review_date(confirmed_on: dt.date) -> dt.date:
    return add_months(confirmed_on, REVIEW_MONTHS)


@dataclass(frozen=True)
class SubscriptionChange:
    """What a request does to a subscription, decided before and applied inside the outcome's transaction."""

    action: str  # create, already-active, renew, cancel
    scope: Scope
    review_on: dt.date
    subscription_id: int | None = None
    snapshot: str | None = None  # what the first answer held, for the first delivery's summary of changes


def snapshot(homes: Sequence[HomeLike], actions: Sequence[EnforcementLike]) -> dict[str, Any]:
    """A fingerprint of each disclosed home and each enforcement action, to compare the next delivery against."""
    rows = {
        home.urn: hashlib.sha256(json.dumps([getattr(home, c) for c in HOME_EXTRACT_COLUMNS]).encode()).hexdigest()
        for home in homes
    }
    return {"homes": rows, "enforcement": sorted(f"{a.urn}|{a.date}|{a.nature}" for a in actions)}


class SubscriptionError(GatewayError):
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
                raise SubscriptionError(f"--until {review_on.isoformat()} is not in the future")
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


async def listing(db: Database, *, active_only: bool = False) -> list[tuple[Subscription, str]]:
    """The subscriptions (or only the active ones) with their authority's name, by status and then id."""
    query = select(Subscription, Authority.name).join(Authority).order_by(Subscription.status, Subscription.id)
    if active_only:
        query = query.where(Subscription.status == "active")
    async with db.transaction(write=False) as session:
        return [(sub, str(name)) for sub, name in (await session.execute(query)).all()]
