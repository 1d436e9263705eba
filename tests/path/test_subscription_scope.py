"""A subscription lives only as long as its authority's registration allows it, and goes to the address that asked."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Connection, select, text, update

from gateway import schedule as schedule_module
from gateway.config import DatabaseSettings, load_config
from gateway.db.engine import _alembic_config, create_database, head_revision, upgrade_schema
from gateway.db.models import Authority, Subscription
from gateway.values import Context
from tests.support.addresses import ADMIN_ADDRESS, LA_ADDRESS, OCC_ADDRESS, POLICE_ADDRESS
from tests.support.admins import two_person
from tests.support.areas import DELIVERY, MONTHLY, asks
from tests.support.gateway_cli import Gateway
from tests.support.keys import AdminKeys, AuthorityKeys
from tests.support.live import audit_actions, details, open_as_recipient, outbox, outbox_content, subscriptions
from tests.support.schedule import run as schedule

# Fixed, as ASKED and DELIVERY in tests/support/areas.py: no signature's age depends on today's date.
NEXT_DELIVERY = dt.datetime(2027, 3, 1, 6, 1, tzinfo=dt.UTC)


def body_of(gateway: Gateway, keys: AuthorityKeys, outbox_id: object) -> str:
    inner, _ = open_as_recipient(gateway, keys, outbox_content(gateway, outbox_id))
    body = inner.get_body(preferencelist=("plain",))
    assert body is not None
    return str(body.get_content())


def delivered_areas(gateway: Gateway, keys: AuthorityKeys, outbox_id: object) -> set[tuple[str, str]]:
    """The (police force area, local authority) of each home in a delivery, read as its recipient reads it."""
    inner, _ = open_as_recipient(gateway, keys, outbox_content(gateway, outbox_id))
    [homes] = [part for part in inner.iter_attachments() if str(part.get_filename()).endswith("-homes.csv")]
    rows = list(csv.reader(io.StringIO(homes.get_content())))[1:]  # the marking line first
    header = rows[0]
    pfa, la = header.index("police_force_area"), header.index("local_authority")
    return {(row[pfa], row[la]) for row in rows[1:]}


def admin_alerts(gateway: Gateway) -> list[str]:
    return [
        outbox_content(gateway, row["id"]).decode().replace("\r\n ", " ")  # header fields unfolded (RFC 5322)
        for row in outbox(gateway)
        if row["kind"] == "alert" and row["recipient"] == ADMIN_ADDRESS
    ]


def by_area(gateway: Gateway) -> dict[str, dict[str, object]]:
    return {str(row["area"]): row for row in subscriptions(gateway)}


def test_a_national_authority_made_local_keeps_only_what_it_may_still_see(
    live: Gateway, keys: AuthorityKeys, admin_keys: AdminKeys, tmp_path: Path
) -> None:
    """The issue's case, through the two-person rule: the change ends the England subscription when approved."""
    live.ok(
        "authority", "add", "--name", "Children's Commissioner", "--kind", "childrens-commissioner",
        "--email", OCC_ADDRESS, "--key", str(keys.occ.write(tmp_path, "occ.asc")),
    )  # fmt: skip
    assert asks(live, OCC_ADDRESS, MONTHLY, "england")["kind"] == "answered"
    assert asks(live, OCC_ADDRESS, MONTHLY + "Area: Shropshire local authority\r\n", "salop")["kind"] == "answered"
    assert {area: row["status"] for area, row in by_area(live).items()} == {
        "all of England": "active", "Shropshire local authority area": "active",
    }  # fmt: skip

    two_person(live, admin_keys)
    asked = live.run(
        "authority", "update", "Children's Commissioner", "--kind", "local-authority", "--area", "Shropshire",
        *admin_keys.alice.signing(),
    )  # fmt: skip
    assert asked.out.startswith("change 1 proposed; it needs two admins' signatures.")
    [preview] = [line for line in asked.err.splitlines() if "if approved" in line]  # what alice is told
    assert "subscription 1 (all of England, register@occ.example) ended" in preview
    assert by_area(live)["all of England"]["status"] == "active"  # nothing happens until it is approved
    assert not [row for row in outbox(live) if row["kind"] == "subscription-end"]

    live.ok("change", "approve", "1", *admin_keys.bob.signing())
    areas = by_area(live)
    assert (areas["all of England"]["status"], areas["Shropshire local authority area"]["status"]) == (
        "ended", "active",
    )  # fmt: skip
    [notice] = [row for row in outbox(live) if row["kind"] == "subscription-end"]
    assert notice["recipient"] == OCC_ADDRESS
    told = body_of(live, keys, notice["id"])
    assert "monthly subscription for all of England" in told
    assert "outside your own area (Shropshire local authority area)" in told
    [alert] = [text for text in admin_alerts(live) if "subscriptions of Children's Commissioner ended" in text]
    assert "all of England" in alert
    [ended] = audit_actions(live, "subscription.end")
    assert (ended["actor"], details(ended)["area"]) == (
        f"admin {admin_keys.alice.fingerprint}, approved by admin {admin_keys.bob.fingerprint}",
        "all of England",
    )

    # The next delivery carries Shropshire only; the ended subscription sends nothing, now or later.
    counts = schedule(live, DELIVERY)
    assert (counts["delivery"], counts["ended"]) == (1, 0)
    [delivery] = [row for row in outbox(live) if row["kind"] == "disclosure"][-1:]
    assert {la for _, la in delivered_areas(live, keys, delivery["id"])} == {"Shropshire"}
    assert schedule(live, NEXT_DELIVERY)["delivery"] == 1
    assert live.run("audit", "verify").code == 0


