"""The settings file, read once at start and validated into frozen objects.

Over 400 lines on purpose: every section's values, defaults and checks are here, so that an operator's
question about any one setting is answered in one file, next to the README's configuration reference.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import ssl
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, cast
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from gateway.addresses import normalise_address
from gateway.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("config/gateway.toml")
CONFIG_ENV = "GATEWAY_CONFIG"
DEFAULT_MARKING = "OFFICIAL-SENSITIVE"

ImapTls = Literal["tls", "none"]
SmtpTls = Literal["starttls", "tls", "none"]


@dataclass(frozen=True)
class Secret:
    """A password or credential-bearing URL; it never shows itself in a repr or a log line."""

    value: str = field(repr=False)

    def __repr__(self) -> str:
        return "Secret('***')"


@dataclass(frozen=True)
class GatewaySettings:
    address: str
    admin_address: str
    marking: str
    authserv_id: str | None
    templates: Path | None = None  # a directory whose templates replace the shipped ones of the same name
    # An allowlist or key change by one admin waits for a different admin's approval.
    require_second_admin: bool = True


@dataclass(frozen=True)
class DatabaseSettings:
    url: Secret

    @property
    def is_sqlite(self) -> bool:
        return self.url.value.startswith("sqlite")

    @property
    def display_url(self) -> str:
        """The URL with any password replaced, safe to print (in the user part or the query string)."""
        url = make_url(self.url.value)
        query = {k: ("***" if "password" in k.lower() else v) for k, v in url.query.items()}
        return url.set(query=query).render_as_string(hide_password=True)


@dataclass(frozen=True)
class GpgSettings:
    home: Path
    signing_key: str | None
    binary: str


@dataclass(frozen=True)
class SmimeSettings:
    """The gateway's own S/MIME identity: its certificate and the private key it belongs to."""

    certificate: Path
    key: Path
    # A CA bundle a pinned authority certificate must also chain to; None: pinning alone is trusted.
    trust_store: Path | None
    binary: str  # the openssl executable


MICROSOFT365_AUTHORITY = "https://login.microsoftonline.com/{tenant}"
MICROSOFT365_SCOPE = "https://outlook.office365.com/.default"  # Exchange Online's IMAP and SMTP AUTH both
PRESETS = ("microsoft365",)


@dataclass(frozen=True)
class ClientCertificate:
    """An OAuth client's certificate and its private key, PEM."""

    certificate: str
    key: Secret


@dataclass(frozen=True)
class OAuthSettings:
    """An OAuth 2.0 client that logs in to the mailbox or the relay instead of a password (client-credentials
    grant). Exactly one of `secret` and `certificate` is set."""

    authority: str  # https URL; the token endpoint is read from its OpenID Connect discovery document
    client_id: str
    scope: str
    secret: Secret | None = None
    certificate: ClientCertificate | None = None
    ca_file: Path | None = None  # a CA bundle the authority's certificate must chain to; None: certifi's
    section: str = "oauth"  # as errors name it: "imap.oauth" or "smtp.oauth"


@dataclass(frozen=True)
class ImapSettings:
    host: str
    port: int
    username: str
    password: Secret | None  # None when `oauth` logs in instead
    tls: ImapTls
    folder: str
    processed_folder: str = "Processed"
    rejected_folder: str = "Rejected"
    quarantine_folder: str = "Quarantine"
    idle_seconds: int = 240  # NAT boxes drop idle links after about 5 minutes: re-issue IDLE well before
    poll_seconds: int = 60  # for servers without IDLE
    # While in IDLE, also look this often (0: never). Dovecot tells of new mail 0.5 s after it arrives.
    check_ms: int = 200
    oauth: OAuthSettings | None = None  # XOAUTH2 with a token from this client, instead of the password


_PEM_CERTIFICATE = re.compile(rb"-----BEGIN ([A-Z0-9 ]*)CERTIFICATE-----.+?-----END \1CERTIFICATE-----", re.S)


