"""Monthly deliveries, review reminders and lapses: everything due at an instant, done once under unique keys."""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import json
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import structlog
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from gateway import audit, metrics
from gateway.admin.authorities import SMIME
from gateway.compose import (
    Envelope,
    admin_notice,
    envelope_for,
    new_reference,
    reply_values,
    seal,
    sealing_credential,
)
from gateway.config import ScheduleSettings
from gateway.db.models import Authority, Subscription, SubscriptionEvent
from gateway.disclose import read_register, record_disclosure, seal_disclosure
from gateway.extracts import ExtractFile, defuse
from gateway.gpgrun import KeyProblem, in_thread
from gateway.notices import check_keys, summarise_held_alerts
from gateway.outbox import enqueue
from gateway.scope import Scope, ScopeRefusal, still_allowed
from gateway.subscriptions import Ending, end, lapse
from gateway.values import GATEWAY_ACTOR, Context, Credential, DisclosureFacts, Outgoing

log = structlog.get_logger("gateway.schedule")

# ---------------------------------------------------------------- when


def delivery_instant(year: int, month: int, settings: ScheduleSettings) -> dt.datetime:
    """The month's delivery moment in UTC: the configured local time, whatever the clocks did that month."""
    local = dt.datetime.combine(dt.date(year, month, settings.delivery_day), settings.delivery_time)
    return local.replace(tzinfo=ZoneInfo(settings.timezone)).astimezone(dt.UTC)


def due_period(as_of: dt.datetime, settings: ScheduleSettings) -> tuple[int, int]:
    """The latest month whose delivery moment has come: after downtime, one delivery, not one per missed month."""
    local = as_of.astimezone(ZoneInfo(settings.timezone))
    year, month = local.year, local.month
    if as_of < delivery_instant(year, month, settings):
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)
    return year, month


# ---------------------------------------------------------------- what changed


@dataclass(frozen=True)
class Changes:
    new: tuple[str, ...]
    gone: tuple[str, ...]
    changed: tuple[str, ...]
    new_actions: tuple[str, ...]

    def file(self, marking: str, reference: str) -> ExtractFile:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\r\n")
        writer.writerow([marking])
        writer.writerow(["urn", "change"])
        for urns, what in (
            (self.new, "newly registered"),
            (self.changed, "details changed"),
            (self.gone, "closed or removed"),
        ):
            for urn in urns:
                writer.writerow([defuse(urn), what])
        for action in self.new_actions:
            urn, date, nature = action.split("|", 2)
            writer.writerow([defuse(urn), defuse(f"new enforcement action: {date} {nature}")])
        return ExtractFile(f"{marking}-{reference}-changes.csv", buffer.getvalue().encode("utf-8"))


def changes(previous: dict[str, Any] | None, current: dict[str, Any]) -> Changes:
    before = (previous or {}).get("homes", {})
    now = current["homes"]
    return Changes(
        new=tuple(sorted(set(now) - set(before))),
        gone=tuple(sorted(set(before) - set(now))),
        changed=tuple(sorted(urn for urn in set(now) & set(before) if now[urn] != before[urn])),
        new_actions=tuple(sorted(set(current["enforcement"]) - set((previous or {}).get("enforcement", [])))),
    )


# ---------------------------------------------------------------- doing it once

SUBSCRIPTION_KINDS = frozenset({"delivery", "reminder", "lapse"})  # what goes to the authority
WITHHELD = "withheld"  # the admins' notice that one of those could not go


class UnknownKind(ValueError):
    """Something scheduled of a kind the gateway does not make: a fault in the gateway. Nothing is sent for it
    (above all not a lapse notice, which tells an authority its data has stopped), and the admins are told."""


@dataclass(frozen=True)
class Due:
    """One thing to send for one subscription, under the key that makes it happen once."""

    subscription: Subscription
    authority: Authority
    kind: str  # delivery, reminder, lapse (SUBSCRIPTION_KINDS), or withheld (the admins told of one)
    key: str


async def _already(ctx: Context, due: Due) -> bool:
    async with ctx.db.transaction(write=False) as session:
        found = await session.execute(
            select(SubscriptionEvent.id).where(
                SubscriptionEvent.subscription_id == due.subscription.id,
                SubscriptionEvent.kind == due.kind,
                SubscriptionEvent.key == due.key,
            )
        )
        return found.scalar() is not None


