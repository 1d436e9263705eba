"""The register of children's homes: CSV in, validated rows, one all-or-nothing import.

Kept as one module of about 530 lines: the columns, each cell's check and the import that stores them are one
contract with HMCI's export, read and changed together.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import re
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway import audit
from gateway.admin.reference import LocalAuthority, find_local_authority, find_police_force_area
from gateway.db.engine import Database
from gateway.db.models import EnforcementAction, Home, RegisterImport
from gateway.errors import GatewayError

# Schedule 5 paragraphs 1, 2, 3 and 10 of the Registration Regulations 2010, and nothing else:
# any other column in an import is refused so that no other data can slip into the register.
HOME_COLUMNS: tuple[str, ...] = (
    "urn",
    "name",
    "address",
    "postcode",
    "telephone",
    "local_authority",
    "police_force_area",
    "status",
    "provider_name",
    "provider_address",
    "provider_type",
    "responsible_individual_name",
    "responsible_individual_address",
    "manager_name",
    "manager_address",
)
ENFORCEMENT_COLUMNS: tuple[str, ...] = ("urn", "date", "nature")
HOME_STATUSES: tuple[str, ...] = ("registered", "suspended", "closed")
PROVIDER_TYPES: tuple[str, ...] = ("individual", "organisation")

OPTIONAL_HOME_COLUMNS = frozenset(
    {
        "telephone",
        "responsible_individual_name",
        "responsible_individual_address",
        "manager_name",
        "manager_address",
    }
)
MAX_CELL = 500
# Control, format (zero-width and direction marks) and line and paragraph separators.
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})
MAX_TELEPHONE = 40  # the column's size
_POSTCODE = re.compile(r"([A-Z]{1,2}[0-9][A-Z0-9]?) ?([0-9][A-Z]{2})")
_URN = re.compile(r"[A-Z0-9]{1,20}")
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_TELEPHONE = re.compile(r"\+?[0-9 ()-]+")
_INSERT_CHUNK = 1000

_CsvReader = Any  # csv.reader's type is private to typeshed (_csv.Reader)

# (stage, done, total): the CLI draws a progress bar from it; everything else passes a no-op.
Progress = Callable[[str, int, int], None]


def no_progress(_stage: str, _done: int, _total: int) -> None:
    return None


@dataclass(frozen=True)
class Problem:
    file: str
    line: int | None
    column: str | None
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.column}: {self.message}" if self.column else f"{where}: {self.message}"


class RegisterRefused(GatewayError):
    """The files were refused whole; `problems` lists every one found."""

    exit_code = 65  # EX_DATAERR

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        count = len(self.problems)
        super().__init__(f"register refused, nothing imported: {count} problem{'s' if count != 1 else ''} found")


@dataclass(frozen=True)
class HomeRow:
    urn: str
    name: str
    address: str
    postcode: str
    telephone: str | None
    local_authority: str
    police_force_area: str
    status: str
    provider_name: str
    provider_address: str
    provider_type: str
    responsible_individual_name: str | None
    responsible_individual_address: str | None
    manager_name: str | None
    manager_address: str | None


@dataclass(frozen=True)
class EnforcementRow:
    urn: str
    date: dt.date
    nature: str


@dataclass(frozen=True)
class SourceFile:
    path: Path
    sha256: str


@dataclass(frozen=True)
class ParsedRegister:
    homes: tuple[HomeRow, ...]
    enforcement: tuple[EnforcementRow, ...]
    homes_file: SourceFile
    enforcement_file: SourceFile | None


@dataclass(frozen=True)
class ImportSummary:
    import_id: int
    homes: int
    enforcement_actions: int
    replaced_homes: int
    homes_sha256: str
    enforcement_sha256: str | None


@dataclass
class _Reader:
    """A CSV file read row by row, collecting problems instead of stopping at the first."""

    path: Path
    columns: tuple[str, ...]
    problems: list[Problem]
    sha256: str = ""
    header: tuple[str, ...] = ()
    rows: list[tuple[int, dict[str, str]]] = field(default_factory=list)

    def problem(self, line: int | None, column: str | None, message: str) -> None:
        self.problems.append(Problem(str(self.path), line, column, message))

    def read(self) -> None:
        try:
            raw = self.path.read_bytes()
        except OSError as exc:
            self.problem(None, None, f"cannot read file: {exc.strerror}")
            return
        self.sha256 = hashlib.sha256(raw).hexdigest()
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            self.problem(line, None, f"not UTF-8 text (invalid byte 0x{raw[exc.start]:02x}); save the file as UTF-8")
            return
        if "\x00" in text:
            self.problem(text[: text.index("\x00")].count("\n") + 1, None, "contains a NUL byte")
            return
        # Only CR and LF end a record: str.splitlines would also split at U+2028, form feeds and the like,
        # which the csv module neither quotes nor expects, and every line number after them would be wrong.
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
        try:
            self._read_rows(reader)
        except csv.Error as exc:
            self.problem(reader.line_num, None, f"malformed CSV: {exc}")

    def _read_rows(self, reader: _CsvReader) -> None:
        header = next(reader, None)
        if header is None:
            self.problem(None, None, "the file is empty (expected a header row)")
            return
        self.header = tuple(name.strip().lower() for name in header)
        if not self._check_header():
            return
        start = reader.line_num + 1
        for cells in reader:
            line = start
            start = reader.line_num + 1
            if not any(cell.strip() for cell in cells):
                continue
            if len(cells) != len(self.header):
                self.problem(line, None, f"row has {len(cells)} fields, the header has {len(self.header)}")
                continue
            self.rows.append((line, dict(zip(self.header, cells, strict=True))))

    def _check_header(self) -> bool:
        ok = True
        seen: set[str] = set()
        for position, name in enumerate(self.header, start=1):
            if not name:
                self.problem(1, f"column {position}", "column has no name")
                ok = False
            elif name in seen:
                self.problem(1, name, "column appears more than once")
                ok = False
            elif name not in self.columns:
                self.problem(1, name, "unknown column (only Schedule 5 paragraphs 1, 2, 3 and 10 data may be imported)")
                ok = False
            seen.add(name)
        for name in self.columns:
            if name not in seen:
                self.problem(1, name, "missing column")
                ok = False
        return ok


def _clean(reader: _Reader, line: int, column: str, value: str, *, required: bool) -> str | None:
    # Checked before any whitespace is collapsed, so nothing (a tab, U+2028, a zero-width space) hides in it.
    if any(ch not in "\r\n" and unicodedata.category(ch) in _HIDDEN_CATEGORIES for ch in value):
        reader.problem(line, column, "contains control or invisible formatting characters")
        return None
    text = " ".join(value.split()) if "\n" in value or "\r" in value else value.strip()
    if len(text) > MAX_CELL:
        reader.problem(line, column, f"longer than {MAX_CELL} characters")
        return None
    if not text:
        if required:
            reader.problem(line, column, "required value is empty")
        return None
    return text


def _urn(reader: _Reader, line: int, value: str | None) -> str | None:
    if value is None:
        return None
    # ASCII first: str.upper() would turn a German sharp s into SS and make a different URN.
    if not value.isascii() or not _URN.fullmatch(value.upper()):
        reader.problem(line, "urn", f"{value!r} is not a URN (letters and digits, at most 20)")
        return None
    return value.upper()


def _postcode(reader: _Reader, line: int, value: str | None) -> str | None:
    if value is None:
        return None
    match = _POSTCODE.fullmatch(value.upper()) if value.isascii() else None
    if match is None:
        reader.problem(line, "postcode", f"{value!r} is not a UK postcode")
        return None
    return f"{match[1]} {match[2]}"


def _telephone(reader: _Reader, line: int, value: str | None) -> None:
    if value is not None and (
        len(value) > MAX_TELEPHONE
        or not _TELEPHONE.fullmatch(value)
        or not 10 <= sum(ch.isdigit() for ch in value) <= 15
    ):
        reader.problem(line, "telephone", f"{value!r} is not a telephone number")


def _area(reader: _Reader, line: int, la_name: str | None, pfa_name: str | None) -> LocalAuthority | None:
    """The home's local authority, provided the police force area given for it agrees with ours."""
    la = find_local_authority(la_name) if la_name else None
    pfa = find_police_force_area(pfa_name) if pfa_name else None
    if la_name and la is None:
        reader.problem(line, "local_authority", f"unknown local authority {la_name!r}")
    if pfa_name and pfa is None:
        reader.problem(line, "police_force_area", f"unknown police force area {pfa_name!r}")
    elif la is not None and pfa is not None and la.police_force_area != pfa:
        reader.problem(
            line,
            "police_force_area",
            f"{pfa!r} contradicts the local authority: {la.name} lies in {la.police_force_area!r}",
        )
        return None
    return la if pfa is not None else None


