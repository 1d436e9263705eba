"""A subscription's year: monthly deliveries once each, reminders at 30 and 7 days, a lapse, and what changed."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import json
import subprocess
import sys
from collections import Counter
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from gateway.compose import Templates
from gateway.config import ScheduleSettings, load_config
from gateway.crypto import Keyring
from gateway.db.engine import create_database
from gateway.db.models import Authority, Subscription, SubscriptionEvent
from gateway.schedule import Due, delivery_instant, due_period, settle_due
from gateway.subscriptions import add_months
from gateway.values import Context
from tests.support.addresses import POLICE_ADDRESS
from tests.support.gateway_cli import Gateway
from tests.support.keys import AuthorityKeys
from tests.support.live import open_as_recipient, outbox, outbox_content, process, subscriptions
from tests.support.requests import police_says
from tests.support.schedule import MONTHLY, police_at, run

SETTINGS = ScheduleSettings()


def test_delivery_moments_follow_london_time_across_clock_changes() -> None:
    assert delivery_instant(2027, 1, SETTINGS) == dt.datetime(2027, 1, 1, 6, 0, tzinfo=dt.UTC)  # GMT
    assert delivery_instant(2027, 7, SETTINGS) == dt.datetime(2027, 7, 1, 5, 0, tzinfo=dt.UTC)  # BST
    just_before = dt.datetime(2027, 7, 1, 4, 59, tzinfo=dt.UTC)
    assert due_period(just_before, SETTINGS) == (2027, 6)
    assert due_period(just_before + dt.timedelta(minutes=1), SETTINGS) == (2027, 7)
    assert due_period(dt.datetime(2027, 1, 1, 5, 0, tzinfo=dt.UTC), SETTINGS) == (2026, 12)


class Register:
    """The register as HMCI would re-import it: the sample's files, changed a little at a time."""

    def __init__(self, gateway: Gateway, directory: Path) -> None:
        self.gateway, self.directory = gateway, directory
        with (directory / "register" / "homes.csv").open(newline="") as handle:
            self.homes = list(csv.DictReader(handle))
        self.enforcement = (directory / "register" / "enforcement.csv").read_text()
        self.ours = [h for h in self.homes if h["police_force_area"] == "West Mercia" and h["status"] != "closed"]

    def reimport(self) -> None:
        homes, enforcement = self.directory / "homes-now.csv", self.directory / "enforcement-now.csv"
        with homes.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(self.homes[0]))
            writer.writeheader()
            writer.writerows(self.homes)
        enforcement.write_text(self.enforcement)
        self.gateway.ok("register", "import", "--homes", str(homes), "--enforcement", str(enforcement))


def summary(gateway: Gateway, keys: AuthorityKeys, outbox_id: object) -> tuple[int, int, int, int]:
    """A delivery's cover note, read as the police would read it: new, gone, changed, new actions."""
    inner, _ = open_as_recipient(gateway, keys, outbox_content(gateway, outbox_id))
    body = inner.get_body(preferencelist=("plain",))
    assert body is not None
    text = body.get_content()
    labels = ("homes newly registered", "homes closed or removed", "homes whose details changed",
              "new enforcement actions")  # fmt: skip
    new, gone, changed, actions = (int(text.split(f"{label}: ")[1].split()[0]) for label in labels)
    return new, gone, changed, actions


# The first request of the two-year walk: a review date early in a month, so that the run on the 1st of the
# review's month comes after the 7-day reminder's date (the shape that once made the walk step back in time).
WALK_START = dt.datetime(2027, 1, 4, 10, 0, tzinfo=dt.UTC)


