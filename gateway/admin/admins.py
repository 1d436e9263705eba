"""Admins as OpenPGP keys: registering them, and proving which one signed a change's statement."""

from __future__ import annotations

import datetime as dt
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway import audit
from gateway.crypto import ScannedKey, scan_key, scratch_keyring
from gateway.db.engine import Database
from gateway.db.models import Admin, Authority, Installation
from gateway.errors import Field, FieldUsageError, GatewayError
from gateway.gpgrun import GPG_TIMEOUT_SECONDS, in_thread
from gateway.keyinfo import KeyInfo
from gateway.signatures import UNKNOWN_SIGNER

SETUP_ADMINS = 2  # registered by the host's administrator; every later one only through the two-person rule
MAX_NAME = 200
NAME = Field("name")  # the admin's name, as a refusal names it
MAX_SIGNATURE_BYTES = 64 * 1024  # a detached signature is a few hundred bytes; more is not one


class AdminError(GatewayError):
    """An admin key or signature the gateway will not accept."""


@dataclass(frozen=True)
class AdminView:
    fingerprint: str
    name: str
    status: str
    added_at: dt.datetime
    proposed_by: str | None
    approved_by: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "name": self.name,
            "status": self.status,
            "added_at": self.added_at.isoformat(timespec="seconds"),
            "proposed_by": self.proposed_by,
            "approved_by": self.approved_by,
        }

    @classmethod
    def of(cls, row: Admin) -> AdminView:
        return cls(row.fingerprint, row.name, row.status, row.added_at, row.proposed_by, row.approved_by)


def clean_name(name: str) -> str:
    cleaned = " ".join(name.split())
    if not cleaned or len(cleaned) > MAX_NAME or not cleaned.isprintable():
        raise FieldUsageError(NAME, f" must be 1 to {MAX_NAME} printable characters")
    return cleaned


def key_problems(info: KeyInfo, now: dt.datetime) -> list[str]:
    """Why a key cannot be an admin's: it must be able to sign now, and be strong enough."""
    if info.revoked:
        return ["the key is revoked"]
    if info.expired or (info.signing_expires is not None and info.signing_expires <= now):
        return ["the key has expired, or cannot sign any more"]
    if not info.can_sign:
        return ["the key has no valid signing-capable key"]
    return list(info.weaknesses)


async def scan_admin_key(key_data: bytes, binary: str, now: dt.datetime) -> ScannedKey:
    scanned = await in_thread(scan_key, key_data, binary)
    problems = key_problems(scanned.info, now)
    if problems:
        raise AdminError(f"key {scanned.info.fingerprint} refused as an admin key: {'; '.join(problems)}")
    return scanned


async def _refuse_reuse(session: AsyncSession, fingerprint: str, gateway_key: str | None) -> None:
    """One key, one role: an authority's key or the gateway's own can never also speak for an admin."""
    if fingerprint == gateway_key:
        raise AdminError("that is the gateway's own key, not an admin's")
    if await session.get(Admin, fingerprint) is not None:
        raise AdminError(f"key {fingerprint} is already registered as an admin")
    holder = (await session.execute(select(Authority.name).where(Authority.key_fingerprint == fingerprint))).scalar()
    if holder is not None:
        raise AdminError(f"key {fingerprint} is pinned for authority {holder!r}: an admin needs a key of their own")


async def check_new(db: Database, scanned: ScannedKey, gateway_key: str | None) -> None:
    async with db.transaction(write=False) as session:
        await _refuse_reuse(session, scanned.info.fingerprint, gateway_key)


async def registered_count(db: Database) -> int:
    async with db.transaction(write=False) as session:
        return int((await session.execute(select(func.count()).select_from(Admin))).scalar_one())


async def register(
    db: Database,
    scanned: ScannedKey,
    name: str,
    *,
    actor: str,
    gateway_key: str | None,
    now: dt.datetime,
    proposed_by: str | None = None,
    approved_by: str | None = None,
) -> AdminView:
    """Add an admin: at set-up (no proposer, no approver) only while fewer than two were ever registered."""
    async with db.transaction() as session:
        setup = proposed_by is None
        if setup:
            count = (await session.execute(select(func.count()).select_from(Admin))).scalar_one()
            if count >= SETUP_ADMINS:
                raise AdminError(
                    f"{count} admins are registered: a further admin is added only through the two-person rule"
                )
        await _refuse_reuse(session, scanned.info.fingerprint, gateway_key)
        row = Admin(
            fingerprint=scanned.info.fingerprint, name=clean_name(name), public_key=scanned.public.decode("ascii"),
            status="active", added_at=now, proposed_by=proposed_by, approved_by=approved_by,
        )  # fmt: skip
        session.add(row)
        await session.flush()
        view = AdminView.of(row)
        await audit.record(
            session, actor=actor, action="admin.setup" if setup else "admin.add", subject=view.fingerprint,
            details={**view.as_dict(), "user_ids": list(scanned.info.user_ids)}, now=now,
        )  # fmt: skip
        return view


