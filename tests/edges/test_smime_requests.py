"""Requests in S/MIME, authenticated like PGP/MIME ones: signed by the certificate pinned for the From address,
detached or opaque, in either spelling, or signed then encrypted to the gateway as Outlook sends them; the
request read from exactly the bytes verified; nothing else (a carried certificate, an encryption, a PGP
signature, a weak cipher, a SHA-1 digest) counts.

Every request is made by real openssl, dated at a fixed moment (support/smime.py `dated`); nothing is mocked.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import pytest
from pyasn1.codec.ber import decoder
from pyasn1.codec.der import encoder
from pyasn1_modules import rfc3279, rfc5652

from gateway.authenticate import (
    Authenticated,
    Credential,
    PinnedCertificate,
    PinnedKey,
    Refused,
    authenticate,
    pinned_credential,
)
from gateway.config import LimitSettings
from gateway.db.models import Authority, AuthorityAddress
from gateway.requests import body_text, parse_request
from gateway.smime import certificates_in_signed_message, read_certificate
from gateway.smime.identity import Identity as GatewayIdentity
from tests.support.addresses import LA_ADDRESS, POLICE_ADDRESS
from tests.support.keys import AuthorityKeys
from tests.support.requests import BORDER, signed_message
from tests.support.smime import (
    REQUEST_PART,
    Identity,
    SmimeCerts,
    smime_encrypted,
    smime_signed,
    with_cms,
)
from tests.support.wire import parse

AT = dt.datetime(2027, 2, 10, 9, 0, tzinfo=dt.UTC)
PURPOSE = "Safeguarding children in our force area"
DOMAIN = POLICE_ADDRESS.rpartition("@")[2]
WEAK = "which the gateway does not accept: encrypt with AES (128, 192 or 256 bits, CBC or GCM)"


def gateway_identity(certs: SmimeCerts, key: Path | None = None) -> GatewayIdentity:
    """The gateway's own S/MIME identity, as load_identity makes it from [smime]."""
    return GatewayIdentity(read_certificate(certs.gateway.pem), key or certs.gateway.key, "openssl", None)


def pinned_police(certs: SmimeCerts) -> PinnedCertificate:
    return PinnedCertificate(POLICE_ADDRESS, certs.police.pem)


def no_gpg(data: bytes, signature: bytes) -> object:
    raise AssertionError("gpg was asked about a request from an address registered for S/MIME")


def check(
    raw: bytes,
    certs: SmimeCerts,
    *,
    pinned: Credential | None = None,
    policy: str = "signed",
    gateway: GatewayIdentity | None = None,
    limits: LimitSettings | None = None,
    headers: bytes = b"",
) -> Authenticated | Refused:
    raw = headers + raw
    return authenticate(
        parse(raw), raw, policy=policy, pinned=pinned or pinned_police(certs), authserv_id=BORDER,
        verify=no_gpg,  # type: ignore[arg-type]  # never called: the S/MIME address has no OpenPGP key
        smime=gateway or gateway_identity(certs), limits=limits,
    )  # fmt: skip


def accepted(result: Authenticated | Refused, certs: SmimeCerts, signer: Identity | None = None) -> str:
    """The purpose of the request an S/MIME signature by the pinned certificate authenticated."""
    assert isinstance(result, Authenticated), result
    assert result.method == "smime"
    signature = result.signature
    assert signature is not None
    assert signature.good
    assert signature.primary_fingerprint == read_certificate((signer or certs.police).pem).fingerprint
    assert signature.signed_at == AT  # the age and replay rules read this
    assert len(signature.replay_keys()) == 2
    assert all(len(key) <= 100 for key in signature.replay_keys())  # seen_signatures.signature_id
    request = parse_request(body_text(result.content)).request
    assert request is not None
    return request.purpose


# ---------------------------------------------------------------- signed


@pytest.mark.parametrize("tool", ["cms", "smime"], ids=["pkcs7", "x-pkcs7"])
@pytest.mark.parametrize("options", [(), ("-nodetach",)], ids=["detached", "opaque"])
def test_a_request_signed_by_the_pinned_certificate_is_authenticated(
    smime_certs: SmimeCerts, options: tuple[str, ...], tool: str
) -> None:
    mail = smime_signed(smime_certs.police, AT, *options, tool=tool)
    spelling = b"application/x-pkcs7-" if tool == "smime" else b"application/pkcs7-"
    assert spelling in mail
    assert accepted(check(mail, smime_certs), smime_certs) == PURPOSE


