"""The two-person rule: a change is made only when two different registered admin keys signed its statement."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

from sqlalchemy import text

from gateway.config import load_config
from gateway.crypto import kill_agent
from gateway.db.engine import create_database
from tests.support.addresses import POLICE_ADDRESS
from tests.support.admins import add_police, signature_file, two_person
from tests.support.gateway_cli import Gateway
from tests.support.keys import AdminKeys, AuthorityKeys, run_gpg


def authorities(gateway: Gateway) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = json.loads(gateway.ok("authority", "list", "--json"))
    return rows


def keyring_fingerprints(gateway: Gateway) -> str:
    return subprocess.run(
        ["gpg", "--homedir", str(gateway.gnupg_home), "--batch", "--with-colons", "--list-keys"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip


def changes(gateway: Gateway) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = json.loads(gateway.ok("change", "list", "--all", "--json"))
    return rows


def test_an_addition_needs_two_admin_keys_and_the_audit_names_both(
    gateway: Gateway, keys: AuthorityKeys, admin_keys: AdminKeys
) -> None:
    alice, bob = admin_keys.alice, admin_keys.bob
    two_person(gateway, admin_keys)
    asked = add_police(gateway, keys.police, *alice.signing())
    assert asked.code == 0, asked.err
    assert asked.out.startswith("change 1 proposed; it needs two admins' signatures.")
    assert f"change 1 signed by its proposer, admin Alice ({alice.fingerprint})" in asked.out
    assert authorities(gateway) == []  # nothing yet: alice alone cannot add an address
    assert keys.police.fingerprint not in keyring_fingerprints(gateway)  # the rehearsal left no key behind

    statement = gateway.ok("change", "show", "1")
    assert statement in asked.out  # what was shown when proposing is what is signed
    lines = statement.splitlines()
    assert lines[3:7] == ["change: 1", 'kind: "add"', 'authority: "West Mercia Police"', 'authority-kind: "police"']
    assert 'area: "West Mercia"' in lines
    assert f'address: "{POLICE_ADDRESS}"' in lines
    assert f'key-fingerprint: "{keys.police.fingerprint}"' in lines
    assert f'key-user-id: "West Mercia Police <{POLICE_ADDRESS}>"' in lines
    assert any(line.startswith('key-algorithm: "primary EdDSA ed25519 sign,certify expires 20') for line in lines)
    assert any(line.startswith('key-algorithm: "subkey ECDH cv25519 encrypt expires 20') for line in lines)
    assert any(line.startswith('key-expires: "20') for line in lines)

    # Alice again, under another name: the name proves nothing, the key is the same.
    same = gateway.run("--actor", "bob", "change", "approve", "1", *alice.signing())
    assert same.code == 1
    assert same.err.strip() == (
        f"gateway: error: change 1 was proposed with admin key {alice.fingerprint}: "
        "a different admin's key must approve it"
    )
    stranger = gateway.run("change", "approve", "1", *admin_keys.mallory.signing())
    assert stranger.code == 1
    assert "the signature is not by a registered admin's key" in stranger.err
    other_text = signature_file(gateway, bob, statement.replace("West Mercia Police", "West Mercia Police "))
    altered = gateway.run("change", "approve", "1", "--signature", other_text)
    assert altered.code == 1
    assert "the signature does not match the signed part" in altered.err
    assert authorities(gateway) == []

    # Bob signs on his own machine, from the statement alone, and hands over the signature.
    approved = gateway.ok("change", "approve", "1", "--signature", signature_file(gateway, bob, statement))
    assert approved.startswith("added authority 'West Mercia Police'")
    [added] = authorities(gateway)
    assert added["addresses"] == [POLICE_ADDRESS]
    [change] = changes(gateway)
    assert (change["status"], change["proposer"], change["approver"]) == (
        "approved",
        alice.fingerprint,
        bob.fingerprint,
    )
    again = gateway.run("change", "approve", "1", *admin_keys.bob.signing())
    assert again.err.strip() == "gateway: error: change 1 was already approved"
    records = json.loads(gateway.ok("audit", "list", "--json"))
    trail = [(r["actor"], r["action"]) for r in records if r["action"].startswith(("change.", "authority."))]
    assert [action for _, action in trail] == ["change.propose", "change.sign", "change.approve", "authority.add"]
    assert trail[1][0] == f"admin {alice.fingerprint}"
    assert trail[2][0] == f"admin {bob.fingerprint}"
    assert trail[3][0] == f"admin {alice.fingerprint}, approved by admin {bob.fingerprint}"
    approval = next(r for r in records if r["action"] == "change.approve")
    assert (approval["details"]["proposer"], approval["details"]["approver"]) == (alice.fingerprint, bob.fingerprint)
    assert gateway.ok("audit", "verify")


def test_an_unsigned_proposal_waits_for_its_proposer_and_a_signature_cannot_move_to_another_change(
    gateway: Gateway, keys: AuthorityKeys, admin_keys: AdminKeys
) -> None:
    alice, bob = admin_keys.alice, admin_keys.bob
    two_person(gateway, admin_keys)
    assert add_police(gateway, keys.police).code == 0  # proposed, signed by nobody yet
    unsigned = gateway.run("change", "approve", "1", *bob.signing())
    assert unsigned.code == 1
    assert "change 1 is not signed by its proposer yet" in unsigned.err
    first = gateway.ok("change", "show", "1")
    gateway.ok("change", "sign", "1", "--signature", signature_file(gateway, alice, first, "alice.asc"))
    bobs = signature_file(gateway, bob, first, "bob.asc")
    gateway.ok("change", "reject", "1")

    # The very same change proposed again: only its id differs, and that is enough.
    assert add_police(gateway, keys.police, *alice.signing()).code == 0
    replayed = gateway.run("change", "approve", "2", "--signature", bobs)
    assert replayed.code == 1
    assert "change 2 not approved: the signature is not good" in replayed.err
    assert authorities(gateway) == []
    gateway.ok("change", "approve", "2", *bob.signing())
    assert [c["status"] for c in changes(gateway)] == ["rejected", "approved"]


def test_a_bad_change_is_refused_when_asked_not_when_approved(
    gateway: Gateway, keys: AuthorityKeys, admin_keys: AdminKeys
) -> None:
    two_person(gateway, admin_keys)
    refused = add_police(gateway, keys.expired, *admin_keys.alice.signing())
    assert refused.code == 1
    assert "expired" in refused.err
    assert json.loads(gateway.ok("change", "list", "--json")) == []


def test_key_and_address_changes_and_resume_wait_suspension_does_not(
    gateway: Gateway, keys: AuthorityKeys, admin_keys: AdminKeys
) -> None:
    assert add_police(gateway, keys.police).code == 0  # set up as one admin
    alice, bob = admin_keys.alice, admin_keys.bob
    two_person(gateway, admin_keys)
    new_key = gateway.directory / "renewed.asc"
    new_key.write_bytes(keys.police_renewed.public)
    gateway.ok("authority", "set-key", "West Mercia Police", str(new_key), *alice.signing())
    gateway.ok("authority", "update", "West Mercia Police", "--add-email", "x@westmercia.police.example",
               "--kind", "local-authority", "--area", "  shropshire ", *alice.signing())  # fmt: skip
    assert authorities(gateway)[0]["key_fingerprint"] == keys.police.fingerprint
    assert authorities(gateway)[0]["addresses"] == [POLICE_ADDRESS]
    shown = gateway.ok("change", "show", "1")
    assert f'key-fingerprint: "{keys.police_renewed.fingerprint}"' in shown
    assert 'key-user-id: "West Mercia Police (2027) <disclosures@westmercia.police.example>"' in shown
    update = gateway.ok("change", "show", "2").splitlines()
    assert update[6:] == [
        'new-kind: "local-authority"',
        'new-area: "Shropshire"',
        'add-address: "x@westmercia.police.example"',
    ]

    gateway.ok("authority", "suspend", "West Mercia Police", "--actor", "alice")  # takes access away: at once
    assert authorities(gateway)[0]["status"] == "suspended"
    gateway.ok("authority", "resume", "West Mercia Police", *alice.signing())
    assert authorities(gateway)[0]["status"] == "suspended"

    assert "rejected" in gateway.ok("change", "reject", "2", "--actor", "bob")
    gateway.ok("change", "approve", "1", *bob.signing())
    gateway.ok("change", "approve", "3", *bob.signing())
    [police] = authorities(gateway)
    assert (police["key_fingerprint"], police["status"]) == (keys.police_renewed.fingerprint, "active")
    assert police["addresses"] == [POLICE_ADDRESS]  # the rejected address never arrived
    assert [c["status"] for c in changes(gateway)] == ["approved", "rejected", "approved"]


def test_what_is_not_a_good_admin_signature_is_a_clear_error(
    gateway: Gateway, keys: AuthorityKeys, admin_keys: AdminKeys
) -> None:
    two_person(gateway, admin_keys)
    assert add_police(gateway, keys.police).code == 0
    garbage = gateway.directory / "garbage.asc"
    garbage.write_bytes(b"-----BEGIN PGP SIGNATURE-----\n\nnonsense\n-----END PGP SIGNATURE-----\n")
    binary = gateway.directory / "binary.sig"
    binary.write_bytes(run_gpg(admin_keys.alice.home, "--detach-sign", data=gateway.ok("change", "show", "1").encode()))
    not_armoured = gateway.run("change", "sign", "1", "--signature", str(binary))
    assert not_armoured.err.strip() == (
        "gateway: error: change 1 not signed: give an ASCII-armoured detached signature (gpg --armor --detach-sign)"
    )
    for argv in (
        ("change", "sign", "1", "--signature", str(garbage)),
        ("change", "sign", "1", "--signature", str(gateway.directory / "none.asc")),
        ("change", "sign", "2", "--signature", str(garbage)),
        ("change", "sign", "1", "--gpg-home", str(admin_keys.alice.home), "--local-user", "0" * 40),
        ("change", "sign", "1", "--signature", str(garbage), *admin_keys.alice.signing()),
    ):
        result = gateway.run(*argv)
        assert result.code in (1, 64), argv
        assert result.err.startswith("gateway: error: "), argv
        assert len(result.err.splitlines()) == 1, result.err
    assert [c["proposer"] for c in changes(gateway)] == [None]


def test_a_signature_for_one_gateways_change_does_not_hold_on_another(
    gateway: Gateway, keys: AuthorityKeys, admin_keys: AdminKeys, tmp_path: Path
) -> None:
    other = Gateway(tmp_path / "other", f"sqlite:///{tmp_path / 'other' / 'gateway.db'}")
    other.directory.mkdir()
    other.write_config()
    try:
        other.signing_key = other.ok("init").split('signing_key = "')[1].split('"')[0]
        for each in (gateway, other):
            two_person(each, admin_keys)
            assert add_police(each, keys.police, *admin_keys.alice.signing()).code == 0
        here, there = gateway.ok("change", "show", "1"), other.ok("change", "show", "1")
        assert here != there  # the same change, numbered 1 on both, but each names its own database
        bobs = signature_file(gateway, admin_keys.bob, here)
        elsewhere = other.run("change", "approve", "1", "--signature", bobs)
        assert elsewhere.code == 1
        assert "change 1 not approved: the signature is not good" in elsewhere.err
        other.ok("change", "approve", "1", "--signature", signature_file(other, admin_keys.bob, there, "there.asc"))
    finally:
        kill_agent(other.gnupg_home)


def test_a_change_altered_in_the_database_after_it_was_signed_is_not_made(
    gateway: Gateway, keys: AuthorityKeys, admin_keys: AdminKeys
) -> None:
    two_person(gateway, admin_keys)
    assert add_police(gateway, keys.police, *admin_keys.alice.signing()).code == 0

    async def redirect() -> None:  # someone with the database's password adds their own address
        db = create_database(load_config(gateway.config_path).database)
        try:
            async with db.transaction() as session:
                payload = (await session.execute(text("SELECT payload FROM pending_changes"))).scalar_one()
                arguments = json.loads(payload)
                arguments["emails"].append("me@attacker.example")
                await session.execute(text("UPDATE pending_changes SET payload = :p"), {"p": json.dumps(arguments)})
        finally:
            await db.close()

    asyncio.run(redirect())
    refused = gateway.run("change", "approve", "1", *admin_keys.bob.signing())
    assert refused.code == 1
    assert "change 1's statement no longer matches the change as stored here" in refused.err
    assert authorities(gateway) == []


def test_an_expired_key_cannot_be_an_admin(gateway: Gateway, keys: AuthorityKeys) -> None:
    expired = gateway.run("admin", "add", "--key", str(keys.expired.write(gateway.directory, "e.asc")), "--name", "E")
    assert expired.code == 1
    assert expired.err.strip() == (
        f"gateway: error: key {keys.expired.fingerprint} refused as an admin key: "
        "the key has expired, or cannot sign any more"
    )
    assert json.loads(gateway.ok("admin", "list", "--json")) == []
