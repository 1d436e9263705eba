"""OAuth 2.0 logins: the watcher gets its tokens from a token endpoint through MSAL and logs in to a Dovecot that
takes tokens only (its `oauth2` passdb asks the endpoint whether each is active); a fresh token after expiry; a
refused client stops `gateway run` at start; a provider failing at run time, or a token the mailbox refuses,
shows on /healthz."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import datetime as dt
import imaplib
import json
import shutil
import signal
import ssl
import urllib.error
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiosmtplib
import pytest
import requests
from cryptography import x509

from gateway import oauth
from gateway.compose import Templates
from gateway.config import CaBundle, ImapSettings, OAuthSettings, Secret, SmtpSettings, load_config
from gateway.crypto import Keyring
from gateway.db.engine import create_database
from gateway.dev.dovecot import ImapServer, OAuth2Passdb, free_port
from gateway.inbound.imap import Connection
from gateway.inbound.watcher import Watcher
from gateway.oauth import Tokens, TokenSource, TokenUnavailable
from gateway.outbox import deliver_due, smtp_transport
from gateway.pipeline import process
from gateway.values import Context, Outcome
from tests.support.addresses import ADMIN_ADDRESS, POLICE_ADDRESS
from tests.support.daemon import get, started, until
from tests.support.dovecot import running_dovecot
from tests.support.gateway_cli import Gateway
from tests.support.keys import AuthorityKeys
from tests.support.oauth import (
    CLIENT_ID,
    CLIENT_SECRET,
    SCOPE,
    TokenServer,
    write_client_certificate,
)
from tests.support.relay import START, Relay, queue, serve
from tests.support.requests import request_from_police
from tests.support.sqlite_only import database_url  # noqa: F401  # logins do not depend on the database
from tests.support.tls import make_ca

# Below MSAL's margin (it renews a token with less than five minutes left), so that each login is given a token
# the provider issued for it; the tests that need MSAL to keep a token say so.
SHORT_LIFETIME = 120

Health = tuple[int, dict[str, object]]  # /healthz: its status and its body


@pytest.fixture
def oauth_dovecot(tmp_path_factory: pytest.TempPathFactory, token_server: TokenServer) -> Iterator[ImapServer]:
    """A Dovecot that takes OAuth tokens only, checking each with the token server."""
    passdb = OAuth2Passdb(token_server.introspection_url)
    with running_dovecot(tmp_path_factory.mktemp("dovecot"), oauth2=passdb) as server:
        yield server


def oauth_client(token_server: TokenServer, secret: str = CLIENT_SECRET) -> OAuthSettings:
    return OAuthSettings(
        authority=token_server.authority, client_id=CLIENT_ID, scope=SCOPE, secret=Secret(secret),
        ca_file=token_server.ca_file, section="imap.oauth",
    )  # fmt: skip


def oauth_settings_text(token_server: TokenServer, secret: str = CLIENT_SECRET) -> str:
    return (
        f'[imap.oauth]\nauthority = "{token_server.authority}"\nclient_id = "{CLIENT_ID}"\n'
        f'client_secret = "{secret}"\nscope = "{SCOPE}"\nca_file = "{token_server.ca_file}"\n'
    )


async def eventually(check: object, timeout: float = 30.0, what: str = "") -> None:
    await until(check, timeout, what)


@contextlib.asynccontextmanager
async def watching(gateway: Gateway, server: ImapServer, tokens: TokenSource) -> AsyncIterator[Watcher]:
    """The watcher on the token-only Dovecot, logging in as the mailbox with XOAUTH2, the pipeline behind it."""
    config = load_config(gateway.config_path)
    db = create_database(config.database)
    ctx = Context(config, db, Keyring(config.gpg.home), Templates())

    async def handle(raw: bytes) -> Outcome:
        return await process(ctx, raw, source="imap")

    settings = ImapSettings(
        host=server.host, port=server.port, username=server.username, password=None, tls="none", folder="INBOX",
        idle_seconds=30, poll_seconds=1, oauth=tokens.settings,
    )  # fmt: skip
    stop = asyncio.Event()
    watcher = Watcher(settings, handle, db, stop=stop, tokens=tokens)
    task = asyncio.create_task(watcher.run())
    try:
        yield watcher
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        await db.close()


def password_login(server: ImapServer) -> str:
    client = imaplib.IMAP4(server.host, server.port)
    try:
        client.login(server.username, server.password)
    except imaplib.IMAP4.error as exc:
        return f"refused: {exc}"
    finally:
        with contextlib.suppress(imaplib.IMAP4.error, OSError):
            client.logout()
    return "accepted"


def token_login(server: ImapServer, token: str) -> str:
    client = imaplib.IMAP4(server.host, server.port)
    sasl = f"user={server.username}\1auth=Bearer {token}\1\1".encode()
    try:
        client.authenticate("XOAUTH2", lambda challenge: sasl if not challenge else b"")
    except imaplib.IMAP4.error as exc:
        return f"refused: {exc}"
    finally:
        with contextlib.suppress(imaplib.IMAP4.error, OSError):
            client.logout()
    return "accepted"


async def test_the_watcher_logs_in_with_a_token_and_answers_while_passwords_are_refused(
    live: Gateway, oauth_dovecot: ImapServer, token_server: TokenServer, keys: AuthorityKeys
) -> None:
    tokens = TokenSource(oauth_client(token_server))
    async with watching(live, oauth_dovecot, tokens) as watcher:
        await asyncio.wait_for(watcher.connected.wait(), 30)
        oauth_dovecot.deliver(request_from_police(keys))
        await eventually(lambda: oauth_dovecot.message_count("Processed") == 1, what="the request filed")
    assert oauth_dovecot.message_count("INBOX") == 0
    [issued] = token_server.issued
    assert token_server.accepted_tokens() == [issued.token]  # Dovecot asked, and let the watcher in with it
    assert token_server.token_requests[0]["grant_type"] == "client_credentials"
    # The same Dovecot refuses the account's password, and a token nobody issued.
    assert (await asyncio.to_thread(password_login, oauth_dovecot)).startswith("refused")
    assert (await asyncio.to_thread(token_login, oauth_dovecot, "tok-forged")).startswith("refused")
    assert await asyncio.to_thread(token_login, oauth_dovecot, issued.token) == "accepted"


async def test_after_xoauth2_the_watcher_knows_what_the_logged_in_server_can_do(
    oauth_dovecot: ImapServer, token_server: TokenServer
) -> None:
    """Dovecot names MOVE and UIDPLUS only once logged in; after LOGIN aioimaplib reads them, after AUTHENTICATE
    it does not: without them every message would be filed by COPY, STORE and EXPUNGE."""
    tokens = TokenSource(oauth_client(token_server))
    settings = ImapSettings(
        host=oauth_dovecot.host, port=oauth_dovecot.port, username=oauth_dovecot.username, password=None,
        tls="none", folder="INBOX", oauth=tokens.settings,
    )  # fmt: skip
    link = await Connection.open(settings, None, tokens)
    try:
        assert link._client.has_capability("MOVE")
        assert link._client.has_capability("UIDPLUS")
    finally:
        await link.logout()


@pytest.mark.parametrize(
    ("lifetime", "how"),
    [
        (SHORT_LIFETIME, "expired"),  # MSAL sees it near its end and asks for a new one before the login
        (3600, "revoked"),  # MSAL still holds it as good: the refusal makes it forget it and ask again
    ],
)
async def test_after_a_token_ends_and_the_session_is_kicked_the_reconnect_brings_a_fresh_token(
    live: Gateway, oauth_dovecot: ImapServer, token_server: TokenServer, keys: AuthorityKeys, *, lifetime: int, how: str
) -> None:
    token_server.lifetime = lifetime
    tokens = TokenSource(oauth_client(token_server))
    async with watching(live, oauth_dovecot, tokens) as watcher:
        await asyncio.wait_for(watcher.connected.wait(), 30)
        [first] = token_server.accepted_tokens()
        token_server.expire_tokens()  # on the provider's clock: Dovecot is now told the first token is not active
        assert await asyncio.to_thread(token_login, oauth_dovecot, first) != "accepted", how
        await asyncio.to_thread(oauth_dovecot.kick)  # Dovecot checks a token only at login: end the session
        await eventually(lambda: len(token_server.accepted_tokens()) == 2, what="a second token accepted")
        await asyncio.wait_for(watcher.connected.wait(), 30)
        oauth_dovecot.deliver(request_from_police(keys))
        await eventually(lambda: oauth_dovecot.message_count("Processed") == 1, what="the request filed")
    second = token_server.accepted_tokens()[1]
    assert second != first
    assert len(token_server.token_requests) == 2  # one token per provider's answer: no request wasted
    assert [token for token, active in token_server.introspected if not active].count(second) == 0


async def test_a_client_certificate_gets_a_token_with_a_signed_assertion(
    token_server: TokenServer, tmp_path: Path
) -> None:
    cert_path, key_path = write_client_certificate(tmp_path)
    token_server.client_certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
    config = tmp_path / "gateway.toml"
    config.write_text(
        '[gateway]\naddress = "a@hmci.example"\nadmin_address = "b@hmci.example"\n'
        '[imap]\nhost = "127.0.0.1"\nusername = "gateway"\n'
        f'[imap.oauth]\nauthority = "{token_server.authority}"\nclient_id = "{CLIENT_ID}"\nscope = "{SCOPE}"\n'
        f'certificate = "{cert_path}"\nprivate_key = "{key_path}"\nca_file = "{token_server.ca_file}"\n'
    )
    settings = load_config(config).imap
    assert settings is not None
    assert settings.oauth is not None
    token = await TokenSource(settings.oauth).token()
    assert [issued.token for issued in token_server.issued] == [token]
    assert token_server.token_requests[0]["client_assertion_type"].endswith("jwt-bearer")
    assert "client_secret" not in token_server.token_requests[0]


async def test_a_token_endpoint_behind_an_unknown_ca_is_not_trusted(token_server: TokenServer) -> None:
    settings = oauth_client(token_server)
    with pytest.raises(TokenUnavailable, match=r"SSLError|certificate verify failed") as caught:
        await TokenSource(OAuthSettings(**{**settings.__dict__, "ca_file": None})).token()
    assert CLIENT_SECRET not in str(caught.value)
    assert token_server.token_requests == []  # the secret never went to a server whose certificate failed


def run_gateway(gateway: Gateway) -> tuple[int, str]:
    result = gateway.run("run")
    return result.code, result.err


async def test_a_refused_client_secret_stops_gateway_run_at_start_with_one_line(
    gateway: Gateway, oauth_dovecot: ImapServer, token_server: TokenServer
) -> None:
    gateway.write_config(
        f'\n[imap]\nhost = "{oauth_dovecot.host}"\nport = {oauth_dovecot.port}\nusername = "gateway"\ntls = "none"\n'
        f"{oauth_settings_text(token_server, 'not-the-secret')}"
        '\n[smtp]\nhost = "127.0.0.1"\nport = 1\ntls = "none"\n'
    )
    code, err = await asyncio.to_thread(run_gateway, gateway)
    assert code == 78, err
    [line] = err.strip().splitlines()
    assert line.startswith("gateway: error: [imap.oauth] no access token from https://127.0.0.1:")
    assert "invalid_client: AADSTS7000215: Invalid client secret provided." in line
    assert "not-the-secret" not in line
    assert token_server.refused == ["invalid_client"]
    assert token_server.introspected == []  # nothing reached the mailbox


async def test_an_unreachable_token_endpoint_stops_gateway_run_at_start_with_one_line(
    gateway: Gateway, oauth_dovecot: ImapServer, token_server: TokenServer
) -> None:
    closed = free_port()
    text = oauth_settings_text(token_server).replace(f":{token_server.port}/", f":{closed}/")
    gateway.write_config(
        f'\n[imap]\nhost = "{oauth_dovecot.host}"\nport = {oauth_dovecot.port}\nusername = "gateway"\ntls = "none"\n'
        f'{text}\n[smtp]\nhost = "127.0.0.1"\nport = 1\ntls = "none"\n'
    )
    code, err = await asyncio.to_thread(run_gateway, gateway)
    assert code == 75, err  # worth a restart later, unlike a refused secret
    [line] = err.strip().splitlines()
    assert line.startswith(f"gateway: error: [imap.oauth] no access token from https://127.0.0.1:{closed}/")
    assert CLIENT_SECRET not in line


def with_healthz(gateway: Gateway, dovecot: ImapServer, token_server: TokenServer) -> Callable[[], Health]:
    """The gateway set to read the token-only mailbox and serve /healthz; what asks /healthz (status, body)."""
    metrics_port = free_port()
    gateway.write_config(
        f'\n[imap]\nhost = "{dovecot.host}"\nport = {dovecot.port}\nusername = "gateway"\ntls = "none"\n'
        f'idle_seconds = 30\n{oauth_settings_text(token_server)}\n[smtp]\nhost = "127.0.0.1"\nport = 1\ntls = "none"\n'
        f"\n[metrics]\nport = {metrics_port}\n"
    )

    def health() -> Health:
        try:
            status, body = get(f"http://127.0.0.1:{metrics_port}/healthz")
        except urllib.error.URLError:  # not listening yet: the daemon says it started before it serves /healthz
            return 0, {}
        return status, json.loads(body)

    return health


async def test_a_provider_failing_at_run_time_makes_healthz_unhealthy_until_it_is_back(
    gateway: Gateway, oauth_dovecot: ImapServer, token_server: TokenServer
) -> None:
    token_server.lifetime = SHORT_LIFETIME
    health = with_healthz(gateway, oauth_dovecot, token_server)
    daemon = await started(gateway)
    try:
        await eventually(lambda: health()[0] == 200, what="healthy with a token")
        token_server.failing = True
        token_server.expire_tokens()
        await asyncio.to_thread(oauth_dovecot.kick)
        await eventually(lambda: health()[1].get("oauth_token") is False, what="the failing provider on /healthz")
        status, body = await asyncio.to_thread(health)
        assert status == 503
        assert body["imap_connected"] is False
        assert str(body["oauth_error"]).endswith("HTTP Error: 503")  # the provider's own status
        token_server.failing = False  # the provider is back: the watcher's next try logs in again
        await eventually(lambda: health()[0] == 200, 90, what="healthy again")
    finally:
        daemon.send_signal(signal.SIGTERM)
        await asyncio.wait_for(daemon.wait(), 20)
    log = [json.loads(line) for line in (gateway.directory / "daemon.log").read_text().splitlines()]
    [error] = [e for e in log if e.get("event") == "no OAuth access token"]
    assert error["level"] == "error"
    assert error["error"] == body["oauth_error"]
    text = (gateway.directory / "daemon.log").read_text()
    assert CLIENT_SECRET not in text
    assert not any(issued.token in text for issued in token_server.issued)
    assert daemon.returncode == 0


async def test_a_token_the_mailbox_refuses_makes_healthz_unhealthy_saying_so_until_a_login_succeeds(
    gateway: Gateway, oauth_dovecot: ImapServer, token_server: TokenServer
) -> None:
    """The provider issues tokens but the mailbox takes none (an app never given it): /healthz names the refusal,
    not only a mailbox that is not connected; each refused session is logged out; a login that succeeds clears it."""
    token_server.lifetime = SHORT_LIFETIME  # each login asks the provider for a token of its own
    health = with_healthz(gateway, oauth_dovecot, token_server)
    daemon = await started(gateway)
    try:
        await eventually(lambda: health()[0] == 200, what="healthy with a token")
        token_server.mailbox_closed = True
        await asyncio.to_thread(oauth_dovecot.kick)
        await eventually(lambda: health()[1].get("oauth_token") is False, what="the refusal on /healthz")
        status, body = await asyncio.to_thread(health)
        refused = len([token for token, active in token_server.introspected if not active])
        token_server.mailbox_closed = False
        await eventually(lambda: health()[0] == 200, 90, what="healthy again")
        _, healthy = await asyncio.to_thread(health)
    finally:
        daemon.send_signal(signal.SIGTERM)
        await asyncio.wait_for(daemon.wait(), 20)
    assert status == 503
    assert (body["imap_connected"], body["oauth_token"]) == (False, False)
    assert body["oauth_error"] == (
        "[imap.oauth] the mailbox refused the access token: AUTHENTICATE XOAUTH2: NO [AUTHENTICATIONFAILED] "
        "Authentication failed."
    )
    assert healthy["oauth_token"] is True
    assert "oauth_error" not in healthy
    assert refused >= 1
    log = [json.loads(line) for line in (gateway.directory / "daemon.log").read_text().splitlines()]
    [error] = [e for e in log if e.get("event") == "OAuth access token refused"]  # once, however often refused
    assert (error["level"], error["error"]) == ("error", body["oauth_error"])
    assert [e["level"] for e in log if e.get("event") == "OAuth access token accepted again"] == ["info"]
    text = (gateway.directory / "daemon.log").read_text()
    assert not any(issued.token in text for issued in token_server.issued)
    # Each refused login was ended by the gateway's LOGOUT, not left open for Dovecot to time out.
    failed = [line for line in oauth_dovecot.log.read_text().splitlines() if "auth failed" in line]
    assert len(failed) == refused, failed
    assert all("Aborted login by logging out" in line for line in failed), failed
    assert daemon.returncode == 0


@pytest.fixture
def token_dovecot_with_sasl(
    tmp_path_factory: pytest.TempPathFactory, token_server: TokenServer
) -> Iterator[ImapServer]:
    """The token-only Dovecot, with its SASL authentication open to an MTA on a loopback port."""
    passdb = OAuth2Passdb(token_server.introspection_url)
    with running_dovecot(tmp_path_factory.mktemp("dovecot"), oauth2=passdb, sasl=True) as server:
        yield server


@dataclass(frozen=True)
class Submission:
    port: int  # Postfix's submission port: STARTTLS, then AUTH through the token-only Dovecot
    ca: Path  # the CA of its certificate
    downstream: Relay  # the police force's own mail server, where Postfix relays to


@contextlib.asynccontextmanager
async def postfix_submission(dovecot: ImapServer) -> AsyncIterator[Submission]:
    """A private Postfix whose submission port authenticates through `dovecot`'s SASL, relaying the police's mail
    to a server on loopback; skipped until the Postfix harness (tests/support/postfix.py) is there."""
    postfix_support = pytest.importorskip("tests.support.postfix", reason="the private Postfix harness (border)")
    foreground = pytest.importorskip("tests.support.foreground")
    downstream = Relay()
    relay_server, relay_port = await serve(downstream)
    directory = foreground.private_directory("gw-submission-")
    try:
        ca = make_ca(directory / "ca", "Submission Test CA")
        served = ca.issue("smtp.hmci.example", ips=("127.0.0.1",))
        sasl = f"inet:127.0.0.1:{dovecot.sasl_port}"
        try:
            postfix = postfix_support.start_postfix(
                directory / "postfix",
                hostname="smtp.hmci.example",
                routes={POLICE_ADDRESS.split("@")[1]: f"smtp:[127.0.0.1]:{relay_port}"},
                submission=postfix_support.Submission(served.certificate, served.key, sasl_path=sasl),
            )
        except foreground.ServerUnavailable as exc:
            foreground.skip_unavailable(str(exc))
        try:
            yield Submission(postfix.submission_port, ca.certificate, downstream)
        finally:
            postfix.stop()
    finally:
        relay_server.close()
        shutil.rmtree(directory, ignore_errors=True)


async def test_the_outbox_submits_to_postfix_with_xoauth2_checked_through_dovecot(
    live: Gateway, token_dovecot_with_sasl: ImapServer, token_server: TokenServer
) -> None:
    """Postfix's submission port (STARTTLS required, then AUTH through Dovecot's SASL, whose oauth2 passdb asks
    the token endpoint) takes the gateway's reply with a token, refuses a forged one and any password, and
    relays the reply on to the authority's server."""
    async with postfix_submission(token_dovecot_with_sasl) as submission:
        await _submit_through(live, submission, token_server=token_server, dovecot=token_dovecot_with_sasl)


