"""The signed part of a multipart/signed message (PGP/MIME or S/MIME), cut from the raw bytes exactly as
received, never re-serialised."""

from __future__ import annotations

import re

_BARE_CR = re.compile(rb"\r(?!\n)")
BARE_CR = "the signed message holds a carriage return that ends no line: it cannot be verified unambiguously"


def has_bare_cr(raw: bytes) -> bool:
    """A CR that ends no line is a line end to some readers and text to others: whatever is verified could
    then differ from what is read. RFC 5322 allows none; a signed message with one is refused."""
    return _BARE_CR.search(raw) is not None


def wire(raw: bytes) -> bytes:
    """The bytes with every line ending in CRLF."""
    # Python's parser ends a line at CRLF, LF or a lone CR; made CRLF here, both see the very same lines.
    return re.sub(rb"\r\n|\r|\n", b"\r\n", raw)


def first_part_bytes(raw: bytes, boundary: str) -> bytes | None:
    """The bytes between the body's first two delimiter lines.

    A delimiter line is exactly --boundary (--boundary-- for the last), then optional spaces or tabs (RFC 2046
    5.1.1, and what Python's parser matches): a line that merely starts with it is text, not a delimiter.
    """
    crlf = wire(raw)
    head_end = crlf.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    escaped = re.escape(boundary.encode("ascii", "replace"))
    delimiter = re.compile(rb"^--" + escaped + rb"(--)?[ \t]*\r?$", re.MULTILINE)
    first = delimiter.search(crlf, head_end + 2)
    if first is None or first[1]:
        return None
    start = first.end() + 1  # past the line end
    end = delimiter.search(crlf, start)
    # The CRLF before a delimiter belongs to the delimiter, not to the part (RFC 2046 5.1.1).
    return crlf[start : max(start, end.start() - 2)] if end else None
