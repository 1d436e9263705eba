"""The gateway's own S/MIME identity ([smime]): checked whole wherever the gateway may send mail, made for trials
by `gateway init --smime`, asked of a CA by `--smime-csr`, exported for authorities, and warned of before it
expires. Real files, real openssl; every verdict about dates is given at a fixed moment or on fixed dates."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import stat
import subprocess
import sys
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from gateway.cli.root import build_parser
from gateway.config import load_config
from gateway.errors import ConfigError
from gateway.smime import CertificateProblem, make_self_signed_at, read_certificate
from gateway.smime.identity import load_identity
from tests.support.addresses import ADMIN_ADDRESS, GATEWAY_ADDRESS, POLICE_ADDRESS
from tests.support.gateway_cli import Gateway
from tests.support.live import outbox, outbox_content
from tests.support.schedule import run
from tests.support.smime import VALID_FROM, VALID_UNTIL, SmimeCerts, certificate, openssl

NOW = dt.datetime(2030, 6, 1, 12, 0, tzinfo=dt.UTC)  # the fixed moment of every load_identity verdict here
NOBODY = 65534  # a uid that is not the test's own


@pytest.fixture
def bare(tmp_path: Path) -> Gateway:
    """A gateway's settings file on SQLite, never initialised: for the checks that happen before any database."""
    gateway = Gateway(tmp_path, f"sqlite:///{tmp_path / 'gateway.db'}")
    gateway.write_config()
    return gateway


def smime_section(cert: Path | str, key: Path | str, more: str = "") -> str:
    return f'\n[smime]\ncertificate = "{cert}"\nkey = "{key}"\n{more}'


def own_copy(smime_certs: SmimeCerts, directory: Path) -> tuple[Path, Path]:
    """The session's gateway identity (made by make_self_signed, valid 2001-2099), copied for one test to spoil."""
    cert, key = directory / "gateway-cert.pem", directory / "gateway-key.pem"
    shutil.copyfile(smime_certs.gateway.cert, cert)
    shutil.copyfile(smime_certs.gateway.key, key)
    key.chmod(0o600)
    return cert, key


def configured(gateway: Gateway, cert: Path, key: Path, more: str = "") -> Gateway:
    gateway.write_config(smime_section(cert, key, more))
    return gateway


def refusal(gateway: Gateway, *argv: str) -> str:
    """The one line a command that checks the identity fails with (exit 78; nothing on stdout, but from `init`,
    which checks it after what it makes and upgrades, as it checks the OpenPGP key)."""
    result = gateway.run(*argv)
    assert result.code == 78, result.err
    assert argv[0] == "init" or result.out == "", result.out
    assert len(result.err.splitlines()) == 1, result.err
    prefix = f"gateway: error: {gateway.config_path}: [smime] "
    assert result.err.startswith(prefix), result.err
    return result.err.removeprefix(prefix).rstrip("\n")


def fingerprint_by_openssl(cert: Path) -> str:
    said = openssl("x509", "-noout", "-fingerprint", "-sha256", "-in", str(cert)).decode()
    return said.strip().split("=", 1)[1].replace(":", "")


# ---------------------------------------------------------------- what load_identity accepts and refuses


def test_a_good_identity_loads_with_what_authorities_pin(
    bare: Gateway, smime_certs: SmimeCerts, tmp_path: Path
) -> None:
    cert, key = own_copy(smime_certs, tmp_path)
    identity = load_identity(load_config(configured(bare, cert, key).config_path), now=NOW)
    assert identity is not None
    assert identity.certificate.fingerprint == fingerprint_by_openssl(cert)
    assert identity.certificate.pem == cert.read_bytes()
    assert (identity.key_path, identity.openssl, identity.trust_store) == (key, "openssl", None)


def test_without_an_smime_section_there_is_no_identity(bare: Gateway) -> None:
    assert load_identity(load_config(bare.config_path), now=NOW) is None


