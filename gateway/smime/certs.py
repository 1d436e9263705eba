"""X.509 certificates for S/MIME: what one says, why it may not be pinned for an address, and the gateway's own
(a self-signed one for trials and tests, a certificate signing request for a real CA)."""

from __future__ import annotations

import datetime as dt
import functools
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.addresses import normalise_address
from gateway.bounded import LimitExceeded, ToolUnavailable, run_bounded
from gateway.gpgrun import KeyProblem


class CertificateProblem(KeyProblem):
    """A certificate that cannot be read or used, or a CMS message that cannot be signed, encrypted or opened
    with it. A KeyProblem: wherever the OpenPGP path fails closed on a key, the S/MIME path does on this."""


MIN_RSA_BITS = 2048


# The curves an S/MIME certificate may use: NIST P-256 and P-384, what every client that does ECC reads.
# P-521 and the rest are refused, as the issue asks: fewer clients read them, and they buy nothing here.
ALLOWED_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384"}


# cryptography's KeyUsage properties, in the words of RFC 5280 4.2.1.3.
_KEY_USAGES = {
    "digital_signature": "digitalSignature",
    "content_commitment": "nonRepudiation",
    "key_encipherment": "keyEncipherment",
    "data_encipherment": "dataEncipherment",
    "key_agreement": "keyAgreement",
    "key_cert_sign": "keyCertSign",
    "crl_sign": "cRLSign",
}


@dataclass(frozen=True)
class CertInfo:
    """One certificate as the gateway pins it. The fingerprint is the SHA-256 of its DER, in upper-case hex
    without separators (as gpg writes OpenPGP fingerprints)."""

    fingerprint: str
    subject: str  # RFC 4514, as OpenSSL and admins read it
    issuer: str
    emails: tuple[str, ...]  # the subjectAltName rfc822Names, as written in the certificate
    not_before: dt.datetime
    not_after: dt.datetime
    key_type: str  # "RSA", "EC", or what else it is ("Ed25519", "DSA", ...)
    key_bits: int
    curve: str | None  # the EC curve's name ("secp256r1"); None for any other key
    # None when the certificate has no keyUsage (or no extendedKeyUsage) extension at all.
    key_usage: frozenset[str] | None
    extended_key_usage: frozenset[str] | None  # "emailProtection", or a dotted OID for the others
    pem: bytes  # the certificate itself, to pin and to hand to openssl

    def problems(self, address: str, now: dt.datetime) -> list[str]:
        """Why this certificate cannot be pinned for `address` at `now`, each reason on its own (empty: it can)."""
        found = []
        wanted = normalise_address(address)
        if wanted not in {a for a in map(_address_or_none, self.emails) if a}:
            named = ", ".join(self.emails) if self.emails else "no address"
            found.append(f"the certificate is for {named} (subjectAltName rfc822Name), not {wanted}")
        if now < self.not_before:
            found.append(f"the certificate is not valid until {_when(self.not_before)}")
        if now > self.not_after:
            found.append(f"the certificate expired on {_when(self.not_after)}")
        found += self._key_problems()
        if self.extended_key_usage is not None and "emailProtection" not in self.extended_key_usage:
            found.append("its extended key usage does not include emailProtection")
        return found

    def _key_problems(self) -> list[str]:
        if self.key_type == "RSA":
            needed = ("digitalSignature", "keyEncipherment")
            if self.key_bits < MIN_RSA_BITS:
                return [f"it uses a {self.key_bits}-bit RSA key (at least {MIN_RSA_BITS} bits are needed)"]
        elif self.key_type == "EC" and self.curve in ALLOWED_CURVES:
            needed = ("digitalSignature", "keyAgreement")
        else:
            kind = f"EC {self.curve}" if self.key_type == "EC" else self.key_type
            return [f"its key is {kind} (RSA of at least {MIN_RSA_BITS} bits, or EC P-256 or P-384, is needed)"]
        if self.key_usage is None:
            return [f"it has no keyUsage extension (it must allow {' and '.join(needed)})"]
        missing = [usage for usage in needed if usage not in self.key_usage]
        return [f"its key usage does not allow {' or '.join(missing)}"] if missing else []


def _address_or_none(text: str) -> str | None:
    try:
        return normalise_address(text)
    except ValueError:
        return None