@dataclass(frozen=True)
class CaBundle:
    """CA certificates a server's certificate must chain to, read from their file once, at load."""

    path: Path  # where they were read, for messages
    pem: str  # the file's certificates, PEM, as `ssl` takes them (`cadata`); its comments left out

    @classmethod
    def read(cls, path: Path) -> CaBundle:
        """The certificates of a PEM bundle, checked to load; ValueError saying why not."""
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ValueError(exc.strerror or str(exc)) from None
        # Only the certificate blocks: a bundle's comments (certifi's name its CAs) may be any UTF-8, and `ssl`
        # takes ASCII only.
        blocks = [match[0] for match in _PEM_CERTIFICATE.finditer(data)]
        if not blocks:
            raise ValueError("it holds no PEM certificate")
        try:
            bundle = cls(path, b"\n".join([*blocks, b""]).decode("ascii"))
            bundle.context()
        except UnicodeDecodeError:
            raise ValueError("a certificate in it is not ASCII") from None
        except ssl.SSLError as exc:
            raise ValueError(str(exc)) from None
        return bundle

    def context(self) -> ssl.SSLContext:
        """A client context that trusts these CAs alone; the server's name is checked as always."""
        return ssl.create_default_context(cadata=self.pem)


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int
    username: str | None
    password: Secret | None
    tls: SmtpTls
    retry_seconds: int = 60  # the first wait after a failed delivery; it doubles, up to an hour
    # [smtp] ca_file: the CAs the relay's certificate must chain to; None: the system's trust store.
    ca: CaBundle | None = None
    oauth: OAuthSettings | None = None  # XOAUTH2 as `username` with a token from this client, instead of a password


@dataclass(frozen=True)
class InboundSmtpSettings:
    host: str
    port: int
    max_size: int


@dataclass(frozen=True)
class ScheduleSettings:
    delivery_day: int = 1  # of each month; 1-28 so that every month has it
    delivery_time: dt.time = dt.time(6, 0)
    timezone: str = "Europe/London"
    reminder_days: tuple[int, ...] = (30, 7)


@dataclass(frozen=True)
class MetricsSettings:
    host: str = "127.0.0.1"
    port: int = 9464
    max_outbox_age: int = 900  # seconds: older pending mail makes /healthz fail


@dataclass(frozen=True)
class LimitSettings:
    """What one message, one authority or one attacker can cost the gateway."""

    max_message_bytes: int = 10 * 1024 * 1024  # larger mail is quarantined unparsed
    max_mime_parts: int = 200  # a request has a handful; thousands are an attack on the parser
    max_header_bytes: int = 256 * 1024
    signature_max_age_days: int = 7  # an older signed request is a replay
    signature_future_minutes: int = 15  # clocks differ a little; more than this is a forged date
    answers_per_day: int = 20  # per authority, then one "limit reached" notice
    alerts_per_hour: int = 20  # to admin_address; the rest go in one summary
    impostor_notices_per_day: int = 3  # per authority whose name someone tried to use


@dataclass(frozen=True)
class Config:
    path: Path
    gateway: GatewaySettings
    database: DatabaseSettings
    gpg: GpgSettings
    imap: ImapSettings | None
    smtp: SmtpSettings | None
    inbound_smtp: InboundSmtpSettings | None = None
    schedule: ScheduleSettings = ScheduleSettings()
    limits: LimitSettings = LimitSettings()
    metrics: MetricsSettings | None = None
    smime: SmimeSettings | None = None


T = TypeVar("T")


def exposed(path: Path) -> str | None:
    """Why a secret file or the GnuPG home is open to other users, with the fix; None when it is private."""
    try:
        mode = path.stat().st_mode & 0o777
    except OSError:
        return None  # a missing file is reported where it is read
    if mode & 0o077:
        fix = "chmod 700" if path.is_dir() else "chmod 600"
        return f"{path} is open to other users (mode {mode:04o}): run `{fix} {path}`"
    return None


