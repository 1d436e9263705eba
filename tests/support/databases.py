"""Real SQLite and PostgreSQL databases for the tests: one new database per test, on both."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from gateway.config import DatabaseSettings, load_config
from gateway.db.engine import create_database, upgrade_schema

POSTGRES_ENV = "GATEWAY_TEST_POSTGRES_URL"
REQUIRE_POSTGRES_ENV = "GATEWAY_TEST_REQUIRE_POSTGRES"


def _postgres_base_url() -> str:
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        reason = f"PostgreSQL tests need {POSTGRES_ENV} (e.g. postgresql+asyncpg://postgres@127.0.0.1:5432/test)"
        if os.environ.get(REQUIRE_POSTGRES_ENV):
            pytest.fail(reason)
        pytest.skip(reason)
    return url


def _asyncpg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def _admin(url: str, statement: str) -> None:
    connection = await asyncpg.connect(_asyncpg_dsn(url), timeout=10)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A new, empty PostgreSQL database for one test, dropped afterwards."""
    base = _postgres_base_url()
    name = f"gateway_test_{uuid.uuid4().hex[:12]}"
    try:
        asyncio.run(_admin(base, f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError) as exc:
        reason = f"PostgreSQL at {base} is not reachable: {exc}"
        if os.environ.get(REQUIRE_POSTGRES_ENV):
            pytest.fail(reason)
        pytest.skip(reason)
    prefix, _, _ = base.rpartition("/")
    try:
        yield f"{prefix}/{name}"
    finally:
        asyncio.run(_admin(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'gateway.db'}"
    else:
        with postgres_database() as url:
            yield url


@pytest.fixture
def database_settings(database_url: str, tmp_path: Path) -> DatabaseSettings:
    """The database settings a config naming this test's database yields, as the gateway reads them."""
    config = tmp_path / "settings-only.toml"
    config.write_text(
        f'[gateway]\naddress = "a@hmci.example"\nadmin_address = "b@hmci.example"\n[database]\nurl = "{database_url}"\n'
    )
    return load_config(config).database


@pytest.fixture
async def migrated_settings(database_settings: DatabaseSettings) -> DatabaseSettings:
    """As database_settings, with the schema already created by the migrations."""
    db = create_database(database_settings)
    try:
        await upgrade_schema(db)
    finally:
        await db.close()
    return database_settings
