"""Request bodies: the fields at the top, in any charset and encoding mail clients use, or precise complaints."""

from __future__ import annotations

from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest

from gateway.requests import Request, body_text, parse_request, unflowed

PLAIN = "Request: disclosure\nFrequency: monthly\nArea: West Mercia\nPurpose: Safeguarding children in our area.\n"


def parsed(text: str) -> Request:
    result = parse_request(text)
    assert result.problems == ()
    assert result.request is not None
    return result.request


def complaints(text: str) -> tuple[str, ...]:
    result = parse_request(text)
    assert result.request is None
    return result.problems


def test_a_complete_request() -> None:
    assert parsed(PLAIN) == Request("disclosure", "monthly", "West Mercia", "Safeguarding children in our area.")


def test_names_ignore_case_frequency_defaults_to_once_and_area_is_optional() -> None:
    request = parsed("\n\nREQUEST: Disclosure\npurpose :  Safeguarding: children missing from care \n")
    assert request == Request("disclosure", "once", None, "Safeguarding: children missing from care")


def test_what_follows_the_fields_is_ignored() -> None:
    body = PLAIN + "\nKind regards,\nChief Constable\nTel: 01632 960000\n\n> On Monday HMCI wrote:\n> Area: Kent\n"
    assert parsed(body).area == "West Mercia"


@pytest.mark.parametrize(
    ("body", "problems"),
    [
        (
            "Dear HMCI,\nplease send the register.\n",
            ("the message does not start with the request fields (Request: ..., Purpose: ...)",),
        ),
        ("Request: disclosure\n", ("the Purpose field is missing or empty: say why the data is needed",)),
        ("Purpose: x\n", ("the Request field is missing: it is one of disclosure, renewal, cancel",)),
        (
            "Request: everything\nFrequency: weekly\nPurpose: x\n",
            (
                '"everything" is not a valid Request: it is one of disclosure, renewal, cancel',
                '"weekly" is not a valid Frequency: it is one of once, monthly',
            ),
        ),
        (
            "Request: disclosure\nUrgency: high\nPurpose: x\nPurpose: y\n",
            (
                'unknown field "Urgency" (the fields are Request, Frequency, Area, Purpose)',
                "the Purpose field is given twice",
            ),
        ),
    ],
)
def test_each_mistake_is_named(body: str, problems: tuple[str, ...]) -> None:
    assert complaints(body) == problems