class _Section:
    """One TOML table being read: typed getters, and a complaint about any key nobody asked for."""

    def __init__(self, path: Path, name: str, table: Mapping[str, Any]) -> None:
        self._path = path
        self._name = name
        self._table = table
        self._seen: set[str] = set()

    @property
    def name(self) -> str:
        return self._name

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self._path}: [{self._name}] {key}: {problem}")

    def has(self, key: str) -> bool:
        return key in self._table

    def table(self, key: str) -> _Section | None:
        """A table inside this one (`[imap.oauth]`), read with the same rules."""
        self._seen.add(key)
        if key not in self._table:
            return None
        value = self._table[key]
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a table ([{self._name}.{key}]), got {type(value).__name__}")
        return _Section(self._path, f"{self._name}.{key}", cast(dict[str, Any], value))

    def private_file(self, key: str) -> tuple[Path, str]:
        """A file that holds a secret: readable by this user alone; its path and its text."""
        file = self.path(key, "")
        problem = exposed(file)
        if problem:
            raise self.fail(key, problem)
        try:
            return file, file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise self.fail(key, f"cannot read {file}: {getattr(exc, 'strerror', None) or exc}") from None

    def _get(self, key: str, kind: type[T], kind_name: str) -> T | None:
        self._seen.add(key)
        if key not in self._table:
            return None
        value = self._table[key]
        # bool is an int subclass in Python; a port of `true` is a mistake, not 1.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.fail(key, f"expected {kind_name}, got {type(value).__name__} {value!r}")
        return value

    def text(self, key: str, default: str | None = None) -> str | None:
        value = self._get(key, str, "a string")
        if value is None:
            return default
        if not value.strip():
            raise self.fail(key, "must not be empty")
        return value.strip()

    def required_text(self, key: str) -> str:
        value = self.text(key)
        if value is None:
            raise self.fail(key, "required setting is missing")
        return value

    def flag(self, key: str, *, default: bool) -> bool:
        value = self._get(key, bool, "true or false")
        return default if value is None else value

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        value = self._get(key, int, "an integer")
        if value is None:
            return default
        if not low <= value <= high:
            raise self.fail(key, f"must be between {low} and {high}, got {value}")
        return value

    def int_list(self, key: str, default: tuple[int, ...], low: int, high: int) -> tuple[int, ...]:
        self._seen.add(key)
        if key not in self._table:
            return default
        value = self._table[key]
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise self.fail(key, f"expected a list of whole numbers, got {value!r}")
        if not all(low <= v <= high for v in value):
            raise self.fail(key, f"each must be between {low} and {high}, got {value}")
        return tuple(sorted(set(value), reverse=True))

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        value = self.text(key) or default
        if value not in choices:
            raise self.fail(key, f"must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")
        return value

    def address(self, key: str) -> str:
        try:
            return normalise_address(self.required_text(key))
        except ValueError as exc:
            raise self.fail(key, str(exc)) from None

    def path(self, key: str, default: str) -> Path:
        value = Path(self.text(key, default) or default).expanduser()
        return value if value.is_absolute() else (self._path.parent / value).resolve()

    def secret(self, key: str) -> Secret | None:
        """`key = "..."`, `key_file = "path"` or `key_env = "VARIABLE"`: at most one of them."""
        given = [k for k in (key, f"{key}_file", f"{key}_env") if self.has(k)]
        for k in (key, f"{key}_file", f"{key}_env"):
            self._seen.add(k)
        if len(given) > 1:
            raise self.fail(key, f"give only one of {', '.join(given)}")
        if not given:
            return None
        if given[0] == key:
            value = self._get(key, str, "a string") or ""
        elif given[0] == f"{key}_file":
            value = self.private_file(f"{key}_file")[1].rstrip("\r\n")
        else:
            variable = self.required_text(f"{key}_env")
            found = os.environ.get(variable)
            if found is None:
                raise self.fail(f"{key}_env", f"environment variable {variable} is not set")
            value = found
        if not value:
            raise self.fail(given[0], "the secret is empty")
        return Secret(value)

    def finish(self) -> None:
        unknown = sorted(set(self._table) - self._seen)
        if unknown:
            raise self.fail(unknown[0], "unknown setting")


