"""Tables of the register, the allowlist of authorities, the mail path's records and the audit trail.

Over 400 lines on purpose: every table is declared here, so that the schema reads in one place (the
migrations beside it are its history).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, InstrumentedAttribute, Mapped, mapped_column, relationship


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Aware UTC datetimes on every backend (SQLite would otherwise hand back naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def storable_text(value: str, length: int | None = None) -> str:
    """Text any database keeps as it is given: no NUL (PostgreSQL refuses it), no lone surrogate (the parser
    keeps undecodable header bytes as those, and UTF-8 cannot encode them), no longer than its column."""
    if "\x00" in value or not value.isascii():
        value = value.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")
    if length is not None and len(value) > length:
        value = value[: length - 1] + "\u2026"
    return value


class Storable(TypeDecorator[str]):
    """Every String column: whatever a sender wrote is made storable here, on its way in, in one place, so that
    no value can make a row impossible to record (and a message wait for ever behind it)."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else storable_text(value, self.length)

    @property
    def length(self) -> int | None:
        impl = self.impl_instance
        return impl.length if isinstance(impl, String) else None


class StorableText(Storable):
    """Every Text column, likewise."""

    impl = Text
    cache_ok = True


def stored(column: InstrumentedAttribute[str], value: str) -> str:
    """The text a column will hold for `value`: for what must be hashed as it is stored (the audit trail)."""
    kind = column.property.columns[0].type
    return storable_text(value, kind.length if isinstance(kind, (Storable, String)) else None)


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_name)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class RegisterImport(Base):
    __tablename__ = "register_imports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    imported_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    actor: Mapped[str] = mapped_column(String(200))
    homes_file: Mapped[str] = mapped_column(Text)
    homes_sha256: Mapped[str] = mapped_column(String(64))
    enforcement_file: Mapped[str | None] = mapped_column(Text)
    enforcement_sha256: Mapped[str | None] = mapped_column(String(64))
    home_count: Mapped[int] = mapped_column(Integer)
    enforcement_count: Mapped[int] = mapped_column(Integer)


class Home(Base):
    __tablename__ = "homes"

    urn: Mapped[str] = mapped_column(String(20), primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    address: Mapped[str] = mapped_column(Text)
    postcode: Mapped[str] = mapped_column(String(10))
    telephone: Mapped[str | None] = mapped_column(String(40))
    local_authority: Mapped[str] = mapped_column(String(100), index=True)
    police_force_area: Mapped[str] = mapped_column(String(100), index=True)
    status: Mapped[str] = mapped_column(String(20))
    provider_name: Mapped[str] = mapped_column(Text)
    provider_address: Mapped[str] = mapped_column(Text)
    provider_type: Mapped[str] = mapped_column(String(20))
    responsible_individual_name: Mapped[str | None] = mapped_column(Text)
    responsible_individual_address: Mapped[str | None] = mapped_column(Text)
    manager_name: Mapped[str | None] = mapped_column(Text)
    manager_address: Mapped[str | None] = mapped_column(Text)
    import_id: Mapped[int] = mapped_column(ForeignKey("register_imports.id"))


class EnforcementAction(Base):
    __tablename__ = "enforcement_actions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    urn: Mapped[str] = mapped_column(ForeignKey("homes.urn", ondelete="CASCADE"), index=True)
    date: Mapped[dt.date] = mapped_column(Date)
    nature: Mapped[str] = mapped_column(Text)


class Authority(Base):
    __tablename__ = "authorities"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    # The name casefolded in Python: SQLite's lower() knows only ASCII, so matching happens on this column.
    name_key: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(40))
    area: Mapped[str | None] = mapped_column(String(100))
    auth_policy: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20))
    # The pinned OpenPGP key, for the addresses that take OpenPGP; None for an authority that has none (its
    # addresses then take S/MIME, each with its own certificate, or get nothing).
    key_fingerprint: Mapped[str | None] = mapped_column(String(64))
    key_expires: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())

    addresses: Mapped[list[AuthorityAddress]] = relationship(
        back_populates="authority", cascade="all, delete-orphan", order_by="AuthorityAddress.address"
    )


