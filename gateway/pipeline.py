"""THE path a request takes, read top-down: arrive, decide, record. Every message ends in exactly one outcome."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
from email import message_from_bytes
from email.message import EmailMessage
from typing import Any

import structlog
from sqlalchemy import event, select

from gateway import audit, limits, metrics
from gateway.authenticate import (
    SIGNED_POLICIES,
    Authenticated,
    Credential,
    PinnedCertificate,
    PinnedKey,
    Refused,
    authenticate,
    find_authority,
    pinned_credential,
    registered_addresses,
    sender_of,
)
from gateway.db import dialect
from gateway.db.models import (
    InboundMessage,
    Notice,
    QuarantinedMessage,
    RecordFailure,
    SeenSignature,
)
from gateway.disclose import record_disclosure
from gateway.gpgrun import in_thread
from gateway.guard import (
    automatic_mail,
    message_id_label,
    read_policy,
    sender_header_problem,
    signature_age_problem,
    too_big,
    unreadable_headers,
)
from gateway.lookalike import claims
from gateway.notices import answer_limit, impostor, quarantine
from gateway.outbox import enqueue
from gateway.replies import acknowledge, disclose, refuse
from gateway.requests import body_text, parse_request
from gateway.scope import ScopeRefusal, resolve_scope
from gateway.subscriptions import apply_by_mail, monthly_change
from gateway.values import (
    GATEWAY_ACTOR,
    Arrival,
    Asker,
    Context,
    Decision,
    Outcome,
    OutcomeKind,
    Outgoing,
)

log = structlog.get_logger("gateway.pipeline")


async def process(ctx: Context, raw: bytes, source: str) -> Outcome:
    """One raw message through the whole path. Safe to repeat: the same bytes are recorded only once."""
    arrival = arrive(raw, source, ctx.clock(), ctx.config.limits.max_header_bytes)
    seen = await previously(ctx, arrival)  # a message already decided is never decided again
    if seen is not None:
        return seen
    try:
        decision = await decide(ctx, arrival)
    except Exception as exc:
        reason = f"processing failed ({type(exc).__name__}); kept for a person to look at"
        log.error("message could not be decided", error=type(exc).__name__, sha256=arrival.sha256[:12])  # noqa: TRY400 - no traceback: its text could quote the message or register data
        decision = quarantine(ctx, arrival, reason)
    # A failure to record is not an outcome: it propagates, and the message is tried again later; unless it
    # fails the same way, not an outage, again and again (RECORD_TRIES): then it is set aside for a person.
    try:
        return await record(ctx, arrival, decision)
    except Exception as exc:
        error = type(exc).__name__ + (f" {state}" if (state := dialect.sqlstate(exc)) else "")
        if dialect.outage(exc) or await _failures(ctx, arrival, error) < RECORD_TRIES:
            raise
        log.error("message set aside: it cannot be recorded", error=error, sha256=arrival.sha256[:12])  # noqa: TRY400 - no traceback, as above
    return await set_aside(ctx, arrival, error)


RECORD_TRIES = 3  # failures of one kind, in a row, that set a message aside


async def _failures(ctx: Context, arrival: Arrival, error: str) -> int:
    """Count this failure durably, for the message's digest; returns the failures in a row of this kind."""
    now = ctx.clock()
    async with ctx.db.transaction() as session:
        row = await session.get(RecordFailure, arrival.sha256)
        if row is None:
            session.add(RecordFailure(sha256=arrival.sha256, error=error, count=1, first_at=now, last_at=now))
            return 1
        row.count, row.error, row.last_at = (row.count + 1 if row.error == error else 1), error, now
        return row.count


async def set_aside(ctx: Context, arrival: Arrival, error: str) -> Outcome:
    """Record, with nothing the sender wrote but its bytes kept whole for a person, a message whose decision
    cannot be recorded: quarantined, and the admins told, so the messages behind it go on."""
    reason = (
        f"the message's outcome could not be recorded ({error}, {RECORD_TRIES} times): set aside, "
        "nothing was sent; kept for a person to look at"
    )
    bare = dataclasses.replace(arrival, message_id=None)  # a value the sender chose may be what cannot be stored
    return await record(ctx, bare, quarantine(ctx, bare, reason))


