"""A request email's body, in whatever charset and encoding it came, to a typed Request or a precise complaint."""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.message import EmailMessage, Message
from html.parser import HTMLParser

from gateway import shown

REQUEST_KINDS: tuple[str, ...] = ("disclosure", "renewal", "cancel")
FREQUENCIES: tuple[str, ...] = ("once", "monthly")
FIELDS: tuple[str, ...] = ("request", "frequency", "area", "purpose")
MAX_VALUE = 1000
MAX_FIELD_LINES = 20  # more lines than this at the top of a body are not a request, whatever they look like

# "Name: value" with a name of letters, spaces and hyphens; anything else ends the fields.
_FIELD = re.compile(r"([A-Za-z][A-Za-z -]{0,40}?)[ \t]*:[ \t]*(.*)")

FORMAT_HELP = """\
Request: disclosure            (disclosure, renewal or cancel)
Frequency: once                (once or monthly; once if left out)
Area: West Mercia              (optional; see below)
Purpose: Safeguarding children accommodated in children's homes in our area.   (required)"""


@dataclass(frozen=True)
class Request:
    kind: str
    frequency: str
    area: str | None  # as written; scope.py decides what it means for the authority asking
    purpose: str


@dataclass(frozen=True)
class ParsedRequest:
    """Either a request, or every problem found with it (never both)."""

    request: Request | None
    problems: tuple[str, ...]
    area: str | None = None  # as written even when other fields are wrong, so its problems can be named too


class _TextFromHtml(HTMLParser):
    """Visible text of an HTML body, one line per block; scripts and styles are dropped, not read."""

    _BLOCKS = frozenset({"br", "p", "div", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "blockquote"})
    _HIDDEN = frozenset({"script", "style", "head", "title", "template"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._hidden_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._HIDDEN:
            self._hidden_depth += 1
        elif tag in self._BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._HIDDEN:
            self._hidden_depth = max(0, self._hidden_depth - 1)
        elif tag in self._BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._hidden_depth:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    parser = _TextFromHtml()
    parser.feed(html)
    parser.close()
    # Each block is a line; empty ones are dropped, since in HTML spacing between paragraphs is not a blank line
    # that a writer meant as the end of the fields.
    lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
    return "\n".join(line for line in lines if line)


def _decoded(part: Message) -> str:
    """A text part's content: the declared charset and transfer encoding undone, never an exception."""
    payload = part.get_payload(decode=True)
    raw = payload if isinstance(payload, bytes) else b""
    charset = part.get_content_charset() or "us-ascii"
    try:
        return raw.decode(charset)
    except (LookupError, UnicodeDecodeError):
        # An unknown or lying charset: UTF-8 if it is, else Windows-1252, which maps every byte mail clients send.
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("cp1252", errors="replace")


def body_text(message: EmailMessage | Message) -> str:
    """The text a person wrote: the first text/plain part that is not an attachment, else the HTML as text."""
    html: str | None = None
    for part in message.walk():
        if part.is_multipart() or part.get_content_disposition() == "attachment":
            continue
        content_type = part.get_content_type()
        if content_type == "text/plain":
            text = _normalise(_decoded(part))
            if str(part.get_param("format", "")).lower() != "flowed":
                return text
            return unflowed(text, delsp=str(part.get_param("delsp", "")).lower() == "yes")
        if content_type == "text/html" and html is None:
            html = html_to_text(_decoded(part))
    return _normalise(html or "")


def unflowed(text: str, *, delsp: bool = False) -> str:
    """format=flowed text (RFC 3676) as its writer typed it, and as the clients that wrote it show it.

    Thunderbird and Apple Mail break every line longer than about 72 characters after a space, which they keep at
    the end of the line (a soft break): read as written, a long Purpose would end at its first break, and a
    second line that happened to hold a colon would be taken for a field. So each run of lines joined by soft
    breaks, at one quote depth, is one line again, with the space-stuffing undone (4.4) and, with DelSp=yes,
    the soft break's own space removed (4.2); the signature separator "-- " is never a soft break (4.3).
    """
    lines: list[str] = []
    joined: list[str] = []  # the pieces of the line being joined (a list: a long paragraph is not quadratic)
    joined_depth = 0
    for line in text.split("\n"):
        depth = len(line) - len(line.lstrip(">"))
        content = line[depth:]
        content = content.removeprefix(" ")  # space-stuffing, or the space after the quote marks
        if joined and depth != joined_depth:  # lines of different quote depths are never joined (4.5)
            lines.append("".join(joined))
            joined = []
        if not joined:
            joined, joined_depth = [">" * depth + " " if depth else ""], depth
        soft = content.endswith(" ") and content != "-- "
        joined.append(content[:-1] if soft and delsp else content)
        if not soft:
            lines.append("".join(joined))
            joined = []
    if joined:
        lines.append("".join(joined))
    return "\n".join(lines)


def _normalise(text: str) -> str:
    # Line ends of any kind, a byte-order mark, and the non-breaking spaces some clients put after a colon.
    return text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n").replace("\u00a0", " ")


def parse_request(text: str) -> ParsedRequest:
    """The fields at the top of a body; the first line that is not a field ends them."""
    lines = text.split("\n")
    first = next((i for i, line in enumerate(lines) if line.strip()), len(lines))  # blank lines before: skipped
    lines = lines[first:]  # one slice: popping from the front, line by line, was quadratic in a body of blanks
    values: dict[str, str] = {}
    problems: list[str] = []
    for line in lines[:MAX_FIELD_LINES]:
        match = _FIELD.fullmatch(line.strip())
        if match is None:
            break
        name, value = " ".join(match[1].split()).lower(), match[2].strip()
        if name not in FIELDS:
            problems.append(f"unknown field {shown.token(match[1])} (the fields are Request, Frequency, Area, Purpose)")
        elif name in values:
            problems.append(f"the {name.capitalize()} field is given twice")
        elif len(value) > MAX_VALUE:
            problems.append(f"the {name.capitalize()} field is longer than {MAX_VALUE} characters")
        else:
            values[name] = value
    if not values and not problems:
        return ParsedRequest(None, ("the message does not start with the request fields (Request: ..., Purpose: ...)",))
    kind = _choice(values, "request", REQUEST_KINDS, None, problems)
    frequency = _choice(values, "frequency", FREQUENCIES, "once", problems)
    purpose = values.get("purpose", "")
    if not purpose:
        problems.append("the Purpose field is missing or empty: say why the data is needed")
    area = values.get("area") or None
    if problems or kind is None or frequency is None:
        return ParsedRequest(None, tuple(problems), area)
    return ParsedRequest(Request(kind, frequency, area, purpose), ())


def _choice(
    values: dict[str, str], name: str, allowed: tuple[str, ...], default: str | None, problems: list[str]
) -> str | None:
    value = values.get(name, "").lower()
    if not value:
        if default is None:
            problems.append(f"the {name.capitalize()} field is missing: it is one of {', '.join(allowed)}")
        return default
    if value not in allowed:
        problems.append(
            f"{shown.token(values[name])} is not a valid {name.capitalize()}: it is one of {', '.join(allowed)}"
        )
        return None
    return value
