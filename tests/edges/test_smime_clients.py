"""OpenSSL, which nobody here wrote, opens every kind of S/MIME mail the gateway sends an authority, as the
recipient's client would: `openssl cms -decrypt` with the recipient's own certificate and key (RSA 2048 for the
police, EC P-256 for the council), then `openssl cms -verify` with the gateway's certificate as the only trust
anchor; then Python's email (default policy) reads the inner tree: no defects, the protected Subject inside the
hp="cipher" multipart/mixed, the files named and marked, and only the marking and the reference outside.

Why -CAfile and not -noverify: a client that trusts the gateway's (self-signed, end-entity) certificate checks
both the signature and that the signer chains to what it trusts, and only that certificate chains to itself;
`-noverify -certfile` would also take a certificate the message carries unless -nointern is given. The signer
openssl names is compared with the gateway's certificate all the same.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import update

from gateway.config import ScheduleSettings
from gateway.db.models import Authority
from gateway.schedule import delivery_instant
from tests.support.addresses import GATEWAY_ADDRESS, LA_ADDRESS, POLICE_ADDRESS
from tests.support.gateway_cli import Gateway
from tests.support.keys import AuthorityKeys
from tests.support.live import as_shown, outbox, outbox_content, subscriptions
from tests.support.smime import Identity, SmimeCerts, openssl
from tests.support.smime_live import (
    COUNCIL,
    POLICE,
    asks,
    change_database,
    impostor,
    opened_by_openssl,
    outer,
    run_schedule,
    smime_settings,
)
from tests.support.sqlite_only import database_url  # noqa: F401  # what openssl reads does not depend on the database
from tests.support.wire import check_inner, wire_problems

MARKING = "OFFICIAL-SENSITIVE"
REFERENCE = re.compile(r"HMCI-\d{8}-[0-9A-F]{8}")
ASKED = dt.datetime(2027, 1, 12, 9, 0, tzinfo=dt.UTC)  # fixed: no verdict depends on today's date
NOON = dt.time(12, 0, tzinfo=dt.UTC)
REQUEST = "Request: disclosure\r\nPurpose: Safeguarding children\r\n"
MONTHLY = "Request: disclosure\r\nFrequency: monthly\r\nPurpose: Safeguarding children\r\n"


@dataclass(frozen=True)
class Recipient:
    authority: str
    address: str
    area: str  # as the gateway names it in a Subject
    identity: Identity  # the certificate and key the recipient's client holds


@pytest.fixture(params=["police", "la"], ids=["RSA recipient", "EC recipient"])
def recipient(request: pytest.FixtureRequest, smime_certs: SmimeCerts) -> Recipient:
    if request.param == "police":
        return Recipient(POLICE, POLICE_ADDRESS, "West Mercia police force area", smime_certs.police)
    return Recipient(COUNCIL, LA_ADDRESS, "Shropshire local authority area", smime_certs.la)


def read(gateway: Gateway, certs: SmimeCerts, row: dict[str, object], who: Recipient, tmp_path: Path) -> EmailMessage:
    """The queued mail as the recipient's client reads it: only the marking and the reference outside, opened and
    verified by openssl, its inner tree read without a defect, the protected Subject naming that reference."""
    assert row["recipient"] == who.address
    wire = outbox_content(gateway, row["id"])
    assert wire_problems(wire) == []  # 7-bit, CRLF, no line over 998
    envelope = outer(wire)
    marking, _, reference = str(envelope["Subject"]).partition(" ")
    assert marking == f"[{MARKING}]"
    assert REFERENCE.fullmatch(reference), envelope["Subject"]
    assert (str(envelope["From"]), str(envelope["To"])) == (GATEWAY_ADDRESS, who.address)
    assert envelope.get_filename() == "smime.p7m"

    inner = check_inner(opened_by_openssl(wire, who.identity, certs.gateway.cert, tmp_path))  # no defects
    assert inner.get_content_type() == "multipart/mixed"
    assert (inner.get_param("hp"), inner.get_param("protected-headers")) == ("cipher", "v1")
    assert subject(inner).endswith(f"({reference})"), inner["Subject"]
    assert (str(inner["From"]), str(inner["To"])) == (GATEWAY_ADDRESS, who.address)
    assert who.area.split()[0] not in str(envelope["Subject"])
    return as_shown(inner)  # its text as the client shows it: format=flowed lines joined


def marked_files(inner: EmailMessage) -> list[str]:
    """The attachments' names, each checked to be a named, marked CSV file whose first line is the marking."""
    names = []
    for part in inner.iter_attachments():
        name = str(part.get_filename())
        assert name.startswith(f"{MARKING}-HMCI-"), name
        assert name.endswith(".csv"), name
        assert part.get_content_type() == "text/csv"
        assert str(part.get_content()).split("\n", 1)[0].rstrip("\r") == MARKING
        names.append(name.rpartition("-")[2])
    return names