_SECTIONS = (
    "gateway", "database", "gpg", "smime", "imap", "smtp", "inbound_smtp", "schedule", "limits", "metrics",
)  # fmt: skip


def resolve_config_path(cli_path: str | None) -> Path:
    """--config, else $GATEWAY_CONFIG, else ./config/gateway.toml."""
    if cli_path:
        return Path(cli_path)
    from_env = os.environ.get(CONFIG_ENV)
    return Path(from_env) if from_env else DEFAULT_CONFIG_PATH


def load_config(path: Path) -> Config:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: config file not found (copy config/gateway.example.toml there, "
            f"or pass --config PATH or set {CONFIG_ENV})"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: config file is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(path.resolve(), document)


def _table(path: Path, document: Mapping[str, Any], name: str) -> _Section | None:
    if name not in document:
        return None
    table = document[name]
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [{name}]: expected a table, got {type(table).__name__}")
    return _Section(path, name, cast(dict[str, Any], table))


def parse_config(path: Path, document: Mapping[str, Any]) -> Config:
    unknown = sorted(set(document) - set(_SECTIONS))
    if unknown:
        raise ConfigError(f"{path}: [{unknown[0]}]: unknown section")
    empty = _Section(path, "gateway", {})
    sections = {name: _table(path, document, name) for name in _SECTIONS}

    gw = sections["gateway"] or empty
    gateway = GatewaySettings(
        address=gw.address("address"),
        admin_address=gw.address("admin_address"),
        marking=gw.text("marking", DEFAULT_MARKING) or DEFAULT_MARKING,
        authserv_id=gw.text("authserv_id"),
        templates=gw.path("templates", "") if gw.has("templates") else None,
        require_second_admin=gw.flag("require_second_admin", default=True),
    )
    for key, placeholder in (("address", gateway.address), ("admin_address", gateway.admin_address)):
        if placeholder.endswith(".invalid"):  # the example's: a forgotten one would send alerts nowhere, silently
            raise gw.fail(
                key, f"{placeholder} is a placeholder (.invalid never receives mail, RFC 6761): put the real address"
            )
    if gateway.templates is not None and not gateway.templates.is_dir():
        raise gw.fail("templates", f"{gateway.templates} is not a directory")
    if not re.fullmatch(r"[A-Z][A-Z0-9 -]*", gateway.marking):
        raise gw.fail("marking", f"must be upper-case letters, digits, spaces and hyphens, got {gateway.marking!r}")
    gw.finish()

    db = sections["database"] or _Section(path, "database", {})
    database = DatabaseSettings(url=_database_url(db, path))
    db.finish()

    g = sections["gpg"] or _Section(path, "gpg", {})
    gpg = GpgSettings(
        home=g.path("home", "gnupg"),
        signing_key=_fingerprint(g, "signing_key"),
        binary=g.text("binary", "gpg") or "gpg",
    )
    g.finish()

    return Config(
        path=path,
        gateway=gateway,
        database=database,
        gpg=gpg,
        imap=_imap(sections["imap"]),
        smtp=_smtp(sections["smtp"]),
        inbound_smtp=_inbound_smtp(sections["inbound_smtp"]),
        schedule=_schedule(sections["schedule"]),
        limits=_limits(sections["limits"]),
        metrics=_metrics(sections["metrics"]),
        smime=_smime(sections["smime"]),
    )


def _database_url(section: _Section, config_path: Path) -> Secret:
    given = section.secret("url")
    url = given.value if given else "sqlite:///gateway.db"
    if url.startswith(("sqlite:///", "sqlite+aiosqlite:///")):
        file = url.split(":///", 1)[1]
        if not file or file == ":memory:" or file.startswith("file:"):
            raise section.fail("url", "needs a database file path (an in-memory database would lose everything)")
        target = Path(file).expanduser()
        if not target.is_absolute():
            target = (config_path.parent / target).resolve()
        return Secret(f"sqlite+aiosqlite:///{target}")
    if url.startswith(("postgresql://", "postgres://", "postgresql+asyncpg://")):
        normalised = "postgresql+asyncpg://" + url.split("://", 1)[1]
        try:
            _ = make_url(normalised).port  # the port is parsed lazily: make it complain now
        except (ArgumentError, ValueError):
            # Not echoed: the URL may hold a password.
            raise section.fail(
                "url", "not a valid PostgreSQL URL (postgresql+asyncpg://USER@HOST:PORT/DATABASE)"
            ) from None
        return Secret(normalised)
    scheme = url.split(":", 1)[0]
    raise section.fail("url", f"unsupported database {scheme!r} (use sqlite:///PATH or postgresql+asyncpg://...)")


def _fingerprint(section: _Section, key: str) -> str | None:
    value = section.text(key)
    if value is None:
        return None
    fingerprint = value.replace(" ", "").upper()
    if not re.fullmatch(r"[0-9A-F]{40}", fingerprint):
        raise section.fail(key, "must be a full 40-hex-digit key fingerprint (see `gateway init`)")
    return fingerprint


def _smime(section: _Section | None) -> SmimeSettings | None:
    if section is None:
        return None
    settings = SmimeSettings(
        certificate=section.path("certificate", "smime-cert.pem"),
        key=section.path("key", "smime-key.pem"),
        trust_store=section.path("trust_store", "") if section.has("trust_store") else None,
        binary=section.text("binary", "openssl") or "openssl",
    )
    section.finish()
    return settings


def _oauth(section: _Section | None) -> OAuthSettings | None:
    """`[imap.oauth]` or `[smtp.oauth]`: an OAuth client, given whole or as a preset with its tenant."""
    if section is None:
        return None
    preset = section.text("preset")
    if preset is not None and preset not in PRESETS:
        raise section.fail("preset", f"must be one of {', '.join(repr(p) for p in PRESETS)}, got {preset!r}")
    if preset == "microsoft365":
        if section.has("authority"):
            raise section.fail("authority", 'give either preset = "microsoft365" with tenant, or authority')
        tenant = section.required_text("tenant")
        # Pasted into a URL: a tenant is a GUID or a domain name, nothing that could change the URL's shape.
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]*", tenant):
            raise section.fail("tenant", f"expected the tenant's ID (a GUID) or its domain name, got {tenant!r}")
        authority = MICROSOFT365_AUTHORITY.format(tenant=tenant)
        scope = section.text("scope", MICROSOFT365_SCOPE) or MICROSOFT365_SCOPE
    else:
        if section.has("tenant"):
            raise section.fail("tenant", 'only with preset = "microsoft365" (otherwise the authority names it)')
        authority = section.required_text("authority")
        scope = section.required_text("scope")
    parts = urlsplit(authority)
    if parts.scheme != "https" or not parts.hostname or parts.query or parts.fragment or parts.path in ("", "/"):
        raise section.fail(
            "authority", f"expected an https URL naming the tenant (https://HOST/TENANT), got {authority!r}"
        )
    secret = section.secret("client_secret")
    certificate = _client_certificate(section)
    if (secret is None) == (certificate is None):
        raise section.fail(
            "client_secret",
            "give a client secret (client_secret, client_secret_file or client_secret_env) "
            "or a certificate and private_key, one of the two",
        )
    settings = OAuthSettings(
        authority=authority.rstrip("/"),
        client_id=section.required_text("client_id"),
        scope=scope,
        secret=secret,
        certificate=certificate,
        ca_file=_existing(section, "ca_file"),
        section=section.name,
    )
    section.finish()
    return settings


