"""The durable queue of outgoing mail: delivered to the relay with aiosmtplib, retried, never silently dropped."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from dataclasses import dataclass
from email.utils import format_datetime
from typing import Protocol

import aiosmtplib
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from gateway import audit
from gateway.compose import Sign, admin_message
from gateway.config import SmtpSettings
from gateway.db.engine import Database
from gateway.db.models import Authority, AuthorityAddress, OutboxMessage
from gateway.oauth import TokenSource, TokenUnavailable

SENDER_ACTOR = "gateway"
SEND_TIMEOUT = 15  # seconds for each SMTP step
ROUND = 50  # messages one call of deliver_due handles at most; the caller comes straight back when it did
CLAIM_BATCH = 10  # messages claimed at once; none is started with less than LEASE_MARGIN of the lease left
LEASE_MARGIN = dt.timedelta(seconds=2 * SEND_TIMEOUT)
LEASE_SAFETY = 5.0  # seconds: a send still going this close to the end of its claim is stopped


@dataclass(frozen=True)
class RetryPolicy:
    give_up_after: dt.timedelta = dt.timedelta(days=5)
    first_wait: dt.timedelta = dt.timedelta(minutes=1)
    longest_wait: dt.timedelta = dt.timedelta(hours=1)
    # A claimed message is not picked up again for this long: a sender that died mid-send is retried after it.
    # A batch's sender starts no message with less than LEASE_MARGIN of it left, and stops one still going
    # LEASE_SAFETY before it ends: no other sender can claim a message while it is being sent.
    lease: dt.timedelta = dt.timedelta(seconds=90)

    @classmethod
    def of(cls, settings: SmtpSettings) -> RetryPolicy:
        """The policy the [smtp] settings ask for."""
        return cls(first_wait=dt.timedelta(seconds=settings.retry_seconds))

    def wait(self, attempts: int) -> dt.timedelta:
        doublings = min(max(attempts - 1, 0), 20)  # capped: the wait tops out long before 2**20 anyway
        return min(self.first_wait * (1 << doublings), self.longest_wait)


@dataclass(frozen=True)
class Attempt:
    """How one delivery went: sent, or failed temporarily (retry) or permanently (give up)."""

    sent: bool
    permanent: bool = False
    error: str | None = None


class Transport(Protocol):
    """Delivers one message; may keep a connection open between calls until closed."""

    async def __call__(self, row: OutboxMessage) -> Attempt: ...

    async def close(self, *, polite: bool = True) -> None: ...


class SmtpTransport:
    """Delivery to the configured relay, over one connection for as long as the sender has messages: a
    connection (and TLS handshake) per message was most of the outbox's cost. After any failure the connection
    is dropped and the next message gets a new one. TLS is required unless tls = "none" (certificates always
    checked, against [smtp] ca_file's CAs alone when it is set). With [smtp.oauth] it logs in with XOAUTH2 and a
    token from `tokens`."""

    def __init__(self, settings: SmtpSettings, tokens: TokenSource | None = None) -> None:
        if (settings.oauth is None) != (tokens is None):
            raise ValueError("[smtp.oauth] and a token source go together: the gateway's Tokens give it")
        self._settings = settings
        # None: aiosmtplib's default context, the system's trust store.
        self._tls = settings.ca.context() if settings.ca else None
        self._client: aiosmtplib.SMTP | None = None
        self._tokens = tokens

    async def _connected(self) -> aiosmtplib.SMTP:
        if self._client is not None and self._client.is_connected:
            return self._client
        settings = self._settings
        client = aiosmtplib.SMTP(
            hostname=settings.host,
            port=settings.port,
            username=settings.username,
            password=settings.password.value if settings.password else None,
            # Asked for at each login: MSAL hands out the token it holds until that nears its expiry.
            oauth_token_generator=self._tokens.token if self._tokens else None,
            use_tls=settings.tls == "tls",
            # True, not None: None would fall back to plaintext when the relay offers no STARTTLS.
            start_tls=settings.tls == "starttls",
            validate_certs=True,
            tls_context=self._tls,
            timeout=SEND_TIMEOUT,
        )
        await client.connect()  # STARTTLS and login, as configured
        if self._tokens is not None:
            self._tokens.accepted("the relay")  # logged in with a token: any refusal before is over
        self._client = client
        return client

    async def __call__(self, row: OutboxMessage) -> Attempt:
        try:
            client = await self._connected()
            await client.sendmail(row.sender, [row.recipient], row.content)
        except TokenUnavailable as exc:  # no login possible now: tried again later, like a relay that is down
            await self.close(polite=False)
            return Attempt(False, False, str(exc))
        except aiosmtplib.SMTPAuthenticationError as exc:
            await self.close(polite=False)
            if self._tokens is None:
                return _failed(exc)
            # A token refused (revoked, or expired early) is forgotten, and the next try gets a new one: no
            # reason to give the message up, whatever the code. Until a login succeeds, /healthz says so: the
            # message waits for its retry, which is that login.
            said = f"{exc.code} {exc.message}"
            await self._tokens.refused("the relay", said)
            return Attempt(False, False, f"the relay refused the access token: {said}")
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            await self.close(polite=False)  # mid-exchange: dropped; the next message gets a new connection
            return _failed(exc)
        return Attempt(True)

    async def close(self, *, polite: bool = True) -> None:
        """QUIT and close; or, not polite, just close (after a failure, or mid-command)."""
        client, self._client = self._client, None
        if client is None:
            return
        try:
            if polite and client.is_connected:
                await client.quit()
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            pass
        finally:
            client.close()


def _failed(exc: BaseException) -> Attempt:
    """A failed delivery: permanent when the relay said 5xx (to every recipient), else worth retrying."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        codes = [refusal.code for refusal in exc.recipients]
        return Attempt(False, all(code >= 500 for code in codes), f"recipient refused: {exc}")
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return Attempt(False, exc.code >= 500, f"{exc.code} {exc.message}")
    return Attempt(False, False, f"{type(exc).__name__}: {exc}")


def smtp_transport(settings: SmtpSettings, tokens: TokenSource | None = None) -> Transport:
    """Delivery to the configured relay (see SmtpTransport)."""
    return SmtpTransport(settings, tokens)


async def enqueue(
    session: AsyncSession,
    *,
    kind: str,
    sender: str,
    recipient: str,
    message_id: str,
    content: bytes,
    now: dt.datetime,
    inbound_id: int | None = None,
    sealed_method: str | None = None,
    sealed_fingerprint: str | None = None,
) -> int:
    """Queue one message inside the caller's transaction, so it exists exactly when what caused it does."""
    row = OutboxMessage(
        kind=kind, inbound_id=inbound_id, sender=sender, recipient=recipient, message_id=message_id,
        content=content, status="pending", attempts=0, created_at=now, next_attempt_at=now,
        sealed_method=sealed_method, sealed_fingerprint=sealed_fingerprint,
    )  # fmt: skip
    session.add(row)
    await session.flush()
    return row.id


async def _claim(db: Database, now: dt.datetime, lease: dt.timedelta, limit: int) -> list[OutboxMessage]:
    """Take the due messages for this sender: moving their next attempt past the lease claims them."""
    async with db.transaction(ahead=True) as session:
        rows = list(
            (
                await session.execute(
                    select(OutboxMessage)
                    .where(OutboxMessage.status == "pending", OutboxMessage.next_attempt_at <= now)
                    .order_by(OutboxMessage.next_attempt_at, OutboxMessage.id)
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                )
            ).scalars()
        )
        for row in rows:
            row.next_attempt_at = now + lease
        return rows


def _failure_alert(row: OutboxMessage, error: str, admin: str, sign: Sign | None) -> OutboxMessage:
    message_id = f"<outbox-{row.id}-failed@{row.sender.rpartition('@')[2]}>"
    headers = [
        ("From", row.sender),
        ("To", admin),
        ("Date", format_datetime(dt.datetime.now(dt.UTC))),
        ("Message-ID", message_id),
        ("Subject", f"Register gateway alert: outgoing message {row.id} could not be delivered"),
        ("Auto-Submitted", "auto-generated"),
    ]
    text = (
        f"Outgoing message {row.id} ({row.kind}) to {row.recipient} was not delivered and will not be retried.\n"
        f"Last error: {error}\nAttempts: {row.attempts}\n\n"
        f"Nothing was sent in the clear. See `gateway outbox list`; `gateway outbox retry {row.id}` tries again.\n"
    )
    content = admin_message(headers, text, sign)
    return OutboxMessage(
        kind="alert",
        inbound_id=row.inbound_id,
        sender=row.sender,
        recipient=admin,
        message_id=message_id,
        content=content,
        status="pending",
        attempts=0,
        created_at=row.created_at,
        next_attempt_at=row.created_at,
    )


async def deliver_due(
    db: Database,
    transport: Transport,
    *,
    admin_address: str,
    now: dt.datetime,
    retry: RetryPolicy | None = None,
    limit: int = ROUND,
    sign: Sign | None = None,
) -> dict[str, int]:
    """Send what is due, up to `limit` messages; returns counts of sent, retrying and failed messages.
    `sign` signs the admins' alert of a message given up on (the gateway's key: see pipeline.admin_mail)."""
    rules = retry or RetryPolicy()
    counts = {"sent": 0, "retrying": 0, "failed": 0}
    started = time.monotonic()
    try:
        while sum(counts.values()) < limit:
            # A few at a time: a sender that dies holds back a few messages for one lease, not the queue. The
            # lease runs from this moment, not from when the call began.
            claimed_at = time.monotonic()
            moment = now + dt.timedelta(seconds=claimed_at - started)
            batch = await _claim(db, moment, rules.lease, min(CLAIM_BATCH, limit - sum(counts.values())))
            for index, claimed in enumerate(batch):
                left = rules.lease.total_seconds() - (time.monotonic() - claimed_at)
                if left < LEASE_MARGIN.total_seconds():  # a slow relay: the rest go back, due now, to any sender
                    await _release(db, [row.id for row in batch[index:]], moment)
                    return counts
                withheld = None if claimed.recipient == admin_address else await _withheld(db, claimed)
                result = withheld or await _within(transport, claimed, left - LEASE_SAFETY)
                sent_at = now + dt.timedelta(seconds=time.monotonic() - started)
                await _record(
                    db, claimed.id, result, rules=rules, now=sent_at, admin_address=admin_address, counts=counts,
                    sign=sign,
                )  # fmt: skip
            if len(batch) < CLAIM_BATCH:
                break
    finally:
        await transport.close()
    return counts


# Mail queued for an authority goes only while its address is still registered to an active authority:
# a suspension, a removal or an address taken away also stops what was already waiting in the outbox.
# And it goes only while what it was sealed to is still what is pinned for that address: a key or certificate
# replaced since, or a certificate removed at once (its private key lost, say), stops it too; so does not
# knowing what it was sealed to (queued before migration 0018 recorded it), which could be either.
WITHHELD = Attempt(False, True, "withheld: the recipient is no longer a registered address of an active authority")
UNPINNED = Attempt(False, True, "withheld: what it was encrypted to is no longer pinned for the recipient")
UNRECORDED = Attempt(
    False, True, "withheld: queued before the outbox recorded what it was encrypted to (schema 0018), so it cannot "
    "be shown to be encrypted to what is pinned for the recipient now",
)  # fmt: skip


async def _withheld(db: Database, row: OutboxMessage) -> Attempt | None:
    """Why a message to an authority may not go now, or None when it may."""
    async with db.transaction(write=False) as session:
        query = (
            select(AuthorityAddress.method, AuthorityAddress.cert_fingerprint, Authority.key_fingerprint)
            .join(Authority, Authority.id == AuthorityAddress.authority_id)
            .where(AuthorityAddress.address == row.recipient, Authority.status == "active")
        )
        pinned = (await session.execute(query.limit(1))).first()
    if pinned is None:
        return WITHHELD
    if row.sealed_method is None:  # only before migration 0018: every message to an authority records it since
        return UNRECORDED
    method, certificate, key = pinned
    current = certificate if method == "smime" else key
    return None if (method, current) == (row.sealed_method, row.sealed_fingerprint) else UNPINNED


async def _within(transport: Transport, row: OutboxMessage, seconds: float) -> Attempt:
    """One delivery, stopped before the claim on the message runs out: past it, another sender could send it too."""
    try:
        async with asyncio.timeout(seconds):
            return await transport(row)
    except TimeoutError:
        await transport.close(polite=False)
        return Attempt(False, False, f"the delivery took over {seconds:.0f} s: stopped before its claim ran out")


async def _release(db: Database, ids: list[int], now: dt.datetime) -> None:
    """Give claimed messages back, due now."""
    async with db.transaction(ahead=True) as session:
        await session.execute(
            update(OutboxMessage)
            .where(OutboxMessage.id.in_(ids), OutboxMessage.status == "pending")
            .values(next_attempt_at=now)
        )


async def _record(
    db: Database,
    outbox_id: int,
    result: Attempt,
    *,
    rules: RetryPolicy,
    now: dt.datetime,
    admin_address: str,
    counts: dict[str, int],
    sign: Sign | None,
) -> None:
    """How a delivery went, at once: a crash then repeats no more than the message in hand."""
    async with db.transaction(ahead=True) as session:
        row = await session.get(OutboxMessage, outbox_id)
        if row is None or row.status != "pending":
            return
        row.attempts += 1
        row.last_error = result.error
        if result.sent:
            row.status, row.sent_at = "sent", now
            counts["sent"] += 1
        elif result.permanent or now - row.created_at >= rules.give_up_after:
            row.status = "failed"
            counts["failed"] += 1
            # Alerts about alerts would loop; a failed alert is only in the audit trail and the outbox list.
            if row.kind != "alert":
                session.add(_failure_alert(row, result.error or "unknown", admin_address, sign))
        else:
            row.next_attempt_at = now + rules.wait(row.attempts)
            counts["retrying"] += 1
        if row.status != "pending":
            await audit.record(
                session,
                actor=SENDER_ACTOR,
                action=f"outbox.{row.status}",
                subject=f"outbox {row.id}",
                details={
                    "kind": row.kind,
                    "recipient": row.recipient,
                    "attempts": row.attempts,
                    "error": row.last_error,
                },
                now=now,
            )


async def retry_now(db: Database, outbox_id: int, *, actor: str, now: dt.datetime) -> OutboxMessage | None:
    """Put a failed (or waiting) message back to the front of the queue, by hand."""
    async with db.transaction() as session:
        row = await session.get(OutboxMessage, outbox_id)
        if row is None or row.status == "sent":
            return row
        row.status, row.next_attempt_at = "pending", now
        # A message retried by hand gets the full retry period again from now.
        row.created_at = now
        await audit.record(
            session, actor=actor, action="outbox.retry", subject=f"outbox {row.id}", details={"kind": row.kind}, now=now
        )
        return row


async def listing(db: Database) -> list[OutboxMessage]:
    """Every outgoing message, sent or not, oldest first."""
    async with db.transaction(write=False) as session:
        return list((await session.execute(select(OutboxMessage).order_by(OutboxMessage.id))).scalars())