def _one_of(reader: _Reader, line: int, column: str, value: str | None, allowed: tuple[str, ...]) -> str | None:
    if value is None:
        return None
    if value.lower() not in allowed:
        reader.problem(line, column, f"{value!r} is not one of {', '.join(allowed)}")
        return None
    return value.lower()


def _home(reader: _Reader, line: int, cells: dict[str, str]) -> HomeRow | None:
    before = len(reader.problems)
    values = {
        column: _clean(reader, line, column, cells[column], required=column not in OPTIONAL_HOME_COLUMNS)
        for column in HOME_COLUMNS
    }
    urn = _urn(reader, line, values["urn"])
    postcode = _postcode(reader, line, values["postcode"])
    _telephone(reader, line, values["telephone"])
    la = _area(reader, line, values["local_authority"], values["police_force_area"])
    status = _one_of(reader, line, "status", values["status"], HOME_STATUSES)
    provider_type = _one_of(reader, line, "provider_type", values["provider_type"], PROVIDER_TYPES)
    if provider_type is not None:
        _check_responsible_individual(reader, line, provider_type, values)
    if len(reader.problems) != before or not (urn and postcode and la and status and provider_type):
        return None
    return HomeRow(
        urn=urn,
        name=values["name"] or "",
        address=values["address"] or "",
        postcode=postcode,
        telephone=values["telephone"],
        local_authority=la.name,
        police_force_area=la.police_force_area,
        status=status,
        provider_name=values["provider_name"] or "",
        provider_address=values["provider_address"] or "",
        provider_type=provider_type,
        responsible_individual_name=values["responsible_individual_name"],
        responsible_individual_address=values["responsible_individual_address"],
        manager_name=values["manager_name"],
        manager_address=values["manager_address"],
    )


