"""Admins are OpenPGP keys: two registered at set-up, any later one only by the two-person rule."""

from __future__ import annotations

import datetime as dt
import json

from alembic import command
from sqlalchemy import Connection, text

from gateway import audit
from gateway.config import DatabaseSettings
from gateway.db.engine import _alembic_config, create_database, upgrade_schema
from tests.support.admins import add_police, signature_file, two_person
from tests.support.gateway_cli import Gateway
from tests.support.keys import AdminKeys, AuthorityKeys


def admins(gateway: Gateway) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = json.loads(gateway.ok("admin", "list", "--json"))
    return rows


def test_the_first_two_admins_are_set_up_with_their_fingerprints_shown(gateway: Gateway, admin_keys: AdminKeys) -> None:
    alice = gateway.ok("admin", "add", "--key", str(admin_keys.alice.write(gateway.directory)), "--name", "Alice")
    assert f"fingerprint:    {admin_keys.alice.fingerprint}" in alice
    assert "user ID:        Alice <alice@hmci.example>" in alice
    assert "confirm this fingerprint with the admin in person or by phone" in alice
    gateway.ok("admin", "add", "--key", str(admin_keys.bob.write(gateway.directory)), "--name", "Bob")
    assert [(a["name"], a["proposed_by"], a["approved_by"]) for a in admins(gateway)] == [
        ("Alice", None, None), ("Bob", None, None),
    ]  # fmt: skip
    setup = [r for r in json.loads(gateway.ok("audit", "list", "--json")) if r["action"] == "admin.setup"]
    assert [r["subject"] for r in setup] == [admin_keys.alice.fingerprint, admin_keys.bob.fingerprint]

    # A third only as a proposal: whoever can run the command cannot make themselves an admin alone.
    third = gateway.run("admin", "add", "--key", str(admin_keys.mallory.write(gateway.directory)), "--name", "Eve")
    assert third.code == 0, third.err
    assert third.out.startswith("change 1 proposed; it needs two admins' signatures.")
    assert len(admins(gateway)) == 2
    again = gateway.run("admin", "add", "--key", str(admin_keys.alice.write(gateway.directory)), "--name", "Alice 2")
    assert again.code == 1
    assert again.err.strip() == f"gateway: error: key {admin_keys.alice.fingerprint} is already registered as an admin"


def test_a_third_admin_is_added_by_two_admins_and_can_then_approve(
    gateway: Gateway, keys: AuthorityKeys, admin_keys: AdminKeys
) -> None:
    alice, bob, carol = admin_keys.alice, admin_keys.bob, admin_keys.carol
    two_person(gateway, admin_keys)
    gateway.ok("admin", "add", "--key", str(carol.write(gateway.directory)), "--name", "Carol", *alice.signing())
    statement = gateway.ok("change", "show", "1")
    assert 'kind: "admin-add"' in statement
    assert 'admin-name: "Carol"' in statement
    assert f'key-fingerprint: "{carol.fingerprint}"' in statement
    assert 'key-user-id: "Carol <carol@hmci.example>"' in statement
    # Carol's key cannot yet approve anything, not even her own registration.
    early = gateway.run("change", "approve", "1", *carol.signing())
    assert early.code == 1
    assert "the signature is not by a registered admin's key" in early.err
    assert gateway.ok("change", "approve", "1", *bob.signing()).strip() == (
        "change 1 approved and made: register admin 'Carol'"
    )
    [_, _, added] = admins(gateway)
    assert (added["fingerprint"], added["proposed_by"], added["approved_by"]) == (
        carol.fingerprint, alice.fingerprint, bob.fingerprint,
    )  # fmt: skip

    assert add_police(gateway, keys.police, *alice.signing()).code == 0
    gateway.ok(
        "change", "approve", "2", "--signature", signature_file(gateway, carol, gateway.ok("change", "show", "2"))
    )
    assert json.loads(gateway.ok("authority", "list", "--json"))[0]["name"] == "West Mercia Police"


