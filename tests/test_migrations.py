"""The Alembic migrations build exactly the schema the models describe, on both databases."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection

from gateway.config import load_config
from gateway.db.engine import create_database, head_revision, upgrade_schema
from gateway.db.models import Base


async def test_migrated_schema_matches_the_models(database_url: str, tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[gateway]\naddress = "a@hmci.example"\nadmin_address = "b@hmci.example"\n[database]\nurl = "{database_url}"\n'
    )
    db = create_database(load_config(config).database)
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