class AuthorityAddress(Base):
    __tablename__ = "authority_addresses"

    # The primary key is what makes "one address belongs to at most one authority" hold under any race.
    address: Mapped[str] = mapped_column(String(254), primary_key=True)
    authority_id: Mapped[int] = mapped_column(ForeignKey("authorities.id", ondelete="CASCADE"), index=True)
    # How mail to this address is sealed, and how a request from it is authenticated: "openpgp" (the authority's
    # pinned key) or "smime" (the certificate pinned for this address alone, below).
    method: Mapped[str] = mapped_column(String(10), default="openpgp", server_default="openpgp")
    cert_fingerprint: Mapped[str | None] = mapped_column(String(64), index=True)  # SHA-256 of the DER, upper hex
    cert_pem: Mapped[str | None] = mapped_column(Text)
    cert_subject: Mapped[str | None] = mapped_column(Text)
    cert_expires: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())

    authority: Mapped[Authority] = relationship(back_populates="addresses")


class AuditRecord(Base):
    __tablename__ = "audit_log"

    # seq is assigned by the writer (last + 1), not by the database, so a gap is evidence of a deletion.
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    # Stored as the exact text that was hashed, so no backend's datetime round-trip can break the chain.
    recorded_at: Mapped[str] = mapped_column(String(40))
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(60), index=True)
    subject: Mapped[str] = mapped_column(Text)
    details: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)


class InboundMessage(Base):
    """Every message that arrived, once, with the one outcome it ended in."""

    __tablename__ = "inbound_messages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # The same bytes twice are the same message: a restart before the IMAP move, or a duplicate delivery.
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    message_id: Mapped[str | None] = mapped_column(String(998), index=True)
    source: Mapped[str] = mapped_column(String(20))
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    sender: Mapped[str | None] = mapped_column(String(254))
    authority_id: Mapped[int | None] = mapped_column(ForeignKey("authorities.id", ondelete="SET NULL"))
    outcome: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str] = mapped_column(Text)
    reference: Mapped[str | None] = mapped_column(String(40))
    size: Mapped[int] = mapped_column(Integer)
    # "held" when its admin alert went over [limits] alerts_per_hour; "summarised" once a summary told of it.
    alert_held: Mapped[str | None] = mapped_column(String(20), index=True)


