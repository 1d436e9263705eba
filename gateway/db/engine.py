"""Opening the database: one async engine, SQLite made safe for concurrent writers, schema checks."""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, event, make_url, text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from gateway.config import DatabaseSettings
from gateway.db.inline_sqlite import connect_reader
from gateway.errors import GatewayError

SQLITE_BUSY_TIMEOUT_MS = 30_000
# Connections kept open, so that a burst does not close one after each transaction and open another (with
# SQLite, a new thread and a cold page cache each time). A writer waits for its turn (WriterQueue) before it
# takes a connection, so the process writes through one at a time: SQLite's writers need few. SQLite's readers
# run on the loop's thread, one transaction at a time, so they need few too. On PostgreSQL readers and writers
# share one engine, and each message worked on (SIDE_BY_SIDE, the mailbox's window) may be reading at once,
# with the outbox and /healthz besides.
SIDE_BY_SIDE = 24  # messages worked on at once (the mailbox's window)
WRITER_POOL = {"pool_size": 2, "max_overflow": 4}
READER_POOL = {"pool_size": 2, "max_overflow": 4}
SHARED_POOL = {"pool_size": SIDE_BY_SIDE, "max_overflow": 8}  # PostgreSQL: one engine for readers and writers
# A SQLite reader waits for a lock only in rare cases (another program holding the file in exclusive locking
# mode, WAL recovery). It would wait on the loop's thread, stopping all else, so only briefly: then the read
# fails like any database error (a message being decided is kept for a person, with the reason recorded).
SQLITE_READER_BUSY_TIMEOUT_MS = 2_000
# Any constant shared by every writer: PostgreSQL serialises write transactions on it.
WRITE_LOCK_KEY = 0x6761_7465


class DatabaseError(GatewayError):
    """The database cannot be reached, or its schema is not the one this code expects."""


class WriterQueue:
    """This process's writers, one at a time, in the order they came; a short write that other work waits on
    (`ahead`: the outbox marking a message sent, the mailbox's claims and progress) goes before the waiting
    ordinary ones.

    The database serialises writers anyway (SQLite's write lock, PostgreSQL's advisory lock), but badly for a
    burst: SQLite's busy handler polls, sleeping up to 100 ms between tries, so with a few writers waiting the
    lock stood idle half the time; and each waiting writer held a pooled connection. Here a waiting writer
    holds nothing and is woken as soon as its turn comes. Other processes (the CLI, a second gateway on
    PostgreSQL) still meet the database's own lock.

    The ahead lane has no ageing: it cannot starve the rest, since its writers (the watcher's loop and the
    outbox's sender, one write at a time each) do IMAP or SMTP work between their writes.
    """

    def __init__(self) -> None:
        self._busy = False
        self._waiting: tuple[deque[asyncio.Future[None]], deque[asyncio.Future[None]]] = (deque(), deque())

    @asynccontextmanager
    async def turn(self, *, ahead: bool = False) -> AsyncIterator[None]:
        if self._busy or any(self._waiting):
            waiter = asyncio.get_running_loop().create_future()
            self._waiting[0 if ahead else 1].append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._next()  # the turn was handed over as the wait was cancelled: pass it on
                elif waiter in self._waiting[0 if ahead else 1]:  # else a writer handing on already skipped it
                    self._waiting[0 if ahead else 1].remove(waiter)
                raise
        else:
            self._busy = True
        try:
            yield
        finally:
            self._next()

    def _next(self) -> None:
        """Hand the turn to the first waiter (urgent ones first), or free it."""
        for waiting in self._waiting:
            while waiting:
                waiter = waiting.popleft()
                if not waiter.done():
                    waiter.set_result(None)  # still busy: the turn passes straight to it
                    return
        self._busy = False


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Take transaction control away from the driver so that "begin" below decides how to start.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


