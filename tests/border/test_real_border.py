"""Mail through a real border: Postfix on loopback with Rspamd as its milter checking SPF, DKIM and DMARC against a
DNS server the test runs, delivering into Dovecot over LMTP; `gateway run` reads that mailbox and its replies leave
through the same Postfix, over STARTTLS with a certificate from the test's CA. No header here is written by hand but
the one an attacker forges."""

from __future__ import annotations

import asyncio
import base64
import csv
import datetime as dt
import imaplib
import json
import signal
import smtplib
import ssl
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path

import pytest

from gateway.dev.dovecot import ImapServer
from gateway.dev.sample import write_sample
from tests.support.addresses import ADMIN_ADDRESS, GATEWAY_ADDRESS, LA_ADDRESS
from tests.support.border import Border, DkimKey, running_border, sender_zone
from tests.support.daemon import started, until
from tests.support.gateway_cli import Gateway
from tests.support.keys import AuthorityKeys
from tests.support.live import open_as_recipient, outbox
from tests.support.mailbox import counts_are, eventually
from tests.support.relay import Relay, serve
from tests.support.requests import BORDER
from tests.support.sqlite_only import database_url  # noqa: F401  # the border's work does not depend on the database

COUNCIL = "Shropshire Council"
COUNCIL_DOMAIN = LA_ADDRESS.rpartition("@")[2]  # shropshire.gov.example
SELECTOR = "mail2026"
ATTACKER_HOST = "127.0.0.2"  # on loopback like the council's server, but not in its SPF record
REQUEST = "Request: disclosure\r\nPurpose: Safeguarding children in our area\r\n"
# What an attacker writes to pass for mail our border found good: our border's own name, even.
FORGED_RESULTS = f"{BORDER}; spf=pass smtp.mailfrom={COUNCIL_DOMAIN}; dmarc=pass header.from={COUNCIL_DOMAIN}"


@pytest.fixture
def council_gateway(gateway: Gateway, keys: AuthorityKeys, tmp_path: Path) -> Gateway:
    """A gateway trusting the border's DMARC results, with Shropshire Council registered to be authenticated by
    DMARC alone (as most councils will be)."""
    gateway.authserv_id = BORDER
    gateway.write_config()
    sample = write_sample(tmp_path / "register", 400, seed=16)
    gateway.ok("register", "import", "--homes", str(sample.homes_path), "--enforcement", str(sample.enforcement_path))
    gateway.ok(
        "authority", "add", "--name", COUNCIL, "--kind", "local-authority", "--area", "Shropshire",
        "--email", LA_ADDRESS, "--key", str(keys.la.write(tmp_path, "council.asc")), "--auth", "dmarc",
    )  # fmt: skip
    return gateway


def request(message_id: str, *, extra: str = "") -> bytes:
    headers = (
        f"{extra}From: {COUNCIL} <{LA_ADDRESS}>\r\nTo: {GATEWAY_ADDRESS}\r\nSubject: Register request\r\n"
        f"Date: {format_datetime(dt.datetime.now(dt.UTC))}\r\n"
        f"Message-ID: {message_id}\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n"
    )
    return (headers + "\r\n" + REQUEST).encode()


def gateway_settings(gateway: Gateway, border: Border, retry_seconds: int = 1) -> str:
    """[imap] on the border's mailbox and [smtp] on its submission port: STARTTLS, the border's CA trusted (a copy
    beside the settings file, as an admin keeps it)."""
    (gateway.directory / "relay-ca.pem").write_bytes(border.ca.certificate.read_bytes())
    box = border.mailbox
    return (
        f'\n[imap]\nhost = "{box.host}"\nport = {box.port}\nusername = "{box.username}"\n'
        f'password = "{box.password}"\ntls = "none"\n'
        f'\n[smtp]\nhost = "127.0.0.1"\nport = {border.postfix.submission_port}\ntls = "starttls"\n'
        f'ca_file = "relay-ca.pem"\nretry_seconds = {retry_seconds}\n'
    )


