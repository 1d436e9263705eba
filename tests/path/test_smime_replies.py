"""Every mail the gateway sends an authority goes in S/MIME to an address that takes it; and when the certificate
pinned for that address, or the gateway's own S/MIME identity, cannot be used, nothing goes: no mail to the
authority, an alert to the admins, the outcome recorded. On both databases.

The requests are authenticated by our border's DMARC pass, so the replies are tested apart from S/MIME requests.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from gateway import schedule as schedule_module
from gateway.config import ScheduleSettings, load_config
from gateway.db.engine import create_database
from gateway.db.models import Authority, AuthorityAddress, Disclosure, OutboxMessage
from gateway.outbox import UNPINNED, deliver_due, smtp_transport
from gateway.schedule import delivery_instant
from gateway.smime import read_certificate
from gateway.values import Context
from tests.support.addresses import LA_ADDRESS, POLICE_ADDRESS
from tests.support.gateway_cli import Gateway
from tests.support.keys import AuthorityKeys
from tests.support.live import (
    as_shown,
    audit_actions,
    details,
    open_as_recipient,
    outbox,
    outbox_content,
    subscriptions,
)
from tests.support.relay import Relay, plain_relay, serve
from tests.support.smime import SmimeCerts, certificate, openssl
from tests.support.smime_live import (
    COUNCIL,
    POLICE,
    asks,
    change_database,
    impostor,
    opened_by_openssl,
    outer,
    recipient_of,
    run_schedule,
    smime_settings,
)

REQUEST = "Request: disclosure\r\nPurpose: Safeguarding children\r\n"
MONTHLY = "Request: disclosure\r\nFrequency: monthly\r\nPurpose: Safeguarding children\r\n"
RENEWAL = "Request: renewal\r\nPurpose: Still needed to safeguard children\r\n"
CANCEL = "Request: cancel\r\nPurpose: No longer needed\r\n"
OUTSIDE = REQUEST + "Area: Kent\r\n"  # West Mercia Police may not see Kent: refused, saying why
ASKED = dt.datetime(2027, 1, 12, 9, 0, tzinfo=dt.UTC)  # fixed: no verdict depends on today's date
NOON = dt.time(12, 0, tzinfo=dt.UTC)
SETTINGS = ScheduleSettings()


def to(gateway: Gateway, address: str, kind: str | None = None) -> list[dict[str, object]]:
    return [row for row in outbox(gateway) if row["recipient"] == address and kind in (None, row["kind"])]


def in_smime(gateway: Gateway, certs: SmimeCerts, row: dict[str, object], tmp_path: Path) -> EmailMessage:
    """The queued mail is S/MIME (RFC 8551 enveloped-data), and its recipient opens it with openssl; returns the
    signed inner message as their client shows it."""
    wire = outbox_content(gateway, row["id"])
    outer(wire)
    inner = opened_by_openssl(wire, recipient_of(certs, str(row["recipient"])), certs.gateway.cert, tmp_path)
    message = message_from_bytes(inner, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return as_shown(message)


def text(message: EmailMessage) -> str:
    """The cover note, and the names of the files."""
    body = message.get_body(preferencelist=("plain",))
    assert body is not None
    names = [str(part.get_filename()) for part in message.iter_attachments()]
    return "\n".join([str(body.get_content()), *names])


def next_delivery(after: dt.datetime) -> dt.datetime:
    year, month = (after.year, after.month + 1) if after.month < 12 else (after.year + 1, 1)
    return delivery_instant(year, month, SETTINGS) + dt.timedelta(minutes=1)


def review_of(gateway: Gateway) -> dt.date:
    return dt.date.fromisoformat(str(subscriptions(gateway)[0]["review_on"]))


def alerts(gateway: Gateway) -> list[str]:
    """The text of every alert to the admins, its lines joined as a reader reads them."""
    found = []
    for row in outbox(gateway):
        if row["kind"] == "alert":
            mail = message_from_bytes(outbox_content(gateway, row["id"]), policy=policy.default)
            body = mail.get_body(preferencelist=("plain",))  # type: ignore[attr-defined, unused-ignore]
            assert body is not None
            found.append(" ".join(str(body.get_content()).split()))
    return found


def disclosures(gateway: Gateway) -> list[tuple[str, str, str]]:
    """The disclosure log's rows: (recipient, method, key_fingerprint)."""

    async def run() -> list[tuple[str, str, str]]:
        db = create_database(load_config(gateway.config_path).database)
        try:
            async with db.transaction(write=False) as session:
                query = select(Disclosure.recipient, Disclosure.method, Disclosure.key_fingerprint)
                rows = (await session.execute(query.order_by(Disclosure.id))).all()
                return [(recipient, method, fingerprint) for recipient, method, fingerprint in rows]
        finally:
            await db.close()

    return asyncio.run(run())