def test_two_years_renewal_lapse_and_a_new_start(walker: Gateway, keys: AuthorityKeys, tmp_path: Path) -> None:
    """The issue's walk from a fixed date, always forwards: `process --as-of` and `schedule run --as-of` move time."""
    live = walker
    register = Register(live, tmp_path)
    start = WALK_START
    assert process(live, police_at(keys, MONTHLY, "y1", start), as_of=start)["kind"] == "answered"
    [subscription] = subscriptions(live)
    review = dt.date.fromisoformat(str(subscription["review_on"]))
    assert review == add_months(start.date(), 12)
    totals: Counter[str] = Counter()
    clock = [start]

    def step(moment: dt.datetime) -> dict[str, int]:
        assert moment >= clock[-1], f"the walk stepped back in time, from {clock[-1]} to {moment}"
        clock.append(moment)
        counts = run(live, moment)
        totals.update(counts)
        return counts

    def reminders_up_to(review: dt.date, before: dt.datetime) -> None:
        """Each reminder's own day, at noon, unless an earlier step (the run on the 1st) has already passed it."""
        for days in (30, 7):
            moment = dt.datetime.combine(review - dt.timedelta(days=days), dt.time(12), dt.UTC)
            if clock[-1] <= moment < before:
                step(moment)
                step(moment + dt.timedelta(hours=1))

    def deliveries_until(review: dt.date, after: dt.date, changes: dict[int, Any]) -> tuple[int, dt.date]:
        """Each month's delivery after `after`'s month, once, with the summary the register's changes call for;
        the reminders whose days fall between deliveries are run on their days, in order."""
        made, last = 0, after
        for month in range(1, 14):
            first_of = add_months(after.replace(day=1), month)
            moment = delivery_instant(first_of.year, first_of.month, SETTINGS) + dt.timedelta(minutes=1)
            reminders_up_to(review, moment)
            if moment.date() >= review:
                break
            expected = (0, 0, 0, 0)
            if month in changes:
                expected = changes[month]()
                register.reimport()
            assert step(moment)["delivery"] == 1, first_of
            assert step(moment + dt.timedelta(hours=1))["delivery"] == 0  # a repeated trigger sends nothing
            made, last = made + 1, first_of
            latest = [row for row in outbox(live) if row["kind"] == "disclosure"][-1]
            assert summary(live, keys, latest["id"]) == expected, first_of
        return made, last

    def add_home() -> tuple[int, int, int, int]:
        register.homes.append({**register.ours[0], "urn": "SC999991", "name": "Brand New House"})
        return (1, 0, 0, 0)

    def close_home() -> tuple[int, int, int, int]:
        register.ours[1]["status"] = "closed"
        return (0, 1, 0, 0)

    def alter_home() -> tuple[int, int, int, int]:
        register.ours[2]["telephone"] = "01632 960999"
        return (0, 0, 1, 0)

    def add_action() -> tuple[int, int, int, int]:
        register.enforcement += f"{register.ours[3]['urn']},{start.date().isoformat()},Compliance notice issued\n"
        return (0, 0, 0, 1)

    def elsewhere() -> tuple[int, int, int, int]:
        away = next(h for h in register.homes if h["police_force_area"] != "West Mercia")
        register.homes.append({**away, "urn": "SC999992"})
        return (0, 0, 0, 0)  # another force's area: not this subscription's business

    changes = {2: add_home, 4: close_home, 6: alter_home, 8: add_action, 10: elsewhere}
    first_year, last = deliveries_until(review, start.date(), changes)
    assert first_year == 12  # February 2027 to January 2028: each 1st between the start and the review
    # Both reminders, each once: the 30-day one on its day, the 7-day one on its day (28 December), so the run on
    # 1 January, after it, sends none.
    assert totals["reminder"] == 2

    # The police confirm three days before the review: the review moves to twelve months after that.
    confirmed = dt.datetime.combine(review - dt.timedelta(days=3), dt.time(9), dt.UTC)
    renewal = "Request: renewal\r\nArea: West Mercia\r\nPurpose: Safeguarding children in our area\r\n"
    assert process(live, police_at(keys, renewal, "y2", confirmed), "renewal.eml", confirmed)["kind"] == "answered"
    clock.append(confirmed)
    second_review = dt.date.fromisoformat(str(subscriptions(live)[0]["review_on"]))
    assert second_review == add_months(confirmed.date(), 12)
    passes = dt.datetime.combine(review, dt.time(0, 30), dt.UTC)  # before any 06:00 delivery that day
    assert step(passes)["lapse"] == 0  # the old review date passes without a lapse

    # A second year without a renewal: its deliveries, both reminders, then the lapse and its notice.
    second_year, _ = deliveries_until(second_review, last, {})
    assert second_year == 11  # February 2028 to December 2028: the review falls on 1 January 2029
    reminders_up_to(second_review, dt.datetime.combine(second_review, dt.time(0), dt.UTC))
    assert totals["reminder"] == 4
    lapse = dt.datetime.combine(second_review, dt.time(12), dt.UTC)
    assert step(lapse)["lapse"] == 1
    assert step(lapse + dt.timedelta(hours=1))["lapse"] == 0
    assert subscriptions(live)[0]["status"] == "lapsed"
    after = add_months(second_review.replace(day=1), 1)
    assert step(delivery_instant(after.year, after.month, SETTINGS) + dt.timedelta(minutes=1))["delivery"] == 0

    # A new request starts again: a new subscription, and deliveries resume.
    again = clock[-1] + dt.timedelta(days=1)
    assert process(live, police_at(keys, MONTHLY, "y3", again), "again.eml", again)["kind"] == "answered"
    clock.append(again)
    statuses = sorted(str(row["status"]) for row in subscriptions(live))
    assert statuses == ["active", "lapsed"]
    following = add_months(again.date().replace(day=1), 1)
    assert step(delivery_instant(following.year, following.month, SETTINGS) + dt.timedelta(minutes=1))["delivery"] == 1

    kinds = Counter(str(row["kind"]) for row in outbox(live))
    assert kinds["disclosure"] == 1 + first_year + second_year + 1 + 1  # answers, deliveries, the new start's
    assert (kinds["reminder"], kinds["lapse"], kinds["acknowledgement"]) == (4, 1, 1)
    assert totals["key notice"] == 0  # no key here expires; warnings of expiry have walks of their own
    actions = Counter(r["action"] for r in json.loads(live.ok("audit", "list", "--json")))
    assert actions["disclosure"] == kinds["disclosure"]
    assert actions["subscription.lapse"] == 1
    assert live.run("audit", "verify").code == 0


