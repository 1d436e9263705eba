"""Replies protect their headers as RFC 9788 says, and still show the real Subject to clients that do not."""

from __future__ import annotations

from email import message_from_bytes, policy
from email.message import EmailMessage

from tests.support.gateway_cli import Gateway
from tests.support.keys import AuthorityKeys
from tests.support.live import open_as_recipient, outbox, outbox_content, process
from tests.support.requests import request_from_police

MARKING = "OFFICIAL-SENSITIVE"
STRUCTURAL = {"MIME-Version", "Content-Type", "Content-Transfer-Encoding"}


def reply(gateway: Gateway, keys: AuthorityKeys) -> tuple[EmailMessage, EmailMessage]:
    """The disclosure answering a signed request: (outer message as on the wire, decrypted inner part)."""
    assert process(gateway, request_from_police(keys, message_id="<hp-1@westmercia.police.example>"))["kind"] == (
        "answered"
    )
    [row] = [row for row in outbox(gateway) if row["kind"] == "disclosure"]
    wire = outbox_content(gateway, row["id"])
    outer = message_from_bytes(wire, policy=policy.default)
    assert isinstance(outer, EmailMessage)
    inner, _ = open_as_recipient(gateway, keys, wire)
    return outer, inner


def test_the_real_headers_travel_inside_and_the_outer_ones_are_recorded(live: Gateway, keys: AuthorityKeys) -> None:
    """The encrypted part says hp="cipher" (and protected-headers="v1", which Thunderbird reads), carries the
    headers a reader sees with the real Subject, and records each outer field as HP-Outer."""
    outer, inner = reply(live, keys)
    assert inner.get_param("hp") == "cipher"
    assert inner.get_param("protected-headers") == "v1"
    for name in ("From", "To", "Date", "Message-ID", "In-Reply-To", "References"):
        assert str(inner[name]) == str(outer[name]), name
    assert str(inner["In-Reply-To"]) == "<hp-1@westmercia.police.example>"
    assert str(inner["Subject"]).startswith("Register of children's homes: West Mercia police force area (")
    reference = str(inner["Subject"]).rpartition("(")[2].rstrip(")")
    assert str(outer["Subject"]) == f"[{MARKING}] {reference}"  # only the marking and the reference outside
    recorded = [" ".join(str(value).split()) for value in inner.get_all("HP-Outer") or []]
    shown = [f"{name}: {' '.join(str(value).split())}" for name, value in outer.items() if name not in STRUCTURAL]
    assert recorded == shown
    assert "Auto-Submitted: auto-replied" in recorded
    assert f'SIO-Label: marking="{MARKING}"' in recorded


def test_a_client_that_shows_only_the_outer_subject_still_reads_the_real_one(
    live: Gateway, keys: AuthorityKeys
) -> None:
    """The Legacy Display Element: the cover note's part is marked hp-legacy-display and starts with the real
    Subject and a blank line; after that, the note as before, marking first."""
    _, inner = reply(live, keys)
    body = inner.get_body(preferencelist=("plain",))
    assert body is not None
    assert body.get_param("hp-legacy-display") == "1"
    lines = body.get_content().splitlines()
    assert lines[0] == f"Subject: {inner['Subject']}"
    assert lines[1] == ""
    assert lines[2] == MARKING
    assert lines[-1] == MARKING
