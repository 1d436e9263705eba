"""A subscription's year walked from awkward starting days, forwards only, against fixed dates: month starts and
ends, a leap day and both clock changes. Deliveries, reminders and lapses each come once, on the right step."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from zoneinfo import ZoneInfo

from sqlalchemy import select

from gateway.compose import Templates
from gateway.config import ScheduleSettings, load_config
from gateway.crypto import Keyring
from gateway.db.engine import create_database
from gateway.db.models import Authority, Subscription, SubscriptionEvent
from gateway.schedule import delivery_instant, run_due
from gateway.subscriptions import add_months, review_date
from gateway.values import Context
from tests.support.addresses import POLICE_ADDRESS
from tests.support.gateway_cli import Gateway

LONDON = ZoneInfo(ScheduleSettings().timezone)
SETTINGS = ScheduleSettings()
STARTS = [
    *(dt.date(2027, 1, day) for day in range(1, 8)),  # reviews early in a month, near the run on the 1st
    *(dt.date(2027, 1, day) for day in range(28, 32)),  # reviews at a month's end, some on days February lacks
    dt.date(2028, 2, 29),  # a leap day: its review falls on 28 February 2029
    dt.date(2027, 3, 28),  # the clocks go forward that night
    dt.date(2027, 10, 31),  # the clocks go back that night
    dt.date(2027, 3, 26),  # its review falls on 26 March 2028, when the clocks go forward
    dt.date(2027, 10, 29),  # its review falls on 29 October 2028, when they go back
    dt.date(2027, 4, 2),  # its 7-day reminder falls on 26 March 2028
    dt.date(2027, 11, 28),  # its 30-day reminder falls on 29 October 2028
]
CLOCK_CHANGES = {dt.date(2027, 3, 28), dt.date(2027, 10, 31), dt.date(2028, 3, 26), dt.date(2028, 10, 29)}


def months_between(start: dt.date, end: dt.date) -> list[dt.date]:
    """The 1st of each month strictly after `start` and strictly before `end`: the deliveries' days."""
    firsts, first = [], add_months(start.replace(day=1), 1)
    while first < end:
        firsts.append(first)
        first = add_months(first, 1)
    return firsts


def moments(starts: list[dt.date]) -> list[dt.datetime]:
    """The walk's steps, sorted: a minute either side of each delivery moment, and near every reminder and review
    day, half an hour after midnight and half an hour before it (UTC: in summer, London's next day)."""
    steps: set[dt.datetime] = set()
    for start in starts:
        review = review_date(start)
        for first in [*months_between(start, review), *(add_months(review.replace(day=1), n) for n in (1, 2))]:
            instant = delivery_instant(first.year, first.month, SETTINGS)
            steps.update((instant - dt.timedelta(minutes=1), instant + dt.timedelta(minutes=1)))
        for offset in range(-32, 3):
            day = review + dt.timedelta(days=offset)
            steps.add(dt.datetime.combine(day, dt.time(0, 30), dt.UTC))
            steps.add(dt.datetime.combine(day, dt.time(23, 30), dt.UTC))
    return sorted(steps)


def first_step_on(steps: list[dt.datetime], day: dt.date) -> dt.datetime:
    """The first step whose date in London is `day` or later: when something due that day must go."""
    return next(step for step in steps if step.astimezone(LONDON).date() >= day)


async def test_a_year_from_each_awkward_day_delivers_reminds_and_lapses_once(walker: Gateway) -> None:
    config = load_config(walker.config_path)
    db = create_database(config.database)
    ctx = Context(config, db, Keyring(config.gpg.home), Templates())
    try:
        async with db.transaction() as session:
            authority = (await session.execute(select(Authority))).scalar_one()
            for start in STARTS:
                session.add(
                    Subscription(
                        authority_id=authority.id, police_force_area="West Mercia", local_authority=None,
                        area="West Mercia police force area", status="active", started_on=start, address=POLICE_ADDRESS,
                        review_on=review_date(start), purpose="Safeguarding children", updated_at=dt.datetime(
                            start.year, start.month, start.day, 10, tzinfo=dt.UTC
                        ),
                    )
                )  # fmt: skip
        steps = moments(STARTS)
        for step in steps:  # forwards only: each step later than the one before
            await run_due(ctx, step)
        async with db.transaction(write=False) as session:
            subs = {s.id: s for s in (await session.execute(select(Subscription))).scalars()}
            events: dict[int, list[SubscriptionEvent]] = defaultdict(list)
            for event in (await session.execute(select(SubscriptionEvent))).scalars():
                events[event.subscription_id].append(event)
    finally:
        await db.close()

    assert len(subs) == len(STARTS)
    for ident, sub in subs.items():
        start, review = sub.started_on, sub.review_on
        seen = [(e.kind, e.key) for e in events[ident]]
        assert len(seen) == len(set(seen)), f"{start}: something was sent twice"
        when = {(e.kind, e.key): e.happened_at for e in events[ident]}
        # One delivery for each 1st between the start and the review, each at the first step after its moment.
        firsts = months_between(start, review)
        expected = {("delivery", f"{f:%Y-%m}") for f in firsts}
        assert {k for k in seen if k[0] == "delivery"} == expected, start
        for first in firsts:
            instant = delivery_instant(first.year, first.month, SETTINGS)
            assert when["delivery", f"{first:%Y-%m}"] == instant + dt.timedelta(minutes=1), (start, first)
        # Both reminders, each on its own day; then the lapse on the review day, and nothing after it.
        reminders = {("reminder", f"{review.isoformat()}/{days}") for days in SETTINGS.reminder_days}
        assert {k for k in seen if k[0] == "reminder"} == reminders, start
        for days in SETTINGS.reminder_days:
            day = review - dt.timedelta(days=days)
            assert when["reminder", f"{review.isoformat()}/{days}"] == first_step_on(steps, day), (start, days)
        assert [k for k in seen if k[0] == "lapse"] == [("lapse", review.isoformat())], start
        assert when["lapse", review.isoformat()] == first_step_on(steps, review), start
        assert sub.status == "lapsed", start


def test_the_walk_covers_what_it_says() -> None:
    """Starts, reviews and reminders fall on both clock changes and a leap day; steps fall in summer time."""
    for day in CLOCK_CHANGES:  # each really is a change: noon's offset differs from the day before's
        before = dt.datetime.combine(day - dt.timedelta(days=1), dt.time(12))
        assert LONDON.utcoffset(dt.datetime.combine(day, dt.time(12))) != LONDON.utcoffset(before), day
    days = {*STARTS, *(review_date(s) for s in STARTS)}
    days |= {review_date(s) - dt.timedelta(days=n) for s in STARTS for n in SETTINGS.reminder_days}
    assert days >= CLOCK_CHANGES
    assert dt.date(2028, 2, 29) in STARTS
    assert review_date(dt.date(2028, 2, 29)) == dt.date(2029, 2, 28)
    assert review_date(dt.date(2027, 1, 31)) == dt.date(2028, 1, 31)
    steps = moments(STARTS)
    assert steps == sorted(steps)
    assert any(step.astimezone(LONDON).date() != step.date() for step in steps)  # 23:30 UTC in summer time