def arrive(raw: bytes, source: str, now: dt.datetime, header_limit: int = 256 * 1024) -> Arrival:
    """The raw bytes, their digest and their Message-ID as a label; nothing else is parsed before decide()."""
    return Arrival(raw, hashlib.sha256(raw).hexdigest(), message_id_label(raw, header_limit), source, now)


async def previously(ctx: Context, arrival: Arrival) -> Outcome | None:
    async with ctx.db.transaction(write=False) as session:
        row = (await session.execute(select(InboundMessage).where(InboundMessage.sha256 == arrival.sha256))).scalar()
    if row is None:
        return None
    return Outcome(
        OutcomeKind.DUPLICATE,
        f"already processed as message {row.id} ({row.outcome})",
        row.id,
        row.reference,
        row.outcome,
    )


async def decide(ctx: Context, arrival: Arrival, *, releasing: int | None = None) -> Decision:  # noqa: PLR0911, PLR0912 - a step per line
    """Who sent it, may they ask, what did they ask, may they have it; then the answer, built but not yet sent."""
    unparsable = too_big(arrival.raw, ctx.config.limits)  # before the parser spends a second on it
    if unparsable is not None:
        return quarantine(ctx, arrival, unparsable)
    message = message_from_bytes(arrival.raw, policy=read_policy())
    if not isinstance(message, EmailMessage):
        return Decision(OutcomeKind.QUARANTINED, "the message could not be parsed")
    unreadable = unreadable_headers(message)  # the parser itself fails on some (From: x <a@)
    if unreadable is not None:
        return quarantine(ctx, arrival, unreadable)
    automatic = automatic_mail(message)  # RFC 3834: never answer a machine
    if automatic is not None:
        return Decision(OutcomeKind.REJECTED, f"automatic mail is never answered ({automatic})")
    sender = sender_of(message)  # exactly one From mailbox, no defects
    if isinstance(sender, Refused):  # a From built to be read one way by people and another by software
        return await impostor(ctx, arrival, message, sender.reason, None)
    authority = await find_authority(ctx.db, sender)
    if authority is None:
        registered = await registered_addresses(ctx.db)
        found = claims(message, registered, sender=sender)
        if found:  # a registered address shown, or imitated
            why = f"{sender} is not a registered address"
            return await impostor(ctx, arrival, message, why, sender, registered=registered, found=found)
        return Decision(OutcomeKind.REJECTED, f"{sender} is not a registered address", sender)  # no backscatter
    if authority.status != "active":
        return Decision(OutcomeKind.REJECTED, f"authority {authority.name!r} is suspended", sender, authority)
    async with ctx.db.transaction(write=False) as session:
        replay = await limits.message_id_replay(session, arrival.message_id, releasing)
    suspect = sender_header_problem(message, sender) or replay
    if suspect is not None:
        return await impostor(ctx, arrival, message, suspect, sender, authority)
    # The sending address's own, and no other, as it stands now: a message released from quarantine is judged
    # by a certificate valid today, as gpg judges a key.
    pinned = pinned_credential(authority, sender, ctx.clock())
    with _timed_check(pinned, authority.auth_policy):  # the check, or decryption then the check: off the loop
        authentic = await in_thread(_authenticate, ctx, message, arrival.raw, authority.auth_policy, pinned)
    if isinstance(authentic, Refused):  # a registered address that fails authentication: a person looks
        return await impostor(ctx, arrival, message, f"authentication failed: {authentic.reason}", sender, authority)
    signature = authentic.signature
    if signature is not None:
        stale = signature_age_problem(signature.signed_at, arrival.received_at, ctx.config.limits)
        if stale is not None:
            return await impostor(ctx, arrival, message, stale, sender, authority)
        async with ctx.db.transaction(write=False) as session:  # the same signature, acted on before
            replayed = await limits.signature_replay(session, signature, releasing)
        if replayed is not None:
            return quarantine(ctx, arrival, replayed, sender, authority)
    decision = await answer(ctx, arrival, Asker(message, authority, sender), authentic, releasing=releasing)
    # Recorded with it: the signature, never to be used again, and how the sender was authenticated.
    return dataclasses.replace(decision, signature=signature, authenticated=authentic.method)


