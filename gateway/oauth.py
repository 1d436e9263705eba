"""OAuth 2.0 access tokens for the mailbox and the relay: MSAL's client-credentials grant, cached and renewed."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import msal
import requests
import structlog

from gateway.config import Config, OAuthSettings
from gateway.errors import ConfigError, GatewayError

log = structlog.get_logger("gateway.oauth")

TOKEN_TIMEOUT = 30.0  # seconds for one HTTP request to the identity provider (each is tried twice at most)
# The provider's answers that mean the settings are wrong (the client, its secret or certificate, the scope):
# retrying will not mend them, a person must.
REFUSALS = frozenset(
    {"invalid_client", "unauthorized_client", "invalid_scope", "invalid_request", "invalid_grant", "access_denied"}
)


class TokenUnavailable(GatewayError):
    """No access token could be had: the provider could not be reached or failed. Worth trying again later."""

    exit_code = 75  # EX_TEMPFAIL: a service manager may restart the gateway


class TokenRefused(TokenUnavailable, ConfigError):
    """The provider refused the client: its id, secret, certificate or scope is wrong. A settings problem."""

    exit_code = 78  # EX_CONFIG, like every settings error: restarting will not mend it


class TokenSource:
    """Access tokens for one OAuth client. MSAL keeps the token and hands it out again until it nears its expiry
    (then it asks for a new one), so `token()` may be called before every login: it costs a request only when
    one is due. Each call runs MSAL (which is synchronous) in a thread, one at a time."""

    def __init__(self, settings: OAuthSettings) -> None:
        self.settings = settings
        self._app: msal.ConfidentialClientApplication | None = None
        self._lock = asyncio.Lock()
        # Why the provider gave no token at the last attempt (one line, no secret), or None once it gave one.
        self._unobtainable: str | None = None
        # By server: why it refused the last token offered to it, until it takes one again.
        self._refusals: dict[str, str] = {}

    @property
    def problem(self) -> str | None:
        """Why this client has no token that logs in now (one line, no secret), or None: for /healthz. The
        provider's failure, or else a server's refusal of the token it gave."""
        return self._unobtainable or next(iter(self._refusals.values()), None)

    async def token(self, *, report: bool = True) -> str:
        """A token valid for some minutes yet; TokenRefused or TokenUnavailable (one line each) when none.
        `report`: log a failure (not at start, where the error is the command's one line)."""
        async with self._lock:
            try:
                token = await asyncio.to_thread(self._acquire)
            except TokenUnavailable as exc:
                if report and self._unobtainable != str(exc):  # once per kind of failure: callers retry with backoff
                    log.error("no OAuth access token", client=self.settings.section, error=str(exc))  # noqa: TRY400 - the one line says it all; a traceback would be MSAL's insides
                self._unobtainable = str(exc)
                raise
        if self._unobtainable is not None:
            log.info("OAuth access token obtained again", client=self.settings.section)
        self._unobtainable = None
        return token

    async def forget(self) -> None:
        """The server refused a token MSAL still holds as valid (revoked, say): forget it, so the next login
        asks the provider for a new one instead of offering the same token until it expires."""
        async with self._lock:
            if self._app is not None:
                await asyncio.to_thread(self._app.remove_tokens_for_client)

    async def refused(self, server: str, said: str) -> None:
        """`server` refused the token at login (`said`: its answer, which holds no token): forgotten as by
        `forget`, and the problem on /healthz until `accepted(server)`. A token the provider gives that the
        server will not take (a client the mailbox was never opened to, say) must not look like a healthy
        gateway that merely cannot connect."""
        problem = f"[{self.settings.section}] {server} refused the access token: {_line(said)}"
        if self._refusals.get(server) != problem:  # once per kind of refusal: the callers retry with backoff
            log.error("OAuth access token refused", client=self.settings.section, server=server, error=problem)
        self._refusals[server] = problem
        await self.forget()

    def accepted(self, server: str) -> None:
        """`server` let a login in with a token: whatever it refused before is no longer a problem."""
        if self._refusals.pop(server, None) is not None:
            log.info("OAuth access token accepted again", client=self.settings.section, server=server)

    def _acquire(self) -> str:
        settings = self.settings
        where = f"[{settings.section}] no access token from {settings.authority}"
        try:
            if self._app is None:  # built here: MSAL reads the authority's discovery document as it is made
                self._app = self._application()
            result: dict[str, Any] = self._app.acquire_token_for_client(scopes=[settings.scope])
        except ValueError as exc:  # MSAL's word for an authority whose discovery document it could not read
            raise TokenUnavailable(f"{where}: {_line(str(exc))}") from None
        except Exception as exc:  # requests' errors (refused, TLS, timeout) and any other: one line, no traceback
            raise TokenUnavailable(f"{where}: {type(exc).__name__}: {_line(str(exc))}") from None
        token = result.get("access_token")
        if isinstance(token, str) and token:
            return token
        error = str(result.get("error") or "no access_token in the answer")
        description = _line(str(result.get("error_description") or ""))
        said = f"{where}: {error}" + (f": {description}" if description else "")
        raise (TokenRefused if error in REFUSALS else TokenUnavailable)(said)

    def _application(self) -> msal.ConfidentialClientApplication:
        settings = self.settings
        credential: str | dict[str, str]
        if settings.certificate is not None:
            # With the certificate (not a thumbprint) MSAL signs the assertion PS256 with its SHA-256 thumbprint, as
            # Entra ID prefers, and sends the certificate along (x5c).
            credential = {
                "private_key": settings.certificate.key.value,
                "public_certificate": settings.certificate.certificate,
            }
        else:
            assert settings.secret is not None  # noqa: S101 - the settings hold exactly one of the two
            credential = settings.secret.value
        return msal.ConfidentialClientApplication(
            settings.client_id,
            client_credential=credential,
            authority=settings.authority,
            # The authority is the admin's setting, trusted as written: no look-up of it at Microsoft (which a
            # private or test authority would fail, and which costs a round trip to the internet at start).
            instance_discovery=False,
            http_client=_Session(settings.ca_file),
        )


class _Session(requests.Session):
    """MSAL's HTTP client: requests, with a timeout on every request and `ca_file` really used. (Given to MSAL as
    `verify`, a CA file is set on the session, and requests lets REQUESTS_CA_BUNDLE override a session's setting:
    it must go with each request.) Retries once, as MSAL's own session does."""

    def __init__(self, ca_file: Path | None) -> None:
        super().__init__()
        self._verify: str | bool = str(ca_file) if ca_file else True
        self.mount("https://", requests.adapters.HTTPAdapter(max_retries=1))

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        # The discovery document names the token endpoint: the client's secret never goes to a plain-HTTP one.
        if not (url.decode() if isinstance(url, bytes) else url).lower().startswith("https://"):
            raise requests.exceptions.InvalidURL("the identity provider must be reached over https")
        kwargs.setdefault("timeout", TOKEN_TIMEOUT)
        if self._verify is not True:
            kwargs.setdefault("verify", self._verify)
        return super().request(method, url, *args, **kwargs)


def _line(text: str) -> str:
    """A provider's words as one short line: Entra ID's descriptions run on with trace and correlation ids."""
    return " ".join(text.split())[:300]


class Tokens:
    """The token sources of one gateway: one per OAuth client, shared by [imap] and [smtp] when they name the
    same client (Microsoft 365's one app registration serves both, with one token)."""

    def __init__(self, config: Config) -> None:
        self.imap: TokenSource | None = None
        self.smtp: TokenSource | None = None
        if config.imap is not None and config.imap.oauth is not None:
            self.imap = TokenSource(config.imap.oauth)
        if config.smtp is not None and config.smtp.oauth is not None:
            same = self.imap is not None and _same_client(self.imap.settings, config.smtp.oauth)
            self.smtp = self.imap if same else TokenSource(config.smtp.oauth)

    def sources(self) -> list[TokenSource]:
        return [s for s in dict.fromkeys([self.imap, self.smtp]) if s is not None]

    async def check(self) -> None:
        """A token from every client now: at start, so that a wrong secret stops `gateway run` with one line."""
        for source in self.sources():
            await source.token(report=False)

    def problem(self) -> str | None:
        """Why a client has no token now, or None: a /healthz failure."""
        return next((s.problem for s in self.sources() if s.problem), None)


def _same_client(one: OAuthSettings, other: OAuthSettings) -> bool:
    return dataclasses.replace(one, section=other.section) == other
