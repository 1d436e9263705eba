"""Outgoing mail: delivered once through a real SMTP relay, retried while it refuses, never sent in the clear."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy import select

from gateway import outbox
from gateway.config import CaBundle, DatabaseSettings, SmtpSettings
from gateway.db.engine import Database, create_database
from gateway.db.models import AuditRecord, Authority, AuthorityAddress, OutboxMessage
from gateway.outbox import RetryPolicy, deliver_due, retry_now, smtp_transport
from tests.support.addresses import ADMIN_ADDRESS, POLICE_ADDRESS
from tests.support.relay import START, Relay, plain_relay, queue, serve
from tests.support.tls import make_ca


@pytest.fixture
async def db(migrated_settings: DatabaseSettings) -> AsyncIterator[Database]:
    database = create_database(migrated_settings)
    async with database.transaction() as session:  # the police, registered: mail to them may go
        police = Authority(
            name="West Mercia Police", name_key="west mercia police", kind="police", area="West Mercia",
            auth_policy="signed", status="active", key_fingerprint="0" * 40, key_expires=None, created_at=START,
            updated_at=START,
        )  # fmt: skip
        session.add(police)
        await session.flush()
        session.add(AuthorityAddress(address=POLICE_ADDRESS, authority_id=police.id))
    try:
        yield database
    finally:
        await database.close()


def text_of(mail: bytes) -> str:
    """The plain text of a message the gateway wrote, decoded."""
    body = message_from_bytes(mail, policy=policy.default).get_body(preferencelist=("plain",))
    assert isinstance(body, EmailMessage)
    return str(body.get_content())


async def row(db: Database, outbox_id: int) -> OutboxMessage:
    async with db.transaction(write=False) as session:
        found = await session.get(OutboxMessage, outbox_id)
        assert found is not None
        return found


async def test_a_relay_refusing_for_a_while_gets_the_message_once(db: Database) -> None:
    relay = Relay(refuse=3)
    server, port = await serve(relay)
    try:
        outbox_id = await queue(db)
        now, rules = START, RetryPolicy()
        for _ in range(10):
            await deliver_due(db, smtp_transport(plain_relay(port)), admin_address=ADMIN_ADDRESS, now=now, retry=rules)
            if (await row(db, outbox_id)).status == "sent":
                break
            now += rules.longest_wait
    finally:
        server.close()
    sent = await row(db, outbox_id)
    assert (sent.status, sent.attempts) == ("sent", 4)
    assert len(relay.received) == 1
    assert relay.received[0].rcpt_tos == [POLICE_ADDRESS]


async def test_nothing_is_sent_again_before_its_wait_is_over(db: Database) -> None:
    relay = Relay(refuse=1)
    server, port = await serve(relay)
    try:
        outbox_id = await queue(db)
        transport = smtp_transport(plain_relay(port))
        first = await deliver_due(db, transport, admin_address=ADMIN_ADDRESS, now=START)
        soon = await deliver_due(db, transport, admin_address=ADMIN_ADDRESS, now=START + dt.timedelta(seconds=5))
    finally:
        server.close()
    assert first == {"sent": 0, "retrying": 1, "failed": 0}
    assert soon == {"sent": 0, "retrying": 0, "failed": 0}
    assert (await row(db, outbox_id)).last_error == "451 4.3.0 Try again later"


async def test_a_permanent_refusal_fails_and_alerts_the_admin(db: Database) -> None:
    relay = Relay(refuse=1, refusal="550 5.1.1 No such user")
    server, port = await serve(relay)
    try:
        outbox_id = await queue(db)
        counts = await deliver_due(db, smtp_transport(plain_relay(port)), admin_address=ADMIN_ADDRESS, now=START)
    finally:
        server.close()
    assert counts["failed"] == 1
    assert (await row(db, outbox_id)).status == "failed"
    async with db.transaction(write=False) as session:
        alerts = (await session.execute(select(OutboxMessage).where(OutboxMessage.kind == "alert"))).scalars().all()
        actions = (await session.execute(select(AuditRecord.action))).scalars().all()
    assert [a.recipient for a in alerts] == [ADMIN_ADDRESS]
    assert b"550 5.1.1 No such user" in alerts[0].content
    assert "outbox.failed" in actions


async def test_what_waits_in_the_outbox_sealed_to_a_credential_no_longer_pinned_is_withheld(db: Database) -> None:
    """A certificate removed at once (its key lost, say), or a key or certificate replaced, stops what was already
    sealed to it; what was sealed to what is pinned still goes."""
    relay = Relay()
    server, port = await serve(relay)
    try:
        to_key = await queue(db, sealed=("openpgp", "0" * 40))
        stale_key = await queue(db, sealed=("openpgp", "1" * 40))
        async with db.transaction() as session:
            address = (await session.execute(select(AuthorityAddress))).scalar_one()
            address.method, address.cert_fingerprint = "smime", "C" * 64
        to_cert = await queue(db, sealed=("smime", "C" * 64))
        counts = await deliver_due(db, smtp_transport(plain_relay(port)), admin_address=ADMIN_ADDRESS, now=START)
        assert (await row(db, to_cert)).status == "sent"
        async with db.transaction() as session:  # `authority remove-cert`
            address = (await session.execute(select(AuthorityAddress))).scalar_one()
            address.cert_fingerprint = None
        late = await queue(db, sealed=("smime", "C" * 64))
        counts = await deliver_due(db, smtp_transport(plain_relay(port)), admin_address=ADMIN_ADDRESS, now=START)
    finally:
        server.close()
    for outbox_id in (to_key, stale_key, late):  # the address takes S/MIME now: the key is not what is pinned
        queued = await row(db, outbox_id)
        assert (queued.status, queued.last_error) == ("failed", outbox.UNPINNED.error)
    assert counts["failed"] == 1
    assert len([e for e in relay.received if POLICE_ADDRESS in e.rcpt_tos]) == 1  # the one sealed to the cert


async def test_what_was_queued_before_the_outbox_recorded_its_credential_is_withheld_and_the_admins_told(
    db: Database,
) -> None:
    """A message queued before schema 0018 cannot be shown to be sealed to what is pinned now (the key may have
    been replaced since): it fails closed, as one sealed to a credential no longer pinned does."""
    relay = Relay()
    server, port = await serve(relay)
    try:
        unrecorded = await queue(db, recorded=False)
        current = await queue(db)  # sealed to the key pinned now, and recorded so
        counts = await deliver_due(db, smtp_transport(plain_relay(port)), admin_address=ADMIN_ADDRESS, now=START)
    finally:
        server.close()
    assert counts == {"sent": 1, "retrying": 0, "failed": 1}
    withheld = await row(db, unrecorded)
    assert (withheld.status, withheld.last_error) == ("failed", outbox.UNRECORDED.error)
    assert (await row(db, current)).status == "sent"
    assert [envelope.rcpt_tos for envelope in relay.received] == [[POLICE_ADDRESS]]  # the recorded one only
    async with db.transaction(write=False) as session:
        alerts = (await session.execute(select(OutboxMessage).where(OutboxMessage.kind == "alert"))).scalars().all()
    [alert] = alerts
    assert alert.recipient == ADMIN_ADDRESS
    said = " ".join(text_of(alert.content).split())
    assert f"Outgoing message {unrecorded} (disclosure) to {POLICE_ADDRESS} was not delivered" in said
    assert f"Last error: {outbox.UNRECORDED.error}" in said


async def test_what_waits_in_the_outbox_for_an_authority_suspended_meanwhile_is_withheld(db: Database) -> None:
    """A suspension, a removal or an address taken away also stops mail already queued for it."""
    relay = Relay()
    server, port = await serve(relay)
    try:
        outbox_id = await queue(db)
        async with db.transaction() as session:
            police = (await session.execute(select(Authority))).scalar_one()
            police.status = "suspended"
        counts = await deliver_due(db, smtp_transport(plain_relay(port)), admin_address=ADMIN_ADDRESS, now=START)
    finally:
        server.close()
    assert counts["failed"] == 1
    queued = await row(db, outbox_id)
    assert (queued.status, queued.last_error) == ("failed", outbox.WITHHELD.error)
    assert relay.received == []  # nothing reached the suspended authority
    async with db.transaction(write=False) as session:
        alerts = (await session.execute(select(OutboxMessage).where(OutboxMessage.kind == "alert"))).scalars().all()
    assert [a.recipient for a in alerts] == [ADMIN_ADDRESS]  # and the admins hear of it


async def test_after_the_retry_period_it_gives_up(db: Database) -> None:
    outbox_id = await queue(db)
    port = 1  # nothing listens there: connection refused, a temporary failure
    late = START + dt.timedelta(days=5, minutes=1)
    await deliver_due(db, smtp_transport(plain_relay(port)), admin_address=ADMIN_ADDRESS, now=START)
    assert (await row(db, outbox_id)).status == "pending"
    await deliver_due(db, smtp_transport(plain_relay(port)), admin_address=ADMIN_ADDRESS, now=late)
    assert (await row(db, outbox_id)).status == "failed"
    retried = await retry_now(db, outbox_id, actor="alice", now=late)
    assert retried is not None
    assert (retried.status, retried.next_attempt_at) == ("pending", late)


async def test_starttls_required_means_no_plaintext_to_a_relay_without_it(db: Database) -> None:
    relay = Relay()
    server, port = await serve(relay)
    try:
        outbox_id = await queue(db)
        await deliver_due(db, smtp_transport(plain_relay(port, tls="starttls")), admin_address=ADMIN_ADDRESS, now=START)
    finally:
        server.close()
    assert relay.received == []
    failed = await row(db, outbox_id)
    assert failed.status == "pending"
    assert failed.last_error is not None
    assert "STARTTLS" in failed.last_error or "TLS" in failed.last_error


async def test_smtp_ca_file_is_the_only_trust_for_the_relays_certificate(db: Database, tmp_path: Path) -> None:
    """[smtp] ca_file: a relay whose certificate another CA issued gets nothing; one issued by that CA gets the mail."""
    site_ca, other_ca = make_ca(tmp_path / "site", "Site CA"), make_ca(tmp_path / "other", "Other CA")
    served = site_ca.issue("relay.hmci.example", ips=("127.0.0.1",))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(served.certificate, served.key)
    relay = Relay()
    server = await asyncio.get_running_loop().create_server(
        lambda: SMTP(relay, tls_context=context, require_starttls=True), "127.0.0.1", 0
    )
    port = server.sockets[0].getsockname()[1]

    def trusting(ca: Path) -> SmtpSettings:
        return dataclasses.replace(plain_relay(port, tls="starttls"), ca=CaBundle.read(ca))

    site, other = trusting(site_ca.certificate), trusting(other_ca.certificate)
    site_ca.certificate.unlink()  # read once, as the settings loaded: the file is not read again
    try:
        outbox_id = await queue(db)
        await deliver_due(db, smtp_transport(other), admin_address=ADMIN_ADDRESS, now=START)
        refused = await row(db, outbox_id)
        later = START + dt.timedelta(hours=1)
        await deliver_due(db, smtp_transport(site), admin_address=ADMIN_ADDRESS, now=later)
    finally:
        server.close()
    assert refused.status == "pending"
    assert "CERTIFICATE_VERIFY_FAILED" in str(refused.last_error)
    assert (await row(db, outbox_id)).status == "sent"
    assert len(relay.received) == 1


@dataclass
class StalledRelay(Relay):
    """A relay that takes the message, then never answers: the sender must not outlive its claim on it."""

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        await asyncio.sleep(60)
        return "250 2.0.0 Queued"


async def test_a_send_that_would_outlive_its_claim_is_stopped_and_retried(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A lease of seconds instead of minutes, so that the test need not wait minutes for the same thing.
    monkeypatch.setattr(outbox, "LEASE_MARGIN", dt.timedelta(seconds=1))
    monkeypatch.setattr(outbox, "LEASE_SAFETY", 0.5)
    server, port = await serve(StalledRelay())
    try:
        outbox_id = await queue(db)
        second = await queue(db)
        rules = RetryPolicy(lease=dt.timedelta(seconds=3))
        counts = await asyncio.wait_for(
            deliver_due(db, smtp_transport(plain_relay(port)), admin_address=ADMIN_ADDRESS, now=START, retry=rules),
            10,
        )
    finally:
        server.close()
    stalled = await row(db, outbox_id)
    assert counts == {"sent": 0, "retrying": 1, "failed": 0}
    assert stalled.status == "pending"
    assert "stopped before its claim ran out" in (stalled.last_error or "")
    # Its lease nearly spent, the sender gave the next message back, due at once, for any sender to take.
    given_back = await row(db, second)
    assert given_back.attempts == 0
    assert given_back.next_attempt_at < START + rules.lease