def openssl_fingerprint(cert: Path) -> str:
    said = openssl("x509", "-in", str(cert), "-noout", "-fingerprint", "-sha256").decode()
    return said.strip().split("=", 1)[1].replace(":", "")


# ---------------------------------------------------------------- what goes, in S/MIME


@pytest.mark.parametrize(
    ("before", "body", "outcome", "kind", "subject"),
    [
        (None, REQUEST, "answered", "disclosure", "Register of children's homes: West Mercia police force area"),
        (None, OUTSIDE, "refused", "refusal", "Your request could not be answered"),
        (MONTHLY, RENEWAL, "answered", "acknowledgement", "Monthly subscription renewal"),
        (MONTHLY, CANCEL, "answered", "acknowledgement", "Monthly subscription cancel"),
    ],
    ids=["disclosure", "refusal", "renewal", "cancel"],
)
def test_each_answer_to_a_request_goes_in_smime(  # noqa: PLR0917 - the table's columns
    smime_live: Gateway, smime_certs: SmimeCerts, tmp_path: Path,
    before: str | None, body: str, outcome: str, kind: str, subject: str,
) -> None:  # fmt: skip
    if before is not None:
        assert asks(smime_live, POLICE_ADDRESS, before, "first", ASKED)["kind"] == "answered"
    assert asks(smime_live, POLICE_ADDRESS, body, "asked", ASKED + dt.timedelta(hours=1))["kind"] == outcome
    row = to(smime_live, POLICE_ADDRESS, kind)[-1]
    inner = in_smime(smime_live, smime_certs, row, tmp_path)
    assert str(inner["Subject"]).startswith(subject)
    [record] = [r for r in audit_actions(smime_live, f"inbound.{outcome}") if details(r)["reference"]][-1:]
    assert details(record)["outgoing"] == {kind: [row["id"]]}


def test_impostor_and_limit_notices_go_in_smime(smime_live: Gateway, smime_certs: SmimeCerts, tmp_path: Path) -> None:
    """Someone passing for the police, and the police past their daily limit of answers: each notice is told to
    them in S/MIME."""
    assert impostor(smime_live, POLICE_ADDRESS, "fake", ASKED)["kind"] == "quarantined"
    [notice] = to(smime_live, POLICE_ADDRESS, "impostor-notice")
    assert "used your name" in text(in_smime(smime_live, smime_certs, notice, tmp_path))

    smime_settings(smime_live, smime_certs, "\n[limits]\nanswers_per_day = 1\n")
    assert asks(smime_live, POLICE_ADDRESS, REQUEST, "one", ASKED)["kind"] == "answered"
    assert asks(smime_live, POLICE_ADDRESS, REQUEST, "two", ASKED + dt.timedelta(hours=1))["kind"] == "quarantined"
    [notice] = to(smime_live, POLICE_ADDRESS, "limit-notice")
    assert "its daily limit" in text(in_smime(smime_live, smime_certs, notice, tmp_path))


def test_monthly_deliveries_reminders_and_lapses_go_in_smime(
    smime_live: Gateway, smime_certs: SmimeCerts, tmp_path: Path
) -> None:
    """To the council's address (EC): the next month's delivery, the 30-day reminder, the lapse on the review date."""
    assert asks(smime_live, LA_ADDRESS, MONTHLY, "m1", ASKED)["kind"] == "answered"
    assert run_schedule(smime_live, next_delivery(ASKED))["delivery"] == 1
    review = review_of(smime_live)
    assert run_schedule(smime_live, dt.datetime.combine(review - dt.timedelta(days=30), NOON))["reminder"] == 1
    assert run_schedule(smime_live, dt.datetime.combine(review, NOON))["lapse"] == 1
    for kind, words in (("disclosure", "-changes.csv"), ("reminder", "Request: renewal"), ("lapse", "has lapsed")):
        row = to(smime_live, LA_ADDRESS, kind)[-1]
        assert words in text(in_smime(smime_live, smime_certs, row, tmp_path)), kind
    assert [r["status"] for r in subscriptions(smime_live)] == ["lapsed"]


