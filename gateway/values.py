"""The values that pass between the steps of the path: what arrived, what was decided, how it ended."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from gateway.config import Config
from gateway.crypto import Keyring
from gateway.db.engine import Database
from gateway.db.models import Authority
from gateway.scope import Scope
from gateway.signatures import SignatureStatus
from gateway.smime.identity import Identity

if TYPE_CHECKING:  # compose builds Outgoing values: it imports this module
    from gateway.compose import Templates

GATEWAY_ACTOR = "gateway"  # the actor of what the gateway does by itself, in the audit log


class OutcomeKind(StrEnum):
    """The few outcomes a message can have (STYLE.md), spelled here once; stored and logged by their values."""

    ANSWERED = "answered"  # with data, or an acknowledgement
    REFUSED = "refused"  # the sender is told, encrypted, what to fix; no data
    REJECTED = "rejected"  # no answer and no data: not a registered sender, a suspended one, or a machine
    QUARANTINED = "quarantined"  # kept whole for a person to look at, release or discard
    DUPLICATE = "duplicate"  # the same bytes seen before: changes nothing, filed as the first was


@dataclass(frozen=True)
class Context:
    """What the pipeline works with; built once at start (daemon) or per command (`gateway process`)."""

    config: Config
    db: Database
    keyring: Keyring
    templates: Templates
    clock: Callable[[], dt.datetime] = field(default=lambda: dt.datetime.now(dt.UTC))
    smime: Identity | None = None  # the gateway's S/MIME identity ([smime]); None: no S/MIME mail at all


@dataclass(frozen=True)
class Arrival:
    raw: bytes
    sha256: str
    message_id: str | None
    source: str
    received_at: dt.datetime


@dataclass(frozen=True)
class Credential:
    """What mail to one registered address is sealed to: its method ("openpgp", the authority's pinned key; or
    "smime", the certificate pinned for that address), and that key's or certificate's fingerprint (the
    certificate's is the SHA-256 of its DER, upper-case hex)."""

    method: str
    fingerprint: str


@dataclass(frozen=True)
class Outgoing:
    kind: str  # disclosure, refusal or alert
    recipient: str
    message_id: str
    content: bytes
    credential: Credential | None = None  # what it was encrypted to; None for the admins' mail (signed only)

    def queued(self) -> dict[str, Any]:
        """What `outbox.enqueue` needs to know of it."""
        sealed = self.credential
        return {
            "kind": self.kind, "recipient": self.recipient, "message_id": self.message_id, "content": self.content,
            "sealed_method": sealed and sealed.method, "sealed_fingerprint": sealed and sealed.fingerprint,
        }  # fmt: skip


@dataclass(frozen=True)
class DisclosureFacts:
    """What DPA 2018 s.62 asks to be logged of a disclosure, besides when and to which outgoing message."""

    reference: str
    authority_name: str
    recipient: str
    # The credential the disclosure was encrypted to: "openpgp" and the key's fingerprint, or "smime" and the
    # certificate's SHA-256 fingerprint.
    method: str
    key_fingerprint: str
    area: str
    purpose: str
    home_count: int
    enforcement_count: int
    extract_sha256: str
    marking: str


@dataclass(frozen=True)
class Decision:
    outcome: OutcomeKind
    reason: str
    sender: str | None = None
    authority: Authority | None = None
    reference: str | None = None
    outgoing: tuple[Outgoing, ...] = ()
    disclosure: DisclosureFacts | None = None
    subscription: SubscriptionChange | None = None
    notices: tuple[tuple[str, str], ...] = ()  # (kind, key) of notices sent at most once, recorded with it
    signature: SignatureStatus | None = None  # the signature that authenticated the request, never to be used again
    authenticated: str | None = None  # how the sender was: "pgp", "smime" or "dmarc" (Authenticated.method)


@dataclass(frozen=True)
class Asker:
    """An authenticated request's origin: the message, the authority, the registered address it came from."""

    message: EmailMessage
    authority: Authority
    sender: str


@dataclass(frozen=True)
class Outcome:
    kind: OutcomeKind
    reason: str
    inbound_id: int
    reference: str | None = None
    settled_as: str = ""  # the outcome that decides where the message is filed: a duplicate's is its original's

    def __post_init__(self) -> None:
        if not self.settled_as:
            object.__setattr__(self, "settled_as", self.kind)


@dataclass(frozen=True)
class SubscriptionChange:
    """What a request does to a subscription, decided before and applied inside the outcome's transaction."""

    action: str  # create, already-active, renew, cancel
    scope: Scope
    review_on: dt.date
    subscription_id: int | None = None
    snapshot: str | None = None  # what the first answer held, for the first delivery's summary of changes