def _change_directly(gateway: Gateway, **values: object) -> None:
    """An authority's registration as another gateway's admin, or an older release, left it: no allowlist here."""

    async def change() -> None:
        db = create_database(load_config(gateway.config_path).database)
        try:
            async with db.transaction() as session:
                await session.execute(update(Authority).values(**values))
        finally:
            await db.close()

    asyncio.run(change())


def test_each_delivery_asks_the_scope_rules_at_the_moment_of_delivery(live: Gateway, keys: AuthorityKeys) -> None:
    assert asks(live, POLICE_ADDRESS, MONTHLY, "wm")["kind"] == "answered"
    _change_directly(live, area="Kent")  # the force's registration now covers Kent, not West Mercia
    counts = schedule(live, DELIVERY)
    assert (counts["delivery"], counts["ended"]) == (0, 1)
    assert not [row for row in outbox(live) if row["kind"] == "disclosure" and row["id"] != outbox(live)[0]["id"]]
    assert subscriptions(live)[0]["status"] == "ended"
    [notice] = [row for row in outbox(live) if row["kind"] == "subscription-end"]
    assert "outside your own area (Kent police force area)" in body_of(live, keys, notice["id"])
    assert len([text for text in admin_alerts(live) if "West Mercia police force area" in text]) == 1
    assert [r["actor"] for r in audit_actions(live, "subscription.end")] == ["gateway"]
    again = schedule(live, DELIVERY + dt.timedelta(hours=1))
    assert (again["delivery"], again["ended"]) == (0, 0)  # ended once, and nothing after