def test_a_delivery_says_what_changed_since_the_last(walker: Gateway, keys: AuthorityKeys, tmp_path: Path) -> None:
    assert process(walker, police_at(keys, MONTHLY, "c1", WALK_START), as_of=WALK_START)["kind"] == "answered"
    homes_file = tmp_path / "register" / "homes.csv"
    with homes_file.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    ours = [r for r in rows if r["police_force_area"] == "West Mercia" and r["status"] != "closed"]
    ours[0]["status"] = "closed"  # gone from the disclosure
    ours[1]["telephone"] = "01632 960999"  # details changed
    new = {**ours[2], "urn": "SC999991", "name": "Brand New House"}  # newly registered
    rows.append(new)
    changed = tmp_path / "changed.csv"
    with changed.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    enforcement = tmp_path / "enforcement.csv"
    enforcement.write_text(f"urn,date,nature\n{ours[3]['urn']},2026-11-20,Compliance notice issued\n")
    walker.ok("register", "import", "--homes", str(changed), "--enforcement", str(enforcement))

    started = dt.date.fromisoformat(str(subscriptions(walker)[0]["started_on"]))
    first_of = add_months(started.replace(day=1), 1)
    assert (
        run(walker, delivery_instant(first_of.year, first_of.month, SETTINGS) + dt.timedelta(minutes=1))["delivery"]
        == 1
    )
    delivery = [row for row in outbox(walker) if row["kind"] == "disclosure"][-1]
    inner, _ = open_as_recipient(walker, keys, outbox_content(walker, delivery["id"]))
    body = inner.get_body(preferencelist=("plain",))
    assert body is not None
    text = body.get_content()
    for line in ("homes newly registered: 1", "homes closed or removed: 1", "homes whose details changed: 1",
                 "new enforcement actions: 1"):  # fmt: skip
        assert line in text
    changes = next(p for p in inner.iter_attachments() if str(p.get_filename()).endswith("-changes.csv"))
    listed = list(csv.reader(io.StringIO(changes.get_content())))[2:]
    assert sorted(row[1].split(":")[0] for row in listed) == [
        "closed or removed", "details changed", "new enforcement action", "newly registered",
    ]  # fmt: skip
    assert ["SC999991", "newly registered"] in listed


