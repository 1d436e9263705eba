"""S/MIME certificates for the tests, made once per session with cryptography, valid over fixed dates far from
today (so no verdict depends on the day the suite runs), and openssl run as an authority's mail client would."""

from __future__ import annotations

import base64
import datetime as dt
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.utils import format_datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pyasn1.codec.ber import decoder
from pyasn1.codec.der import encoder
from pyasn1.type import univ, useful
from pyasn1_modules import rfc5652

from gateway.smime import make_self_signed
from tests.support.addresses import GATEWAY_ADDRESS, LA_ADDRESS, POLICE_ADDRESS
from tests.support.requests import REQUEST

# Every test certificate is valid from the first to the last of these, unless a test says otherwise; openssl's own
# chain check (-CAfile) uses today's date, which falls between them for the rest of the century.
VALID_FROM = dt.datetime(2001, 1, 1, tzinfo=dt.UTC)
VALID_UNTIL = dt.datetime(2099, 12, 31, tzinfo=dt.UTC)


# What a mail certificate's keyUsage allows, by its kind of key (RFC 8550 4.4.2).
RSA_USAGE = frozenset({"digital_signature", "key_encipherment"})
EC_USAGE = frozenset({"digital_signature", "key_agreement"})


@dataclass(frozen=True)
class Identity:
    """A certificate and its private key, as files openssl reads."""

    cert: Path
    key: Path

    @property
    def pem(self) -> bytes:
        return self.cert.read_bytes()


def new_key(kind: str) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey:
    """ "rsa-2048", "rsa-1024", "ec-secp256r1", "ec-secp521r1", ..., or "ed25519"."""
    if kind.startswith("rsa-"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(kind[4:]))
    if kind.startswith("ec-"):
        return ec.generate_private_key(_CURVES[kind[3:]]())
    assert kind == "ed25519", kind
    return ed25519.Ed25519PrivateKey.generate()


_CURVES: dict[str, type[ec.EllipticCurve]] = {
    "secp256r1": ec.SECP256R1, "secp384r1": ec.SECP384R1, "secp521r1": ec.SECP521R1, "secp256k1": ec.SECP256K1,
}  # fmt: skip


def certificate(
    directory: Path,
    name: str,
    emails: tuple[str, ...],
    *,
    key: str = "rsa-2048",
    not_before: dt.datetime = VALID_FROM,
    not_after: dt.datetime = VALID_UNTIL,
    usage: frozenset[str] | None = None,  # the keyUsage bits set; default: what the kind of key needs
    no_key_usage: bool = False,
    eku: tuple[x509.ObjectIdentifier, ...] | None = (ExtendedKeyUsageOID.EMAIL_PROTECTION,),  # None: no extension
) -> Identity:
    """A self-signed end-entity certificate for `emails` (subjectAltName rfc822Names), written as name.pem and
    name.key in `directory`."""
    private = new_key(key)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if emails:
        names = [x509.RFC822Name(address) for address in emails]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if not no_key_usage:
        bits = usage if usage is not None else (RSA_USAGE if key.startswith("rsa") else EC_USAGE)
        flags = {flag: flag in bits for flag in _KEY_USAGE_FLAGS}
        builder = builder.add_extension(x509.KeyUsage(**flags), critical=True)
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    made = builder.sign(private, None if key == "ed25519" else hashes.SHA256())
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(made.public_bytes(serialization.Encoding.PEM))
    pkcs8 = serialization.PrivateFormat.PKCS8
    key_path.write_bytes(private.private_bytes(serialization.Encoding.PEM, pkcs8, serialization.NoEncryption()))
    key_path.chmod(0o600)
    return Identity(cert_path, key_path)


_KEY_USAGE_FLAGS = (
    "digital_signature", "content_commitment", "key_encipherment", "data_encipherment", "key_agreement",
    "key_cert_sign", "crl_sign", "encipher_only", "decipher_only",
)  # fmt: skip


@dataclass(frozen=True)
class SmimeCerts:
    directory: Path
    gateway: Identity  # made by the gateway's own make_self_signed: RSA 3072
    police: Identity  # RSA 2048, POLICE_ADDRESS: the pinned certificate of a police force
    la: Identity  # EC P-256, LA_ADDRESS: a council on elliptic curves
    impostor: Identity  # EC P-256, also naming POLICE_ADDRESS: anyone can make one


@pytest.fixture(scope="session")
def smime_certs(tmp_path_factory: pytest.TempPathFactory) -> SmimeCerts:
    directory = tmp_path_factory.mktemp("smime")
    gateway_dir = directory / "gateway"
    gateway_dir.mkdir()
    cert, key = make_self_signed(GATEWAY_ADDRESS, gateway_dir, now=VALID_FROM, days=(VALID_UNTIL - VALID_FROM).days)
    return SmimeCerts(
        directory=directory,
        gateway=Identity(cert, key),
        police=certificate(directory, "police", (POLICE_ADDRESS,)),
        la=certificate(directory, "la", (LA_ADDRESS,), key="ec-secp256r1"),
        impostor=certificate(directory, "impostor", (POLICE_ADDRESS,), key="ec-secp256r1"),
    )