async def test_gateway_run_answers_through_a_mailbox_and_a_relay_that_take_only_tokens(
    live: Gateway, token_dovecot_with_sasl: ImapServer, token_server: TokenServer, keys: AuthorityKeys
) -> None:
    """`gateway run` with [imap.oauth] and [smtp.oauth] naming one client: one token serves both logins, the
    request is read by XOAUTH2 and the answer submitted by XOAUTH2, past Postfix to the police."""
    dovecot = token_dovecot_with_sasl
    async with postfix_submission(dovecot) as submission:
        client = oauth_settings_text(token_server)
        live.write_config(
            f'\n[imap]\nhost = "{dovecot.host}"\nport = {dovecot.port}\nusername = "gateway"\ntls = "none"\n{client}'
            f'\n[smtp]\nhost = "127.0.0.1"\nport = {submission.port}\nusername = "gateway"\ntls = "starttls"\n'
            f'ca_file = "{submission.ca}"\n'  # the relay's certificate is the test CA's
            f"{client.replace('[imap.oauth]', '[smtp.oauth]')}"
        )
        daemon = await started(live)
        try:
            dovecot.deliver(request_from_police(keys))
            await eventually(lambda: len(submission.downstream.received) == 1, 60, what="the answer at the police")
        finally:
            daemon.send_signal(signal.SIGTERM)
            await asyncio.wait_for(daemon.wait(), 20)
    assert submission.downstream.received[0].rcpt_tos == [POLICE_ADDRESS]
    assert dovecot.message_count("Processed") == 1
    assert len(token_server.issued) == 1  # the check at start, the mailbox and the relay: one token, still good
    assert token_server.accepted_tokens() == [token_server.issued[0].token]
    assert daemon.returncode == 0
    log = (live.directory / "daemon.log").read_text()
    assert CLIENT_SECRET not in log
    assert token_server.issued[0].token not in log