def _envelope(ctx: Context, due: Due, reference: str, subject: str) -> Envelope:
    # To the address that asked, checked still to be the authority's; scheduled mail, not an answer (RFC 3834).
    return envelope_for(ctx, due.subscription.address, reference, subject)


async def _latest_snapshot(ctx: Context, subscription_id: int) -> dict[str, Any] | None:
    async with ctx.db.transaction(write=False) as session:
        text = (
            await session.execute(
                select(SubscriptionEvent.snapshot)
                .where(SubscriptionEvent.subscription_id == subscription_id, SubscriptionEvent.snapshot.is_not(None))
                .order_by(SubscriptionEvent.id.desc())
                .limit(1)
            )
        ).scalar()
    return json.loads(text) if text else None


@dataclass(frozen=True)
class Prepared:
    outgoing: Outgoing
    reference: str
    snapshot: dict[str, Any] | None = None
    disclosure: DisclosureFacts | None = None


async def _prepare(ctx: Context, due: Due, as_of: dt.datetime) -> Prepared:
    sub, authority = due.subscription, due.authority
    reference = new_reference(as_of)
    common = reply_values(ctx, authority, sub.address, reference)
    when = f"{sub.review_on:%d %B %Y}"
    if due.kind == "delivery":
        return await _prepare_delivery(ctx, due, reference, common)
    if due.kind == "reminder":
        lines = [
            f"Your monthly subscription for {sub.area} comes up for review on {when}.",
            "To keep receiving it, send an email to the gateway whose body is:",
            "",
            "Request: renewal",
            f"Area: {sub.area.replace(' police force area', '').replace(' local authority area', '')}",
            "Purpose: why you still need it",
            "",
            f"Without that confirmation, deliveries stop on {when}, as the joint protocol requires.",
        ]
        subject = f"Monthly subscription review due ({reference})"
    elif due.kind == "lapse":
        lines = [
            f"Your monthly subscription for {sub.area} was not confirmed by {when} and has lapsed.",
            "No further deliveries will be made. To receive monthly updates again, send a new request with",
            "Request: disclosure and Frequency: monthly.",
        ]
        subject = f"Monthly subscription lapsed ({reference})"
    else:  # no kind is a default: a lapse notice tells an authority its data has stopped
        raise UnknownKind(f"the gateway does not make scheduled mail of the kind {due.kind!r}")
    text = ctx.templates.render("acknowledgement.txt.j2", {**common, "lines": lines})
    return Prepared(await seal(ctx, due.kind, _envelope(ctx, due, reference, subject), text, authority), reference)


async def _prepare_delivery(ctx: Context, due: Due, reference: str, common: dict[str, Any]) -> Prepared:
    sub, authority = due.subscription, due.authority
    register = await read_register(ctx, Scope(sub.police_force_area, sub.local_authority), reference)
    current = register.snapshot()
    diff = changes(await _latest_snapshot(ctx, sub.id), current)
    changes_file = diff.file(ctx.config.gateway.marking, reference)
    values = {
        **common,
        "period": due.key,
        "changes_file": changes_file.name,
        "new": len(diff.new),
        "gone": len(diff.gone),
        "changed": len(diff.changed),
        "new_actions": len(diff.new_actions),
        "review_on": f"{sub.review_on:%d %B %Y}",
    }
    subject = f"Register of children's homes: {sub.area}, {due.key} ({reference})"
    sealed = await seal_disclosure(
        ctx, register, authority=authority, envelope=_envelope(ctx, due, reference, subject), area=sub.area,
        purpose=sub.purpose, template="delivery.txt.j2", values=values, also=(changes_file,),
    )  # fmt: skip
    return Prepared(sealed.outgoing, reference, current, sealed.facts)


class _NoLongerAllowed(Exception):  # not an error: how _record undoes a delivery an admin's change overtook
    pass


async def _as_now(session: AsyncSession, sub: Subscription) -> tuple[Subscription | None, Authority | None]:
    """The subscription and its authority (with its addresses) as they are now, under the caller's lock."""
    query = select(Authority).where(Authority.id == sub.authority_id).options(selectinload(Authority.addresses))
    return await session.get(Subscription, sub.id), (await session.execute(query)).scalar()


