"""Impostors against the running pipeline: no disclosure, quarantined, the admins alerted, the authority told."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from gateway import pipeline
from gateway.compose import Templates
from gateway.config import load_config
from gateway.crypto import Keyring
from gateway.db.engine import create_database
from gateway.dev.dovecot import ImapServer
from gateway.values import Context
from tests.support.addresses import ADMIN_ADDRESS, GATEWAY_ADDRESS, POLICE_ADDRESS
from tests.support.gateway_cli import Gateway
from tests.support.keys import AuthorityKeys
from tests.support.live import alert_text, open_as_recipient, outbox, outbox_content, process, sent
from tests.support.mailbox import Running, counts_are, eventually
from tests.support.requests import BORDER, FROM_POLICE, request_from_police, signed_message, unsigned

DOMAIN = POLICE_ADDRESS.rpartition("@")[2]  # westmercia.police.example
LOCAL = POLICE_ADDRESS.rpartition("@")[0]


def told_police(gateway: Gateway, keys: AuthorityKeys) -> str:
    """The notice to the police, opened with their own key: it must be encrypted to them."""
    [row] = [row for row in outbox(gateway) if row["kind"] == "impostor-notice"]
    assert row["recipient"] == POLICE_ADDRESS
    inner, _ = open_as_recipient(gateway, keys, outbox_content(gateway, row["id"]))
    body = inner.get_body(preferencelist=("plain",))
    assert body is not None
    return str(body.get_content())


def assert_impostor(gateway: Gateway, keys: AuthorityKeys, raw: bytes, *named: str) -> str:
    """No disclosure; quarantined; an alert naming what was seen; the police told, encrypted. Returns the reason."""
    outcome = process(gateway, raw)
    assert outcome["kind"] == "quarantined", outcome
    reason = str(outcome["reason"])
    for words in named:
        assert words in reason, (words, reason)
    counts = sent(gateway)
    assert counts[("disclosure", POLICE_ADDRESS)] == 0
    assert counts[("alert", ADMIN_ADDRESS)] == 1
    assert "No register data was sent" in alert_text(gateway)
    assert "used your name" in told_police(gateway, keys)
    return reason


CYRILLIC_I = "\u0456"
LOOKALIKES = {
    "confusable": (f"{LOCAL}@westmerc{CYRILLIC_I}a.police.example", "mixed scripts"),
    "invisible": (f"{LOCAL}@westmer\u200bcia.police.example", "invisible characters U+200B"),
    "punycode": (
        f"{LOCAL}@{('westmerc' + CYRILLIC_I + 'a').encode('idna').decode()}.police.example",
        "punycode",
    ),
    "swapped": (f"{LOCAL}@westmecria.police.example", "one letter different"),
    "dropped": (f"{LOCAL}@westmrcia.police.example", "one letter different"),
    "digit": (f"disc1osures@{DOMAIN}", "confusable characters"),
    "inside": (f"{LOCAL}@{DOMAIN}.attacker.example", "inside another"),
}


@pytest.mark.parametrize("kind", sorted(LOOKALIKES))
def test_a_lookalike_address_is_caught_and_named(live: Gateway, keys: AuthorityKeys, kind: str) -> None:
    address, how = LOOKALIKES[kind]
    raw = unsigned(f"From: West Mercia Police <{address}>\nTo: {GATEWAY_ADDRESS}\nSubject: request\n")
    reason = assert_impostor(live, keys, raw, "imitates the registered address", POLICE_ADDRESS, how)
    assert "No register data" in alert_text(live)
    assert POLICE_ADDRESS in alert_text(live)  # the alert names what was imitated
    assert reason


def test_a_colleagues_unregistered_address_is_only_rejected(live: Gateway) -> None:
    raw = unsigned(f"From: someone@{DOMAIN}\nTo: {GATEWAY_ADDRESS}\nSubject: request\n")
    assert process(live, raw)["kind"] == "rejected"
    assert outbox(live) == []  # not an impostor: a different mailbox at the real domain gets no backscatter


FROM_TRICKS = {
    "display name": (f'From: "{POLICE_ADDRESS}" <evil@attacker.example>\n', "is the registered address"),
    "defect": (f"From: {POLICE_ADDRESS} <evil@attacker.example>\n", "malformed"),
    "two mailboxes": (f"From: {POLICE_ADDRESS}, evil@attacker.example\n", "names 2 mailboxes"),
    "two headers": (f"From: {POLICE_ADDRESS}\nFrom: evil@attacker.example\n", "2 From headers"),
}


@pytest.mark.parametrize("trick", sorted(FROM_TRICKS))
def test_a_from_header_trick_is_caught(live: Gateway, keys: AuthorityKeys, trick: str) -> None:
    header, words = FROM_TRICKS[trick]
    raw = unsigned(f"{header}To: {GATEWAY_ADDRESS}\nSubject: request\n")
    assert_impostor(live, keys, raw, words)


def test_a_signed_request_with_another_sender_is_caught(live: Gateway, keys: AuthorityKeys) -> None:
    headers = FROM_POLICE + "Sender: evil@attacker.example\nMessage-ID: <s1@westmercia.police.example>\n"
    raw = signed_message(keys, keys.police.fingerprint, headers=headers)  # a good signature does not excuse it
    assert_impostor(live, keys, raw, "the Sender header (evil@attacker.example) differs from From")


AUTH_RESULTS = {
    "not topmost": f"Authentication-Results: mx.attacker.example; none\n"
    f"Authentication-Results: {BORDER}; dmarc=pass header.from={DOMAIN}\n",
    "other authserv-id": f"Authentication-Results: mx.attacker.example; dmarc=pass header.from={DOMAIN}\n",
    "other domain": f"Authentication-Results: {BORDER}; dmarc=pass header.from=attacker.example\n",
}


@pytest.mark.parametrize("claim", sorted(AUTH_RESULTS))
def test_a_forged_dmarc_pass_is_caught(live: Gateway, keys: AuthorityKeys, claim: str) -> None:
    assert_impostor(live, keys, unsigned(AUTH_RESULTS[claim] + FROM_POLICE), "authentication failed")


SIGNATURES = {
    "another key": ("la", "the PGP signature is not good"),
    "altered after signing": ("police-altered", "does not match"),
}


@pytest.mark.parametrize("case", sorted(SIGNATURES))
def test_a_bad_signature_is_caught(live: Gateway, keys: AuthorityKeys, case: str) -> None:
    who, words = SIGNATURES[case]
    signer = keys.la.fingerprint if who == "la" else keys.police.fingerprint
    raw = signed_message(keys, signer, alter=who == "police-altered")
    assert_impostor(live, keys, raw, "authentication failed", words)


def test_a_signed_part_inside_an_unsigned_message_is_caught(live: Gateway, keys: AuthorityKeys) -> None:
    """A good signature over only part of the message: the rest could say anything."""
    signed = signed_message(keys, keys.police.fingerprint)
    head, _, signed_body = signed.partition(b"\r\n\r\n")
    content_type = next(line for line in head.split(b"\r\n") if line.startswith(b"Content-Type"))
    raw = (
        FROM_POLICE.replace("\n", "\r\n").encode()
        + b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="outer"\r\n\r\n'
        + b"--outer\r\nContent-Type: text/plain\r\n\r\nRequest: disclosure\r\nArea: all of England\r\n"
        + b"Purpose: x\r\n--outer\r\n"
        + content_type
        + b"\r\n\r\n"
        + signed_body
        + b"\r\n--outer--\r\n"
    )
    assert_impostor(live, keys, raw, "authentication failed")


def test_a_replayed_message_id_is_caught(live: Gateway, keys: AuthorityKeys) -> None:
    raw = request_from_police(keys)
    assert process(live, raw)["kind"] == "answered"
    replay = b"Received: from elsewhere.example\r\n" + raw  # other bytes, the same Message-ID and signature
    outcome = process(live, replay, "replay.eml")
    assert outcome["kind"] == "quarantined"
    assert "already processed" in str(outcome["reason"])
    counts = sent(live)
    assert counts[("disclosure", POLICE_ADDRESS)] == 1
    assert counts[("alert", ADMIN_ADDRESS)] == 1
    assert "used your name" in told_police(live, keys)


def test_a_signature_older_than_the_window_is_a_replay(live: Gateway, keys: AuthorityKeys) -> None:
    raw = request_from_police(keys)  # signed now; it turns up eight days later
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=8)
    outcome = process(live, raw, as_of=later)
    assert outcome["kind"] == "quarantined"
    assert "more than 7 days before the message arrived: a replay" in str(outcome["reason"])
    assert sent(live)[("disclosure", POLICE_ADDRESS)] == 0


def test_a_signature_dated_in_the_future_is_caught(live: Gateway, keys: AuthorityKeys) -> None:
    tomorrow = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    raw = signed_message(keys, keys.police.fingerprint, at=tomorrow)
    outcome = process(live, raw)
    assert outcome["kind"] == "quarantined"
    assert "in the future" in str(outcome["reason"])
    assert sent(live)[("disclosure", POLICE_ADDRESS)] == 0


async def test_a_gpg_that_cannot_run_is_the_gateways_fault_not_an_impostor(live: Gateway, keys: AuthorityKeys) -> None:
    config = load_config(live.config_path)
    db = create_database(config.database)
    keyring = Keyring(config.gpg.home)
    keyring.binary = str(live.directory / "no-such-gpg")  # gpg uninstalled, say, under a running gateway
    try:
        outcome = await pipeline.process(ctx=Context(config, db, keyring, Templates()), raw=request_from_police(keys),
                                         source="imap")  # fmt: skip
    finally:
        await db.close()
    assert outcome.kind == "quarantined"  # kept for a person, and tried by no one as an impostor
    assert outcome.reason.startswith("processing failed (GpgUnavailable)")
    counts = await asyncio.to_thread(sent, live)
    assert counts[("alert", ADMIN_ADDRESS)] == 1
    assert counts[("impostor-notice", POLICE_ADDRESS)] == 0  # the police are not told someone used their name


async def test_impostors_in_the_mailbox_end_in_quarantine(
    running: Running, dovecot_server: ImapServer, live: Gateway, keys: AuthorityKeys
) -> None:
    """The same attacks through the real watcher and Dovecot: each filed in Quarantine, none answered."""
    await asyncio.wait_for(running.watcher.connected.wait(), 20)
    attacks = [
        unsigned(f"From: West Mercia Police <{LOOKALIKES['confusable'][0]}>\nTo: {GATEWAY_ADDRESS}\nSubject: r\n"),
        unsigned(f"{FROM_TRICKS['display name'][0]}To: {GATEWAY_ADDRESS}\nSubject: r\n"),
        unsigned(AUTH_RESULTS["not topmost"] + FROM_POLICE),
        signed_message(keys, keys.police.fingerprint, headers=FROM_POLICE + "Sender: evil@attacker.example\n"),
        signed_message(keys, keys.police.fingerprint, alter=True),
    ]
    for raw in attacks:
        dovecot_server.deliver(raw)
    await eventually(counts_are(dovecot_server, {"INBOX": 0, "Processed": 0, "Quarantine": len(attacks)}))
    counts = await asyncio.to_thread(sent, live)
    assert counts[("disclosure", POLICE_ADDRESS)] == 0
    assert counts[("alert", ADMIN_ADDRESS)] == len(attacks)
    assert counts[("impostor-notice", POLICE_ADDRESS)] == 3  # [limits] impostor_notices_per_day