def openssl(*args: str, data: bytes = b"") -> bytes:
    """openssl as a mail client or a recipient runs it; a failure raises with openssl's words."""
    result = subprocess.run(["openssl", *args], input=data, capture_output=True, check=False, timeout=60)
    if result.returncode != 0:
        raise AssertionError(f"openssl {' '.join(args[:2])} failed: {result.stderr.decode(errors='replace')}")
    return result.stdout


# ---------------------------------------------------------------- requests, as Outlook sends them

# What Outlook puts inside the signature: the request in its own text part, CRLF.
REQUEST_PART = b'Content-Type: text/plain; charset="us-ascii"\r\nContent-Transfer-Encoding: 7bit\r\n\r\n' + (
    REQUEST.encode()
)


def smime_signed(
    signer: Identity,
    at: dt.datetime,
    *options: str,
    content: bytes = REQUEST_PART,
    tool: str = "cms",
    sender: str | None = POLICE_ADDRESS,
    digest: str = "sha256",
) -> bytes:
    """`content` signed by `signer` as Outlook signs it (detached multipart/signed unless -nodetach, CRLF), dated
    `at`; with From, To and Subject (openssl's -from, -to, -subject) unless `sender` is None: then it is the
    entity Outlook encrypts next. `tool` "smime" writes the older application/x-pkcs7-* types."""
    envelope = [] if sender is None else ["-from", sender, "-to", GATEWAY_ADDRESS, "-subject", "Register request"]
    mail = openssl(tool, "-sign", "-signer", str(signer.cert), "-inkey", str(signer.key), "-md", digest,
                   "-crlfeol", *envelope, *options, data=content)  # fmt: skip
    return dated(mail, signer, at, digest)


def smime_encrypted(
    entity: bytes, recipient: Identity, *options: str, tool: str = "cms", sender: str = POLICE_ADDRESS
) -> bytes:
    """`entity` encrypted to `recipient` (AES-256-CBC unless `options` name another cipher), with From, To and
    Subject: "sign and encrypt" in Outlook is this around smime_signed(..., sender=None)."""
    cipher = [] if any(option.startswith(("-aes", "-des", "-rc2")) for option in options) else ["-aes256"]
    return openssl(tool, "-encrypt", *cipher, *options, "-crlfeol", "-from", sender, "-to", GATEWAY_ADDRESS,
                   "-subject", "Register request", str(recipient.cert), data=entity)  # fmt: skip


def as_sent(mail: bytes, message_id: str, at: dt.datetime) -> bytes:
    """The mail with the Message-ID and Date its client adds on sending."""
    return f"Message-ID: <{message_id}@tests.example>\r\nDate: {format_datetime(at)}\r\n".encode() + mail


def dated(mail: bytes, signer: Identity, at: dt.datetime, digest: str = "sha256") -> bytes:
    """The S/MIME signed mail openssl wrote, as if signed at `at`: openssl signs at the moment it runs, and a
    test's verdict must not depend on the day it runs. The signingTime attribute is set to `at`, and the
    signature made again over the signed attributes by openssl (`openssl dgst -sign`, as `cms -sign` signs
    them: PKCS #1 v1.5 for RSA, ECDSA for EC, with the `digest` it was signed with); everything else is as
    openssl wrote it."""
    return with_cms(mail, lambda der: _redated(der, signer, at, digest))


def with_cms(mail: bytes, change: Callable[[bytes], bytes]) -> bytes:
    """The S/MIME signed mail with its CMS signature (DER) replaced by change(signature); every other byte,
    the signed part's among them, as it was."""
    message = message_from_bytes(mail, policy=policy.default)
    part = list(message.iter_parts())[1] if message.is_multipart() else message
    written = str(part.get_payload()).strip().encode("ascii")
    assert mail.count(written) == 1, "the signature's base64 is not found once in the mail"
    eol = b"\r\n" if b"\r\n" in written else b"\n"
    text = base64.b64encode(change(base64.b64decode(written)))
    return mail.replace(written, eol.join(text[i : i + 64] for i in range(0, len(text), 64)))


def _redated(der: bytes, signer: Identity, at: dt.datetime, digest: str) -> bytes:
    info, _ = decoder.decode(der, asn1Spec=rfc5652.ContentInfo())
    signed, _ = decoder.decode(info["content"], asn1Spec=rfc5652.SignedData())
    signer_info = signed["signerInfos"][0]
    attributes = signer_info["signedAttrs"]
    moment = useful.UTCTime(at.astimezone(dt.UTC).strftime("%y%m%d%H%M%SZ"))
    times = [attr for attr in attributes if attr["attrType"] == rfc5652.id_signingTime]
    assert len(times) == 1, "openssl wrote no signing time"
    times[0]["attrValues"][0] = encoder.encode(rfc5652.SigningTime().setComponentByName("utcTime", moment))
    # Signed as a SET OF (RFC 5652 5.4), not with the [0] IMPLICIT tag it carries in the SignerInfo.
    covered = b"\x31" + encoder.encode(attributes)[1:]
    key = ["-sign", str(signer.key), "-passin", "pass:"]
    signer_info["signature"] = univ.OctetString(openssl("dgst", f"-{digest}", "-binary", *key, data=covered))
    info["content"] = encoder.encode(signed)
    return bytes(encoder.encode(info))
