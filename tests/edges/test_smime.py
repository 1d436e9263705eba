"""S/MIME against OpenSSL, an implementation nobody here wrote: the gateway's replies open and verify in
`openssl cms`, and requests made by `openssl cms` (and the older `openssl smime`) as Outlook sends them verify
against the pinned certificate alone, or decrypt.

Everything is real openssl on certificates made once per session; nothing is mocked.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import re
from email import message_from_bytes, policy
from email.message import EmailMessage, Message
from pathlib import Path

import pytest

from gateway.gpgrun import DECRYPT_MAX_BYTES
from gateway.smime import (
    CertificateProblem,
    Detached,
    Enveloped,
    NotSmime,
    Opaque,
    OpensslUnavailable,
    SmimeLimitExceeded,
    Verified,
    certificates_in_signed_message,
    decrypt,
    read_certificate,
    sign_and_encrypt,
    smime_layer,
    verify,
)
from tests.support.addresses import GATEWAY_ADDRESS, LA_ADDRESS, POLICE_ADDRESS
from tests.support.processes import children
from tests.support.smime import Identity, SmimeCerts, openssl

# What compose.inner_message makes: a multipart/mixed with a cover note and a marked CSV file, CRLF throughout.
INNER = (
    b'Content-Type: multipart/mixed; boundary="inner"; protected-headers="v1"\r\n'
    b"Subject: OFFICIAL-SENSITIVE register extract REF-1\r\n"
    b"\r\n"
    b"--inner\r\n"
    b'Content-Type: text/plain; charset="utf-8"\r\n'
    b"Content-Transfer-Encoding: 7bit\r\n"
    b"\r\n"
    b"OFFICIAL-SENSITIVE\r\n\r\nThe extract you asked for is attached.\r\n"
    b"--inner\r\n"
    b'Content-Type: text/csv; charset="utf-8"; name="homes.csv"\r\n'
    b'Content-Disposition: attachment; filename="homes.csv"\r\n'
    b"\r\n"
    b"OFFICIAL-SENSITIVE\r\nURN,Name\r\nSC000001,Example House\r\n"
    b"--inner--\r\n"
)

# A request as Outlook puts it inside the signature: its own text part, CRLF.
REQUEST = (
    b'Content-Type: text/plain; charset="us-ascii"\r\n'
    b"Content-Transfer-Encoding: 7bit\r\n"
    b"\r\n"
    b"Request: disclosure\r\nArea: Shropshire\r\nPurpose: Safeguarding children in our force area\r\n"
)


def envelope(sender: str, recipient: str) -> list[str]:
    return ["-from", sender, "-to", recipient, "-subject", "Register request"]


def outlook_signed(signer: Identity, *options: str, tool: str = "cms") -> bytes:
    """A request signed as Outlook sends it (detached multipart/signed unless -nodetach), CRLF on the wire
    (unless -lf: as a mail store may keep it)."""
    eol = [] if "-lf" in options else ["-crlfeol"]
    return openssl(tool, "-sign", "-signer", str(signer.cert), "-inkey", str(signer.key), "-md", "sha256", *eol,
                   *envelope(POLICE_ADDRESS, GATEWAY_ADDRESS), *(o for o in options if o != "-lf"),
                   data=REQUEST)  # fmt: skip


def checked(mail: bytes, pinned: bytes) -> Verified:
    """verify() on the signature the message carries, read as the gateway reads it (smime_layer)."""
    layer = smime_layer(mail)
    assert isinstance(layer, Detached | Opaque), layer
    return verify(layer, pinned)


def opened(mail: bytes, gateway: Identity, max_bytes: int = DECRYPT_MAX_BYTES) -> bytes:
    """decrypt() on what the message carries, read as the gateway reads it (smime_layer)."""
    layer = smime_layer(mail)
    assert isinstance(layer, Enveloped), layer
    return decrypt(layer, gateway.pem, gateway.key, max_bytes=max_bytes)


def opened_as_a_recipient(sealed: bytes, recipient: Identity, tmp_path: Path) -> bytes:
    """What `openssl cms -decrypt` makes of the gateway's reply, read as mail from a file."""
    mail = tmp_path / "reply.eml"
    mail.write_bytes(f"From: {GATEWAY_ADDRESS}\r\nTo: x@y.example\r\nMIME-Version: 1.0\r\n".encode() + sealed)
    return openssl("cms", "-decrypt", "-recip", str(recipient.cert), "-inkey", str(recipient.key), "-in", str(mail))