async def _still_due(session: AsyncSession, due: Due, sealed_to: Credential | None) -> None:
    """Asked again under the write lock, at the moment of recording: an allowlist change committed since the
    run read the subscription (a new area, a removed address, a suspension) stops what it no longer allows."""
    if due.kind == WITHHELD:
        return  # the admins' own notice
    if due.kind not in SUBSCRIPTION_KINDS:
        raise _NoLongerAllowed  # no kind is let through unchecked
    sub, authority = await _as_now(session, due.subscription)
    if sub is None or authority is None or sub.status != "active" or authority.status != "active":
        raise _NoLongerAllowed
    if isinstance(still_allowed(authority, sub), ScopeRefusal):
        raise _NoLongerAllowed
    # Sealed to a key or certificate since replaced (or to a method the address no longer takes): not sent.
    if sealed_to is None or sealing_credential(authority, sub.address) != sealed_to:
        raise _NoLongerAllowed


async def _record(ctx: Context, due: Due, prepared: Prepared, as_of: dt.datetime) -> bool:
    """The event, its outbox entry and its audit records in one transaction; False if it had happened already,
    or is no longer allowed."""
    try:
        async with ctx.db.transaction() as session:
            await _still_due(session, due, prepared.outgoing.credential)
            outbox_id = await enqueue(
                session, sender=ctx.config.gateway.address, now=as_of, **prepared.outgoing.queued(),
            )  # fmt: skip
            session.add(
                SubscriptionEvent(
                    subscription_id=due.subscription.id, kind=due.kind, key=due.key, happened_at=as_of,
                    outbox_id=outbox_id, reference=prepared.reference,
                    snapshot=json.dumps(prepared.snapshot) if prepared.snapshot else None,
                )
            )  # fmt: skip
            await session.flush()  # the unique key fails here if another run got there first
            if prepared.outgoing.kind == "lapse":
                await lapse(session, due.subscription.id, as_of)
            details = {"subscription": due.subscription.id, "key": due.key, "outbox_id": outbox_id}
            await audit.record(
                session, actor=GATEWAY_ACTOR, action=f"subscription.{due.kind}", subject=prepared.reference,
                details=details, now=as_of,
            )  # fmt: skip
            if prepared.disclosure is not None:
                await record_disclosure(
                    ctx, session, prepared.disclosure, inbound_id=None, outbox_id=outbox_id, now=as_of
                )
    except (IntegrityError, _NoLongerAllowed):
        return False
    if prepared.disclosure is not None:
        metrics.DISCLOSURES.inc()  # counted once committed
    return True


async def _withhold(ctx: Context, due: Due, problem: str, as_of: dt.datetime) -> None:
    """Fail closed: nothing goes to an unusable key. The admins are told once, under a key of its own, so the
    mail still goes if the key is mended before the next run. The alert names what is to be mended: the
    authority's credential, or the gateway's own identity when that is what cannot be used (told under a key
    of its own too: once it is mended, a problem on the authority's side is still told)."""
    own = await _own_identity_problem(ctx, due)
    if own is not None:
        await _tell_withheld(ctx, due, problem, as_of, cause="gateway", mend=_mend_own(ctx, due, own))
    else:
        await _tell_withheld(ctx, due, problem, as_of, cause=None, mend=_mend_authority(due))


async def _tell_withheld(
    ctx: Context, due: Due, problem: str, as_of: dt.datetime, *, cause: str | None, mend: list[str]
) -> None:
    """The admins' alert that `due` was not sent, and why, recorded once for each cause (None: the authority's
    credential, as before causes were told apart)."""
    withheld = Due(due.subscription, due.authority, WITHHELD, f"{due.kind}/{due.key}" + (f"/{cause}" if cause else ""))
    if await _already(ctx, withheld):
        return
    title = f"{due.kind} to {due.authority.name} not sent"
    lines = [
        f"The {due.kind} ({due.key}) for subscription {due.subscription.id}, {due.subscription.area},",
        f"was not sent: {problem}.",
        "",
        *mend,
    ]
    warning = admin_notice(ctx, title, lines)
    prepared = Prepared(warning, new_reference(as_of))
    await _record(ctx, withheld, prepared, as_of)


def _takes_smime(due: Due) -> bool:
    return any(row.address == due.subscription.address and row.method == SMIME for row in due.authority.addresses)