def test_a_subscription_ended_by_a_change_is_told_in_smime(
    smime_live: Gateway, smime_certs: SmimeCerts, tmp_path: Path
) -> None:
    assert asks(smime_live, POLICE_ADDRESS, MONTHLY, "m1", ASKED)["kind"] == "answered"
    change_database(smime_live, update(Authority).where(Authority.name == POLICE).values(area="Kent"))
    assert run_schedule(smime_live, next_delivery(ASKED))["ended"] == 1
    [notice] = to(smime_live, POLICE_ADDRESS, "subscription-end")
    assert "has ended" in text(in_smime(smime_live, smime_certs, notice, tmp_path))
    told = str(details(audit_actions(smime_live, "subscription.end")[0])["told"])
    assert told.startswith(f"told at {POLICE_ADDRESS}, encrypted")


def test_each_address_of_one_authority_gets_its_own_method(
    smime_live: Gateway, keys: AuthorityKeys, smime_certs: SmimeCerts, tmp_path: Path
) -> None:
    """West Mercia Police adds an address of its own that takes its OpenPGP key: requests from each address are
    answered to that address, PGP/MIME to one and S/MIME to the other."""
    duty = "duty@westmercia.police.example"
    smime_live.ok("authority", "update", POLICE, "--add-email", duty)
    assert asks(smime_live, duty, REQUEST, "pgp", ASKED)["kind"] == "answered"
    assert asks(smime_live, POLICE_ADDRESS, REQUEST, "smime", ASKED)["kind"] == "answered"
    [pgp] = to(smime_live, duty, "disclosure")
    inner, status = open_as_recipient(smime_live, keys, outbox_content(smime_live, pgp["id"]))
    assert "[GNUPG:] GOODSIG" in status
    assert str(inner["To"]) == duty
    [smime] = to(smime_live, POLICE_ADDRESS, "disclosure")
    assert str(in_smime(smime_live, smime_certs, smime, tmp_path)["To"]) == POLICE_ADDRESS


def test_the_disclosure_log_names_the_certificate_or_the_key_it_was_encrypted_to(
    smime_live: Gateway, keys: AuthorityKeys, smime_certs: SmimeCerts
) -> None:
    """DPA 2018 s.62's log, answered or scheduled, in one shape: the method, and the fingerprint of what was used:
    the certificate's SHA-256 (as openssl prints it) for S/MIME, the key's for OpenPGP."""
    duty = "duty@westmercia.police.example"
    smime_live.ok("authority", "update", POLICE, "--add-email", duty)
    assert asks(smime_live, POLICE_ADDRESS, MONTHLY, "s", ASKED)["kind"] == "answered"
    assert asks(smime_live, LA_ADDRESS, REQUEST, "ec", ASKED)["kind"] == "answered"
    assert asks(smime_live, duty, REQUEST, "pgp", ASKED)["kind"] == "answered"
    assert run_schedule(smime_live, next_delivery(ASKED))["delivery"] == 1
    police_cert, council_cert = (openssl_fingerprint(c.cert) for c in (smime_certs.police, smime_certs.la))
    expected = [
        (POLICE_ADDRESS, "smime", police_cert),
        (LA_ADDRESS, "smime", council_cert),
        (duty, "openpgp", keys.police.fingerprint),
        (POLICE_ADDRESS, "smime", police_cert),  # the monthly delivery
    ]
    assert disclosures(smime_live) == expected
    logged = [details(record) for record in audit_actions(smime_live, "disclosure")]
    assert [(d["recipient"], d["method"], d["key_fingerprint"]) for d in logged] == expected
    assert len({frozenset(d) for d in logged}) == 1  # one shape, whatever the method


