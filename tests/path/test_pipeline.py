"""The mail path end to end through `gateway process`: every outcome, the reply opened as its recipient would."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import subprocess
from email import message_from_bytes, policy
from pathlib import Path

import pytest

from gateway.compose import Templates
from gateway.config import load_config
from gateway.crypto import Keyring
from gateway.db.engine import create_database
from gateway.pipeline import process as pipeline_process
from gateway.values import Context
from tests.support.addresses import ADMIN_ADDRESS, GATEWAY_ADDRESS, POLICE_ADDRESS
from tests.support.gateway_cli import Gateway
from tests.support.keys import AuthorityKeys
from tests.support.live import (
    checks_timed,
    open_as_recipient,
    outbox,
    outbox_content,
    process,
    register_urns,
    subscriptions,
)
from tests.support.requests import BORDER, FROM_POLICE, REQUEST, police_says, request_from_police

DOMAIN = POLICE_ADDRESS.rpartition("@")[2]


def test_a_signed_request_is_answered_with_exactly_its_areas_homes(
    live: Gateway, keys: AuthorityKeys, tmp_path: Path
) -> None:
    outcome = process(live, request_from_police(keys))
    assert outcome["kind"] == "answered"
    [sent] = outbox(live)
    assert (sent["kind"], sent["recipient"], sent["status"]) == ("disclosure", POLICE_ADDRESS, "pending")

    wire = outbox_content(live, sent["id"])
    outer = message_from_bytes(wire, policy=policy.default)
    assert outer["Subject"] == f"[OFFICIAL-SENSITIVE] {outcome['reference']}"
    assert outer["In-Reply-To"] == "<r1@westmercia.police.example>"
    assert outer["Auto-Submitted"] == "auto-replied"
    assert b"West Mercia" not in wire

    inner, status = open_as_recipient(live, keys, wire)
    assert f"[GNUPG:] VALIDSIG {live.signing_key}" in status
    files = {part.get_filename(): part.get_content() for part in inner.iter_attachments()}
    homes = next(content for name, content in files.items() if str(name).endswith("-homes.csv"))
    rows = list(csv.DictReader(io.StringIO(homes.split("\n", 1)[1])))
    assert {r["urn"] for r in rows} == register_urns(tmp_path, "West Mercia")

    records = json.loads(live.ok("audit", "list", "--json"))
    disclosure = next(r for r in records if r["action"] == "disclosure")
    assert disclosure["details"]["recipient"] == POLICE_ADDRESS
    assert disclosure["details"]["key_fingerprint"] == keys.police.fingerprint
    assert disclosure["details"]["homes"] == len(rows)
    assert disclosure["details"]["justification"] == "Safeguarding children in our force area"
    assert live.run("audit", "verify").code == 0


def test_the_same_message_twice_sends_one_reply(live: Gateway, keys: AuthorityKeys) -> None:
    raw = request_from_police(keys)
    first = process(live, raw)
    again = process(live, raw, "again.eml")
    assert first["kind"] == "answered"
    assert again["kind"] == "duplicate"
    assert again["inbound_id"] == first["inbound_id"]
    assert len(outbox(live)) == 1


def test_unregistered_senders_get_nothing(live: Gateway) -> None:
    raw = f"From: someone@else.example\r\nTo: {GATEWAY_ADDRESS}\r\nSubject: hi\r\n\r\n{REQUEST}".encode()
    outcome = process(live, raw)
    assert outcome == {**outcome, "kind": "rejected", "reason": "someone@else.example is not a registered address"}
    assert outbox(live) == []


def test_a_registered_address_failing_authentication_is_quarantined_and_the_admin_told(
    live: Gateway, keys: AuthorityKeys, tmp_path: Path
) -> None:
    raw = (FROM_POLICE.replace("\n", "\r\n") + "\r\n" + REQUEST).encode()
    outcome = process(live, raw)
    assert outcome["kind"] == "quarantined"
    assert str(outcome["reason"]).startswith("authentication failed: the message is not PGP/MIME signed")
    alert, told = outbox(live)
    assert (alert["kind"], alert["recipient"]) == ("alert", ADMIN_ADDRESS)
    text = outbox_content(live, alert["id"]).decode()
    assert "No register data was sent" in text
    urns = register_urns(tmp_path, "West Mercia")
    assert not any(urn in text for urn in urns)
    # The police are told someone used their address, encrypted to their key.
    assert (told["kind"], told["recipient"]) == ("impostor-notice", POLICE_ADDRESS)
    inner, _ = open_as_recipient(live, keys, outbox_content(live, told["id"]))
    body = inner.get_body(preferencelist=("plain",))
    assert body is not None
    assert "used your name" in body.get_content()


def test_a_mistake_gets_an_encrypted_answer_saying_what_to_fix(live: Gateway, keys: AuthorityKeys) -> None:
    border = f"Authentication-Results: {BORDER}; dmarc=pass header.from={DOMAIN}\r\n"
    raw = (border + FROM_POLICE.replace("\n", "\r\n") + "\r\nRequest: disclosure\r\nArea: Kent\r\n").encode()
    outcome = process(live, raw)
    assert outcome["kind"] == "refused"
    [answer] = outbox(live)
    assert answer["kind"] == "refusal"
    wire = outbox_content(live, answer["id"])
    assert b"Purpose" not in wire  # the explanation travels encrypted too
    inner, _ = open_as_recipient(live, keys, wire)
    body = inner.get_body(preferencelist=("plain",))
    assert body is not None
    text = body.get_content()
    assert "the Purpose field is missing or empty" in text
    assert "Kent police force area is outside your own area" in text  # every problem, not just the first
    assert "Request: disclosure" in text  # the correct format is shown
    assert list(inner.iter_attachments()) == []


def test_an_area_outside_the_forces_own_is_refused_with_the_reason(live: Gateway, keys: AuthorityKeys) -> None:
    outcome = process(live, request_from_police(keys, body=REQUEST + "Area: Kent\r\n"))
    # "Area: Kent" after Purpose is still a field: fields are read until the first line that is not one.
    assert outcome["kind"] == "refused"
    assert "Kent police force area is outside your own area" in str(outcome["reason"])


AUTOMATIC = {
    "Auto-Submitted: auto-replied\r\n": 'Auto-Submitted: "auto-replied"',
    "Precedence: bulk\r\n": "Precedence: bulk",
    "List-Id: <safeguarding.lists.example>\r\n": "mailing list traffic",
    "Return-Path: <>\r\n": "null return path",
    "Sender: MAILER-DAEMON@mx.westmercia.police.example\r\n": "Sender is MAILER-DAEMON",
    "Sender: postmaster@westmercia.police.example\r\n": "Sender is postmaster",
}


@pytest.mark.parametrize("header", sorted(AUTOMATIC))
def test_automatic_mail_is_never_answered(live: Gateway, keys: AuthorityKeys, header: str) -> None:
    raw = request_from_police(keys).replace(b"Subject: request\r\n", f"Subject: request\r\n{header}".encode())
    outcome = process(live, raw)
    assert (outcome["kind"], outcome["reason"]) == (
        "rejected",
        f"automatic mail is never answered ({AUTOMATIC[header]})",
    )
    assert outbox(live) == []


def test_no_usable_key_means_no_data_and_an_alert(live: Gateway, keys: AuthorityKeys) -> None:
    subprocess.run(
        ["gpg", "--homedir", str(live.gnupg_home), "--batch", "--yes", "--delete-keys", keys.police.fingerprint],
        check=True, capture_output=True,
    )  # fmt: skip
    outcome = process(live, (f"Authentication-Results: {BORDER}; dmarc=pass header.from={DOMAIN}\r\n".encode()
                             + (FROM_POLICE.replace("\n", "\r\n") + "\r\n" + REQUEST).encode()))  # fmt: skip
    assert outcome["kind"] == "quarantined"
    assert "no data sent" in str(outcome["reason"])
    assert [row["kind"] for row in outbox(live)] == ["alert"]
    assert not any(r["action"] == "disclosure" for r in json.loads(live.ok("audit", "list", "--json")))


def encrypted_request(live: Gateway, keys: AuthorityKeys, signer: str | None) -> bytes:
    """As a PGP/MIME client sends it: encrypted to the gateway's key, signed inside (RFC 3156 6.2) or not."""
    exported = live.directory / "gateway-public.asc"
    exported.write_text(live.ok("key", "export"))
    gpg = ["gpg", "--homedir", str(keys.home), "--batch", "--pinentry-mode", "loopback", "--passphrase", ""]
    subprocess.run([*gpg, "--import", str(exported)], check=True, capture_output=True)
    inner = f'Content-Type: text/plain; charset="utf-8"\r\n\r\n{REQUEST}'.encode()
    signing = ["--sign", "--local-user", signer] if signer else []
    encrypted = subprocess.run(
        [*gpg, "--armor", "--trust-model", "always", "--encrypt", "-r", str(live.signing_key), *signing],
        input=inner, capture_output=True, check=True,
    ).stdout.decode()  # fmt: skip
    boundary = "enc-boundary"
    return (
        FROM_POLICE.replace("\n", "\r\n") + "Message-ID: <enc1@westmercia.police.example>\r\nMIME-Version: 1.0\r\n"
        f'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; boundary="{boundary}"\r\n\r\n'
        f"--{boundary}\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n"
        f'--{boundary}\r\nContent-Type: application/octet-stream; name="encrypted.asc"\r\n\r\n{encrypted}\r\n'
        f"--{boundary}--\r\n"
    ).encode()