def _existing(section: _Section, key: str) -> Path | None:
    if not section.has(key):
        return None
    path = section.path(key, "")
    if not path.is_file():
        raise section.fail(key, f"{path} is not a file")
    return path


def _client_certificate(section: _Section) -> ClientCertificate | None:
    """The client's certificate and its private key (PEM, unencrypted, mode 0600), checked to belong together."""
    # Imported here: only a gateway that logs in with a certificate needs to parse one.
    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    if not (section.has("certificate") or section.has("private_key")):
        return None
    if not section.has("private_key") or not section.has("certificate"):
        missing = "private_key" if section.has("certificate") else "certificate"
        raise section.fail(missing, "certificate and private_key go together")
    cert_path = section.path("certificate", "")
    try:
        cert_pem = cert_path.read_bytes()
        cert = x509.load_pem_x509_certificate(cert_pem)
    except OSError as exc:
        raise section.fail("certificate", f"cannot read {cert_path}: {exc.strerror}") from None
    except ValueError:
        raise section.fail("certificate", f"{cert_path} is not a PEM certificate") from None
    key_path, key_pem = section.private_file("private_key")
    try:
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    except (ValueError, TypeError):
        raise section.fail(
            "private_key", f"{key_path} is not an unencrypted PEM private key (nobody is there to type a passphrase)"
        ) from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    encoding = serialization.Encoding.DER
    if key.public_key().public_bytes(encoding, public) != cert.public_key().public_bytes(encoding, public):
        raise section.fail("private_key", f"{key_path} is not the private key of {cert_path}")
    return ClientCertificate(certificate=cert_pem.decode("ascii", "replace"), key=Secret(key_pem))


