"""S/MIME on the wire (RFC 8551): the MIME the gateway writes around CMS data, and the CMS data read out of the
MIME an authority's client sent, in either the application/pkcs7-* or the older application/x-pkcs7-* spelling."""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass
from email import message_from_bytes
from email.message import Message

from cryptography.hazmat.primitives.serialization import pkcs7

from gateway import shown
from gateway.guard import read_policy
from gateway.signedpart import BARE_CR, first_part_bytes, has_bare_cr
from gateway.smime import der
from gateway.smime.certs import CertificateProblem, CertInfo, cert_info

SIGNATURE_TYPES = ("application/pkcs7-signature", "application/x-pkcs7-signature")
MIME_TYPES = ("application/pkcs7-mime", "application/x-pkcs7-mime")


# ---------------------------------------------------------------- writing


def _base64_lines(data: bytes) -> bytes:
    """Base64 in lines of 76 characters, each ending in CRLF (RFC 2045 6.8)."""
    text = base64.b64encode(data)
    return b"".join(text[i : i + 76] + b"\r\n" for i in range(0, len(text), 76))


def _boundary(*parts: bytes) -> str:
    while True:  # 128 random bits: found in a part only by someone who saw it first; checked all the same
        boundary = f"=_smime_{secrets.token_hex(16)}"
        if not any(boundary.encode("ascii") in part for part in parts):
            return boundary


def signed_entity(content: bytes, signature: bytes) -> bytes:
    """`content` (a MIME entity, CRLF) in an RFC 8551 multipart/signed with the detached CMS `signature` (DER)."""
    signature_part = (
        b'Content-Type: application/pkcs7-signature; name="smime.p7s"\r\n'
        b"Content-Transfer-Encoding: base64\r\n"
        b'Content-Disposition: attachment; filename="smime.p7s"\r\n'
        b"Content-Description: S/MIME Cryptographic Signature\r\n\r\n" + _base64_lines(signature)
    )
    boundary = _boundary(content, signature_part)
    delimiter = b"\r\n--" + boundary.encode("ascii")
    # The CRLF before each delimiter belongs to the delimiter (RFC 2046 5.1.1): the content is signed without it.
    return (
        b'Content-Type: multipart/signed; protocol="application/pkcs7-signature";\r\n'
        b' micalg=sha-256; boundary="' + boundary.encode("ascii") + b'"\r\n\r\n'
        b"This is an S/MIME signed message." + delimiter + b"\r\n" + content + delimiter + b"\r\n"
        + signature_part.removesuffix(b"\r\n") + delimiter + b"--\r\n"
    )  # fmt: skip


def enveloped_entity(enveloped: bytes) -> bytes:
    """CMS EnvelopedData (DER) as the RFC 8551 application/pkcs7-mime entity that carries it."""
    return (
        b'Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name="smime.p7m"\r\n'
        b"Content-Transfer-Encoding: base64\r\n"
        b'Content-Disposition: attachment; filename="smime.p7m"\r\n'
        b"Content-Description: S/MIME Encrypted Message\r\n\r\n" + _base64_lines(enveloped)
    )


# ---------------------------------------------------------------- reading


@dataclass(frozen=True)
class Detached:
    """multipart/signed: the first part exactly as received (CRLF line ends), and the CMS signature (DER)."""

    content: bytes
    signature: bytes


@dataclass(frozen=True)
class Opaque:
    """application/pkcs7-mime; smime-type=signed-data: the content is inside the CMS SignedData (DER)."""

    signed_data: bytes


@dataclass(frozen=True)
class Enveloped:
    """application/pkcs7-mime; smime-type=enveloped-data (or authEnveloped-data): CMS to decrypt (DER)."""

    enveloped: bytes


@dataclass(frozen=True)
class NotSmime:
    """Why the message is no S/MIME layer the gateway reads."""

    reason: str


Layer = Detached | Opaque | Enveloped | NotSmime