def test_relative_paths_are_read_beside_the_settings_file(bare: Gateway, smime_certs: SmimeCerts) -> None:
    own_copy(smime_certs, bare.directory)
    bare.write_config(smime_section("gateway-cert.pem", "gateway-key.pem"))
    identity = load_identity(load_config(bare.config_path), now=NOW)
    assert identity is not None
    assert identity.key_path == (bare.directory / "gateway-key.pem").resolve()


def test_the_certificate_is_judged_at_the_moment_given(bare: Gateway, smime_certs: SmimeCerts, tmp_path: Path) -> None:
    cert, key = own_copy(smime_certs, tmp_path)
    config = load_config(configured(bare, cert, key).config_path)
    not_after = read_certificate(cert.read_bytes()).not_after
    assert load_identity(config, now=not_after) is not None  # its last moment still counts
    with pytest.raises(ConfigError, match=r"certificate .* expired on 2099-12-30T23:00:00Z: replace it") as expired:
        load_identity(config, now=not_after + dt.timedelta(seconds=1))
    assert "`gateway init --smime-csr FILE` writes a signing request for a CA" in str(expired.value)
    with pytest.raises(ConfigError, match=r"not valid until 2000-12-31T23:00:00Z"):
        load_identity(config, now=VALID_FROM - dt.timedelta(days=1))


def test_a_key_that_is_not_the_certificates_is_refused(bare: Gateway, smime_certs: SmimeCerts, tmp_path: Path) -> None:
    cert, _ = own_copy(smime_certs, tmp_path)
    other = tmp_path / "police.key"
    shutil.copyfile(smime_certs.police.key, other)
    other.chmod(0o600)
    said = refusal(configured(bare, cert, other), "key", "export", "--smime")
    assert said == f"key: {other} is not the private key of {cert}: give the key the certificate was issued for"


def test_a_key_other_users_can_read_is_refused(bare: Gateway, smime_certs: SmimeCerts, tmp_path: Path) -> None:
    cert, key = own_copy(smime_certs, tmp_path)
    key.chmod(0o644)
    said = refusal(configured(bare, cert, key), "key", "export", "--smime")
    assert said == f"key: {key} is open to other users (mode 0644): run `chmod 600 {key}`"


def test_a_key_owned_by_another_user_is_refused(bare: Gateway, smime_certs: SmimeCerts, tmp_path: Path) -> None:
    cert, key = own_copy(smime_certs, tmp_path)
    try:
        os.chown(key, NOBODY, -1)
    except PermissionError:
        pytest.skip("giving a file to another user needs root")
    said = refusal(configured(bare, cert, key), "key", "export", "--smime")
    assert said.startswith(f"key: {key} belongs to ")
    assert f"(uid {NOBODY}), not to " in said or f"uid {NOBODY}, not to " in said
    assert said.endswith(f" {key}` as root")
    assert "chown" in said


def test_a_passphrase_protected_key_is_refused(bare: Gateway, smime_certs: SmimeCerts, tmp_path: Path) -> None:
    cert, key = own_copy(smime_certs, tmp_path)
    loaded = serialization.load_pem_private_key(key.read_bytes(), password=None)
    locked = serialization.BestAvailableEncryption(b"secret")
    key.write_bytes(loaded.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, locked))
    said = refusal(configured(bare, cert, key), "key", "export", "--smime")
    assert said.startswith(f"key: {key} is not an unencrypted PEM private key: give the certificate's private key")
    assert "`openssl pkey -in KEY -out NEW` removes it" in said