class OutboxMessage(Base):
    """A message to send, written in the same transaction as the decision to send it."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))  # disclosure, refusal, alert
    inbound_id: Mapped[int | None] = mapped_column(ForeignKey("inbound_messages.id", ondelete="SET NULL"))
    sender: Mapped[str] = mapped_column(String(254))
    recipient: Mapped[str] = mapped_column(String(254))
    message_id: Mapped[str] = mapped_column(String(998))
    content: Mapped[bytes] = mapped_column(LargeBinary)
    status: Mapped[str] = mapped_column(String(20), index=True)  # pending, sent, failed
    attempts: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    next_attempt_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(Text)
    # What a message to an authority was encrypted to ("openpgp" or "smime", and the fingerprint); None for the
    # admins' mail. Sent only while that is still what is pinned for the recipient.
    sealed_method: Mapped[str | None] = mapped_column(String(10))
    sealed_fingerprint: Mapped[str | None] = mapped_column(String(64))


class Disclosure(Base):
    """What went where and why (DPA 2018 s.62): one row per extract sent."""

    __tablename__ = "disclosures"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    reference: Mapped[str] = mapped_column(String(40), unique=True)
    inbound_id: Mapped[int | None] = mapped_column(ForeignKey("inbound_messages.id", ondelete="SET NULL"))
    outbox_id: Mapped[int] = mapped_column(ForeignKey("outbox.id"))
    authority_name: Mapped[str] = mapped_column(String(200))
    recipient: Mapped[str] = mapped_column(String(254))
    # What it was encrypted to: "openpgp" and the key's fingerprint, or "smime" and the certificate's SHA-256.
    method: Mapped[str] = mapped_column(String(10), server_default="openpgp")
    key_fingerprint: Mapped[str] = mapped_column(String(64))
    area: Mapped[str] = mapped_column(String(200))
    purpose: Mapped[str] = mapped_column(Text)
    home_count: Mapped[int] = mapped_column(Integer)
    enforcement_count: Mapped[int] = mapped_column(Integer)
    extract_sha256: Mapped[str] = mapped_column(String(64))
    marking: Mapped[str] = mapped_column(String(60))
    disclosed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class MailboxProgress(Base):
    """Which UIDs of a folder have been processed, under which UIDVALIDITY: the truth, not IMAP flags."""

    __tablename__ = "mailbox_progress"

    folder: Mapped[str] = mapped_column(String(200), primary_key=True)
    uidvalidity: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    uid: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    inbound_id: Mapped[int | None] = mapped_column(ForeignKey("inbound_messages.id", ondelete="SET NULL"))
    settled_as: Mapped[str] = mapped_column(String(20))
    moved: Mapped[bool] = mapped_column(Boolean)
    processed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class SpooledMessage(Base):
    """A message the inbound SMTP listener accepted: stored here before it said 250, processed afterwards."""

    __tablename__ = "inbound_spool"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    peer: Mapped[str] = mapped_column(String(100))
    mail_from: Mapped[str] = mapped_column(String(998))
    content: Mapped[bytes] = mapped_column(LargeBinary)
    status: Mapped[str] = mapped_column(String(20), index=True)  # pending, done
    inbound_id: Mapped[int | None] = mapped_column(ForeignKey("inbound_messages.id", ondelete="SET NULL"))


class Subscription(Base):
    """An authority's standing request for its area's register, monthly, confirmed every twelve months."""

    __tablename__ = "subscriptions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    authority_id: Mapped[int] = mapped_column(ForeignKey("authorities.id", ondelete="CASCADE"), index=True)
    police_force_area: Mapped[str | None] = mapped_column(String(100))
    local_authority: Mapped[str | None] = mapped_column(String(100))
    area: Mapped[str] = mapped_column(String(200))  # the scope's description, as the authority reads it
    # The registered address that asked for it: its deliveries and notices go there, and only while the
    # address is still the authority's.
    address: Mapped[str] = mapped_column(String(254))
    status: Mapped[str] = mapped_column(String(20), index=True)  # active, cancelled, lapsed, ended
    started_on: Mapped[dt.date] = mapped_column(Date)
    review_on: Mapped[dt.date] = mapped_column(Date)
    purpose: Mapped[str] = mapped_column(Text)
    created_by_inbound_id: Mapped[int | None] = mapped_column(ForeignKey("inbound_messages.id", ondelete="SET NULL"))
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class SubscriptionEvent(Base):
    """A delivery, reminder or lapse notice, recorded once under its unique key with its outgoing mail."""

    __tablename__ = "subscription_events"
    __table_args__ = (UniqueConstraint("subscription_id", "kind", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subscription_id: Mapped[int] = mapped_column(ForeignKey("subscriptions.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(20))  # initial, delivery, reminder, lapse
    key: Mapped[str] = mapped_column(String(40))  # the period (2026-12) or the review date and days (2027-11-25/30)
    happened_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    outbox_id: Mapped[int | None] = mapped_column(ForeignKey("outbox.id", ondelete="SET NULL"))
    reference: Mapped[str | None] = mapped_column(String(40))
    # What the authority was sent, per home and enforcement action, to tell the next delivery what changed.
    snapshot: Mapped[str | None] = mapped_column(Text)


class KeyNotice(Base):
    """A warning that a key or certificate is about to expire, sent once per key, expiry date and whose it is."""

    __tablename__ = "key_notices"
    __table_args__ = (UniqueConstraint("fingerprint", "expires_at", "holder"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))  # an OpenPGP key's (40), or a certificate's SHA-256
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    holder: Mapped[str] = mapped_column(String(40))  # "gateway", or "authority:ID"
    noticed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    reference: Mapped[str] = mapped_column(String(40))
    authority_outbox_id: Mapped[int | None] = mapped_column(ForeignKey("outbox.id", ondelete="SET NULL"))
    admin_outbox_id: Mapped[int | None] = mapped_column(ForeignKey("outbox.id", ondelete="SET NULL"))


class Notice(Base):
    """A notice that must go at most once per key: a "limit reached" per authority and day, say."""

    __tablename__ = "notices"
    __table_args__ = (UniqueConstraint("kind", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(40))
    key: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    outbox_id: Mapped[int | None] = mapped_column(ForeignKey("outbox.id", ondelete="SET NULL"))


class QuarantinedMessage(Base):
    """A quarantined message kept whole, until a person releases it through the pipeline or discards it."""

    __tablename__ = "quarantine"

    inbound_id: Mapped[int] = mapped_column(
        ForeignKey("inbound_messages.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    content: Mapped[bytes] = mapped_column(LargeBinary)
    status: Mapped[str] = mapped_column(String(20), index=True)  # held, released, discarded
    decided_by: Mapped[str | None] = mapped_column(String(200))
    decided_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class PendingChange(Base):
    """An allowlist or key change one admin asked for, waiting for a different admin to approve or reject it."""

    __tablename__ = "pending_changes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))  # add, update, set-key, resume
    authority: Mapped[str] = mapped_column(String(200))
    payload: Mapped[str] = mapped_column(Text)  # JSON: the command's arguments, the key itself included
    summary: Mapped[str] = mapped_column(Text)
    requested_by: Mapped[str] = mapped_column(String(200))
    requested_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    status: Mapped[str] = mapped_column(String(20), index=True)  # pending, approved, rejected, cancelled
    decided_by: Mapped[str | None] = mapped_column(String(200))
    decided_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    # What both admins sign: the change's id, this gateway's identity and the change's full effect.
    statement: Mapped[str | None] = mapped_column(Text)
    proposer_fingerprint: Mapped[str | None] = mapped_column(String(40))
    proposer_signature: Mapped[str | None] = mapped_column(Text)
    approver_fingerprint: Mapped[str | None] = mapped_column(String(40))
    approver_signature: Mapped[str | None] = mapped_column(Text)


class Admin(Base):
    """An admin is an OpenPGP key: proposals and approvals are signatures by it, checked against this copy."""

    __tablename__ = "admins"

    fingerprint: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    # The minimal export of the key as registered; kept out of the gateway's keyring, so that an admin key can
    # never be picked to encrypt a disclosure to, nor an authority's key be taken for an admin's.
    public_key: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20))  # active, removed
    added_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    # Both NULL for the two registered at set-up by the host's administrator.
    proposed_by: Mapped[str | None] = mapped_column(String(40))
    approved_by: Mapped[str | None] = mapped_column(String(40))


class Installation(Base):
    """This database's identity, named in every signed statement: a signature made for one gateway's change
    cannot be replayed on another's."""

    __tablename__ = "installation"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)  # always 1
    identity: Mapped[str] = mapped_column(String(36))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class MailboxClaim(Base):
    """Which gateway is working on a mailbox message now: two gateways on one mailbox never both take it."""

    __tablename__ = "mailbox_claims"

    folder: Mapped[str] = mapped_column(String(200), primary_key=True)
    uidvalidity: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    uid: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    owner: Mapped[str] = mapped_column(String(100))
    until: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class RecordFailure(Base):
    """A message that could not be recorded, and why: counted across restarts, so that one that can never be
    recorded is set aside for a person instead of blocking the messages behind it for ever."""

    __tablename__ = "record_failures"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    error: Mapped[str] = mapped_column(String(100))  # the class of the last failure
    count: Mapped[int] = mapped_column(Integer)  # failures in a row with that class
    first_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    last_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class SeenSignature(Base):
    """Each OpenPGP signature that authenticated a request, by gpg's SIG_ID (a digest of the signature packet,
    whatever armour or MIME is around it): the same signature again is a replay, whatever its headers say."""

    __tablename__ = "seen_signatures"

    signature_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    inbound_id: Mapped[int] = mapped_column(ForeignKey("inbound_messages.id", ondelete="CASCADE"), index=True)
    signed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    seen_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


def _storable_text_columns() -> None:
    """Every String and Text column of every table goes through Storable: no column can be forgotten."""
    for table in Base.metadata.tables.values():
        for column in table.columns:
            if isinstance(column.type, Text):
                column.type = StorableText()
            elif isinstance(column.type, String) and not isinstance(column.type, Storable):
                column.type = Storable(column.type.length)


_storable_text_columns()
