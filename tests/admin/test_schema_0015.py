"""Migration 0015 (S/MIME per address): every registration and what refers to it survives the upgrade."""

from __future__ import annotations

import datetime as dt

from alembic import command
from sqlalchemy import Connection, text

from gateway.config import DatabaseSettings
from gateway.db.engine import _alembic_config, create_database, upgrade_schema

NOW = dt.datetime(2026, 11, 30, tzinfo=dt.UTC)


async def test_the_upgrade_keeps_every_registration_and_renames_the_pgp_policies(
    database_settings: DatabaseSettings,
) -> None:
    db = create_database(database_settings)
    try:

        def old_schema(connection: Connection) -> None:
            command.upgrade(_alembic_config(connection), "0014")
            for ident, policy in ((1, "pgp"), (2, "pgp-or-dmarc"), (3, "dmarc")):
                connection.execute(
                    text(
                        "INSERT INTO authorities (id, name, name_key, kind, area, auth_policy, status, "
                        "key_fingerprint, created_at, updated_at) VALUES (:id, :name, :name, 'police', 'Kent', "
                        ":policy, 'active', :key, :now, :now)"
                    ),
                    {"id": ident, "name": f"force {ident}", "policy": policy, "key": str(ident) * 40, "now": NOW},
                )
                connection.execute(
                    text("INSERT INTO authority_addresses (address, authority_id) VALUES (:a, :id)"),
                    {"a": f"duty@force{ident}.example", "id": ident},
                )
            connection.execute(
                text(
                    "INSERT INTO subscriptions (id, authority_id, police_force_area, area, status, started_on, "
                    "review_on, purpose, updated_at, address) VALUES (1, 2, 'Kent', 'Kent police force area', "
                    "'active', :day, :day, 'p', :now, 'duty@force2.example')"
                ),
                {"day": NOW.date(), "now": NOW},
            )

        async with db.engine.begin() as connection:
            await connection.run_sync(old_schema)
        await upgrade_schema(db)
        async with db.engine.begin() as connection:
            policies = (await connection.execute(text("SELECT id, auth_policy FROM authorities ORDER BY id"))).all()
            addresses = (
                await connection.execute(
                    text("SELECT address, method, cert_fingerprint FROM authority_addresses ORDER BY address")
                )
            ).all()
            subscriptions = (await connection.execute(text("SELECT id, authority_id FROM subscriptions"))).all()
            # An authority without an OpenPGP key can now be registered (its addresses take S/MIME).
            await connection.execute(
                text(
                    "INSERT INTO authorities (id, name, name_key, kind, area, auth_policy, status, key_fingerprint, "
                    "created_at, updated_at) VALUES (4, 'x', 'x', 'police', 'Kent', 'signed', 'active', NULL, :n, :n)"
                ),
                {"n": NOW},
            )
        assert [tuple(row) for row in policies] == [(1, "signed"), (2, "signed-or-dmarc"), (3, "dmarc")]
        assert [tuple(row) for row in addresses] == [
            (f"duty@force{ident}.example", "openpgp", None) for ident in (1, 2, 3)
        ]
        assert [tuple(row) for row in subscriptions] == [(1, 2)]  # not cascaded away by SQLite's table rebuild
    finally:
        await db.close()