# CMS content types (RFC 5652, RFC 5083), named as the smime-type parameter names them (RFC 8551 3.2.2).
_KINDS = {
    der.oid("1.2.840.113549.1.7.2"): "signed-data",  # id-signedData
    der.oid("1.2.840.113549.1.7.3"): "enveloped-data",  # id-envelopedData
    der.oid("1.2.840.113549.1.9.16.1.23"): "authenveloped-data",  # id-ct-authEnvelopedData
}


def content_kind(data: bytes) -> str | None:
    """ "signed-data", "enveloped-data" or "authenveloped-data", as the CMS ContentInfo's own type says; None
    when the data is not a ContentInfo of one of those. Only the outer type is read: what a message claims
    to be costs the same whatever it holds, and openssl reads the rest."""
    found = der.content_type(data)
    return _KINDS.get(found) if found is not None else None


def _decoded(part: Message) -> bytes | None:
    payload = part.get_payload(decode=True)
    return payload if isinstance(payload, bytes) and payload else None


def _detached(message: Message, raw: bytes) -> Layer:
    parts = message.get_payload()
    boundary = message.get_boundary()
    if not boundary or not isinstance(parts, list) or len(parts) != 2 or not isinstance(parts[1], Message):
        return NotSmime("a multipart/signed message must have exactly two parts")
    signature = _decoded(parts[1])
    if parts[1].get_content_type() not in SIGNATURE_TYPES or signature is None:
        return NotSmime("the second part of the signed message is not an S/MIME signature")
    if has_bare_cr(raw):
        return NotSmime(BARE_CR)
    content = first_part_bytes(raw, boundary)
    if content is None:
        return NotSmime("the signed message's boundaries could not be found")
    return Detached(content, signature)


def smime_layer(raw: bytes, message: Message | None = None) -> Layer:
    """The S/MIME layer at the top of a message (or MIME entity), read from its raw bytes; `message` is those
    bytes already parsed, if they are."""
    message = message_from_bytes(raw, policy=read_policy()) if message is None else message
    kind = message.get_content_type()
    if kind == "multipart/signed":
        if str(message.get_param("protocol", "")).lower() not in SIGNATURE_TYPES:
            return NotSmime("the multipart/signed message does not carry an S/MIME signature")
        return _detached(message, raw)
    if kind not in MIME_TYPES:
        return NotSmime(f"the message is not S/MIME ({' or '.join(MIME_TYPES)}, or multipart/signed)")
    data = _decoded(message)
    found = content_kind(data) if data is not None else None
    if data is None or found is None:
        return NotSmime("the application/pkcs7-mime part holds no CMS signed or enveloped data")
    said = str(message.get_param("smime-type", "")).lower()
    if said and said != found:
        # The sender's word, shown only as a token (shown.py): a reason can reach a notice the gateway signs.
        return NotSmime(f"the part says smime-type={shown.token(said)}, but its CMS data is {found}")
    return Opaque(data) if found == "signed-data" else Enveloped(data)


def certificates_in_signed_message(raw: bytes) -> tuple[CertInfo, ...]:
    """The certificates an S/MIME signed message carries (signer first, usually), for an admin to consider
    pinning after confirming the fingerprint with the authority out of band: carried, they prove nothing."""
    layer = smime_layer(raw)
    if isinstance(layer, Enveloped):
        raise CertificateProblem("the message is encrypted: decrypt it first, or give a signed message")
    if isinstance(layer, NotSmime):
        raise CertificateProblem(f"no S/MIME signature to take a certificate from: {layer.reason}")
    signed_data = layer.signature if isinstance(layer, Detached) else layer.signed_data
    try:
        found = pkcs7.load_der_pkcs7_certificates(signed_data)
    except ValueError:
        found = []
    if not found:
        raise CertificateProblem("the S/MIME signature carries no certificate")
    return tuple(cert_info(certificate) for certificate in found)
