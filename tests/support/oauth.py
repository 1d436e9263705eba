"""A small OAuth 2.0 token endpoint on loopback, for the one part of OAuth no real server here can play: the
identity provider. HTTPS with a test CA (MSAL wants an https authority): it serves the OpenID Connect discovery
document MSAL reads, issues access tokens for the client-credentials grant when the client's secret (or signed
certificate assertion) is right, and answers Dovecot's introspection (RFC 7662) of the tokens it issued.

Its clock is its own, moved by the test: a token expires when the test says so, not when the wall clock does."""

from __future__ import annotations

import base64
import datetime as dt
import json
import secrets
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from tests.support.tls import make_ca

HOST = "127.0.0.1"
TENANT = "test-tenant"
CLIENT_ID = "3f1c2a4e-0000-4000-8000-00000000c11e"
CLIENT_SECRET = "test-client-secret-not-real"  # noqa: S105 - a secret the test's own token endpoint checks
SCOPE = "https://outlook.office365.com/.default"
VALID_FROM = dt.datetime(2001, 1, 1, tzinfo=dt.UTC)
VALID_UNTIL = dt.datetime(2099, 12, 31, tzinfo=dt.UTC)


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def write_client_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed RSA certificate and its key, as an admin uploads to an app registration: (cert, key)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("register gateway"))
        .issuer_name(_name("register gateway"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(VALID_FROM)
        .not_valid_after(VALID_UNTIL)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "client-cert.pem", directory / "client-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def _b64url(data: str) -> bytes:
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


@dataclass
class Issued:
    token: str
    expires: float  # on the server's clock


@dataclass
class TokenServer:
    """The identity provider's side; see the module docstring. Everything it saw is kept for the test to read."""

    directory: Path
    client_id: str = CLIENT_ID
    client_secret: str = CLIENT_SECRET
    username: str = "gateway"  # whose mailbox every token opens, as introspection tells Dovecot
    lifetime: int = 3600  # expires_in of each token, seconds
    client_certificate: x509.Certificate | None = None  # with it, a signed client assertion is accepted too
    failing: bool = False  # the token endpoint answers 503 (an outage at the provider)
    # Introspection calls every token inactive: the mailbox lets none in, though the provider issues them (as
    # Exchange Online does for an app never given the mailbox).
    mailbox_closed: bool = False
    skew: float = 0.0  # seconds the server's clock is ahead of the wall clock
    token_requests: list[dict[str, str]] = field(default_factory=list)  # the forms, secrets left out
    refused: list[str] = field(default_factory=list)  # the error code of each refused request
    issued: list[Issued] = field(default_factory=list)
    introspected: list[tuple[str, bool]] = field(default_factory=list)  # (token, active) as told to Dovecot
    _servers: list[ThreadingHTTPServer] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.crt"  # where make_ca wrote it

    @property
    def port(self) -> int:
        return int(self._servers[0].server_address[1])

    @property
    def authority(self) -> str:
        return f"https://{HOST}:{self.port}/{TENANT}"

    @property
    def token_endpoint(self) -> str:
        return f"{self.authority}/oauth2/v2.0/token"

    @property
    def introspection_url(self) -> str:
        """Plain HTTP, on a port of its own: what Dovecot's oauth2 passdb asks (loopback only)."""
        return f"http://{HOST}:{self._servers[1].server_address[1]}/introspect"

    def now(self) -> float:
        return time.time() + self.skew

    def expire_tokens(self) -> None:
        """Move the server's clock past the expiry of every token issued so far."""
        with self._lock:
            latest = max((issued.expires for issued in self.issued), default=self.now())
            self.skew += max(latest - self.now(), 0) + 1

    def accepted_tokens(self) -> list[str]:
        """The tokens Dovecot was told were active, in order, each once."""
        with self._lock:
            return list(dict.fromkeys(token for token, active in self.introspected if active))

    def start(self) -> None:
        served = make_ca(self.directory, "Identity Provider Test CA").issue("localhost", ips=(HOST,))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(served.certificate, served.key)
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                owner._get(self)

            def do_POST(self) -> None:
                owner._post(self)

        secure = ThreadingHTTPServer((HOST, 0), Handler)
        secure.socket = context.wrap_socket(secure.socket, server_side=True)
        plain = ThreadingHTTPServer((HOST, 0), Handler)
        self._servers = [secure, plain]
        for server in self._servers:
            threading.Thread(target=server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()

    def _answer(self, handler: BaseHTTPRequestHandler, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        handler.send_response(status)
        if status == 503:  # as Entra ID does; MSAL holds back its next request that long (60 s without it)
            handler.send_header("Retry-After", "1")
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _get(self, handler: BaseHTTPRequestHandler) -> None:
        if handler.path == f"/{TENANT}/v2.0/.well-known/openid-configuration":
            self._answer(handler, 200, {
                "issuer": f"{self.authority}/v2.0",
                "token_endpoint": self.token_endpoint,
                "authorization_endpoint": f"{self.authority}/oauth2/v2.0/authorize",
                "jwks_uri": f"{self.authority}/discovery/v2.0/keys",
                "response_types_supported": ["code", "token"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
            })  # fmt: skip
        else:
            self._answer(handler, 404, {"error": "not_found", "error_description": handler.path})

    def _form(self, handler: BaseHTTPRequestHandler) -> dict[str, str]:
        length = int(handler.headers.get("Content-Length") or 0)
        return dict(urllib.parse.parse_qsl(handler.rfile.read(length).decode()))

    def _post(self, handler: BaseHTTPRequestHandler) -> None:
        form = self._form(handler)
        if handler.path == "/introspect":
            self._introspect(handler, form)
        elif handler.path == f"/{TENANT}/oauth2/v2.0/token":
            self._token(handler, form)
        else:
            self._answer(handler, 404, {"error": "not_found", "error_description": handler.path})

    def _token(self, handler: BaseHTTPRequestHandler, form: dict[str, str]) -> None:
        with self._lock:
            self.token_requests.append(
                {k: v for k, v in form.items() if k not in ("client_secret", "client_assertion")}
            )
        problem = self._client_problem(form)
        if self.failing:
            problem = "temporarily_unavailable"
        elif form.get("grant_type") != "client_credentials":
            problem = "unsupported_grant_type"
        elif form.get("scope") != SCOPE:
            problem = "invalid_scope"
        if problem:
            with self._lock:
                self.refused.append(problem)
            status = 503 if problem == "temporarily_unavailable" else 401 if problem == "invalid_client" else 400
            words = {
                "invalid_client": "AADSTS7000215: Invalid client secret provided.",
                "temporarily_unavailable": "AADSTS90033: A transient error has occurred. Please try again.",
            }.get(problem, problem)
            self._answer(handler, status, {"error": problem, "error_description": words})
            return
        token = "tok-" + secrets.token_urlsafe(24)
        with self._lock:
            self.issued.append(Issued(token, self.now() + self.lifetime))
        self._answer(handler, 200, {"token_type": "Bearer", "expires_in": self.lifetime, "access_token": token})

    def _client_problem(self, form: dict[str, str]) -> str | None:
        if form.get("client_id") != self.client_id:
            return "invalid_client"
        if "client_secret" in form:
            return None if secrets.compare_digest(form["client_secret"], self.client_secret) else "invalid_client"
        if form.get("client_assertion_type") == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer":
            return None if self._assertion_holds(form.get("client_assertion", "")) else "invalid_client"
        return "invalid_client"

    def _assertion_holds(self, assertion: str) -> bool:
        """A client assertion (RFC 7523) signed by the registered certificate's key, for this endpoint."""
        if self.client_certificate is None or assertion.count(".") != 2:
            return False
        head, body, signature = assertion.split(".")
        header, claims = json.loads(_b64url(head)), json.loads(_b64url(body))
        public = self.client_certificate.public_key()
        assert isinstance(public, rsa.RSAPublicKey)
        signed, sig = f"{head}.{body}".encode(), _b64url(signature)
        try:
            if header.get("alg") == "RS256":
                public.verify(sig, signed, padding.PKCS1v15(), hashes.SHA256())
            elif header.get("alg") == "PS256":
                pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)
                public.verify(sig, signed, pss, hashes.SHA256())
            else:
                return False
        except InvalidSignature:
            return False
        return (
            claims.get("aud") == self.token_endpoint
            and claims.get("iss") == claims.get("sub") == self.client_id
            and float(claims.get("exp", 0)) > time.time()
        )

    def _introspect(self, handler: BaseHTTPRequestHandler, form: dict[str, str]) -> None:
        token = form.get("token", "")
        with self._lock:
            found = next((issued for issued in self.issued if issued.token == token), None)
            active = not self.mailbox_closed and found is not None and found.expires > self.now()
            self.introspected.append((token, active))
        if not active:
            self._answer(handler, 200, {"active": False})
            return
        self._answer(handler, 200, {"active": True, "username": self.username, "scope": SCOPE})


@pytest.fixture
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenServer]:
    server = TokenServer(tmp_path_factory.mktemp("idp"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