async def _own_identity_problem(ctx: Context, due: Due) -> str | None:
    """Why the gateway's own identity that signs mail to the subscription's address cannot be used now (its
    S/MIME certificate, or its OpenPGP signing key), or None when it can."""
    if not _takes_smime(due):
        return await _own_key_problem(ctx)
    if ctx.smime is None:
        return "the gateway has no S/MIME identity ([smime])"
    own = ctx.smime.certificate
    problems = own.problems(ctx.config.gateway.address, ctx.clock())
    return f"the gateway's S/MIME certificate {own.fingerprint}: {'; '.join(problems)}" if problems else None


async def _own_key_problem(ctx: Context) -> str | None:
    signer = ctx.config.gpg.signing_key
    if signer is None:
        return "the gateway has no signing key ([gpg] signing_key)"
    info = await ctx.keyring.inspect_cached(signer)
    if info is None or not await in_thread(ctx.keyring.has_secret, signer):
        return f"the gateway's signing key {signer} is not in {ctx.config.gpg.home} with its secret key"
    if info.revoked:
        return f"the gateway's signing key {signer} is revoked"
    if not info.can_sign or (info.signing_expires is not None and info.signing_expires <= ctx.clock()):
        ended = f" (since {info.signing_expires:%Y-%m-%d})" if info.signing_expires else ""
        return f"the gateway's signing key {signer} can no longer sign{ended}"
    return None


def _mend_own(ctx: Context, due: Due, own: str) -> list[str]:
    """What the admins do when the gateway's own identity is the cause: nothing is wrong with the authority's."""
    if _takes_smime(due):
        how = [
            "Give the gateway a usable S/MIME certificate ([smime] certificate and key: `gateway init",
            "--smime-csr FILE` writes a request for the CA with the same key), run `gateway init` to check",
            "it, restart the gateway, and send authorities the new certificate (`gateway key export --smime`).",
        ]
    else:
        home = ctx.config.gpg.home
        how = [
            f"Mend the gateway's signing key in {home}: an expired one is extended by",
            f"gpg --homedir {home} --quick-set-expire <fingerprint> 2y (and its encryption subkey);",
            "for a lost or revoked one, unset [gpg] signing_key and run `gateway init` to make a new key,",
            "then send authorities the public key (`gateway key export`).",
        ]
    return [
        f"The cause is the gateway's own identity, not {due.authority.name}'s: {own}.",
        "",
        *how,
        "Nothing was sent in its place; the next schedule run after that sends it.",
    ]


def _mend_authority(due: Due) -> list[str]:
    name, address = due.authority.name, due.subscription.address
    pin = (
        ("certificate", f"gateway authority set-cert '{name}' --email {address} --cert <file.pem>")
        if _takes_smime(due)
        else ("key", f"gateway authority set-key '{name}' <file.asc>")
    )
    return [
        f"Nothing was sent in its place. Once a usable {pin[0]} is pinned",
        f"({pin[1]}) the next schedule run sends it.",
    ]


async def _end(ctx: Context, sub: Subscription, why: str, as_of: dt.datetime) -> int:
    """A subscription its authority's registration no longer allows ends, with notice, alert and audit;
    asked again under the write lock, so a run racing another, or an admin's change, ends it once."""
    async with ctx.db.transaction() as session:
        row, authority = await _as_now(session, sub)
        if row is None or authority is None or row.status != "active":
            return 0
        verdict = still_allowed(authority, row)
        if not isinstance(verdict, ScopeRefusal):
            return 0
        await end(ctx, session, authority, [Ending(row, verdict.reason)], actor=GATEWAY_ACTOR, now=as_of)
    return 1


def next_delivery(as_of: dt.datetime, settings: ScheduleSettings) -> dt.datetime:
    year, month = due_period(as_of, settings)
    year, month = (year, month + 1) if month < 12 else (year + 1, 1)
    return delivery_instant(year, month, settings)