def overtake_delivery(monkeypatch: pytest.MonkeyPatch, change: Any) -> None:
    """Commit `change` after the schedule run read the subscription, while it built and sealed the delivery."""
    building = schedule_module._prepare_delivery

    async def overtaken(ctx: Context, due: Any, reference: str, common: dict[str, Any]) -> Any:
        prepared = await building(ctx, due, reference, common)
        async with ctx.db.transaction() as session:
            await session.execute(change)
        return prepared

    monkeypatch.setattr(schedule_module, "_prepare_delivery", overtaken)


@pytest.mark.parametrize("change", ["another certificate", "OpenPGP instead"])
def test_a_certificate_replaced_while_a_delivery_is_being_sealed_stops_it(
    smime_live: Gateway, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, change: str
) -> None:
    """An extract sealed to a certificate that was replaced meanwhile (reported compromised, say), or for an
    address that has since moved to OpenPGP, is never queued; the next run seals it to what is pinned now."""
    assert asks(smime_live, POLICE_ADDRESS, MONTHLY, "wm", ASKED)["kind"] == "answered"
    row = AuthorityAddress.address == POLICE_ADDRESS
    if change == "another certificate":
        renewed = read_certificate(certificate(tmp_path, "police-renewed", (POLICE_ADDRESS,)).pem)
        values: dict[str, object] = {"cert_fingerprint": renewed.fingerprint, "cert_pem": renewed.pem.decode()}
    else:
        values = {"method": "openpgp"}
    overtake_delivery(monkeypatch, update(AuthorityAddress).where(row).values(**values))
    assert run_schedule(smime_live, next_delivery(ASKED))["delivery"] == 0
    assert [r["kind"] for r in to(smime_live, POLICE_ADDRESS)] == ["disclosure"]  # the first answer only
    monkeypatch.undo()
    assert run_schedule(smime_live, next_delivery(ASKED) + dt.timedelta(hours=1))["delivery"] == 1
    sealed_to = "smime" if change == "another certificate" else "openpgp"
    assert disclosures(smime_live)[-1][1] == sealed_to


# ---------------------------------------------------------------- nothing goes, when S/MIME cannot be used

# A certificate pinned while it was valid, and expired at the fixed moment the gateway seals to it (the session's
# gateway certificate lasts until the end of 2099).
SHORT_LIVED_UNTIL = dt.datetime(2098, 6, 30, tzinfo=dt.UTC)


@dataclass(frozen=True)
class Broken:
    """How S/MIME stops working for the police's address after `start` (everything works then), and `after` it
    (nothing does): `why` is in what the admins are told."""

    start: dt.datetime
    after: dt.datetime
    why: str
    make_it: Callable[[str], None]  # applied once the start is over; the argument is any [limits] wanted
    mend: str  # what the admins are told to do about withheld scheduled mail


@pytest.fixture(params=["expired certificate", "no identity"])
def broken(request: pytest.FixtureRequest, smime_live: Gateway, tmp_path: Path) -> Broken:
    if request.param == "expired certificate":
        ending = certificate(tmp_path, "police-until-2098", (POLICE_ADDRESS,), not_after=SHORT_LIVED_UNTIL)
        smime_live.ok("authority", "set-cert", POLICE, "--email", POLICE_ADDRESS, "--cert", str(ending.cert))
        return Broken(
            dt.datetime(2098, 6, 29, 12, 0, tzinfo=dt.UTC), dt.datetime(2098, 6, 30, 9, 0, tzinfo=dt.UTC),
            "the certificate expired on 2098-06-30T00:00:00Z", lambda limits: None,
            f"gateway authority set-cert '{POLICE}' --email {POLICE_ADDRESS}",
        )  # fmt: skip
    return Broken(
        ASKED, ASKED + dt.timedelta(hours=1), "the gateway has no S/MIME identity ([smime])",
        smime_live.write_config,  # the [smime] section gone: no identity
        f"The cause is the gateway's own identity, not {POLICE}'s",
    )  # fmt: skip


def nothing_more_to_the_police(gateway: Gateway, before: list[dict[str, object]]) -> None:
    assert to(gateway, POLICE_ADDRESS) == before


