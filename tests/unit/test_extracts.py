"""The disclosure's CSV files: Schedule 5 columns only, marked, and safe to open in a spreadsheet."""

from __future__ import annotations

import csv
import datetime as dt
import io

from gateway.extracts import ENFORCEMENT_EXTRACT_COLUMNS, HOME_EXTRACT_COLUMNS, build_extract
from tests.support.register import FakeAction, FakeHome


def rows(content: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(content.decode("utf-8"))))


def test_files_carry_the_marking_and_only_the_disclosed_columns() -> None:
    extract = build_extract(
        [FakeHome("SC1"), FakeHome("SC2")],
        [FakeAction("SC1", dt.date(2024, 1, 3), "Compliance notice"), FakeAction("SC9", dt.date(2024, 1, 4), "x")],
        marking="OFFICIAL-SENSITIVE",
        reference="R-1",
    )
    assert extract.homes.name == "OFFICIAL-SENSITIVE-R-1-homes.csv"
    assert extract.enforcement.name == "OFFICIAL-SENSITIVE-R-1-enforcement.csv"
    homes = rows(extract.homes.content)
    assert homes[0] == ["OFFICIAL-SENSITIVE"]
    assert homes[1] == list(HOME_EXTRACT_COLUMNS)
    assert "status" not in homes[1]
    assert "provider_type" not in homes[1]
    assert [r[0] for r in homes[2:]] == ["SC1", "SC2"]
    enforcement = rows(extract.enforcement.content)
    assert enforcement[:2] == [["OFFICIAL-SENSITIVE"], list(ENFORCEMENT_EXTRACT_COLUMNS)]
    # SC9 is not in this disclosure, so its action is not either.
    assert enforcement[2:] == [["SC1", "2024-01-03", "Compliance notice"]]
    assert (extract.home_count, extract.enforcement_count, extract.urns) == (2, 1, ("SC1", "SC2"))


def test_every_cell_that_a_spreadsheet_would_run_is_defused() -> None:
    extract = build_extract([FakeHome("SC1")], [], marking="OFFICIAL-SENSITIVE", reference="R-2")
    row = dict(zip(HOME_EXTRACT_COLUMNS, rows(extract.homes.content)[2], strict=True))
    assert row["telephone"] == "'+44 1632 960001"
    assert row["provider_name"].startswith("'=HYPERLINK")
    assert row["provider_address"] == "'@SUM(1+1)"
    assert row["responsible_individual_name"] == "'-2+3"
    assert row["responsible_individual_address"] == "'\tTabbed"
    assert row["manager_name"] == ""


def test_the_digest_covers_both_files() -> None:
    one = build_extract([FakeHome("SC1")], [], marking="OFFICIAL-SENSITIVE", reference="R")
    same = build_extract([FakeHome("SC1")], [], marking="OFFICIAL-SENSITIVE", reference="R")
    other = build_extract([FakeHome("SC1", name="Other")], [], marking="OFFICIAL-SENSITIVE", reference="R")
    assert one.sha256 == same.sha256 != other.sha256
