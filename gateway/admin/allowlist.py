"""Changing the allowlist: which public authorities may ask, from which secure addresses, with which pinned key.

Each change runs in one transaction with its audit record and its effect on subscriptions; a rehearsed change
makes every check and is then rolled back, with any key it imported taken out again.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from gateway import audit
from gateway.admin.authorities import (
    ADD_EMAILS,
    AREA,
    AUTH_POLICY,
    DEFAULT_AUTH_POLICY,
    EMAILS,
    KIND,
    NAME,
    NEW_NAME,
    OPENPGP,
    REMOVE_EMAILS,
    SMIME,
    USE_OPENPGP,
    AllowlistError,
    AuthorityView,
    Change,
    addresses_of,
    certificate_checks,
    check_policy,
    clean_name,
    key_checks,
    name_key,
    openpgp_address_checks,
    resolve_area,
)
from gateway.crypto import Keyring, scan_key
from gateway.db.engine import Database
from gateway.db.models import Admin, Authority, AuthorityAddress
from gateway.errors import FieldUsageError
from gateway.gpgrun import in_thread
from gateway.keyinfo import KeyInfo
from gateway.smime.certs import CertificateProblem, CertInfo, chain_problem, read_certificate


class _RollBack(Exception):  # not an error: how a rehearsal's transaction is undone once every check passed
    """Raised inside a rehearsal's transaction, after the change, so that the database keeps none of it."""


@dataclass(frozen=True)
class _Keys:
    """What one change did to the gateway's keyring, which no database transaction can roll back."""

    imported: list[str] = field(default_factory=list)  # taken out again unless the change is kept
    unpinned: list[str] = field(default_factory=list)  # taken out once the change is kept, if nothing pins them


class Standing(Protocol):
    """What becomes of an authority's monthly subscriptions when its registration changes
    (gateway.subscriptions.Keeper): asked inside the change's transaction, so a subscription never outlives what
    allowed it."""

    async def review(
        self, session: AsyncSession, authority: Authority, *, actor: str, ending: str | None = None
    ) -> tuple[str, ...]: ...


class Allowlist:
    """Every change runs in one transaction together with its audit record and its effect on subscriptions."""

    def __init__(
        self,
        db: Database,
        keyring: Keyring,
        *,
        reserved: Iterable[str] = (),
        gateway_key: str | None,
        standing: Standing,
        rehearse: bool = False,
        trust_store: Path | None = None,
        openssl: str = "openssl",
    ):
        self._db = db
        self._standing = standing
        # Every check made and every row written, then all of it undone: a change proposed for approval.
        self._rehearse = rehearse
        self._keyring = keyring
        # Nothing at the gateway's own domains can belong to an authority (sub-addresses of its mailbox
        # included): that way lies a mail loop, or HMCI disclosing to itself.
        self._reserved_domains = frozenset(address.rpartition("@")[2] for address in reserved)
        self._gateway_key = gateway_key
        # [smime] trust_store: a pinned certificate must also chain to it (pinning is what is trusted either way).
        self._trust_store = trust_store
        self._openssl = openssl

    @property
    def db(self) -> Database:
        return self._db

    async def _review(
        self, session: AsyncSession, row: Authority, *, actor: str, ending: str | None = None
    ) -> tuple[str, ...]:
        lines = await self._standing.review(session, row, actor=actor, ending=ending)
        # A rehearsal's notices and endings are rolled back with it: its preview says what approval would do.
        return tuple(f"if approved: {line}" for line in lines) if self._rehearse else lines

    @property
    def gateway_key(self) -> str | None:
        return self._gateway_key

    @property
    def rehearsing(self) -> bool:
        return self._rehearse

    @asynccontextmanager
    async def _change(self) -> AsyncIterator[tuple[AsyncSession, _Keys]]:
        """One change's transaction. Kept, it drops the keys the change stopped pinning; failed, or only
        rehearsed, it is rolled back and takes out again every key the change imported."""
        keys = _Keys()
        kept = False
        try:
            async with self._db.transaction() as session:
                yield session, keys
                if self._rehearse:
                    raise _RollBack  # noqa: TRY301 - raised inside the transaction: that is what rolls it back
            kept = True
        except _RollBack:
            pass
        finally:
            for fingerprint in keys.unpinned if kept else keys.imported:
                await self._release_key(fingerprint)

    async def _find(self, session: AsyncSession, name: str) -> Authority:
        row = (
            await session.execute(
                select(Authority).where(Authority.name_key == name_key(name)).options(selectinload(Authority.addresses))
            )
        ).scalar()
        if row is None:
            raise AllowlistError(f"no authority named {name!r} (see `gateway authority list`)")
        return row

    async def _claim(self, session: AsyncSession, addresses: Sequence[str], owner: Authority | None) -> None:
        for address in addresses:
            domain = address.rpartition("@")[2]
            if domain in self._reserved_domains:
                raise AllowlistError(f"{address} is at the gateway's own domain {domain}: it cannot be an authority's")
        taken = await session.execute(
            select(AuthorityAddress.address, Authority.name)
            .join(Authority)
            .where(AuthorityAddress.address.in_(addresses))
        )
        for address, holder in taken.all():
            if owner is None or holder != owner.name:
                raise AllowlistError(f"{address} is already registered to authority {holder!r}")

    async def _pin(
        self,
        session: AsyncSession,
        key_data: bytes,
        addresses: Sequence[str],
        owner: Authority | None,
        imported: list[str],
    ) -> tuple[KeyInfo, list[str]]:
        """Check, import and re-check a key; `imported` learns of the import at once, for clean-up on failure."""
        scanned = await in_thread(scan_key, key_data, self._keyring.binary)
        fingerprint = scanned.info.fingerprint
        key_checks(scanned.info, addresses, dt.datetime.now(dt.UTC))
        if fingerprint == self._gateway_key:
            raise AllowlistError("that is the gateway's own key, not the authority's")
        if await session.get(Admin, fingerprint) is not None:
            raise AllowlistError(f"key {fingerprint} is an admin's key: an authority needs a key of its own")
        # One key, one authority: a key carrying two authorities' addresses would let each read the other's mail.
        holder = (
            await session.execute(
                select(Authority.name).where(
                    Authority.key_fingerprint == fingerprint, Authority.id != (owner.id if owner else -1)
                )
            )
        ).scalar()
        if holder is not None:
            raise AllowlistError(f"key {fingerprint} is already pinned for authority {holder!r}")
        # Only the minimal re-export of the one inspected key goes in, never the file as handed over.
        imported.append(await in_thread(self._keyring.import_public, scanned.public))
        if imported[-1] != fingerprint:
            raise AllowlistError(f"gpg imported {imported[-1]}, expected {fingerprint}")
        # Importing merges with any copy the keyring already holds (a revocation imported earlier, say):
        # what gets pinned is the key as the gateway's own keyring now sees it, checked again.
        merged = await in_thread(self._keyring.inspect, fingerprint)
        if merged is None:
            raise AllowlistError(f"gpg imported {fingerprint} but cannot list it in {self._keyring.home}")
        return merged, key_checks(merged, addresses, dt.datetime.now(dt.UTC))

    async def _release_key(self, fingerprint: str) -> None:
        """Drop a key no authority pins (any more, or after all): nothing can pick it by mistake."""
        async with self._db.transaction() as session:
            still_pinned = (
                await session.execute(select(func.count()).where(Authority.key_fingerprint == fingerprint))
            ).scalar_one()
            # Inside the write transaction, so no other change can pin this key between the count and the delete.
            if not still_pinned and fingerprint != self._gateway_key:
                await in_thread(self._keyring.delete_public, fingerprint)

    async def add(
        self,
        *,
        name: str,
        kind: str,
        area: str | None,
        emails: Sequence[str],
        key_data: bytes | None,
        auth_policy: str = DEFAULT_AUTH_POLICY,
        actor: str,
    ) -> Change:
        """A new authority. Without an OpenPGP key its addresses take S/MIME, and get nothing (nor are their
        requests authenticated by a signature) until a certificate is pinned for each (set_certificate)."""
        name = clean_name(name, NAME)
        auth_policy = check_policy(auth_policy)
        canonical_area = resolve_area(kind, area)
        addresses = addresses_of(emails)
        if not addresses:
            raise FieldUsageError("give at least one ", EMAILS)
        async with self._change() as (session, keys):
            existing = (
                await session.execute(select(Authority.name).where(Authority.name_key == name_key(name)))
            ).scalar()
            if existing is not None:
                raise AllowlistError(f"an authority named {existing!r} already exists")
            await self._claim(session, addresses, None)
            if key_data is None:
                info, warnings = (
                    None,
                    [
                        f"{name!r} has no OpenPGP key: nothing is sent to it until a certificate is pinned for each "
                        "address (`gateway authority set-cert`)"
                    ],
                )
            else:
                info, warnings = await self._pin(session, key_data, addresses, None, keys.imported)
            method = OPENPGP if info is not None else SMIME
            now = dt.datetime.now(dt.UTC)
            row = Authority(
                name=name,
                name_key=name_key(name),
                kind=kind,
                area=canonical_area,
                auth_policy=auth_policy,
                status="active",
                key_fingerprint=info.fingerprint if info else None,
                key_expires=info.expires if info else None,
                created_at=now,
                updated_at=now,
                addresses=[AuthorityAddress(address=a, method=method) for a in addresses],
            )
            session.add(row)
            await session.flush()
            view = AuthorityView.of(row)
            await audit.record(session, actor=actor, action="authority.add", subject=name, details=view.as_dict())
        return Change(view, tuple(warnings))

    async def list(self) -> list[AuthorityView]:
        async with self._db.transaction(write=False) as session:
            rows = await session.execute(
                select(Authority).options(selectinload(Authority.addresses)).order_by(Authority.name)
            )
            return [AuthorityView.of(row) for row in rows.scalars()]

    async def show(self, name: str) -> AuthorityView:
        async with self._db.transaction(write=False) as session:
            return AuthorityView.of(await self._find(session, name))

    async def update(
        self,
        name: str,
        *,
        new_name: str | None = None,
        kind: str | None = None,
        area: str | None = None,
        auth_policy: str | None = None,
        add_emails: Sequence[str] = (),
        remove_emails: Sequence[str] = (),
        use_openpgp: Sequence[str] = (),
        actor: str,
    ) -> Change:
        if auth_policy is not None:
            auth_policy = check_policy(auth_policy)
        if not any((new_name, kind, area, auth_policy, add_emails, remove_emails, use_openpgp)):
            raise FieldUsageError(
                "nothing to update: give ", NEW_NAME, ", ", KIND, ", ", AREA, ", ", AUTH_POLICY, ", ", ADD_EMAILS,
                ", ", REMOVE_EMAILS, " or ", USE_OPENPGP,
            )  # fmt: skip
        both = set(addresses_of(add_emails)) & set(addresses_of(remove_emails))
        if both:
            raise FieldUsageError(f"{sorted(both)[0]} is in both ", ADD_EMAILS, " and ", REMOVE_EMAILS)
        async with self._change() as (session, _):
            row = await self._find(session, name)
            before = AuthorityView.of(row)
            if new_name is not None:
                await self._rename(session, row, new_name)
            if kind is not None or area is not None:
                # A new kind restates its area (national kinds take none): the old area never carries over.
                row.kind = kind or row.kind
                row.area = resolve_area(row.kind, area)
            if auth_policy is not None:
                row.auth_policy = auth_policy
            await self._change_addresses(session, row, addresses_of(add_emails), addresses_of(remove_emails))
            warnings = await self._use_openpgp(row, addresses_of(use_openpgp))
            after = AuthorityView.of(row)
            changed = {k: [v, after.as_dict()[k]] for k, v in before.as_dict().items() if after.as_dict()[k] != v}
            if not changed:
                raise AllowlistError(f"nothing changed: {row.name!r} already has those settings")
            row.updated_at = dt.datetime.now(dt.UTC)
            await session.flush()
            after = AuthorityView.of(row)
            await audit.record(
                session,
                actor=actor,
                action="authority.update",
                subject=after.name,
                details={"changed": changed},
            )
            ended = await self._review(session, row, actor=actor)
        return Change(after, (*warnings, *ended))

    async def _rename(self, session: AsyncSession, row: Authority, new_name: str) -> None:
        new_name = clean_name(new_name, NEW_NAME)
        clash = (
            await session.execute(
                select(Authority.name).where(Authority.name_key == name_key(new_name), Authority.id != row.id)
            )
        ).scalar()
        if clash is not None:
            raise AllowlistError(f"an authority named {clash!r} already exists")
        row.name = new_name
        row.name_key = name_key(new_name)

    async def _change_addresses(
        self, session: AsyncSession, row: Authority, add: Sequence[str], remove: Sequence[str]
    ) -> None:
        current = {a.address for a in row.addresses}
        for address in remove:
            if address not in current:
                raise AllowlistError(f"{address} is not an address of {row.name!r}")
        await self._claim(session, add, row)
        remaining = (current - set(remove)) | set(add)
        if not remaining:
            raise AllowlistError(f"{row.name!r} would be left with no address: add another before removing the last")
        if (add or remove) and row.key_fingerprint is not None:
            info = await in_thread(self._keyring.inspect, row.key_fingerprint)
            if info is None or not info.emails & remaining:
                raise AllowlistError(
                    f"the pinned key {row.key_fingerprint} would carry none of the addresses of {row.name!r}: "
                    "set a key for the new address first (`gateway authority set-key`)"
                )
        row.addresses = [a for a in row.addresses if a.address not in remove]
        # A new address takes the authority's OpenPGP key, or (having none) waits for a certificate of its own.
        method = OPENPGP if row.key_fingerprint is not None else SMIME
        row.addresses.extend(AuthorityAddress(address=a, method=method) for a in add if a not in current)

    async def _use_openpgp(self, row: Authority, addresses: Sequence[str]) -> tuple[str, ...]:
        """These addresses go back to OpenPGP, to the authority's pinned key, which must carry each as a user ID
        and pass the checks `authority add` makes of a key; returns its warnings."""
        if not addresses:
            return ()
        entries = [_address_of(row, address) for address in addresses]
        if row.key_fingerprint is None:
            raise AllowlistError(f"{row.name!r} has no OpenPGP key: pin one first (`gateway authority set-key`)")
        info = await in_thread(self._keyring.inspect, row.key_fingerprint)
        if info is None:
            raise AllowlistError(f"the pinned key {row.key_fingerprint} of {row.name!r} is not in the keyring")
        now = dt.datetime.now(dt.UTC)
        warnings = [line for entry in entries for line in openpgp_address_checks(info, entry.address, now)]
        for entry in entries:
            entry.method = OPENPGP
            entry.cert_fingerprint = entry.cert_pem = entry.cert_subject = None
            entry.cert_expires = None
        return tuple(dict.fromkeys(warnings))  # the key's own warning (expiring soon) once, not once an address

    async def set_status(self, name: str, status: str, *, actor: str) -> Change:
        async with self._change() as (session, _):
            row = await self._find(session, name)
            if row.status == status:
                raise AllowlistError(f"authority {row.name!r} is already {status}")
            row.status = status
            row.updated_at = dt.datetime.now(dt.UTC)
            await session.flush()
            verb = "suspend" if status == "suspended" else "resume"
            await audit.record(session, actor=actor, action=f"authority.{verb}", subject=row.name, details={})
            ended = await self._review(session, row, actor=actor)
            view = AuthorityView.of(row)
        return Change(view, ended)

    async def remove(self, name: str, *, actor: str) -> Change:
        async with self._change() as (session, keys):
            row = await self._find(session, name)
            gone = AuthorityView.of(row)
            # Told while its key and addresses are still on record; the rows then go with the authority.
            ended = await self._review(session, row, actor=actor, ending="the authority's registration was removed")
            await session.flush()
            await session.delete(row)
            await session.flush()
            await audit.record(
                session, actor=actor, action="authority.remove", subject=gone.name, details=gone.as_dict()
            )
            if gone.key_fingerprint is not None:
                keys.unpinned.append(gone.key_fingerprint)
        return Change(gone, ended)

    async def set_key(self, name: str, key_data: bytes, *, actor: str) -> Change:
        async with self._change() as (session, keys):
            row = await self._find(session, name)
            old = row.key_fingerprint
            addresses = [a.address for a in row.addresses]
            info, warnings = await self._pin(session, key_data, addresses, row, keys.imported)
            row.key_fingerprint = info.fingerprint
            row.key_expires = info.expires
            row.updated_at = dt.datetime.now(dt.UTC)
            await session.flush()
            await audit.record(
                session,
                actor=actor,
                action="authority.set-key",
                subject=row.name,
                details={
                    "old_fingerprint": old,
                    "new_fingerprint": info.fingerprint,
                    "key_expires": info.expires,
                },
            )
            view = AuthorityView.of(row)
            if old is not None and old != info.fingerprint:
                keys.unpinned.append(old)
        return Change(view, tuple(warnings))

    # ---------------------------------------------------------------- S/MIME certificates, one per address

    async def _check_certificate(
        self, session: AsyncSession, info: CertInfo, address: str, owner: Authority
    ) -> tuple[str, ...]:
        warnings = tuple(certificate_checks(info, address, dt.datetime.now(dt.UTC)))
        if self._trust_store is not None:
            problem = await in_thread(chain_problem, info.pem, self._trust_store, self._openssl)
            if problem:
                raise AllowlistError(f"certificate {info.fingerprint} refused for {address}: {problem}")
        # One certificate, one address: whoever holds its private key could read every address it is pinned for
        # (and each address's expiry notice is its own).
        pinned = (
            await session.execute(
                select(Authority.name, AuthorityAddress.address)
                .join(AuthorityAddress)
                .where(AuthorityAddress.cert_fingerprint == info.fingerprint, AuthorityAddress.address != address)
            )
        ).first()
        if pinned is not None and pinned.name != owner.name:
            raise AllowlistError(f"certificate {info.fingerprint} is already pinned for authority {pinned.name!r}")
        if pinned is not None:
            raise AllowlistError(f"certificate {info.fingerprint} is already pinned for {pinned.address}")
        return warnings

    async def set_certificate(self, name: str, address: str, cert_data: bytes, *, actor: str) -> Change:
        """Pin an S/MIME certificate for one of the authority's addresses: from now on mail to that address is
        S/MIME, and a request from it is authenticated by that certificate alone."""
        address = addresses_of([address])[0]
        try:
            info = read_certificate(cert_data)
        except CertificateProblem as exc:
            raise AllowlistError(f"certificate refused: {exc}") from None
        async with self._change() as (session, _):
            row = await self._find(session, name)
            entry = _address_of(row, address)
            warnings = await self._check_certificate(session, info, address, row)
            before = {"method": entry.method, "cert_fingerprint": entry.cert_fingerprint}
            if before == {"method": SMIME, "cert_fingerprint": info.fingerprint}:
                raise AllowlistError(f"certificate {info.fingerprint} is already pinned for {address}")
            entry.method = SMIME
            entry.cert_fingerprint = info.fingerprint
            entry.cert_pem = info.pem.decode("ascii")
            entry.cert_subject = info.subject
            entry.cert_expires = info.not_after
            row.updated_at = dt.datetime.now(dt.UTC)
            await session.flush()
            await audit.record(
                session,
                actor=actor,
                action="authority.set-cert",
                subject=row.name,
                details={
                    "address": address,
                    "old": before,
                    "cert_fingerprint": info.fingerprint,
                    "cert_subject": info.subject,
                    "cert_issuer": info.issuer,
                    "cert_addresses": list(info.emails),
                    "not_before": info.not_before,
                    "not_after": info.not_after,
                },
            )
            ended = await self._review(session, row, actor=actor)
            view = AuthorityView.of(row)
        return Change(view, (*warnings, *ended))

    async def remove_certificate(self, name: str, address: str, *, actor: str) -> Change:
        """Stop trusting an address's certificate at once (no second admin: it only takes access away). The
        address keeps S/MIME: nothing is sent to it, and no request from it is authenticated by a signature,
        until a new certificate is pinned (or the address is removed and added again for OpenPGP)."""
        address = addresses_of([address])[0]
        async with self._change() as (session, _):
            row = await self._find(session, name)
            entry = _address_of(row, address)
            if entry.cert_fingerprint is None:
                raise AllowlistError(f"no certificate is pinned for {address}")
            old = entry.cert_fingerprint
            entry.cert_fingerprint = entry.cert_pem = entry.cert_subject = None
            entry.cert_expires = None
            row.updated_at = dt.datetime.now(dt.UTC)
            await session.flush()
            await audit.record(
                session,
                actor=actor,
                action="authority.remove-cert",
                subject=row.name,
                details={"address": address, "cert_fingerprint": old},
            )
            ended = await self._review(session, row, actor=actor)
            view = AuthorityView.of(row)
        return Change(view, ended)


def _address_of(row: Authority, address: str) -> AuthorityAddress:
    """One of the authority's registered addresses, as stored; AllowlistError when it is not one of them."""
    entry = next((a for a in row.addresses if a.address == address), None)
    if entry is None:
        raise AllowlistError(f"{address} is not an address of {row.name!r}")
    return entry