def test_a_council_signing_with_an_ec_certificate_is_authenticated(smime_certs: SmimeCerts) -> None:
    mail = smime_signed(smime_certs.la, AT, sender=LA_ADDRESS)
    pinned = PinnedCertificate(LA_ADDRESS, smime_certs.la.pem)
    assert accepted(check(mail, smime_certs, pinned=pinned), smime_certs, smime_certs.la) == PURPOSE


def test_outlooks_multipart_alternative_is_read_from_the_signed_bytes(smime_certs: SmimeCerts) -> None:
    content = (
        b'Content-Type: multipart/alternative; boundary="alt"\r\n\r\n--alt\r\n'
        b'Content-Type: text/plain; charset="us-ascii"\r\n\r\nRequest: disclosure\r\nPurpose: ' + PURPOSE.encode()
        + b"\r\n\r\n--alt\r\nContent-Type: text/html; charset=\"us-ascii\"\r\n\r\n<p>Request: disclosure</p>"
        b"<p>Purpose: " + PURPOSE.encode() + b"</p>\r\n--alt--\r\n"
    )  # fmt: skip
    mail = smime_signed(smime_certs.police, AT, content=content)
    assert accepted(check(mail, smime_certs), smime_certs) == PURPOSE


def test_everything_outside_the_signed_part_is_ignored(smime_certs: SmimeCerts) -> None:
    mail = smime_signed(smime_certs.police, AT)
    forged = b"Request: disclosure\r\nFrequency: monthly\r\nPurpose: FORGED outside the signature\r\n"
    assert mail.count(b"This is an S/MIME signed message") == 1
    padded = mail.replace(b"This is an S/MIME signed message", forged) + forged  # the preamble and the epilogue
    headers = b"Subject: Request: cancel\r\nX-Request: cancel\r\n"
    result = check(padded, smime_certs, headers=headers)
    assert accepted(result, smime_certs) == PURPOSE
    assert isinstance(result, Authenticated)
    assert b"FORGED" not in result.content.as_bytes()


def test_a_signed_part_hidden_behind_false_delimiters_is_refused(smime_certs: SmimeCerts) -> None:
    """Signature wrapping: the genuine signed part moved into the preamble between lines that start like the
    boundary but are not delimiters, the attacker's part where it was. The signed bytes are cut from the raw
    message at the real delimiters, where the parser reads the request: so what is verified is what would be
    read, the attacker's part, which the signature does not cover."""
    mail = smime_signed(smime_certs.police, AT)
    boundary = parse(mail).get_boundary()
    assert boundary is not None
    fake = b"--" + boundary.encode() + b"X"
    forged = b"Content-Type: text/plain\r\n\r\nRequest: disclosure\r\nPurpose: FORGED by someone\r\n"
    assert mail.count(REQUEST_PART) == 1
    wrapped = mail.replace(REQUEST_PART, forged).replace(
        b"This is an S/MIME signed message", fake + b"\r\n" + REQUEST_PART + b"\r\n" + fake + b"--"
    )
    first = next(parse(wrapped).iter_parts())
    assert "FORGED" in first.get_content()  # what a reader of the parsed message would take for the request
    result = check(wrapped, smime_certs)
    assert isinstance(result, Refused)
    assert result.reason.startswith("the S/MIME signature is refused: the signature is not good, or not by the pinned")


# ---------------------------------------------------------------- not by the pinned certificate


@pytest.mark.parametrize("options", [(), ("-nodetach",)], ids=["detached", "opaque"])
def test_the_impostors_certificate_naming_the_address_and_carried_in_the_message_counts_for_nothing(
    smime_certs: SmimeCerts, options: tuple[str, ...]
) -> None:
    mail = smime_signed(smime_certs.impostor, AT, *options)
    carried = certificates_in_signed_message(mail)
    assert [info.fingerprint for info in carried] == [read_certificate(smime_certs.impostor.pem).fingerprint]
    assert POLICE_ADDRESS in carried[0].emails
    result = check(mail, smime_certs)
    assert isinstance(result, Refused)
    assert result.reason.startswith(
        "the S/MIME signature is refused: the signature is not good, or not by the pinned certificate ("
    )


