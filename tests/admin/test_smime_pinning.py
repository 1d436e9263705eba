"""S/MIME certificates pinned per registered address: checked like keys, shown, signed for under the two-person
rule, taken from a signed mail on request, and removed at once."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.support.addresses import LA_ADDRESS, POLICE_ADDRESS
from tests.support.admins import add_police, two_person
from tests.support.gateway_cli import Gateway, Result
from tests.support.keys import AdminKeys, AuthorityKeys
from tests.support.smime import SmimeCerts, certificate, openssl


def refused(result: Result) -> str:
    assert result.code != 0
    lines = result.err.splitlines()
    assert len(lines) == 1, result.err
    return lines[0]


def add_keyless_police(gateway: Gateway, *extra: str) -> Result:
    return gateway.run(
        "authority", "add", "--name", "West Mercia Police", "--kind", "police", "--area", "West Mercia",
        "--email", POLICE_ADDRESS, *extra,
    )  # fmt: skip


def delivery(gateway: Gateway) -> list[dict[str, object]]:
    shown = json.loads(gateway.ok("authority", "show", "West Mercia Police", "--json"))
    entries: list[dict[str, object]] = shown["delivery"]
    return entries


def fingerprint_of(cert: Path) -> str:
    said = openssl("x509", "-in", str(cert), "-noout", "-fingerprint", "-sha256").decode()
    return said.strip().split("=", 1)[1].replace(":", "")


def test_an_authority_without_an_openpgp_key_waits_for_a_certificate_per_address(gateway: Gateway) -> None:
    added = add_keyless_police(gateway, "--json")
    assert added.code == 0, added.err
    shown = json.loads(added.out)
    assert shown["key_fingerprint"] is None
    assert shown["delivery"] == [
        {"address": POLICE_ADDRESS, "method": "smime", "cert_fingerprint": None, "cert_subject": None,
         "cert_expires": None},
    ]  # fmt: skip
    assert "has no OpenPGP key: nothing is sent to it until a certificate is pinned" in added.err
    text = gateway.ok("authority", "show", "West Mercia Police")
    assert "none pinned: nothing is sent to this address" in text


def test_a_certificate_is_pinned_for_an_address_and_shown_with_its_fingerprint_subject_and_expiry(
    gateway: Gateway, keys: AuthorityKeys, smime_certs: SmimeCerts
) -> None:
    assert add_police(gateway, keys.police).code == 0
    pinned = gateway.ok(
        "--actor", "carol", "authority", "set-cert", "West Mercia Police", "--email", POLICE_ADDRESS,
        "--cert", str(smime_certs.police.cert),
    )  # fmt: skip
    expected = fingerprint_of(smime_certs.police.cert)
    assert pinned.startswith("new certificate pinned for authority 'West Mercia Police'")
    assert delivery(gateway) == [
        {"address": POLICE_ADDRESS, "method": "smime", "cert_fingerprint": expected, "cert_subject": "CN=police",
         "cert_expires": "2099-12-31T00:00:00+00:00"},
    ]  # fmt: skip
    listing = gateway.ok("authority", "list")
    assert f"{POLICE_ADDRESS} (smime {expected[-16:]})" in listing
    assert "2099-12-31" in listing
    record = json.loads(gateway.ok("audit", "list", "--json"))[-1]
    assert (record["action"], record["actor"]) == ("authority.set-cert", "carol")
    assert record["details"]["cert_fingerprint"] == expected
    assert record["details"]["old"] == {"method": "openpgp", "cert_fingerprint": None}
    again = gateway.run(
        "authority", "set-cert", "West Mercia Police", "--email", POLICE_ADDRESS, "--cert", str(smime_certs.police.cert)
    )
    assert refused(again) == f"gateway: error: certificate {expected} is already pinned for {POLICE_ADDRESS}"


def test_a_certificate_that_could_not_be_trusted_for_the_address_is_refused_with_every_reason(
    gateway: Gateway, keys: AuthorityKeys, smime_certs: SmimeCerts, tmp_path: Path
) -> None:
    assert add_police(gateway, keys.police).code == 0
    cases = {
        "for-la": (certificate(tmp_path, "for-la", (LA_ADDRESS,)), f"is for {LA_ADDRESS} (subjectAltName"),
        "expired": (
            certificate(tmp_path, "expired", (POLICE_ADDRESS,), not_after=dt.datetime(2020, 1, 1, tzinfo=dt.UTC)),
            "the certificate expired on 2020-01-01",
        ),
        "weak": (certificate(tmp_path, "weak", (POLICE_ADDRESS,), key="rsa-1024"), "1024-bit RSA key"),
        "no-email-use": (
            certificate(tmp_path, "tls", (POLICE_ADDRESS,), eku=(ExtendedKeyUsageOID.SERVER_AUTH,)),
            "does not include emailProtection",
        ),
    }
    for name, (cert, reason) in cases.items():
        result = gateway.run(
            "authority", "set-cert", "West Mercia Police", "--email", POLICE_ADDRESS, "--cert", str(cert.cert)
        )
        line = refused(result)
        assert line.startswith("gateway: error: certificate "), (name, line)
        assert reason in line, (name, line)
    private = gateway.run(
        "authority", "set-cert", "West Mercia Police", "--email", POLICE_ADDRESS, "--cert", str(smime_certs.police.key)
    )
    assert "holds a private key" in refused(private)
    stranger = gateway.run(
        "authority", "set-cert", "West Mercia Police", "--email", LA_ADDRESS, "--cert", str(smime_certs.la.cert)
    )
    assert refused(stranger) == f"gateway: error: {LA_ADDRESS} is not an address of 'West Mercia Police'"
    assert delivery(gateway)[0]["method"] == "openpgp"  # nothing changed


def test_one_certificate_is_never_pinned_for_two_authorities(
    gateway: Gateway, keys: AuthorityKeys, tmp_path: Path
) -> None:
    both = certificate(tmp_path, "both", (POLICE_ADDRESS, LA_ADDRESS))
    assert add_police(gateway, keys.police).code == 0
    council = gateway.run(
        "authority", "add", "--name", "Shropshire Council", "--kind", "local-authority", "--area", "Shropshire",
        "--email", LA_ADDRESS,
    )  # fmt: skip
    assert council.code == 0, council.err
    gateway.ok("authority", "set-cert", "West Mercia Police", "--email", POLICE_ADDRESS, "--cert", str(both.cert))
    second = gateway.run("authority", "set-cert", "Shropshire Council", "--email", LA_ADDRESS, "--cert", str(both.cert))
    assert refused(second).endswith("is already pinned for authority 'West Mercia Police'")


def test_removing_a_certificate_takes_effect_at_once_and_leaves_the_address_with_nothing(
    gateway: Gateway, keys: AuthorityKeys, smime_certs: SmimeCerts, admin_keys: AdminKeys
) -> None:
    assert add_police(gateway, keys.police).code == 0
    gateway.ok(
        "authority", "set-cert", "West Mercia Police", "--email", POLICE_ADDRESS, "--cert", str(smime_certs.police.cert)
    )
    two_person(gateway, admin_keys)  # removal needs no second admin: it only takes access away
    removed = gateway.ok("authority", "remove-cert", "West Mercia Police", "--email", POLICE_ADDRESS)
    assert removed.startswith("certificate removed for authority 'West Mercia Police'")
    assert delivery(gateway) == [
        {"address": POLICE_ADDRESS, "method": "smime", "cert_fingerprint": None, "cert_subject": None,
         "cert_expires": None},
    ]  # fmt: skip
    again = gateway.run("authority", "remove-cert", "West Mercia Police", "--email", POLICE_ADDRESS)
    assert refused(again) == f"gateway: error: no certificate is pinned for {POLICE_ADDRESS}"


def test_pinning_a_certificate_needs_two_admins_who_sign_its_fingerprint_subject_and_validity(
    gateway: Gateway, keys: AuthorityKeys, smime_certs: SmimeCerts, admin_keys: AdminKeys
) -> None:
    assert add_police(gateway, keys.police).code == 0
    two_person(gateway, admin_keys)
    asked = gateway.run(
        "authority", "set-cert", "West Mercia Police", "--email", POLICE_ADDRESS, "--cert",
        str(smime_certs.police.cert), *admin_keys.alice.signing(),
    )  # fmt: skip
    assert asked.code == 0, asked.err
    assert delivery(gateway)[0]["method"] == "openpgp"  # not yet
    statement = gateway.ok("change", "show", "1").splitlines()
    fingerprint = fingerprint_of(smime_certs.police.cert)
    for line in (
        'kind: "set-cert"',
        f'address: "{POLICE_ADDRESS}"',
        f'cert-sha256: "{fingerprint}"',
        'cert-subject: "CN=police"',
        f'cert-address: "{POLICE_ADDRESS}"',
        'cert-not-before: "2001-01-01T00:00:00Z"',
        'cert-not-after: "2099-12-31T00:00:00Z"',
        'cert-key: "RSA 2048"',
    ):
        assert line in statement, line
    approved = gateway.ok("change", "approve", "1", *admin_keys.bob.signing())
    assert approved.startswith("new certificate pinned for authority 'West Mercia Police'")
    assert delivery(gateway)[0]["cert_fingerprint"] == fingerprint


def test_a_certificate_is_taken_from_a_signed_mail_the_address_sent(
    gateway: Gateway, keys: AuthorityKeys, smime_certs: SmimeCerts
) -> None:
    assert add_police(gateway, keys.police).code == 0
    body = b"Content-Type: text/plain\r\n\r\nHello from the duty inspector\r\n"
    signed = openssl(
        "cms", "-sign", "-signer", str(smime_certs.police.cert), "-inkey", str(smime_certs.police.key), "-md", "sha256",
        data=body,
    )  # fmt: skip
    mail = gateway.directory / "signed.eml"
    mail.write_bytes(f"From: {POLICE_ADDRESS}\r\nTo: x@hmci.example\r\nSubject: hi\r\n".encode() + signed)
    pinned = gateway.run(
        "authority", "set-cert", "West Mercia Police", "--email", POLICE_ADDRESS, "--from-message", str(mail)
    )
    assert pinned.code == 0, pinned.err
    told = pinned.err
    fingerprint = fingerprint_of(smime_certs.police.cert)
    assert f"the message carries certificate {fingerprint} for {POLICE_ADDRESS}; confirm this fingerprint" in told
    assert delivery(gateway)[0]["cert_fingerprint"] == fingerprint
    plain = gateway.directory / "plain.eml"
    plain.write_bytes(b"From: x@y.example\r\nSubject: hi\r\n\r\nno signature\r\n")
    none = gateway.run("authority", "set-cert", "West Mercia Police", "--email", POLICE_ADDRESS, "--from-message",
                       str(plain))  # fmt: skip
    assert "no S/MIME signature to take a certificate from" in refused(none)


def test_with_a_trust_store_a_certificate_must_also_chain_to_it(
    gateway: Gateway, keys: AuthorityKeys, smime_certs: SmimeCerts
) -> None:
    identity = f'certificate = "{smime_certs.gateway.cert}"\nkey = "{smime_certs.gateway.key}"\n'
    gateway.write_config(f'\n[smime]\n{identity}trust_store = "{smime_certs.la.cert}"\n')
    assert add_police(gateway, keys.police).code == 0
    result = gateway.run(
        "authority", "set-cert", "West Mercia Police", "--email", POLICE_ADDRESS, "--cert", str(smime_certs.police.cert)
    )
    assert "does not chain to the trust store la.pem" in refused(result)
    gateway.write_config(f'\n[smime]\n{identity}trust_store = "{smime_certs.police.cert}"\n')  # its own anchor
    gateway.ok(
        "authority", "set-cert", "West Mercia Police", "--email", POLICE_ADDRESS, "--cert", str(smime_certs.police.cert)
    )


def test_an_address_goes_back_to_openpgp_only_when_asked_and_only_with_a_key(
    gateway: Gateway, keys: AuthorityKeys, smime_certs: SmimeCerts
) -> None:
    assert add_police(gateway, keys.police).code == 0
    cert = str(smime_certs.police.cert)
    gateway.ok("authority", "set-cert", "West Mercia Police", "--email", POLICE_ADDRESS, "--cert", cert)
    both = gateway.run(
        "authority", "update", "West Mercia Police", "--add-email", POLICE_ADDRESS, "--remove-email", POLICE_ADDRESS
    )
    assert refused(both) == f"gateway: error: {POLICE_ADDRESS} is in both --add-email and --remove-email"
    assert delivery(gateway)[0]["method"] == "smime"  # and the address is still there
    gateway.ok("authority", "update", "West Mercia Police", "--use-openpgp", POLICE_ADDRESS)
    assert delivery(gateway) == [
        {"address": POLICE_ADDRESS, "method": "openpgp", "cert_fingerprint": None, "cert_subject": None,
         "cert_expires": None},
    ]  # fmt: skip
    keyless = gateway.run(
        "authority", "add", "--name", "Shropshire Council", "--kind", "local-authority", "--area", "Shropshire",
        "--email", LA_ADDRESS,
    )  # fmt: skip
    assert keyless.code == 0, keyless.err
    no_key = gateway.run("authority", "update", "Shropshire Council", "--use-openpgp", LA_ADDRESS)
    assert "has no OpenPGP key: pin one first" in refused(no_key)


def test_an_address_goes_back_to_openpgp_only_if_the_pinned_key_carries_it(
    gateway: Gateway, keys: AuthorityKeys, tmp_path: Path
) -> None:
    """The key is checked as `authority add` checks one: an address none of its user IDs names keeps its
    certificate, and the admin is told why in one line."""
    duty = "duty@westmercia.police.example"  # the police key names POLICE_ADDRESS alone
    assert add_police(gateway, keys.police).code == 0
    gateway.ok("authority", "update", "West Mercia Police", "--add-email", duty)
    duty_cert = certificate(tmp_path, "duty", (duty,))
    gateway.ok("authority", "set-cert", "West Mercia Police", "--email", duty, "--cert", str(duty_cert.cert))
    result = gateway.run("authority", "update", "West Mercia Police", "--use-openpgp", duty)
    assert refused(result) == (
        f"gateway: error: {duty} cannot go back to OpenPGP: the pinned key {keys.police.fingerprint} has no user ID "
        f"for it (it carries {POLICE_ADDRESS}); pin a key that does first (`gateway authority set-key`)"
    )
    [kept] = [entry for entry in delivery(gateway) if entry["address"] == duty]
    assert (kept["method"], kept["cert_fingerprint"]) == ("smime", fingerprint_of(duty_cert.cert))


def test_a_certificate_from_a_message_leaves_json_output_whole(
    gateway: Gateway, keys: AuthorityKeys, smime_certs: SmimeCerts
) -> None:
    assert add_police(gateway, keys.police).code == 0
    signed = openssl(
        "cms", "-sign", "-signer", str(smime_certs.police.cert), "-inkey", str(smime_certs.police.key), "-md", "sha256",
        data=b"Content-Type: text/plain\r\n\r\nhello\r\n",
    )  # fmt: skip
    mail = gateway.directory / "signed.eml"
    mail.write_bytes(f"From: {POLICE_ADDRESS}\r\nSubject: hi\r\n".encode() + signed)
    result = gateway.run(
        "authority", "set-cert", "West Mercia Police", "--email", POLICE_ADDRESS, "--from-message", str(mail), "--json"
    )
    assert result.code == 0, result.err
    assert json.loads(result.out)["delivery"][0]["method"] == "smime"
    assert "confirm this fingerprint" in result.err


def test_one_certificate_is_never_pinned_for_two_addresses_of_one_authority(
    gateway: Gateway, keys: AuthorityKeys, tmp_path: Path
) -> None:
    duty = "duty@westmercia.police.example"
    both = certificate(tmp_path, "both-addresses", (POLICE_ADDRESS, duty))
    assert add_police(gateway, keys.police).code == 0
    gateway.ok("authority", "update", "West Mercia Police", "--add-email", duty)
    gateway.ok("authority", "set-cert", "West Mercia Police", "--email", POLICE_ADDRESS, "--cert", str(both.cert))
    second = gateway.run("authority", "set-cert", "West Mercia Police", "--email", duty, "--cert", str(both.cert))
    assert refused(second).endswith(f"is already pinned for {POLICE_ADDRESS}")  # each address's key is its own
