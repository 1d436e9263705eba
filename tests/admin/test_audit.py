"""The audit trail: append-only, hash-chained, and `audit verify` names the first record that was tampered with."""

from __future__ import annotations

import asyncio
import csv
import io
import itertools
import json
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from gateway import audit
from gateway.config import DatabaseSettings, load_config
from gateway.db.engine import create_database
from tests.support.gateway_cli import Gateway


def seed(gateway: Gateway, count: int) -> None:
    """Real admin changes: suspending and resuming an authority would need keys, so use register imports."""
    for n in range(count):
        gateway.ok("register", "sample", "--homes", "3", "--out", str(gateway.directory / f"r{n}"), "--seed", str(n))
        gateway.ok("register", "import", "--homes", str(gateway.directory / f"r{n}" / "homes.csv"))


Statement = str | tuple[str, dict[str, object]]


async def _tamper(gateway: Gateway, *statements: Statement) -> None:
    db = create_database(load_config(gateway.config_path).database)
    try:
        async with db.engine.begin() as connection:
            # Someone with raw database access can lift the append-only guard; the chain must still catch them.
            if connection.dialect.name == "sqlite":
                await connection.execute(text("DROP TRIGGER audit_log_no_update"))
                await connection.execute(text("DROP TRIGGER audit_log_no_delete"))
            else:
                await connection.execute(text("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only"))
            for statement in statements:
                sql, params = (statement, {}) if isinstance(statement, str) else statement
                await connection.execute(text(sql), params)
    finally:
        await db.close()


def tamper(gateway: Gateway, *statements: Statement) -> None:
    asyncio.run(_tamper(gateway, *statements))


def verify(gateway: Gateway) -> tuple[int, str, str]:
    result = gateway.run("audit", "verify")
    return result.code, result.out.strip(), result.err.strip()


def test_intact_chain_verifies_and_prints_its_head(gateway: Gateway) -> None:
    seed(gateway, 3)
    code, out, _ = verify(gateway)
    assert code == 0
    records = json.loads(gateway.ok("audit", "list", "--json"))
    # Two from `gateway init` (the schema, the gateway's key), three imports.
    assert out == f"audit trail intact: 5 records; head 5 {records[-1]['hash']}"
    assert records[0]["prev_hash"] == audit.GENESIS_HASH
    assert all(later["prev_hash"] == earlier["hash"] for earlier, later in itertools.pairwise(records))


def test_edited_record_is_named(gateway: Gateway) -> None:
    seed(gateway, 3)
    tamper(gateway, "UPDATE audit_log SET actor = 'mallory' WHERE seq = 3")
    code, _, err = verify(gateway)
    assert code == 1
    assert err == (
        "gateway: error: audit trail broken: "
        "record 3 (register.import) was altered: its content does not match its hash"
    )


def test_edit_with_recomputed_hash_is_caught_by_the_next_record(gateway: Gateway) -> None:
    seed(gateway, 3)
    records = json.loads(gateway.ok("audit", "list", "--json"))
    forged = records[1]
    details = audit.canonical_json({**forged["details"], "homes": 999})
    digest = audit.chain_hash(
        prev_hash=forged["prev_hash"], seq=2, recorded_at=forged["recorded_at"], actor=forged["actor"],
        action=forged["action"], subject=forged["subject"], details=details,
    )  # fmt: skip
    tamper(gateway, ("UPDATE audit_log SET details = :d, hash = :h WHERE seq = 2", {"d": details, "h": digest}))
    code, _, err = verify(gateway)
    assert code == 1
    assert "record 3 does not follow record 2" in err


def test_deleted_record_is_named(gateway: Gateway) -> None:
    seed(gateway, 4)
    tamper(gateway, "DELETE FROM audit_log WHERE seq = 2")
    code, _, err = verify(gateway)
    assert code == 1
    assert err == "gateway: error: audit trail broken: record 2 is missing (next present is 3): records were removed"


def test_reordered_records_are_caught(gateway: Gateway) -> None:
    seed(gateway, 4)
    # Swap the positions of records 2 and 3, keeping each one's own hash and content.
    tamper(
        gateway,
        "UPDATE audit_log SET seq = 1000 WHERE seq = 2",
        "UPDATE audit_log SET seq = 2 WHERE seq = 3",
        "UPDATE audit_log SET seq = 3 WHERE seq = 1000",
    )
    code, _, err = verify(gateway)
    assert code == 1
    assert "record 2" in err
    assert "removed or reordered" in err or "was altered" in err