def filed(server: ImapServer, folder: str) -> list[EmailMessage]:
    """The messages in a folder as a person's mail client would fetch them."""
    client = imaplib.IMAP4(server.host, server.port)
    try:
        client.login(server.username, server.password)
        client.select(folder, readonly=True)
        _, numbers = client.search(None, "ALL")
        found = []
        for number in numbers[0].split():
            _, data = client.fetch(number, "(BODY.PEEK[])")
            raw = data[0]
            assert isinstance(raw, tuple)
            message = message_from_bytes(raw[1], policy=policy.default)
            assert isinstance(message, EmailMessage)
            found.append(message)
        return found
    finally:
        client.logout()


def results_of(message: EmailMessage) -> list[str]:
    """The Authentication-Results fields, top first, unfolded."""
    return [" ".join(str(value).split()) for value in message.get_all("Authentication-Results", [])]


def plaintext_submission_refused(border: Border) -> tuple[int, bytes, int, bytes]:
    """A client that skips STARTTLS: AUTH and MAIL FROM, each answered."""
    assert border.postfix.submission_port is not None
    with smtplib.SMTP("127.0.0.1", border.postfix.submission_port, timeout=30) as client:
        client.ehlo("gateway.hmci.example")
        assert client.has_extn("starttls")
        login = base64.b64encode(b"\0register-requests\0a-password").decode()
        auth = client.docmd("AUTH", f"PLAIN {login}")
        mail = client.docmd("MAIL", f"FROM:<{GATEWAY_ADDRESS}>")
    return auth[0], auth[1], mail[0], mail[1]


def certificate_checked(border: Border) -> None:
    """STARTTLS against the machine's own trust store fails: the certificate really is checked; with the test CA
    (what [smtp] ca_file gives the gateway) it succeeds."""
    assert border.postfix.submission_port is not None
    with smtplib.SMTP("127.0.0.1", border.postfix.submission_port, timeout=30) as client:
        client.ehlo("gateway.hmci.example")
        with pytest.raises(ssl.SSLCertVerificationError):
            client.starttls(context=ssl.create_default_context())
    with smtplib.SMTP("127.0.0.1", border.postfix.submission_port, timeout=30) as client:
        client.ehlo("gateway.hmci.example")
        code, _ = client.starttls(context=ssl.create_default_context(cafile=str(border.ca.certificate)))
        assert code == 220