def test_an_expired_certificate_is_refused(bare: Gateway, tmp_path: Path) -> None:
    lapsed = certificate(
        tmp_path, "lapsed", (GATEWAY_ADDRESS,), key="rsa-3072",
        not_before=dt.datetime(2001, 1, 1, tzinfo=dt.UTC), not_after=dt.datetime(2002, 1, 1, tzinfo=dt.UTC),
    )  # fmt: skip
    said = refusal(configured(bare, lapsed.cert, lapsed.key), "key", "export", "--smime")
    assert said == (
        f"certificate {lapsed.cert}: the certificate expired on 2002-01-01T00:00:00Z: replace it "
        "(`gateway init --smime-csr FILE` writes a signing request for a CA)"
    )


def test_a_missing_certificate_or_key_is_refused(bare: Gateway, smime_certs: SmimeCerts, tmp_path: Path) -> None:
    cert, key = own_copy(smime_certs, tmp_path)
    nowhere = tmp_path / "nowhere.pem"
    assert refusal(configured(bare, nowhere, key), "key", "export", "--smime") == (
        f"certificate: cannot read {nowhere}: No such file or directory (`gateway init --smime` makes one for trials)"
    )
    assert refusal(configured(bare, cert, nowhere), "key", "export", "--smime") == (
        f"key: {nowhere} does not exist: give the certificate's private key"
    )


def test_a_certificate_for_another_address_is_refused(bare: Gateway, smime_certs: SmimeCerts) -> None:
    police = smime_certs.police  # its own key, so only the address is wrong
    said = refusal(configured(bare, police.cert, police.key), "key", "export", "--smime")
    assert said.startswith(
        f"certificate {police.cert}: the certificate is for {POLICE_ADDRESS} (subjectAltName rfc822Name), "
        f"not {GATEWAY_ADDRESS}: replace it"
    )


@pytest.mark.parametrize(
    ("usage", "missing"),
    [({"digital_signature"}, "keyEncipherment"), ({"key_encipherment"}, "digitalSignature")],
)
def test_a_certificate_must_allow_both_signing_and_encryption(
    bare: Gateway, tmp_path: Path, usage: set[str], missing: str
) -> None:
    half = certificate(tmp_path, "half", (GATEWAY_ADDRESS,), key="rsa-3072", usage=frozenset(usage))
    said = refusal(configured(bare, half.cert, half.key), "key", "export", "--smime")
    assert said == f"certificate {half.cert}: its key usage does not allow {missing}: replace it " + (
        "(`gateway init --smime-csr FILE` writes a signing request for a CA)"
    )


def test_a_missing_openssl_or_trust_store_is_refused(bare: Gateway, smime_certs: SmimeCerts, tmp_path: Path) -> None:
    cert, key = own_copy(smime_certs, tmp_path)
    assert refusal(configured(bare, cert, key, 'binary = "no-such-openssl"\n'), "key", "export", "--smime") == (
        "binary: no-such-openssl not found: install OpenSSL (Debian: apt-get install openssl)"
    )
    missing = tmp_path / "no-such-bundle.pem"
    assert refusal(configured(bare, cert, key, f'trust_store = "{missing}"\n'), "key", "export", "--smime") == (
        f"trust_store: {missing} does not exist"
    )


# ---------------------------------------------------------------- every command that may send mail checks it first


def test_every_command_that_may_send_mail_refuses_a_bad_identity_first(gateway: Gateway, tmp_path: Path) -> None:
    nowhere = tmp_path / "nowhere.pem"
    configured(gateway, nowhere, nowhere)
    expected = f"certificate: cannot read {nowhere}: No such file or directory"
    assert refusal(gateway, "schedule", "run", "--as-of", NOW.isoformat()).startswith(expected)
    # An allowlist change may end subscriptions with notice: the identity is checked before the authority is.
    assert refusal(gateway, "authority", "suspend", "Nobody At All").startswith(expected)
    assert refusal(gateway, "init").startswith(expected)


