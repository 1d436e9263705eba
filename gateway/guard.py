"""Checks that need no database and no gpg: what is too big to parse, headers that will not parse or that
contradict From, a machine's mail, stale or future-dated signatures. Each returns why, or None."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Iterator
from email import policy
from email.headerregistry import AddressHeader, HeaderRegistry
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.policy import EmailPolicy

from gateway import shown
from gateway.addresses import normalise_address
from gateway.config import LimitSettings

_CONTENT_TYPE = re.compile(rb"(?im)^content-type[ \t]*:")
_DELIMITER = re.compile(rb"(?m)^--")


_HEADER_END = re.compile(rb"\r?\n\r?\n")
# Python's parser ends a line at CRLF, CR or LF: so do the bounds, all made LF before fields are told apart,
# or a field behind a lone CR would pass unmeasured.
_LINE_END = re.compile(rb"\r\n?")
_FIELD_END = re.compile(rb"\n(?![ \t])")  # a line end that no continuation line follows (RFC 5322 2.2.3)
_FIELD_NAME = re.compile(rb"[!-9;-~]*:")  # RFC 5322 ftext, then the colon

# The fields Python's email package parses before a sender is authenticated, and the most bytes (folds
# included) one of them may take. Its structured parsers cost far more than linear time on some shapes (an
# obsolete local part of dots and atoms: 1.5 s at 10 kB of Content-Type, minutes at 100 kB of From), so
# these are measured on the raw bytes, before anything parses them, and a message over any bound is never
# parsed. A request's own are a small fraction of each bound.
_ADDRESS_FIELDS = {b"from": 1024, b"sender": 1024, b"reply-to": 1024, b"to": 2048, b"cc": 2048}
_ADDRESS_FIELDS_TOTAL = 3 * 1024  # all of them together: so many copies of a field cost no more than this
_OTHER_FIELDS = {
    b"auto-submitted": 1024,
    b"return-path": 1024,
    b"precedence": 1024,
    # Read by gateway.authresults in linear time, never by the email package; bounded all the same, as no
    # border writes more than a few hundred bytes.
    b"authentication-results": 16 * 1024,
}
PARSED_ID_UP_TO = 1024  # a longer Message-ID is kept as written, never parsed: it is a label, not a reason to refuse
_MIME_FIELD_BYTES = 1024  # each Content-* field, in the headers or in any part
_MIME_FIELDS_TOTAL = 8 * 1024  # a signed request's are a few hundred bytes
# Every field the checks parse is bounded (parsed_field_problem): all of them can be kept parsed, each parsed
# once however often it is read. A long field nobody bounded (Subject, say) is parsed on each read instead.
_CACHED_UP_TO = 4096  # characters
_CACHED_TEXT = 24 * 1024  # characters of header text kept parsed for one message: a tree is hundreds of times that
_REGISTRY = HeaderRegistry()


class _ReadPolicy(EmailPolicy):
    """The email package's default policy, with a message's bounded headers parsed once, not on every read.

    The parser reads Content-Type several times for each part, and the checks read From and the rest again:
    each read ran the full header parser. The parsed headers are the package's own objects, shared between
    reads of one message (nothing changes them), so what every check sees is the same as before. The cache
    belongs to one message (`read_policy()` for each) and is bounded, so no sender can make it hold memory.
    """

    _parsed: dict[tuple[str, str], str]
    _kept: list[int]  # characters of header text in _parsed

    def __init__(self) -> None:
        super().__init__(header_factory=_REGISTRY, message_factory=EmailMessage)
        object.__setattr__(self, "_parsed", {})  # policies are immutable once made
        object.__setattr__(self, "_kept", [0])

    def header_fetch_parse(self, name: str, value: str) -> str:
        if hasattr(value, "name") or len(value) > _CACHED_UP_TO:
            return super().header_fetch_parse(name, value)  # type: ignore[no-any-return]
        header = self._parsed.get((name, value))
        if header is None:
            header = super().header_fetch_parse(name, value)
            if self._kept[0] + len(value) <= _CACHED_TEXT:
                self._parsed[name, value] = header
                self._kept[0] += len(value)
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
    """Mail the parser must never see: over the size limit, with huge headers, too many MIME parts, or a header
    field it would parse over that field's bound (parsed_field_problem).

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
    return parsed_field_problem(raw)


def fields(head: bytes) -> Iterator[tuple[bytes, bytes]]:
    """Each field of a header block: its lower-cased name and the whole field, folds included, each line end LF."""
    for field in _FIELD_END.split(_LINE_END.sub(b"\n", head)):
        yield field.partition(b":")[0].rstrip(b" \t").lower(), field


def first_field(head: bytes, name: bytes) -> bytes:
    """The first field of that (lower-case) name, whole (name, folds, value; line ends LF), or nothing."""
    return next((field for each, field in fields(head) if each == name), b"")


