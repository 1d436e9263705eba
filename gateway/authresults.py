"""The Authentication-Results header (RFC 8601) as written, read by a linear-time tokenizer: no RFC 2047 decoding."""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.message import Message

# Each pattern has one way to match, so none backtracks: together they read every character once.
_WORD = re.compile(r'[^\s();=@"\\]+')  # outside quoted strings and comments; "/" and "." belong to a word
_SPACE = re.compile(r"\s+")
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"', re.DOTALL)
_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)
_IN_COMMENT = re.compile(r"[()\\]")  # what changes a comment's depth, or escapes the next character


class Unreadable(ValueError):
    """The header does not follow RFC 8601: nothing in it can be relied on."""


@dataclass(frozen=True)
class Token:
    kind: str  # "word", "quoted" or one of the specials ; = @
    text: str  # a word's text, a quoted string's content (escapes removed), or the special itself


def tokens(value: str) -> list[Token]:
    """Words, quoted strings and ; = @, with comments (nested, RFC 5322 3.2.2) and white space dropped.

    One pass, never backtracking: the cost is linear in the header's size, however deep or long what is in it.
    """
    found: list[Token] = []
    i, end = 0, len(value)
    while i < end:
        char = value[i]
        if char == "(":
            i = _after_comment(value, i)
        elif char == '"':
            quoted = _QUOTED.match(value, i)
            if quoted is None:
                raise Unreadable("a quoted string that is never closed")
            found.append(Token("quoted", _QUOTED_PAIR.sub(r"\1", quoted[1])))
            i = quoted.end()
        elif char in ";=@":
            found.append(Token(char, char))
            i += 1
        elif space := _SPACE.match(value, i):
            i = space.end()
        elif word := _WORD.match(value, i):
            found.append(Token("word", word[0]))
            i = word.end()
        else:
            raise Unreadable(f"a stray {char!r}")
    return found


def _after_comment(value: str, i: int) -> int:
    depth = 0
    while (mark := _IN_COMMENT.search(value, i)) is not None:
        i = mark.end()
        if mark[0] == "\\":
            i += 1  # a quoted-pair: the next character is text, even a parenthesis
        elif mark[0] == "(":
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                return i
    raise Unreadable("a comment that is never closed")


@dataclass(frozen=True)
class Result:
    """One resinfo: `method=result`, then its properties (`header.from=...`) and other name=value pairs."""

    method: str  # lower case, without its version ("dmarc" for "dmarc/1")
    result: str  # lower case
    properties: tuple[tuple[str, str], ...]  # (ptype.property in lower case, value as written)
    readable: bool = True  # False: only the method could be read, the rest does not follow the grammar


@dataclass(frozen=True)
class AuthResults:
    authserv_id: str | None  # None when the header has none (as Microsoft 365 writes it)
    results: tuple[Result, ...]


def parse(value: str) -> AuthResults:
    """One header's unfolded value. Raises Unreadable when its authserv-id, a comment or a quoted string is broken.

    A resinfo that does not follow the grammar is kept as unreadable rather than failing the whole header: the
    tokenizer already tells a real ";" from one inside a quoted string or comment, so one odd resinfo (an
    extension some border writes) cannot swallow or invent another.
    """
    segments: list[list[Token]] = [[]]
    for token in tokens(value):
        if token.kind == ";":
            segments.append([])
        else:
            segments[-1].append(token)
    head, rest = segments[0], segments[1:]
    if any(token.kind == "=" for token in head):
        return AuthResults(None, tuple(_result(segment) for segment in segments))  # no authserv-id at all
    if not head or head[0].kind not in ("word", "quoted"):
        raise Unreadable("no authserv-id")
    if len(head) > 2 or (len(head) == 2 and not (head[1].kind == "word" and head[1].text.isdigit())):
        raise Unreadable("more than an authserv-id and a version before the first ';'")
    if len(rest) == 1 and [t.text.lower() for t in rest[0]] == ["none"]:
        return AuthResults(head[0].text, ())  # no-result
    return AuthResults(head[0].text, tuple(_result(segment) for segment in rest))


def _pvalue(segment: list[Token], i: int) -> tuple[str, int] | None:
    """A pvalue (RFC 8601 2.2): a value, or [[local-part] "@"] domain-name; its text and where it ends."""
    kinds = [token.kind for token in segment[i : i + 3]]
    if kinds[:3] in (["word", "@", "word"], ["quoted", "@", "word"]):
        return f"{segment[i].text}@{segment[i + 2].text}", i + 3
    if kinds[:2] == ["@", "word"]:
        return f"@{segment[i + 1].text}", i + 2
    if kinds[:1] in (["word"], ["quoted"]):
        return segment[i].text, i + 1
    return None


def _result(segment: list[Token]) -> Result:
    method = segment[0].text.partition("/")[0].lower() if segment and segment[0].kind == "word" else ""
    unreadable = Result(method, "", (), readable=False)
    if len(segment) < 3 or [t.kind for t in segment[:3]] != ["word", "=", "word"]:
        return unreadable
    properties: list[tuple[str, str]] = []
    i = 3
    while i < len(segment):
        if i + 1 >= len(segment) or segment[i].kind != "word" or segment[i + 1].kind != "=":
            return unreadable
        read = _pvalue(segment, i + 2)
        if read is None:
            return unreadable
        text, after = read
        properties.append((segment[i].text.lower(), text))
        i = after
    return Result(method, segment[2].text.lower(), tuple(properties))


def raw_values(message: Message, name: str = "Authentication-Results") -> list[str]:
    """Every such header's value exactly as received, unfolded, never RFC 2047 decoded; topmost first."""
    wanted = name.lower()
    return [
        str(value).replace("\r\n", "").replace("\r", "").replace("\n", "")
        for key, value in message.raw_items()
        if key.lower() == wanted
    ]