def _sqlite_on_begin(connection: Connection) -> None:
    # A deferred BEGIN upgrades to a write lock mid-transaction and fails with "database is locked"
    # when two writers meet; IMMEDIATE takes the lock up front and waits out busy_timeout instead.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def _sqlite_on_begin_reading(connection: Connection) -> None:
    # A reader needs no lock: under WAL it sees the last commit before its first read, whatever writers do.
    connection.exec_driver_sql("BEGIN")


@dataclass(frozen=True)
class Database:
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    settings: DatabaseSettings
    # Readers' sessions: with SQLite, an engine of their own whose transactions take no write lock, so that
    # the daemon's workers read while one of them writes. With PostgreSQL, the same as `sessions`.
    reader_sessions: async_sessionmaker[AsyncSession] | None = None
    reader_engine: AsyncEngine | None = None
    writers: WriterQueue = field(default_factory=WriterQueue)

    @asynccontextmanager
    async def transaction(self, *, write: bool = True, ahead: bool = False) -> AsyncIterator[AsyncSession]:
        """One unit of work: committed when the block ends, rolled back if it raises.

        Writers go one at a time on both backends: SQLite's BEGIN IMMEDIATE takes the write lock up front,
        and on PostgreSQL a transaction-scoped advisory lock does the same, so two imports or two changes to
        one authority can never interleave. Within the process they first wait their turn in `writers`
        (`ahead` for short bookkeeping that other work waits on). Readers (write=False) take no lock.
        """
        if not write:
            sessions = self.sessions if self.reader_sessions is None else self.reader_sessions
            async with sessions() as session, session.begin():
                yield session
            return
        async with self.writers.turn(ahead=ahead), self.sessions() as session, session.begin():
            await lock_writers(session)
            yield session

    async def close(self) -> None:
        await self.engine.dispose()
        if self.reader_engine is not None:
            await self.reader_engine.dispose()


def sqlite_path(settings: DatabaseSettings) -> Path | None:
    """The file SQLAlchemy opens for this URL (its query, if any, left off), or None for PostgreSQL."""
    return Path(make_url(settings.url.value).database or "") if settings.is_sqlite else None


def sqlite_files(file: Path) -> tuple[Path, Path, Path]:
    """The database file and the two SQLite keeps beside it in WAL mode; all three hold the register."""
    return file, file.with_name(f"{file.name}-wal"), file.with_name(f"{file.name}-shm")


def made_private(file: Path) -> list[str]:
    """Make the SQLite file (created here, mode 0600, when missing) and its -wal and -shm files private to this
    user; a line for each that was open to others. SQLite creates the other two with the database file's mode,
    so a private database file keeps them private whatever the umask."""
    told = []
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))  # an empty file is an empty database
    except FileExistsError:
        pass
    except OSError as exc:
        raise DatabaseError(f"cannot create database file {file}: {exc.strerror or exc}") from None
    for path in sqlite_files(file):
        try:
            mode = path.stat().st_mode & 0o777
            if mode & 0o077:
                os.chmod(path, 0o600)
                told.append(f"database file {path} was open to other users (mode {mode:04o}): made 0600")
        except FileNotFoundError:
            continue  # no -wal or -shm while no connection is open
        except OSError as exc:
            raise DatabaseError(f"cannot make {path} private (mode 0600): {exc.strerror or exc}") from None
    return told


def create_database(settings: DatabaseSettings) -> Database:
    url = settings.url.value
    file = sqlite_path(settings)
    if file is not None:
        engine = create_async_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}, **WRITER_POOL)
        event.listen(engine.sync_engine, "connect", _sqlite_on_connect)
        event.listen(engine.sync_engine, "begin", _sqlite_on_begin)
        readers = create_async_engine(
            url, async_creator=lambda: connect_reader(file, SQLITE_READER_BUSY_TIMEOUT_MS), **READER_POOL
        )  # fmt: skip
        event.listen(readers.sync_engine, "begin", _sqlite_on_begin_reading)
        sessions = async_sessionmaker(engine, expire_on_commit=False)
        return Database(engine, sessions, settings, async_sessionmaker(readers, expire_on_commit=False), readers)
    engine = create_async_engine(url, pool_pre_ping=True, **SHARED_POOL)
    return Database(engine, async_sessionmaker(engine, expire_on_commit=False), settings)


