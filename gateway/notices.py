"""What the gateway tells of its own accord: the admins' alert of a message, impostor and daily-limit notices
to authorities, the summary of held alerts, and keys about to expire (told in good time, once per key and
expiry date)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import selectinload

from gateway import audit, limits, shown
from gateway.admin.authorities import OPENPGP
from gateway.authenticate import registered_addresses
from gateway.compose import (
    admin_mail,
    admin_notice,
    envelope_for,
    new_reference,
    reply_values,
    seal,
    sealing_credential,
)
from gateway.db.models import Authority, InboundMessage, KeyNotice, Notice
from gateway.gpgrun import KeyProblem, in_thread
from gateway.lookalike import Claim, claims
from gateway.outbox import enqueue
from gateway.values import GATEWAY_ACTOR, Arrival, Asker, Context, Decision, OutcomeKind, Outgoing

log = structlog.get_logger("gateway.notices")


# ---------------------------------------------------------------- the admins, of a message


def quarantine(
    ctx: Context, arrival: Arrival, reason: str, sender: str | None = None, authority: Authority | None = None
) -> Decision:
    """Kept for a person to look at, with nothing sent but the admins' alert saying why."""
    return alert(ctx, arrival, Decision(OutcomeKind.QUARANTINED, reason, sender, authority))


def alert(ctx: Context, arrival: Arrival, decision: Decision) -> Decision:
    """Add a plain alert to the admins to a decision; it names the message, never any register data."""
    text = ctx.templates.render(
        "alert.txt.j2",
        {
            "title": f"message {decision.outcome}",
            "date": ctx.clock().isoformat(timespec="seconds"),
            "outcome": decision.outcome,
            "reason": decision.reason,
            "sender": decision.sender,
            "authority": decision.authority.name if decision.authority else None,
            "message_id": shown.message_id(arrival.message_id),
            "sha256": arrival.sha256,
        },
    )
    warning = admin_mail(ctx, f"Register gateway alert: message {decision.outcome}", text)
    return dataclasses.replace(decision, outgoing=(*decision.outgoing, warning))


# ---------------------------------------------------------------- authorities, of what was done in their name


async def impostor(  # noqa: PLR0917 - the message, why, and who it says it is from
    ctx: Context,
    arrival: Arrival,
    message: EmailMessage,
    why: str,
    sender: str | None,
    authority: Authority | None = None,
    *,
    registered: dict[str, int] | None = None,
    found: list[Claim] | None = None,
) -> Decision:
    """Someone tried to pass for an authority: no answer to them, the message quarantined, the admins alerted,
    and each authority whose address was shown or imitated told, encrypted and at most a few times a day.
    `registered` and `found` are the allowlist's addresses and the claims on them, when already read."""
    registered = registered if registered is not None else await registered_addresses(ctx.db)
    found = found if found is not None else claims(message, registered, sender=sender)
    reason = "; ".join([why, *(claim.describe() for claim in found)])
    ids = [*([authority.id] if authority else []), *(registered[claim.registered] for claim in found)]
    authorities = await _authorities_by_id(ctx, list(dict.fromkeys(ids)))
    decision = quarantine(ctx, arrival, reason, sender, authority or next(iter(authorities), None))
    told: list[Outgoing] = []
    for named in authorities:
        async with ctx.db.transaction(write=False) as session:
            if not named.addresses or await limits.impostor_notices_spent(
                session, ctx.config.limits, named.addresses[0].address, ctx.clock()
            ):
                continue
        lines = [
            "Someone sent the register disclosure gateway a message that used your name, and it was refused:",
            "nothing was disclosed. HMCI has been told and keeps the message for inspection.",
            "",
            f"Received: {arrival.received_at:%d %B %Y %H:%M} UTC",
            f"Message-ID (as received): {shown.message_id(arrival.message_id)}",
            f"Why it was refused: {reason[:1500]}",
            "",
            "If you sent it, send the request again from your registered address, signed with its registered key",
            "or certificate (or through your mail system's DMARC-aligned path). If you did not, nothing needs",
            "doing: you may wish to tell your information security team.",
        ]
        notice = await authority_notice(ctx, named, "someone tried to use your name", lines, "impostor-notice")
        if notice is not None:
            told.append(notice)
    return dataclasses.replace(decision, outgoing=(*decision.outgoing, *told))