def test_a_request_signed_inside_encryption_to_the_gateway_is_answered(live: Gateway, keys: AuthorityKeys) -> None:
    outcome = process(live, encrypted_request(live, keys, keys.police.fingerprint))
    assert outcome["kind"] == "answered"


def test_an_encrypted_request_signed_by_another_key_is_quarantined(live: Gateway, keys: AuthorityKeys) -> None:
    outcome = process(live, encrypted_request(live, keys, keys.la.fingerprint))
    assert outcome["kind"] == "quarantined"
    # Only West Mercia is registered here, so the council's key is not even in the gateway's keyring.
    assert "the signature could not be checked (unknown key or algorithm)" in str(outcome["reason"])


def test_an_encrypted_but_unsigned_request_is_quarantined(live: Gateway, keys: AuthorityKeys) -> None:
    outcome = process(live, encrypted_request(live, keys, None))
    assert outcome["kind"] == "quarantined"
    assert "not PGP/MIME signed" in str(outcome["reason"])


def test_a_monthly_request_is_answered_and_starts_one_subscription(live: Gateway, keys: AuthorityKeys) -> None:
    monthly = "Request: disclosure\r\nFrequency: monthly\r\nPurpose: Safeguarding children in our area\r\n"
    first = process(live, police_says(keys, monthly, "m1"))
    assert first["kind"] == "answered"
    [subscription] = subscriptions(live)
    assert (subscription["area"], subscription["status"]) == ("West Mercia police force area", "active")
    inner, _ = open_as_recipient(live, keys, outbox_content(live, outbox(live)[0]["id"]))
    body = inner.get_body(preferencelist=("plain",))
    assert body is not None
    assert "Request: renewal" in body.get_content()

    again = process(live, police_says(keys, monthly, "m2"))
    assert again["kind"] == "answered"
    assert len(subscriptions(live)) == 1  # no second subscription for the same area


