"""Checks that need no database and no gpg: what is too big to parse, headers that contradict From, stale
or future-dated signatures. Each returns why a message is suspect, or None."""

from __future__ import annotations

import datetime as dt
import re
from email.headerregistry import AddressHeader, HeaderRegistry
from email.message import EmailMessage
from email.policy import EmailPolicy

from gateway import shown
from gateway.addresses import normalise_address
from gateway.config import LimitSettings

_CONTENT_TYPE = re.compile(rb"(?im)^content-type[ \t]*:")
_DELIMITER = re.compile(rb"(?m)^--")


_HEADER_END = re.compile(rb"\r?\n\r?\n")
_CACHED_UP_TO = 200  # characters: the short headers read again and again, never a long hostile one
_CACHED_AT_MOST = 16  # parsed headers kept for one message: a parse tree can be hundreds of times its text
_REGISTRY = HeaderRegistry()


class _ReadPolicy(EmailPolicy):
    """The email package's default policy, with a message's short headers parsed once, not on every read.

    The parser reads Content-Type several times for each part, and the checks read From and the rest again:
    each read ran the full header parser. The parsed headers are the package's own objects, shared between
    reads of one message (nothing changes them), so what every check sees is the same as before. The cache
    belongs to one message (`read_policy()` for each) and is bounded, so no sender can make it hold memory.
    """

    _parsed: dict[tuple[str, str], str]

    def __init__(self) -> None:
        super().__init__(header_factory=_REGISTRY, message_factory=EmailMessage)
        object.__setattr__(self, "_parsed", {})  # policies are immutable once made

    def header_fetch_parse(self, name: str, value: str) -> str:
        if hasattr(value, "name") or len(value) > _CACHED_UP_TO:
            return super().header_fetch_parse(name, value)  # type: ignore[no-any-return]
        header = self._parsed.get((name, value))
        if header is None:
            header = super().header_fetch_parse(name, value)
            if len(self._parsed) < _CACHED_AT_MOST:
                self._parsed[name, value] = header
        return header


def read_policy() -> EmailPolicy:
    """The policy to parse one received message with: policy.default, each short header parsed once."""
    return _ReadPolicy()


def header_block(raw: bytes, limit: int | None = None) -> bytes:
    """The bytes before the first empty line: all of them when there is none, or no more than `limit`."""
    end = _HEADER_END.search(raw, 0, len(raw) if limit is None else limit + 4)
    if end is not None:
        return raw[: end.start()]
    return raw if limit is None else raw[:limit]


def too_big(raw: bytes, limits: LimitSettings) -> str | None:
    """Mail the parser must never see: over the size limit, with huge headers, or with too many MIME parts.

    Counted on the bytes, before parsing, so a message of a million parts or nested thousands deep costs a
    regular-expression scan, not the parser's time and memory.
    """
    if len(raw) > limits.max_message_bytes:
        return f"the message is over the size limit of {limits.max_message_bytes} bytes: not parsed"
    header_bytes = len(header_block(raw))
    if header_bytes > limits.max_header_bytes:
        return f"the headers are {header_bytes} bytes, over the limit of {limits.max_header_bytes}: not parsed"
    # A delimiter line starts every part; armoured OpenPGP data adds two "-----" lines per block. Counted
    # without building lists, and no further than the limit needs.
    parts = _count(_CONTENT_TYPE, raw, limits.max_mime_parts + 1)
    delimiters = _count(_DELIMITER, raw, 2 * limits.max_mime_parts + 11)
    if parts > limits.max_mime_parts or delimiters > 2 * limits.max_mime_parts + 10:
        return f"the message has more than {limits.max_mime_parts} MIME parts: not parsed"
    lines = raw.count(b"\n")
    if lines > limits.max_message_bytes // 40:  # the parser's cost is per line: a million short ones is an attack
        return f"the message has {lines} lines, more than {limits.max_message_bytes // 40}: not parsed"
    return None


def _count(pattern: re.Pattern[bytes], raw: bytes, enough: int) -> int:
    found = 0
    for _ in pattern.finditer(raw):
        found += 1
        if found >= enough:
            break
    return found


def sender_header_problem(message: EmailMessage, sender: str) -> str | None:
    """A Sender header naming anyone but the From address says someone else sent it (RFC 5322 3.6.2)."""
    headers = message.get_all("Sender") or []
    if not headers:
        return None
    if len(headers) > 1:
        return f"the message has {len(headers)} Sender headers"
    header = headers[0]
    if not isinstance(header, AddressHeader) or len(header.addresses) != 1:
        return "the Sender header is not one address"
    try:
        address = normalise_address(header.addresses[0].addr_spec)
    except ValueError:
        return f"the Sender header {shown.address(header.addresses[0].addr_spec)} is not an acceptable address"
    if address != sender:
        return f"the Sender header ({address}) differs from From ({sender})"
    return None


def signature_age_problem(signed_at: dt.datetime | None, received: dt.datetime, limits: LimitSettings) -> str | None:
    """A signed request must be recent: an old one is a replay, one dated in the future a forgery."""
    if signed_at is None:
        return "the signature carries no date"
    oldest = received - dt.timedelta(days=limits.signature_max_age_days)
    if signed_at < oldest:
        return (
            f"the signature was made on {signed_at:%Y-%m-%d %H:%M} UTC, more than "
            f"{limits.signature_max_age_days} days before the message arrived: a replay"
        )
    if signed_at > received + dt.timedelta(minutes=limits.signature_future_minutes):
        return f"the signature is dated {signed_at:%Y-%m-%d %H:%M} UTC, in the future"
    return None
