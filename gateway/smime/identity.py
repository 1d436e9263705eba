"""The gateway's own S/MIME identity ([smime]): the certificate authorities encrypt to and verify replies by,
and the private key it belongs to, checked at start like the GnuPG home."""

from __future__ import annotations

import datetime as dt
import os
import pwd
import shutil
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.config import Config, exposed
from gateway.errors import ConfigError
from gateway.smime.certs import CertificateProblem, CertInfo, load_key, read_certificate

# Told after a certificate's problems: what replaces it. A request keeps the key, so nothing else changes.
_RENEW = "replace it (`gateway init --smime-csr FILE` writes a signing request for a CA)"


@dataclass(frozen=True)
class Identity:
    certificate: CertInfo  # its .pem goes to openssl; its .fingerprint is what authorities pin
    key_path: Path
    openssl: str
    trust_store: Path | None


def load_identity(config: Config, now: dt.datetime | None = None) -> Identity | None:
    """The identity [smime] names, checked; None when there is no [smime] section; ConfigError (one line,
    naming the setting and the fix) when it is there but unusable. Checked here, not when the first S/MIME
    reply is due: a bad identity found at 3 a.m. is mail nobody can open, or no mail at all."""
    settings = config.smime
    if settings is None:
        return None
    where = f"{config.path}: [smime]"
    if shutil.which(settings.binary) is None:
        raise ConfigError(
            f"{where} binary: {settings.binary} not found: install OpenSSL (Debian: apt-get install openssl)"
        )
    try:
        data = settings.certificate.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"{where} certificate: cannot read {settings.certificate}: {exc.strerror or exc} "
            "(`gateway init --smime` makes one for trials)"
        ) from None
    try:
        info = read_certificate(data)
    except CertificateProblem as exc:
        raise ConfigError(f"{where} certificate: {exc}") from None
    key = _private_key(settings.key, f"{where} key")
    if not _same_public_key(info, key):
        raise ConfigError(
            f"{where} key: {settings.key} is not the private key of {settings.certificate}: give the key the "
            "certificate was issued for"
        )
    problems = info.problems(config.gateway.address, now or dt.datetime.now(dt.UTC))
    if problems:
        raise ConfigError(f"{where} certificate {settings.certificate}: {'; '.join(problems)}: {_RENEW}")
    if settings.trust_store is not None and not settings.trust_store.exists():
        raise ConfigError(f"{where} trust_store: {settings.trust_store} does not exist")
    return Identity(info, settings.key, settings.binary, settings.trust_store)


def _private_key(path: Path, where: str) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    """The key file, refused unless it is this user's alone: whoever can read it signs and decrypts as the
    gateway, and whoever owns it can make it readable, or put another key in its place."""
    if not path.is_file():
        raise ConfigError(f"{where}: {path} does not exist: give the certificate's private key")
    problem = _not_ours(path) or exposed(path)
    if problem:
        raise ConfigError(f"{where}: {problem}")
    try:
        return load_key(path)
    except CertificateProblem as exc:
        raise ConfigError(
            f"{where}: {exc}: give the certificate's private key without a passphrase (nobody is there to type "
            "one; `openssl pkey -in KEY -out NEW` removes it)"
        ) from None


def _not_ours(path: Path) -> str | None:
    """Why a file that must be private belongs to another user, with the fix; None when it is this user's."""
    owner, me = path.stat().st_uid, os.geteuid()
    if owner == me:
        return None
    return (
        f"{path} belongs to {_user(owner)}, not to {_user(me)} that the gateway runs as: "
        f"run `chown {_name(me)} {path}` as root"
    )


def _name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:  # a container's user with no passwd entry
        return str(uid)


def _user(uid: int) -> str:
    name = _name(uid)
    return f"uid {uid}" if name == str(uid) else f"{name} (uid {uid})"


def _same_public_key(info: CertInfo, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bool:
    """Whether the key is the one the certificate was issued for: their public halves, as DER, are equal."""
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    certified = x509.load_pem_x509_certificate(info.pem).public_key()
    return certified.public_bytes(*spki) == key.public_key().public_bytes(*spki)
