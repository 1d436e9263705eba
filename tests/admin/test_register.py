"""Importing the register: every problem listed as file:line: column, all or nothing, on both databases."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest
from sqlalchemy import select

from gateway.admin.register import ENFORCEMENT_COLUMNS, HOME_COLUMNS, RegisterRefused, import_register, parse_register
from gateway.cli import main
from gateway.config import DatabaseSettings
from gateway.db.engine import create_database
from gateway.db.models import Home
from gateway.dev.sample import write_sample
from tests.support.gateway_cli import Gateway

HOME = {
    "urn": "SC100001",
    "name": "Oakfield House",
    "address": "12 Mill Lane, Ashford Green",
    "postcode": "sy1 1aa",
    "telephone": "01632 960001",
    "local_authority": "Shropshire",
    "police_force_area": "West Mercia",
    "status": "registered",
    "provider_name": "Brightpath Care Ltd",
    "provider_address": "1 Office Park, Telford TF1 1AA",
    "provider_type": "organisation",
    "responsible_individual_name": "Jane Smith",
    "responsible_individual_address": "3 Elm Road, Telford TF2 2BB",
    "manager_name": "Tom Brown",
    "manager_address": "4 Oak Road, Shrewsbury SY2 2CC",
}


def home(**changes: str) -> dict[str, str]:
    return {**HOME, **changes}


def write_csv(path: Path, columns: Iterable[str], rows: Iterable[Mapping[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)
    return path


def problems(homes: Path, enforcement: Path | None = None) -> list[str]:
    with pytest.raises(RegisterRefused) as caught:
        parse_register(homes, enforcement)
    return [str(p) for p in caught.value.problems]


def test_good_rows_are_normalised(tmp_path: Path) -> None:
    homes = write_csv(
        tmp_path / "homes.csv",
        HOME_COLUMNS,
        [home(), home(urn="sc100002", provider_type="Individual", responsible_individual_name="",
                      responsible_individual_address="", local_authority="shropshire", telephone="")],
    )  # fmt: skip
    parsed = parse_register(homes)
    assert [h.urn for h in parsed.homes] == ["SC100001", "SC100002"]
    assert parsed.homes[0].postcode == "SY1 1AA"
    assert parsed.homes[1].local_authority == "Shropshire"
    assert parsed.homes[1].provider_type == "individual"
    assert parsed.homes[1].telephone is None
    assert parsed.homes_file.sha256 == hashlib.sha256(homes.read_bytes()).hexdigest()


def test_missing_and_unknown_columns_are_refused(tmp_path: Path) -> None:
    columns = [c for c in HOME_COLUMNS if c != "postcode"] + ["ethnicity_of_children"]
    row = {k: v for k, v in HOME.items() if k != "postcode"} | {"ethnicity_of_children": "x"}
    path = write_csv(tmp_path / "homes.csv", columns, [row])
    assert problems(path) == [
        f"{path}:1: ethnicity_of_children: unknown column "
        "(only Schedule 5 paragraphs 1, 2, 3 and 10 data may be imported)",
        f"{path}:1: postcode: missing column",
    ]


def test_duplicate_urn_names_the_first_line(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "homes.csv", HOME_COLUMNS, [home(), home(name="Other"), home(urn="SC100002")])
    assert problems(path) == [f"{path}:3: urn: duplicate URN SC100001 (first on line 2)"]


def test_unknown_local_authority(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "homes.csv", HOME_COLUMNS, [home(local_authority="Gotham")])
    assert problems(path) == [f"{path}:2: local_authority: unknown local authority 'Gotham'"]


def test_police_force_area_contradicting_the_local_authority(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "homes.csv", HOME_COLUMNS, [home(police_force_area="Thames Valley")])
    assert problems(path) == [
        f"{path}:2: police_force_area: 'Thames Valley' contradicts the local authority: "
        "Shropshire lies in 'West Mercia'"
    ]


def test_unknown_police_force_area(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "homes.csv", HOME_COLUMNS, [home(police_force_area="Mercia")])
    assert problems(path) == [f"{path}:2: police_force_area: unknown police force area 'Mercia'"]


def test_bad_date_and_enforcement_for_unknown_urn(tmp_path: Path) -> None:
    homes = write_csv(tmp_path / "homes.csv", HOME_COLUMNS, [home()])
    enforcement = write_csv(
        tmp_path / "enforcement.csv",
        ENFORCEMENT_COLUMNS,
        [
            {"urn": "SC100001", "date": "2024-02-30", "nature": "Compliance notice"},
            {"urn": "SC100001", "date": "03/01/2024", "nature": "Compliance notice"},
            {"urn": "SC999999", "date": "2024-01-03", "nature": "Suspension of registration"},
            {"urn": "SC100001", "date": "2024-01-03", "nature": "Compliance notice"},
        ],
    )
    assert problems(homes, enforcement) == [
        f"{enforcement}:2: date: bad date '2024-02-30' (expected an ISO date, YYYY-MM-DD)",
        f"{enforcement}:3: date: bad date '03/01/2024' (expected an ISO date, YYYY-MM-DD)",
        f"{enforcement}:4: urn: enforcement for unknown URN SC999999 (not in the homes file)",
    ]


def test_every_problem_in_both_files_is_listed_at_once(tmp_path: Path) -> None:
    homes = write_csv(
        tmp_path / "homes.csv",
        HOME_COLUMNS,
        [home(status="open", postcode="nowhere"), home(urn="SC100002", provider_type="individual")],
    )
    enforcement = write_csv(tmp_path / "e.csv", ENFORCEMENT_COLUMNS, [{"urn": "X1", "date": "", "nature": "n"}])
    assert problems(homes, enforcement) == [
        f"{homes}:2: postcode: 'nowhere' is not a UK postcode",
        f"{homes}:2: status: 'open' is not one of registered, suspended, closed",
        f"{homes}:3: responsible_individual_name: only given when the provider is an organisation",
        f"{homes}:3: responsible_individual_address: only given when the provider is an organisation",
        f"{enforcement}:2: date: required value is empty",
        f"{enforcement}:2: urn: enforcement for unknown URN X1 (not in the homes file)",
    ]


def test_organisation_needs_a_responsible_individual(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "homes.csv", HOME_COLUMNS, [home(responsible_individual_name="")])
    assert problems(path) == [f"{path}:2: responsible_individual_name: required for an organisation"]


def test_bytes_that_are_not_utf8_are_refused_with_their_line(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "homes.csv", HOME_COLUMNS, [home()])
    path.write_bytes(path.read_bytes().replace(b"Oakfield", b"Oakf\xe9ld"))
    assert problems(path) == [f"{path}:2: not UTF-8 text (invalid byte 0xe9); save the file as UTF-8"]


def test_invisible_characters_are_refused(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "homes.csv", HOME_COLUMNS, [home(name="Oak\u200bfield")])
    assert problems(path) == [f"{path}:2: name: contains control or invisible formatting characters"]


def test_empty_and_headerless_files_are_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert problems(empty) == [f"{empty}: the file is empty (expected a header row)"]
    header_only = write_csv(tmp_path / "header.csv", HOME_COLUMNS, [])
    assert problems(header_only) == [f"{header_only}: the file holds no homes (refusing to empty the register)"]


def test_missing_file_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    absent = tmp_path / "absent.csv"
    assert problems(absent) == [f"{absent}: cannot read file: No such file or directory"]


def test_row_with_wrong_field_count(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "homes.csv", HOME_COLUMNS, [home()])
    with path.open("a") as handle:
        handle.write("SC100009,only,three\n")
    assert problems(path) == [f"{path}:3: row has 3 fields, the header has 15"]


def test_quoted_newlines_keep_line_numbers_right(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "homes.csv",
        HOME_COLUMNS,
        [home(address="12 Mill Lane\nAshford Green"), home(urn="SC1", status="x")],
    )
    assert problems(path) == [f"{path}:4: status: 'x' is not one of registered, suspended, closed"]
    assert (
        parse_register(write_csv(tmp_path / "ok.csv", HOME_COLUMNS, [home(address="12 Mill Lane\nAshford")]))
        .homes[0]
        .address
        == "12 Mill Lane Ashford"
    )


def test_the_synthetic_register_passes_every_check(tmp_path: Path) -> None:
    summary = write_sample(tmp_path, 2000, seed=7)
    parsed = parse_register(summary.homes_path, summary.enforcement_path)
    assert len(parsed.homes) == 2000
    assert len(parsed.enforcement) == summary.enforcement_actions > 0
    assert {h.status for h in parsed.homes} == {"registered", "suspended", "closed"}
    assert {h.provider_type for h in parsed.homes} == {"individual", "organisation"}


def test_the_synthetic_register_is_reproducible(tmp_path: Path) -> None:
    first = write_sample(tmp_path / "a", 50, seed=3)
    second = write_sample(tmp_path / "b", 50, seed=3)
    assert first.homes_path.read_bytes() == second.homes_path.read_bytes()


# ---------------------------------------------------------------- through the CLI, on both databases


def show(gateway: Gateway) -> dict[str, object]:
    result: dict[str, object] = json.loads(gateway.ok("register", "show", "--json"))
    return result


def test_import_replaces_the_register_and_records_it(gateway: Gateway, tmp_path: Path) -> None:
    sample = write_sample(tmp_path / "register", 300)
    out = gateway.ok(
        "register", "import", "--actor", "alice",
        "--homes", str(sample.homes_path), "--enforcement", str(sample.enforcement_path),
    )  # fmt: skip
    assert f"imported 300 homes and {sample.enforcement_actions} enforcement actions" in out
    summary = show(gateway)
    assert summary["homes"] == 300
    areas = summary["areas"]
    assert isinstance(areas, list)
    assert sum(a["enforcement_actions"] for a in areas) == sample.enforcement_actions

    smaller = write_sample(tmp_path / "smaller", 40, seed=99)
    assert "replaced 300 homes" in gateway.ok("register", "import", "--homes", str(smaller.homes_path))
    assert show(gateway)["homes"] == 40

    records = json.loads(gateway.ok("audit", "list", "--json"))
    imports = [r for r in records if r["action"] == "register.import"]
    assert imports[0]["actor"] == "alice"
    assert imports[0]["details"]["homes_sha256"] == hashlib.sha256(sample.homes_path.read_bytes()).hexdigest()
    assert imports[0]["details"]["homes"] == 300
    assert imports[1]["details"]["enforcement_sha256"] is None


def test_a_refused_file_leaves_the_register_untouched(gateway: Gateway, tmp_path: Path) -> None:
    sample = write_sample(tmp_path / "register", 100)
    gateway.ok("register", "import", "--homes", str(sample.homes_path))
    bad = write_csv(tmp_path / "bad.csv", HOME_COLUMNS, [home(), home(urn="SC100002", local_authority="Gotham")])
    result = gateway.run("register", "import", "--homes", str(bad))
    assert result.code == 65
    assert result.err.splitlines() == [
        f"{bad}:3: local_authority: unknown local authority 'Gotham'",
        "gateway: error: register refused, nothing imported: 1 problem found",
    ]
    assert show(gateway)["homes"] == 100
    assert [r["action"] for r in json.loads(gateway.ok("audit", "list", "--json"))].count("register.import") == 1


def test_a_bad_homes_header_does_not_flood_enforcement_with_unknown_urns(tmp_path: Path) -> None:
    homes = write_csv(tmp_path / "homes.csv", [*HOME_COLUMNS, "notes"], [home(notes="x")])
    enforcement = write_csv(
        tmp_path / "e.csv", ENFORCEMENT_COLUMNS, [{"urn": "SC100001", "date": "2024-01-01", "nature": "n"}]
    )
    assert problems(homes, enforcement) == [
        f"{homes}:1: notes: unknown column (only Schedule 5 paragraphs 1, 2, 3 and 10 data may be imported)"
    ]


def test_check_needs_no_configuration(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sample = write_sample(tmp_path / "register", 5)
    code = main(
        ["--config", str(tmp_path / "absent.toml"), "register", "import", "--check", "--homes", str(sample.homes_path)]
    )
    assert code == 0
    assert capsys.readouterr().out.startswith("register OK: 5 homes")


def test_import_without_enforcement_file_warns(gateway: Gateway, tmp_path: Path) -> None:
    sample = write_sample(tmp_path / "register", 5)
    result = gateway.run("register", "import", "--homes", str(sample.homes_path))
    assert result.code == 0
    assert "warning: no --enforcement file given: the register will hold no enforcement actions" in result.err


def test_check_only_imports_nothing(gateway: Gateway, tmp_path: Path) -> None:
    sample = write_sample(tmp_path / "register", 20)
    out = gateway.ok("register", "import", "--check", "--homes", str(sample.homes_path))
    assert out.startswith("register OK: 20 homes")
    assert show(gateway)["homes"] == 0


def test_sample_command_refuses_nonsense_counts(gateway: Gateway, tmp_path: Path) -> None:
    result = gateway.run("register", "sample", "--homes", "0", "--out", str(tmp_path / "x"))
    assert result.code == 1
    assert result.err.startswith("gateway: error: ")
    assert len(result.err.splitlines()) == 1


async def test_concurrent_imports_never_mix_two_files(migrated_settings: DatabaseSettings, tmp_path: Path) -> None:
    """Two imports at once end with one file's register or the other's, never both merged."""
    settings = migrated_settings
    first = parse_register(write_sample(tmp_path / "a", 1500, seed=1).homes_path)
    renamed = [h.__class__(**{**h.__dict__, "urn": "X" + h.urn}) for h in parse_register(
        write_sample(tmp_path / "b", 1500, seed=2).homes_path).homes]  # fmt: skip
    second = first.__class__(tuple(renamed), (), first.homes_file, None)
    writers = [create_database(settings) for _ in range(2)]
    try:
        await asyncio.gather(
            import_register(writers[0], first, actor="one"), import_register(writers[1], second, actor="two")
        )
        async with writers[0].transaction(write=False) as session:
            urns = (await session.execute(select(Home.urn))).scalars().all()
    finally:
        for db in writers:
            await db.close()
    assert len(urns) == 1500
    assert len({urn[0] for urn in urns}) == 1, "the register mixes both files"


def test_hidden_characters_and_unicode_line_breaks_are_refused_at_their_line(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "homes.csv",
        HOME_COLUMNS,
        [
            home(name="Oak\u2028House"),
            home(urn="SC100002", address="12 Mill Lane\n\tAshford"),
            home(urn="SC100003", postcode="nope"),
        ],
    )
    assert problems(path) == [
        f"{path}:2: name: contains control or invisible formatting characters",
        f"{path}:3: address: contains control or invisible formatting characters",
        f"{path}:5: postcode: 'nope' is not a UK postcode",
    ]


def test_non_ascii_look_alikes_are_not_folded_into_valid_values(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "homes.csv", HOME_COLUMNS, [home(urn="\u00dfC1", postcode="\u017fy1 1aa")])
    assert problems(path) == [
        f"{path}:2: urn: '\u00dfC1' is not a URN (letters and digits, at most 20)",
        f"{path}:2: postcode: '\u017fy1 1aa' is not a UK postcode",
    ]


def test_telephone_longer_than_its_column_is_refused(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "homes.csv", HOME_COLUMNS, [home(telephone="(" * 50 + "01632960000")])
    assert problems(path) == [f"{path}:2: telephone: {'(' * 50 + '01632960000'!r} is not a telephone number"]