def _imap(section: _Section | None) -> ImapSettings | None:
    if section is None:
        return None
    tls = cast(ImapTls, section.choice("tls", ("tls", "none"), "tls"))
    password = section.secret("password")
    oauth = _oauth(section.table("oauth"))
    if password is not None and oauth is not None:
        raise section.fail("password", "give a password or [imap.oauth], not both")
    if password is None and oauth is None:
        raise section.fail(
            "password", "required setting is missing (or give password_file / password_env, or [imap.oauth])"
        )
    settings = ImapSettings(
        host=section.required_text("host"),
        port=section.integer("port", 993 if tls == "tls" else 143, 1, 65535),
        username=section.required_text("username"),
        password=password,
        tls=tls,
        folder=section.text("folder", "INBOX") or "INBOX",
        processed_folder=section.text("processed_folder", "Processed") or "Processed",
        rejected_folder=section.text("rejected_folder", "Rejected") or "Rejected",
        quarantine_folder=section.text("quarantine_folder", "Quarantine") or "Quarantine",
        idle_seconds=section.integer("idle_seconds", 240, 10, 1500),
        poll_seconds=section.integer("poll_seconds", 60, 1, 3600),
        check_ms=section.integer("check_ms", 200, 0, 60_000),
        oauth=oauth,
    )
    _no_token_in_clear(section, settings.tls, settings.host, oauth)
    section.finish()
    return settings


LOOPBACK = ("127.0.0.1", "::1", "localhost")


def _no_token_in_clear(section: _Section, tls: str, host: str, oauth: OAuthSettings | None) -> None:
    """An OAuth access token opens the mailbox (for Microsoft 365, any in the tenant) until it expires: it never
    crosses a network unencrypted. tls = "none" stays for a server on loopback."""
    if oauth is not None and tls == "none" and host not in LOOPBACK:
        raise section.fail("tls", f'"none" would send the OAuth token to {host} unencrypted: use TLS')


