"""Cover notes are sent format=flowed (RFC 3676): short lines on the wire, the same text in a client's pane."""

from __future__ import annotations

from email import message_from_bytes, policy
from email.message import EmailMessage

from gateway.compose import FLOWED_WIDTH, Envelope, flowed, inner_message, outer_fields
from gateway.requests import unflowed

NOTE = (
    "OFFICIAL-SENSITIVE\n"
    "This extract is disclosed under the joint protocol of 2013 for the purpose you stated; do not pass it on "
    "to anyone who does not need it to safeguard the children concerned.\n"
    "> a line that starts with a quote mark\n"
    "From here on, a line that starts as an mbox separator would\n"
    " an indented line\n"
    "a line that ends in spaces   \n"
    "https://example.org/" + "x" * 90 + "\n"
    "\n"
    "OFFICIAL-SENSITIVE\n"
)


def test_flowed_text_reads_back_as_written_in_lines_no_longer_than_72() -> None:
    """What a client shows (the flowed lines joined) is the note as rendered, but for trailing spaces; each
    line on the wire fits in 72 columns and a soft break's space, unless one word is longer."""
    wire = flowed(NOTE)
    assert unflowed(wire) == "\n".join(line.rstrip(" ") for line in NOTE.split("\n"))
    for line in wire.splitlines():
        assert len(line) <= FLOWED_WIDTH + 1 or " " not in line.strip(), line
    assert " > a line that starts with a quote mark" in wire.splitlines()  # stuffed: not a quotation
    assert " From here on, a line that starts as an mbox separator would" in wire.splitlines()


def test_the_cover_note_part_says_it_is_flowed() -> None:
    envelope = Envelope(
        sender="register-requests@hmci.example", recipient="disclosures@westmercia.police.example",
        marking="OFFICIAL-SENSITIVE", reference="HMCI-20270104-00000001", subject="Register of children's homes",
    )  # fmt: skip
    inner = message_from_bytes(inner_message(envelope, NOTE, outer=outer_fields(envelope)), policy=policy.default)
    assert isinstance(inner, EmailMessage)
    body = inner.get_body(preferencelist=("plain",))
    assert body is not None
    assert body.get_param("format") == "flowed"
    text = body.get_content().replace("\r\n", "\n")
    assert unflowed(text).startswith("Subject: Register of children's homes\n\nOFFICIAL-SENSITIVE\nThis extract")


def test_the_signature_separator_keeps_its_space() -> None:
    """ "-- " is the one line whose trailing space is not a soft break (RFC 3676 4.3)."""
    assert flowed("Regards\n-- \nHMCI\n").splitlines() == ["Regards", "-- ", "HMCI"]
    assert unflowed(flowed("Regards\n-- \nHMCI\n")) == "Regards\n-- \nHMCI\n"
