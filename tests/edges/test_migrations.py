"""The Alembic migrations build exactly the schema the models describe, on both databases."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection

from gateway.config import DatabaseSettings
from gateway.db.engine import create_database, head_revision, upgrade_schema
from gateway.db.models import Base


async def test_migrated_schema_matches_the_models(database_settings: DatabaseSettings) -> None:
    db = create_database(database_settings)
    try:
        assert await upgrade_schema(db) == (None, head_revision())
        assert await upgrade_schema(db) == (head_revision(), head_revision())

        def differences(connection: Connection) -> list[object]:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return list(compare_metadata(context, Base.metadata))

        async with db.engine.connect() as connection:
            assert await connection.run_sync(differences) == []
    finally:
        await db.close()