def _check_responsible_individual(
    reader: _Reader, line: int, provider_type: str, values: dict[str, str | None]
) -> None:
    for column in ("responsible_individual_name", "responsible_individual_address"):
        if provider_type == "organisation" and values[column] is None:
            reader.problem(line, column, "required for an organisation")
        if provider_type == "individual" and values[column] is not None:
            reader.problem(line, column, "only given when the provider is an organisation")


def _iso_date(text: str | None) -> dt.date | None:
    # date.fromisoformat also takes 20240131 and week dates; the file format promises YYYY-MM-DD only.
    if text is None or not _ISO_DATE.fullmatch(text):
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        return None


def _enforcement(reader: _Reader, line: int, cells: dict[str, str], urns: set[str] | None) -> EnforcementRow | None:
    before = len(reader.problems)
    urn = _clean(reader, line, "urn", cells["urn"], required=True)
    date_text = _clean(reader, line, "date", cells["date"], required=True)
    nature = _clean(reader, line, "nature", cells["nature"], required=True)
    if urn is not None:
        urn = urn.upper()
        if urns is not None and urn not in urns:
            reader.problem(line, "urn", f"enforcement for unknown URN {urn} (not in the homes file)")
    date = _iso_date(date_text)
    if date_text is not None and date is None:
        reader.problem(line, "date", f"bad date {date_text!r} (expected an ISO date, YYYY-MM-DD)")
    if len(reader.problems) != before or urn is None or date is None or nature is None:
        return None
    return EnforcementRow(urn, date, nature)


def parse_register(
    homes_path: Path, enforcement_path: Path | None = None, progress: Progress = no_progress
) -> ParsedRegister:
    """Read and check both files; every problem is collected, and any problem refuses the lot."""
    problems: list[Problem] = []
    homes_reader = _Reader(homes_path, HOME_COLUMNS, problems)
    homes_reader.read()
    homes: list[HomeRow] = []
    first_line: dict[str, int] = {}
    total = len(homes_reader.rows)
    for done, (line, cells) in enumerate(homes_reader.rows, start=1):
        home = _home(homes_reader, line, cells)
        raw_urn = cells["urn"].strip().upper()
        if raw_urn in first_line:
            homes_reader.problem(line, "urn", f"duplicate URN {raw_urn} (first on line {first_line[raw_urn]})")
        elif raw_urn:
            first_line[raw_urn] = line
            if home is not None:
                homes.append(home)
        if done % 500 == 0 or done == total:
            progress("checking homes", done, total)
    if homes_reader.header and not homes_reader.rows and not problems:
        homes_reader.problem(None, None, "the file holds no homes (refusing to empty the register)")

    enforcement: list[EnforcementRow] = []
    enforcement_file: SourceFile | None = None
    if enforcement_path is not None:
        enforcement_reader = _Reader(enforcement_path, ENFORCEMENT_COLUMNS, problems)
        enforcement_reader.read()
        # When the homes file could not be read at all, every URN would look unknown: say nothing of them.
        urns = set(first_line) if homes_reader.rows else None
        for line, cells in enforcement_reader.rows:
            action = _enforcement(enforcement_reader, line, cells, urns)
            if action is not None:
                enforcement.append(action)
        enforcement_file = SourceFile(enforcement_path, enforcement_reader.sha256)

    if problems:
        raise RegisterRefused(problems)
    return ParsedRegister(
        tuple(homes), tuple(enforcement), SourceFile(homes_path, homes_reader.sha256), enforcement_file
    )


