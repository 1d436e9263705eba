"""Floods meet limits: answers to one authority a day, impostor notices, alerts an hour, and mail too big or with
too many parts to parse."""

from __future__ import annotations

import asyncio
import json

from gateway import pipeline
from gateway.compose import Templates
from gateway.config import load_config
from gateway.crypto import Keyring
from gateway.db.engine import create_database
from gateway.values import Context
from tests.support.addresses import ADMIN_ADDRESS, POLICE_ADDRESS
from tests.support.gateway_cli import Gateway
from tests.support.keys import AuthorityKeys
from tests.support.live import alert_text, limited, process, sent
from tests.support.requests import FROM_POLICE, request_from_police, unsigned


def test_answers_to_one_authority_are_limited_with_one_notice(live: Gateway, keys: AuthorityKeys) -> None:
    limited(live, answers_per_day=2)
    kinds = [process(live, request_from_police(keys, message_id=f"<n{i}@x>"), f"{i}.eml")["kind"] for i in range(4)]
    assert kinds == ["answered", "answered", "quarantined", "quarantined"]
    counts = sent(live)
    assert counts[("disclosure", POLICE_ADDRESS)] == 2
    assert counts[("limit-notice", POLICE_ADDRESS)] == 1  # told once, not once per request
    outcome = process(live, request_from_police(keys, message_id="<n9@x>"), "9.eml")
    assert "the limit of 2 answers a day to West Mercia Police is reached" in str(outcome["reason"])
    assert sent(live)[("limit-notice", POLICE_ADDRESS)] == 1


async def test_requests_decided_side_by_side_cannot_pass_the_daily_limit_together(
    live: Gateway, keys: AuthorityKeys
) -> None:
    limited(live, answers_per_day=1)
    config = load_config(live.config_path)
    db = create_database(config.database)
    ctx = Context(config, db, Keyring(config.gpg.home), Templates())
    try:  # three at once, as the daemon's workers (or two gateways) may decide them: each sees none answered yet
        requests = [request_from_police(keys, message_id=f"<side{i}@x>") for i in range(3)]
        outcomes = await asyncio.gather(*(pipeline.process(ctx, raw, source="imap") for raw in requests))
    finally:
        await db.close()
    assert sorted(o.kind for o in outcomes) == ["answered", "quarantined", "quarantined"]
    counts = await asyncio.to_thread(sent, live)
    assert counts[("disclosure", POLICE_ADDRESS)] == 1


def test_impostor_notices_to_an_authority_are_limited(live: Gateway, keys: AuthorityKeys) -> None:
    limited(live, impostor_notices_per_day=2, alerts_per_hour=100)
    for i in range(4):
        raw = unsigned(FROM_POLICE + f"Message-ID: <i{i}@attacker.example>\n")
        assert process(live, raw, f"{i}.eml")["kind"] == "quarantined"
    counts = sent(live)
    assert counts[("impostor-notice", POLICE_ADDRESS)] == 2
    assert counts[("alert", ADMIN_ADDRESS)] == 4


def test_alerts_over_the_hourly_limit_are_held_and_summarised_once(live: Gateway, keys: AuthorityKeys) -> None:
    limited(live, alerts_per_hour=2, impostor_notices_per_day=0)
    for i in range(5):
        raw = unsigned(FROM_POLICE + f"Message-ID: <f{i}@attacker.example>\n")
        assert process(live, raw, f"{i}.eml")["kind"] == "quarantined"  # every one recorded all the same
    assert sent(live)[("alert", ADMIN_ADDRESS)] == 2
    out = live.ok("schedule", "run")
    assert "1 alert summary" in out
    assert sent(live)[("alert", ADMIN_ADDRESS)] == 3
    summary = alert_text(live)
    assert "3 messages were quarantined without an alert each" in summary
    assert "1 alert summary" not in live.ok("schedule", "run")  # nothing held since: no second summary
    records = [r for r in json.loads(live.ok("audit", "list", "--json")) if r["action"] == "alert.summary"]
    assert len(records) == 1


def test_oversized_mail_is_quarantined_unparsed(live: Gateway, keys: AuthorityKeys) -> None:
    limited(live, max_message_bytes=65536)
    big = request_from_police(keys) + b"\r\n" + b"x" * 70000
    outcome = process(live, big)
    assert outcome["kind"] == "quarantined"
    assert "over the size limit of 65536 bytes: not parsed" in str(outcome["reason"])
    parts = FROM_POLICE + 'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="b"\n'
    many = unsigned(parts, "".join("--b\r\nContent-Type: text/plain\r\n\r\nx\r\n" for _ in range(1000)) + "--b--\r\n")
    outcome = process(live, many, "many.eml")
    assert outcome["kind"] == "quarantined"
    assert "more than 200 MIME parts: not parsed" in str(outcome["reason"])
    assert sent(live)[("disclosure", POLICE_ADDRESS)] == 0