def test_a_subscription_goes_to_the_address_that_asked_and_ends_with_it(
    live: Gateway, keys: AuthorityKeys, tmp_path: Path
) -> None:
    # A key for both addresses; the council's address sorts first, the request comes from the other.
    live.ok("authority", "set-key", "West Mercia Police", str(keys.police_and_la.write(tmp_path, "both.asc")))
    live.ok("authority", "update", "West Mercia Police", "--add-email", LA_ADDRESS)
    assert LA_ADDRESS < POLICE_ADDRESS
    assert asks(live, POLICE_ADDRESS, MONTHLY, "wm")["kind"] == "answered"
    [subscription] = subscriptions(live)
    assert subscription["address"] == POLICE_ADDRESS
    assert schedule(live, DELIVERY)["delivery"] == 1
    delivery = [row for row in outbox(live) if row["kind"] == "disclosure"][-1]
    assert delivery["recipient"] == POLICE_ADDRESS

    # The address that asked is taken off: the subscription ends, and the notice goes to an address it still has.
    changed = live.run("authority", "update", "West Mercia Police", "--remove-email", POLICE_ADDRESS)
    assert changed.code == 0
    assert f"{POLICE_ADDRESS} is no longer one of the authority's registered addresses" in changed.err
    assert subscriptions(live)[0]["status"] == "ended"
    [notice] = [row for row in outbox(live) if row["kind"] == "subscription-end"]
    assert notice["recipient"] == LA_ADDRESS
    assert "has ended" in body_of(live, keys, notice["id"])
    assert schedule(live, NEXT_DELIVERY)["delivery"] == 0


def test_suspension_pauses_deliveries_and_removal_ends_them(live: Gateway, keys: AuthorityKeys) -> None:
    assert asks(live, POLICE_ADDRESS, MONTHLY, "wm")["kind"] == "answered"
    suspended = live.run("authority", "suspend", "West Mercia Police")
    assert "1 monthly subscription(s) paused while 'West Mercia Police' is suspended" in suspended.err
    sent = len(outbox(live))
    counts = schedule(live, DELIVERY)
    assert (counts["delivery"], counts["skipped"]) == (0, 1)
    assert [row for row in outbox(live)[sent:] if row["recipient"] == POLICE_ADDRESS] == []  # nothing at all
    assert subscriptions(live)[0]["status"] == "active"

    live.ok("authority", "resume", "West Mercia Police")
    assert schedule(live, DELIVERY + dt.timedelta(hours=1))["delivery"] == 1  # the paused month, once resumed

    live.ok("authority", "remove", "West Mercia Police")
    assert subscriptions(live) == []
    [ended] = audit_actions(live, "subscription.end")
    assert details(ended)["why"] == "the authority's registration was removed"
    [notice] = [row for row in outbox(live) if row["kind"] == "subscription-end"]
    assert notice["recipient"] == POLICE_ADDRESS
    assert "registration was removed" in body_of(live, keys, notice["id"])
    assert any("registration was removed" in text for text in admin_alerts(live))
    assert schedule(live, NEXT_DELIVERY)["delivery"] == 0


async def test_existing_subscriptions_get_the_address_that_asked_when_still_registered(
    database_settings: DatabaseSettings,
) -> None:
    """Migration 0012 on rows an earlier release wrote: the asking message's sender while it is still the
    authority's, else the authority's first address, where that release sent its deliveries."""
    db = create_database(database_settings)
    now, day = dt.datetime(2027, 1, 12, tzinfo=dt.UTC), dt.date(2027, 1, 12)

    def before_0012(connection: Connection) -> None:
        command.upgrade(_alembic_config(connection), "0011")
        connection.execute(
            text(
                "INSERT INTO authorities (id, name, name_key, kind, area, auth_policy, status, key_fingerprint, "
                "created_at, updated_at) VALUES (1, 'Force', 'force', 'police', 'West Mercia', 'pgp', 'active', "
                "'F00D', :now, :now)"
            ),
            {"now": now},
        )
        for address in ("b@force.example", "a@force.example"):
            connection.execute(text("INSERT INTO authority_addresses VALUES (:a, 1)"), {"a": address})
        for ident, sender in ((1, "b@force.example"), (2, "gone@force.example")):
            connection.execute(
                text(
                    "INSERT INTO inbound_messages (id, sha256, source, received_at, sender, authority_id, outcome, "
                    "reason, size) VALUES (:id, :sha, 'file', :now, :sender, 1, 'answered', '', 1)"
                ),
                {"id": ident, "sha": str(ident) * 64, "now": now, "sender": sender},
            )
        for ident, inbound in ((1, 1), (2, 2), (3, None)):
            connection.execute(
                text(
                    "INSERT INTO subscriptions (id, authority_id, police_force_area, area, status, started_on, "
                    "review_on, purpose, created_by_inbound_id, updated_at) VALUES (:id, 1, 'West Mercia', "
                    "'West Mercia police force area', 'active', :day, :day, 'p', :inbound, :now)"
                ),
                {"id": ident, "day": day, "inbound": inbound, "now": now},
            )

    try:
        async with db.engine.begin() as connection:
            await connection.run_sync(before_0012)
        upgrade = await upgrade_schema(db)
        assert (upgrade.before, upgrade.after) == ("0011", head_revision())
        async with db.transaction(write=False) as session:
            rows = (
                await session.execute(select(Subscription.id, Subscription.address).order_by(Subscription.id))
            ).all()
        assert [tuple(row) for row in rows] == [(1, "b@force.example"), (2, "a@force.example"), (3, "a@force.example")]
    finally:
        await db.close()


