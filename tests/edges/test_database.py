"""SQLite is opened the way concurrent writers need: WAL, a busy timeout, foreign keys, BEGIN IMMEDIATE."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from gateway.config import DatabaseSettings, Secret
from gateway.db.engine import SQLITE_BUSY_TIMEOUT_MS, Database, create_database, upgrade_schema


@contextlib.asynccontextmanager
async def notes_database(tmp_path: Path, *notes: str, query: str = "") -> AsyncIterator[Database]:
    """A migrated SQLite database (`query` added to its URL) with a `notes` table holding these notes."""
    db = create_database(DatabaseSettings(Secret(f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}{query}")))
    try:
        await upgrade_schema(db)
        async with db.transaction() as session:
            await session.execute(text("CREATE TABLE notes (body TEXT)"))
            for note in notes:
                await session.execute(text("INSERT INTO notes VALUES (:body)"), {"body": note})
        yield db
    finally:
        await db.close()


async def read_notes(db: Database) -> list[str]:
    async with db.transaction(write=False) as reader:
        return list((await reader.execute(text("SELECT body FROM notes ORDER BY rowid"))).scalars())


async def test_sqlite_connections_are_set_up_for_concurrent_writers(tmp_path: Path) -> None:
    file = tmp_path / "gateway.db"
    db = create_database(DatabaseSettings(Secret(f"sqlite+aiosqlite:///{file}")))
    try:
        await upgrade_schema(db)
        async with db.transaction() as session:
            pragmas = {
                name: (await session.execute(text(f"PRAGMA {name}"))).scalar()
                for name in ("journal_mode", "busy_timeout", "foreign_keys")
            }
            # Nothing has been written yet, but BEGIN IMMEDIATE already holds the write lock, so another
            # writer waits at its start instead of failing half-way with "database is locked".
            other = sqlite3.connect(file, timeout=0, isolation_level=None)
            try:
                with pytest.raises(sqlite3.OperationalError, match="database is locked"):
                    other.execute("BEGIN IMMEDIATE")
            finally:
                other.close()
    finally:
        await db.close()
    assert pragmas == {"journal_mode": "wal", "busy_timeout": SQLITE_BUSY_TIMEOUT_MS, "foreign_keys": 1}


async def test_sqlite_readers_see_the_last_commit_while_a_writer_holds_the_lock_and_cannot_write(
    tmp_path: Path,
) -> None:
    """Readers run on the event loop's thread (no aiosqlite hop): they must never wait for a lock there."""
    async with notes_database(tmp_path, "first") as db:
        async with db.transaction() as writer:
            await writer.execute(text("INSERT INTO notes VALUES ('second')"))
            async with db.transaction(write=False) as reader:  # the writer's lock held all along
                seen = (await reader.execute(text("SELECT body FROM notes"))).scalars().all()
                pragmas = {
                    name: (await reader.execute(text(f"PRAGMA {name}"))).scalar()
                    for name in ("journal_mode", "foreign_keys", "query_only")
                }
        with pytest.raises(DBAPIError, match="attempt to write a readonly database"):
            async with db.transaction(write=False) as reader:
                await reader.execute(text("INSERT INTO notes VALUES ('through a reader')"))
        after = await read_notes(db)
    assert seen == ["first"]
    assert pragmas == {"journal_mode": "wal", "foreign_keys": 1, "query_only": 1}
    assert after == ["first", "second"]


async def test_sqlite_readers_and_writers_open_the_same_file_whatever_the_url_carries(tmp_path: Path) -> None:
    """Readers are opened by the gateway itself, writers by SQLAlchemy: a query in the URL must not split them."""
    async with notes_database(tmp_path, "written", query="?timeout=5") as db:
        seen = await read_notes(db)
    assert seen == ["written"]
    assert sorted(path.name for path in tmp_path.iterdir() if not path.name.endswith(("-wal", "-shm"))) == [
        "gateway.db"
    ]


async def test_writers_take_turns_in_order_with_bookkeeping_first_and_a_cancelled_one_holds_no_one_up(
    tmp_path: Path,
) -> None:
    """The process's writers queue for their turn (SQLite's own lock polls, and leaves itself idle between tries):
    short bookkeeping goes before waiting ordinary writes, and a writer cancelled while waiting, or just as its
    turn came, passes the turn on."""
    order: list[str] = []
    release = asyncio.Event()
    waiting: dict[str, asyncio.Task[None]] = {}

    async def write(db: Database, name: str, *, ahead: bool = False) -> None:
        async with db.transaction(ahead=ahead) as session:
            order.append(name)
            await session.execute(text("INSERT INTO notes VALUES (:name)"), {"name": name})
            if name == "holder":
                await release.wait()
        if name == "holder":  # as a shutdown cancels every task at once:
            waiting["handed"].cancel()  # its turn has just come, before it could take it: it must pass it on
            waiting["skipped"].cancel()  # next in line, so `handed` finds it cancelled and skips it

    async with notes_database(tmp_path) as db:
        holder = asyncio.create_task(write(db, "holder"))
        while not order:
            await asyncio.sleep(0.01)
        queue = (
            ("first", False),
            ("gone", False),
            ("handed", True),
            ("skipped", True),
            ("second", False),
            ("book", True),
        )
        for name, ahead in queue:
            waiting[name] = asyncio.create_task(write(db, name, ahead=ahead))
            await asyncio.sleep(0.01)  # queued in this order
        waiting["gone"].cancel()
        release.set()
        results = await asyncio.wait_for(asyncio.gather(holder, *waiting.values(), return_exceptions=True), 10)
        stored = await read_notes(db)
    assert order == ["holder", "book", "first", "second"]
    assert stored == order
    failed = {name: type(result).__name__ for name, result in zip(["holder", *waiting], results, strict=True) if result}
    assert failed == {"gone": "CancelledError", "handed": "CancelledError", "skipped": "CancelledError"}