async def test_gateway_outbox_send_submits_with_a_token_from_smtp_oauth(
    live: Gateway, token_dovecot_with_sasl: ImapServer, token_server: TokenServer
) -> None:
    """`gateway outbox send`, with no daemon to hand it a token source, builds its own from [smtp.oauth]."""
    async with postfix_submission(token_dovecot_with_sasl) as submission:
        client = oauth_settings_text(token_server).replace("[imap.oauth]", "[smtp.oauth]")
        live.write_config(
            f'\n[smtp]\nhost = "127.0.0.1"\nport = {submission.port}\nusername = "gateway"\ntls = "starttls"\n'
            f'ca_file = "{submission.ca}"\n{client}'
        )
        db = create_database(load_config(live.config_path).database)
        try:
            await queue(db)
        finally:
            await db.close()
        said = await asyncio.to_thread(live.ok, "outbox", "send")
        await eventually(lambda: len(submission.downstream.received) == 1, what="the reply relayed on")
    assert said.strip() == "sent 1, will retry 0, failed 0"
    assert submission.downstream.received[0].rcpt_tos == [POLICE_ADDRESS]
    assert token_server.accepted_tokens() == [token_server.issued[0].token]  # Postfix let it in with the token


async def _submit_through(
    gateway: Gateway, submission: Submission, *, token_server: TokenServer, dovecot: ImapServer
) -> None:
    port, downstream = submission.port, submission.downstream
    tls = ssl.create_default_context(cafile=str(submission.ca))
    client = dataclasses.replace(oauth_client(token_server), section="smtp.oauth")
    settings = SmtpSettings(
        host="127.0.0.1", port=port, username=dovecot.username, password=None, tls="starttls",
        ca=CaBundle.read(submission.ca), oauth=client,
    )  # fmt: skip
    config = load_config(gateway.config_path)
    db = create_database(config.database)
    tokens = TokenSource(client)
    transport = smtp_transport(settings, tokens)  # as the daemon's sender keeps one
    try:
        await queue(db)
        counts = await deliver_due(db, transport, admin_address=ADMIN_ADDRESS, now=START)
        assert counts == {"sent": 1, "retrying": 0, "failed": 0}
        await eventually(lambda: len(downstream.received) == 1, what="Postfix relaying the reply on")
        assert downstream.received[0].rcpt_tos == [POLICE_ADDRESS]
        [first] = token_server.accepted_tokens()  # Dovecot asked about the token Postfix was given
        # The token ends early (revoked) while MSAL still holds it as good: the relay refuses it, the message
        # waits for its next attempt, which brings a new token.
        token_server.expire_tokens()
        await queue(db)
        counts = await deliver_due(db, transport, admin_address=ADMIN_ADDRESS, now=START)
        assert counts == {"sent": 0, "retrying": 1, "failed": 0}
        refused = tokens.problem  # on /healthz until the retry logs in
        later = START + dt.timedelta(hours=1)
        counts = await deliver_due(db, transport, admin_address=ADMIN_ADDRESS, now=later)
        assert counts == {"sent": 1, "retrying": 0, "failed": 0}
        assert tokens.problem is None
        await eventually(lambda: len(downstream.received) == 2, what="the second reply relayed")
    finally:
        await db.close()
    assert (first, False) in token_server.introspected
    assert refused is not None
    assert refused.startswith("[smtp.oauth] the relay refused the access token: 535 ")
    assert token_server.accepted_tokens() == [first, token_server.issued[1].token]
    # The same submission port: a forged token and the account's password are refused.
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=True, tls_context=tls)
    await smtp.connect()
    try:
        await smtp.ehlo()  # what Postfix offers once in TLS: AUTH only then
        assert "plain" not in smtp.server_auth_methods  # Dovecot offers token mechanisms only
        assert "xoauth2" in smtp.server_auth_methods
        with pytest.raises(aiosmtplib.SMTPAuthenticationError):
            await smtp.auth_xoauth2(dovecot.username, "tok-forged")
        plain = base64.b64encode(f"\0{dovecot.username}\0{dovecot.password}".encode())
        assert (await smtp.execute_command(b"AUTH", b"PLAIN", plain)).code >= 500
    finally:
        smtp.close()


