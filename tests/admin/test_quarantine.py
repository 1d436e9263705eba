"""Quarantine for people: list, show, release through the pipeline, discard; each audited with the actor."""

from __future__ import annotations

import asyncio
import json

from gateway.dev.dovecot import ImapServer
from tests.support.addresses import ADMIN_ADDRESS, GATEWAY_ADDRESS, POLICE_ADDRESS
from tests.support.gateway_cli import Gateway
from tests.support.keys import AuthorityKeys
from tests.support.live import alert_text, limited, process, sent
from tests.support.mailbox import counts_are, eventually, watching
from tests.support.requests import FROM_POLICE, REQUEST, request_from_police


def held(gateway: Gateway, *flags: str) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = json.loads(gateway.ok("quarantine", "list", "--json", *flags))
    return rows


def test_a_request_held_by_the_daily_limit_is_released_by_a_person(live: Gateway, keys: AuthorityKeys) -> None:
    limited(live, answers_per_day=1)
    assert process(live, request_from_police(keys, message_id="<q1@x>"), "1.eml")["kind"] == "answered"
    outcome = process(live, request_from_police(keys, message_id="<q2@x>"), "2.eml")
    assert outcome["kind"] == "quarantined"
    [row] = held(live)
    assert (row["id"], row["status"], row["sender"]) == (outcome["inbound_id"], "held", POLICE_ADDRESS)

    shown = json.loads(live.ok("quarantine", "show", str(row["id"]), "--json"))
    assert "the limit of 1 answers a day" in shown["why"]
    assert ["Message-ID", "<q2@x>"] in shown["headers"]
    assert {(mail["kind"], mail["recipient"]) for mail in shown["sent"]} == {
        ("alert", ADMIN_ADDRESS), ("limit-notice", POLICE_ADDRESS)
    }  # fmt: skip

    out = live.ok("quarantine", "release", str(row["id"]), "--actor", "alice")
    assert out.startswith(f"message {row['id']} released: answered:")
    assert sent(live)[("disclosure", POLICE_ADDRESS)] == 2
    assert held(live) == []
    assert held(live, "--all")[0]["status"] == "released"
    again = live.run("quarantine", "release", str(row["id"]))
    assert again.code == 1
    assert again.err.strip() == f"gateway: error: message {row['id']} was already released by alice"
    records = [r for r in json.loads(live.ok("audit", "list", "--json")) if r["actor"] == "alice"]
    assert [r["action"] for r in records] == ["quarantine.release"]
    assert live.run("audit", "verify").code == 0


def test_an_impostor_stays_held_and_can_be_discarded(live: Gateway) -> None:
    raw = (FROM_POLICE.replace("\n", "\r\n") + "\r\n" + REQUEST).encode()  # unsigned, from the police address
    outcome = process(live, raw)
    ident = str(outcome["inbound_id"])
    refused = live.run("quarantine", "release", ident, "--actor", "bob")
    assert refused.code == 1
    assert refused.err.startswith(f"gateway: error: message {ident} still quarantined: authentication failed")
    assert held(live)[0]["status"] == "held"
    assert sent(live)[("disclosure", POLICE_ADDRESS)] == 0
    assert "discarded" in live.ok("quarantine", "discard", ident, "--actor", "bob")
    assert held(live) == []
    assert [r["status"] for r in held(live, "--all")] == ["discarded"]
    actions = [r["action"] for r in json.loads(live.ok("audit", "list", "--json")) if r["actor"] == "bob"]
    assert actions == ["quarantine.release-refused", "quarantine.discard"]
    missing = live.run("quarantine", "show", "999")
    assert missing.err.strip() == "gateway: error: no quarantined message 999 (see `gateway quarantine list`)"


def test_an_attackers_text_cannot_drive_the_admins_terminal(live: Gateway) -> None:
    raw = (
        f'From: "\x1b[2J\x1b]0;pwned\x07" <{POLICE_ADDRESS}>, x@attacker.example\r\nTo: {GATEWAY_ADDRESS}\r\n'
        f"Subject: \x1b[31mred\r\n\r\n{REQUEST}"
    ).encode()
    assert process(live, raw)["kind"] == "quarantined"
    listing = live.ok("quarantine", "list")
    shown = live.ok("quarantine", "show", str(held(live)[0]["id"]))
    for out in (listing, shown):
        assert "\x1b" not in out
        assert "\x07" not in out
    assert "Subject: ?[31mred" in shown


async def test_the_quarantine_folder_follows_a_release_and_a_discard(
    dovecot_server: ImapServer, live: Gateway, keys: AuthorityKeys
) -> None:
    limited(live, answers_per_day=1)
    async with watching(live, dovecot_server) as watched:
        await asyncio.wait_for(watched.watcher.connected.wait(), 20)
        dovecot_server.deliver(request_from_police(keys, message_id="<m1@x>"))
        dovecot_server.deliver(request_from_police(keys, message_id="<m2@x>"))  # over the daily limit: held
        dovecot_server.deliver((FROM_POLICE.replace("\n", "\r\n") + "\r\n" + REQUEST).encode())  # an impostor
        await eventually(counts_are(dovecot_server, {"INBOX": 0, "Processed": 1, "Quarantine": 2}))
        first, second = await asyncio.to_thread(held, live)
        await asyncio.to_thread(live.ok, "quarantine", "release", str(first["id"]), "--actor", "alice")
        await asyncio.to_thread(live.ok, "quarantine", "discard", str(second["id"]), "--actor", "alice")
        dovecot_server.deliver(b"From: nobody@else.example\r\n\r\nwake up\r\n")  # the next round settles it
        expected = {"INBOX": 0, "Processed": 2, "Rejected": 2, "Quarantine": 0}
        await eventually(counts_are(dovecot_server, expected))


def test_the_admins_alert_names_the_quarantine_commands(live: Gateway) -> None:
    raw = (FROM_POLICE.replace("\n", "\r\n") + "\r\n" + REQUEST).encode()  # unsigned, from the police address
    assert process(live, raw)["kind"] == "quarantined"
    text = " ".join(alert_text(live).split())
    assert "`gateway quarantine show ID`" in text
    assert "`gateway quarantine list`" in text
    assert "audit list" not in text


def test_quarantine_list_cuts_a_long_reason_at_a_word_and_show_names_no_decider_while_held(live: Gateway) -> None:
    raw = (FROM_POLICE.replace("\n", "\r\n") + "\r\n" + REQUEST).encode()
    ident = str(process(live, raw)["inbound_id"])
    [whole] = [row["reason"] for row in json.loads(live.ok("quarantine", "list", "--json"))]
    assert len(whole) > 80
    header, *rows = live.ok("quarantine", "list").splitlines()
    row = next(line for line in rows if line.startswith(ident))
    column = row[header.index("reason") : header.index("status")].rstrip()
    assert column.endswith(" ...")
    kept = column.removesuffix(" ...")
    assert whole.startswith(kept)
    assert whole[len(kept)] in " ,;:"  # it stops where a word does
    assert len(kept) + len(" ...") <= 80
    held = live.ok("quarantine", "show", ident)
    assert "decided_by" not in held
    assert "None" not in held
    live.ok("quarantine", "discard", ident, "--actor", "alice")
    assert "decided_by: alice" in live.ok("quarantine", "show", ident).splitlines()
