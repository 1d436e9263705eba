"""The append-only audit trail: every decision and disclosure, each record hash-chained to the one before."""

from __future__ import annotations

import datetime as dt
import getpass
import hashlib
import json
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.db.engine import lock_writers
from gateway.db.models import AuditRecord, stored

GENESIS_HASH = "0" * 64


def default_actor() -> str:
    """The OS user running the command, which is who an admin change is recorded against by default."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry, e.g. an arbitrary uid in a container
        return f"uid:{os.getuid()}"


def canonical_json(value: Mapping[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def chain_hash(
    *, prev_hash: str, seq: int, recorded_at: str, actor: str, action: str, subject: str, details: str
) -> str:
    """SHA-256 over the previous hash and this record's stored text, in a fixed unambiguous encoding."""
    content = json.dumps([prev_hash, seq, recorded_at, actor, action, subject, details], ensure_ascii=False)
    return hashlib.sha256(content.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    recorded_at: str
    actor: str
    action: str
    subject: str
    details: Mapping[str, Any]
    prev_hash: str
    hash: str

    @classmethod
    def from_row(cls, row: AuditRecord) -> AuditEntry:
        try:
            details = json.loads(row.details)
        except ValueError:
            details = {"unparseable": row.details}
        return cls(row.seq, row.recorded_at, row.actor, row.action, row.subject, details, row.prev_hash, row.hash)

    def as_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "recorded_at": self.recorded_at,
            "actor": self.actor,
            "action": self.action,
            "subject": self.subject,
            "details": dict(self.details),
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


def _timestamp(now: dt.datetime | None) -> str:
    moment = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


async def record(
    session: AsyncSession,
    *,
    actor: str,
    action: str,
    subject: str,
    details: Mapping[str, Any],
    now: dt.datetime | None = None,
) -> AuditEntry:
    """Append a record in the caller's transaction: it commits or rolls back with the change it describes."""
    await lock_writers(session)
    last = (await session.execute(select(AuditRecord).order_by(AuditRecord.seq.desc()).limit(1))).scalar()
    seq = 1 if last is None else last.seq + 1
    prev_hash = GENESIS_HASH if last is None else last.hash
    recorded_at = _timestamp(now)
    # Hashed as it will be stored: a sender's text (a NUL, a lone surrogate) is made storable before the hash.
    actor, subject = stored(AuditRecord.actor, actor), stored(AuditRecord.subject, subject)
    details_text = stored(AuditRecord.details, canonical_json(details))
    fields: dict[str, Any] = {
        "seq": seq,
        "recorded_at": recorded_at,
        "actor": actor,
        "action": action,
        "subject": subject,
    }
    digest = chain_hash(prev_hash=prev_hash, details=details_text, **fields)
    row = AuditRecord(**fields, details=details_text, prev_hash=prev_hash, hash=digest)
    session.add(row)
    await session.flush()
    return AuditEntry.from_row(row)


async def entries(session: AsyncSession, since: dt.datetime | None = None) -> AsyncIterator[AuditEntry]:
    query = select(AuditRecord).order_by(AuditRecord.seq)
    if since is not None:
        query = query.where(AuditRecord.recorded_at >= _timestamp(since))
    async for row in await session.stream_scalars(query.execution_options(yield_per=1000)):
        yield AuditEntry.from_row(row)


def _row_hash(row: AuditRecord) -> str:
    return chain_hash(
        prev_hash=row.prev_hash,
        seq=row.seq,
        recorded_at=row.recorded_at,
        actor=row.actor,
        action=row.action,
        subject=row.subject,
        details=row.details,
    )


@dataclass(frozen=True)
class Verification:
    records: int
    head_seq: int
    head_hash: str
    problem: str | None

    @property
    def ok(self) -> bool:
        return self.problem is None


async def verify(session: AsyncSession) -> Verification:
    """Walk the chain from the first record; report the first one that was altered, removed or reordered."""
    expected_seq = 1
    prev_hash = GENESIS_HASH
    query = select(AuditRecord).order_by(AuditRecord.seq).execution_options(yield_per=1000)
    async for row in await session.stream_scalars(query):
        broken = f"record {expected_seq} is missing (next present is {row.seq}): records were removed"
        if row.seq == expected_seq and row.prev_hash != prev_hash:
            broken = f"record {row.seq} does not follow record {row.seq - 1}: records were removed or reordered"
        if row.seq != expected_seq or row.prev_hash != prev_hash:
            return Verification(expected_seq - 1, expected_seq - 1, prev_hash, broken)
        digest = _row_hash(row)
        if digest != row.hash:
            return Verification(
                expected_seq - 1,
                expected_seq - 1,
                prev_hash,
                f"record {row.seq} ({row.action}) was altered: its content does not match its hash",
            )
        prev_hash = row.hash
        expected_seq += 1
    return Verification(expected_seq - 1, expected_seq - 1, prev_hash, None)


async def count(session: AsyncSession) -> int:
    return int((await session.execute(select(func.count()).select_from(AuditRecord))).scalar_one())