def parsed_field_problem(raw: bytes) -> str | None:
    """A header field the parser would read that is over its bound: linear in the message, never parsed."""
    total = 0
    for name, field in fields(header_block(raw)):
        bound = _ADDRESS_FIELDS.get(name) or _OTHER_FIELDS.get(name)
        if bound is None:
            continue
        if len(field) > bound:
            return f"the {name.decode().title()} header is {len(field)} bytes, over the limit of {bound}: not parsed"
        if name in _ADDRESS_FIELDS:
            total += len(field)
    if total > _ADDRESS_FIELDS_TOTAL:
        return f"the address headers take {total} bytes, over the limit of {_ADDRESS_FIELDS_TOTAL}: not parsed"
    total = 0
    for size in _mime_field_sizes(raw):
        if size > _MIME_FIELD_BYTES:
            return f"a MIME header field is {size} bytes, over the limit of {_MIME_FIELD_BYTES}: not parsed"
        total += size
        if total > _MIME_FIELDS_TOTAL:
            return f"the MIME header fields take over {_MIME_FIELDS_TOTAL} bytes: not parsed"
    return None


def _mime_field_sizes(raw: bytes) -> Iterator[int]:
    """The size of each Content-* field at the start of any line, continuation lines included: the message's
    own and every part's, told apart from nothing else. Found with bytes.find, each byte looked at a few times."""
    text = _LINE_END.sub(b"\n", raw.lower())  # a line end counts one byte: the bounds are the parser's work
    start = 0 if text.startswith(b"content-") else _next_mime_field(text, 0)
    while start is not None:
        end = text.find(b"\n", start)
        while end >= 0 and text[end + 1 : end + 2] in (b" ", b"\t"):  # a continuation line: the same field
            end = text.find(b"\n", end + 1)
        end = len(text) if end < 0 else end
        if _FIELD_NAME.match(text, start + 8, end):
            yield end - start
        start = _next_mime_field(text, end)


def _next_mime_field(text: bytes, after: int) -> int | None:
    found = text.find(b"\ncontent-", after)
    return None if found < 0 else found + 1


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


MAX_LABEL_BYTES = 500  # an index entry must hold it: PostgreSQL's B-tree takes some 2,700 bytes at most


def message_id_label(raw: bytes, header_limit: int) -> str | None:
    """A message's Message-ID as it is kept to tell the same message again, read from no more of the header
    block than the limit; None when it has none, or one that will not parse (decide() records what is wrong).
    Only that field is parsed (the parser would read Content-Type too), and only when short: the parser is slow
    on long hostile ones, which are kept as written."""
    field = first_field(header_block(raw, header_limit), b"message-id")
    try:
        if len(field) > PARSED_ID_UP_TO:
            written = re.sub(rb"\r?\n(?=[ \t])", b"", field).partition(b":")[2].decode("utf-8", "replace")
            return _label(written)
        header = BytesHeaderParser(policy=policy.default).parsebytes(field).get("Message-ID")
    except Exception:  # a header that will not even parse is no label
        return None
    return _label(str(header)) if header else None


def _label(written: str) -> str:
    """A Message-ID as it is kept to tell the same message again: as written, or when long, by its digest,
    so that two long ones never share a truncated prefix, and none is too long for its index."""
    label = written.strip()  # made storable where every text is, on its way into the database (db.models)
    encoded = label.encode("utf-8", "surrogateescape")
    return label if len(encoded) <= MAX_LABEL_BYTES else f"sha256:{hashlib.sha256(encoded).hexdigest()}"


def unreadable_headers(message: EmailMessage) -> str | None:
    """Why the headers the gateway reads cannot even be parsed, if they cannot."""
    # Message-ID and References are read defensively where they are used: a request is not refused for them.
    # Authentication-Results is never given to the parser (gateway.authresults reads it as written).
    for name in ("From", "Sender", "Reply-To", "To", "Cc", "Auto-Submitted", "Return-Path", "Precedence",
                 "Content-Type"):  # fmt: skip
        try:
            for value in message.get_all(name) or []:
                str(value)
                getattr(value, "addresses", None)
        except Exception as exc:  # the parser's own bugs: IndexError, ValueError, ...
            return f"the {name} header cannot be parsed ({type(exc).__name__})"
    return None


def automatic_mail(message: EmailMessage) -> str | None:  # noqa: PLR0911 - one return per sign of a machine
    """Why a message is a machine's (RFC 3834), if it is: such mail is never answered."""
    auto = str(message.get("Auto-Submitted", "no")).split(";")[0].strip().lower()
    if auto != "no":
        return f"Auto-Submitted: {shown.token(auto)}"
    return_path = message.get("Return-Path")
    if return_path is not None and str(return_path).strip() in ("<>", ""):
        return "null return path"
    precedence = str(message.get("Precedence", "")).strip().lower()
    if precedence in ("bulk", "list", "junk"):
        return f"Precedence: {precedence}"
    if any(name.lower().startswith("list-") for name in message):
        return "mailing list traffic"
    if message.get_content_type() == "multipart/report":
        return "a delivery or disposition report"
    for name in ("From", "Sender"):
        for value in message.get_all(name) or []:
            mailbox = re.search(r"(?i)\b(mailer-daemon|postmaster)@", str(value))
            if mailbox:
                return f"{name} is {mailbox[1]}"
    return None
