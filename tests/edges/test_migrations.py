"""The Alembic migrations build exactly the schema the models describe, on both databases."""

from __future__ import annotations

import stat
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection

from gateway.config import DatabaseSettings, Secret
from gateway.db.engine import Upgrade, create_database, head_revision, upgrade_schema
from gateway.db.models import Base


async def test_migrated_schema_matches_the_models(database_settings: DatabaseSettings) -> None:
    db = create_database(database_settings)
    try:
        assert await upgrade_schema(db) == Upgrade(None, head_revision())
        assert await upgrade_schema(db) == Upgrade(head_revision(), head_revision())

        def differences(connection: Connection) -> list[object]:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return list(compare_metadata(context, Base.metadata))

        async with db.engine.connect() as connection:
            assert await connection.run_sync(differences) == []
    finally:
        await db.close()


async def test_migrating_an_sqlite_database_open_to_others_makes_its_file_private_and_says_so_once(
    tmp_path: Path,
) -> None:
    """What `gateway init` prints: the upgrade tightens the mode before it opens the file, and says so."""
    file = tmp_path / "gateway.db"
    file.touch(mode=0o644)
    file.chmod(0o644)  # whatever the umask
    db = create_database(DatabaseSettings(Secret(f"sqlite+aiosqlite:///{file}")))
    try:
        first = await upgrade_schema(db)
        again = await upgrade_schema(db)
    finally:
        await db.close()
    assert first.made_private == (f"database file {file} was open to other users (mode 0644): made 0600",)
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert again == Upgrade(head_revision(), head_revision())  # private already: nothing to say