def subject(inner: EmailMessage) -> str:
    """The protected Subject as a client shows it: the email package folds one that fits a line of its own onto
    the next line ("Subject:" CRLF SP ...), and its parser keeps that space, which clients drop."""
    return str(inner["Subject"]).strip()


def text_of(inner: EmailMessage) -> str:
    body = inner.get_body(preferencelist=("plain",))
    assert body is not None
    shown = str(body.get_content())
    assert shown.splitlines()[:3] == [f"Subject: {subject(inner)}", "", MARKING]  # the Legacy Display Element first
    assert shown.splitlines()[-1] == MARKING
    return shown


def only(gateway: Gateway, kind: str, address: str) -> dict[str, object]:
    [row] = [row for row in outbox(gateway) if row["kind"] == kind and row["recipient"] == address]
    return row


# ---------------------------------------------------------------- each kind of mail, opened by openssl


def test_a_disclosure_opens_verified_with_its_marked_files(
    smime_live: Gateway, smime_certs: SmimeCerts, recipient: Recipient, tmp_path: Path
) -> None:
    assert asks(smime_live, recipient.address, REQUEST, "d", ASKED)["kind"] == "answered"
    inner = read(smime_live, smime_certs, only(smime_live, "disclosure", recipient.address), recipient, tmp_path)
    assert subject(inner).startswith(f"Register of children's homes: {recipient.area} (")
    assert sorted(marked_files(inner)) == ["enforcement.csv", "homes.csv"]
    assert f"Area: {recipient.area}" in text_of(inner)


def test_a_refusal_opens_verified(
    smime_live: Gateway, smime_certs: SmimeCerts, recipient: Recipient, tmp_path: Path
) -> None:
    assert asks(smime_live, recipient.address, REQUEST + "Area: Kent\r\n", "r", ASKED)["kind"] == "refused"
    inner = read(smime_live, smime_certs, only(smime_live, "refusal", recipient.address), recipient, tmp_path)
    assert subject(inner).startswith("Your request could not be answered")
    assert "outside your own area" in text_of(inner)
    assert marked_files(inner) == []


@pytest.mark.parametrize("kind", ["renewal", "cancel"])
def test_an_acknowledgement_opens_verified(
    smime_live: Gateway, smime_certs: SmimeCerts, recipient: Recipient, tmp_path: Path, kind: str
) -> None:
    assert asks(smime_live, recipient.address, MONTHLY, "start", ASKED)["kind"] == "answered"
    body = f"Request: {kind}\r\nPurpose: Safeguarding children\r\n"
    assert asks(smime_live, recipient.address, body, kind, ASKED + dt.timedelta(hours=1))["kind"] == "answered"
    row = only(smime_live, "acknowledgement", recipient.address)
    inner = read(smime_live, smime_certs, row, recipient, tmp_path)
    assert subject(inner).startswith(f"Monthly subscription {kind}")
    assert ("is confirmed" if kind == "renewal" else "is cancelled") in text_of(inner)