def walk_defects(message: Message) -> list[str]:
    return [f"{part.get_content_type()}: {defect!r}" for part in message.walk() for defect in part.defects]


def lines_end_in_crlf(data: bytes) -> bool:
    return re.search(rb"(?<!\r)\n|\r(?!\n)", data) is None


def parsed(data: bytes) -> EmailMessage:
    message = message_from_bytes(data, policy=policy.default)
    assert isinstance(message, EmailMessage)
    assert walk_defects(message) == []
    return message


# ---------------------------------------------------------------- replies, opened by openssl


@pytest.mark.parametrize("who", ["police", "la"], ids=["rsa-recipient", "ec-recipient"])
def test_a_reply_decrypts_and_verifies_in_openssl(smime_certs: SmimeCerts, tmp_path: Path, who: str) -> None:
    recipient: Identity = getattr(smime_certs, who)
    gateway = smime_certs.gateway
    sealed = sign_and_encrypt(INNER, recipient.pem, gateway.pem, gateway.key)

    signed = opened_as_a_recipient(sealed, recipient, tmp_path)
    (tmp_path / "signed.eml").write_bytes(signed)
    # The gateway's certificate as the authority imported it, as its only trust anchor; then pinned, as the
    # gateway itself checks requests.
    by_ca = openssl("cms", "-verify", "-CAfile", str(gateway.cert), "-in", str(tmp_path / "signed.eml"))
    pinned = openssl("cms", "-verify", "-noverify", "-nointern", "-certfile", str(gateway.cert),
                     "-in", str(tmp_path / "signed.eml"))  # fmt: skip
    assert by_ca == pinned == INNER


@pytest.mark.parametrize("who", ["police", "la"], ids=["rsa-recipient", "ec-recipient"])
def test_a_reply_is_aes_256_cbc_around_a_sha_256_detached_signature(
    smime_certs: SmimeCerts, tmp_path: Path, who: str
) -> None:
    recipient: Identity = getattr(smime_certs, who)
    sealed = sign_and_encrypt(INNER, recipient.pem, smime_certs.gateway.pem, smime_certs.gateway.key)
    outer = parsed(sealed)
    der = outer.get_payload(decode=True)
    assert isinstance(der, bytes)
    printed = openssl("cms", "-cmsout", "-print", "-noout", "-inform", "DER", data=der).decode()
    assert "contentType: pkcs7-envelopedData" in printed
    assert "algorithm: aes-256-cbc" in printed
    # RSA: key transport (ktri); EC: ephemeral-static ECDH key agreement (kari, RFC 5753).
    assert ("d.ktri:" if who == "police" else "d.kari:") in printed

    signed = parsed(opened_as_a_recipient(sealed, recipient, tmp_path))
    signature = list(signed.iter_parts())[1].get_payload(decode=True)
    assert isinstance(signature, bytes)
    printed = openssl("cms", "-cmsout", "-print", "-noout", "-inform", "DER", data=signature).decode()
    assert "eContent: <ABSENT>" in printed  # detached
    assert "algorithm: sha256 " in printed
    assert "signingTime" in printed


def test_a_reply_is_canonical_mime_with_crlf_that_python_parses_without_defects(
    smime_certs: SmimeCerts, tmp_path: Path
) -> None:
    recipient = smime_certs.la
    sealed = sign_and_encrypt(INNER, recipient.pem, smime_certs.gateway.pem, smime_certs.gateway.key)
    assert lines_end_in_crlf(sealed)
    outer = parsed(sealed)
    assert outer.get_content_type() == "application/pkcs7-mime"
    assert outer.get_param("smime-type") == "enveloped-data"
    assert outer.get_param("name") == "smime.p7m"
    assert outer.get_filename() == "smime.p7m"
    assert outer["Content-Transfer-Encoding"] == "base64"
    assert max(len(line) for line in sealed.split(b"\r\n")) <= 998

    wire = opened_as_a_recipient(sealed, recipient, tmp_path)
    assert lines_end_in_crlf(wire)
    signed = parsed(wire)
    assert signed.get_content_type() == "multipart/signed"
    assert signed.get_param("protocol") == "application/pkcs7-signature"
    assert signed.get_param("micalg") == "sha-256"
    first, signature = signed.iter_parts()
    assert signature.get_content_type() == "application/pkcs7-signature"
    assert signature.get_filename() == "smime.p7s"
    assert first.get_content_type() == "multipart/mixed"
    assert first.as_bytes(policy=policy.SMTP) == INNER


def test_a_reply_with_lf_line_ends_is_signed_in_canonical_crlf(smime_certs: SmimeCerts, tmp_path: Path) -> None:
    sealed = sign_and_encrypt(INNER.replace(b"\r\n", b"\n"), smime_certs.police.pem, smime_certs.gateway.pem,
                              smime_certs.gateway.key)  # fmt: skip
    signed = parsed(opened_as_a_recipient(sealed, smime_certs.police, tmp_path))
    signature = list(signed.iter_parts())[1].get_payload(decode=True)
    assert isinstance(signature, bytes)
    # Byte for byte (-binary): the signature covers the CRLF form, what every client canonicalises to.
    (tmp_path / "inner").write_bytes(INNER)
    assert openssl("cms", "-verify", "-binary", "-inform", "DER", "-content", str(tmp_path / "inner"),
                   "-CAfile", str(smime_certs.gateway.cert), data=signature) == INNER  # fmt: skip


def test_no_reply_without_a_usable_certificate(smime_certs: SmimeCerts) -> None:
    gateway = smime_certs.gateway
    with pytest.raises(CertificateProblem, match="the recipient's certificate"):
        sign_and_encrypt(INNER, b"not a certificate", gateway.pem, gateway.key)
    with pytest.raises(CertificateProblem, match="could not sign"):
        sign_and_encrypt(INNER, smime_certs.police.pem, gateway.pem, smime_certs.la.key)  # not the gateway's key
    with pytest.raises(OpensslUnavailable, match="cannot run"):
        sign_and_encrypt(INNER, smime_certs.police.pem, gateway.pem, gateway.key, openssl="/nonexistent/openssl")


# ---------------------------------------------------------------- requests, signed by openssl as Outlook signs


@pytest.mark.parametrize(
    ("options", "kind"),
    [
        ((), "multipart/signed"),
        (("-nodetach",), "application/pkcs7-mime"),
        (("-lf",), "multipart/signed"),
        (("-nodetach", "-stream"), "application/pkcs7-mime"),
    ],
    ids=[
        "detached multipart/signed",
        "opaque signed-data",
        "detached, stored with LF line ends",
        "opaque, indefinite-length BER",
    ],
)
def test_a_request_signed_as_outlook_signs_verifies_against_the_pinned_certificate(
    smime_certs: SmimeCerts, options: tuple[str, ...], kind: str
) -> None:
    mail = outlook_signed(smime_certs.police, *options)
    assert parsed(mail).get_content_type() == kind
    verified = checked(mail, smime_certs.police.pem)
    status = verified.signature
    assert status.good, status.problem
    assert verified.content == REQUEST  # the signed bytes, exactly: the request is read from these
    assert status.primary_fingerprint == read_certificate(smime_certs.police.pem).fingerprint
    assert status.signed_at is not None
    assert abs(status.signed_at - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=10)  # openssl signs now
    assert checked(mail, smime_certs.police.pem).signature.replay_keys() == status.replay_keys()
    assert len(status.replay_keys()) == 2


@pytest.mark.parametrize("options", [(), ("-nodetach",)], ids=["detached", "opaque"])
def test_the_older_x_pkcs7_spellings_are_accepted(smime_certs: SmimeCerts, options: tuple[str, ...]) -> None:
    mail = outlook_signed(smime_certs.police, *options, tool="smime")  # openssl smime writes application/x-pkcs7-*
    assert b"application/x-pkcs7-" in mail
    assert b"application/pkcs7-" not in mail
    verified = checked(mail, smime_certs.police.pem)
    assert verified.signature.good, verified.signature.problem
    assert verified.content == REQUEST


@pytest.mark.parametrize("options", [(), ("-nodetach",)], ids=["detached", "opaque"])
def test_a_signature_by_another_certificate_is_refused_though_it_carries_its_own(
    smime_certs: SmimeCerts, options: tuple[str, ...]
) -> None:
    # The impostor's certificate names the police address and travels in the message: openssl would trust it
    # without -nointern. Only the pinned certificate counts.
    mail = outlook_signed(smime_certs.impostor, *options)
    carried = [info.fingerprint for info in certificates_in_signed_message(mail)]
    assert carried == [read_certificate(smime_certs.impostor.pem).fingerprint]
    verified = checked(mail, smime_certs.police.pem)
    assert not verified.signature.good
    assert str(verified.signature.problem).startswith("the signature is not good, or not by the pinned certificate")
    assert verified.content == b""
    assert verified.signature.replay_keys() == ()
    assert checked(mail, smime_certs.impostor.pem).signature.good  # the same message, had that one been pinned


def test_without_nointern_openssl_would_have_taken_the_impostors_own_certificate(
    smime_certs: SmimeCerts, tmp_path: Path
) -> None:
    # The trap the engineering notes name, shown on openssl itself: -noverify -certfile pinned.pem alone still
    # trusts the certificate the message carries.
    (tmp_path / "mail.eml").write_bytes(outlook_signed(smime_certs.impostor))
    trusting = [
        "cms",
        "-verify",
        "-noverify",
        "-certfile",
        str(smime_certs.police.cert),
        "-in",
        str(tmp_path / "mail.eml"),
    ]
    assert openssl(*trusting) == REQUEST
    with pytest.raises(AssertionError, match="Verification failure"):
        openssl(*trusting, "-nointern")


def test_a_tampered_body_is_refused(smime_certs: SmimeCerts) -> None:
    detached = outlook_signed(smime_certs.police)
    assert b"our force area" in detached
    assert not checked(detached.replace(b"our force area", b"all of England"), smime_certs.police.pem).signature.good

    opaque = outlook_signed(smime_certs.police, "-nodetach")
    head, _, body = opaque.partition(b"\r\n\r\n")
    der = base64.b64decode(body)
    altered = der.replace(b"our force area", b"all of England")  # the same length: still well-formed DER
    assert altered != der
    forged = head + b"\r\n\r\n" + base64.encodebytes(altered).replace(b"\n", b"\r\n")
    assert not checked(forged, smime_certs.police.pem).signature.good


def test_a_sha1_signature_is_refused(smime_certs: SmimeCerts) -> None:
    mail = openssl("cms", "-sign", "-signer", str(smime_certs.police.cert), "-inkey", str(smime_certs.police.key),
                   "-md", "sha1", "-crlfeol", data=REQUEST)  # fmt: skip
    status = checked(mail, smime_certs.police.pem).signature
    assert not status.good
    assert status.problem == "the signature uses a digest other than SHA-256, SHA-384 or SHA-512"


def test_what_is_not_an_smime_signature_is_refused_with_its_reason(smime_certs: SmimeCerts) -> None:
    plain = f"From: {POLICE_ADDRESS}\r\nContent-Type: text/plain\r\n\r\nRequest: disclosure\r\n".encode()
    assert smime_layer(plain) == NotSmime(
        "the message is not S/MIME (application/pkcs7-mime or application/x-pkcs7-mime, or multipart/signed)"
    )
    pgp = b'Content-Type: multipart/signed; protocol="application/pgp-signature"; boundary="b"\r\n\r\n--b--\r\n'
    assert smime_layer(pgp) == NotSmime("the multipart/signed message does not carry an S/MIME signature")
    bare_cr = outlook_signed(smime_certs.police).replace(b"Area: Shropshire", b"Area: Shrop\rshire")
    assert smime_layer(bare_cr) == NotSmime(
        "the signed message holds a carriage return that ends no line: it cannot be verified unambiguously"
    )


