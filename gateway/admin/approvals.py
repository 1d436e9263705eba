"""The two-person rule: an allowlist, key or admin change is made only when two different admin keys signed it.

One compromised admin account could otherwise add an address, or pin its own key, and receive the register; and
a name typed on the command line proves nothing, so an admin is a registered OpenPGP key (gateway.admin.admins). A
change is rehearsed in full when it is proposed (every check, then rolled back) and kept with its arguments and
a canonical statement of its exact effect, naming the change's id and this gateway's identity. The proposer
signs that statement, a different admin signs the same statement to approve it, and the gateway checks both
signatures against the admins' registered keys before applying the change as asked, with every check again.
Suspension and removal need no second admin: they only take access away.

Kept as one module of about 450 lines: the rule reads as one story, from proposal and statement to the two
signatures and the change made, and a reviewer checks it whole.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from gateway import audit
from gateway.admin import admins
from gateway.admin.allowlist import Allowlist
from gateway.admin.authorities import AllowlistError, Change, addresses_of, resolve_area
from gateway.crypto import scan_key
from gateway.db.engine import Database
from gateway.db.models import PendingChange
from gateway.errors import FieldError
from gateway.gpgrun import in_thread
from gateway.keyinfo import KeyInfo
from gateway.smime.certs import CertificateProblem, CertInfo, read_certificate

STATEMENT_TITLE = "HMCI register disclosure gateway: change statement, version 1"
ADMIN_KINDS = frozenset({"admin-add", "admin-remove"})  # always under the rule: admins exist only for it
VERBS = {"add": "added", "update": "updated", "set-key": "new key pinned for", "resume": "resumed",
         "set-cert": "new certificate pinned for", "admin-add": "registered admin",
         "admin-remove": "removed admin"}  # fmt: skip


class ApprovalError(FieldError):
    """A proposal, signature, approval or rejection that cannot be done as asked."""


@dataclass(frozen=True)
class Proposal:
    """A change as asked for: what to call on the allowlist (or the admins), and with what."""

    kind: str
    authority: str  # the authority's name; for admin-add, the new admin's name
    arguments: dict[str, Any]

    def key_data(self) -> bytes | None:
        key = self.arguments.get("key")
        if key is None:
            return None
        try:
            return base64.b64decode(key, validate=True)
        except (binascii.Error, ValueError):
            raise ApprovalError("the change's key is not valid base64") from None

    def certificate(self) -> CertInfo:
        """The certificate a set-cert change pins, read as it will be pinned."""
        data = self.arguments.get("cert")
        try:
            return read_certificate(base64.b64decode(data or "", validate=True))
        except (binascii.Error, ValueError):
            raise ApprovalError("the change's certificate is not valid base64") from None
        except CertificateProblem as exc:
            raise ApprovalError(f"the change's certificate cannot be read: {exc}") from None

    def summary(self, key: KeyInfo | None = None) -> str:
        args = self.arguments
        with_key = f" with key {key.fingerprint}" if key else ""
        if self.kind == "add":
            where = args["area"] or "national"
            return f"add {self.authority!r} ({args['kind']}, {where}) at {', '.join(args['emails'])}{with_key}"
        if self.kind == "update":
            shown = {k: v for k, v in args.items() if v not in (None, [], ())}
            return f"update {self.authority!r}: {json.dumps(shown, sort_keys=True)}"
        if self.kind in ("set-key", "set-cert"):
            return self._pin_summary(key)
        if self.kind == "admin-add":
            return f"register admin {self.authority!r}{with_key}"
        if self.kind == "admin-remove":
            return f"remove admin {args['name']!r} (key {self.authority})"
        return f"resume {self.authority!r}"

    def _pin_summary(self, key: KeyInfo | None) -> str:
        if self.kind == "set-cert":
            address = self.arguments["address"]
            return f"pin certificate {self.certificate().fingerprint} for {address} of {self.authority!r}"
        return f"pin a new key{(' ' + key.fingerprint) if key else ''} for {self.authority!r}"


def key_argument(key_data: bytes) -> str:
    return base64.b64encode(key_data).decode("ascii")


def _line(label: str, value: object) -> str:
    # JSON for every value: no name, user ID or address can break a line or pass for another field.
    return f"{label}: {json.dumps(value, ensure_ascii=True)}\n"


def _key_lines(info: KeyInfo, expires: dt.datetime | None) -> list[str]:
    lines = [_line("key-fingerprint", info.fingerprint)]
    lines += [_line("key-user-id", uid) for uid in info.user_ids]
    lines += [_line("key-algorithm", algorithm) for algorithm in info.algorithms]
    lines.append(_line("key-expires", expires.isoformat().replace("+00:00", "Z") if expires else "never"))
    return lines


def _certificate_lines(info: CertInfo) -> list[str]:
    """What both admins confirm of a certificate: the fingerprint to check with the authority out of band, and
    what it says of itself."""

    def when(moment: dt.datetime) -> str:
        return moment.isoformat().replace("+00:00", "Z")

    lines = [_line("cert-sha256", info.fingerprint), _line("cert-subject", info.subject)]
    lines += [_line("cert-address", email) for email in info.emails]
    lines += [_line("cert-issuer", info.issuer), _line("cert-not-before", when(info.not_before))]
    key = f"EC {info.curve}" if info.curve else f"{info.key_type} {info.key_bits}"
    return [*lines, _line("cert-not-after", when(info.not_after)), _line("cert-key", key)]


def _effect(proposal: Proposal, key: KeyInfo | None) -> list[str]:
    args = proposal.arguments
    if proposal.kind == "admin-add":
        assert key is not None  # noqa: S101 - an admin-add always carries its key
        return [_line("admin-name", proposal.authority), *_key_lines(key, key.signing_expires)]
    if proposal.kind == "admin-remove":
        return [_line("admin-fingerprint", proposal.authority), _line("admin-name", args["name"])]
    lines = [_line("authority", proposal.authority)]
    if proposal.kind == "add":
        lines += [
            _line("authority-kind", args["kind"]),
            _line("area", resolve_area(args["kind"], args["area"]) or "national"),
            _line("authentication", args["auth"]),
            *(_line("address", a) for a in addresses_of(args["emails"])),
            *(_key_lines(key, key.expires) if key else [_line("key-fingerprint", "none")]),
        ]
    elif proposal.kind == "update":
        for label, name in (("new-name", "new_name"), ("new-kind", "kind"), ("new-area", "area"),
                            ("new-authentication", "auth")):  # fmt: skip
            if args.get(name) is not None:
                lines.append(_line(label, args[name]))
        lines += [_line("add-address", a) for a in addresses_of(args.get("add_emails") or [])]
        lines += [_line("remove-address", a) for a in addresses_of(args.get("remove_emails") or [])]
        lines += [_line("use-openpgp-address", a) for a in addresses_of(args.get("use_openpgp") or [])]
    elif proposal.kind == "set-key":
        assert key is not None  # noqa: S101 - a set-key always carries its key
        lines += _key_lines(key, key.expires)
    elif proposal.kind == "set-cert":
        lines += [_line("address", addresses_of([args["address"]])[0]), *_certificate_lines(proposal.certificate())]
    elif proposal.kind == "resume":
        lines.append(_line("new-status", "active"))
    else:
        raise ApprovalError(f"unknown change kind {proposal.kind!r}")
    return lines


async def inspect_key(proposal: Proposal, binary: str) -> KeyInfo | None:
    data = proposal.key_data()
    return None if data is None else (await in_thread(scan_key, data, binary)).info


def statement(proposal: Proposal, change_id: int, *, gateway: str, database: str, key: KeyInfo | None) -> str:
    """The exact text both admins sign: deterministic, ASCII, one "label: JSON value" per line."""
    try:
        effect = _effect(proposal, key)
    except AllowlistError as exc:
        raise ApprovalError(*exc.parts) from None
    head = [STATEMENT_TITLE + "\n", _line("gateway", gateway), _line("database", database)]
    return "".join([*head, _line("change", change_id), _line("kind", proposal.kind), *effect])


@dataclass(frozen=True)
class Approval:
    """The two admin keys that signed a change: who proposed it, and who approved it."""

    proposer: str
    approver: str

    @property
    def actor(self) -> str:
        return f"admin {self.proposer}, approved by admin {self.approver}"


async def apply(
    allowlist: Allowlist, proposal: Proposal, *, actor: str, approval: Approval | None = None, binary: str = "gpg"
) -> Change:
    """Make the change (or, on a rehearsing allowlist, check it and say what it would do, keeping nothing)."""
    args = proposal.arguments
    key = proposal.key_data()
    if proposal.kind == "admin-add":
        if approval is None or key is None:
            raise ApprovalError("a further admin is registered only through the two-person rule")
        now = dt.datetime.now(dt.UTC)
        scanned = await admins.scan_admin_key(key, binary, now)
        await admins.register(
            allowlist.db, scanned, proposal.authority, actor=actor, gateway_key=allowlist.gateway_key, now=now,
            proposed_by=approval.proposer, approved_by=approval.approver,
        )  # fmt: skip
        return Change(None)
    if proposal.kind == "admin-remove":
        if approval is None:
            raise ApprovalError("an admin is removed only through the two-person rule")
        await admins.remove(allowlist.db, proposal.authority, actor=actor, now=dt.datetime.now(dt.UTC))
        return Change(None)
    if proposal.kind == "add":
        return await allowlist.add(
            name=proposal.authority, kind=args["kind"], area=args["area"], emails=args["emails"],
            key_data=key, auth_policy=args["auth"], actor=actor,
        )  # fmt: skip
    if proposal.kind == "update":
        return await allowlist.update(
            proposal.authority, new_name=args["new_name"], kind=args["kind"], area=args["area"],
            auth_policy=args["auth"], add_emails=args["add_emails"], remove_emails=args["remove_emails"],
            use_openpgp=args.get("use_openpgp") or [], actor=actor,
        )  # fmt: skip
    if proposal.kind in ("set-key", "set-cert"):
        return await _pin(allowlist, proposal, actor)
    if proposal.kind == "resume":
        return await allowlist.set_status(proposal.authority, "active", actor=actor)
    raise ApprovalError(f"unknown change kind {proposal.kind!r}")


async def _pin(allowlist: Allowlist, proposal: Proposal, actor: str) -> Change:
    """A new credential: an authority's OpenPGP key, or one address's S/MIME certificate."""
    if proposal.kind == "set-cert":
        cert = proposal.certificate()
        return await allowlist.set_certificate(proposal.authority, proposal.arguments["address"], cert.pem, actor=actor)
    key = proposal.key_data()
    if key is None:
        raise ApprovalError("a set-key change needs the key")
    return await allowlist.set_key(proposal.authority, key, actor=actor)


async def rehearse(rehearsal: Allowlist, proposal: Proposal, *, binary: str) -> Change:
    """Every check the change will meet when applied, with nothing kept; returns what it would do."""
    if not rehearsal.rehearsing:
        raise ApprovalError("a change is rehearsed only on a rehearsing allowlist")  # else it would be made
    if proposal.kind == "admin-add":
        key = proposal.key_data()
        if key is None:
            raise ApprovalError("an admin-add needs the admin's key")
        scanned = await admins.scan_admin_key(key, binary, dt.datetime.now(dt.UTC))
        await admins.check_new(rehearsal.db, scanned, rehearsal.gateway_key)
        return Change(None)
    if proposal.kind == "admin-remove":
        await admins.check_removable(rehearsal.db, proposal.authority)
        return Change(None)
    return await apply(rehearsal, proposal, actor="rehearsal")


def settled(proposal: Proposal, preview: Change) -> Proposal:
    """The proposal as its rehearsal read it: names cleaned and areas canonical, so that the statement shows
    exactly what will be stored (applying a canonical value again changes nothing)."""
    view = preview.authority
    if view is None:
        return proposal
    if proposal.kind == "add":
        return Proposal(proposal.kind, view.name, {**proposal.arguments, "area": view.area})
    if proposal.kind == "update":
        args = dict(proposal.arguments)
        if args.get("new_name") is not None:
            args["new_name"] = view.name
        if args.get("area") is not None:
            args["area"] = view.area
        return Proposal(proposal.kind, proposal.authority, args)
    return proposal


async def propose(
    db: Database, proposal: Proposal, *, actor: str, now: dt.datetime, gateway: str, binary: str
) -> tuple[int, str]:
    """Keep a rehearsed change, with its statement, for its proposer's and then another admin's signature."""
    key = await inspect_key(proposal, binary)
    async with db.transaction() as session:
        row = PendingChange(
            kind=proposal.kind, authority=proposal.authority, payload=json.dumps(proposal.arguments),
            summary=proposal.summary(key), requested_by=actor, requested_at=now, status="pending",
        )  # fmt: skip
        session.add(row)
        await session.flush()
        row.statement = statement(proposal, row.id, gateway=gateway, database=await admins.identity(session), key=key)
        shown = {k: v for k, v in proposal.arguments.items() if k not in ("key", "cert")}
        if proposal.kind == "set-cert":
            shown["cert_fingerprint"] = proposal.certificate().fingerprint
        await audit.record(
            session, actor=actor, action="change.propose", subject=f"change {row.id}",
            details={"kind": proposal.kind, "authority": proposal.authority, "arguments": shown,
                     "key_fingerprint": key.fingerprint if key else None, "actor_verified": False},
            now=now,
        )  # fmt: skip
        return row.id, row.statement


@dataclass(frozen=True)
class Pending:
    id: int
    kind: str
    subject: str
    summary: str
    proposer: str | None
    requested_at: str
    status: str
    approver: str | None

    @classmethod
    def of(cls, row: PendingChange) -> Pending:
        return cls(
            row.id, row.kind, row.authority, row.summary, row.proposer_fingerprint,
            row.requested_at.isoformat(timespec="seconds"), row.status, row.approver_fingerprint,
        )  # fmt: skip


async def listing(db: Database, *, everything: bool = False) -> list[Pending]:
    async with db.transaction(write=False) as session:
        query = select(PendingChange).order_by(PendingChange.id)
        if not everything:
            query = query.where(PendingChange.status == "pending")
        rows = (await session.execute(query)).scalars().all()
    return [Pending.of(r) for r in rows]


@dataclass(frozen=True)
class Shown:
    change: Pending
    statement: str | None
    proposer_name: str | None
    approver_name: str | None


async def show(db: Database, change_id: int) -> Shown:
    async with db.transaction(write=False) as session:
        row = await session.get(PendingChange, change_id)
        if row is None:
            raise ApprovalError(f"no change {change_id} (see `gateway change list --all`)")
        known = await admins.names(session)
        return Shown(
            Pending.of(row), row.statement, known.get(row.proposer_fingerprint or ""),
            known.get(row.approver_fingerprint or ""),
        )  # fmt: skip


@dataclass(frozen=True)
class _Snapshot:
    proposal: Proposal
    statement: str
    proposer: str | None
    proposer_signature: str | None
    keys: dict[str, str]
    database: str


async def _snapshot(db: Database, change_id: int) -> _Snapshot:
    async with db.transaction(write=False) as session:
        row = await session.get(PendingChange, change_id)
        if row is None:
            raise ApprovalError(f"no change {change_id} (see `gateway change list`)")
        if row.status != "pending":
            raise ApprovalError(f"change {change_id} was already {row.status}")
        if row.statement is None:
            raise ApprovalError(f"change {change_id} has no statement to sign: propose it again")
        return _Snapshot(
            Proposal(row.kind, row.authority, json.loads(row.payload)), row.statement, row.proposer_fingerprint,
            row.proposer_signature, await admins.active_keys(session), await admins.identity(session),
        )  # fmt: skip


async def _unchanged(snap: _Snapshot, change_id: int, *, binary: str, gateway: str) -> None:
    """The stored statement is still what this change would do here, and still what the proposer signed."""
    key = await inspect_key(snap.proposal, binary)
    expected = statement(snap.proposal, change_id, gateway=gateway, database=snap.database, key=key)
    if expected != snap.statement:
        raise ApprovalError(
            f"change {change_id}'s statement no longer matches the change as stored here (the gateway's address, its "
            "database or the key's validity changed): reject it and propose it again"
        )


def _still(row: PendingChange | None, snap: _Snapshot, change_id: int) -> PendingChange:
    """Another admin may have signed, approved or rejected it while gpg was checking: then nothing happens."""
    if row is None or row.status != "pending" or row.proposer_fingerprint != snap.proposer:
        raise ApprovalError(f"change {change_id} changed while its signature was being checked: try again")
    return row


async def to_sign(db: Database, change_id: int, *, approving: bool) -> str:
    """The statement an admin is about to sign, once the change can take that signature (pending; for the
    proposer, not yet signed; for approval, signed by its proposer): refused before any gpg or PIN prompt."""
    snap = await _snapshot(db, change_id)
    if approving:
        _proposer_signed(snap, change_id)
    else:
        _not_yet_signed(snap, change_id)
    return snap.statement


def _not_yet_signed(snap: _Snapshot, change_id: int) -> None:
    if snap.proposer is not None:
        raise ApprovalError(f"change {change_id} is already signed by its proposer {snap.proposer}")


def _proposer_signed(snap: _Snapshot, change_id: int) -> tuple[str, str]:
    """The proposer's fingerprint and signature, or why the change cannot be approved yet."""
    if snap.proposer is None or snap.proposer_signature is None:
        raise ApprovalError(
            f"change {change_id} is not signed by its proposer yet: they sign it with `gateway change sign {change_id}`"
        )
    return snap.proposer, snap.proposer_signature


