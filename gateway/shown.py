"""What of a sender's text may appear in mail the gateway sends: a value of strict syntax, quoted, else a digest.

The gateway signs what it sends. Text an outsider chose (a Message-ID, an address, a header) rendered as it
was written would let anyone make the gateway sign a sentence of their choosing ("this address is retired,
send requests unsigned to ..."). So each such value goes through one of these functions on its way into a
reason, a notice or an alert: it is shown only when it is exactly what it claims to be (a msg-id, an
addr-spec, a short token), inside quotes that mark it as the sender's data, and otherwise named by a short
SHA-256 digest that a person can match against the message kept in quarantine.
"""

from __future__ import annotations

import hashlib
import re

# RFC 5322 msg-id with dot-atom-text on both sides (no quoted strings, no domain literals, no comments).
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM = rf"{_ATEXT}(?:\.{_ATEXT})*"
_MSG_ID = re.compile(rf"<{_DOT_ATOM}@{_DOT_ATOM}>")
MAX_MSG_ID = 250
# An address as a header shows it, non-ASCII letters escaped (\u0430): look-alikes stay visible to a person,
# and nothing but address characters and escapes can appear.
_ESCAPED = r"(?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]|\\u[0-9a-f]{4}|\\U[0-9a-f]{8}|\\x[0-9a-f]{2})"
_ADDRESS = re.compile(rf"{_ESCAPED}{{1,64}}@{_ESCAPED}{{1,255}}")
_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/+-]{0,39}")


def digest(value: str) -> str:
    """A sender's text named, not shown: the first 12 hex digits of its SHA-256."""
    text = value.encode("utf-8", "surrogateescape")
    return f"[text withheld, SHA-256 {hashlib.sha256(text).hexdigest()[:12]}]"


def message_id(value: str | None) -> str:
    """A Message-ID as received, quoted, if it is one; else its digest."""
    if value is None:
        return "(none)"
    text = value.strip()
    if len(text) <= MAX_MSG_ID and text.isascii() and _MSG_ID.fullmatch(text) and "=?" not in text:
        return f'"{text}"'
    return digest(value)


def address(value: str | None) -> str:
    """An address as a header wrote it, non-ASCII escaped, quoted, if it has an address's shape; else a digest."""
    if value is None:
        return "(none)"
    escaped = value.strip().encode("ascii", "backslashreplace").decode("ascii")
    if len(escaped) <= 320 and _ADDRESS.fullmatch(escaped) and "=?" not in escaped:
        return f'"{escaped}"'
    return digest(value)


_CONTENT_TYPE = re.compile(r"[a-z0-9][a-z0-9.+-]{0,30}/[a-z0-9][a-z0-9.+-]{0,60}")


def content_type(value: str) -> str:
    """A MIME type as the parser read it (type/subtype, lower case), as it is; else a digest."""
    return value if _CONTENT_TYPE.fullmatch(value) else digest(value)


def token(value: str) -> str:
    """A short word a sender wrote (a field name, an Auto-Submitted keyword), quoted; else a digest."""
    text = value.strip()
    return f'"{text}"' if _TOKEN.fullmatch(text) and "=?" not in text else digest(value)
