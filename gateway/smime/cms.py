"""openssl cms at the edge, bounded like gpg: sign then encrypt a reply, verify a request against the pinned
certificate alone, decrypt what was encrypted to the gateway."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from pyasn1.codec.ber import decoder
from pyasn1.codec.der import encoder
from pyasn1.error import PyAsn1Error
from pyasn1_modules import rfc5652

from gateway.bounded import CHUNK, Finished, LimitExceeded, ToolUnavailable, run_bounded
from gateway.gpgrun import DECRYPT_MAX_BYTES
from gateway.signatures import SignatureStatus
from gateway.signedpart import wire
from gateway.smime import der
from gateway.smime.certs import CertificateProblem, read_certificate
from gateway.smime.mime import Detached, Enveloped, Opaque, content_kind, enveloped_entity, signed_entity


class SmimeLimitExceeded(CertificateProblem, LimitExceeded):
    """openssl was stopped: a message made it produce more than allowed, or take longer."""


class OpensslUnavailable(ToolUnavailable):
    """openssl itself cannot be run: this machine's fault, never the sender's."""


OPENSSL_TIMEOUT_SECONDS = 30.0


MAX_SIGNATURE_BYTES = 1024 * 1024  # a CMS signature with its certificates: a few KB; more is somebody's doing


# AES-256-CBC: Outlook (classic, new and on the web), Apple Mail, iOS Mail and Thunderbird all open it, while
# AES-GCM (AuthEnvelopedData, RFC 5083) is not yet opened by every Outlook: a reply nobody can open is no reply.
# The signature inside is what protects the content's integrity.
CONTENT_CIPHER = "-aes-256-cbc"


# The digests a request's signature may use (RFC 8551 2.1): SHA-1 and MD5 are refused, though openssl takes them.
_DIGESTS = {
    "2.16.840.1.101.3.4.2.1": "SHA-256",
    "2.16.840.1.101.3.4.2.2": "SHA-384",
    "2.16.840.1.101.3.4.2.3": "SHA-512",
}


# The content encryption a request may use: AES in CBC (EnvelopedData) or GCM (AuthEnvelopedData, RFC 5084).
_CIPHERS = {
    der.oid("2.16.840.1.101.3.4.1.2"): ("AES-128-CBC", "enveloped-data"),
    der.oid("2.16.840.1.101.3.4.1.22"): ("AES-192-CBC", "enveloped-data"),
    der.oid("2.16.840.1.101.3.4.1.42"): ("AES-256-CBC", "enveloped-data"),
    der.oid("2.16.840.1.101.3.4.1.6"): ("AES-128-GCM", "authenveloped-data"),
    der.oid("2.16.840.1.101.3.4.1.26"): ("AES-192-GCM", "authenveloped-data"),
    der.oid("2.16.840.1.101.3.4.1.46"): ("AES-256-GCM", "authenveloped-data"),
}
# Those older clients offer, which openssl still decrypts: named in the refusal, so the sender knows what to change.
_WEAK_CIPHERS = {
    der.oid("1.2.840.113549.3.7"): "3DES (DES-EDE3-CBC)",
    der.oid("1.2.840.113549.3.2"): "RC2",
    der.oid("1.3.14.3.2.7"): "DES",
}
_USE_AES = "encrypt with AES (128, 192 or 256 bits, CBC or GCM)"


class WeakCipher(CertificateProblem):
    """A message encrypted with a cipher the gateway does not accept: refused before anything is decrypted."""


@dataclass(frozen=True)
class Verified:
    """A signature checked against the pinned certificate, and the content it covers."""

    signature: SignatureStatus
    # What was signed, exactly: the first part as received (CRLF), or the opaque content; b"" if not good. Kept
    # out of repr: it is the request, and a value's repr can end up in a log line.
    content: bytes = field(repr=False)


def _not_good(problem: str) -> Verified:
    return Verified(SignatureStatus(False, None, None, problem), b"")


def _openssl(args: list[str], data: bytes, *, max_output: int, what: str, timeout: float, binary: str) -> Finished:
    return run_bounded(
        [binary, "cms", *args], data, max_output=max_output, timeout=timeout, what=what, tool="openssl",
        limit_error=SmimeLimitExceeded, unavailable_error=OpensslUnavailable,
    )  # fmt: skip


# openssl 3's error lines: thread:error:code:library:function:reason:file:line:data.
_OPENSSL_ERROR = re.compile(r"[0-9A-Fa-f]+:error:[0-9A-Fa-f]+:[^:]*:[^:]*:([^:]+):")


_PLAIN_WORDS = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ,.:()_/-]{0,119}")


def _said(finished: Finished) -> str:
    """openssl's last message, short: why it failed (its messages name no secret, only routines and reasons);
    of an error line, its reason alone ("no signers"), without the thread, code and source file."""
    lines = [line.strip() for line in finished.status.splitlines() if line.strip()]
    last = lines[-1] if lines else f"exit status {finished.returncode}"
    error = _OPENSSL_ERROR.match(last)
    said = error[1] if error else last
    # It can reach a notice the gateway signs: only openssl's own plain words, never text it quoted from a message.
    return f"openssl: {said}" if _PLAIN_WORDS.fullmatch(said) else f"openssl refused it (exit {finished.returncode})"


def _pem(certificate: bytes, what: str) -> bytes:
    """The certificate as PEM, refused unless it is exactly one (openssl would take the first of several)."""
    try:
        return read_certificate(certificate).pem
    except CertificateProblem as exc:
        raise CertificateProblem(f"{what}: {exc}") from None


# ---------------------------------------------------------------- replies: sign, then encrypt


def sign_and_encrypt(
    inner_mime: bytes,
    recipient_cert_pem: bytes,
    signer_cert_pem: bytes,
    signer_key_path: Path,
    *,
    openssl: str = "openssl",
    timeout: float = OPENSSL_TIMEOUT_SECONDS,
) -> bytes:
    """The RFC 8551 entity that carries `inner_mime` signed (detached, SHA-256) by the gateway, then encrypted
    (AES-256-CBC) to the recipient alone: an application/pkcs7-mime; smime-type=enveloped-data entity, CRLF,
    with no envelope headers (the caller adds From, To, Subject and the rest).

    RSA and EC (ECDH) recipients alike. CertificateProblem if anything fails: nothing is ever returned unsealed.
    """
    content = wire(inner_mime)  # what a signer signs: the canonical form, every line ending in CRLF
    recipient = _pem(recipient_cert_pem, "the recipient's certificate")
    signer = _pem(signer_cert_pem, "the gateway's certificate")
    with tempfile.TemporaryDirectory(prefix="gateway-smime-") as tmp:
        (Path(tmp) / "signer.pem").write_bytes(signer)
        (Path(tmp) / "recipient.pem").write_bytes(recipient)
        # -binary: the content is already canonical and is signed byte for byte; no -nodetach: detached.
        # -nosmimecap: openssl would otherwise offer 3DES, RC2 and DES to anyone writing back to the gateway.
        signing = ["-sign", "-binary", "-nosmimecap", "-md", "sha256", "-signer", f"{tmp}/signer.pem",
                   "-inkey", str(signer_key_path), "-passin", "pass:", "-outform", "DER"]  # fmt: skip
        signed = _openssl(signing, content, max_output=MAX_SIGNATURE_BYTES, what="the signature", timeout=timeout,
                          binary=openssl)  # fmt: skip
        if signed.returncode != 0 or not signed.output:
            raise CertificateProblem(f"openssl could not sign with the gateway's certificate: {_said(signed)}")
        entity = signed_entity(content, signed.output)
        encrypting = ["-encrypt", "-binary", CONTENT_CIPHER, "-outform", "DER", f"{tmp}/recipient.pem"]
        sealed = _openssl(encrypting, entity, max_output=2 * len(entity) + 16 * CHUNK, what="the encrypted reply",
                          timeout=timeout, binary=openssl)  # fmt: skip
        if sealed.returncode != 0 or not sealed.output:
            raise CertificateProblem(f"openssl could not encrypt to the recipient's certificate: {_said(sealed)}")
    return enveloped_entity(sealed.output)


# ---------------------------------------------------------------- requests: verify against the pinned certificate


def verify(
    layer: Detached | Opaque,
    pinned_cert_pem: bytes,
    *,
    openssl: str = "openssl",
    timeout: float = OPENSSL_TIMEOUT_SECONDS,
    max_bytes: int = DECRYPT_MAX_BYTES,
) -> Verified:
    """Check an S/MIME signature (multipart/signed, or opaque signed-data, as mime.smime_layer read it) against
    the pinned certificate, and that certificate alone: one carried in the message proves nothing (-nointern),
    and no CA is asked (-noverify: pinning is what the gateway trusts). Never raises for the message's sake: a
    signature that is not good says why in its `problem`. CertificateProblem when the pinned certificate itself
    cannot be read."""
    try:
        pinned = read_certificate(pinned_cert_pem)
    except CertificateProblem as exc:
        raise CertificateProblem(f"the pinned certificate: {exc}") from None
    signed_data = layer.signature if isinstance(layer, Detached) else layer.signed_data
    if content_kind(signed_data) != "signed-data":
        return _not_good("the signature part holds no CMS signed data")
    try:
        finished = _verified(layer, pinned.pem, max_bytes=max_bytes, timeout=timeout, binary=openssl)
        if finished.returncode != 0 or "Verification successful" not in finished.status:
            return _not_good(f"the signature is not good, or not by the pinned certificate ({_said(finished)})")
        # Re-encoded as DER by openssl before it is read: clients may send indefinite-length BER (a streamed
        # opaque signature), which pyasn1 does not read inside an explicitly tagged OCTET STRING.
        reencoded = _openssl(["-cmsout", "-inform", "DER", "-outform", "DER"], signed_data,
                             max_output=2 * len(signed_data) + CHUNK, what="the signature", timeout=timeout,
                             binary=openssl)  # fmt: skip
    except SmimeLimitExceeded as exc:
        return _not_good(f"the signature could not be checked: {exc}")
    if reencoded.returncode != 0:
        return _not_good("openssl verified the signature, but cannot re-encode it")
    content = layer.content if isinstance(layer, Detached) else finished.output
    return _identified(reencoded.output, content, pinned.fingerprint)


def _verified(layer: Detached | Opaque, pinned_pem: bytes, *, max_bytes: int, timeout: float, binary: str) -> Finished:
    """openssl cms -verify against the pinned certificate alone; its output is the signed content."""
    with tempfile.TemporaryDirectory(prefix="gateway-smime-") as tmp:
        (Path(tmp) / "pinned.pem").write_bytes(pinned_pem)
        command = ["-verify", "-binary", "-inform", "DER", "-noverify", "-nointern", "-certfile", f"{tmp}/pinned.pem"]
        if isinstance(layer, Detached):
            (Path(tmp) / "content").write_bytes(layer.content)
            command += ["-content", f"{tmp}/content"]
            max_bytes = len(layer.content)  # openssl writes the content it was given back out
        signed_data = layer.signature if isinstance(layer, Detached) else layer.signed_data
        return _openssl(command, signed_data, max_output=max_bytes, what="the signed content", timeout=timeout,
                        binary=binary)  # fmt: skip


def _identified(signed_data: bytes, content: bytes, fingerprint: str) -> Verified:
    """A good signature with its time and its identity, read from the one SignerInfo openssl verified.

    Two digests tell it again (SignatureStatus.replay_keys): one of the signature value, and one of what the
    signer signed, its signed attributes (the signing time among them) and the content. Only the second
    survives re-encoding: an ECDSA signature's s can be replaced by n - s, which verifies the same; but the
    signed attributes and the content cannot be altered without the signer's key.
    """
    try:
        info, _ = decoder.decode(signed_data, asn1Spec=rfc5652.ContentInfo())
        signed, _ = decoder.decode(info["content"], asn1Spec=rfc5652.SignedData())
    except PyAsn1Error:
        return _not_good("openssl verified the signature, but the gateway cannot read it")
    signers = list(signed["signerInfos"])
    if len(signers) != 1:
        return _not_good(f"expected one signature, the message carries {len(signers)}")
    signer = signers[0]
    digest = _DIGESTS.get(str(signer["digestAlgorithm"]["algorithm"]))
    if digest is None:
        return _not_good("the signature uses a digest other than SHA-256, SHA-384 or SHA-512")
    attributes = signer["signedAttrs"]
    signed_at = _signing_time(attributes) if attributes.isValue else None
    if isinstance(signed_at, str):
        return _not_good(signed_at)
    covered = encoder.encode(attributes) if attributes.isValue else b""
    made = hashlib.sha256(hashlib.sha256(covered).digest() + hashlib.sha256(content).digest()).hexdigest()
    value = hashlib.sha256(bytes(signer["signature"])).hexdigest()
    status = SignatureStatus(True, fingerprint, signed_at, None, signature_id=value, signed_sha256=made)
    return Verified(status, content)


def _signing_time(attributes: rfc5652.SignedAttributes) -> dt.datetime | str | None:
    """The signingTime attribute's moment; None without one; a problem (str) when there are several."""
    values = [
        value for attr in attributes if attr["attrType"] == rfc5652.id_signingTime for value in attr["attrValues"]
    ]
    if not values:
        return None
    if len(values) != 1:
        return "the signature gives more than one signing time"
    try:
        time, _ = decoder.decode(values[0], asn1Spec=rfc5652.SigningTime())
        moment = time.getComponent().asDateTime
    except (PyAsn1Error, ValueError):
        return "the signature's signing time cannot be read"
    return moment.astimezone(dt.UTC) if isinstance(moment, dt.datetime) else "the signing time cannot be read"


