"""THE disclosure, for both entry points (an answered request, a monthly delivery): the register as it is now
for a scope, its marked extract sealed to what is pinned for the address (the authority's OpenPGP key, or the
address's S/MIME certificate), and the one record DPA 2018 s.62 asks for."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from gateway import audit
from gateway.compose import Envelope, seal
from gateway.db.models import Authority, Disclosure
from gateway.extracts import EnforcementLike, Extract, ExtractFile, HomeLike, build_extract
from gateway.gpgrun import KeyProblem
from gateway.scope import Scope, disclosable
from gateway.subscriptions import snapshot
from gateway.values import GATEWAY_ACTOR, Context, DisclosureFacts, Outgoing


@dataclass(frozen=True)
class Register:
    """What the register holds for a scope at one moment, and the extract of it under one reference."""

    homes: Sequence[HomeLike]
    actions: Sequence[EnforcementLike]
    extract: Extract

    def snapshot(self) -> dict[str, Any]:
        """Its fingerprint, for the next monthly delivery to say what changed since."""
        return snapshot(self.homes, self.actions)


@dataclass(frozen=True)
class Sealed:
    """A disclosure ready to queue: the encrypted, signed message, and what is logged of it once it is."""

    outgoing: Outgoing
    facts: DisclosureFacts


async def read_register(ctx: Context, scope: Scope, reference: str) -> Register:
    """The scope's homes and enforcement actions, read in one transaction, and their marked extract."""
    async with ctx.db.transaction(write=False) as session:
        homes, actions = await disclosable(session, scope)
    extract = build_extract(homes, actions, marking=ctx.config.gateway.marking, reference=reference)
    return Register(homes, actions, extract)


async def seal_disclosure(
    ctx: Context,
    register: Register,
    *,
    authority: Authority,
    envelope: Envelope,
    area: str,
    purpose: str,
    template: str,
    values: Mapping[str, Any],
    also: Sequence[ExtractFile] = (),
) -> Sealed:
    """The extract (and any `also` files) with the template's letter, encrypted to what is pinned for the
    recipient and signed; KeyProblem when that cannot be done: no data is ever sent in the clear. Its facts name
    the credential it was encrypted to."""
    extract = register.extract
    text = ctx.templates.render(
        template,
        {
            **values,
            "area": area,
            "homes_file": extract.homes.name,
            "home_count": extract.home_count,
            "enforcement_file": extract.enforcement.name,
            "enforcement_count": extract.enforcement_count,
        },
    )
    outgoing = await seal(ctx, "disclosure", envelope, text, authority, files=(*extract.files, *also))
    credential = outgoing.credential
    if credential is None:  # seal always says what it sealed to; logged as such, never guessed
        raise KeyProblem("the disclosure was not sealed to a credential")
    facts = DisclosureFacts(
        reference=envelope.reference,
        authority_name=authority.name,
        recipient=envelope.recipient,
        method=credential.method,
        key_fingerprint=credential.fingerprint,
        area=area,
        purpose=purpose,
        home_count=extract.home_count,
        enforcement_count=extract.enforcement_count,
        extract_sha256=extract.sha256,
        marking=ctx.config.gateway.marking,
    )
    return Sealed(outgoing, facts)


async def record_disclosure(
    ctx: Context,
    session: AsyncSession,
    facts: DisclosureFacts,
    *,
    inbound_id: int | None,
    outbox_id: int,
    now: dt.datetime,
) -> None:
    """In the transaction that queues it: the Disclosure row and its audit record, one shape for every
    disclosure, whether a request or the schedule caused it (`inbound_id` None)."""
    session.add(Disclosure(**dataclasses.asdict(facts), inbound_id=inbound_id, outbox_id=outbox_id, disclosed_at=now))
    await audit.record(
        session,
        actor=GATEWAY_ACTOR,
        action="disclosure",
        subject=facts.reference,
        details={
            "justification": facts.purpose,
            "disclosed_by": f"{GATEWAY_ACTOR} ({ctx.config.gateway.address})",
            "authority": facts.authority_name,
            "recipient": facts.recipient,
            "method": facts.method,  # "openpgp" or "smime": whose fingerprint key_fingerprint is
            "key_fingerprint": facts.key_fingerprint,
            "area": facts.area,
            "homes": facts.home_count,
            "enforcement_actions": facts.enforcement_count,
            "extract_sha256": facts.extract_sha256,
            "marking": facts.marking,
            "outbox_id": outbox_id,
        },
        now=now,
    )