def test_an_impostor_notice_opens_verified(
    smime_live: Gateway, smime_certs: SmimeCerts, recipient: Recipient, tmp_path: Path
) -> None:
    assert impostor(smime_live, recipient.address, "fake", ASKED)["kind"] == "quarantined"
    inner = read(smime_live, smime_certs, only(smime_live, "impostor-notice", recipient.address), recipient, tmp_path)
    assert subject(inner).startswith("Register gateway: someone tried to use your name")
    assert "used your name" in text_of(inner)


def test_a_limit_notice_opens_verified(
    smime_live: Gateway, smime_certs: SmimeCerts, recipient: Recipient, tmp_path: Path
) -> None:
    smime_settings(smime_live, smime_certs, "\n[limits]\nanswers_per_day = 1\n")
    assert asks(smime_live, recipient.address, REQUEST, "one", ASKED)["kind"] == "answered"
    assert asks(smime_live, recipient.address, REQUEST, "two", ASKED + dt.timedelta(hours=1))["kind"] == "quarantined"
    inner = read(smime_live, smime_certs, only(smime_live, "limit-notice", recipient.address), recipient, tmp_path)
    assert subject(inner).startswith("Register gateway: daily limit of answers reached")
    assert f"{recipient.authority} in the last 24 hours" in text_of(inner)


def test_a_monthly_delivery_a_reminder_and_a_lapse_open_verified(
    smime_live: Gateway, smime_certs: SmimeCerts, recipient: Recipient, tmp_path: Path
) -> None:
    """From a fixed start: the next month's delivery, the 30-day review reminder, and the lapse on the review date."""
    assert asks(smime_live, recipient.address, MONTHLY, "m1", ASKED)["kind"] == "answered"
    delivered = delivery_instant(2027, 2, ScheduleSettings()) + dt.timedelta(minutes=1)
    assert run_schedule(smime_live, delivered)["delivery"] == 1
    [_, delivery] = [row for row in outbox(smime_live) if row["kind"] == "disclosure"]
    inner = read(smime_live, smime_certs, delivery, recipient, tmp_path)
    assert subject(inner).startswith(f"Register of children's homes: {recipient.area}, 2027-02 (")
    assert sorted(marked_files(inner)) == ["changes.csv", "enforcement.csv", "homes.csv"]

    review = dt.date.fromisoformat(str(subscriptions(smime_live)[0]["review_on"]))
    assert run_schedule(smime_live, dt.datetime.combine(review - dt.timedelta(days=30), NOON))["reminder"] == 1
    inner = read(smime_live, smime_certs, only(smime_live, "reminder", recipient.address), recipient, tmp_path)
    assert subject(inner).startswith("Monthly subscription review due")
    assert "Request: renewal" in text_of(inner)

    assert run_schedule(smime_live, dt.datetime.combine(review, NOON))["lapse"] == 1
    inner = read(smime_live, smime_certs, only(smime_live, "lapse", recipient.address), recipient, tmp_path)
    assert subject(inner).startswith("Monthly subscription lapsed")
    assert "has lapsed" in text_of(inner)


def test_a_subscription_end_notice_opens_verified(
    smime_live: Gateway, smime_certs: SmimeCerts, recipient: Recipient, tmp_path: Path
) -> None:
    """The authority's area changed by another admin: the next run ends the subscription and says so."""
    assert asks(smime_live, recipient.address, MONTHLY, "m1", ASKED)["kind"] == "answered"
    change_database(smime_live, update(Authority).where(Authority.name == recipient.authority).values(area="Kent"))
    assert run_schedule(smime_live, ASKED + dt.timedelta(days=1))["ended"] == 1
    row = only(smime_live, "subscription-end", recipient.address)
    inner = read(smime_live, smime_certs, row, recipient, tmp_path)
    assert subject(inner).startswith("Register gateway: monthly subscription ended")
    assert "has ended" in text_of(inner)


