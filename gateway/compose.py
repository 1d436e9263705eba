"""Templates to the reply's MIME tree: protected headers inside, PGP/MIME outside, the marking everywhere."""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from importlib import resources
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from gateway.extracts import ExtractFile

# The shipped templates (templates/ in a checkout, installed as gateway.templates); a configured directory
# may override single templates.
DEFAULT_TEMPLATES = Path(str(resources.files("gateway.templates")))
SIGNED_POLICY = policy.SMTP  # CRLF everywhere: what gets encrypted must be what a client will read back


@dataclass(frozen=True)
class Envelope:
    """Who a reply is from and to, and what it answers. The real subject only ever travels encrypted."""

    sender: str
    recipient: str
    marking: str
    reference: str
    subject: str
    auto_submitted: str = "auto-replied"  # RFC 3834: "auto-generated" for scheduled mail
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()


def new_reference(now: dt.datetime | None = None) -> str:
    """A reference to quote: date and random, so it tells nothing about who asked or where."""
    moment = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    return f"HMCI-{moment:%Y%m%d}-{secrets.token_hex(4).upper()}"


class Templates:
    """Jinja2 over the shipped templates, with an optional directory of overrides searched first."""

    def __init__(self, override: Path | None = None) -> None:
        search = [str(override)] if override else []
        self._env = Environment(
            loader=FileSystemLoader([*search, str(DEFAULT_TEMPLATES)]),
            undefined=StrictUndefined,  # a missing value is a bug to see, not a blank in a legal notice
            autoescape=False,  # noqa: S701 - plain-text mail only; nothing here is ever rendered as HTML
            keep_trailing_newline=True,
        )

    def render(self, name: str, values: Mapping[str, Any]) -> str:
        return self._env.get_template(name).render(**values)


def inner_message(envelope: Envelope, text: str, attachments: Sequence[ExtractFile] = ()) -> EmailMessage:
    """The part that gets encrypted: the real headers (RFC 9788 protected headers), the text, the files."""
    message = EmailMessage(policy=SIGNED_POLICY)
    message["From"] = envelope.sender
    message["To"] = envelope.recipient
    message["Subject"] = envelope.subject
    # Quoted-printable keeps the signed text 7-bit and byte-exact through any relay.
    message.set_content(text, cte="quoted-printable")
    for attachment in attachments:
        message.add_attachment(
            attachment.content, maintype="text", subtype="csv", filename=attachment.name, cte="base64"
        )
    message.set_param("protected-headers", "v1")
    return message


def outer_message(
    envelope: Envelope, encrypted: bytes, *, now: dt.datetime | None = None, domain: str | None = None
) -> EmailMessage:
    """The PGP/MIME envelope (RFC 3156): nothing but the marking and the reference is readable on the wire."""
    message = EmailMessage(policy=SIGNED_POLICY)
    message["From"] = envelope.sender
    message["To"] = envelope.recipient
    message["Subject"] = f"[{envelope.marking}] {envelope.reference}"
    message["Date"] = format_datetime((now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC))
    message["Message-ID"] = make_msgid(domain=domain or envelope.sender.rpartition("@")[2])
    if envelope.in_reply_to:
        message["In-Reply-To"] = envelope.in_reply_to
    if envelope.references:
        message["References"] = " ".join(envelope.references)
    message["Auto-Submitted"] = envelope.auto_submitted
    message["SIO-Label"] = f'marking="{envelope.marking}"'  # RFC 7444 display marking
    message["MIME-Version"] = "1.0"
    message["Content-Type"] = 'multipart/encrypted; protocol="application/pgp-encrypted"'

    control = EmailMessage(policy=SIGNED_POLICY)
    control.set_content(b"Version: 1\r\n", maintype="application", subtype="pgp-encrypted", cte="7bit")
    control["Content-Description"] = "PGP/MIME version identification"
    payload = EmailMessage(policy=SIGNED_POLICY)
    payload.set_content(
        encrypted, maintype="application", subtype="octet-stream", cte="7bit", disposition="inline",
        filename="encrypted.asc",
    )  # fmt: skip
    payload["Content-Description"] = "OpenPGP encrypted message"
    message.attach(control)
    message.attach(payload)
    return message