def test_an_admin_key_and_an_authority_key_are_never_the_same(
    gateway: Gateway, keys: AuthorityKeys, admin_keys: AdminKeys
) -> None:
    assert add_police(gateway, keys.police).code == 0  # the rule is off: set up as one admin
    police = gateway.run("admin", "add", "--key", str(keys.police.write(gateway.directory, "p.asc")), "--name", "P")
    assert police.code == 1
    assert "is pinned for authority 'West Mercia Police': an admin needs a key of their own" in police.err
    own = gateway.ok("key", "export")
    (gateway.directory / "own.asc").write_text(own)
    refused = gateway.run("admin", "add", "--key", str(gateway.directory / "own.asc"), "--name", "Gateway")
    assert refused.code == 1
    assert refused.err.strip() == "gateway: error: that is the gateway's own key, not an admin's"
    gateway.ok("admin", "add", "--key", str(admin_keys.alice.write(gateway.directory)), "--name", "Alice")
    key = gateway.directory / "alice.asc"
    key.write_bytes(admin_keys.alice.public)
    as_authority = gateway.run("authority", "set-key", "West Mercia Police", str(key))
    assert as_authority.code == 1
    assert f"key {admin_keys.alice.fingerprint}" in as_authority.err


async def test_the_upgrade_cancels_changes_pending_under_the_old_rule(database_settings: DatabaseSettings) -> None:
    db = create_database(database_settings)
    try:

        def old_schema(connection: Connection) -> None:
            command.upgrade(_alembic_config(connection), "0011")
            connection.execute(
                text(
                    "INSERT INTO pending_changes (kind, authority, payload, summary, requested_by, requested_at,"
                    " status) VALUES ('resume', 'West Mercia Police', '{}', 'resume', 'alice', :at, 'pending')"
                ),
                {"at": dt.datetime(2026, 11, 30, tzinfo=dt.UTC)},
            )

        async with db.engine.begin() as connection:
            await connection.run_sync(old_schema)
        await upgrade_schema(db)
        async with db.engine.connect() as connection:
            status = (await connection.execute(text("SELECT status, decided_by FROM pending_changes"))).one()
            records = (await connection.execute(text("SELECT actor, action, details FROM audit_log"))).all()
        assert tuple(status) == ("cancelled", "migration 0013")
        [(actor, action, details)] = records
        assert (actor, action, json.loads(details)["changes"]) == ("migration 0013", "change.cancel", [1])
        assert "propose it again, signed with a registered admin key" in json.loads(details)["why"]
        async with db.transaction(write=False) as session:
            assert (await audit.verify(session)).ok
    finally:
        await db.close()


def test_an_admin_is_removed_by_two_others_and_two_always_remain(
    gateway: Gateway, keys: AuthorityKeys, admin_keys: AdminKeys
) -> None:
    alice, bob, carol = admin_keys.alice, admin_keys.bob, admin_keys.carol
    two_person(gateway, admin_keys)
    too_few = gateway.run("admin", "remove", alice.fingerprint, *bob.signing())
    assert too_few.code == 1
    assert "only 2 admins are active: register another before removing one" in too_few.err
    gateway.ok("admin", "add", "--key", str(carol.write(gateway.directory)), "--name", "Carol", *alice.signing())
    gateway.ok("change", "approve", "1", *bob.signing())

    gateway.ok("admin", "remove", alice.fingerprint, *bob.signing())
    statement = gateway.ok("change", "show", "2")
    assert f'admin-fingerprint: "{alice.fingerprint}"' in statement
    assert 'admin-name: "Alice"' in statement
    assert gateway.ok("change", "approve", "2", *carol.signing()).strip() == (
        f"change 2 approved and made: remove admin 'Alice' (key {alice.fingerprint})"
    )
    assert [(a["name"], a["status"]) for a in admins(gateway)] == [
        ("Alice", "removed"), ("Bob", "active"), ("Carol", "active"),
    ]  # fmt: skip
    # Alice's key no longer counts, as a proposer or an approver.
    assert add_police(gateway, keys.police).code == 0
    refused = gateway.run("change", "sign", "3", *alice.signing())
    assert refused.code == 1
    assert "the signature is not by a registered admin's key" in refused.err
    gateway.ok("change", "sign", "3", *bob.signing())
    assert gateway.run("change", "approve", "3", *alice.signing()).code == 1
    gateway.ok("change", "approve", "3", *carol.signing())
