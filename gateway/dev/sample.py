"""Writes a synthetic register of entirely fictional children's homes for demos, tests and benchmarks."""

from __future__ import annotations

import csv
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from functools import cache
from itertools import accumulate, product, repeat
from pathlib import Path

from gateway.admin.reference import local_authorities
from gateway.admin.register import ENFORCEMENT_COLUMNS, HOME_COLUMNS, HOME_STATUSES
from gateway.errors import GatewayError

# "SC" plus six digits allows exactly this many distinct URNs.
MAX_HOMES = 1_000_000

_FIRST_NAMES: tuple[str, ...] = (
    "Aaliyah", "Abigail", "Adam", "Aisha", "Alan", "Alice", "Amelia", "Amir", "Andrew", "Angela",
    "Anna", "Ben", "Bethany", "Carl", "Caroline", "Charlotte", "Chloe", "Chris", "Claire", "Daniel",
    "David", "Deborah", "Declan", "Eleanor", "Emily", "Emma", "Faisal", "Fiona", "Gareth", "Gemma",
    "Grace", "Hannah", "Harry", "Helen", "Imran", "Isla", "Jack", "James", "Jane", "Jasmine",
    "Joanne", "John", "Joseph", "Julie", "Karen", "Kate", "Kevin", "Laura", "Leon", "Lisa",
    "Lucy", "Mark", "Martin", "Mary", "Matthew", "Megan", "Michael", "Mohammed", "Naomi", "Natalie",
    "Neil", "Nicola", "Oliver", "Olivia", "Paul", "Priya", "Rachel", "Rebecca", "Richard", "Robert",
    "Ruth", "Ryan", "Sadia", "Samuel", "Sarah", "Simon", "Sophie", "Stephen", "Susan", "Tariq",
    "Thomas", "Tom", "Tracey", "Victoria", "Wendy", "William", "Yasmin", "Zoe",
)  # fmt: skip
_SURNAMES: tuple[str, ...] = (
    "Ahmed", "Ali", "Allen", "Atkinson", "Bailey", "Baker", "Barker", "Bell", "Bennett", "Brown",
    "Butler", "Campbell", "Carter", "Chapman", "Clarke", "Collins", "Cooper", "Cox", "Davies", "Dawson",
    "Edwards", "Ellis", "Evans", "Fisher", "Fletcher", "Foster", "Graham", "Gray", "Green", "Hall",
    "Harris", "Hill", "Holmes", "Hughes", "Hussain", "Jackson", "James", "Johnson", "Jones", "Kaur",
    "Kelly", "Khan", "King", "Knight", "Lee", "Lewis", "Marshall", "Martin", "Mason", "Mills",
    "Mitchell", "Moore", "Morgan", "Morris", "Murphy", "Murray", "Nelson", "O'Brien", "Owen", "Palmer",
    "Parker", "Patel", "Pearson", "Phillips", "Price", "Reid", "Richards", "Roberts", "Robinson", "Rogers",
    "Russell", "Shaw", "Simpson", "Singh", "Smith", "Stevens", "Taylor", "Thomas", "Thompson", "Turner",
    "Walker", "Ward", "Watson", "White", "Wilkinson", "Williams", "Wilson", "Wood", "Wright", "Young",
)  # fmt: skip
_STREETS: tuple[str, ...] = (
    "Acacia", "Albert", "Alder", "Beech", "Birch", "Bridge", "Brook", "Castle", "Cedar", "Chapel",
    "Chestnut", "Church", "Clarence", "Cross", "Elm", "Farm", "Forge", "George", "Glebe", "Green",
    "Grove", "Hawthorn", "High", "Hill", "Holly", "Kingsway", "Laburnum", "Manor", "Maple", "Meadow",
    "Mill", "New", "North", "Oak", "Orchard", "Park", "Poplar", "Queen's", "Rectory", "Rose",
    "School", "South", "Spring", "Station", "Victoria", "Vicarage", "Well", "West", "Willow", "York",
)  # fmt: skip
_STREET_TYPES: tuple[str, ...] = (
    "Road", "Street", "Lane", "Avenue", "Close", "Drive", "Way", "Crescent", "Grove", "Gardens",
    "Place", "Terrace", "Walk", "Rise",
)  # fmt: skip
_STREET_TYPE_WEIGHTS: tuple[int, ...] = (30, 20, 15, 10, 10, 6, 4, 4, 3, 3, 2, 2, 1, 1)
_TOWN_STEMS: tuple[str, ...] = (
    "Ash", "Alder", "Bar", "Bram", "Brook", "Burn", "Cal", "Church", "Clay", "Dun",
    "Elm", "Fair", "Fen", "Hart", "Hazel", "Holm", "Kings", "Lang", "Lark", "Lin",
    "Marsh", "Mill", "Moss", "North", "Oak", "Red", "Rush", "Sand", "South", "Stan",
    "Thorn", "Wal", "West", "Whit", "Wick", "Wood",
)  # fmt: skip
_TOWN_ENDINGS: tuple[str, ...] = (
    "bury", "by", "combe", "den", "field", "ford", "ham", "hurst", "ley", "minster",
    "stead", "stow", "thorpe", "ton", "well", "wick", "worth",
)  # fmt: skip
_TOWN_QUALIFIERS: tuple[str, ...] = ("", " Green", " Heath", " End", " Common", " on Sea", " Magna")
_TOWN_QUALIFIER_WEIGHTS: tuple[int, ...] = (80, 6, 4, 4, 3, 2, 1)
_HOME_STEMS: tuple[str, ...] = (
    "Ash", "Beech", "Birch", "Bramble", "Brook", "Cedar", "Clover", "Elm", "Fern", "Hazel",
    "Heather", "Holly", "Lark", "Linden", "Maple", "Oak", "Rowan", "Thorn", "Willow", "Wren",
)  # fmt: skip
_HOME_ENDINGS: tuple[str, ...] = (
    "bank", "croft", "dale", "dene", "field", "hurst", "lea", "mead", "side", "wood",
)  # fmt: skip
_HOME_KINDS: tuple[str, ...] = ("House", "Lodge", "Cottage", "View", "Court", "Grange", "Barn", "Place")
_HOME_WORDS: tuple[str, ...] = (
    "Meadow", "Orchard", "River", "Hill", "Park", "Valley", "Moor", "Harbour", "Spring", "Chapel",
)  # fmt: skip
_HOME_PLURALS: tuple[str, ...] = (
    "The Willows", "The Laurels", "The Beeches", "The Cedars", "The Hollies", "The Limes",
    "The Poplars", "The Elms", "The Firs", "The Gables", "The Orchard", "The Paddocks",
)  # fmt: skip
# Invented compounds rather than dictionary words, because "<word> Care Ltd" is very likely a real firm.
_ORG_STEMS: tuple[str, ...] = (
    "Ash", "Bramble", "Bright", "Clover", "Fern", "Heather", "Juniper", "Lark", "Linden", "Moss",
    "Quill", "Rowan", "Sorrel", "Tansy", "Thistle", "Wren", "Amber", "Silver", "Kestrel", "Hollin",
)  # fmt: skip
_ORG_ENDINGS: tuple[str, ...] = (
    "path", "mere", "vale", "ridge", "combe", "holt", "wold", "wick", "stead", "brook", "gate", "haven",
)  # fmt: skip
_ORG_KINDS: tuple[str, ...] = (
    "Care", "Children's Services", "Residential Care", "Children's Homes", "Family Care",
    "Young People's Services", "Care Group", "Child Care", "Care Services", "Homes for Children",
)  # fmt: skip
_ORG_FORMS: tuple[str, ...] = ("Ltd", "Limited", "Ltd", "Ltd", "CIC")
_ORG_OFFICES: tuple[str, ...] = ("Unit", "Suite", "Office")
# Real English postcode areas, so the outward codes look right; the districts and inward codes are random.
_POSTCODE_AREAS: tuple[str, ...] = (
    "B", "BA", "BB", "BD", "BH", "BL", "BN", "BR", "BS", "CA", "CB", "CM", "CO", "CR", "CT", "CV",
    "CW", "DA", "DE", "DH", "DL", "DN", "DT", "DY", "E", "EN", "EX", "GL", "GU", "HA", "HD", "HG",
    "HP", "HU", "HX", "IG", "IP", "KT", "L", "LA", "LE", "LN", "LS", "LU", "M", "ME", "MK", "N",
    "NE", "NG", "NN", "NR", "NW", "OL", "OX", "PE", "PL", "PO", "PR", "RG", "RH", "RM", "S", "SE",
    "SG", "SK", "SL", "SM", "SN", "SO", "SP", "SR", "SS", "ST", "SW", "TA", "TF", "TN", "TQ", "TR",
    "TS", "TW", "UB", "W", "WA", "WD", "WF", "WN", "WR", "WS", "WV", "YO",
)  # fmt: skip
# Royal Mail never uses C, I, K, M, O or V in the inward code.
_INWARD_LETTERS = "ABDEFGHJLNPQRSTUWXYZ"
# Ofcom reserves these for drama, so a demo number can never ring a real home or person.
_TELEPHONE_PREFIXES: tuple[str, ...] = ("01632 960", "020 7946 0", "0113 496 0", "0161 496 0", "0121 496 0")
_ENFORCEMENT_NATURES: tuple[str, ...] = (
    "Compliance notice issued",
    "Restriction on accommodation notice",
    "Notice of proposal to impose conditions",
    "Notice of decision to impose conditions",
    "Notice of proposal to cancel registration",
    "Notice of decision to cancel registration",
    "Suspension of registration",
    "Warning letter issued",
)
_SUSPENSION = "Suspension of registration"
_STATUS_WEIGHTS: dict[str, int] = {"registered": 90, "suspended": 4, "closed": 6}
# Suspended homes always have an action; these rates bring the overall share to about 6%.
_ENFORCEMENT_RATES: dict[str, float] = {"registered": 0.017, "suspended": 1.0, "closed": 0.08}
_ORGANISATION_SHARE = 0.7
_NO_TELEPHONE_SHARE = 0.02
_NO_MANAGER_SHARE = 0.05
_ENFORCEMENT_WINDOW_DAYS = 3 * 365


