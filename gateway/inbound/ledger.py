"""The database's account of the watched folder: which gateway holds which message, what each settled as, what moved."""

from __future__ import annotations

import datetime as dt
import os
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import ColumnElement, delete, select, update

from gateway.db.engine import Database
from gateway.db.models import InboundMessage, MailboxClaim, MailboxProgress, QuarantinedMessage
from gateway.values import Outcome, OutcomeKind

# Taken for each top-up of the window, just before its messages are fetched and started: long enough for an
# ordinary message, short enough that a gateway that died holding a claim delays those messages by no more
# than this. Should it run out first (one sender's messages go in order, and each gpg call may take up to
# 30 s), the other gateway only repeats the work: each message is recorded once, by its SHA-256, under the
# write lock.
CLAIM_LEASE = dt.timedelta(seconds=30)


@dataclass(frozen=True)
class Settled:
    """What a message settled as, and its record: where it is filed."""

    settled_as: str
    inbound_id: int | None


@dataclass(frozen=True)
class Reviewed:
    """A message filed in the Quarantine folder whose record a person has since released or discarded."""

    uidvalidity: int
    uid: int
    inbound_id: int | None
    status: str  # of the quarantined message: released or discarded
    outcome: str  # of its record now: a released message's new outcome


class Ledger:
    """Progress (the truth, not IMAP flags) and claims (leases that keep gateways sharing a mailbox apart) of
    one folder's messages, by UIDVALIDITY and UID."""

    def __init__(self, db: Database, folder: str, *, clock: Callable[[], dt.datetime]) -> None:
        self._db = db
        self._folder = folder
        self._clock = clock
        self.owner = f"{socket.gethostname()[:60]}:{os.getpid()}:{secrets.token_hex(4)}"

    def _these(
        self, model: type[MailboxProgress] | type[MailboxClaim], uidvalidity: int, uids: list[int]
    ) -> tuple[ColumnElement[bool], ...]:
        """Where a progress or claim row is one of these messages of the watched folder."""
        return (model.folder == self._folder, model.uidvalidity == uidvalidity, model.uid.in_(uids))

    async def settled(self, uidvalidity: int, uids: list[int]) -> dict[int, Settled]:
        """Those of these messages decided before, moved or not."""
        async with self._db.transaction(write=False) as session:
            rows = await session.execute(
                select(MailboxProgress.uid, MailboxProgress.settled_as, MailboxProgress.inbound_id).where(
                    *self._these(MailboxProgress, uidvalidity, uids)
                )
            )
            return {row.uid: Settled(row.settled_as, row.inbound_id) for row in rows}

    async def remember(self, uidvalidity: int, outcomes: dict[int, Outcome]) -> None:
        """These messages decided, not yet moved; what is remembered already stays as it was."""
        if not outcomes:
            return
        async with self._db.transaction(ahead=True) as session:
            known = set(
                (
                    await session.execute(
                        select(MailboxProgress.uid).where(*self._these(MailboxProgress, uidvalidity, list(outcomes)))
                    )
                ).scalars()
            )
            session.add_all(
                MailboxProgress(
                    folder=self._folder,
                    uidvalidity=uidvalidity,
                    uid=uid,
                    inbound_id=outcome.inbound_id,
                    settled_as=outcome.settled_as,
                    moved=False,
                    processed_at=self._clock(),
                )
                for uid, outcome in outcomes.items()
                if uid not in known
            )

    async def claim(self, uidvalidity: int, uids: list[int]) -> list[int]:
        """Take these messages for this gateway, except those another holds whose lease has not run out."""
        now = self._clock()
        async with self._db.transaction(ahead=True) as session:
            claims = {
                claim.uid: claim
                for claim in (
                    await session.execute(select(MailboxClaim).where(*self._these(MailboxClaim, uidvalidity, uids)))
                ).scalars()
            }
            mine = []
            for uid in uids:
                claim = claims.get(uid)
                if claim is not None and claim.owner != self.owner and claim.until > now:
                    continue  # another gateway on this mailbox is working on it, and will file it
                if claim is None:
                    session.add(
                        MailboxClaim(
                            folder=self._folder, uidvalidity=uidvalidity, uid=uid, owner=self.owner,
                            until=now + CLAIM_LEASE,
                        )
                    )  # fmt: skip
                else:  # ours, or left by a gateway that died holding it
                    claim.owner, claim.until = self.owner, now + CLAIM_LEASE
                mine.append(uid)
            return mine

    async def moved(self, uidvalidity: int, uids: list[int]) -> None:
        """These messages are in their folders: done, and no longer anyone's to claim."""
        async with self._db.transaction(ahead=True) as session:
            moved = update(MailboxProgress).where(*self._these(MailboxProgress, uidvalidity, uids)).values(moved=True)
            await session.execute(moved)
            await session.execute(delete(MailboxClaim).where(*self._these(MailboxClaim, uidvalidity, uids)))

    async def reviewed(self) -> list[Reviewed]:
        """Messages moved to the Quarantine folder that a person has released or discarded since."""
        async with self._db.transaction(write=False) as session:
            rows = (
                await session.execute(
                    select(MailboxProgress, QuarantinedMessage.status, InboundMessage.outcome)
                    .join(QuarantinedMessage, QuarantinedMessage.inbound_id == MailboxProgress.inbound_id)
                    .join(InboundMessage, InboundMessage.id == MailboxProgress.inbound_id)
                    .where(
                        MailboxProgress.folder == self._folder,
                        MailboxProgress.settled_as == OutcomeKind.QUARANTINED,
                        MailboxProgress.moved.is_(True),
                        QuarantinedMessage.status != "held",
                    )
                )
            ).all()
        return [
            Reviewed(progress.uidvalidity, progress.uid, progress.inbound_id, status, outcome)
            for progress, status, outcome in rows
        ]

    async def refiled(self, message: Reviewed, settled_as: str) -> None:
        """The reviewed message now lies where `settled_as` files it, so it is not looked for again."""
        async with self._db.transaction() as session:
            row = await session.get(MailboxProgress, (self._folder, message.uidvalidity, message.uid))
            if row is not None:
                row.settled_as = settled_as