async def authority_notice(
    ctx: Context, authority: Authority, title: str, lines: list[str], kind: str
) -> Outgoing | None:
    """A notice to the first of an authority's addresses whose pinned credential can be used now, encrypted to it
    and signed: an S/MIME address waiting for its certificate has none, and one whose certificate expired (or an
    OpenPGP address whose key did) cannot be sealed to, so the next address is told. None when none can be."""
    reference = new_reference(ctx.clock())
    for address in authority.addresses:
        if sealing_credential(authority, address.address) is None:
            continue
        try:  # seal refuses (KeyProblem) what cannot be used at ctx.clock(): never plaintext
            return await encrypted_notice(
                ctx, authority, kind=kind, reference=reference, subject=f"Register gateway: {title}",
                template="authority-notice.txt.j2", values={"title": title, "lines": lines}, recipient=address.address,
            )  # fmt: skip
        except KeyProblem:
            continue
    return None  # fail closed: the admins' alert says what happened


async def encrypted_notice(
    ctx: Context,
    authority: Authority,
    *,
    kind: str,
    reference: str,
    subject: str,
    template: str,
    values: dict[str, Any],
    recipient: str | None = None,
) -> Outgoing | None:
    """A notice the gateway starts (not an answer) to one of an authority's addresses (its first unless said: a
    notice about a subscription goes to the address that asked), signed and encrypted to what is pinned for that
    address (PGP/MIME or S/MIME, as it takes); None when it has no address. KeyProblem when what is pinned cannot
    be used: no plaintext, ever."""
    if not authority.addresses:
        return None
    recipient = recipient or authority.addresses[0].address
    text = ctx.templates.render(template, {**reply_values(ctx, authority, recipient, reference), **values})
    return await seal(ctx, kind, envelope_for(ctx, recipient, reference, f"{subject} ({reference})"), text, authority)


async def _authorities_by_id(ctx: Context, ids: list[int]) -> list[Authority]:
    """These authorities, in this order, with their addresses; one that is gone is left out."""
    async with ctx.db.transaction(write=False) as session:
        query = select(Authority).where(Authority.id.in_(ids)).options(selectinload(Authority.addresses))
        found = {row.id: row for row in (await session.execute(query)).scalars()}
    return [found[i] for i in ids if i in found]


async def answer_limit(ctx: Context, arrival: Arrival, asker: Asker) -> Decision | None:
    """Past [limits] answers_per_day to one authority, requests wait in quarantine; it is told once a day."""
    async with ctx.db.transaction(write=False) as session:
        spent = await limits.answers_spent(session, ctx.config.limits, asker.authority, ctx.clock())
    if spent is None:
        return None
    decision = quarantine(ctx, arrival, spent, asker.sender, asker.authority)
    limit = ctx.config.limits.answers_per_day
    key = f"{asker.authority.id}/{ctx.clock():%Y-%m-%d}"
    async with ctx.db.transaction(write=False) as session:
        query = select(Notice.id).where(Notice.kind == "limit-notice", Notice.key == key)
        if (await session.execute(query)).scalar() is not None:
            return decision
    lines = [
        f"The gateway has answered {limit} requests from {asker.authority.name} in the last 24 hours, its daily limit.",
        "Further requests are kept, not lost: HMCI will release them, or you may send them again tomorrow.",
        "If you did not send that many requests, please tell HMCI: someone may be using your account.",
    ]
    notice = await authority_notice(ctx, asker.authority, "daily limit of answers reached", lines, "limit-notice")
    if notice is None:
        return decision
    return dataclasses.replace(decision, outgoing=(*decision.outgoing, notice), notices=(("limit-notice", key),))


# ---------------------------------------------------------------- the admins, of alerts held back


async def summarise_held_alerts(ctx: Context, now: dt.datetime) -> int:
    """One summary of the alerts held back over the hourly limit; returns how many it covers."""
    async with ctx.db.transaction() as session:
        query = select(InboundMessage).where(InboundMessage.alert_held == "held").with_for_update(skip_locked=True)
        held = list((await session.execute(query)).scalars())
        if not held:
            return 0
        reasons = Counter(row.reason.split(";")[0][:120] for row in held)
        lines = [
            f"{len(held)} messages were quarantined without an alert each: more than",
            f"{ctx.config.limits.alerts_per_hour} alerts in an hour would flood this mailbox (an attack, perhaps).",
            f"The first arrived at {min(r.received_at for r in held):%Y-%m-%d %H:%M} UTC.",
            "",
            "Most common reasons:",
            *(f"  {count} x {reason}" for reason, count in reasons.most_common(10)),
            "",
            "See them with `gateway quarantine list`.",
        ]
        summary = admin_notice(dataclasses.replace(ctx, clock=lambda: now), f"{len(held)} alerts held back", lines)
        outbox_id = await enqueue(session, now=now, sender=ctx.config.gateway.address, **summary.queued())
        for row in held:
            row.alert_held = "summarised"
        await audit.record(
            session, actor=GATEWAY_ACTOR, action="alert.summary", subject=f"{len(held)} alerts",
            details={"inbound_ids": [row.id for row in held], "outbox_id": outbox_id}, now=now,
        )  # fmt: skip
    return len(held)


