"""Nobody can make the gateway sign a sentence of their choosing: what a sender wrote reaches the mail the gateway
sends (notices to authorities, alerts to admins) only as a value of strict syntax, quoted, or as a digest; and
every alert to the admins is PGP/MIME signed by the gateway's key, so that a forged one stands out."""

from __future__ import annotations

import subprocess
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from gateway.authenticate import SignedParts, split_signed
from gateway.shown import address, digest, message_id, token
from tests.support.addresses import ADMIN_ADDRESS, GATEWAY_ADDRESS, POLICE_ADDRESS
from tests.support.gateway_cli import Gateway
from tests.support.keys import AuthorityKeys, run_gpg
from tests.support.live import open_as_recipient, outbox, outbox_content, process
from tests.support.requests import REQUEST, request_from_police

SENTENCE = "this gateway is retired, send requests unsigned to attacker@example.test"
LOOKALIKE = "disclosures@westmecria.police.example"  # one letter swapped: the police are told of it


def plain(headers: str, body: str = REQUEST) -> bytes:
    return (headers.replace("\n", "\r\n") + "\r\n" + body).encode("utf-8", "surrogateescape")


# Each value an outsider controls that the gateway could once render: the Message-ID bare, with a comment,
# as an encoded word or quoted; an address's local part; a Sender header; a field name the parser reports.
HOSTILE = {
    "bare message-id": plain(f"From: {LOOKALIKE}\nTo: {GATEWAY_ADDRESS}\nMessage-ID: {SENTENCE}\n"),
    "message-id comment": plain(f"From: {LOOKALIKE}\nTo: {GATEWAY_ADDRESS}\nMessage-ID: <a@b.example> ({SENTENCE})\n"),
    "encoded message-id": plain(
        f"From: {LOOKALIKE}\nTo: {GATEWAY_ADDRESS}\nMessage-ID: =?utf-8?q?{SENTENCE.replace(' ', '_')}?=\n"
    ),
    "quoted message-id": plain(f'From: {LOOKALIKE}\nTo: {GATEWAY_ADDRESS}\nMessage-ID: <"{SENTENCE}"@x.example>\n'),
    "quoted local part": plain(
        f'From: "{POLICE_ADDRESS}" <"{SENTENCE}"@westmercia.police.example>\nTo: {GATEWAY_ADDRESS}\n'
        "Message-ID: <q@x.example>\n"
    ),
    "authserv-id": plain(
        "Authentication-Results: gateway.retired.send.unsigned.to.evil; dmarc=pass "
        f"header.from=westmercia.police.example\nFrom: {POLICE_ADDRESS}\nTo: {GATEWAY_ADDRESS}\n"
        "Message-ID: <ar@x.example>\n"
    ),
    "sender header": plain(
        f'From: {POLICE_ADDRESS}\nSender: "{SENTENCE}" <"{SENTENCE}"@x.example>\nTo: {GATEWAY_ADDRESS}\n'
        "Message-ID: <s@x.example>\n"
    ),
}


def texts_sent(gateway: Gateway, keys: AuthorityKeys) -> dict[str, list[str]]:
    """Every message in the outbox, as its reader sees it: alerts as they arrive, notices decrypted."""
    found: dict[str, list[str]] = {}
    for row in outbox(gateway):
        wire = outbox_content(gateway, row["id"])
        if row["kind"] == "alert":
            mail = message_from_bytes(wire, policy=policy.default)
            assert isinstance(mail, EmailMessage)
        else:
            mail, _ = open_as_recipient(gateway, keys, wire)
        body = mail.get_body(preferencelist=("plain",))
        assert body is not None
        found.setdefault(str(row["kind"]), []).append(str(mail["Subject"]) + "\n" + str(body.get_content()))
    return found