def test_two_runs_at_once_send_once(walker: Gateway, keys: AuthorityKeys) -> None:
    assert process(walker, police_at(keys, MONTHLY, "t1", WALK_START), as_of=WALK_START)["kind"] == "answered"
    started = dt.date.fromisoformat(str(subscriptions(walker)[0]["started_on"]))
    first_of = add_months(started.replace(day=1), 1)
    moment = delivery_instant(first_of.year, first_of.month, SETTINGS) + dt.timedelta(minutes=1)
    command = [sys.executable, "-m", "gateway", "--config", str(walker.config_path), "schedule", "run"]
    runs = [
        subprocess.Popen([*command, "--as-of", moment.isoformat()], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    for running in runs:
        _, err = running.communicate(timeout=120)
        assert running.returncode == 0, err.decode()
    assert [row["kind"] for row in outbox(walker)].count("disclosure") == 2  # the first answer and one delivery


def test_after_downtime_one_delivery_for_the_latest_month(walker: Gateway, keys: AuthorityKeys) -> None:
    assert process(walker, police_at(keys, MONTHLY, "d1", WALK_START), as_of=WALK_START)["kind"] == "answered"
    started = dt.date.fromisoformat(str(subscriptions(walker)[0]["started_on"]))
    late = add_months(started.replace(day=1), 3)
    moment = delivery_instant(late.year, late.month, SETTINGS) + dt.timedelta(days=2)
    assert run(walker, moment)["delivery"] == 1
    assert run(walker, moment + dt.timedelta(days=1))["delivery"] == 0
    events = [r for r in json.loads(walker.ok("audit", "list", "--json")) if r["action"] == "subscription.delivery"]
    assert [e["details"]["key"] for e in events] == [f"{late.year:04d}-{late.month:02d}"]


def test_admins_see_and_change_subscriptions_by_hand(live: Gateway, keys: AuthorityKeys) -> None:
    assert process(live, police_says(keys, MONTHLY, "a1"))["kind"] == "answered"
    [subscription] = subscriptions(live)
    ident = str(subscription["id"])
    shown = json.loads(live.ok("subscription", "show", ident, "--json"))
    assert [step["kind"] for step in shown["history"]] == ["initial"]
    [planned] = json.loads(live.ok("schedule", "show", "--json"))
    assert planned["review_on"] == subscription["review_on"]
    assert planned["next_delivery"].endswith(("06:00+00:00", "05:00+00:00"))  # 06:00 in London, GMT or BST

    later = (dt.date.fromisoformat(str(subscription["review_on"])) + dt.timedelta(days=90)).isoformat()
    out = live.ok("subscription", "extend", ident, "--until", later, "--actor", "alice")
    assert out.strip().endswith(f"now comes up for review on {later}")
    assert subscriptions(live)[0]["review_on"] == later
    past = live.run("subscription", "extend", ident, "--until", "2001-01-01")
    assert past.code == 1
    assert past.err.strip() == "gateway: error: --until 2001-01-01 is not in the future"

    assert "cancelled" in live.ok("subscription", "cancel", ident, "--actor", "alice")
    assert subscriptions(live)[0]["status"] == "cancelled"
    again = live.run("subscription", "cancel", ident)
    assert again.err.strip() == f"gateway: error: subscription {ident} is cancelled, not active"
    records = [r for r in json.loads(live.ok("audit", "list", "--json")) if r["actor"] == "alice"]
    assert [r["action"] for r in records] == ["subscription.extend", "subscription.cancel"]
    assert json.loads(live.ok("schedule", "show", "--json")) == []


def test_a_scheduled_kind_the_gateway_does_not_make_is_withheld_and_recorded_never_sent_as_a_lapse(
    live: Gateway, keys: AuthorityKeys
) -> None:
    """Nothing goes to the authority (a lapse notice would tell it its data had stopped), its subscription stays
    active, and the admins are told once, recorded as withheld like mail that could not be sealed."""
    assert process(live, police_says(keys, MONTHLY, "u1"))["kind"] == "answered"
    settled, events = asyncio.run(settle_unknown_twice(live))
    assert settled == ["skipped", "skipped"]  # still not made the second time
    assert ("withheld", "renewal-offer/2027-01/unknown") in events
    assert not any(kind in ("lapse", "renewal-offer") for kind, _ in events)
    assert [row["status"] for row in subscriptions(live)] == ["active"]
    assert [row["kind"] for row in outbox(live) if row["recipient"] == POLICE_ADDRESS] == ["disclosure"]
    [alert] = [row for row in outbox(live) if row["kind"] == "alert"]  # told once
    told = " ".join(alert_text(live, alert["id"]).split())
    assert "renewal-offer to West Mercia Police not sent" in told
    assert "the gateway does not make scheduled mail of the kind 'renewal-offer'" in told
    assert "This is a fault in the gateway" in told
    audit = json.loads(live.ok("audit", "list", "--json"))
    assert [r["details"]["key"] for r in audit if r["action"] == "subscription.withheld"] == [
        "renewal-offer/2027-01/unknown"
    ]


async def settle_unknown_twice(gateway: Gateway) -> tuple[list[str | None], list[tuple[str, str]]]:
    """The police's subscription given something due of a kind no code makes, an hour apart; then its events."""
    config = load_config(gateway.config_path)
    db = create_database(config.database)
    ctx = Context(config, db, Keyring(config.gpg.home), Templates())
    now = dt.datetime.now(dt.UTC)
    try:
        async with db.transaction(write=False) as session:
            sub = (await session.execute(select(Subscription))).scalar_one()
            query = select(Authority).options(selectinload(Authority.addresses))
            authority = (await session.execute(query)).scalar_one()
        unknown = Due(sub, authority, "renewal-offer", "2027-01")
        settled = [await settle_due(ctx, unknown, now), await settle_due(ctx, unknown, now + dt.timedelta(hours=1))]
        async with db.transaction(write=False) as session:
            events = [(e.kind, e.key) for e in (await session.execute(select(SubscriptionEvent))).scalars()]
    finally:
        await db.close()
    return settled, events


def alert_text(gateway: Gateway, outbox_id: object) -> str:
    mail = message_from_bytes(outbox_content(gateway, outbox_id), policy=policy.default)
    body = mail.get_body(preferencelist=("plain",))
    assert isinstance(body, EmailMessage)
    return str(body.get_content())