@pytest.mark.parametrize(
    ("first", "body"),
    [(None, REQUEST), (None, OUTSIDE), (MONTHLY, RENEWAL)],
    ids=["disclosure", "refusal", "acknowledgement"],
)
def test_no_answer_goes_without_a_usable_certificate_and_identity(
    smime_live: Gateway, broken: Broken, first: str | None, body: str
) -> None:
    if first is not None:
        assert asks(smime_live, POLICE_ADDRESS, first, "first", broken.start)["kind"] == "answered"
        reviewed = review_of(smime_live)
    broken.make_it("")
    before = to(smime_live, POLICE_ADDRESS)
    outcome = asks(smime_live, POLICE_ADDRESS, body, "asked", broken.after)
    assert outcome["kind"] == "quarantined"
    assert broken.why in str(outcome["reason"])
    nothing_more_to_the_police(smime_live, before)
    assert any(broken.why in text for text in alerts(smime_live))
    [record] = audit_actions(smime_live, "inbound.quarantined")
    assert details(record)["inbound_id"] == outcome["inbound_id"]
    assert set(details(record)["outgoing"]) == {"alert"}  # type: ignore[call-overload]
    if first is not None:
        assert review_of(smime_live) == reviewed  # the renewal not applied: it could not be answered
    assert len(disclosures(smime_live)) == (1 if first else 0)


@pytest.mark.parametrize("kind", ["impostor-notice", "limit-notice"])
def test_no_notice_on_a_request_goes_without_a_usable_certificate_and_identity(
    smime_live: Gateway, smime_certs: SmimeCerts, broken: Broken, kind: str
) -> None:
    """The message is still quarantined and the admins alerted; the police are not told at all."""
    limits = "\n[limits]\nanswers_per_day = 1\n" if kind == "limit-notice" else ""
    if limits:
        smime_settings(smime_live, smime_certs, limits)
        assert asks(smime_live, POLICE_ADDRESS, REQUEST, "one", broken.start)["kind"] == "answered"
    broken.make_it(limits)
    before, alerted = to(smime_live, POLICE_ADDRESS), len(alerts(smime_live))
    if kind == "impostor-notice":
        outcome = impostor(smime_live, POLICE_ADDRESS, "fake", broken.after)
        assert "authentication failed" in str(outcome["reason"])
    else:
        outcome = asks(smime_live, POLICE_ADDRESS, REQUEST, "two", broken.after)
        assert "answers" in str(outcome["reason"])
    assert outcome["kind"] == "quarantined"
    nothing_more_to_the_police(smime_live, before)
    assert len(alerts(smime_live)) == alerted + 1
    [record] = audit_actions(smime_live, "inbound.quarantined")
    assert details(record)["outgoing"] == {"alert": [outbox(smime_live)[-1]["id"]]}


@pytest.mark.parametrize("unusable", ["expired certificate", "no identity"])
@pytest.mark.parametrize("kind", ["impostor-notice", "limit-notice"])
def test_a_notice_on_a_request_goes_to_the_next_address_that_can_be_sealed_to(  # noqa: PLR0917 - the fixtures
    walker: Gateway, keys: AuthorityKeys, smime_certs: SmimeCerts, tmp_path: Path, unusable: str, kind: str
) -> None:
    """The police's first address cannot be sealed to any more (its certificate expired, or the gateway lost its
    S/MIME identity); their second takes OpenPGP: the notice goes there, encrypted to their key. Timeless keys
    (`walker`): the key is still good when the certificate has expired."""
    limits = "\n[limits]\nanswers_per_day = 1\n" if kind == "limit-notice" else ""
    smime_settings(walker, smime_certs, limits)
    expired = unusable == "expired certificate"
    pinned = certificate(tmp_path, "police-until-2098", (POLICE_ADDRESS,), not_after=SHORT_LIVED_UNTIL)
    walker.ok("authority", "set-cert", POLICE, "--email", POLICE_ADDRESS, "--cert", str(pinned.cert))
    duty = "duty@westmercia.police.example"  # sorts after POLICE_ADDRESS: the authority's second address
    walker.ok("authority", "update", POLICE, "--add-email", duty)
    start, after = dt.datetime(2098, 6, 29, 12, 0, tzinfo=dt.UTC), dt.datetime(2098, 6, 30, 9, 0, tzinfo=dt.UTC)
    if limits:
        assert asks(walker, POLICE_ADDRESS, REQUEST, "one", start)["kind"] == "answered"
    if not expired:
        walker.write_config(limits)  # the [smime] section gone: no identity
    at = after if expired else start
    before = to(walker, POLICE_ADDRESS)
    if kind == "impostor-notice":
        outcome = impostor(walker, POLICE_ADDRESS, "fake", at)
    else:
        outcome = asks(walker, POLICE_ADDRESS, REQUEST, "two", at)
    assert outcome["kind"] == "quarantined"
    nothing_more_to_the_police(walker, before)
    [notice] = to(walker, duty, kind)
    inner, status = open_as_recipient(walker, keys, outbox_content(walker, notice["id"]))
    assert "[GNUPG:] GOODSIG" in status
    assert str(inner["To"]) == duty
    [record] = audit_actions(walker, "inbound.quarantined")
    assert details(record)["outgoing"][kind] == [notice["id"]]  # type: ignore[index]