def _alembic_config(connection: Connection | None = None) -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", "gateway.db:migrations")
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    if head is None:
        raise DatabaseError("the installed gateway package has no migrations: reinstall it")
    return head


def _describe(exc: BaseException) -> str:
    inner = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    return " ".join(str(inner).split()) or type(inner).__name__


@dataclass(frozen=True)
class Upgrade:
    """What upgrade_schema did: the schema's revision before and after, and a line for each SQLite file it made
    private (mode 0600) because it was open to other users."""

    before: str | None
    after: str
    made_private: tuple[str, ...] = ()


async def upgrade_schema(db: Database) -> Upgrade:
    """Bring the schema to the newest migration, a SQLite database's files made private first."""

    def run(connection: Connection) -> str | None:
        before = MigrationContext.configure(connection).get_current_revision()
        command.upgrade(_alembic_config(connection), "head")
        return before

    file = sqlite_path(db.settings)
    told: list[str] = []
    try:
        if file is not None:
            told = made_private(file)
        async with db.engine.connect() as connection:
            if file is None:
                async with connection.begin():
                    before = await connection.run_sync(run)
            else:
                before = await _sqlite_migration(connection, run)
    except (SQLAlchemyError, OSError, ValueError, TypeError) as exc:
        raise DatabaseError(f"cannot migrate database {db.settings.display_url}: {_describe(exc)}") from None
    return Upgrade(before, head_revision(), tuple(told))


async def _sqlite_migration(connection: AsyncConnection, run: Callable[[Connection], str | None]) -> str | None:
    """Migrate SQLite with foreign keys off, as SQLite asks for a table rebuilt (lang_altertable.html, 7):
    with them on, the rebuild's DROP TABLE deletes every row that refers to the table, by ON DELETE CASCADE.
    They are checked again before the migration commits, and turned on again whatever happens."""

    def foreign_keys(sync: Connection, state: str) -> None:  # outside any transaction, or SQLite ignores it
        cursor = sync.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        cursor.execute(f"PRAGMA foreign_keys={state}")
        cursor.close()

    await connection.run_sync(foreign_keys, "OFF")
    try:
        async with connection.begin():
            before = await connection.run_sync(run)
            broken = (await connection.exec_driver_sql("PRAGMA foreign_key_check")).first()
            if broken is not None:
                raise DatabaseError(f"the migration would leave a row of {broken[0]} referring to nothing")
    finally:
        await connection.run_sync(foreign_keys, "ON")
    return before


async def require_current_schema(db: Database) -> None:
    """Refuse to work on a database that `gateway init` has not brought up to date."""
    file = sqlite_path(db.settings)
    if file is not None and not file.exists():
        raise DatabaseError(f"database file {file} does not exist: run `gateway init` first")
    try:
        async with db.engine.connect() as connection:
            current = await connection.run_sync(lambda sync: MigrationContext.configure(sync).get_current_revision())
    # The drivers raise ValueError or TypeError for connection options they cannot use (sslmode=bogus).
    except (SQLAlchemyError, OSError, ValueError, TypeError) as exc:
        raise DatabaseError(f"cannot open database {db.settings.display_url}: {_describe(exc)}") from None
    if current is None:
        raise DatabaseError(f"database {db.settings.display_url} has no schema yet: run `gateway init` first")
    if current != head_revision():
        raise DatabaseError(
            f"database {db.settings.display_url} is at schema {current}, "
            f"this gateway needs {head_revision()}: run `gateway init` to upgrade"
        )


async def lock_writers(session: AsyncSession) -> None:
    """Wait for any other writer to finish; SQLite's BEGIN IMMEDIATE already has, PostgreSQL needs a lock.

    The lock is re-entrant within a transaction, so an audit append inside a write transaction costs nothing.
    """
    if (await session.connection()).dialect.name == "postgresql":
        await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": WRITE_LOCK_KEY})