def test_a_tampered_signed_part_is_refused(smime_certs: SmimeCerts) -> None:
    mail = smime_signed(smime_certs.police, AT)
    assert accepted(check(mail, smime_certs), smime_certs) == PURPOSE
    altered = mail.replace(b"our force area", b"all of England")
    assert altered != mail
    result = check(altered, smime_certs)
    assert isinstance(result, Refused)
    assert result.reason.startswith("the S/MIME signature is refused: the signature is not good")


def test_a_sha1_signature_is_refused(smime_certs: SmimeCerts) -> None:
    mail = smime_signed(smime_certs.police, AT, digest="sha1")
    assert check(mail, smime_certs) == Refused(
        "the S/MIME signature is refused: the signature uses a digest other than SHA-256, SHA-384 or SHA-512"
    )


def test_a_pgp_signed_request_from_an_smime_address_is_refused(smime_certs: SmimeCerts, keys: AuthorityKeys) -> None:
    """Signed by the very key the authority once pinned: the address now takes S/MIME, and only its
    certificate counts (no_gpg fails the test if gpg is even asked)."""
    mail = signed_message(keys, keys.police.fingerprint)
    assert check(mail, smime_certs) == Refused(
        f"the message is OpenPGP, but {POLICE_ADDRESS} is registered for S/MIME: only the certificate pinned for "
        "it authenticates it"
    )


def test_an_smime_signed_request_from_an_openpgp_address_is_refused(smime_certs: SmimeCerts) -> None:
    mail = smime_signed(smime_certs.police, AT)
    pinned = PinnedKey(POLICE_ADDRESS, "0123456789ABCDEF0123456789ABCDEF01234567")
    assert check(mail, smime_certs, pinned=pinned) == Refused(
        "the message is S/MIME, but the address is registered for OpenPGP: only its authority's pinned OpenPGP "
        "key authenticates it"
    )


def test_an_unsigned_request_is_refused_unless_the_policy_takes_the_borders_dmarc(smime_certs: SmimeCerts) -> None:
    mail = b"From: " + POLICE_ADDRESS.encode() + b"\r\nMIME-Version: 1.0\r\n" + REQUEST_PART
    border = f"Authentication-Results: {BORDER}; dmarc=pass header.from={DOMAIN}\r\n".encode()
    strict = check(mail, smime_certs, headers=border)
    assert strict == Refused(
        "the message is not S/MIME (application/pkcs7-mime or application/x-pkcs7-mime, or multipart/signed)"
    )
    either = check(mail, smime_certs, headers=border, policy="signed-or-dmarc")
    assert isinstance(either, Authenticated)
    assert either.method == "dmarc"


# ---------------------------------------------------------------- signed, then encrypted to the gateway


@pytest.mark.parametrize(
    ("cipher", "signing"),
    [
        ("-aes256", ()),
        ("-aes128", ("-nodetach",)),
        ("-aes192", ()),
        ("-aes-256-gcm", ()),
        ("-aes-128-gcm", ("-nodetach",)),
    ],
    ids=["aes-256-cbc", "aes-128-cbc-opaque", "aes-192-cbc", "aes-256-gcm", "aes-128-gcm-opaque"],
)
def test_a_request_signed_then_encrypted_to_the_gateway_is_authenticated(
    smime_certs: SmimeCerts, cipher: str, signing: tuple[str, ...]
) -> None:
    entity = smime_signed(smime_certs.police, AT, *signing, sender=None)
    mail = smime_encrypted(entity, smime_certs.gateway, cipher)
    assert b"enveloped-data" in mail.split(b"\r\n\r\n")[0].lower()
    assert accepted(check(mail, smime_certs), smime_certs) == PURPOSE


def test_the_older_x_pkcs7_mime_spelling_is_decrypted_too(smime_certs: SmimeCerts) -> None:
    entity = smime_signed(smime_certs.police, AT, tool="smime", sender=None)
    mail = smime_encrypted(entity, smime_certs.gateway, tool="smime")
    assert b"application/x-pkcs7-mime" in mail
    assert accepted(check(mail, smime_certs), smime_certs) == PURPOSE


def test_an_encrypted_request_that_is_not_signed_is_refused(smime_certs: SmimeCerts) -> None:
    mail = smime_encrypted(REQUEST_PART, smime_certs.gateway)
    assert check(mail, smime_certs) == Refused(
        "the message is S/MIME encrypted but not signed inside (the message is not S/MIME (application/pkcs7-mime "
        "or application/x-pkcs7-mime, or multipart/signed)): a request must be signed with the certificate pinned "
        f"for {POLICE_ADDRESS}, then encrypted"
    )