def test_the_daemon_stops_at_start_on_a_bad_identity(gateway: Gateway, tmp_path: Path) -> None:
    nowhere = tmp_path / "nowhere.pem"
    # A mailbox and a relay nobody listens at: the daemon must stop before it looks for either.
    unreachable = '[imap]\nhost = "127.0.0.1"\nport = 1\nusername = "u"\npassword = "p"\ntls = "none"\n'
    unreachable += '[smtp]\nhost = "127.0.0.1"\nport = 1\ntls = "none"\n'
    gateway.write_config(smime_section(nowhere, nowhere) + unreachable)
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "--config", str(gateway.config_path), "run"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 78
    assert result.stderr == (
        f"gateway: error: {gateway.config_path}: [smime] certificate: cannot read {nowhere}: No such file or "
        "directory (`gateway init --smime` makes one for trials)\n"
    )


# ---------------------------------------------------------------- gateway init


def test_init_checks_a_configured_identity_and_says_what_to_compare(
    gateway: Gateway, smime_certs: SmimeCerts, tmp_path: Path
) -> None:
    cert, key = own_copy(smime_certs, tmp_path)
    out = configured(gateway, cert, key).ok("init")
    assert out.splitlines()[-1] == (
        f"S/MIME certificate for {GATEWAY_ADDRESS} is usable: SHA-256 fingerprint {fingerprint_by_openssl(cert)}, "
        "expires 2099-12-30"
    )


def test_without_an_smime_section_the_smime_options_say_to_add_one(fresh_gateway: Gateway, tmp_path: Path) -> None:
    asked = [
        ("--smime", ("init", "--smime")),
        ("--smime-csr", ("init", "--smime-csr", str(tmp_path / "req.csr"))),
        ("--smime", ("key", "export", "--smime")),
    ]
    for option, argv in asked:
        result = fresh_gateway.run(*argv)
        assert (result.code, result.err) == (
            78, f"gateway: error: {fresh_gateway.config_path}: {option} needs an [smime] section: add one "
            "(config/gateway.example.toml shows it)\n",
        )  # fmt: skip
    assert not fresh_gateway.gnupg_home.exists()  # refused before anything was made
    assert not (tmp_path / "req.csr").exists()
    assert "[smime]" not in fresh_gateway.ok("init")  # and without the options, no [smime] is fine


def test_init_smime_makes_a_usable_identity_at_the_configured_paths(fresh_gateway: Gateway) -> None:
    private = fresh_gateway.directory / "private"
    private.mkdir(mode=0o700)
    fresh_gateway.write_config(smime_section("gateway.crt", "private/gateway.key"))
    cert, key = fresh_gateway.directory / "gateway.crt", private / "gateway.key"
    umask = os.umask(0)
    os.umask(umask)

    out = fresh_gateway.ok("init", "--smime")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(cert.stat().st_mode) == 0o644 & ~umask
    assert not (fresh_gateway.directory / "smime-cert.pem").exists()  # the configured names, not the defaults
    made = read_certificate(cert.read_bytes())
    fingerprint = fingerprint_by_openssl(cert)
    assert made.fingerprint == fingerprint
    assert made.problems(GATEWAY_ADDRESS, made.not_before + dt.timedelta(days=1)) == []
    assert made.issuer == made.subject  # self-signed
    assert made.not_after - made.not_before == dt.timedelta(days=730)
    assert f"made a self-signed S/MIME certificate for {GATEWAY_ADDRESS}: SHA-256 fingerprint {fingerprint}" in out
    assert f"  certificate {cert} (mode {0o644 & ~umask:04o})\n  key         {key} (mode 0600)" in out
    assert "A self-signed certificate makes Outlook warn on every reply: production needs one from a publicly " in out
    assert f"is usable: SHA-256 fingerprint {fingerprint}, expires {made.not_after.date().isoformat()}" in out
    [record] = [r for r in json.loads(fresh_gateway.ok("audit", "list", "--json")) if "smime" in r["action"]]
    assert (record["action"], record["subject"]) == ("gateway.smime-generated", GATEWAY_ADDRESS)
    assert record["details"]["fingerprint"] == fingerprint
    assert record["details"]["self_signed"] is True

    # The key can open what is encrypted to the certificate, and sign what it verifies: they are one identity.
    sealed = openssl("cms", "-encrypt", "-aes-256-cbc", str(cert), data=b"to the gateway\r\n")
    assert openssl("cms", "-decrypt", "-recip", str(cert), "-inkey", str(key), data=sealed) == b"to the gateway\r\n"


