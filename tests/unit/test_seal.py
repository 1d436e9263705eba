"""seal() takes the method of the address the mail goes to: PGP/MIME to the authority's key, or S/MIME to the
certificate pinned for that address; and whatever it cannot seal to is a KeyProblem saying why, raised before
anything is built: the callers fail closed on it."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from gateway import metrics
from gateway.compose import Templates, envelope_for, seal, sealing_credential
from gateway.config import load_config
from gateway.db.engine import create_database
from gateway.db.models import Authority, AuthorityAddress
from gateway.gpgrun import KeyProblem
from gateway.smime import read_certificate
from gateway.smime.identity import Identity, load_identity
from gateway.values import Context, Credential
from tests.support.addresses import ADMIN_ADDRESS, GATEWAY_ADDRESS, LA_ADDRESS, POLICE_ADDRESS
from tests.support.keys import AuthorityKeys, gateway_keyring
from tests.support.smime import SmimeCerts, certificate
from tests.support.smime_live import opened_by_openssl

NOW = dt.datetime(2027, 3, 1, 9, 0, tzinfo=dt.UTC)  # a fixed moment: the keys are valid, the certificates too
OPENPGP_ADDRESS = "duty@westmercia.police.example"


@pytest.fixture
def ctx(tmp_path: Path, keys: AuthorityKeys, smime_certs: SmimeCerts) -> Iterator[Context]:
    """The gateway's settings, its OpenPGP keyring (the police key pinned) and its S/MIME identity, at NOW."""
    with gateway_keyring(tmp_path / "gnupg", keys, "HMCI register gateway", keys.police_timeless) as (ring, signer):
        path = tmp_path / "gateway.toml"
        path.write_text(
            f'[gateway]\naddress = "{GATEWAY_ADDRESS}"\nadmin_address = "{ADMIN_ADDRESS}"\n'
            f'[database]\nurl = "sqlite:///{tmp_path / "unused.db"}"\n'
            f'[gpg]\nhome = "gnupg"\nsigning_key = "{signer}"\n'
            f'[smime]\ncertificate = "{smime_certs.gateway.cert}"\nkey = "{smime_certs.gateway.key}"\n'
        )
        config = load_config(path)
        yield Context(
            config, create_database(config.database), ring, Templates(), clock=lambda: NOW,
            smime=load_identity(config, NOW),
        )  # fmt: skip


def police(keys: AuthorityKeys, certs: SmimeCerts) -> Authority:
    """West Mercia Police with two addresses: one that takes OpenPGP (the authority's key), one S/MIME."""
    pinned = read_certificate(certs.police.pem)
    return Authority(
        name="West Mercia Police",
        key_fingerprint=keys.police_timeless.fingerprint,
        addresses=[
            AuthorityAddress(address=OPENPGP_ADDRESS, method="openpgp"),
            AuthorityAddress(
                address=POLICE_ADDRESS,
                method="smime",
                cert_fingerprint=pinned.fingerprint,
                cert_pem=pinned.pem.decode(),
                cert_subject=pinned.subject,
                cert_expires=pinned.not_after,
            ),
        ],
    )


