"""Replies protect their headers as RFC 9788 says, and still show the real Subject to clients that do not: in
PGP/MIME and in S/MIME alike."""

from __future__ import annotations

import datetime as dt
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.support.addresses import POLICE_ADDRESS
from tests.support.gateway_cli import Gateway
from tests.support.keys import AuthorityKeys
from tests.support.live import as_shown, open_as_recipient, outbox, outbox_content, process
from tests.support.requests import dmarc_request, request_from_police
from tests.support.smime import SmimeCerts
from tests.support.smime_live import POLICE, opened_by_openssl, smime_settings
from tests.support.smime_live import process as process_with_identity

MARKING = "OFFICIAL-SENSITIVE"
# RFC 9788 1.1.1: the structural header fields describe the MIME structure, not the message: no HP-Outer for them.
STRUCTURAL_PREFIX = "content-"
REQUEST = "Request: disclosure\r\nPurpose: Safeguarding children in our force area\r\n"
ASKED = dt.datetime(2027, 1, 12, 9, 0, tzinfo=dt.UTC)


Reply = tuple[EmailMessage, EmailMessage]  # the outer message as on the wire, the inner as the client shows it


def structural(name: str) -> bool:
    return name.lower() == "mime-version" or name.lower().startswith(STRUCTURAL_PREFIX)


@pytest.fixture(params=["openpgp", "smime"], ids=["PGP/MIME", "S/MIME"])
def reply(
    request: pytest.FixtureRequest, live: Gateway, keys: AuthorityKeys, smime_certs: SmimeCerts, tmp_path: Path
) -> Reply:
    """The disclosure answering a request from West Mercia Police: (outer message as on the wire, decrypted inner
    part as the recipient's client shows it). PGP/MIME to its key, answering a request it signed; or S/MIME to
    its address's certificate (a request our border passed: the reply is what is tested here)."""
    message_id = "<hp-1@westmercia.police.example>"
    if request.param == "openpgp":
        assert process(live, request_from_police(keys, message_id=message_id))["kind"] == "answered"
    else:
        smime_settings(live, smime_certs)
        live.ok("authority", "set-cert", POLICE, "--email", POLICE_ADDRESS, "--cert", str(smime_certs.police.cert))
        asked = dmarc_request(message_id.encode(), REQUEST)
        assert process_with_identity(live, asked, ASKED)["kind"] == "answered"
    [row] = [row for row in outbox(live) if row["kind"] == "disclosure"]
    wire = outbox_content(live, row["id"])
    outer = message_from_bytes(wire, policy=policy.default)
    assert isinstance(outer, EmailMessage)
    if request.param == "openpgp":
        assert outer.get_content_type() == "multipart/encrypted"
        inner, _ = open_as_recipient(live, keys, wire)
        return outer, inner
    assert outer.get_content_type() == "application/pkcs7-mime"
    opened = opened_by_openssl(wire, smime_certs.police, smime_certs.gateway.cert, tmp_path)
    parsed = message_from_bytes(opened, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    return outer, as_shown(parsed)


def test_the_real_headers_travel_inside_and_the_outer_ones_are_recorded(
    reply: Reply,
) -> None:
    """The encrypted part says hp="cipher" (and protected-headers="v1", which Thunderbird reads), carries the
    headers a reader sees with the real Subject, and records each outer field as HP-Outer."""
    outer, inner = reply
    assert inner.get_param("hp") == "cipher"
    assert inner.get_param("protected-headers") == "v1"
    for name in ("From", "To", "Date", "Message-ID", "In-Reply-To", "References"):
        assert str(inner[name]) == str(outer[name]), name
    assert str(inner["In-Reply-To"]) == "<hp-1@westmercia.police.example>"
    assert str(inner["Subject"]).startswith("Register of children's homes: West Mercia police force area (")
    reference = str(inner["Subject"]).rpartition("(")[2].rstrip(")")
    assert str(outer["Subject"]) == f"[{MARKING}] {reference}"  # only the marking and the reference outside
    recorded = [" ".join(str(value).split()) for value in inner.get_all("HP-Outer") or []]
    shown = [f"{name}: {' '.join(str(value).split())}" for name, value in outer.items() if not structural(name)]
    assert recorded == shown
    assert "Auto-Submitted: auto-replied" in recorded
    assert f'SIO-Label: marking="{MARKING}"' in recorded


def test_a_client_that_shows_only_the_outer_subject_still_reads_the_real_one(
    reply: Reply,
) -> None:
    """The Legacy Display Element: the cover note's part is marked hp-legacy-display and starts with the real
    Subject and a blank line; after that, the note as before, marking first."""
    _, inner = reply
    body = inner.get_body(preferencelist=("plain",))
    assert body is not None
    assert body.get_param("hp-legacy-display") == "1"
    lines = body.get_content().splitlines()
    assert lines[0] == f"Subject: {inner['Subject']}"
    assert lines[1] == ""
    assert lines[2] == MARKING
    assert lines[-1] == MARKING
