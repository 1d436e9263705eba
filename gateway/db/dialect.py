"""What the two databases spell differently: an insert that skips a row already there, and their errors' codes."""

from __future__ import annotations

from typing import Any

import sqlalchemy.exc
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

# SQLSTATE classes and codes that say the database is away or busy, not that the message is at fault:
# connection (08), transaction rollback: deadlock, serialization (40), insufficient resources (53), operator
# intervention: shutdown, statement timeout (57), system error (58), lock not available (55P03).
_OUTAGE_CLASSES = frozenset({"08", "40", "53", "57", "58"})


def insert(session: AsyncSession, table: Any) -> Any:
    """An INSERT that can skip a row already there (`.on_conflict_do_nothing()`), in the session's own dialect."""
    bind = session.bind
    if bind is not None and bind.dialect.name == "postgresql":
        return postgresql_insert(table)
    return sqlite_insert(table)


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE a driver gave with a failure, when it gave one."""
    orig = getattr(exc, "orig", None)
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return state if isinstance(state, str) else None


def outage(exc: BaseException) -> bool:
    """A failure that says nothing about the message: the database or the network is away, or busy."""
    if isinstance(exc, (OSError, TimeoutError, sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)):
        return True
    state = sqlstate(exc)
    if state is not None and (state[:2] in _OUTAGE_CLASSES or state == "55P03"):
        return True
    return isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated
