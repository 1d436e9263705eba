"""Keys about to expire: the authority and the admins are told in good time, once per key and expiry date."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from dataclasses import dataclass

import structlog
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import selectinload

from gateway import audit
from gateway.compose import admin_notice, new_reference
from gateway.crypto import KeyProblem, in_thread
from gateway.db.models import Authority, KeyNotice
from gateway.outbox import enqueue
from gateway.pipeline import encrypted_notice
from gateway.values import GATEWAY_ACTOR, Context, Outgoing

NOTICE_DAYS = 30
GATEWAY_HOLDER = "gateway"
log = structlog.get_logger("gateway.keywatch")


@dataclass(frozen=True)
class Expiring:
    """A key that stops working soon: an authority's pinned key, or (authority None) the gateway's own."""

    fingerprint: str
    expires: dt.datetime
    authority: Authority | None = None
    subscribed: bool = False

    @property
    def holder(self) -> str:
        return GATEWAY_HOLDER if self.authority is None else f"authority:{self.authority.id}"


async def expiring_keys(
    ctx: Context, as_of: dt.datetime, next_delivery: dt.datetime, subscribed: Collection[int]
) -> list[Expiring]:
    """Keys that expire within 30 days, or (for an authority with a subscription) before its next delivery."""
    soon = as_of + dt.timedelta(days=NOTICE_DAYS)
    found: list[Expiring] = []
    async with ctx.db.transaction(write=False) as session:
        query = select(Authority).options(selectinload(Authority.addresses)).where(Authority.status == "active")
        authorities = list((await session.execute(query)).scalars())
    for authority in authorities:
        horizon = max(soon, next_delivery) if authority.id in subscribed else soon
        if authority.key_expires is not None and authority.key_expires <= horizon:
            found.append(
                Expiring(authority.key_fingerprint, authority.key_expires, authority, authority.id in subscribed)
            )
    signer = ctx.config.gpg.signing_key
    if signer:
        info = await in_thread(ctx.keyring.inspect, signer)
        if info is not None and info.signing_expires is not None and info.signing_expires <= max(soon, next_delivery):
            found.append(Expiring(signer, info.signing_expires))
    return found


async def _already(ctx: Context, key: Expiring) -> bool:
    async with ctx.db.transaction(write=False) as session:
        found = await session.execute(
            select(KeyNotice.id).where(
                KeyNotice.fingerprint == key.fingerprint,
                KeyNotice.expires_at == key.expires,
                KeyNotice.holder == key.holder,
            )
        )
        return found.scalar() is not None


def _admin_lines(key: Expiring, as_of: dt.datetime, told: bool) -> tuple[str, list[str]]:
    when = f"{key.expires:%d %B %Y %H:%M} UTC"
    past = key.expires <= as_of
    verb = "expired on" if past else "expires on"
    if key.authority is None:
        return (
            f"the gateway's signing key {verb} {key.expires:%Y-%m-%d}",
            [
                f"The gateway's own signing key {verb} {when}:",
                f"  {key.fingerprint}",
                "",
                "Without it no answer, delivery or notice can be signed, so none will be sent.",
                "Extend it: gpg --homedir <[gpg] home> --quick-set-expire <fingerprint> 2y",
                "(and the same for its encryption subkey), then send authorities the public key again",
                "(`gateway key export`).",
            ],
        )
    name = key.authority.name
    told_line = (
        "The authority has been told, encrypted to that key."
        if told
        else "The authority could NOT be told: its key is no longer usable. Contact it another way."
    )
    return (
        f"the key of {name} {verb} {key.expires:%Y-%m-%d}",
        [
            f"The pinned key of {name} {verb} {when}:",
            f"  {key.fingerprint}",
            "",
            "After that no register data can be sent to it"
            + (": its monthly deliveries will not be made." if key.subscribed else "."),
            told_line,
            f"When it sends a renewed key: gateway authority set-key '{name}' <file.asc>",
        ],
    )


async def _authority_notice(ctx: Context, key: Expiring, reference: str) -> Outgoing | None:
    """The authority's notice, encrypted to the key that is about to expire; None when that key no longer works."""
    if key.authority is None:
        return None
    when = f"{key.expires:%d %B %Y}"
    try:
        return await encrypted_notice(
            ctx, key.authority, kind="key-notice", reference=reference,
            subject=f"Your encryption key expires on {when}", template="key-expiry.txt.j2",
            values={"expires": when, "fingerprint": key.fingerprint, "subscribed": key.subscribed},
        )  # fmt: skip
    except KeyProblem as exc:
        log.warning("key_notice.not_encryptable", authority=key.authority.name, reason=str(exc))
        return None


async def notify(ctx: Context, key: Expiring, as_of: dt.datetime) -> bool:
    """One key's notices and their record in one transaction; False if they were sent already."""
    if await _already(ctx, key):
        return False
    reference = new_reference(as_of)
    to_authority = await _authority_notice(ctx, key, reference) if key.expires > as_of else None
    title, lines = _admin_lines(key, as_of, told=to_authority is not None)
    to_admin = admin_notice(ctx, title, lines)
    sender = ctx.config.gateway.address
    try:
        async with ctx.db.transaction() as session:
            queued = []
            for mail in (to_authority, to_admin):
                if mail is not None:
                    queued.append(await enqueue(session, now=as_of, sender=sender, **mail.queued()))
            session.add(
                KeyNotice(
                    fingerprint=key.fingerprint, expires_at=key.expires, holder=key.holder, noticed_at=as_of,
                    reference=reference, authority_outbox_id=queued[0] if to_authority else None,
                    admin_outbox_id=queued[-1],
                )
            )  # fmt: skip
            await session.flush()  # the unique key fails here if another run got there first
            await audit.record(
                session, actor=GATEWAY_ACTOR, action="key.expiry-notice", subject=reference,
                details={
                    "fingerprint": key.fingerprint, "expires": key.expires, "holder": key.holder,
                    "authority": key.authority.name if key.authority else None,
                    "authority_told": to_authority is not None, "outbox": queued,
                },
                now=as_of,
            )  # fmt: skip
    except IntegrityError:
        return False
    return True


async def check_keys(ctx: Context, as_of: dt.datetime, next_delivery: dt.datetime, subscribed: Collection[int]) -> int:
    """Warn of every key that expires soon, each once; returns how many keys were newly noticed."""
    sent = 0
    for key in await expiring_keys(ctx, as_of, next_delivery, subscribed):
        sent += await notify(ctx, key, as_of)
    return sent