def test_renewal_and_cancellation_are_acknowledged(live: Gateway, keys: AuthorityKeys) -> None:
    monthly = "Request: disclosure\r\nFrequency: monthly\r\nPurpose: Safeguarding children in our area\r\n"
    process(live, police_says(keys, monthly, "s1"))
    renewed = process(live, police_says(keys, "Request: renewal\r\nPurpose: still needed\r\n", "s2"))
    assert (renewed["kind"], renewed["reason"]) == ("answered", f"subscription {subscriptions(live)[0]['id']} for "
                                                    "West Mercia police force area: renewal")  # fmt: skip
    cancelled = process(live, police_says(keys, "Request: cancel\r\nPurpose: no longer needed\r\n", "s3"))
    assert cancelled["kind"] == "answered"
    assert subscriptions(live)[0]["status"] == "cancelled"
    nothing = process(live, police_says(keys, "Request: cancel\r\nPurpose: again\r\n", "s4"))
    assert nothing["kind"] == "refused"
    assert "no active monthly subscription for West Mercia police force area" in str(nothing["reason"])
    actions = [r["action"] for r in json.loads(live.ok("audit", "list", "--json")) if r["action"].startswith("subscr")]
    assert actions == ["subscription.create", "subscription.renew", "subscription.cancel"]


async def test_a_pgp_signature_check_is_timed_as_gpgs_never_as_openssls(live: Gateway, keys: AuthorityKeys) -> None:
    """What operators read of each tool: gpg's time checking a PGP/MIME request goes to gateway_gpg_seconds, and
    none of it to gateway_openssl_seconds. The message goes through the path in this process, where the
    histograms are."""
    config = load_config(live.config_path)
    db = create_database(config.database)
    ctx = Context(config, db, Keyring(config.gpg.home), Templates())
    openssl_before, gpg_before = checks_timed()
    try:
        outcome = await pipeline_process(ctx, request_from_police(keys), source="file")
    finally:
        await db.close()
    assert outcome.kind == "answered"
    openssl_after, gpg_after = checks_timed()
    assert (openssl_after - openssl_before, gpg_after - gpg_before) == (0.0, 1.0)


async def test_a_message_that_breaks_a_step_is_quarantined_not_lost(live: Gateway, tmp_path: Path) -> None:
    """An admin's template override with a mistake makes rendering fail: the message still ends recorded."""
    broken = tmp_path / "templates"
    broken.mkdir()
    (broken / "refusal.txt.j2").write_text("{{ marking }} {{ no_such_value }}\n")
    config = load_config(live.config_path)
    db = create_database(config.database)
    ctx = Context(config, db, Keyring(config.gpg.home), Templates(broken))
    border = f"Authentication-Results: {BORDER}; dmarc=pass header.from={DOMAIN}\r\n"
    raw = (border + FROM_POLICE.replace("\n", "\r\n") + "\r\nRequest: disclosure\r\n").encode()  # no Purpose
    try:
        outcome = await pipeline_process(ctx, raw, source="file")
        again = await pipeline_process(ctx, raw, source="file")
    finally:
        await db.close()
    assert outcome.kind == "quarantined"
    assert outcome.reason == "processing failed (UndefinedError); kept for a person to look at"
    assert again.kind == "duplicate"
    rows = await asyncio.to_thread(outbox, live)
    assert [(row["kind"], row["recipient"]) for row in rows] == [("alert", ADMIN_ADDRESS)]
