"""The two-person rule: an allowlist or key change asked for by one admin happens only when another approves it.

One compromised admin account could otherwise add an address, or pin its own key, and receive the register.
A change is rehearsed in full when it is asked for (every check, then rolled back), kept with its arguments,
and applied as asked for, with every check again, when a different admin approves it. Suspension needs no
second admin: it only takes access away.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from gateway import audit
from gateway.authorities import Allowlist, Change, Rehearsed
from gateway.db.engine import Database
from gateway.db.models import PendingChange
from gateway.errors import GatewayError


class ApprovalError(GatewayError):
    """An approval or rejection that cannot be done as asked."""


@dataclass(frozen=True)
class Proposal:
    """A change as asked for: what to call on the allowlist, and with what."""

    kind: str
    authority: str
    arguments: dict[str, Any]

    def summary(self) -> str:
        args = self.arguments
        if self.kind == "add":
            return (
                f"add {self.authority!r} ({args['kind']}, {args['area'] or 'national'}) at {', '.join(args['emails'])}"
            )
        if self.kind == "update":
            shown = {k: v for k, v in args.items() if v not in (None, [], ())}
            return f"update {self.authority!r}: {json.dumps(shown, sort_keys=True)}"
        if self.kind == "set-key":
            return f"pin a new key for {self.authority!r}"
        return f"resume {self.authority!r}"


def key_argument(key_data: bytes) -> str:
    return base64.b64encode(key_data).decode("ascii")


async def apply(allowlist: Allowlist, proposal: Proposal, *, actor: str) -> Change:
    """Make the change on the allowlist (or, on a rehearsing allowlist, check it and raise Rehearsed)."""
    args = proposal.arguments
    if proposal.kind == "add":
        return await allowlist.add(
            name=proposal.authority, kind=args["kind"], area=args["area"], emails=args["emails"],
            key_data=base64.b64decode(args["key"]), auth_policy=args["auth"], actor=actor,
        )  # fmt: skip
    if proposal.kind == "update":
        return await allowlist.update(
            proposal.authority, new_name=args["new_name"], kind=args["kind"], area=args["area"],
            auth_policy=args["auth"], add_emails=args["add_emails"], remove_emails=args["remove_emails"], actor=actor,
        )  # fmt: skip
    if proposal.kind == "set-key":
        return await allowlist.set_key(proposal.authority, base64.b64decode(args["key"]), actor=actor)
    if proposal.kind == "resume":
        return await allowlist.set_status(proposal.authority, "active", actor=actor)
    raise ApprovalError(f"unknown change kind {proposal.kind!r}")


async def propose(
    db: Database, rehearsal: Allowlist, proposal: Proposal, *, actor: str, now: dt.datetime
) -> tuple[int, Change]:
    """Check the change in full, then keep it for a second admin; returns its id and what it would do."""
    try:
        await apply(rehearsal, proposal, actor=actor)
    except Rehearsed as rehearsed:
        preview = rehearsed.change
    else:  # pragma: no cover - a rehearsing allowlist always raises
        raise ApprovalError("the change was not rehearsed")
    async with db.transaction() as session:
        row = PendingChange(
            kind=proposal.kind, authority=proposal.authority, payload=json.dumps(proposal.arguments),
            summary=proposal.summary(), requested_by=actor, requested_at=now, status="pending",
        )  # fmt: skip
        session.add(row)
        await session.flush()
        shown = {k: v for k, v in proposal.arguments.items() if k != "key"}
        await audit.record(
            session, actor=actor, action="change.propose", subject=f"change {row.id}",
            details={"kind": proposal.kind, "authority": proposal.authority, "arguments": shown}, now=now,
        )  # fmt: skip
        return row.id, preview


@dataclass(frozen=True)
class Pending:
    id: int
    kind: str
    authority: str
    summary: str
    requested_by: str
    requested_at: str
    status: str
    decided_by: str | None


async def listing(db: Database, *, everything: bool = False) -> list[Pending]:
    async with db.transaction(write=False) as session:
        query = select(PendingChange).order_by(PendingChange.id)
        if not everything:
            query = query.where(PendingChange.status == "pending")
        rows = (await session.execute(query)).scalars().all()
    return [
        Pending(
            r.id,
            r.kind,
            r.authority,
            r.summary,
            r.requested_by,
            r.requested_at.isoformat(timespec="seconds"),
            r.status,
            r.decided_by,
        )
        for r in rows
    ]


async def decide(
    db: Database,
    change_id: int,
    *,
    actor: str,
    approve: bool,
    now: dt.datetime,
    make: Callable[[Proposal, str], Awaitable[Change]],
) -> tuple[Proposal, Change | None]:
    """Approve (apply, as asked, with every check again) or reject a pending change; audited with both admins."""
    async with db.transaction() as session:
        row = await session.get(PendingChange, change_id)
        if row is None:
            raise ApprovalError(f"no change {change_id} (see `gateway change list`)")
        if row.status != "pending":
            raise ApprovalError(f"change {change_id} was already {row.status} by {row.decided_by}")
        if approve and actor == row.requested_by:
            raise ApprovalError(f"change {change_id} was asked for by {actor}: a different admin must approve it")
        proposal = Proposal(row.kind, row.authority, json.loads(row.payload))
        requested_by = row.requested_by
        row.status, row.decided_by, row.decided_at = ("approved" if approve else "rejected"), actor, now
        await audit.record(
            session, actor=actor, action="change.approve" if approve else "change.reject",
            subject=f"change {change_id}", details={"summary": row.summary, "requested_by": requested_by}, now=now,
        )  # fmt: skip
    if not approve:
        return proposal, None
    try:
        return proposal, await make(proposal, f"{requested_by}, approved by {actor}")
    except BaseException:
        async with db.transaction() as session:  # it could not be applied: it waits again, nothing half-done
            row = await session.get(PendingChange, change_id)
            if row is not None:
                row.status, row.decided_by, row.decided_at = "pending", None, None
            await audit.record(
                session, actor=actor, action="change.not-applied", subject=f"change {change_id}",
                details={"why": "the change failed its checks when applied; it is pending again"}, now=now,
            )  # fmt: skip
        raise
