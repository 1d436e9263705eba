"""Register rows to the marked CSV files of a disclosure: Schedule 5 data only, every cell safe to open."""

from __future__ import annotations

import csv
import hashlib
import io
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.admin.register import HOME_COLUMNS

# What a disclosure holds about each home: the register's Schedule 5 columns, without the status and the
# provider type, which the gateway keeps to select and check rows but never discloses.
HOME_EXTRACT_COLUMNS: tuple[str, ...] = tuple(c for c in HOME_COLUMNS if c not in ("status", "provider_type"))
ENFORCEMENT_EXTRACT_COLUMNS: tuple[str, ...] = ("urn", "date", "nature")
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\n")
_FORMULA_SIGNS = frozenset("=+-@")
# What spreadsheets may skip before they look for a formula sign: spaces of any kind, invisible characters, quotes.
_SKIPPED_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})
_QUOTES = frozenset("\"'")


class HomeLike(Protocol):
    """A register row as the extract reads it (the ORM model, or a plain value in tests)."""

    @property
    def urn(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def address(self) -> str: ...

    @property
    def postcode(self) -> str: ...

    @property
    def telephone(self) -> str | None: ...

    @property
    def local_authority(self) -> str: ...

    @property
    def police_force_area(self) -> str: ...

    @property
    def provider_name(self) -> str: ...

    @property
    def provider_address(self) -> str: ...

    @property
    def responsible_individual_name(self) -> str | None: ...

    @property
    def responsible_individual_address(self) -> str | None: ...

    @property
    def manager_name(self) -> str | None: ...

    @property
    def manager_address(self) -> str | None: ...


class EnforcementLike(Protocol):
    @property
    def urn(self) -> str: ...

    @property
    def nature(self) -> str: ...

    @property
    def date(self) -> object: ...


@dataclass(frozen=True)
class ExtractFile:
    name: str
    content: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()


@dataclass(frozen=True)
class Extract:
    homes: ExtractFile
    enforcement: ExtractFile
    home_count: int
    enforcement_count: int
    urns: tuple[str, ...]

    @property
    def files(self) -> tuple[ExtractFile, ExtractFile]:
        return (self.homes, self.enforcement)

    @property
    def sha256(self) -> str:
        """One digest for the whole disclosure, for the audit trail: both files, in order, length-prefixed."""
        digest = hashlib.sha256()
        for file in self.files:
            digest.update(f"{file.name}\n{len(file.content)}\n".encode())
            digest.update(file.content)
        return digest.hexdigest()


def _first_sign(value: str) -> str:
    """The first character a spreadsheet could read as the start of a formula once it has trimmed spaces,
    invisible characters and quotes, in its plain form (NFKC): full-width and small forms of = + - @ count too."""
    for ch in value:
        plain = unicodedata.normalize("NFKC", ch)
        if ch.isspace() or unicodedata.category(ch) in _SKIPPED_CATEGORIES or plain in _QUOTES:
            continue
        return plain[:1]
    return ""


def defuse(value: str) -> str:
    """A spreadsheet runs a cell that starts like a formula; a leading quote makes it plain text (+44 too).

    Also when the sign hides behind spaces, invisible characters or quotes (some spreadsheets trim them before
    they look), or comes in a full-width form (some fold those to ASCII).
    """
    first = value[:1]
    if first.isascii() and first.isalnum():  # most cells: an ASCII letter or digit first is never a formula
        return value
    risky = value.startswith(_FORMULA_STARTS) or _first_sign(value) in _FORMULA_SIGNS
    return "'" + value if risky else value


def _csv(marking: str, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    # The marking is the first line of every file, so that it travels with any copy of the data.
    writer.writerow([marking])
    writer.writerow(columns)
    for row in rows:
        writer.writerow([defuse("" if value is None else str(value)) for value in row])
    return buffer.getvalue().encode("utf-8")


def build_extract(
    homes: Sequence[HomeLike], actions: Sequence[EnforcementLike], *, marking: str, reference: str
) -> Extract:
    """The homes file and the enforcement file of one disclosure; the marking is in each name and first line."""
    urns = tuple(home.urn for home in homes)
    disclosed = set(urns)
    # Only actions about homes in this disclosure: a caller passing more must not widen what is sent.
    own_actions = [action for action in actions if action.urn in disclosed]
    home_rows = ([getattr(home, column) for column in HOME_EXTRACT_COLUMNS] for home in homes)
    action_rows = ([action.urn, str(action.date), action.nature] for action in own_actions)
    return Extract(
        homes=ExtractFile(f"{marking}-{reference}-homes.csv", _csv(marking, HOME_EXTRACT_COLUMNS, home_rows)),
        enforcement=ExtractFile(
            f"{marking}-{reference}-enforcement.csv", _csv(marking, ENFORCEMENT_EXTRACT_COLUMNS, action_rows)
        ),
        home_count=len(homes),
        enforcement_count=len(own_actions),
        urns=urns,
    )