def test_an_encrypted_request_signed_by_the_impostor_is_refused(smime_certs: SmimeCerts) -> None:
    mail = smime_encrypted(smime_signed(smime_certs.impostor, AT, sender=None), smime_certs.gateway)
    result = check(mail, smime_certs)
    assert isinstance(result, Refused)
    assert result.reason.startswith("the S/MIME signature is refused: the signature is not good, or not by the pinned")


def test_a_request_encrypted_to_someone_else_or_twice_or_without_an_identity_is_refused(
    smime_certs: SmimeCerts,
) -> None:
    signed = smime_signed(smime_certs.police, AT, sender=None)
    elsewhere = smime_encrypted(signed, smime_certs.la)
    assert check(elsewhere, smime_certs) == Refused("the message could not be decrypted with the gateway's certificate")
    twice = smime_encrypted(smime_encrypted(signed, smime_certs.gateway), smime_certs.gateway)
    assert check(twice, smime_certs) == Refused(
        "the message is S/MIME encrypted twice: the gateway reads one layer, signed, then encrypted"
    )
    raw = smime_encrypted(signed, smime_certs.gateway)
    refused = authenticate(parse(raw), raw, policy="signed", pinned=pinned_police(smime_certs), authserv_id=None,
                           verify=no_gpg)  # type: ignore[arg-type]  # fmt: skip
    assert refused == Refused("the message is S/MIME encrypted, but the gateway has no S/MIME certificate ([smime])")


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (("-des3",), "3DES (DES-EDE3-CBC)"),
        (("-rc2-128", "-provider", "legacy", "-provider", "default"), "RC2"),
        (("-des", "-provider", "legacy", "-provider", "default"), "DES"),
    ],
    ids=["3des", "rc2", "des"],
)
def test_a_weak_cipher_is_refused_before_anything_is_decrypted(
    smime_certs: SmimeCerts, tmp_path: Path, options: tuple[str, ...], named: str
) -> None:
    mail = smime_encrypted(smime_signed(smime_certs.police, AT, sender=None), smime_certs.gateway, *options)
    assert check(mail, smime_certs) == Refused(f"the message is encrypted with {named}, {WEAK}")
    # Read from the CMS structure, not learnt from openssl: with a key that cannot decrypt, the reason is the same.
    blind = gateway_identity(smime_certs, key=tmp_path / "no-such.key")
    assert check(mail, smime_certs, gateway=blind) == Refused(f"the message is encrypted with {named}, {WEAK}")


def test_what_decryption_opens_meets_the_message_limits_before_it_is_parsed(smime_certs: SmimeCerts) -> None:
    parts = b"".join(b"--m\r\nContent-Type: text/plain\r\n\r\npart\r\n" for _ in range(5))
    content = b'Content-Type: multipart/mixed; boundary="m"\r\n\r\n' + parts + b"--m--\r\n"
    mail = smime_encrypted(smime_signed(smime_certs.police, AT, content=content, sender=None), smime_certs.gateway)
    few = LimitSettings(max_mime_parts=4)
    assert check(mail, smime_certs, limits=few) == Refused(
        "the encrypted message, decrypted: the message has more than 4 MIME parts: not parsed"
    )
    assert isinstance(check(mail, smime_certs), Authenticated)  # within the default limits


# ---------------------------------------------------------------- replays: what the signer signed, however encoded

P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def flipped_ecdsa(der: bytes) -> bytes:
    """The same ECDSA signature with s replaced by n - s: it verifies just the same, yet is other bytes."""
    info, _ = decoder.decode(der, asn1Spec=rfc5652.ContentInfo())
    signed, _ = decoder.decode(info["content"], asn1Spec=rfc5652.SignedData())
    signer = signed["signerInfos"][0]
    value, _ = decoder.decode(bytes(signer["signature"]), asn1Spec=rfc3279.ECDSA_Sig_Value())
    value["s"] = P256_ORDER - int(value["s"])
    signer["signature"] = encoder.encode(value)
    info["content"] = encoder.encode(signed)
    return bytes(encoder.encode(info))


def test_an_ecdsa_signature_re_encoded_as_n_minus_s_is_still_known_for_a_replay(smime_certs: SmimeCerts) -> None:
    pinned = PinnedCertificate(LA_ADDRESS, smime_certs.la.pem)
    mail = smime_signed(smime_certs.la, AT, sender=LA_ADDRESS)
    copy = with_cms(mail, flipped_ecdsa)
    assert copy != mail
    first, second = check(mail, smime_certs, pinned=pinned), check(copy, smime_certs, pinned=pinned)
    assert isinstance(first, Authenticated)
    assert isinstance(second, Authenticated)  # it verifies just the same
    assert first.signature is not None
    assert second.signature is not None
    assert first.signature.signature_id != second.signature.signature_id  # the signature's own bytes differ
    assert first.signature.signed_sha256 == second.signature.signed_sha256  # what was signed does not
    assert set(first.signature.replay_keys()) & set(second.signature.replay_keys())


def test_the_same_words_signed_again_are_another_signature(smime_certs: SmimeCerts) -> None:
    one = check(smime_signed(smime_certs.police, AT), smime_certs)
    two = check(smime_signed(smime_certs.police, AT + dt.timedelta(minutes=1)), smime_certs)
    assert isinstance(one, Authenticated)
    assert isinstance(two, Authenticated)
    assert one.signature is not None
    assert two.signature is not None
    assert not set(one.signature.replay_keys()) & set(two.signature.replay_keys())


# ---------------------------------------------------------------- the credential pinned for the address


def authority(*addresses: AuthorityAddress, key: str | None = None) -> Authority:
    return Authority(name="West Mercia Police", key_fingerprint=key, addresses=list(addresses))


def test_the_address_method_decides_which_credential_counts(smime_certs: SmimeCerts) -> None:
    pem = smime_certs.police.pem.decode()
    fingerprint = hashlib.sha256(b"a key").hexdigest()[:40].upper()
    both = authority(
        AuthorityAddress(address=POLICE_ADDRESS, method="smime", cert_pem=pem, cert_expires=dt.datetime(2099, 12, 31,
                         tzinfo=dt.UTC)),
        AuthorityAddress(address=LA_ADDRESS, method="openpgp"),
        key=fingerprint,
    )  # fmt: skip
    assert pinned_credential(both, POLICE_ADDRESS, AT) == PinnedCertificate(POLICE_ADDRESS, pem.encode())
    assert pinned_credential(both, LA_ADDRESS, AT) == PinnedKey(LA_ADDRESS, fingerprint)


def test_no_usable_credential_is_a_refusal(smime_certs: SmimeCerts) -> None:
    pem = smime_certs.police.pem.decode()
    expired = dt.datetime(2027, 2, 1, tzinfo=dt.UTC)
    cases = {
        "smime, nothing pinned": (
            authority(AuthorityAddress(address=POLICE_ADDRESS, method="smime"), key="ABCD" * 10),
            f"no certificate is pinned for {POLICE_ADDRESS}",
        ),
        "openpgp, no key": (
            authority(AuthorityAddress(address=POLICE_ADDRESS, method="openpgp")),
            f"no OpenPGP key is pinned for {POLICE_ADDRESS}",
        ),
        "smime, expired": (
            authority(AuthorityAddress(address=POLICE_ADDRESS, method="smime", cert_pem=pem, cert_expires=expired)),
            f"the certificate pinned for {POLICE_ADDRESS} expired on 2027-02-01 00:00 UTC",
        ),
    }
    for name, (holder, reason) in cases.items():
        credential = pinned_credential(holder, POLICE_ADDRESS, AT)
        assert credential == Refused(reason), name
        # Whatever the message carries: a good signature by the very certificate, or anything else.
        assert check(smime_signed(smime_certs.police, AT), smime_certs, pinned=credential) == Refused(reason), name


def test_no_usable_credential_leaves_the_borders_dmarc_where_the_policy_allows_it(smime_certs: SmimeCerts) -> None:
    nothing = pinned_credential(authority(AuthorityAddress(address=POLICE_ADDRESS, method="smime")), POLICE_ADDRESS, AT)
    border = f"Authentication-Results: {BORDER}; dmarc=pass header.from={DOMAIN}\r\n".encode()
    mail = smime_signed(smime_certs.police, AT)
    result = check(mail, smime_certs, pinned=nothing, policy="signed-or-dmarc", headers=border)
    assert isinstance(result, Authenticated)
    assert result.method == "dmarc"
