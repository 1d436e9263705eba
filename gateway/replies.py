"""The answers to an authenticated request, built but not yet sent: a refusal saying what to fix, an
acknowledgement of a renewal or cancellation, or the disclosure itself."""

from __future__ import annotations

import dataclasses
import json

from gateway.compose import envelope_for, new_reference, reply_values, seal
from gateway.disclose import read_register, seal_disclosure
from gateway.gpgrun import KeyProblem
from gateway.notices import quarantine
from gateway.requests import FORMAT_HELP, Request
from gateway.scope import Scope
from gateway.subscriptions import find_subscription, review_date, subscription_note
from gateway.values import Arrival, Asker, Context, Decision, OutcomeKind, SubscriptionChange


async def refuse(ctx: Context, arrival: Arrival, asker: Asker, problems: list[str]) -> Decision:
    """An authenticated request that cannot be met: an encrypted answer saying what to fix, and no data."""
    message, authority, sender = asker.message, asker.authority, asker.sender
    reference = new_reference(ctx.clock())
    envelope = envelope_for(
        ctx, sender, reference, answering=message, subject=f"Your request could not be answered ({reference})"
    )
    text = ctx.templates.render(
        "refusal.txt.j2",
        {**reply_values(ctx, authority, sender, reference), "problems": problems, "format_help": FORMAT_HELP},
    )
    reason = "; ".join(problems)
    try:
        reply = await seal(ctx, "refusal", envelope, text, authority)
    except KeyProblem as exc:
        return quarantine(ctx, arrival, f"{reason}; no answer could be sent: {exc}", sender, authority)
    return Decision(OutcomeKind.REFUSED, reason, sender, authority, reference, (reply,))


async def acknowledge(ctx: Context, arrival: Arrival, asker: Asker, request: Request, scope: Scope) -> Decision:
    """A renewal or a cancellation: applied to the active subscription for the area, and answered, encrypted."""
    current = await find_subscription(ctx.db, asker.authority, scope, "active")
    if current is None:
        lapsed = await find_subscription(ctx.db, asker.authority, scope, "lapsed")
        if lapsed is not None and request.kind == "renewal":
            problem = (
                f"your monthly subscription for {scope.description} lapsed on {lapsed.review_on:%d %B %Y}: "
                "to receive monthly updates again, send a new request with Request: disclosure and Frequency: monthly"
            )
        else:
            problem = f"there is no active monthly subscription for {scope.description} to {request.kind}"
        return await refuse(ctx, arrival, asker, [problem])
    today = ctx.clock().date()
    if request.kind == "renewal":
        change = SubscriptionChange("renew", scope, review_date(today), current.id)
        lines = [
            f"Your monthly subscription for {scope.description} is confirmed.",
            f"Its next review falls on {change.review_on:%d %B %Y}; you will be reminded before then.",
        ]
    else:
        change = SubscriptionChange("cancel", scope, current.review_on, current.id)
        lines = [
            f"Your monthly subscription for {scope.description} is cancelled: no further deliveries will be made.",
            "To receive monthly updates again, send a new request with Frequency: monthly.",
        ]
    reference = new_reference(ctx.clock())
    subject = f"Monthly subscription {request.kind} ({reference})"
    envelope = envelope_for(ctx, asker.sender, reference, subject, answering=asker.message)
    text = ctx.templates.render(
        "acknowledgement.txt.j2", {**reply_values(ctx, asker.authority, asker.sender, reference), "lines": lines}
    )
    try:
        reply = await seal(ctx, "acknowledgement", envelope, text, asker.authority)
    except KeyProblem as exc:
        reason = f"{request.kind} of subscription {current.id} not applied: no answer could be sent: {exc}"
        return quarantine(ctx, arrival, reason, asker.sender, asker.authority)
    reason = f"subscription {current.id} for {scope.description}: {request.kind}"
    return Decision(OutcomeKind.ANSWERED, reason, asker.sender, asker.authority, reference, (reply,), None, change)


async def disclose(
    ctx: Context, arrival: Arrival, asker: Asker, request: Request, scope: Scope, *, change: SubscriptionChange | None
) -> Decision:
    """The extract for the scope, encrypted to the pinned key and signed; fail closed if that cannot be done."""
    authority, sender = asker.authority, asker.sender
    reference = new_reference(ctx.clock())
    register = await read_register(ctx, scope, reference)
    subject = f"Register of children's homes: {scope.description} ({reference})"
    values = {
        **reply_values(ctx, authority, sender, reference),
        "request_date": arrival.received_at.strftime("%d %B %Y"),
        "purpose": request.purpose,
        "subscription": subscription_note(change),
    }
    envelope = envelope_for(ctx, sender, reference, subject, answering=asker.message)
    try:
        sealed = await seal_disclosure(
            ctx, register, authority=authority, envelope=envelope,
            area=scope.description, purpose=request.purpose, template="disclosure.txt.j2", values=values,
        )  # fmt: skip
    except KeyProblem as exc:
        return quarantine(ctx, arrival, f"no data sent: {exc}", sender, authority)
    if change is not None and change.action == "create":
        change = dataclasses.replace(change, snapshot=json.dumps(register.snapshot()))
    reason = f"{sealed.facts.home_count} homes of {scope.description} disclosed"
    return Decision(
        OutcomeKind.ANSWERED, reason, sender, authority, reference, (sealed.outgoing,), sealed.facts, change
    )
