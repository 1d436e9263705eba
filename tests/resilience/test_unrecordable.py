"""No value a sender writes can make a message impossible to record; one that still cannot be recorded, again
and again, for a reason that is no outage, is set aside for a person and never blocks the messages behind it."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path

import pytest
import sqlalchemy.exc
from sqlalchemy import select, text

from gateway import pipeline
from gateway.compose import Templates
from gateway.config import load_config
from gateway.crypto import Keyring
from gateway.db.engine import create_database
from gateway.db.models import (
    AuditRecord,
    Disclosure,
    InboundMessage,
    QuarantinedMessage,
    RecordFailure,
    SpooledMessage,
)
from gateway.inbound.smtp import drain_spool
from gateway.values import Context
from tests.support.addresses import POLICE_ADDRESS
from tests.support.gateway_cli import Gateway
from tests.support.keys import AuthorityKeys
from tests.support.live import outbox, process
from tests.support.requests import request_from_police


def sql(gateway: Gateway, *statements: str) -> None:
    async def go() -> None:
        db = create_database(load_config(gateway.config_path).database)
        try:
            async with db.engine.begin() as connection:
                for statement in statements:
                    await connection.execute(text(statement))
        finally:
            await db.close()

    asyncio.run(go())


def rows(gateway: Gateway, model: type) -> list[object]:
    async def go() -> list[object]:
        db = create_database(load_config(gateway.config_path).database)
        try:
            async with db.transaction(write=False) as session:
                return list((await session.execute(select(model))).scalars())
        finally:
            await db.close()

    return asyncio.run(go())


def test_a_nul_and_undecodable_bytes_in_a_request_are_recorded_and_answered(live: Gateway, keys: AuthorityKeys) -> None:
    """PostgreSQL refuses U+0000 in text, and UTF-8 cannot hold the lone surrogates Python keeps for 8-bit bytes:
    both used to make the outcome impossible to record, for ever."""
    body = "Request: disclosure\r\nPurpose: Safeguarding\x00 children in our area\r\n"
    raw = request_from_police(keys, body=body, message_id="<nul\x00@westmercia.police.example>")
    raw = raw.replace(b"Subject: request", b"Subject: request \xff\xfe")
    outcome = process(live, raw)
    assert outcome["kind"] == "answered"
    [disclosure] = rows(live, Disclosure)
    assert isinstance(disclosure, Disclosure)
    assert "\x00" not in disclosure.purpose
    assert disclosure.purpose == "Safeguarding\\x00 children in our area"
    assert live.run("audit", "verify").code == 0  # hashed as stored


POISON = "poison@westmercia.police.example"


def refuse_inserts(gateway: Gateway) -> None:
    """A database that refuses one message's record, as it would a value no code path foresaw."""
    if "sqlite" in gateway.database_url:
        sql(
            gateway,
            "CREATE TRIGGER refuse BEFORE INSERT ON inbound_messages "
            f"WHEN NEW.message_id = '<{POISON}>' BEGIN SELECT RAISE(ABORT, 'refused'); END",
        )
    else:
        sql(
            gateway,
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"IF NEW.message_id = '<{POISON}>' THEN RAISE EXCEPTION 'refused'; END IF; RETURN NEW; END $$",
            "CREATE TRIGGER refuse BEFORE INSERT ON inbound_messages FOR EACH ROW EXECUTE FUNCTION refuse()",
        )


def test_a_message_that_cannot_be_recorded_is_set_aside_on_the_third_failure(
    live: Gateway, keys: AuthorityKeys, tmp_path: Path
) -> None:
    refuse_inserts(live)
    poison = request_from_police(keys, message_id=f"<{POISON}>")
    path = tmp_path / "poison.eml"
    path.write_bytes(poison)
    for _ in range(2):  # tried again, as an outage would be: the next try may succeed
        failed = live.run("process", str(path), "--json")
        assert failed.code != 0
        assert "Traceback" not in failed.err
    assert rows(live, InboundMessage) == []
    [failure] = rows(live, RecordFailure)
    assert isinstance(failure, RecordFailure)
    assert failure.count == 2

    third = json.loads(live.ok("process", str(path), "--json"))
    assert third["kind"] == "quarantined"
    assert "could not be recorded" in str(third["reason"])
    [held] = rows(live, QuarantinedMessage)
    assert isinstance(held, QuarantinedMessage)
    assert held.content == poison  # kept whole for a person
    assert [row["kind"] for row in outbox(live)] == ["alert"]  # the admins are told; nothing else is sent
    # Seen again, it is that outcome's duplicate; and the message behind it is answered as ever.
    assert json.loads(live.ok("process", str(path), "--json"))["kind"] == "duplicate"
    assert process(live, request_from_police(keys, message_id="<next@westmercia.police.example>"))["kind"] == "answered"
    assert any(isinstance(r, AuditRecord) and r.action == "inbound.quarantined" for r in rows(live, AuditRecord))


async def test_the_spool_goes_on_past_a_message_that_cannot_be_recorded(live: Gateway, keys: AuthorityKeys) -> None:
    """The daemon's spool, as `gateway run` drains it: stuck no longer than three rounds, nothing lost."""
    await asyncio.to_thread(refuse_inserts, live)
    config = load_config(live.config_path)
    db = create_database(config.database)
    ctx = Context(config, db, Keyring(config.gpg.home), Templates())
    now = dt.datetime.now(dt.UTC)
    try:
        async with db.transaction() as session:
            for raw in (request_from_police(keys, message_id=f"<{POISON}>"), request_from_police(keys)):
                session.add(
                    SpooledMessage(received_at=now, peer="127.0.0.1", mail_from=POLICE_ADDRESS, content=raw,
                                   status="pending")
                )  # fmt: skip

        async def one(raw: bytes) -> int:
            return (await pipeline.process(ctx, raw, source="smtp")).inbound_id

        for _ in range(2):
            with pytest.raises(sqlalchemy.exc.DBAPIError):
                await drain_spool(db, one)
        assert await drain_spool(db, one) == 2
        async with db.transaction(write=False) as session:
            spooled = (await session.execute(select(SpooledMessage))).scalars().all()
            outcomes = [
                (await session.get(InboundMessage, row.inbound_id)).outcome  # type: ignore[union-attr]
                for row in spooled
            ]
        assert [row.status for row in spooled] == ["done", "done"]
        assert outcomes == ["quarantined", "answered"]
    finally:
        await db.close()


def test_a_long_message_id_of_many_byte_letters_is_kept_by_its_digest(live: Gateway, keys: AuthorityKeys) -> None:
    """Too long for PostgreSQL's index as written (some 2,700 bytes at most): kept as its digest instead."""
    long_id = "<" + "\u00e9" * 990 + "@westmercia.police.example>"
    assert process(live, request_from_police(keys, message_id=long_id))["kind"] == "answered"
    [inbound] = rows(live, InboundMessage)
    assert isinstance(inbound, InboundMessage)
    assert inbound.message_id is not None
    assert inbound.message_id.startswith("sha256:")
    again = request_from_police(keys, body="Request: disclosure\r\nPurpose: again\r\n", message_id=long_id)
    assert process(live, again, "again.eml")["kind"] == "quarantined"  # the same Message-ID, told again