@dataclass(frozen=True)
class SampleSummary:
    homes_path: Path
    enforcement_path: Path
    homes: int
    enforcement_actions: int


# Name, address, provider type, responsible individual and their address, as they appear in homes.csv.
_Provider = tuple[str, str, str, str, str]


def write_sample(out_dir: Path, homes: int, *, seed: int = 2013, today: date | None = None) -> SampleSummary:
    """Write homes.csv and enforcement.csv of fictional homes into out_dir, the same for the same seed."""
    if homes < 1 or homes > MAX_HOMES:
        raise GatewayError(f"a sample register must have between 1 and {MAX_HOMES:,} homes, not {homes:,}")
    # Demo data needs repeatability, not unpredictability, and a private generator keeps it seed-bound.
    rng = random.Random(seed)  # noqa: S311
    home_columns = _home_columns(rng, homes)
    # Through the ordinal, so that a datetime passed as today still gives plain YYYY-MM-DD dates.
    last_day = date.fromordinal((today or date.today()).toordinal())
    enforcement = _enforcement_rows(rng, home_columns["urn"], home_columns["status"], last_day)
    homes_path = out_dir / "homes.csv"
    enforcement_path = out_dir / "enforcement.csv"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with homes_path.open("w", encoding="utf-8", newline="") as stream:
            writer = csv.writer(stream)
            writer.writerow(HOME_COLUMNS)
            # A KeyError here means HOME_COLUMNS grew a column this generator does not yet fill.
            writer.writerows(zip(*(home_columns[column] for column in HOME_COLUMNS), strict=True))
        with enforcement_path.open("w", encoding="utf-8", newline="") as stream:
            writer = csv.writer(stream)
            writer.writerow(ENFORCEMENT_COLUMNS)
            writer.writerows(enforcement)
    except OSError as error:
        raise GatewayError(f"cannot write the sample register to {out_dir}: {error.strerror or error}") from error
    return SampleSummary(homes_path, enforcement_path, homes, len(enforcement))