# ---------------------------------------------------------------- requests encrypted to the gateway


@pytest.mark.parametrize("tool", ["cms", "smime"], ids=["pkcs7-mime", "x-pkcs7-mime"])
def test_a_signed_request_encrypted_to_the_gateway_decrypts_and_verifies(smime_certs: SmimeCerts, tool: str) -> None:
    # As Outlook sends "sign and encrypt": the signed entity (no envelope headers) encrypted, AES-256.
    signed = openssl("cms", "-sign", "-signer", str(smime_certs.police.cert), "-inkey", str(smime_certs.police.key),
                     "-md", "sha256", "-crlfeol", data=REQUEST)  # fmt: skip
    mail = openssl(tool, "-encrypt", "-aes256", "-crlfeol", *envelope(POLICE_ADDRESS, GATEWAY_ADDRESS),
                   str(smime_certs.gateway.cert), data=signed)  # fmt: skip
    inner = opened(mail, smime_certs.gateway)
    assert inner == signed.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")  # encrypted in canonical form
    verified = checked(inner, smime_certs.police.pem)
    assert verified.signature.good, verified.signature.problem
    assert verified.content == REQUEST


def test_a_message_encrypted_to_another_certificate_is_not_decrypted(smime_certs: SmimeCerts) -> None:
    mail = openssl("cms", "-encrypt", "-aes256", str(smime_certs.la.cert), data=REQUEST)
    with pytest.raises(CertificateProblem, match="could not be decrypted with the gateway's certificate"):
        opened(mail, smime_certs.gateway)
    assert isinstance(smime_layer(outlook_signed(smime_certs.police, "-nodetach")), Opaque)  # signed, not encrypted


def test_decryption_is_bounded_and_the_bound_is_exact(smime_certs: SmimeCerts) -> None:
    plaintext = os.urandom(300_000)  # larger than any pipe buffer
    mail = openssl("cms", "-encrypt", "-aes256", "-binary", str(smime_certs.gateway.cert), data=plaintext)
    gateway = smime_certs.gateway
    assert opened(mail, gateway, max_bytes=len(plaintext)) == plaintext
    with pytest.raises(SmimeLimitExceeded, match=f"^the decrypted message is larger than {len(plaintext) - 1} bytes$"):
        opened(mail, gateway, max_bytes=len(plaintext) - 1)
    assert openssl_children() == []  # killed and reaped


def openssl_children() -> list[str]:
    """openssl processes, running or zombie, whose parent is this test process."""
    return children(lambda name: name == "openssl")


# ---------------------------------------------------------------- certificates from a signed message


def test_the_certificate_is_taken_from_a_signed_message_however_it_is_spelt(smime_certs: SmimeCerts) -> None:
    police = read_certificate(smime_certs.police.pem)
    for mail in (outlook_signed(smime_certs.police), outlook_signed(smime_certs.police, "-nodetach"),
                 outlook_signed(smime_certs.police, tool="smime")):  # fmt: skip
        carried = certificates_in_signed_message(mail)
        assert [info.fingerprint for info in carried] == [police.fingerprint]
        assert carried[0].problems(POLICE_ADDRESS, dt.datetime(2030, 6, 1, tzinfo=dt.UTC)) == []
    with pytest.raises(CertificateProblem, match="carries no certificate"):
        certificates_in_signed_message(outlook_signed(smime_certs.police, "-nocerts"))
    encrypted = openssl("cms", "-encrypt", "-aes256", str(smime_certs.gateway.cert), data=REQUEST)
    with pytest.raises(CertificateProblem, match="encrypted: decrypt it first"):
        certificates_in_signed_message(encrypted)
    assert LA_ADDRESS not in {address for info in carried for address in info.emails}