def test_a_key_expiry_notice_opens_verified(
    smime_live: Gateway, smime_certs: SmimeCerts, keys: AuthorityKeys, recipient: Recipient, tmp_path: Path
) -> None:
    """An OpenPGP key the authority also has, about to expire (as its record says): with no address that takes
    the key, the notice goes in S/MIME."""
    if recipient.authority == COUNCIL:
        smime_live.ok("authority", "set-key", COUNCIL, str(keys.la.write(tmp_path, "la.asc")))
    expires = dt.datetime(2027, 2, 20, tzinfo=dt.UTC)
    change_database(
        smime_live, update(Authority).where(Authority.name == recipient.authority).values(key_expires=expires)
    )
    assert run_schedule(smime_live, dt.datetime(2027, 2, 1, 9, 0, tzinfo=dt.UTC))["key notice"] == 1
    inner = read(smime_live, smime_certs, only(smime_live, "key-notice", recipient.address), recipient, tmp_path)
    assert subject(inner).startswith("Your encryption key expires on 20 February 2027")
    assert "expires on 20 February 2027" in text_of(inner)


# ---------------------------------------------------------------- the layers, and the harness's own control


def test_a_reply_is_aes_256_cbc_around_a_sha_256_signature_by_the_gateway(
    smime_live: Gateway, smime_certs: SmimeCerts, recipient: Recipient, tmp_path: Path
) -> None:
    """Enveloped with AES-256-CBC (key transport to RSA, ECDH key agreement to EC), around a multipart/signed
    whose detached SHA-256 signature carries the gateway's certificate."""
    assert asks(smime_live, recipient.address, REQUEST, "d", ASKED)["kind"] == "answered"
    envelope = outer(outbox_content(smime_live, only(smime_live, "disclosure", recipient.address)["id"]))
    der = envelope.get_payload(decode=True)
    assert isinstance(der, bytes)
    printed = openssl("cms", "-cmsout", "-print", "-noout", "-inform", "DER", data=der).decode()
    assert "algorithm: aes-256-cbc" in printed
    assert ("d.ktri:" if recipient.authority == POLICE else "d.kari:") in printed

    (tmp_path / "reply.p7m").write_bytes(der)
    signed = openssl("cms", "-decrypt", "-inform", "DER", "-in", str(tmp_path / "reply.p7m"),
                     "-recip", str(recipient.identity.cert), "-inkey", str(recipient.identity.key))  # fmt: skip
    entity = message_from_bytes(signed, policy=policy.default)
    assert entity.get_content_type() == "multipart/signed"
    assert (entity.get_param("protocol"), entity.get_param("micalg")) == ("application/pkcs7-signature", "sha-256")
    signature = list(entity.iter_parts())[1].get_payload(decode=True)
    assert isinstance(signature, bytes)
    printed = openssl("cms", "-cmsout", "-print", "-noout", "-inform", "DER", data=signature).decode()
    assert "eContent: <ABSENT>" in printed  # detached
    assert "algorithm: sha256 " in printed
    assert "CN=HMCI register disclosure gateway" in printed


def test_openssl_calls_no_reply_good_against_another_certificate_nor_opens_it_with_another_key(
    smime_live: Gateway, smime_certs: SmimeCerts, recipient: Recipient, tmp_path: Path
) -> None:
    """The harness's own control: given another certificate as the trust anchor, openssl does not call the
    signature good; with another recipient's key, it cannot decrypt. The verdicts above are openssl's."""
    assert asks(smime_live, recipient.address, REQUEST, "d", ASKED)["kind"] == "answered"
    wire = outbox_content(smime_live, only(smime_live, "disclosure", recipient.address)["id"])
    with pytest.raises(AssertionError, match=r"openssl cms -verify failed: CMS Verification failure"):
        opened_by_openssl(wire, recipient.identity, smime_certs.impostor.cert, tmp_path)
    with pytest.raises(AssertionError, match=r"openssl cms -decrypt failed: Error decrypting CMS"):
        opened_by_openssl(wire, smime_certs.impostor, smime_certs.gateway.cert, tmp_path)