async def sealed(ctx: Context, authority: Authority, recipient: str) -> tuple[EmailMessage, bytes, Credential | None]:
    envelope = envelope_for(ctx, recipient, "HMCI-20270301-0A1B2C3D", "Register gateway: a notice (HMCI-20270301)")
    outgoing = await seal(ctx, "notice", envelope, "OFFICIAL-SENSITIVE\n\nA notice.\n", authority)
    assert outgoing.recipient == recipient
    parsed = message_from_bytes(outgoing.content, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed, outgoing.content, outgoing.credential


def observed(operation: str, tool: str) -> float:
    value = metrics.REGISTRY.get_sample_value(f"gateway_{tool}_seconds_count", {"operation": operation})
    return value or 0.0


async def test_each_address_gets_mail_in_its_own_method(
    ctx: Context, keys: AuthorityKeys, smime_certs: SmimeCerts, tmp_path: Path
) -> None:
    """One authority, two addresses: PGP/MIME to the one that takes OpenPGP, S/MIME to the one with a
    certificate; each names the credential it was sealed to, as sealing_credential says for that address."""
    authority = police(keys, smime_certs)
    gpg_before, openssl_before = observed("sign_and_encrypt", "gpg"), observed("sign_and_encrypt", "openssl")

    pgp, _, pgp_credential = await sealed(ctx, authority, OPENPGP_ADDRESS)
    assert pgp.get_content_type() == "multipart/encrypted"
    assert pgp_credential == Credential("openpgp", keys.police_timeless.fingerprint)
    assert sealing_credential(authority, OPENPGP_ADDRESS) == pgp_credential

    smime, wire, smime_credential = await sealed(ctx, authority, POLICE_ADDRESS)
    assert smime.get_content_type() == "application/pkcs7-mime"
    assert smime_credential == Credential("smime", read_certificate(smime_certs.police.pem).fingerprint)
    assert sealing_credential(authority, POLICE_ADDRESS) == smime_credential
    assert b"A notice." in opened_by_openssl(wire, smime_certs.police, smime_certs.gateway.cert, tmp_path)

    # openssl's time is recorded beside gpg's, one call each
    assert observed("sign_and_encrypt", "gpg") == gpg_before + 1
    assert observed("sign_and_encrypt", "openssl") == openssl_before + 1


async def test_the_s_mime_message_is_the_outer_fields_then_the_enveloped_entity(
    ctx: Context, keys: AuthorityKeys, smime_certs: SmimeCerts
) -> None:
    """RFC 8551 3.3: the same outer fields as the PGP/MIME reply (nothing but the marking and the reference
    readable), MIME-Version, then application/pkcs7-mime; smime-type=enveloped-data as smime.p7m, in base64,
    CRLF throughout."""
    outer, wire, _ = await sealed(ctx, police(keys, smime_certs), POLICE_ADDRESS)
    assert [part.defects for part in outer.walk()] == [[]]
    assert str(outer["Subject"]) == "[OFFICIAL-SENSITIVE] HMCI-20270301-0A1B2C3D"
    assert str(outer["SIO-Label"]) == 'marking="OFFICIAL-SENSITIVE"'
    assert str(outer["Auto-Submitted"]) == "auto-generated"
    assert (str(outer["From"]), str(outer["To"])) == (GATEWAY_ADDRESS, POLICE_ADDRESS)
    assert outer["MIME-Version"] == "1.0"
    assert outer.get_content_type() == "application/pkcs7-mime"
    assert outer.get_param("smime-type") == "enveloped-data"
    assert outer.get_param("name") == "smime.p7m"
    assert outer.get_content_disposition() == "attachment"
    assert outer.get_filename() == "smime.p7m"
    assert outer["Content-Transfer-Encoding"] == "base64"
    assert b"\n" not in wire.replace(b"\r\n", b"")
    assert b"\r" not in wire.replace(b"\r\n", b"")
    assert b"notice" not in wire.split(b"\r\n\r\n", 1)[0].lower()  # the real Subject travels inside only


def expiring(directory: Path, address: str, until: dt.datetime) -> str:
    made = certificate(directory, f"until-{until:%Y%m%d}", (address,), not_after=until)
    return made.pem.decode()


@pytest.mark.parametrize(
    "case",
    [
        "not registered", "no certificate", "expired", "not for this address", "stored copy differs",
        "unknown method", "no identity", "identity expired", "no OpenPGP key",
    ],
)  # fmt: skip
async def test_nothing_is_sealed_to_what_cannot_be_used(
    ctx: Context, keys: AuthorityKeys, smime_certs: SmimeCerts, tmp_path: Path, case: str
) -> None:
    authority = police(keys, smime_certs)
    smime = authority.addresses[1]
    recipient = POLICE_ADDRESS
    if case == "not registered":
        recipient = LA_ADDRESS
        expected = f"{LA_ADDRESS} is not a registered address of 'West Mercia Police'"
    elif case == "no certificate":  # removed at once (authority remove-cert): nothing goes until another is pinned
        smime.cert_fingerprint = smime.cert_pem = None
        expected = "takes smime, but no S/MIME certificate is pinned for it"
    elif case == "expired":  # pinned while it was valid; NOW is a day after its end
        smime.cert_pem = expiring(tmp_path, POLICE_ADDRESS, NOW - dt.timedelta(days=1))
        smime.cert_fingerprint = read_certificate(smime.cert_pem.encode()).fingerprint
        expected = "cannot be used: the certificate expired on 2027-02-28T09:00:00Z"
    elif case == "not for this address":
        smime.cert_pem = smime_certs.la.pem.decode()
        smime.cert_fingerprint = read_certificate(smime_certs.la.pem).fingerprint
        expected = f"cannot be used: the certificate is for {LA_ADDRESS} (subjectAltName rfc822Name)"
    elif case == "stored copy differs":  # the fingerprint is what two admins approved; the copy must be it
        smime.cert_pem = smime_certs.impostor.pem.decode()
        expected = "does not match its stored copy"
    elif case == "unknown method":
        smime.method = "pem"
        expected = "has an unknown delivery method 'pem'"
    elif case == "no identity":
        ctx = dataclasses.replace(ctx, smime=None)
        expected = f"{POLICE_ADDRESS} takes S/MIME, but the gateway has no S/MIME identity ([smime])"
    elif case == "identity expired":
        assert ctx.smime is not None
        own = read_certificate(expiring(tmp_path, GATEWAY_ADDRESS, NOW - dt.timedelta(hours=1)).encode())
        ctx = dataclasses.replace(ctx, smime=Identity(own, ctx.smime.key_path, "openssl", None))
        expected = f"the gateway's S/MIME certificate {own.fingerprint}: the certificate expired on 2027-03-01T08:00"
    else:
        recipient, authority.key_fingerprint = OPENPGP_ADDRESS, None
        expected = f"{OPENPGP_ADDRESS} of 'West Mercia Police' takes openpgp, but no OpenPGP key is pinned for it"
    before = observed("sign_and_encrypt", "openssl")
    with pytest.raises(KeyProblem) as raised:
        await sealed(ctx, authority, recipient)
    assert expected in str(raised.value)
    assert observed("sign_and_encrypt", "openssl") == before  # refused before openssl was asked anything