def test_an_authority_whose_key_cannot_be_used_is_not_told_in_plaintext(live: Gateway) -> None:
    assert asks(live, POLICE_ADDRESS, MONTHLY, "wm")["kind"] == "answered"
    [police] = json.loads(live.ok("authority", "list", "--json"))
    subprocess.run(
        ["gpg", "--homedir", str(live.gnupg_home), "--batch", "--yes", "--delete-keys", police["key_fingerprint"]],
        check=True, capture_output=True,
    )  # fmt: skip
    changed = live.run("authority", "update", "West Mercia Police", "--area", "Kent")
    assert changed.code == 0, changed.err
    assert subscriptions(live)[0]["status"] == "ended"
    assert [row for row in outbox(live) if row["recipient"] == POLICE_ADDRESS][1:] == []  # only the first answer
    [alert] = [text for text in admin_alerts(live) if "subscriptions of West Mercia Police ended" in text]
    assert "not told: no notice could be encrypted to its key" in " ".join(alert.split())
    assert str(details(audit_actions(live, "subscription.end")[0])["told"]).startswith("not told")


def overtake_delivery(monkeypatch: pytest.MonkeyPatch, change: Any) -> None:
    """Commit `change` (an UPDATE), as another admin's command would from elsewhere, after the schedule run read
    the subscription and while it built and sealed the delivery."""
    building = schedule_module._prepare_delivery

    async def overtaken(ctx: Context, due: Any, reference: str, common: dict[str, Any]) -> Any:
        prepared = await building(ctx, due, reference, common)
        async with ctx.db.transaction() as session:
            await session.execute(change)
        return prepared

    monkeypatch.setattr(schedule_module, "_prepare_delivery", overtaken)


def test_a_change_committed_while_a_delivery_is_being_made_stops_it(
    live: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rule is asked again where the delivery is recorded: a change that lands after the run read the
    subscription, while the extract was being built and encrypted, still stops it."""
    assert asks(live, POLICE_ADDRESS, MONTHLY, "wm")["kind"] == "answered"
    overtake_delivery(monkeypatch, update(Authority).values(area="Kent"))
    assert schedule(live, DELIVERY)["delivery"] == 0
    assert [row["kind"] for row in outbox(live)] == ["disclosure"]  # the first answer only
    assert schedule(live, DELIVERY + dt.timedelta(hours=1))["ended"] == 1  # and the next run ends it


def test_a_key_replaced_while_a_delivery_is_being_sealed_stops_it(
    live: Gateway, keys: AuthorityKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An extract sealed to a key that was replaced meanwhile (a key reported compromised) is never queued."""
    assert asks(live, POLICE_ADDRESS, MONTHLY, "wm-key")["kind"] == "answered"
    overtake_delivery(monkeypatch, update(Authority).values(key_fingerprint=keys.police_renewed.fingerprint))
    assert schedule(live, DELIVERY)["delivery"] == 0
    assert [row["kind"] for row in outbox(live)] == ["disclosure"]  # the first answer only