async def answer(
    ctx: Context, arrival: Arrival, asker: Asker, authentic: Authenticated, *, releasing: int | None
) -> Decision:
    """An authenticated request: what it asks, whether it may have it, and the answer, built but not yet sent."""
    authority = asker.authority
    limited = None if releasing else await answer_limit(ctx, arrival, asker)  # a person let this one through
    if limited is not None:
        return limited
    parsed = parse_request(body_text(authentic.content))
    if parsed.request is None:
        # Every problem at once: an area outside the authority's own is named even when other fields are wrong.
        area = resolve_scope(authority.kind, authority.area, parsed.area) if parsed.area else None
        extra = [area.reason] if isinstance(area, ScopeRefusal) else []
        return await refuse(ctx, arrival, asker, [*parsed.problems, *extra])
    request = parsed.request
    scope = resolve_scope(authority.kind, authority.area, request.area)
    if isinstance(scope, ScopeRefusal):
        return await refuse(ctx, arrival, asker, [scope.reason])
    if request.kind != "disclosure":  # renewal or cancel of a monthly subscription
        return await acknowledge(ctx, arrival, asker, request, scope)
    monthly = request.frequency == "monthly"
    change = await monthly_change(ctx.db, authority, scope, ctx.clock().date()) if monthly else None
    return await disclose(ctx, arrival, asker, request, scope, change=change)


def _timed_check(pinned: Credential, policy: str) -> contextlib.AbstractContextManager[None]:
    """The signature check timed as the tool's own: openssl's for an S/MIME address, gpg's for an OpenPGP one. A
    policy of DMARC alone, or nothing usable pinned, runs neither tool and is timed as neither."""
    if policy not in SIGNED_POLICIES:
        return contextlib.nullcontext()
    if isinstance(pinned, PinnedCertificate):
        return metrics.timed_openssl("verify")
    if isinstance(pinned, PinnedKey):
        return metrics.timed_gpg("verify")
    return contextlib.nullcontext()


def _authenticate(ctx: Context, message: EmailMessage, raw: bytes, policy: str, pinned: Credential) -> Any:
    return authenticate(
        message,
        raw,
        policy=policy,
        pinned=pinned,
        authserv_id=ctx.config.gateway.authserv_id,
        verify=ctx.keyring.verify_detached,
        decrypt=ctx.keyring.decrypt,
        smime=ctx.smime,
        limits=ctx.config.limits,
    )


# ---------------------------------------------------------------- recording: the rules asked again under the lock


async def _unless_replayed(ctx: Context, session: Any, arrival: Arrival, decision: Decision) -> Decision:
    """A copy decided side by side with the first, or a Message-ID seen before with other bytes (a relay
    re-delivering with a new header, or a replay), is recorded in its own right but never acted on twice."""
    replay = await limits.signature_replay(session, decision.signature) if decision.signature else None
    if replay is None and decision.outcome in (OutcomeKind.ANSWERED, OutcomeKind.REFUSED):
        replay = await limits.message_id_replay(session, arrival.message_id)
    if replay is None:
        return decision
    return quarantine(ctx, arrival, replay, decision.sender, decision.authority)


async def _notices_within_limit(ctx: Context, session: Any, decision: Decision) -> Decision:
    """The daily limit of impostor notices to an authority, counted again under the write lock, as answers are."""
    kept: list[Outgoing] = []
    for item in decision.outgoing:
        if item.kind == "impostor-notice" and await limits.impostor_notices_spent(
            session, ctx.config.limits, item.recipient, ctx.clock()
        ):
            continue  # told enough today; the admins' alert still goes
        kept.append(item)
    return dataclasses.replace(decision, outgoing=tuple(kept))


async def _unless_over_limit(ctx: Context, session: Any, arrival: Arrival, decision: Decision) -> Decision:
    """The daily answer limit, counted again under the write lock: requests decided side by side (by the
    daemon's workers, or by two gateways) cannot together pass it. One held here is held like any other; its
    authority is told with the next request over the limit (answer_limit), which finds no notice sent yet."""
    authority = decision.authority
    if authority is None or not any(item.kind in limits.ANSWERS for item in decision.outgoing):
        return decision
    spent = await limits.answers_spent(session, ctx.config.limits, authority, ctx.clock())
    if spent is None:
        return decision
    return quarantine(ctx, arrival, spent, decision.sender, authority)


