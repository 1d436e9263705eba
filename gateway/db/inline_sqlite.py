"""SQLite readers for the async engine, run on the event loop's own thread.

aiosqlite gives each connection a thread and hands it every call (open a cursor, execute, fetch, close): four
thread hops a statement, each a wake-up and a hand-over of the interpreter lock. In a burst that was most of
the daemon's system time. A read transaction under WAL never waits for a lock (it reads the last commit, and
"BEGIN" takes no lock), and its statements are short, so readers do without the thread: this connection
offers aiosqlite's coroutine interface and runs each call at once. Writers keep aiosqlite: their BEGIN
IMMEDIATE can wait for another writer, and their commit waits for the disk.

Only `Database.transaction(write=False)` uses it. A write through it is refused by SQLite (`query_only`), never
left to wait on the loop's thread. Not offered, because no reader needs them: changing the isolation level
(AUTOCOMMIT) and streaming results (server-side cursors).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any


class InlineCursor:
    """aiosqlite's Cursor interface over a sqlite3 cursor; every call done at once."""

    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._cursor = cursor

    async def __aenter__(self) -> InlineCursor:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self._cursor.close()

    @property
    def description(self) -> Any:
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    @property
    def arraysize(self) -> int:
        return self._cursor.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._cursor.arraysize = value

    async def execute(self, sql: str, parameters: Sequence[Any] | dict[str, Any] = ()) -> InlineCursor:
        self._cursor.execute(sql, parameters)
        return self

    async def executemany(self, sql: str, parameters: Iterable[Sequence[Any]]) -> InlineCursor:
        self._cursor.executemany(sql, parameters)
        return self

    async def fetchone(self) -> Any:
        return self._cursor.fetchone()

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        return self._cursor.fetchmany(self._cursor.arraysize if size is None else size)

    async def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    async def close(self) -> None:
        self._cursor.close()


class InlineConnection:
    """aiosqlite's Connection interface, as much of it as SQLAlchemy's aiosqlite dialect uses."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection: sqlite3.Connection | None = connection

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._connection is None:
            raise ValueError("no active connection")
        return self._connection

    @property
    def isolation_level(self) -> str | None:
        return self._conn.isolation_level

    def cursor(self) -> InlineCursor:
        return InlineCursor(self._conn.cursor())

    async def commit(self) -> None:
        self._conn.commit()

    async def rollback(self) -> None:
        self._conn.rollback()

    async def create_function(self, *args: Any, **kwargs: Any) -> None:
        self._conn.create_function(*args, **kwargs)

    async def close(self) -> None:
        self.stop()

    def stop(self) -> None:
        """Close at once (SQLAlchemy's terminate); nothing is ever left running elsewhere."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def _open(path: Path, busy_timeout_ms: int) -> sqlite3.Connection:
    connection = sqlite3.connect(path, timeout=busy_timeout_ms / 1000, isolation_level=None, check_same_thread=False)
    # No write lock is ever taken through this connection: a write is an error, not a wait on the loop's thread.
    for pragma in ("journal_mode=WAL", f"busy_timeout={busy_timeout_ms}", "foreign_keys=ON", "query_only=ON"):
        connection.execute(f"PRAGMA {pragma}")
    return connection


async def connect_reader(path: Path, busy_timeout_ms: int) -> InlineConnection:
    """A reading connection; opened off the loop, since opening may wait for a lock (the WAL's set-up)."""
    return InlineConnection(await asyncio.to_thread(_open, path, busy_timeout_ms))
