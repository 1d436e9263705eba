"""Sequoia and RNP (Thunderbird's engine), which nobody here wrote, open and verify every kind of mail the gateway
sends, and sign requests that it answers, Thunderbird's own layout included."""

from __future__ import annotations

import datetime as dt
import json
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import update

from gateway.config import ScheduleSettings
from gateway.db.models import Authority
from gateway.schedule import delivery_instant
from tests.support.addresses import GATEWAY_ADDRESS
from tests.support.clients import (
    CLIENTS,
    Client,
    client_named,
    encrypted_payload,
    pgp_mime_signed,
    plain_part,
    thunderbird_part,
)
from tests.support.gateway_cli import Gateway
from tests.support.keys import AuthorityKeys
from tests.support.live import as_shown, limited, outbox, outbox_content, process, subscriptions
from tests.support.requests import FROM_POLICE, REQUEST, police_says, request_from_police, unsigned
from tests.support.schedule import MONTHLY, police_at, run
from tests.support.smime_live import change_database
from tests.support.sqlite_only import database_url  # noqa: F401  # the clients read the same mail from either database
from tests.support.wire import check_inner

MARKING = "OFFICIAL-SENSITIVE"
# A fixed first request for the walks through time: the verdicts must not depend on today's date.
START = dt.datetime(2027, 1, 4, 10, 0, tzinfo=dt.UTC)


@pytest.fixture(params=CLIENTS)
def client(request: pytest.FixtureRequest, keys: AuthorityKeys, tmp_path: Path) -> Client:
    """Each independent implementation in turn; skipped (failed under GATEWAY_TEST_REQUIRE_CLIENTS) if missing.
    Asked for first by every test, so that a skip comes before a gateway is set up for nothing."""
    return client_named(str(request.param), keys.home, tmp_path / str(request.param))


def read(client: Client, gateway: Gateway, row: dict[str, object], recipient: str) -> EmailMessage:
    """The outgoing mail decrypted by the client with the recipient's secret key and its signature checked with
    the gateway's certificate alone; then parsed as a mail client would: no defects, only the protected fields,
    and the protected Subject naming the reference that the outer Subject shows beside the marking."""
    assert gateway.signing_key is not None
    wire = outbox_content(gateway, row["id"])
    opened = client.open(encrypted_payload(wire), recipient, gateway.ok("key", "export").encode(), gateway.signing_key)
    inner = check_inner(opened.wire)
    outer = message_from_bytes(wire, policy=policy.default)
    marking, _, reference = str(outer["Subject"]).partition(" ")
    assert marking == f"[{MARKING}]"
    assert str(inner["Subject"]).endswith(f"({reference})"), inner["Subject"]
    assert (inner["From"], inner["To"]) == (GATEWAY_ADDRESS, row["recipient"])
    assert inner.get_body(preferencelist=("plain",)) is not None
    return as_shown(inner)  # its text as the client shows it: format=flowed lines joined again


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


def only(gateway: Gateway, kind: str) -> dict[str, object]:
    [row] = [row for row in outbox(gateway) if row["kind"] == kind]
    return row


def text_of(inner: EmailMessage) -> str:
    body = inner.get_body(preferencelist=("plain",))
    assert body is not None
    return str(body.get_content())


# ---------------------------------------------------------------- what the gateway sends, opened by the clients


def test_a_disclosure_opens_verified_with_its_marked_files(client: Client, live: Gateway, keys: AuthorityKeys) -> None:
    assert process(live, request_from_police(keys))["kind"] == "answered"
    inner = read(client, live, only(live, "disclosure"), keys.police.fingerprint)
    assert str(inner["Subject"]).startswith("Register of children's homes: West Mercia")
    assert sorted(marked_files(inner)) == ["enforcement.csv", "homes.csv"]


def test_a_refusal_opens_verified(client: Client, live: Gateway, keys: AuthorityKeys) -> None:
    assert process(live, request_from_police(keys, body=REQUEST + "Area: Kent\r\n"))["kind"] == "refused"
    inner = read(client, live, only(live, "refusal"), keys.police.fingerprint)
    assert str(inner["Subject"]).startswith("Your request could not be answered")
    assert "outside your own area" in text_of(inner)
    assert marked_files(inner) == []


def test_an_acknowledgement_opens_verified(client: Client, live: Gateway, keys: AuthorityKeys) -> None:
    assert process(live, police_says(keys, MONTHLY, "start"))["kind"] == "answered"
    renewal = "Request: renewal\r\nPurpose: Still needed to safeguard children in our area\r\n"
    assert process(live, police_says(keys, renewal, "renew"), "renewal.eml")["kind"] == "answered"
    inner = read(client, live, only(live, "acknowledgement"), keys.police.fingerprint)
    assert str(inner["Subject"]).startswith("Monthly subscription renewal")
    assert "is confirmed" in text_of(inner)


def test_an_impostor_notice_opens_verified(client: Client, live: Gateway, keys: AuthorityKeys) -> None:
    assert process(live, unsigned(FROM_POLICE))["kind"] == "quarantined"
    inner = read(client, live, only(live, "impostor-notice"), keys.police.fingerprint)
    assert "used your name" in text_of(inner)


def test_a_limit_notice_opens_verified(client: Client, live: Gateway, keys: AuthorityKeys) -> None:
    limited(live, answers_per_day=1)
    assert process(live, police_says(keys, REQUEST, "one"), "one.eml")["kind"] == "answered"
    assert process(live, police_says(keys, REQUEST, "two"), "two.eml")["kind"] == "quarantined"
    inner = read(client, live, only(live, "limit-notice"), keys.police.fingerprint)
    assert str(inner["Subject"]).startswith("Register gateway: daily limit of answers reached")