async def test_a_councils_dkim_signed_request_is_answered_through_the_border_and_its_forgery_is_not(
    council_gateway: Gateway, keys: AuthorityKeys, tmp_path: Path
) -> None:
    """A request DKIM-signed by the council's domain, from the address its SPF names, passes the border's DMARC and
    is answered, the answer leaving through the border over verified STARTTLS. The same request with a forged From
    (no DKIM signature, sent from 127.0.0.2, with its own Authentication-Results saying dmarc=pass in our border's
    name) fails DMARC at the border; the border's header is on top; the gateway quarantines it as an impostor."""
    outside = Relay()
    sink, sink_port = await serve(outside)
    key = DkimKey.make(COUNCIL_DOMAIN, SELECTOR)
    genuine_id, forged_id = make_msgid(domain=COUNCIL_DOMAIN), make_msgid(domain=COUNCIL_DOMAIN)
    try:
        with running_border(
            hostname=BORDER,
            zones=sender_zone(COUNCIL_DOMAIN, key),
            mailbox_address=GATEWAY_ADDRESS,
            outside={COUNCIL_DOMAIN: sink_port, ADMIN_ADDRESS: sink_port},
        ) as border:
            auth_code, auth_said, mail_code, mail_said = await asyncio.to_thread(plaintext_submission_refused, border)
            await asyncio.to_thread(certificate_checked, border)

            council_gateway.write_config(gateway_settings(council_gateway, border))
            daemon = await started(council_gateway)
            try:
                genuine = key.sign(request(genuine_id))
                await asyncio.to_thread(border.send, genuine, LA_ADDRESS, GATEWAY_ADDRESS)
                forged = request(forged_id, extra=f"Authentication-Results: {FORGED_RESULTS}\r\n")
                await asyncio.to_thread(border.send, forged, LA_ADDRESS, GATEWAY_ADDRESS, source=ATTACKER_HOST)
                where = {"INBOX": 0, "Processed": 1, "Quarantine": 1}
                await eventually(counts_are(border.mailbox, where), 60)
                # The answer and the impostor notice to the council, and the alert to the admins.
                await until(lambda: len(outside.received) >= 3, 60, "three messages out through the border")
            finally:
                daemon.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(daemon.wait(), 30)
                except TimeoutError:
                    daemon.kill()
                    await daemon.wait()
            [answered] = await asyncio.to_thread(filed, border.mailbox, "Processed")
            [quarantined] = await asyncio.to_thread(filed, border.mailbox, "Quarantine")
            postfix_log = border.postfix.log()
    finally:
        sink.close()

    assert daemon.returncode == 0  # stopped cleanly, having sent everything
    # Part 3: the submission port refuses a client that skips STARTTLS, whatever it tries.
    assert (auth_code, mail_code) == (530, 530), (auth_said, mail_said)
    assert b"STARTTLS" in auth_said
    assert b"STARTTLS" in mail_said

    # The genuine request, as the gateway found it in its mailbox: the border's header alone, and every check passed.
    print("the border wrote:", results_of(answered)[0])  # for a person reading the test's output (pytest -s)
    assert answered["Message-ID"] == genuine_id
    signature = " ".join(str(answered["DKIM-Signature"]).split())
    assert f"d={COUNCIL_DOMAIN};" in signature
    assert f"s={SELECTOR};" in signature
    [border_said] = results_of(answered)
    assert border_said.startswith(f"{BORDER};")
    assert f"dkim=pass header.d={COUNCIL_DOMAIN} header.s={SELECTOR}" in border_said
    assert f"designates 127.0.0.1 as permitted sender) smtp.mailfrom={LA_ADDRESS}" in border_said
    assert f"dmarc=pass (policy=reject) header.from={COUNCIL_DOMAIN}" in border_said

    # The forgery: the border's header is on top and says fail; the attacker's sits below it, unchanged.
    assert quarantined["Message-ID"] == forged_id
    border_said, attacker_said = results_of(quarantined)
    assert border_said.startswith(f"{BORDER};")
    assert f"spf=fail ({BORDER}: domain of {LA_ADDRESS} does not designate {ATTACKER_HOST}" in border_said
    assert f"header.from={COUNCIL_DOMAIN} (policy=reject)" in border_said
    assert "dmarc=fail" in border_said
    assert "dkim=pass" not in border_said  # no signature, so none passed
    assert attacker_said == FORGED_RESULTS

    # What the gateway made of them: one answer, one impostor quarantined, both sent through the border.
    rows = await asyncio.to_thread(outbox, council_gateway)
    kinds = sorted((str(row["kind"]), str(row["recipient"]), str(row["status"])) for row in rows)
    assert kinds == [
        ("alert", ADMIN_ADDRESS, "sent"),
        ("disclosure", LA_ADDRESS, "sent"),
        ("impostor-notice", LA_ADDRESS, "sent"),
    ]
    held = json.loads(await asyncio.to_thread(council_gateway.ok, "quarantine", "list", "--json"))
    assert [row["reason"] for row in held] == [f"authentication failed: DMARC for {COUNCIL_DOMAIN} is fail"]

    # The answer arrived outside, sent by the gateway over TLS through the border, and opens with the council's key.
    delivered = {
        str(message_from_bytes(bytes(e.original_content or b""), policy=policy.default)["In-Reply-To"]): e
        for e in outside.received
    }
    reply = delivered[genuine_id]
    assert reply.rcpt_tos == [LA_ADDRESS]
    wire = bytes(reply.original_content or b"")
    assert f"by {BORDER} (Postfix) with ESMTPS".encode() in wire
    inner, status = await asyncio.to_thread(open_as_recipient, council_gateway, keys, wire)
    assert f"[GNUPG:] VALIDSIG {council_gateway.signing_key}" in status
    files = {str(part.get_filename()): part.get_content() for part in inner.iter_attachments()}
    homes = next(content for name, content in files.items() if name.endswith("-homes.csv"))
    with (tmp_path / "register" / "homes.csv").open(newline="") as handle:
        register = csv.DictReader(handle)
        shropshire = {r["urn"] for r in register if r["local_authority"] == "Shropshire" and r["status"] != "closed"}
    assert shropshire
    assert all(urn in homes for urn in shropshire)
    assert "TLS connection established from" in postfix_log