@pytest.mark.parametrize("kind", ["delivery", "reminder", "lapse"])
def test_no_scheduled_mail_goes_without_a_usable_certificate_and_identity(
    smime_live: Gateway, broken: Broken, kind: str
) -> None:
    """Withheld, the admins told once why, recorded under a key of its own: the next run sends it once mended."""
    assert asks(smime_live, POLICE_ADDRESS, MONTHLY, "m1", broken.start)["kind"] == "answered"
    broken.make_it("")
    before = to(smime_live, POLICE_ADDRESS)
    review = review_of(smime_live)
    at = {
        "delivery": next_delivery(broken.start),
        "reminder": dt.datetime.combine(review - dt.timedelta(days=30), NOON),
        "lapse": dt.datetime.combine(review, NOON),
    }[kind]
    counts = run_schedule(smime_live, at)
    assert counts[kind] == 0
    assert counts["skipped"] >= 1
    nothing_more_to_the_police(smime_live, before)
    [alert] = [text for text in alerts(smime_live) if f"{kind} to {POLICE} not sent" in text]
    assert broken.why in alert
    assert broken.mend in alert
    blames_the_police = "gateway authority set-cert" in alert
    assert blames_the_police == broken.mend.startswith("gateway authority set-cert")  # the real cause, alone
    withheld = [details(r)["key"] for r in audit_actions(smime_live, "subscription.withheld")]
    assert any(str(key).startswith(f"{kind}/") for key in withheld), withheld
    assert [r["status"] for r in subscriptions(smime_live)] == ["active"]  # not lapsed unseen: tried again
    assert run_schedule(smime_live, at + dt.timedelta(hours=1))[kind] == 0
    assert len([t for t in alerts(smime_live) if f"{kind} to {POLICE} not sent" in t]) == 1  # told once


def test_no_subscription_end_notice_goes_without_a_usable_certificate_and_identity(
    smime_live: Gateway, broken: Broken
) -> None:
    assert asks(smime_live, POLICE_ADDRESS, MONTHLY, "m1", broken.start)["kind"] == "answered"
    broken.make_it("")
    before = to(smime_live, POLICE_ADDRESS)
    change_database(smime_live, update(Authority).where(Authority.name == POLICE).values(area="Kent"))
    assert run_schedule(smime_live, broken.after)["ended"] == 1
    nothing_more_to_the_police(smime_live, before)
    [alert] = [text for text in alerts(smime_live) if f"subscriptions of {POLICE} ended" in text]
    assert "not told: no notice could be encrypted" in alert
    assert broken.why in alert
    told = str(details(audit_actions(smime_live, "subscription.end")[0])["told"])
    assert told.startswith("not told")
    assert broken.why in told
    assert [r["status"] for r in subscriptions(smime_live)] == ["ended"]


def test_no_key_expiry_notice_goes_without_a_usable_certificate_and_identity(
    smime_live: Gateway, broken: Broken
) -> None:
    """The police's OpenPGP key about to expire, and no address of theirs that takes it: the notice would go in
    S/MIME, cannot, and the admins are told the authority could not be told."""
    broken.make_it("")
    before = to(smime_live, POLICE_ADDRESS)
    expires = broken.after + dt.timedelta(days=10)
    change_database(smime_live, update(Authority).where(Authority.name == POLICE).values(key_expires=expires))
    assert run_schedule(smime_live, broken.after)["key notice"] >= 1
    nothing_more_to_the_police(smime_live, before)
    [alert] = [text for text in alerts(smime_live) if f"The pinned key of {POLICE} expires on" in text]
    assert "The authority could NOT be told" in alert
    [record] = [r for r in audit_actions(smime_live, "key.expiry-notice") if details(r)["expires"] == str(expires)]
    assert (details(record)["authority"], details(record)["authority_told"]) == (POLICE, False)


