"""The two-person rule: one admin's allowlist or key change waits until a different admin approves it."""

from __future__ import annotations

import json
import subprocess

from tests.conftest import POLICE_ADDRESS, AuthorityKeys, Gateway
from tests.test_authorities import add_police


def two_person(gateway: Gateway) -> Gateway:
    gateway.second_admin = True
    gateway.write_config()
    return gateway


def authorities(gateway: Gateway) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = json.loads(gateway.ok("authority", "list", "--json"))
    return rows


def keyring_fingerprints(gateway: Gateway) -> str:
    return subprocess.run(
        ["gpg", "--homedir", str(gateway.gnupg_home), "--batch", "--with-colons", "--list-keys"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip


def test_an_addition_waits_for_a_second_admin(gateway: Gateway, keys: AuthorityKeys) -> None:
    two_person(gateway)
    asked = add_police(gateway, keys.police, "--actor", "alice")
    assert asked.code == 0, asked.err
    assert asked.out.startswith("change 1 waits for a second admin: add 'West Mercia Police'")
    assert authorities(gateway) == []  # nothing yet: alice alone cannot add an address
    assert keys.police.fingerprint not in keyring_fingerprints(gateway)  # the rehearsal left no key behind
    [pending] = json.loads(gateway.ok("change", "list", "--json"))
    assert (pending["kind"], pending["requested_by"], pending["status"]) == ("add", "alice", "pending")

    same = gateway.run("change", "approve", "1", "--actor", "alice")
    assert same.code == 1
    assert same.err.strip() == "gateway: error: change 1 was asked for by alice: a different admin must approve it"
    assert authorities(gateway) == []

    approved = gateway.ok("change", "approve", "1", "--actor", "bob")
    assert approved.startswith("added authority 'West Mercia Police'")
    [added] = authorities(gateway)
    assert added["addresses"] == [POLICE_ADDRESS]
    assert json.loads(gateway.ok("change", "list", "--json")) == []
    again = gateway.run("change", "approve", "1", "--actor", "carol")
    assert again.err.strip() == "gateway: error: change 1 was already approved by bob"
    records = json.loads(gateway.ok("audit", "list", "--json"))
    trail = [(r["actor"], r["action"]) for r in records if r["action"].startswith(("change.", "authority."))]
    assert trail == [
        ("alice", "change.propose"), ("bob", "change.approve"), ("alice, approved by bob", "authority.add"),
    ]  # fmt: skip


def test_a_bad_change_is_refused_when_asked_not_when_approved(gateway: Gateway, keys: AuthorityKeys) -> None:
    two_person(gateway)
    refused = add_police(gateway, keys.expired, "--actor", "alice")
    assert refused.code == 1
    assert "expired" in refused.err
    assert json.loads(gateway.ok("change", "list", "--json")) == []


def test_key_and_address_changes_and_resume_wait_suspension_does_not(gateway: Gateway, keys: AuthorityKeys) -> None:
    assert add_police(gateway, keys.police).code == 0  # set up as one admin
    two_person(gateway)
    new_key = gateway.directory / "renewed.asc"
    new_key.write_bytes(keys.police_renewed.public)
    gateway.ok("authority", "set-key", "West Mercia Police", str(new_key), "--actor", "alice")
    gateway.ok("authority", "update", "West Mercia Police", "--add-email", "x@westmercia.police.example",
               "--actor", "alice")  # fmt: skip
    assert authorities(gateway)[0]["key_fingerprint"] == keys.police.fingerprint
    assert authorities(gateway)[0]["addresses"] == [POLICE_ADDRESS]

    gateway.ok("authority", "suspend", "West Mercia Police", "--actor", "alice")  # takes access away: at once
    assert authorities(gateway)[0]["status"] == "suspended"
    gateway.ok("authority", "resume", "West Mercia Police", "--actor", "alice")
    assert authorities(gateway)[0]["status"] == "suspended"

    assert "rejected" in gateway.ok("change", "reject", "2", "--actor", "bob")
    gateway.ok("change", "approve", "1", "--actor", "bob")
    gateway.ok("change", "approve", "3", "--actor", "bob")
    [police] = authorities(gateway)
    assert (police["key_fingerprint"], police["status"]) == (keys.police_renewed.fingerprint, "active")
    assert police["addresses"] == [POLICE_ADDRESS]  # the rejected address never arrived
    statuses = [c["status"] for c in json.loads(gateway.ok("change", "list", "--all", "--json"))]
    assert statuses == ["approved", "rejected", "approved"]