def test_init_smime_never_overwrites_an_identity(fresh_gateway: Gateway, smime_certs: SmimeCerts) -> None:
    cert, key = own_copy(smime_certs, fresh_gateway.directory)
    fresh_gateway.write_config(smime_section(cert, key))
    before = (cert.read_bytes(), key.read_bytes())
    result = fresh_gateway.run("init", "--smime")
    assert result.code == 1
    assert result.err == (
        f"gateway: error: [smime] certificate {cert} already exists: `gateway init --smime` never overwrites the "
        "gateway's identity (move it away first to start again)\n"
    )
    assert (cert.read_bytes(), key.read_bytes()) == before
    assert not fresh_gateway.gnupg_home.exists()  # refused before anything was made

    cert.unlink()  # a key alone is somebody's too (a request to a CA may be out for it)
    result = fresh_gateway.run("init", "--smime")
    assert result.code == 1
    assert f"[smime] key {key} already exists" in result.err
    assert key.read_bytes() == before[1]
    assert not cert.exists()


def test_a_self_signed_identity_that_cannot_be_finished_leaves_no_key(tmp_path: Path) -> None:
    cert, key = tmp_path / "no-such-folder" / "cert.pem", tmp_path / "key.pem"
    with pytest.raises(CertificateProblem, match=r"cannot create .*cert\.pem: No such file or directory"):
        make_self_signed_at(GATEWAY_ADDRESS, cert, key, now=NOW)
    assert not key.exists()  # a key without its certificate would only block the next attempt


def sign_as_ca(request: Path, tmp_path: Path) -> bytes:
    """What a CA does with the request: a certificate for its key and extensions, valid 2001-2099, signed by a
    CA key of its own."""
    csr = x509.load_pem_x509_csr(request.read_bytes())
    assert csr.is_signature_valid
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test Mail CA")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(ca_name)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(VALID_FROM)
        .not_valid_after(VALID_UNTIL)
    )
    for extension in csr.extensions:
        builder = builder.add_extension(extension.value, extension.critical)
    return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def test_init_smime_csr_makes_a_key_and_a_request_a_ca_can_answer(fresh_gateway: Gateway, tmp_path: Path) -> None:
    fresh_gateway.write_config(smime_section("smime-cert.pem", "smime-key.pem"))
    cert, key = fresh_gateway.directory / "smime-cert.pem", fresh_gateway.directory / "smime-key.pem"
    request = tmp_path / "gateway.csr"

    out = fresh_gateway.ok("init", "--smime-csr", str(request))
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert not cert.exists()  # the CA's certificate is still to come
    text = openssl("req", "-in", str(request), "-noout", "-verify", "-text").decode()
    assert f"email:{GATEWAY_ADDRESS}" in text
    assert "E-mail Protection" in text
    assert f"made the gateway's S/MIME key {key} (mode 0600)" in out
    assert f"wrote a certificate signing request for {GATEWAY_ADDRESS} to {request}" in out
    assert f"put the certificate it returns at {cert} ([smime] certificate)" in out
    assert "makes Outlook warn on every reply: production needs one from a publicly trusted CA" in out
    assert "is usable" not in out

    # Asked again (a renewal), the request is for the same key; an existing request file is never overwritten.
    again = tmp_path / "renewal.csr"
    assert f"the request is for the existing S/MIME key {key}" in fresh_gateway.ok("init", "--smime-csr", str(again))
    public = openssl("req", "-in", str(request), "-noout", "-pubkey")
    assert openssl("req", "-in", str(again), "-noout", "-pubkey") == public
    refused = fresh_gateway.run("init", "--smime-csr", str(request))
    assert (refused.code, refused.err) == (
        1, f"gateway: error: --smime-csr {request} already exists: it is not overwritten\n"
    )  # fmt: skip
    records = [r for r in json.loads(fresh_gateway.ok("audit", "list", "--json")) if "smime" in r["action"]]
    assert [(r["action"], r["details"]["key_generated"]) for r in records] == [
        ("gateway.smime-csr-written", True), ("gateway.smime-csr-written", False)
    ]  # fmt: skip

    # Until the CA answers, init says what is missing; once its certificate is in place, the identity is usable.
    assert refusal(fresh_gateway, "init").startswith(f"certificate: cannot read {cert}: No such file or directory")
    cert.write_bytes(sign_as_ca(request, tmp_path))
    assert f"is usable: SHA-256 fingerprint {fingerprint_by_openssl(cert)}" in fresh_gateway.ok("init")