def test_imap_and_smtp_naming_one_client_share_its_tokens(tmp_path: Path) -> None:
    client = '[{}.oauth]\npreset = "microsoft365"\ntenant = "t"\nclient_id = "c"\nclient_secret = "s"\n'
    path = tmp_path / "gateway.toml"
    base = (
        '[gateway]\naddress = "a@hmci.example"\nadmin_address = "b@hmci.example"\n'
        '[imap]\nhost = "outlook.office365.com"\nusername = "register@hmci.example"\n' + client.format("imap")
    )
    path.write_text(
        base + '[smtp]\nhost = "smtp.office365.com"\nusername = "register@hmci.example"\n' + client.format("smtp")
    )
    shared = Tokens(load_config(path))
    assert shared.imap is shared.smtp
    assert len(shared.sources()) == 1
    other = client.format("smtp").replace('client_id = "c"', 'client_id = "another"')
    path.write_text(base + '[smtp]\nhost = "smtp.office365.com"\nusername = "register@hmci.example"\n' + other)
    apart = Tokens(load_config(path))
    assert apart.imap is not apart.smtp
    assert len(apart.sources()) == 2


def test_the_identity_provider_is_reached_over_https_only() -> None:
    with pytest.raises(requests.exceptions.InvalidURL, match="over https"):
        oauth._Session(None).request("POST", "http://login.example/token", data={"client_secret": "s"})