def _chunks(rows: Sequence[dict[str, Any]]) -> Iterator[Sequence[dict[str, Any]]]:
    for start in range(0, len(rows), _INSERT_CHUNK):
        yield rows[start : start + _INSERT_CHUNK]


async def import_register(
    db: Database, register: ParsedRegister, *, actor: str, progress: Progress = no_progress
) -> ImportSummary:
    """Replace the register with these rows in one transaction: readers see the old one or the new one."""
    now = dt.datetime.now(dt.UTC)
    async with db.transaction() as session:
        replaced = int((await session.execute(select(func.count()).select_from(Home))).scalar_one())
        await session.execute(delete(EnforcementAction))
        await session.execute(delete(Home))
        record = RegisterImport(
            imported_at=now,
            actor=actor,
            homes_file=str(register.homes_file.path),
            homes_sha256=register.homes_file.sha256,
            enforcement_file=str(register.enforcement_file.path) if register.enforcement_file else None,
            enforcement_sha256=register.enforcement_file.sha256 if register.enforcement_file else None,
            home_count=len(register.homes),
            enforcement_count=len(register.enforcement),
        )
        session.add(record)
        await session.flush()

        home_rows = [{**home.__dict__, "import_id": record.id} for home in register.homes]
        action_rows = [action.__dict__ for action in register.enforcement]
        total, done = len(home_rows) + len(action_rows), 0
        # Core inserts, not ORM ones: the rows need no identity map, and this is about four times faster.
        tables = Home.metadata.tables
        for table, rows in ((tables["homes"], home_rows), (tables["enforcement_actions"], action_rows)):
            for chunk in _chunks(rows):
                await session.execute(insert(table), chunk)
                done += len(chunk)
                progress("importing", done, total)

        await audit.record(
            session,
            actor=actor,
            action="register.import",
            subject=f"import {record.id}",
            details={
                "homes_file": str(register.homes_file.path),
                "homes_sha256": register.homes_file.sha256,
                "enforcement_file": str(register.enforcement_file.path) if register.enforcement_file else None,
                "enforcement_sha256": register.enforcement_file.sha256 if register.enforcement_file else None,
                "homes": len(register.homes),
                "enforcement_actions": len(register.enforcement),
                "replaced_homes": replaced,
            },
        )
    return ImportSummary(
        record.id,
        len(register.homes),
        len(register.enforcement),
        replaced,
        register.homes_file.sha256,
        register.enforcement_file.sha256 if register.enforcement_file else None,
    )


@dataclass(frozen=True)
class AreaCount:
    police_force_area: str
    local_authority: str
    registered: int
    suspended: int
    closed: int
    enforcement_actions: int

    @property
    def homes(self) -> int:
        return self.registered + self.suspended + self.closed


@dataclass(frozen=True)
class RegisterSummary:
    areas: tuple[AreaCount, ...]
    last_import: RegisterImport | None

    @property
    def homes(self) -> int:
        return sum(area.homes for area in self.areas)


async def summarise(session: AsyncSession) -> RegisterSummary:
    status_counts = await session.execute(
        select(Home.police_force_area, Home.local_authority, Home.status, func.count()).group_by(
            Home.police_force_area, Home.local_authority, Home.status
        )
    )
    enforcement_counts = await session.execute(
        select(Home.local_authority, func.count())
        .select_from(EnforcementAction)
        .join(Home, Home.urn == EnforcementAction.urn)
        .group_by(Home.local_authority)
    )
    actions = {la: int(n) for la, n in enforcement_counts.all()}
    by_area: dict[tuple[str, str], dict[str, int]] = {}
    for pfa, la, status, n in status_counts.all():
        by_area.setdefault((pfa, la), {})[status] = int(n)
    areas = tuple(
        AreaCount(
            pfa,
            la,
            counts.get("registered", 0),
            counts.get("suspended", 0),
            counts.get("closed", 0),
            actions.get(la, 0),
        )
        for (pfa, la), counts in sorted(by_area.items())
    )
    last = (await session.execute(select(RegisterImport).order_by(RegisterImport.id.desc()).limit(1))).scalar()
    return RegisterSummary(areas, last)
