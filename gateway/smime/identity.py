"""The gateway's own S/MIME identity ([smime]): the certificate authorities encrypt to and verify replies by,
and the private key it belongs to, checked at start like the GnuPG home."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from gateway.config import Config, exposed
from gateway.errors import ConfigError
from gateway.smime.certs import CertificateProblem, CertInfo, read_certificate


@dataclass(frozen=True)
class Identity:
    certificate: CertInfo  # its .pem goes to openssl; its .fingerprint is what authorities pin
    key_path: Path
    openssl: str
    trust_store: Path | None


def load_identity(config: Config, now: dt.datetime | None = None) -> Identity | None:
    """The identity [smime] names, checked; None when there is no [smime] section; ConfigError (one line,
    naming the setting) when it is there but unusable."""
    settings = config.smime
    if settings is None:
        return None
    where = f"{config.path}: [smime]"
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
    if not settings.key.is_file():
        raise ConfigError(f"{where} key: {settings.key} does not exist")
    problem = exposed(settings.key)
    if problem:
        raise ConfigError(f"{where} key: {problem}")
    problems = info.problems(config.gateway.address, now or dt.datetime.now(dt.UTC))
    if problems:
        raise ConfigError(f"{where} certificate {settings.certificate}: {'; '.join(problems)}")
    return Identity(info, settings.key, settings.binary, settings.trust_store)