# ---------------------------------------------------------------- keys about to expire

NOTICE_DAYS = 30


GATEWAY_HOLDER = "gateway"


@dataclass(frozen=True)
class Expiring:
    """A key that stops working soon: an authority's pinned key, or (authority None) the gateway's own."""

    fingerprint: str
    expires: dt.datetime
    authority: Authority | None = None
    subscribed: bool = False
    certificate: bool = False  # an S/MIME certificate (its SHA-256 fingerprint), not an OpenPGP key
    address: str | None = None  # the registered address an authority's certificate is pinned for

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
        if authority.key_fingerprint and authority.key_expires is not None and authority.key_expires <= horizon:
            found.append(
                Expiring(authority.key_fingerprint, authority.key_expires, authority, authority.id in subscribed)
            )
        found += [
            Expiring(
                entry.cert_fingerprint, entry.cert_expires, authority, authority.id in subscribed, True, entry.address
            )
            for entry in authority.addresses
            if entry.cert_fingerprint and entry.cert_expires is not None and entry.cert_expires <= horizon
        ]
    signer = ctx.config.gpg.signing_key
    if signer:
        info = await in_thread(ctx.keyring.inspect, signer)
        if info is not None and info.signing_expires is not None and info.signing_expires <= max(soon, next_delivery):
            found.append(Expiring(signer, info.signing_expires))
    own = ctx.smime.certificate if ctx.smime is not None else None
    if own is not None and own.not_after <= max(soon, next_delivery):
        found.append(Expiring(own.fingerprint, own.not_after, certificate=True))
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
    if key.authority is None and key.certificate:
        return (
            f"the gateway's S/MIME certificate {verb} {key.expires:%Y-%m-%d}",
            [
                f"The gateway's own S/MIME certificate {verb} {when}:",
                f"  SHA-256 {key.fingerprint}",
                "",
                "After that, authorities' mail clients warn of or refuse what the gateway signs with it, and",
                "the gateway will not start with it (`gateway run` checks [smime] at start).",
                "Renew it: `gateway init --smime-csr FILE` writes a signing request with the same key for the CA;",
                "put the certificate it returns at [smime] certificate, run `gateway init` to check it, restart",
                "the gateway, and send authorities the new certificate (`gateway key export --smime`).",
            ],
        )
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
    if key.certificate:
        return _certificate_lines(key, name, verb, when, told)
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


def _certificate_lines(key: Expiring, name: str, verb: str, when: str, told: bool) -> tuple[str, list[str]]:
    told_line = (
        f"The authority has been told at {key.address}, encrypted to that certificate."
        if told
        else "The authority could NOT be told: its certificate is no longer usable. Contact it another way."
    )
    return (
        f"the certificate of {name} for {key.address} {verb} {key.expires:%Y-%m-%d}",
        [
            f"The S/MIME certificate pinned for {key.address} ({name}) {verb} {when}:",
            f"  SHA-256 {key.fingerprint}",
            "",
            "After that no register data can be sent to that address"
            + (": its monthly deliveries will not be made." if key.subscribed else "."),
            told_line,
            f"When it sends a renewed certificate: gateway authority set-cert '{name}' --email {key.address} "
            "--cert <file> (or --from-message <signed mail>), and confirm its fingerprint with the authority.",
        ],
    )


async def _authority_notice(ctx: Context, key: Expiring, reference: str) -> Outgoing | None:
    """The authority's notice, encrypted to the key that is about to expire; None when that key no longer works."""
    if key.authority is None:
        return None
    when = f"{key.expires:%d %B %Y}"
    # A certificate's notice goes to the address it is pinned for; a key's to an address that takes the key, when
    # one does (else the first): each is then encrypted to what it is about.
    takes_key = [row.address for row in key.authority.addresses if row.method == OPENPGP]
    recipient = key.address if key.certificate else next(iter(takes_key), None)
    try:
        return await encrypted_notice(
            ctx, key.authority, kind="key-notice", reference=reference,
            subject=f"Your {'certificate' if key.certificate else 'encryption key'} expires on {when}",
            template="key-expiry.txt.j2", recipient=recipient,
            values={"expires": when, "fingerprint": key.fingerprint, "subscribed": key.subscribed,
                    "certificate": key.certificate},
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