def _smtp(section: _Section | None) -> SmtpSettings | None:
    if section is None:
        return None
    tls = cast(SmtpTls, section.choice("tls", ("starttls", "tls", "none"), "starttls"))
    default_port = {"starttls": 587, "tls": 465, "none": 25}[tls]
    username = section.text("username")
    password = section.secret("password")
    oauth = _oauth(section.table("oauth"))
    if oauth is not None:
        if password is not None:
            raise section.fail("password", "give a password or [smtp.oauth], not both")
        if username is None:
            raise section.fail("username", "required with [smtp.oauth]: the mailbox the token logs in as")
    elif (username is None) != (password is None):
        raise section.fail("username" if username is None else "password", "username and password go together")
    settings = SmtpSettings(
        host=section.required_text("host"),
        port=section.integer("port", default_port, 1, 65535),
        username=username,
        password=password,
        tls=tls,
        retry_seconds=section.integer("retry_seconds", 60, 1, 3600),
        ca=_ca_bundle(section, "ca_file"),
        oauth=oauth,
    )
    _no_token_in_clear(section, tls, settings.host, oauth)
    if settings.ca is not None and tls == "none":
        raise section.fail("ca_file", 'has no use with tls = "none": nothing is verified in plaintext')
    section.finish()
    return settings


def _ca_bundle(section: _Section, key: str) -> CaBundle | None:
    """Read now, and only now: a bad file stops the start, and the relay's TLS uses what was read here."""
    if not section.has(key):
        return None
    path = section.path(key, "")
    try:
        return CaBundle.read(path)
    except ValueError as exc:
        raise section.fail(key, f"{path}: no CA certificate could be read ({exc})") from None


def _inbound_smtp(section: _Section | None) -> InboundSmtpSettings | None:
    if section is None:
        return None
    settings = InboundSmtpSettings(
        host=section.text("host", "127.0.0.1") or "127.0.0.1",
        port=section.integer("port", 2525, 1, 65535),
        max_size=section.integer("max_size", 10 * 1024 * 1024, 1024, 100 * 1024 * 1024),
    )
    section.finish()
    return settings


def _schedule(section: _Section | None) -> ScheduleSettings:
    if section is None:
        return ScheduleSettings()
    time_text = section.text("delivery_time", "06:00") or "06:00"
    try:
        delivery_time = dt.time.fromisoformat(time_text)
    except ValueError:
        raise section.fail("delivery_time", f"expected HH:MM, got {time_text!r}") from None
    zone = section.text("timezone", "Europe/London") or "Europe/London"
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise section.fail("timezone", f"unknown time zone {zone!r} (e.g. Europe/London)") from None
    days = section.int_list("reminder_days", (30, 7), 1, 365)
    settings = ScheduleSettings(section.integer("delivery_day", 1, 1, 28), delivery_time, zone, days)
    section.finish()
    return settings


def _limits(section: _Section | None) -> LimitSettings:
    if section is None:
        return LimitSettings()
    d = LimitSettings()
    settings = LimitSettings(
        max_message_bytes=section.integer("max_message_bytes", d.max_message_bytes, 64 * 1024, 100 * 1024 * 1024),
        max_mime_parts=section.integer("max_mime_parts", d.max_mime_parts, 10, 10_000),
        max_header_bytes=section.integer("max_header_bytes", d.max_header_bytes, 8 * 1024, 4 * 1024 * 1024),
        signature_max_age_days=section.integer("signature_max_age_days", d.signature_max_age_days, 1, 90),
        signature_future_minutes=section.integer("signature_future_minutes", d.signature_future_minutes, 0, 1440),
        answers_per_day=section.integer("answers_per_day", d.answers_per_day, 1, 100_000),
        alerts_per_hour=section.integer("alerts_per_hour", d.alerts_per_hour, 1, 10_000),
        impostor_notices_per_day=section.integer("impostor_notices_per_day", d.impostor_notices_per_day, 0, 1000),
    )
    section.finish()
    return settings


def _metrics(section: _Section | None) -> MetricsSettings | None:
    if section is None:
        return None
    d = MetricsSettings()
    host = section.text("host", d.host) or d.host
    if host not in LOOPBACK:
        raise section.fail("host", f"must be a loopback address (127.0.0.1, ::1 or localhost), got {host!r}")
    settings = MetricsSettings(
        host=host,
        port=section.integer("port", d.port, 1, 65535),
        max_outbox_age=section.integer("max_outbox_age", d.max_outbox_age, 10, 86400),
    )
    section.finish()
    return settings