async def sign_proposal(
    db: Database, change_id: int, signature: bytes, *, binary: str, gateway: str, now: dt.datetime
) -> tuple[str, str]:
    """Record the proposer's signature over the statement; returns the proposer's fingerprint and name."""
    snap = await _snapshot(db, change_id)
    _not_yet_signed(snap, change_id)
    await _unchanged(snap, change_id, binary=binary, gateway=gateway)
    try:
        proposer = await admins.verify(snap.statement, signature, snap.keys, binary)
    except admins.AdminError as exc:
        raise ApprovalError(f"change {change_id} not signed: {exc}") from None
    async with db.transaction() as session:
        row = _still(await session.get(PendingChange, change_id), snap, change_id)
        row.proposer_fingerprint, row.proposer_signature = proposer, signature.decode("ascii")
        name = (await admins.names(session)).get(proposer, "?")
        await audit.record(
            session, actor=f"admin {proposer}", action="change.sign", subject=f"change {change_id}",
            details={"proposer": proposer, "proposer_name": name}, now=now,
        )  # fmt: skip
    return proposer, name


async def approve(
    db: Database,
    change_id: int,
    signature: bytes,
    *,
    binary: str,
    gateway: str,
    now: dt.datetime,
    make: Callable[[Proposal, Approval], Awaitable[Change]],
) -> tuple[Proposal, Change]:
    """Check both signatures against the admins' keys, proposer and approver different, then apply the change."""
    snap = await _snapshot(db, change_id)
    proposer, proposer_signature = _proposer_signed(snap, change_id)
    await _unchanged(snap, change_id, binary=binary, gateway=gateway)
    try:  # again now: the proposer's key may have been revoked, or the proposer removed, since
        checked = await admins.verify(snap.statement, proposer_signature.encode("ascii"), snap.keys, binary)
    except admins.AdminError as exc:
        raise ApprovalError(f"change {change_id}'s proposer signature no longer holds: {exc}") from None
    if checked != proposer:
        raise ApprovalError(f"change {change_id}'s proposer signature is by {checked}, not {proposer}")
    try:
        approver = await admins.verify(snap.statement, signature, snap.keys, binary)
    except admins.AdminError as exc:
        raise ApprovalError(f"change {change_id} not approved: {exc}") from None
    if approver == proposer:
        raise ApprovalError(
            f"change {change_id} was proposed with admin key {approver}: a different admin's key must approve it"
        )
    approval = Approval(proposer, approver)
    async with db.transaction() as session:
        row = _still(await session.get(PendingChange, change_id), snap, change_id)
        row.status, row.decided_by, row.decided_at = "approved", f"admin {approver}", now
        row.approver_fingerprint, row.approver_signature = approver, signature.decode("ascii")
        known = await admins.names(session)
        await audit.record(
            session, actor=f"admin {approver}", action="change.approve", subject=f"change {change_id}",
            details={"summary": row.summary, "proposer": approval.proposer, "approver": approver,
                     "proposer_name": known.get(approval.proposer), "approver_name": known.get(approver)},
            now=now,
        )  # fmt: skip
    try:
        return snap.proposal, await make(snap.proposal, approval)
    except BaseException:
        async with db.transaction() as session:  # it could not be applied: it waits again, nothing half-done
            again = await session.get(PendingChange, change_id)
            if again is not None:
                again.status, again.decided_by, again.decided_at = "pending", None, None
                again.approver_fingerprint = again.approver_signature = None
            await audit.record(
                session, actor=f"admin {approver}", action="change.not-applied", subject=f"change {change_id}",
                details={"why": "the change failed its checks when applied; it is pending again"}, now=now,
            )  # fmt: skip
        raise


async def reject(db: Database, change_id: int, *, actor: str, now: dt.datetime) -> Proposal:
    """Drop a pending change: it only takes a proposal away, so any admin may, recorded under the name given."""
    async with db.transaction() as session:
        row = await session.get(PendingChange, change_id)
        if row is None:
            raise ApprovalError(f"no change {change_id} (see `gateway change list`)")
        if row.status != "pending":
            raise ApprovalError(f"change {change_id} was already {row.status}")
        row.status, row.decided_by, row.decided_at = "rejected", actor, now
        await audit.record(
            session, actor=actor, action="change.reject", subject=f"change {change_id}",
            details={"summary": row.summary, "actor_verified": False}, now=now,
        )  # fmt: skip
        return Proposal(row.kind, row.authority, json.loads(row.payload))