def test_database_refuses_to_change_history(gateway: Gateway) -> None:
    seed(gateway, 1)

    async def attempt(statement: str) -> None:
        db = create_database(load_config(gateway.config_path).database)
        try:
            async with db.engine.begin() as connection:
                await connection.execute(text(statement))
        finally:
            await db.close()

    for statement in ("UPDATE audit_log SET actor = 'x'", "DELETE FROM audit_log"):
        with pytest.raises(DBAPIError, match="audit_log is append-only"):
            asyncio.run(attempt(statement))
    assert verify(gateway)[0] == 0


def test_csv_export_defuses_spreadsheet_formulas(gateway: Gateway, tmp_path: Path) -> None:
    seed(gateway, 1)
    gateway.ok("register", "sample", "--homes", "3", "--out", str(tmp_path / "f"))
    gateway.ok("register", "import", "--actor", "=HYPERLINK(\"http://evil.example\")",
               "--homes", str(tmp_path / "f" / "homes.csv"))  # fmt: skip
    rows = list(csv.DictReader(io.StringIO(gateway.ok("audit", "export", "--format", "csv"))))
    assert len(rows) == 4
    assert rows[-1]["actor"] == '\'=HYPERLINK("http://evil.example")'
    assert json.loads(rows[2]["details"])["homes"] == 3


def test_jsonl_export_has_one_record_per_line(gateway: Gateway) -> None:
    seed(gateway, 2)
    lines = gateway.ok("audit", "export", "--format", "jsonl").splitlines()
    assert [json.loads(line)["seq"] for line in lines] == [1, 2, 3, 4]


def test_since_filters_by_time(gateway: Gateway) -> None:
    seed(gateway, 1)
    assert json.loads(gateway.ok("audit", "list", "--json", "--since", "2000-01-01"))
    assert json.loads(gateway.ok("audit", "list", "--json", "--since", "2999-01-01")) == []
    bad = gateway.run("audit", "list", "--since", "yesterday")
    assert bad.code == 64
    assert bad.err.strip() == "gateway: error: --since 'yesterday': expected an ISO date or date-time, e.g. 2026-11-01"


async def test_concurrent_writers_never_fork_the_chain(migrated_settings: DatabaseSettings) -> None:
    writers = [create_database(migrated_settings) for _ in range(3)]

    async def append(db_index: int) -> None:
        for n in range(15):
            async with writers[db_index].transaction() as session:
                await audit.record(session, actor=f"w{db_index}", action="test.append", subject=str(n), details={})

    try:
        await asyncio.gather(*(append(i) for i in range(3)))
        async with writers[0].transaction() as session:
            result = await audit.verify(session)
    finally:
        for db in writers:
            await db.close()
    assert result.ok, result.problem
    assert result.records == 45


def test_history_cannot_be_rewritten_by_an_insert(gateway: Gateway) -> None:
    seed(gateway, 2)
    dialect_statements = {
        # REPLACE's implicit delete fires no DELETE trigger in SQLite; the insert trigger must catch it.
        "sqlite": "INSERT OR REPLACE INTO audit_log SELECT seq, recorded_at, 'mallory', action, subject, details, "
        "prev_hash, hash FROM audit_log WHERE seq = 2",
        "postgresql": "INSERT INTO audit_log SELECT * FROM audit_log WHERE seq = 2 "
        "ON CONFLICT (seq) DO UPDATE SET actor = 'mallory'",
    }

    async def attempt(statement_for: dict[str, str]) -> None:
        db = create_database(load_config(gateway.config_path).database)
        try:
            async with db.engine.begin() as connection:
                await connection.execute(text(statement_for[connection.dialect.name]))
        finally:
            await db.close()

    with pytest.raises(DBAPIError, match="audit_log is append-only"):
        asyncio.run(attempt(dialect_statements))
    out_of_sequence = "INSERT INTO audit_log VALUES (99, 'x', 'x', 'x', 'x', '{}', 'x', 'x')"
    with pytest.raises(DBAPIError, match="audit_log is append-only"):
        asyncio.run(attempt({"sqlite": out_of_sequence, "postgresql": out_of_sequence}))
    assert "mallory" not in gateway.ok("audit", "list")
    assert verify(gateway)[0] == 0