def _home_columns(rng: random.Random, count: int) -> dict[str, list[str]]:
    """Every column of the homes file, drawn a whole column at a time because per-row draws are slow."""
    urns = _urns(rng, count)
    authorities = rng.choices(local_authorities(), k=count)
    statuses = rng.choices(_repeated((status, _STATUS_WEIGHTS[status]) for status in HOME_STATUSES), k=count)
    is_organisation = [draw < _ORGANISATION_SHARE for draw in _uniforms(rng, count)]
    organisation_count = sum(is_organisation)
    individual_count = count - organisation_count
    organisations = _organisations(rng, max(1, organisation_count // 5))
    # Heavy-tailed weights, so a few providers run many homes while most run one or two.
    organisation_weights = [min(rng.paretovariate(1.5), 100.0) for _ in organisations]
    chosen = iter(rng.choices(organisations, weights=organisation_weights, k=organisation_count))
    individuals = iter(
        zip(
            _people(rng, individual_count),
            _addresses(rng, individual_count, with_postcode=True),
            repeat("individual"),
            repeat(""),
            repeat(""),
        )
    )
    providers = [next(chosen) if organisation else next(individuals) for organisation in is_organisation]
    provider_name, provider_address, provider_type, ri_name, ri_address = (
        list(column) for column in zip(*providers, strict=True)
    )

    has_manager = [draw >= _NO_MANAGER_SHARE for draw in _uniforms(rng, count)]
    managers = _people(rng, count)
    manager_addresses = _addresses(rng, count, with_postcode=True)
    telephones = rng.choices(_telephone_numbers(), k=count)
    no_telephone = _uniforms(rng, count)
    return {
        "urn": urns,
        "name": rng.choices(_home_names(), k=count),
        "address": _addresses(rng, count, with_postcode=False),
        "postcode": _postcodes(rng, count),
        "telephone": [
            "" if draw < _NO_TELEPHONE_SHARE else telephone
            for telephone, draw in zip(telephones, no_telephone, strict=True)
        ],
        "local_authority": [authority.name for authority in authorities],
        "police_force_area": [authority.police_force_area for authority in authorities],
        "status": statuses,
        "provider_name": provider_name,
        "provider_address": provider_address,
        "provider_type": provider_type,
        "responsible_individual_name": ri_name,
        "responsible_individual_address": ri_address,
        "manager_name": [name if keep else "" for name, keep in zip(managers, has_manager, strict=True)],
        "manager_address": [
            address if keep else "" for address, keep in zip(manager_addresses, has_manager, strict=True)
        ],
    }


def _urns(rng: random.Random, count: int) -> list[str]:
    """Ascending URNs with random gaps, like a register that has lost homes over the years."""
    spare = MAX_HOMES - count
    # No gap exceeds an equal share of the spare numbers, so the last URN can never pass SC999999.
    gaps = rng.choices(range(spare // count + 1), k=count)
    start = rng.randint(0, spare - sum(gaps))
    return [f"SC{number + index:06d}" for index, number in enumerate(accumulate(gaps, initial=start))][:count]


def _enforcement_rows(
    rng: random.Random, urns: Sequence[str], statuses: Sequence[str], today: date
) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    others = tuple(nature for nature in _ENFORCEMENT_NATURES if nature != _SUSPENSION)
    for urn, status in zip(urns, statuses, strict=True):
        if rng.random() >= _ENFORCEMENT_RATES[status]:
            continue
        count = rng.randint(1, 3)
        # Distinct days, so no home has two identical-looking actions.
        ages = sorted(rng.sample(range(_ENFORCEMENT_WINDOW_DAYS + 1), count), reverse=True)
        if status == "suspended":
            # The suspension is what the home is still under, so it is the latest action.
            natures = [*rng.choices(others, k=count - 1), _SUSPENSION]
        else:
            natures = rng.choices(_ENFORCEMENT_NATURES, k=count)
        rows.extend(
            (urn, (today - timedelta(days=age)).isoformat(), nature) for age, nature in zip(ages, natures, strict=True)
        )
    return rows


def _organisations(rng: random.Random, count: int) -> list[_Provider]:
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < count:
        for stem, kind, form, town in zip(
            rng.choices(_organisation_stems(), k=count),
            rng.choices(_ORG_KINDS, k=count),
            rng.choices(_ORG_FORMS, k=count),
            rng.choices(_town_names(), k=count),
            strict=True,
        ):
            name = f"{stem} {kind} {form}"
            if name in seen:
                # Large samples exhaust the plain names; a place in brackets is how real firms differ.
                name = f"{stem} {kind} ({town}) {form}"
            if name not in seen and len(names) < count:
                seen.add(name)
                names.append(name)
    return list(
        zip(
            names,
            [
                f"{office} {suite}, {address}"
                for office, suite, address in zip(
                    rng.choices(_ORG_OFFICES, k=count),
                    rng.choices(range(1, 40), k=count),
                    _addresses(rng, count, with_postcode=True),
                    strict=True,
                )
            ],
            repeat("organisation"),
            _people(rng, count),
            _addresses(rng, count, with_postcode=True),
        )
    )


def _people(rng: random.Random, count: int) -> list[str]:
    return rng.choices(_full_names(), k=count)


def _addresses(rng: random.Random, count: int, *, with_postcode: bool) -> list[str]:
    lines = [
        f"{number} {street}, {town}"
        for number, street, town in zip(
            rng.choices(range(1, 160), k=count),
            rng.choices(_street_names(), k=count),
            rng.choices(_town_names(), k=count),
            strict=True,
        )
    ]
    if with_postcode:
        return [f"{line}, {postcode}" for line, postcode in zip(lines, _postcodes(rng, count), strict=True)]
    return lines


def _postcodes(rng: random.Random, count: int) -> list[str]:
    return [
        f"{outward} {inward}"
        for outward, inward in zip(
            rng.choices(_outward_codes(), k=count), rng.choices(_inward_codes(), k=count), strict=True
        )
    ]


def _uniforms(rng: random.Random, count: int) -> list[float]:
    draw = rng.random
    return [draw() for _ in range(count)]


# The pools below are every combination of the word lists, built once, so that each field costs one
# draw instead of several; weights become repetition because unweighted draws are much faster.


def _repeated(pairs: Iterable[tuple[str, int]]) -> tuple[str, ...]:
    return tuple(value for value, times in pairs for _ in range(times))


@cache
def _organisation_stems() -> tuple[str, ...]:
    return tuple(f"{stem}{ending}" for stem, ending in product(_ORG_STEMS, _ORG_ENDINGS))


@cache
def _full_names() -> tuple[str, ...]:
    return tuple(f"{first} {last}" for first, last in product(_FIRST_NAMES, _SURNAMES))


@cache
def _street_names() -> tuple[str, ...]:
    return _repeated(
        (f"{street} {kind}", weight)
        for street, (kind, weight) in product(_STREETS, zip(_STREET_TYPES, _STREET_TYPE_WEIGHTS, strict=True))
    )


@cache
def _town_names() -> tuple[str, ...]:
    return _repeated(
        (f"{stem}{ending}{qualifier}", weight)
        for stem, ending, (qualifier, weight) in product(
            _TOWN_STEMS, _TOWN_ENDINGS, zip(_TOWN_QUALIFIERS, _TOWN_QUALIFIER_WEIGHTS, strict=True)
        )
    )


@cache
def _outward_codes() -> tuple[str, ...]:
    return tuple(f"{area}{district}" for area, district in product(_POSTCODE_AREAS, range(1, 30)))


@cache
def _inward_codes() -> tuple[str, ...]:
    return tuple(f"{sector}{a}{b}" for sector, a, b in product(range(10), _INWARD_LETTERS, _INWARD_LETTERS))


@cache
def _telephone_numbers() -> tuple[str, ...]:
    return tuple(f"{prefix}{ending:03d}" for prefix, ending in product(_TELEPHONE_PREFIXES, range(1000)))


@cache
def _home_names() -> tuple[str, ...]:
    compounds = [f"{stem}{ending} {kind}" for stem, ending, kind in product(_HOME_STEMS, _HOME_ENDINGS, _HOME_KINDS)]
    plain = [f"{word} {kind}" for word, kind in product(_HOME_WORDS, _HOME_KINDS)]
    # About half "Oakfield House", a quarter "Meadow View" and a quarter "The Willows".
    plain_times = len(compounds) // len(plain)
    plural_times = len(compounds) // len(_HOME_PLURALS)
    return _repeated(
        [
            *((name, 2) for name in compounds),
            *((name, plain_times) for name in plain),
            *((name, plural_times) for name in _HOME_PLURALS),
        ]
    )
