"""Reads what the gateway wrote as a strict mail client and a spreadsheet would: the bytes, the fields, the cells."""

from __future__ import annotations

import csv
import io
import re
import unicodedata
from email import message_from_bytes, policy
from email.message import EmailMessage

from gateway.compose import MAX_FILE_NAME
from tests.support.gateway_cli import Gateway
from tests.support.keys import AuthorityKeys
from tests.support.live import as_shown, decrypted

LINE_LIMIT = 998  # RFC 5322 2.1.1, without the CRLF
# The protected header fields (RFC 9788): the real ones a reader sees, and HP-Outer records of the outer ones.
INNER_FIELDS = {
    "From", "To", "Subject", "Date", "Message-ID", "In-Reply-To", "References", "HP-Outer",
    "MIME-Version", "Content-Type", "Content-Transfer-Encoding",
}  # fmt: skip
PART_FIELDS = {"Content-Type", "Content-Transfer-Encoding", "Content-Disposition", "MIME-Version"}
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]*")


def wire_problems(wire: bytes) -> list[str]:
    """What is wrong with a message as bytes: every line CRLF-ended, at most 998 octets, 7-bit, no NUL."""
    problems = []
    if b"\x00" in wire:
        problems.append("a NUL byte")
    if not wire.isascii():
        problems.append("8-bit bytes (non-ASCII must be encoded)")
    if re.search(rb"\r(?!\n)|(?<!\r)\n", wire):
        problems.append("a bare CR or LF")
    longest = max(len(line) for line in wire.split(b"\r\n"))
    if longest > LINE_LIMIT:
        problems.append(f"a line of {longest} octets")
    return problems


def fields(wire: bytes) -> list[tuple[str, bytes]]:
    """The top-level header fields as they are on the wire (not as a parser, which could hide things, reads them):
    each name, and its value with the folding left in."""
    block = wire.split(b"\r\n\r\n", 1)[0]
    found: list[tuple[str, bytes]] = []
    for line in block.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):  # a folded continuation of the field before
            assert found, f"a header block starting with a continuation: {line[:100]!r}"
            found[-1] = (found[-1][0], found[-1][1] + b"\r\n" + line)
            continue
        name, colon, value = line.partition(b":")
        assert colon, f"not a header field: {line[:100]!r}"
        assert re.fullmatch(rb"[!-9;-~]+", name), f"not a field name: {name[:100]!r}"
        found.append((name.decode(), value))
    return found


def field_names(wire: bytes) -> list[str]:
    return [name for name, _ in fields(wire)]


def parse(wire: bytes) -> EmailMessage:
    message = message_from_bytes(wire, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def well_formed(message: EmailMessage) -> EmailMessage:
    """A client's parser finds nothing wrong with the structure the gateway wrote (compose writes it by hand)."""
    for part in message.walk():
        assert part.defects == [], (part.get_content_type(), part.defects)
    return message


def check_inner(inner_wire: bytes) -> EmailMessage:
    """The decrypted part: protected headers only, each part with its own few fields, file names plain."""
    assert wire_problems(inner_wire) == []
    assert set(field_names(inner_wire)) <= INNER_FIELDS
    inner = well_formed(parse(inner_wire))
    for part in inner.walk():
        if part is not inner:
            assert set(part.keys()) <= PART_FIELDS, part.keys()
    for attachment in inner.iter_attachments():
        check_file_name(str(attachment.get_filename()))
        raw_disposition = str(attachment.get("Content-Disposition"))
        assert "\r" not in raw_disposition
        assert "\n" not in raw_disposition
    return inner


def check_file_name(name: str) -> None:
    assert SAFE_NAME.fullmatch(name), name
    assert ".." not in name
    assert len(name) <= MAX_FILE_NAME


def decrypt(gateway: Gateway, keys: AuthorityKeys, wire: bytes) -> EmailMessage:
    """The inner part checked as the gateway sent it, then returned as the recipient's client shows it."""
    data, _ = decrypted(gateway, keys, wire)
    return as_shown(check_inner(data))


# What a spreadsheet looks at before it decides a cell is a formula: Excel, LibreOffice and Google Sheets run
# a cell that starts with = + - @ (or a tab, CR or LF before one); some trim spaces, invisible characters and
# quotes first, and some fold the full-width and small forms to ASCII. A leading apostrophe makes a cell text.
FORMULA_SIGNS = frozenset("=+-@\uff1d\uff0b\uff0d\uff20\ufe66\ufe62\ufe63\ufe6b")
NEVER_FIRST = frozenset("=+-@\t\r\n\uff1d\uff0b\uff0d\uff20")
TRIMMED_QUOTES = frozenset("\"'\uff02\uff07")


def evaluated(cell: str) -> bool:
    """Whether a spreadsheet could run this cell as a formula."""
    if not cell or cell[0] == "'":
        return False
    if cell[0] in NEVER_FIRST:
        return True
    for ch in cell:
        if ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf", "Zs", "Zl", "Zp") or ch in TRIMMED_QUOTES:
            continue
        return ch in FORMULA_SIGNS
    return False


def read_csv(content: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(content.decode("utf-8"), newline="")))