async def run_due(ctx: Context, as_of: dt.datetime) -> dict[str, int]:
    """Everything due at `as_of`, each at most once however often this runs, and whoever else runs it."""
    ctx = dataclasses.replace(ctx, clock=lambda: as_of)  # keys, dates and notices judged at that instant
    settings = ctx.config.schedule
    async with ctx.db.transaction(write=False) as session:
        rows = (await session.execute(select(Subscription).where(Subscription.status == "active"))).scalars().all()
        query = select(Authority).options(selectinload(Authority.addresses))
        authorities = {a.id: a for a in (await session.execute(query)).scalars()}
    subscribed = {sub.authority_id for sub in rows}
    counts = {
        "delivery": 0, "reminder": 0, "lapse": 0, "ended": 0, "key notice": 0, "alert summary": 0, "skipped": 0,
    }  # fmt: skip
    # Before any delivery: warn of keys that will not last until the next one.
    counts["key notice"] = await check_keys(ctx, as_of, next_delivery(as_of, settings), subscribed)
    counts["alert summary"] = int(await summarise_held_alerts(ctx, as_of) > 0)
    today = as_of.astimezone(ZoneInfo(settings.timezone)).date()
    for sub in rows:
        authority = authorities.get(sub.authority_id)
        if authority is None or authority.status != "active" or not authority.addresses:
            counts["skipped"] += 1  # a suspended authority is sent nothing; its deliveries resume with it
            continue
        # The mail path's rules at the moment of delivery: what the authority may no longer see is never sent.
        verdict = still_allowed(authority, sub)
        if isinstance(verdict, ScopeRefusal):
            counts["ended"] += await _end(ctx, sub, verdict.reason, as_of)
            continue
        for due in _what_is_due(sub, authority, as_of, today, settings):
            done = await settle_due(ctx, due, as_of)
            if done is not None:
                counts[done] += 1
    return counts


async def settle_due(ctx: Context, due: Due, as_of: dt.datetime) -> str | None:
    """One thing due, at most once: built, sealed and recorded (its kind returned), or withheld with the admins
    told ("skipped"); None when it was done already, or is no longer allowed."""
    if await _already(ctx, due):
        return None
    try:
        prepared = await _prepare(ctx, due, as_of)
    except KeyProblem as exc:
        await _withhold(ctx, due, str(exc), as_of)
        return "skipped"
    except UnknownKind as exc:
        # A fault in the gateway, its traceback wanted: the kind is all the error says, no register data.
        log.exception("scheduled mail of an unknown kind withheld", kind=due.kind, subscription=due.subscription.id)
        mend = [
            "This is a fault in the gateway, not in the subscription: nothing was sent for it, and",
            "nothing will be. Report it with this message.",
        ]
        await _tell_withheld(ctx, due, str(exc), as_of, cause="unknown", mend=mend)
        return "skipped"
    return due.kind if await _record(ctx, due, prepared, as_of) else None


def _what_is_due(
    sub: Subscription, authority: Authority, as_of: dt.datetime, today: dt.date, settings: ScheduleSettings
) -> list[Due]:
    if today >= sub.review_on:  # the protocol: no confirmation in twelve months, no more data
        return [Due(sub, authority, "lapse", sub.review_on.isoformat())]
    due: list[Due] = []
    # Only the nearest reminder whose time has come: after downtime, one reminder, not two at once.
    opened = [days for days in settings.reminder_days if today >= sub.review_on - dt.timedelta(days=days)]
    if opened:
        days = min(opened)
        due.append(Due(sub, authority, "reminder", f"{sub.review_on.isoformat()}/{days}"))
    year, month = due_period(as_of, settings)
    if delivery_instant(year, month, settings).astimezone(ZoneInfo(settings.timezone)).date() > sub.started_on:
        due.append(Due(sub, authority, "delivery", f"{year:04d}-{month:02d}"))
    return due


def next_events(sub: Subscription, now: dt.datetime, settings: ScheduleSettings) -> dict[str, str]:
    """When this subscription's next delivery, reminder and review fall, as an operator reads them."""
    zone = ZoneInfo(settings.timezone)
    year, month = due_period(now, settings)
    for _ in range(14):  # at most a year and a bit ahead
        year, month = (year, month + 1) if month < 12 else (year + 1, 1)
        moment = delivery_instant(year, month, settings)
        if moment.astimezone(zone).date() > sub.started_on:
            break
    delivery = moment if moment.astimezone(zone).date() < sub.review_on else None
    today = now.astimezone(zone).date()
    reminders = sorted(
        sub.review_on - dt.timedelta(days=days)
        for days in settings.reminder_days
        if sub.review_on - dt.timedelta(days=days) > today
    )
    return {
        "next_delivery": delivery.isoformat(timespec="minutes") if delivery else "none before the review",
        "next_reminder": reminders[0].isoformat() if reminders else "none left",
        "review_on": sub.review_on.isoformat(),
    }
