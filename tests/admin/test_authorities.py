"""The allowlist: authorities, their secure addresses and pinned keys, refused when the key is unusable."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.support.addresses import LA_ADDRESS, OCC_ADDRESS, POLICE_ADDRESS
from tests.support.admins import add_police
from tests.support.gateway_cli import Gateway, Result
from tests.support.keys import AuthorityKeys


def add_la(gateway: Gateway, key: Path, name: str = "Shropshire Council") -> Result:
    return gateway.run(
        "authority", "add", "--name", name, "--kind", "local-authority", "--area", "Shropshire",
        "--email", LA_ADDRESS, "--key", str(key),
    )  # fmt: skip


def refused(result: Result) -> str:
    assert result.code != 0
    lines = result.err.splitlines()
    assert len(lines) == 1, result.err
    assert "Traceback" not in result.err
    return lines[0]


def keyring_fingerprints(gateway: Gateway) -> set[str]:
    listing = subprocess.run(
        ["gpg", "--homedir", str(gateway.gnupg_home), "--with-colons", "--list-keys"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return {line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr")}


def test_valid_key_is_imported_and_pinned_by_fingerprint(gateway: Gateway, keys: AuthorityKeys) -> None:
    result = add_police(gateway, keys.police, "--json", "--actor", "bob")
    assert result.code == 0, result.err
    shown = json.loads(result.out)
    assert shown["name"] == "West Mercia Police"
    assert shown["area"] == "West Mercia"
    assert shown["addresses"] == [POLICE_ADDRESS]
    assert shown["key_fingerprint"] == keys.police.fingerprint
    assert shown["auth_policy"] == "signed-or-dmarc"
    assert shown["status"] == "active"
    assert keys.police.fingerprint in keyring_fingerprints(gateway)
    record = json.loads(gateway.ok("audit", "list", "--json"))[-1]
    assert (record["action"], record["actor"], record["subject"]) == (
        "authority.add",
        "bob",
        "West Mercia Police",
    )
    assert record["details"]["key_fingerprint"] == keys.police.fingerprint


def test_expired_key_is_refused(gateway: Gateway, keys: AuthorityKeys) -> None:
    message = refused(add_police(gateway, keys.expired))
    assert message == f"gateway: error: key {keys.expired.fingerprint} refused: the key expired on 2020-01-02"
    assert keys.expired.fingerprint not in keyring_fingerprints(gateway)


def test_revoked_key_is_refused(gateway: Gateway, keys: AuthorityKeys) -> None:
    message = refused(add_police(gateway, keys.revoked))
    assert message == f"gateway: error: key {keys.revoked.fingerprint} refused: the key is revoked"


def test_revocation_already_in_the_gateway_keyring_is_not_forgotten(gateway: Gateway, keys: AuthorityKeys) -> None:
    # The gateway learnt of the revocation earlier; an old copy of the key, clean on its own, must not undo that.
    revocation = gateway.directory / "revoked.asc"
    revocation.write_bytes(keys.revoked.public)
    subprocess.run(
        ["gpg", "--homedir", str(gateway.gnupg_home), "--batch", "--import", str(revocation)], check=True,
        capture_output=True,
    )  # fmt: skip
    message = refused(add_police(gateway, keys.revoked_unaware))
    assert message == f"gateway: error: key {keys.revoked.fingerprint} refused: the key is revoked"
    assert json.loads(gateway.ok("authority", "list", "--json")) == []


def test_key_without_encryption_subkey_is_refused(gateway: Gateway, keys: AuthorityKeys) -> None:
    message = refused(add_police(gateway, keys.sign_only))
    assert message == (
        f"gateway: error: key {keys.sign_only.fingerprint} refused: the key has no valid encryption-capable subkey"
    )


def test_key_without_the_authoritys_address_is_refused(gateway: Gateway, keys: AuthorityKeys) -> None:
    message = refused(add_police(gateway, keys.wrong_uid))
    assert message == (
        f"gateway: error: key {keys.wrong_uid.fingerprint} refused: none of its user IDs is one of the "
        f"authority's addresses ({POLICE_ADDRESS}); it carries someone@else.example"
    )
    assert json.loads(gateway.ok("authority", "list", "--json")) == []


def test_secret_key_material_is_refused(gateway: Gateway, keys: AuthorityKeys) -> None:
    message = refused(add_police(gateway, keys.secret))
    assert message == ("gateway: error: the key file holds secret key material: give the authority's public key only")
    secret = subprocess.run(
        ["gpg", "--homedir", str(gateway.gnupg_home), "--with-colons", "--list-secret-keys", keys.police.fingerprint],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert secret.returncode != 0


def test_two_keys_in_one_file_are_refused(gateway: Gateway, keys: AuthorityKeys) -> None:
    assert refused(add_police(gateway, keys.two_keys)) == "gateway: error: the key file holds 2 keys: give exactly one"


def test_garbage_key_file_is_refused(gateway: Gateway) -> None:
    message = refused(add_police(gateway, b"-----BEGIN PGP PUBLIC KEY BLOCK-----\nnonsense\n"))
    assert message == "gateway: error: the key file holds no OpenPGP public key"


def test_key_expiring_soon_is_accepted_with_a_warning(gateway: Gateway, keys: AuthorityKeys) -> None:
    result = add_police(gateway, keys.expiring_soon)
    assert result.code == 0
    assert f"warning: key {keys.expiring_soon.fingerprint} expires on" in result.err


def test_area_rules(gateway: Gateway, keys: AuthorityKeys, tmp_path: Path) -> None:
    key = keys.occ.write(tmp_path, "occ.asc")
    base = ["authority", "add", "--email", OCC_ADDRESS, "--key", str(key)]
    national_with_area = gateway.run(*base, "--name", "OCC", "--kind", "childrens-commissioner", "--area", "Kent")
    assert refused(national_with_area) == (
        "gateway: error: a childrens-commissioner authority is national and takes no --area"
    )
    police_without_area = gateway.run(*base, "--name", "Kent Police", "--kind", "police")
    assert refused(police_without_area) == ("gateway: error: a police authority needs --area: its police force area")
    unknown = gateway.run(*base, "--name", "Gotham", "--kind", "local-authority", "--area", "Gotham")
    assert refused(unknown) == "gateway: error: unknown local authority 'Gotham' (see `gateway areas`)"
    la_as_police = gateway.run(*base, "--name", "Salop", "--kind", "police", "--area", "Shropshire")
    assert refused(la_as_police) == "gateway: error: unknown police force area 'Shropshire' (see `gateway areas`)"
    national = gateway.ok(*base, "--name", "OCC", "--kind", "childrens-commissioner", "--json")
    assert json.loads(national)["area"] is None


def test_one_address_belongs_to_one_authority(gateway: Gateway, keys: AuthorityKeys, tmp_path: Path) -> None:
    assert add_police(gateway, keys.police).code == 0
    key = keys.police_renewed.write(tmp_path, "again.asc")
    result = gateway.run(
        "authority", "add", "--name", "Impostor", "--kind", "secretary-of-state",
        "--email", POLICE_ADDRESS.upper(), "--key", str(key),
    )  # fmt: skip
    assert (
        refused(result) == f"gateway: error: {POLICE_ADDRESS} is already registered to authority 'West Mercia Police'"
    )


@pytest.mark.parametrize(
    "address", ["register-requests@hmci.example", "register-requests+police@hmci.example", "anyone@hmci.example"]
)
def test_nothing_at_the_gateways_own_domain_can_be_registered(
    gateway: Gateway, keys: AuthorityKeys, tmp_path: Path, address: str
) -> None:
    key = keys.occ.write(tmp_path, "occ.asc")
    result = gateway.run(
        "authority", "add", "--name", "Loop", "--kind", "secretary-of-state", "--email", address, "--key", str(key)
    )
    assert refused(result) == (
        f"gateway: error: {address} is at the gateway's own domain hmci.example: it cannot be an authority's"
    )


def test_the_mailbox_of_a_user_id_is_read_as_gpg_reads_it(gateway: Gateway, keys: AuthorityKeys) -> None:
    # "disclosures@westmercia... <evil@attacker.example>" shows the police address but its mailbox is evil's.
    message = refused(add_police(gateway, keys.display_trick))
    assert message.endswith(f"({POLICE_ADDRESS}); it carries evil@attacker.example")


def test_one_key_cannot_be_pinned_for_two_authorities(gateway: Gateway, keys: AuthorityKeys, tmp_path: Path) -> None:
    assert add_police(gateway, keys.police_and_la).code == 0
    key = keys.police_and_la.write(tmp_path, "shared.asc")
    result = add_la(gateway, key, "Shropshire Council")
    assert refused(result) == (
        f"gateway: error: key {keys.police_and_la.fingerprint} is already pinned for authority 'West Mercia Police'"
    )


def test_other_packets_in_a_key_file_never_reach_the_keyring(
    gateway: Gateway, keys: AuthorityKeys, tmp_path: Path
) -> None:
    assert add_police(gateway, keys.police).code == 0
    # A revocation of the police key rides along with the local authority's key.
    smuggled = tmp_path / "la-plus.asc"
    smuggled.write_bytes(keys.police_revocation + keys.la.public)
    result = add_la(gateway, smuggled, "Shropshire Council")
    assert result.code == 0, result.err
    listing = subprocess.run(
        ["gpg", "--homedir", str(gateway.gnupg_home), "--with-colons", "--list-keys", keys.police.fingerprint],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    validity = next(line.split(":")[1] for line in listing.splitlines() if line.startswith("pub"))
    assert validity != "r", "the police key was revoked by a packet nobody meant to import"


def test_expiry_counts_the_encryption_subkey(gateway: Gateway, keys: AuthorityKeys) -> None:
    result = add_police(gateway, keys.subkey_expiring_soon, "--json")
    assert result.code == 0
    assert f"warning: key {keys.subkey_expiring_soon.fingerprint} expires on" in result.err
    assert json.loads(result.out)["key_expires"] is not None


def test_weak_keys_are_refused(gateway: Gateway, keys: AuthorityKeys) -> None:
    message = refused(add_police(gateway, keys.weak_rsa))
    assert message == (
        f"gateway: error: key {keys.weak_rsa.fingerprint} refused: "
        "it uses a 1024-bit RSA key (at least 2048 bits are needed)"
    )


def test_invalid_and_non_ascii_addresses_are_refused(gateway: Gateway, keys: AuthorityKeys, tmp_path: Path) -> None:
    key = keys.occ.write(tmp_path, "occ.asc")
    base = ["authority", "add", "--name", "X", "--kind", "secretary-of-state", "--key", str(key)]
    assert "is not a valid email address" in refused(gateway.run(*base, "--email", "occ.example"))
    look_alike = "register@\u043ecc.example"  # a Cyrillic o
    assert "is not a plain ASCII address" in refused(gateway.run(*base, "--email", look_alike))


def test_duplicate_name_is_refused_whatever_the_case(gateway: Gateway, keys: AuthorityKeys, tmp_path: Path) -> None:
    assert add_police(gateway, keys.police).code == 0
    key = keys.la.write(tmp_path, "la.asc")
    result = add_la(gateway, key, "west mercia POLICE")
    assert refused(result) == "gateway: error: an authority named 'West Mercia Police' already exists"


def test_suspend_resume_update_and_remove(gateway: Gateway, keys: AuthorityKeys) -> None:
    assert add_police(gateway, keys.police).code == 0
    assert json.loads(gateway.ok("authority", "suspend", "West Mercia Police", "--json"))["status"] == "suspended"
    assert refused(gateway.run("authority", "suspend", "West Mercia Police")) == (
        "gateway: error: authority 'West Mercia Police' is already suspended"
    )
    assert json.loads(gateway.ok("authority", "resume", "west mercia police", "--json"))["status"] == "active"

    updated = json.loads(gateway.ok("authority", "update", "West Mercia Police", "--auth", "pgp", "--json"))
    assert updated["auth_policy"] == "signed"
    # The pinned key carries only the first address, so losing it would leave the key unusable.
    assert "would carry none of" in refused(
        gateway.run("authority", "update", "West Mercia Police", "--add-email", "new@westmercia.police.example",
                    "--remove-email", POLICE_ADDRESS)
    )  # fmt: skip
    added = gateway.ok("authority", "update", "West Mercia Police", "--add-email", "Second@WestMercia.police.example")
    assert "second@westmercia.police.example" in added
    assert refused(gateway.run("authority", "update", "West Mercia Police")).startswith(
        "gateway: error: nothing to update"
    )

    no_change = gateway.run("authority", "update", "West Mercia Police", "--auth", "pgp")
    assert refused(no_change) == "gateway: error: nothing changed: 'West Mercia Police' already has those settings"

    removed = json.loads(gateway.ok("authority", "remove", "West Mercia Police", "--json"))
    assert removed["addresses"] == [POLICE_ADDRESS, "second@westmercia.police.example"]
    assert json.loads(gateway.ok("authority", "list", "--json")) == []
    assert keys.police.fingerprint not in keyring_fingerprints(gateway)
    actions = [r["action"] for r in json.loads(gateway.ok("audit", "list", "--json"))]
    assert actions[-6:] == [
        "authority.add", "authority.suspend", "authority.resume", "authority.update", "authority.update",
        "authority.remove",
    ]  # fmt: skip


def test_set_key_pins_the_new_key_and_drops_the_old(gateway: Gateway, keys: AuthorityKeys, tmp_path: Path) -> None:
    assert add_police(gateway, keys.police).code == 0
    refused_key = keys.sign_only.write(tmp_path, "bad.asc")
    assert "no valid encryption-capable subkey" in refused(
        gateway.run("authority", "set-key", "West Mercia Police", str(refused_key))
    )
    new = keys.police_renewed.write(tmp_path, "renewed.asc")
    shown = json.loads(gateway.ok("authority", "set-key", "West Mercia Police", str(new), "--json"))
    assert shown["key_fingerprint"] == keys.police_renewed.fingerprint
    assert keyring_fingerprints(gateway) >= {keys.police_renewed.fingerprint}
    assert keys.police.fingerprint not in keyring_fingerprints(gateway)
    record = json.loads(gateway.ok("audit", "list", "--json"))[-1]
    assert record["details"]["old_fingerprint"] == keys.police.fingerprint


def test_unknown_authority_is_named(gateway: Gateway) -> None:
    assert refused(gateway.run("authority", "show", "Nobody")) == (
        "gateway: error: no authority named 'Nobody' (see `gateway authority list`)"
    )


@pytest.mark.parametrize("command", [["authority", "list"], ["authority", "show", "West Mercia Police"]])
def test_listings_have_a_table_for_people(gateway: Gateway, keys: AuthorityKeys, command: list[str]) -> None:
    assert add_police(gateway, keys.police).code == 0
    out = gateway.ok(*command)
    assert "West Mercia Police" in out
    assert POLICE_ADDRESS in out


def test_names_in_any_script_are_found_whatever_their_case(
    gateway: Gateway, keys: AuthorityKeys, tmp_path: Path
) -> None:
    assert add_police(gateway, keys.police).code == 0
    gateway.ok("authority", "update", "West Mercia Police", "--name", "\u0178nys Constabulary")
    assert json.loads(gateway.ok("authority", "suspend", "\u00ffNYS constabulary", "--json"))["status"] == "suspended"
    key = keys.la.write(tmp_path, "la.asc")
    twin = add_la(gateway, key, "\u00ffnys CONSTABULARY")
    assert refused(twin) == "gateway: error: an authority named '\u0178nys Constabulary' already exists"


def test_overlong_names_are_refused(gateway: Gateway, keys: AuthorityKeys) -> None:
    assert add_police(gateway, keys.police).code == 0
    message = refused(gateway.run("authority", "update", "West Mercia Police", "--name", "N" * 201))
    assert message == "gateway: error: --name must be at most 200 printable characters"