# ---------------------------------------------------------------- requests: decrypt what was encrypted to the gateway


def decrypt(
    layer: Enveloped,
    cert_pem: bytes,
    key_path: Path,
    *,
    openssl: str = "openssl",
    timeout: float = OPENSSL_TIMEOUT_SECONDS,
    max_bytes: int = DECRYPT_MAX_BYTES,
) -> bytes:
    """The MIME entity inside an S/MIME encrypted message (application/pkcs7-mime; smime-type=enveloped-data,
    as mime.smime_layer read it), decrypted with the gateway's certificate and key; usually a signed entity,
    for verify() next.

    WeakCipher (a CertificateProblem) when its content encryption is not AES (CBC, or GCM in AuthEnvelopedData),
    read from the CMS structure before openssl decrypts anything. Bounded: once the plaintext passes
    `max_bytes`, or openssl has run `timeout` seconds, openssl is killed and SmimeLimitExceeded (a
    CertificateProblem) raised; nothing is returned truncated. CertificateProblem when the message is not
    encrypted to this certificate.
    """
    try:
        cipher = der.content_cipher(layer.enveloped)
    except der.Malformed as exc:
        raise CertificateProblem(f"the encrypted message's CMS data cannot be read ({exc})") from None
    refused = _refused_cipher(cipher, content_kind(layer.enveloped))
    if refused is not None:
        raise WeakCipher(refused)
    own = _pem(cert_pem, "the gateway's certificate")
    with tempfile.TemporaryDirectory(prefix="gateway-smime-") as tmp:
        (Path(tmp) / "cert.pem").write_bytes(own)
        command = ["-decrypt", "-binary", "-inform", "DER", "-recip", f"{tmp}/cert.pem", "-inkey", str(key_path),
                   "-passin", "pass:"]  # fmt: skip
        finished = _openssl(command, layer.enveloped, max_output=max_bytes, what="the decrypted message",
                            timeout=timeout, binary=openssl)  # fmt: skip
    if finished.returncode != 0 or not finished.output:
        raise CertificateProblem("the message could not be decrypted with the gateway's certificate")
    return finished.output


def _refused_cipher(cipher: bytes, kind: str | None) -> str | None:
    """Why this content encryption (an OID's content octets) of an EnvelopedData or AuthEnvelopedData (`kind`)
    is refused, or None."""
    accepted = _CIPHERS.get(cipher)
    if accepted is not None and accepted[1] == kind:
        return None
    if accepted is not None:  # AES, but GCM without AuthEnvelopedData's tag, or CBC where GCM belongs
        named = f"{accepted[0]} in {kind}"
    else:
        named = _WEAK_CIPHERS.get(cipher) or f"the cipher {der.dotted(cipher)}"
    return f"the message is encrypted with {named}, which the gateway does not accept: {_USE_AES}"
