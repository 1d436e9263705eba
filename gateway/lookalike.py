"""Addresses made to pass for registered ones: confusable characters (the UTS #39 skeleton), mixed scripts,
invisible characters, punycode, and one letter changed, added, dropped or swapped."""

from __future__ import annotations

import contextlib
import functools
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from email.message import Message
from importlib import resources

from gateway import shown

# What ends anything shaped like local@domain in a header's text (with white space), display name included.
_SEPARATORS = str.maketrans(dict.fromkeys("<>\"'(),;:[]", " "))
_MIN_DOMAIN_FOR_TYPOS = 8  # "a.gov.uk"-sized domains differ by one letter by chance


@functools.cache
def _prototypes() -> dict[str, str]:
    """Unicode's confusables (UTS #39), vendored in gateway/data: each character's prototype."""
    text = resources.files("gateway").joinpath("data/confusables.txt").read_text(encoding="utf-8")
    table: dict[str, str] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            source, prototype = line.split(";")
            table[chr(int(source, 16))] = "".join(chr(int(code, 16)) for code in prototype.split())
    return table


def skeleton(text: str) -> str:
    """UTS #39 skeleton, case-blind: two strings a reader cannot tell apart have the same one."""
    table = _prototypes()

    def once(value: str) -> str:
        nfd = unicodedata.normalize("NFD", value)
        return unicodedata.normalize("NFD", "".join(table.get(char, char) for char in nfd))

    return once(once(text.casefold()).casefold())


def invisible(text: str) -> list[str]:
    """Format characters (zero-width joiners, soft hyphens, bidi controls) and odd spaces hidden in a string."""
    return sorted({f"U+{ord(c):04X}" for c in text if unicodedata.category(c) in ("Cf", "Zs", "Mn") and c != " "})


def _script(char: str) -> str:
    name = unicodedata.name(char, "")
    for script in ("LATIN", "CYRILLIC", "GREEK", "ARMENIAN", "HEBREW", "ARABIC", "CHEROKEE", "FULLWIDTH"):
        if name.startswith(script):
            return script
    return "COMMON" if not char.isalpha() else name.split(" ", 1)[0]


def mixed_scripts(text: str) -> set[str]:
    return {_script(c) for c in text if c.isalpha()} - {"COMMON"}


def _unpunycode(domain: str) -> str:
    labels = []
    for label in domain.split("."):
        shown = label
        if label.lower().startswith("xn--"):
            with contextlib.suppress(UnicodeError, ValueError):
                shown = label[4:].encode("ascii").decode("punycode")
        labels.append(shown)
    return ".".join(labels)


def _one_edit_apart(a: str, b: str) -> bool:
    """One letter changed, added, dropped, or two neighbours swapped (Damerau), and not equal.

    Linear: whatever the edit, it can be taken at the first place the two differ.
    """
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    i = 0
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    if len(a) == len(b):
        swapped = i + 1 < len(a) and a[i] == b[i + 1] and a[i + 1] == b[i] and a[i + 2 :] == b[i + 2 :]
        return a[i + 1 :] == b[i + 1 :] or swapped
    short, long_ = sorted((a, b), key=len)
    return long_[i + 1 :] == short[i:]


@functools.lru_cache(maxsize=4096)
def _registered_skeleton(text: str) -> str:
    """The skeleton of a registered address or domain: the same few, for every message."""
    return skeleton(text)


@dataclass(frozen=True)
class Claim:
    """A header that names, or imitates, a registered address."""

    seen: str  # what the header says, as text
    registered: str  # the registered address it names or imitates
    how: str  # exact, confusable characters, invisible characters, punycode, mixed scripts, one letter different

    def describe(self) -> str:
        seen = shown.address(self.seen)  # the sender's text: only as an address, escaped, or as a digest
        if self.how == "exact":
            return f"{seen} is the registered address {self.registered}"
        return f"{seen} imitates the registered address {self.registered} ({self.how})"


def decoded(header_text: str) -> str:
    """A header's text with raw 8-bit bytes (kept as surrogates by the parser) read as UTF-8."""
    return header_text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _compare(candidate: str, registered: Iterable[str]) -> Claim | None:
    seen = candidate.strip(".").rstrip(">")
    local, _, domain = seen.rpartition("@")
    unicode_domain = _unpunycode(domain)
    shown = f"{local}@{unicode_domain}"
    hidden = invisible(shown)
    visible = "".join(c for c in shown if f"U+{ord(c):04X}" not in hidden)
    seen_skeleton = skeleton(visible)
    domain_skeleton = skeleton(visible.rpartition("@")[2])
    for address in registered:
        reg_domain = address.rpartition("@")[2]
        if seen.lower() == address:
            return Claim(seen, address, "exact")
        if domain.lower().startswith(f"{reg_domain}."):
            return Claim(seen, address, f"the registered domain {reg_domain} inside another, {domain}")
        same_domain = domain.lower() == reg_domain  # a colleague's unregistered address is no look-alike
        if seen_skeleton == _registered_skeleton(address) or (
            not same_domain and domain_skeleton == _registered_skeleton(reg_domain)
        ):
            ways = []
            if hidden:
                ways.append(f"invisible characters {', '.join(hidden)}")
            if unicode_domain != domain:
                ways.append(f"punycode {domain} is {unicode_domain}")
            if len(mixed_scripts(visible)) > 1:
                ways.append(f"mixed scripts {', '.join(sorted(mixed_scripts(visible)))}")
            if not seen.isascii() or visible != shown or not ways:
                ways.append("confusable characters (UTS #39 skeleton)")
            return Claim(seen, address, "; ".join(dict.fromkeys(ways)))
        lowered = seen.lower()
        if _one_edit_apart(lowered, address) or (
            len(reg_domain) >= _MIN_DOMAIN_FOR_TYPOS and _one_edit_apart(domain.lower(), reg_domain)
        ):
            return Claim(seen, address, "one letter different")
    return None


def address_like(text: str) -> list[str]:
    """Every run of text between separators that holds an "@" with something either side: one pass over it.

    A regular expression for the same (non-separators, "@", non-separators) retried from every start in a long
    run without an "@" and cost quadratic time on an obsolete local part made of dots and atoms.
    """
    return list(dict.fromkeys(word for word in text.translate(_SEPARATORS).split() if "@" in word[1:-1]))


def claims(message: Message, registered: Iterable[str], *, sender: str | None) -> list[Claim]:
    """Every registered address that the From and Sender headers name or imitate, other than `sender` itself
    (the address the message really comes from, when it is registered)."""
    addresses = sorted(registered)
    found: dict[str, Claim] = {}
    for name in ("From", "Sender"):
        for header in message.get_all(name) or []:
            text = decoded(str(header))
            for candidate in address_like(text):
                if sender is not None and candidate.lower() == sender and sender in addresses:
                    continue  # the registered address it really comes from is no claim
                claim = _compare(candidate, addresses)
                if claim is not None and claim.registered not in found:
                    found[claim.registered] = claim
    return list(found.values())