# ---------------------------------------------------------------- a key's expiry notice, to an address that takes it


@pytest.mark.parametrize("openpgp_address", [True, False], ids=["an address takes the key", "S/MIME only"])
def test_a_key_expiry_notice_goes_to_an_address_that_takes_the_key(
    walker: Gateway, keys: AuthorityKeys, smime_certs: SmimeCerts, tmp_path: Path, openpgp_address: bool
) -> None:
    """The notice is about the OpenPGP key: it is encrypted to that key, at an address that takes it, even when
    the authority's first address takes S/MIME; with no such address, it goes in S/MIME to the first."""
    smime_settings(walker, smime_certs)
    walker.ok("authority", "set-cert", POLICE, "--email", POLICE_ADDRESS, "--cert", str(smime_certs.police.cert))
    duty = "duty@westmercia.police.example"  # sorts after POLICE_ADDRESS: the authority's first address is S/MIME
    if openpgp_address:
        walker.ok("authority", "update", POLICE, "--add-email", duty)
    expires = dt.datetime(2027, 2, 20, tzinfo=dt.UTC)  # as the key's record says; the timeless key itself lasts
    change_database(walker, update(Authority).where(Authority.name == POLICE).values(key_expires=expires))
    assert run_schedule(walker, dt.datetime(2027, 2, 1, 9, 0, tzinfo=dt.UTC))["key notice"] == 1
    [notice] = [row for row in outbox(walker) if row["kind"] == "key-notice"]
    if openpgp_address:
        assert notice["recipient"] == duty
        inner, status = open_as_recipient(walker, keys, outbox_content(walker, notice["id"]))
        assert "[GNUPG:] GOODSIG" in status
        assert keys.police_timeless.fingerprint in text(inner)
    else:
        assert notice["recipient"] == POLICE_ADDRESS
        assert keys.police_timeless.fingerprint in text(in_smime(walker, smime_certs, notice, tmp_path))


def test_no_mail_goes_to_a_council_whose_certificate_was_removed(smime_live: Gateway, smime_certs: SmimeCerts) -> None:
    """`authority remove-cert` takes effect at once: the address keeps S/MIME and is sent nothing."""
    smime_live.ok("authority", "remove-cert", COUNCIL, "--email", LA_ADDRESS)
    outcome = asks(smime_live, LA_ADDRESS, REQUEST, "gone", ASKED)
    assert outcome["kind"] == "quarantined"
    assert "takes smime, but no S/MIME certificate is pinned for it" in str(outcome["reason"])
    assert to(smime_live, LA_ADDRESS) == []
    assert smime_certs.la.cert.exists()


def test_a_reply_waiting_in_the_outbox_is_withheld_once_its_certificate_is_removed(
    smime_live: Gateway, smime_certs: SmimeCerts
) -> None:
    assert asks(smime_live, POLICE_ADDRESS, REQUEST, "asked", ASKED)["kind"] == "answered"
    [queued] = to(smime_live, POLICE_ADDRESS, "disclosure")
    smime_live.ok("authority", "remove-cert", POLICE, "--email", POLICE_ADDRESS)  # its key lost, say: at once

    async def send() -> tuple[str, str | None, str | None, list[object]]:
        relay = Relay()
        server, port = await serve(relay)
        db = create_database(load_config(smime_live.config_path).database)
        try:
            transport = smtp_transport(plain_relay(port))
            await deliver_due(db, transport, admin_address="gateway-admin@hmci.example", now=ASKED)
            async with db.transaction(write=False) as session:
                row = await session.get(OutboxMessage, queued["id"])
                assert row is not None
                return row.status, row.sealed_method, row.last_error, [e.rcpt_tos for e in relay.received]
        finally:
            server.close()
            await db.close()

    status, sealed, error, received = asyncio.run(send())
    assert (status, sealed, error) == ("failed", "smime", UNPINNED.error)
    assert [POLICE_ADDRESS] not in received  # nothing reached the police; the admins are told