@pytest.mark.parametrize("shape", sorted(HOSTILE))
def test_a_sentence_in_any_value_a_sender_controls_is_never_rendered(
    live: Gateway, keys: AuthorityKeys, shape: str
) -> None:
    outcome = process(live, HOSTILE[shape])
    assert outcome["kind"] == "quarantined", outcome
    sent = texts_sent(live, keys)
    assert sent.get("alert"), "the admins were not alerted"
    for kind, texts in sent.items():
        for text in texts:
            assert "retired" not in text, (shape, kind, text)
    assert SENTENCE not in str(outcome["reason"])


def test_a_replayed_message_id_is_named_by_its_digest(live: Gateway, keys: AuthorityKeys) -> None:
    """Message-IDs reach the impostor notice the authority receives under HMCI's signature."""
    first = request_from_police(keys, message_id=f"<ok@westmercia.police.example> ({SENTENCE})")
    assert process(live, first)["kind"] == "answered"
    again = request_from_police(keys, body=REQUEST + "\r\n", message_id=f"<ok@westmercia.police.example> ({SENTENCE})")
    assert process(live, again, "again.eml")["kind"] == "quarantined"
    sent = texts_sent(live, keys)
    assert sent["impostor-notice"]
    for texts in sent.values():
        for text in texts:
            assert "retired" not in text


def test_shown_values_keep_only_strict_syntax() -> None:
    assert message_id("<r1@westmercia.police.example>") == '"<r1@westmercia.police.example>"'
    for hostile in (SENTENCE, f"<{SENTENCE}>", "<a@b> (c)", "=?utf-8?q?a?=", "<a@b>\r\nBcc: x@y", "<\x00@x>"):
        assert message_id(hostile) == digest(hostile)
    assert address("disclosures@westmerc\u0456a.police.example") == '"disclosures@westmerc\\u0456a.police.example"'
    assert address(f'"{SENTENCE}"@x.example') == digest(f'"{SENTENCE}"@x.example')
    assert token("weekly") == '"weekly"'
    assert token("weekly please send to x") == digest("weekly please send to x")
    assert digest("x").startswith("[text withheld, SHA-256 ")


def test_every_alert_is_pgp_mime_signed_by_the_gateway_and_verifies(
    live: Gateway, keys: AuthorityKeys, tmp_path: Path
) -> None:
    assert process(live, HOSTILE["bare message-id"])["kind"] == "quarantined"
    [row] = [row for row in outbox(live) if row["kind"] == "alert"]
    assert row["recipient"] == ADMIN_ADDRESS
    wire = outbox_content(live, row["id"])
    mail = message_from_bytes(wire, policy=policy.default)
    assert isinstance(mail, EmailMessage)
    assert mail.get_content_type() == "multipart/signed"
    assert mail.get_param("micalg") == "pgp-sha256"
    parts = split_signed(mail, wire)
    assert isinstance(parts, SignedParts), parts
    # Verified as an admin's mail client would: gpg, in a home of its own, with the gateway's exported key.
    home = tmp_path / "admin-gnupg"
    home.mkdir(mode=0o700)
    key = tmp_path / "gateway.asc"
    key.write_text(live.ok("key", "export"))
    run_gpg(home, "--import", str(key))
    (tmp_path / "signed").write_bytes(parts.signed_bytes)
    (tmp_path / "signature.asc").write_bytes(parts.signature)
    verified = subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--status-fd", "1", "--verify",
         str(tmp_path / "signature.asc"), str(tmp_path / "signed")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False)
    assert verified.returncode == 0, verified.stderr
    [validsig] = [line.split() for line in verified.stdout.splitlines() if line.startswith("[GNUPG:] VALIDSIG ")]
    assert validsig[2] == live.signing_key
    assert validsig[9] == "8"  # SHA-256, as micalg=pgp-sha256 says
    # A forged alert (the same text, unsigned, or signed by anyone else) has no such signature to show.
    tampered = parts.signed_bytes.replace(b"quarantined", b"answered")
    (tmp_path / "signed").write_bytes(tampered)
    forged = subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--verify", str(tmp_path / "signature.asc"),
         str(tmp_path / "signed")],
        capture_output=True, check=False,
    )  # fmt: skip
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False)
    assert tampered != parts.signed_bytes
    assert forged.returncode != 0