async def record(ctx: Context, arrival: Arrival, decision: Decision) -> Outcome:
    """The outcome, its outgoing mail and its audit records, all in one transaction, or none of them."""
    now = ctx.clock()
    async with ctx.db.transaction() as session:
        # Checked again under the write lock: two workers racing on the same bytes record it once.
        existing = (
            await session.execute(select(InboundMessage).where(InboundMessage.sha256 == arrival.sha256))
        ).scalar()
        if existing is not None:
            return Outcome(
                OutcomeKind.DUPLICATE,
                f"already processed as message {existing.id}",
                existing.id,
                existing.reference,
                existing.outcome,
            )
        decision = await _unless_replayed(ctx, session, arrival, decision)
        decision = await _unless_over_limit(ctx, session, arrival, decision)
        decision = await _notices_within_limit(ctx, session, decision)
        inbound = InboundMessage(
            sha256=arrival.sha256,
            message_id=arrival.message_id,
            source=arrival.source,
            received_at=arrival.received_at,
            size=len(arrival.raw),
        )
        return await settle(ctx, session, arrival, decision, inbound=inbound, now=now)


async def settle(
    ctx: Context, session: Any, arrival: Arrival, decision: Decision, *, inbound: InboundMessage, now: dt.datetime
) -> Outcome:
    """The one commit step, for a new message (record) and for a held one a person released (its row updated,
    not a new one): the outcome on the message's row, its outgoing mail, notices, audit records, signature,
    subscription change and disclosure log, all in the caller's transaction."""
    inbound.outcome, inbound.reason, inbound.reference = decision.outcome, decision.reason, decision.reference
    inbound.sender = decision.sender
    inbound.authority_id = decision.authority.id if decision.authority else None
    if inbound.id is None:
        session.add(inbound)
        await session.flush()
        if decision.outcome == OutcomeKind.QUARANTINED:  # kept whole, for a person to read, release or discard
            session.add(QuarantinedMessage(inbound_id=inbound.id, content=arrival.raw, status="held"))
    await _commit_decision(ctx, session, arrival, decision, inbound=inbound, now=now)
    if decision.disclosure is not None:  # counted once committed: a rolled-back attempt is retried, not disclosed
        event.listen(session.sync_session, "after_commit", lambda _session: metrics.DISCLOSURES.inc(), once=True)
    return Outcome(decision.outcome, decision.reason, inbound.id, decision.reference)


async def _commit_decision(
    ctx: Context, session: Any, arrival: Arrival, decision: Decision, *, inbound: InboundMessage, now: dt.datetime
) -> None:
    """A decision's outgoing mail, notices, audit records, subscription change and disclosure log."""
    queued: dict[str, list[int]] = {}  # outbox ids by kind: several authorities may each get a notice
    for item in decision.outgoing:
        if item.kind == "alert" and await limits.alerts_spent(session, ctx.config.limits, now):
            inbound.alert_held = "held"  # told of in the next summary, so an attack cannot flood HMCI
            continue
        outbox_id = await enqueue(
            session, now=now, sender=ctx.config.gateway.address, inbound_id=inbound.id, **item.queued()
        )
        queued.setdefault(item.kind, []).append(outbox_id)
    for kind, key in decision.notices:
        await session.execute(
            dialect.insert(session, Notice)
            .values(kind=kind, key=key, created_at=now, outbox_id=queued.get(kind, [None])[0])
            .on_conflict_do_nothing()
        )
    await audit.record(
        session,
        actor=GATEWAY_ACTOR,
        action=f"inbound.{decision.outcome}",
        subject=arrival.message_id or arrival.sha256,
        details={
            "inbound_id": inbound.id,
            "sha256": arrival.sha256,
            "source": arrival.source,
            "sender": decision.sender,
            "authority": decision.authority.name if decision.authority else None,
            "reason": decision.reason,
            "reference": decision.reference,
            "authenticated": decision.authenticated,
            "outgoing": dict(queued),
        },
        now=now,
    )
    signature = decision.signature
    if signature is not None:  # kept for good: longer than any signature is accepted
        for key in signature.replay_keys():
            await session.execute(
                dialect.insert(session, SeenSignature)
                .values(signature_id=key, inbound_id=inbound.id, signed_at=signature.signed_at, seen_at=now)
                .on_conflict_do_nothing()
            )
    if decision.subscription is not None and decision.authority is not None:
        await apply_by_mail(session, decision.subscription, decision, inbound.id, now)
    if decision.disclosure is not None:
        await record_disclosure(
            ctx, session, decision.disclosure, inbound_id=inbound.id, outbox_id=queued["disclosure"][0], now=now
        )