# ---------------------------------------------------------------- gateway key export --smime


def test_key_export_smime_prints_exactly_the_certificate(
    bare: Gateway, smime_certs: SmimeCerts, tmp_path: Path
) -> None:
    cert, key = own_copy(smime_certs, tmp_path)
    exported = configured(bare, cert, key).ok("key", "export", "--smime")
    assert exported == cert.read_text()
    assert "PRIVATE" not in exported
    said = openssl("x509", "-noout", "-fingerprint", "-sha256", data=exported.encode()).decode()
    assert said.strip().split("=", 1)[1].replace(":", "") == fingerprint_by_openssl(cert)  # openssl reads it


def test_the_key_group_names_both_kinds_of_key() -> None:
    assert "the gateway's own keys (OpenPGP and S/MIME)" in " ".join(build_parser().format_help().split())


# ---------------------------------------------------------------- expiry notice


def test_the_gateways_certificate_is_noticed_to_the_admins_before_it_expires(
    fresh_gateway: Gateway, smime_certs: SmimeCerts, tmp_path: Path
) -> None:
    # A gateway OpenPGP key that never expires, so that the certificate's is the only notice at fixed dates.
    out = fresh_gateway.ok("init", "--key-expiry", "0")
    fresh_gateway.signing_key = out.split('signing_key = "')[1].split('"')[0]
    cert, key = own_copy(smime_certs, tmp_path)
    configured(fresh_gateway, cert, key)
    expires = read_certificate(cert.read_bytes()).not_after  # 2099-12-30 23:00 UTC: fixed, like every date here
    fingerprint = fingerprint_by_openssl(cert)

    assert run(fresh_gateway, expires - dt.timedelta(days=60))["key notice"] == 0  # outside the 30-day window
    assert run(fresh_gateway, expires - dt.timedelta(days=10))["key notice"] == 1
    assert run(fresh_gateway, expires - dt.timedelta(days=9))["key notice"] == 0  # told once per expiry date

    [notice] = outbox(fresh_gateway)
    assert (notice["kind"], notice["recipient"]) == ("alert", ADMIN_ADDRESS)
    mail = message_from_bytes(outbox_content(fresh_gateway, notice["id"]), policy=policy.default)
    body = mail.get_body(preferencelist=("plain",))
    assert body is not None
    text = body.get_content()
    assert "The gateway's own S/MIME certificate expires on 30 December 2099 23:00 UTC:" in text
    assert f"SHA-256 {fingerprint}" in text
    assert "`gateway init --smime-csr FILE`" in text
    assert "`gateway key export --smime`" in text
    [record] = [
        r for r in json.loads(fresh_gateway.ok("audit", "list", "--json")) if r["action"] == "key.expiry-notice"
    ]
    assert (record["details"]["fingerprint"], record["details"]["holder"]) == (fingerprint, "gateway")