def _when(moment: dt.datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def cert_info(certificate: x509.Certificate) -> CertInfo:
    """What the gateway reads from a parsed certificate; CertificateProblem when it cannot be read (a duplicated
    extension, an unknown key algorithm: cryptography raises these lazily, and not all as ValueError)."""
    try:
        return _cert_info(certificate)
    except Exception as exc:  # any failure to read what an outsider sent is a refusal, named by its kind
        raise CertificateProblem(f"the certificate cannot be read ({type(exc).__name__})") from None


def _cert_info(certificate: x509.Certificate) -> CertInfo:
    key = certificate.public_key()
    curve = None
    if isinstance(key, rsa.RSAPublicKey):
        key_type, bits = "RSA", key.key_size
    elif isinstance(key, ec.EllipticCurvePublicKey):
        key_type, bits, curve = "EC", key.key_size, key.curve.name
    else:
        key_type, bits = type(key).__name__.removesuffix("PublicKey").removeprefix("_"), 0
    return CertInfo(
        fingerprint=certificate.fingerprint(hashes.SHA256()).hex().upper(),
        subject=certificate.subject.rfc4514_string(),
        issuer=certificate.issuer.rfc4514_string(),
        emails=_emails(certificate),
        not_before=certificate.not_valid_before_utc,
        not_after=certificate.not_valid_after_utc,
        key_type=key_type,
        key_bits=bits,
        curve=curve,
        key_usage=_key_usage(certificate),
        extended_key_usage=_extended_key_usage(certificate),
        pem=certificate.public_bytes(serialization.Encoding.PEM),
    )


def _emails(certificate: x509.Certificate) -> tuple[str, ...]:
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(names.get_values_for_type(x509.RFC822Name))


def _key_usage(certificate: x509.Certificate) -> frozenset[str] | None:
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None
    # encipher_only and decipher_only raise unless key_agreement is set: they are not asked for.
    return frozenset(word for name, word in _KEY_USAGES.items() if getattr(usage, name))


def _extended_key_usage(certificate: x509.Certificate) -> frozenset[str] | None:
    try:
        usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return None
    # anyExtendedKeyUsage is not emailProtection: the S/MIME Baseline Requirements forbid it in mail certificates.
    return frozenset(
        "emailProtection" if oid == ExtendedKeyUsageOID.EMAIL_PROTECTION else oid.dotted_string for oid in usages
    )


def read_certificate(data: bytes) -> CertInfo:
    """Exactly one X.509 certificate, PEM or DER; CertificateProblem saying what the data is otherwise.

    A pinned certificate is read again at every seal and every check of a request: each distinct run of bytes
    is read once and its CertInfo (frozen, and a value of those bytes alone: nothing in it depends on the time)
    kept. The key is the exact bytes, never their stripped or decoded text; a refusal is not kept."""
    return _read_certificate(bytes(data))


# Some hundreds: every pinned certificate (one an address) and the gateway's own, a few KB each.
@functools.lru_cache(maxsize=512)
def _read_certificate(data: bytes) -> CertInfo:
    text = data.strip()
    if not text:
        raise CertificateProblem("the certificate file is empty")
    if b"PRIVATE KEY-----" in text:
        raise CertificateProblem("the file holds a private key: give the authority's certificate only")
    if text.startswith(b"-----BEGIN"):
        blocks = text.count(b"-----BEGIN")
        try:
            found = x509.load_pem_x509_certificates(text)
        except ValueError:
            raise CertificateProblem("the file is PEM but holds no X.509 certificate the gateway can read") from None
        if len(found) != 1 or blocks != 1:
            raise CertificateProblem(
                f"the file holds {max(len(found), blocks)} PEM blocks: give exactly one certificate, the "
                "address's own (not its chain)"
            )
        return cert_info(found[0])
    try:  # DER as given: its last byte may well be one that strip() takes for white space
        return cert_info(x509.load_der_x509_certificate(data))
    except ValueError:
        raise CertificateProblem("the file is neither a PEM nor a DER X.509 certificate") from None


# ---------------------------------------------------------------- the gateway's own certificate

GATEWAY_NAME = "HMCI register disclosure gateway"

# RSA 3072: every S/MIME client can encrypt to an RSA certificate (EC recipients are not yet read everywhere),
# and 3072 bits is the 128-bit security level the rest of the gateway's cryptography has.
GATEWAY_RSA_BITS = 3072


def make_key(key_path: Path) -> Path:
    """A new RSA 3072 private key, unencrypted (as the gateway's OpenPGP key: see the README's security model),
    written to a new file only this user can read. An existing file is never overwritten."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=GATEWAY_RSA_BITS)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    _write_new(key_path, pem, 0o600)
    return key_path


def load_key(key_path: Path) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    """The gateway's private key, read as openssl will read it: unencrypted PEM, for nobody is there to type a
    passphrase; CertificateProblem saying why it cannot be used otherwise."""
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except OSError as exc:
        raise CertificateProblem(f"cannot read the private key {key_path}: {exc.strerror or exc}") from None
    except (TypeError, ValueError):
        raise CertificateProblem(f"{key_path} is not an unencrypted PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise CertificateProblem(f"{key_path} holds neither an RSA nor an EC key")
    return key


def _write_new(path: Path, data: bytes, mode: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise CertificateProblem(f"{path} already exists: it is not overwritten") from None
    except OSError as exc:
        raise CertificateProblem(f"cannot create {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _mail_extensions(address: str, rsa_key: bool) -> list[tuple[x509.ExtensionType, bool]]:
    """What makes a certificate one for S/MIME mail from and to `address` (the checks CertInfo.problems makes),
    each with whether it is critical."""
    usage = x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=rsa_key, data_encipherment=False,
        key_agreement=not rsa_key, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
    )  # fmt: skip
    return [
        (x509.SubjectAlternativeName([x509.RFC822Name(address)]), False),
        (usage, True),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), False),
        (x509.BasicConstraints(ca=False, path_length=None), True),
    ]


def make_self_signed(
    address: str, directory: Path, *, now: dt.datetime | None = None, days: int = 730
) -> tuple[Path, Path]:
    """make_self_signed_at with the fixed names in `directory`: smime-cert.pem and smime-key.pem."""
    return make_self_signed_at(address, directory / "smime-cert.pem", directory / "smime-key.pem", now=now, days=days)


def make_self_signed_at(
    address: str,
    cert_path: Path,
    key_path: Path,
    *,
    now: dt.datetime | None = None,
    days: int = 730,
    common_name: str = GATEWAY_NAME,
) -> tuple[Path, Path]:
    """A new RSA 3072 key and a self-signed S/MIME certificate for `address`, for trials and tests, written to
    new files: the certificate 0644, the key 0600; returns (certificate, key). Outlook warns on every message
    signed by a self-signed certificate: production needs one from a publicly trusted CA (write_csr)."""
    address = normalise_address(address)
    if cert_path.absolute() == key_path.absolute():
        raise CertificateProblem(f"the certificate and the key cannot both be {cert_path}")
    for existing in (cert_path, key_path):
        if existing.exists():  # checked before anything is written: never a new key beside an old certificate
            raise CertificateProblem(f"{existing} already exists: the gateway's identity is never overwritten")
    start = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(hours=1)  # a little slack for clocks behind ours
    make_key(key_path)
    try:
        key = load_key(key_path)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + dt.timedelta(days=days))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        )
        for extension, critical in _mail_extensions(address, isinstance(key, rsa.RSAPrivateKey)):
            builder = builder.add_extension(extension, critical)
        certificate = builder.sign(key, hashes.SHA256())
        _write_new(cert_path, certificate.public_bytes(serialization.Encoding.PEM), 0o644)
    except BaseException:
        key_path.unlink()  # a key without its certificate would block the next try, and serves nobody
        raise
    return cert_path, key_path


def write_csr(address: str, key_path: Path, csr_path: Path) -> Path:
    """A certificate signing request for `address` with the key at `key_path` (make_key), asking a CA for what
    CertInfo.problems checks: the address in subjectAltName, the key usages, emailProtection."""
    address = normalise_address(address)
    key = load_key(key_path)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, GATEWAY_NAME)])
    request = x509.CertificateSigningRequestBuilder().subject_name(name)
    for extension, critical in _mail_extensions(address, isinstance(key, rsa.RSAPrivateKey)):
        request = request.add_extension(extension, critical)
    _write_new(csr_path, request.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM), 0o644)
    return csr_path


def chain_problem(
    pem: bytes, trust_store: Path, openssl: str = "openssl", now: dt.datetime | None = None
) -> str | None:
    """Why `pem` does not chain to a CA in `trust_store` for S/MIME use, or None when it does ([smime]
    trust_store: a site may ask for this on top of pinning). openssl reads the certificate from stdin."""
    if not trust_store.is_file():
        return f"the trust store {trust_store} ([smime] trust_store) cannot be read"
    command = [openssl, "verify", "-CAfile", str(trust_store), "-purpose", "smimeencrypt"]
    if now is not None:
        command += ["-attime", str(int(now.timestamp()))]
    try:
        finished = run_bounded(command, pem, max_output=64 * 1024, timeout=30.0, what="the chain check", tool="openssl")
    except (ToolUnavailable, LimitExceeded) as exc:
        return f"the chain could not be checked: {exc}"
    if finished.returncode == 0:
        return None
    said = [line.strip() for line in (finished.status + finished.output.decode(errors="replace")).splitlines()]
    reason = next((line for line in said if line.startswith("error ")), said[-1] if said else "")
    return f"it does not chain to the trust store {trust_store.name}: {reason[:200]}"
