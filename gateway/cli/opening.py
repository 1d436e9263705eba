"""What a command opens: the settings, the database at the current schema, the keyring, the mail path's context,
and the files and moments it is handed."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from gateway.compose import Templates
from gateway.config import Config, load_config, resolve_config_path
from gateway.crypto import Keyring
from gateway.db.engine import Database, create_database, require_current_schema
from gateway.errors import GatewayError, UsageError
from gateway.smime.identity import load_identity
from gateway.values import Context


def config_of(args: argparse.Namespace) -> Config:
    return load_config(resolve_config_path(getattr(args, "config", None)))


@asynccontextmanager
async def database(config: Config) -> AsyncIterator[Database]:
    db = create_database(config.database)
    try:
        await require_current_schema(db)
        yield db
    finally:
        await db.close()


def keyring(config: Config) -> Keyring:
    if not config.gpg.home.is_dir():
        raise GatewayError(f"GnuPG home {config.gpg.home} does not exist: run `gateway init` first")
    return Keyring.private(config.gpg.home, config.gpg.binary)


@asynccontextmanager
async def context(config: Config) -> AsyncIterator[Context]:
    """What the mail path, the schedule and quarantine work with."""
    opened = keyring(config)
    identity = load_identity(config)
    async with database(config) as db:
        yield Context(config, db, opened, Templates(config.gateway.templates), smime=identity)


def read_file(path: str, what: str) -> bytes:
    """The bytes of a file an admin hands over ('-' = stdin), or one line saying why they cannot be read."""
    try:
        return sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise GatewayError(f"cannot read {what} {path}: {exc.strerror}") from None


def moment(value: str | None, option: str = "--since") -> dt.datetime | None:
    """An ISO date or date-time from the command line, in UTC (UTC unless it says otherwise)."""
    if value is None:
        return None
    try:
        when = dt.datetime.fromisoformat(value)
        return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)
    except (ValueError, OverflowError):
        raise UsageError(f"{option} {value!r}: expected an ISO date or date-time, e.g. 2026-11-01") from None
