"""Standing monthly requests: what a monthly, renewal or cancel request does to an authority's subscriptions."""

from __future__ import annotations

import calendar
import datetime as dt
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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