async def _removable(session: AsyncSession, fingerprint: str) -> Admin:
    row = await session.get(Admin, fingerprint)
    if row is None or row.status != "active":
        raise AdminError(f"no active admin with key {fingerprint} (see `gateway admin list`)")
    active = (await session.execute(select(func.count()).where(Admin.status == "active"))).scalar_one()
    if active <= SETUP_ADMINS:
        # With one admin left no change could ever be approved again, not even a new admin's.
        raise AdminError(
            f"only {active} admins are active: register another before removing one (two must always remain)"
        )
    return row


async def check_removable(db: Database, fingerprint: str) -> str:
    """The admin's name, if removing them would leave at least two admins; AdminError otherwise."""
    async with db.transaction(write=False) as session:
        return (await _removable(session, fingerprint)).name


async def remove(db: Database, fingerprint: str, *, actor: str, now: dt.datetime) -> AdminView:
    """Take an admin's key out of the rule: its signatures no longer count, on pending changes either."""
    async with db.transaction() as session:
        row = await _removable(session, fingerprint)
        row.status = "removed"
        await session.flush()
        view = AdminView.of(row)
        await audit.record(
            session, actor=actor, action="admin.remove", subject=fingerprint, details=view.as_dict(), now=now
        )
        return view


async def listing(db: Database) -> list[AdminView]:
    async with db.transaction(write=False) as session:
        rows = (await session.execute(select(Admin).order_by(Admin.added_at, Admin.fingerprint))).scalars().all()
    return [AdminView.of(row) for row in rows]


async def active_keys(session: AsyncSession) -> dict[str, str]:
    """Each active admin's fingerprint and public key, as registered."""
    rows = await session.execute(select(Admin.fingerprint, Admin.public_key).where(Admin.status == "active"))
    return {str(fingerprint): str(key) for fingerprint, key in rows.all()}


async def names(session: AsyncSession) -> dict[str, str]:
    rows = await session.execute(select(Admin.fingerprint, Admin.name))
    return {str(f): str(n) for f, n in rows.all()}


async def identity(session: AsyncSession) -> str:
    row = await session.get(Installation, 1)
    if row is None:
        raise AdminError("the database has no identity (table installation): run `gateway init`")
    return row.identity


def _verify(statement: bytes, signature: bytes, keys: Mapping[str, str], binary: str) -> str:
    with scratch_keyring(binary) as scratch:
        for key in keys.values():
            scratch.import_public(key.encode("ascii"))
        status = scratch.verify_detached(statement, signature)
    if not status.good or status.primary_fingerprint is None:
        # Only the admins' keys are in the scratch home: a key gpg cannot find is nobody's who counts.
        unknown = status.code in UNKNOWN_SIGNER
        raise AdminError(
            "the signature is not by a registered admin's key"
            if unknown
            else f"the signature is not good: {status.problem}"
        )
    if status.primary_fingerprint not in keys:
        raise AdminError(f"the signature was made by {status.primary_fingerprint}, which is not an active admin key")
    return status.primary_fingerprint


async def verify(statement: str, signature: bytes, keys: Mapping[str, str], binary: str) -> str:
    """The fingerprint of the admin whose key (primary or signing subkey) made this good signature over exactly
    this statement; AdminError otherwise. Only the admins' own registered keys are there to check against."""
    if not keys:
        raise AdminError("no admin is registered: the host's administrator registers two with `gateway admin add`")
    if not signature.strip() or len(signature) > MAX_SIGNATURE_BYTES:
        raise AdminError(f"that is not a detached signature (empty, or over {MAX_SIGNATURE_BYTES} bytes)")
    if not signature.lstrip().startswith(b"-----BEGIN PGP SIGNATURE-----") or not signature.isascii():
        # Kept as text with the change, and checked again at approval: armour only.
        raise AdminError("give an ASCII-armoured detached signature (gpg --armor --detach-sign)")
    return await in_thread(_verify, statement.encode("ascii"), signature, keys, binary)


def sign(statement: str, *, home: Path | None, local_user: str | None, binary: str) -> bytes:
    """A detached signature made by the admin's own gpg: their home, agent, pinentry or smartcard.

    Not batch and not loopback: gpg-agent asks for the passphrase or card PIN as it always does for this user.
    """
    command = [binary, *(("--homedir", str(home)) if home else ()), "--armor", "--detach-sign"]
    command += ["--local-user", local_user] if local_user else []
    try:
        result = subprocess.run(  # noqa: S603 - fixed argv, no shell
            [*command, "--output", "-"],
            input=statement.encode("ascii"),
            capture_output=True,
            check=False,
            timeout=GPG_TIMEOUT_SECONDS * 10,  # a person may be typing a PIN
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise AdminError(f"cannot run {binary} to sign: {exc}") from None
    if result.returncode != 0 or b"BEGIN PGP SIGNATURE" not in result.stdout:
        said = "".join(c for c in " ".join(result.stderr.decode("utf-8", "replace").split()) if c.isprintable())[-300:]
        raise AdminError(f"gpg could not sign the statement: {said or 'no reason given'}")
    return result.stdout