def raw_message(content_type: str, cte: str, payload: bytes, line_end: bytes = b"\r\n") -> EmailMessage:
    head = (
        b"From: disclosures@westmercia.police.example\r\nTo: register-requests@hmci.example\r\n"
        b"Subject: request\r\nMIME-Version: 1.0\r\n"
        + f"Content-Type: {content_type}\r\nContent-Transfer-Encoding: {cte}\r\n\r\n".encode()
    )
    raw = (head + payload).replace(b"\r\n", line_end)
    message = message_from_bytes(raw, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


PURPOSE = "Safeguarding children \u2013 our force\u2019s area"


@pytest.mark.parametrize(
    ("content_type", "cte", "payload"),
    [
        ('text/plain; charset="utf-8"', "8bit", f"Request: disclosure\r\nPurpose: {PURPOSE}\r\n".encode()),
        (
            'text/plain; charset="utf-8"',
            "quoted-printable",
            b"Request: disclosure\r\nPurpose: Safeguarding children =E2=80=93 our force=E2=80=99s area\r\n",
        ),
        (
            'text/plain; charset="windows-1252"',
            "8bit",
            f"Request: disclosure\r\nPurpose: {PURPOSE}\r\n".encode("cp1252"),
        ),
        (
            'text/plain; charset="utf-8"',
            "base64",
            b"UmVxdWVzdDogZGlzY2xvc3VyZQpQdXJwb3NlOiBTYWZlZ3VhcmRpbmcgY2hpbGRyZW4g4oCTIG91ciBmb3JjZeKAmXMgYXJlYQo=\r\n",
        ),
    ],
)
@pytest.mark.parametrize("line_end", [b"\r\n", b"\n"])
def test_charsets_and_transfer_encodings(content_type: str, cte: str, payload: bytes, line_end: bytes) -> None:
    request = parsed(body_text(raw_message(content_type, cte, payload, line_end)))
    assert request.purpose == PURPOSE


def test_latin1_and_an_unknown_charset_still_read() -> None:
    latin = raw_message(
        'text/plain; charset="iso-8859-1"',
        "8bit",
        "Request: disclosure\nPurpose: caf\u00e9s near homes\n".encode("latin-1"),
    )
    assert parsed(body_text(latin)).purpose == "caf\u00e9s near homes"
    unknown = raw_message(
        'text/plain; charset="x-made-up"', "8bit", "Request: disclosure\nPurpose: caf\u00e9s\n".encode()
    )
    assert parsed(body_text(unknown)).purpose == "caf\u00e9s"


def test_html_only_mail_is_read_as_its_visible_text() -> None:
    html = (
        b"<html><head><style>p {color: red}</style><script>document.write('Area: Kent')</script></head><body>"
        b"<p>Request: disclosure</p><div>Area: Shropshire</div><p>Purpose: Safeguarding &amp; welfare</p>"
        b"<p>Regards</p></body></html>"
    )
    request = parsed(body_text(raw_message('text/html; charset="utf-8"', "8bit", html)))
    assert request == Request("disclosure", "once", "Shropshire", "Safeguarding & welfare")


def test_the_plain_part_wins_and_attachments_are_not_the_body() -> None:
    message = EmailMessage()
    message.set_content("Request: disclosure\nPurpose: from the plain part\n")
    message.add_alternative("<p>Request: disclosure</p><p>Purpose: from the html part</p>", subtype="html")
    message.add_attachment("Request: cancel\nPurpose: from an attachment\n", filename="notes.txt")
    assert parsed(body_text(message)).purpose == "from the plain part"


# As Thunderbird sends it: broken after a space at 72 columns, the space kept at the end of the line (RFC 3676).
FLOWED = (
    "Request: disclosure\n"
    "Purpose: Safeguarding children in our force area for child protection \n"
    "enquiries: strategy meetings and visits to homes\n"
    "\n"
    "-- \n"
    "Duty inspector\n"
)
LONG_PURPOSE = (
    "Safeguarding children in our force area for child protection enquiries: strategy meetings and visits to homes"
)


@pytest.mark.parametrize("cte", ["quoted-printable", "7bit"])
def test_a_format_flowed_purpose_is_read_whole_as_its_writer_typed_it(cte: str) -> None:
    """Read line by line, the Purpose would end at the first soft break, and a later line holding a colon would
    be taken for an unknown field: the request refused for the way the client wraps text."""
    payload = (FLOWED.replace(" \n", "=20\n") if cte == "quoted-printable" else FLOWED).encode()
    message = raw_message('text/plain; charset="utf-8"; format=flowed', cte, payload)
    assert parsed(body_text(message)).purpose == LONG_PURPOSE
    fixed = raw_message('text/plain; charset="utf-8"', cte, payload)  # without format=flowed a line end is one
    assert complaints(body_text(fixed)) == (
        'unknown field "enquiries" (the fields are Request, Frequency, Area, Purpose)',
    )


def test_unflowing_follows_rfc_3676() -> None:
    assert unflowed("a \nb\nc") == "a b\nc"
    assert unflowed("a \nb", delsp=True) == "ab"  # DelSp=yes: the soft break's space was added by the client
    assert unflowed(" From here\n >x") == "From here\n>x"  # space-stuffing undone
    assert unflowed("> quoted \n> more\n>> deeper \nplain") == "> quoted more\n>> deeper \nplain"  # depth by depth
    assert unflowed("Regards \n-- \nname") == "Regards -- \nname"  # "-- " ends a paragraph, it never flows on