def test_a_subscription_end_and_a_key_expiry_notice_open_verified(
    client: Client, walker: Gateway, keys: AuthorityKeys
) -> None:
    """The authority's area changed by another admin: the next run ends its subscription and says so; its key
    about to expire (as its record says): the next run says so too."""
    recipient = keys.police_timeless.fingerprint
    assert process(walker, police_at(keys, MONTHLY, "m1", START), as_of=START)["kind"] == "answered"
    expires = START + dt.timedelta(days=20)
    change_database(walker, update(Authority).values(area="Kent", key_expires=expires))
    done = run(walker, START + dt.timedelta(days=1))
    assert (done["ended"], done["key notice"]) == (1, 1)
    inner = read(client, walker, only(walker, "subscription-end"), recipient)
    assert str(inner["Subject"]).startswith("Register gateway: monthly subscription ended")
    inner = read(client, walker, only(walker, "key-notice"), recipient)
    assert str(inner["Subject"]).startswith(f"Your encryption key expires on {expires:%d %B %Y}")


def test_a_monthly_delivery_a_reminder_and_a_lapse_open_verified(
    client: Client, walker: Gateway, keys: AuthorityKeys
) -> None:
    """From a fixed start (the `walker` keys never age): the next month's delivery, the 30-day review reminder,
    and the lapse on the review date, each opened with the timeless key's secret."""
    recipient = keys.police_timeless.fingerprint
    assert process(walker, police_at(keys, MONTHLY, "m1", START), as_of=START)["kind"] == "answered"
    delivered = delivery_instant(2027, 2, ScheduleSettings()) + dt.timedelta(minutes=1)
    assert run(walker, delivered)["delivery"] == 1
    delivery = [row for row in outbox(walker) if row["kind"] == "disclosure"][-1]
    inner = read(client, walker, delivery, recipient)
    assert str(inner["Subject"]).startswith("Register of children's homes: West Mercia")
    assert sorted(marked_files(inner)) == ["changes.csv", "enforcement.csv", "homes.csv"]

    review = dt.date.fromisoformat(str(subscriptions(walker)[0]["review_on"]))
    noon = dt.time(12, 0, tzinfo=dt.UTC)
    assert run(walker, dt.datetime.combine(review - dt.timedelta(days=30), noon))["reminder"] == 1
    inner = read(client, walker, only(walker, "reminder"), recipient)
    assert str(inner["Subject"]).startswith("Monthly subscription review due")
    assert "Request: renewal" in text_of(inner)

    assert run(walker, dt.datetime.combine(review, noon))["lapse"] == 1
    inner = read(client, walker, only(walker, "lapse"), recipient)
    assert str(inner["Subject"]).startswith("Monthly subscription lapsed")


def test_neither_client_calls_a_reply_good_against_another_certificate(
    client: Client, live: Gateway, keys: AuthorityKeys
) -> None:
    """The harness's own control: given another key's certificate, the client does not report a good signature,
    so the verdicts above are the client's, not the harness's."""
    assert process(live, request_from_police(keys))["kind"] == "answered"
    wire = outbox_content(live, only(live, "disclosure")["id"])
    with pytest.raises(AssertionError, match=r"Verification failed|NO PUBLIC KEY"):
        client.open(encrypted_payload(wire), keys.police.fingerprint, keys.la.public, keys.la.fingerprint)


# ---------------------------------------------------------------- requests the clients sign


PURPOSE = "Safeguarding children accommodated in children's homes in our force area, and those placed from it"


def answered_as_asked(live: Gateway, keys: AuthorityKeys, client: Client, raw: bytes) -> None:
    """The request is answered with data, its whole Purpose recorded, and the disclosure opens in the same client."""
    outcome = process(live, raw)
    assert outcome["kind"] == "answered", outcome
    records = json.loads(live.ok("audit", "list", "--json"))
    disclosure = next(r for r in records if r["action"] == "disclosure")
    assert disclosure["details"]["justification"] == PURPOSE
    inner = read(client, live, only(live, "disclosure"), keys.police.fingerprint)
    assert sorted(marked_files(inner)) == ["enforcement.csv", "homes.csv"]


def test_a_request_the_client_signs_is_answered(client: Client, live: Gateway, keys: AuthorityKeys) -> None:
    """A multipart/signed request around one text/plain part, signed detached by the client itself."""
    part = plain_part(f"Request: disclosure\r\nPurpose: {PURPOSE}\r\n")
    headers = FROM_POLICE + f"Message-ID: <plain-{client.name}@westmercia.police.example>\n"
    raw = pgp_mime_signed(headers, part, client.sign(part, keys.police.fingerprint))
    answered_as_asked(live, keys, client, raw)


def test_a_request_in_thunderbirds_layout_is_answered(client: Client, live: Gateway, keys: AuthorityKeys) -> None:
    """Thunderbird's layout: protected headers, the text format=flowed (its long Purpose broken over two lines),
    the sender's key attached, signed by the client (RNP is what Thunderbird itself signs with)."""
    headers = FROM_POLICE + f"Message-ID: <tb-{client.name}@westmercia.police.example>\n"
    body = f"Request: disclosure\nPurpose: {PURPOSE}\n\n-- \nDuty inspector, West Mercia Police\n"
    part = thunderbird_part(body, headers, keys.police.public, keys.police.fingerprint)
    outer = headers + "User-Agent: Mozilla Thunderbird\nContent-Language: en-GB\n"
    raw = pgp_mime_signed(
        outer, part, client.sign(part, keys.police.fingerprint), signature_name="OpenPGP_signature.asc"
    )
    answered_as_asked(live, keys, client, raw)
