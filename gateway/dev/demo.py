"""A throwaway gateway: set up through the real commands, then sample requests through the real mail path."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import shlex
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

import aiosmtplib
from aiosmtpd.smtp import SMTP, Envelope, Session

from gateway.authenticate import SignedParts, split_signed
from gateway.bounded import run_bounded
from gateway.compose import Templates
from gateway.config import InboundSmtpSettings, SmtpSettings, load_config
from gateway.crypto import Keyring, kill_agent
from gateway.db.engine import create_database
from gateway.errors import Field, FieldError, GatewayError
from gateway.gpgrun import in_thread
from gateway.inbound.smtp import drain_spool, start_listener
from gateway.outbox import deliver_due, smtp_transport
from gateway.pipeline import process
from gateway.smime.certs import make_self_signed_at
from gateway.smime.identity import load_identity
from gateway.values import Context, Outcome

MARKER = ".gateway-demo"
GATEWAY_ADDRESS = "register-requests@hmci.example"
ADMIN_ADDRESS = "gateway-admin@hmci.example"
BORDER = "mx.hmci.example"
DEMO_HOMES = 500
DIRECTORY = Field("directory")  # where the demo's files go, as a refusal names it


@dataclass(frozen=True)
class DemoAuthority:
    name: str
    kind: str
    area: str | None
    address: str
    key_file: str  # its OpenPGP public key; for an S/MIME authority, its certificate
    smime: bool = False  # no OpenPGP key: its address takes S/MIME, as Outlook sends and reads it


POLICE = DemoAuthority(
    "West Mercia Police", "police", "West Mercia", "disclosures@westmercia.police.example", "wmp.asc"
)
COUNCIL = DemoAuthority(
    "Shropshire Council", "local-authority", "Shropshire", "dcs.secure@shropshire.gov.example", "shropshire.asc"
)
OCC = DemoAuthority(
    "Office of the Children's Commissioner", "childrens-commissioner", None, "register@occ.example", "occ.asc"
)
STAFFS = DemoAuthority(
    "Staffordshire Police", "police", "Staffordshire", "public.protection@staffordshire.police.example",
    "staffordshire-cert.pem", smime=True,
)  # fmt: skip
AUTHORITIES = (POLICE, COUNCIL, OCC, STAFFS)

CONFIG = f"""\
# Written by `gateway demo`: a throwaway gateway. config/gateway.example.toml explains every setting.
[gateway]
address = "{GATEWAY_ADDRESS}"
admin_address = "{ADMIN_ADDRESS}"
authserv_id = "{BORDER}"

[database]
url = "sqlite:///gateway.db"

[smime]
certificate = "smime-cert.pem"
key = "smime-key.pem"

[gpg]
home = "gnupg"
"""


def _prepare(directory: Path) -> None:
    if directory.exists():
        # Only ever wipe a directory this command made, never one a user pointed at by mistake.
        if not (directory / MARKER).exists():
            raise FieldError(f"{directory} exists and was not made by `gateway demo`: choose another ", DIRECTORY)
        _kill_agents(directory)
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    (directory / MARKER).write_text("made by `gateway demo`; deleted and remade by the next run\n")


ADMIN_HOMES = ("admin-alice", "admin-bob")  # each admin's own GnuPG home, as on their own machine


def _kill_agents(directory: Path) -> None:
    """The gpg-agents of every GnuPG home the demo makes: the gateway's, the authorities', the admins'."""
    for home in ("gnupg", "authority-keys", *ADMIN_HOMES):
        kill_agent(directory / home)


def _admin_keys(directory: Path) -> list[str]:
    """Each admin makes a key of their own; the gateway registers the public half."""
    fingerprints = []
    for home_name in ADMIN_HOMES:
        home = directory / home_name
        Keyring.create_home(home)
        keyring = Keyring(home)
        who = home_name.removeprefix("admin-")
        fingerprint = keyring.generate(f"Demo admin {who.title()}", f"{who}@hmci.example", "1y")
        (directory / f"{home_name}.asc").write_text(keyring.export_public(fingerprint))
        fingerprints.append(fingerprint)
    return fingerprints


def _authority_keys(directory: Path) -> dict[str, str]:
    """Each authority makes its own key pair; the gateway only ever sees the public half."""
    home = directory / "authority-keys"
    Keyring.create_home(home)
    keyring = Keyring(home)
    fingerprints = {}
    for authority in AUTHORITIES:
        if authority.smime:  # its certificate, as a CA would issue it (self-signed here), and its private key
            make_self_signed_at(
                authority.address, directory / authority.key_file, home / "staffordshire-key.pem",
                common_name=authority.name,
            )  # fmt: skip
            continue
        fingerprint = keyring.generate(authority.name, authority.address, "1y")
        (directory / authority.key_file).write_text(keyring.export_public(fingerprint))
        fingerprints[authority.address] = fingerprint
    return fingerprints


# ---------------------------------------------------------------- sample mail, as authorities' clients write it


def _plain(sender: str, body: str, extra_headers: str = "") -> bytes:
    domain = sender.rpartition("@")[2]
    head = (
        f"{extra_headers}From: {sender}\r\nTo: {GATEWAY_ADDRESS}\r\nSubject: Request\r\n"
        f"Message-ID: {make_msgid(domain=domain)}\r\nMIME-Version: 1.0\r\n"
    )
    return f'{head}Content-Type: text/plain; charset="utf-8"\r\n\r\n{body}'.encode()


def _signed(keys: Keyring, fingerprint: str, sender: str, body: str) -> bytes:
    """RFC 3156 multipart/signed: the first part is signed exactly as it is sent."""
    part = f'Content-Type: text/plain; charset="utf-8"\r\nContent-Transfer-Encoding: 7bit\r\n\r\n{body}'.encode()
    signature = keys.sign_detached(part, fingerprint).decode("ascii")
    boundary = "demo-signed-boundary"
    head = (
        f"From: {sender}\r\nTo: {GATEWAY_ADDRESS}\r\nSubject: Request\r\n"
        f"Message-ID: {make_msgid(domain=sender.rpartition('@')[2])}\r\nMIME-Version: 1.0\r\n"
        f'Content-Type: multipart/signed; micalg=pgp-sha256; protocol="application/pgp-signature"; '
        f'boundary="{boundary}"\r\n\r\n'
    )
    return (
        head.encode() + f"--{boundary}\r\n".encode() + part + f"\r\n--{boundary}\r\n".encode()
        + b'Content-Type: application/pgp-signature; name="signature.asc"\r\n\r\n'
        + signature.encode() + f"\r\n--{boundary}--\r\n".encode()
    )  # fmt: skip


def _openssl(*args: str, data: bytes) -> bytes:
    """openssl as an authority's mail client runs it; GatewayError with its last words when it fails."""
    done = run_bounded(["openssl", *args], data, max_output=64 * 1024 * 1024, timeout=60, what="output", tool="openssl")
    if done.returncode != 0:
        raise GatewayError(f"openssl {args[0]} {args[1]} failed: {done.status.strip().splitlines()[-1:]}")
    return done.output


def _smime_signed(directory: Path, authority: DemoAuthority, body: str) -> bytes:
    """Signed as Outlook signs (RFC 8551 multipart/signed, SHA-256, the signer's certificate carried), by
    OpenSSL with the authority's own certificate and key."""
    content = f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}".encode()
    cert, key = directory / authority.key_file, directory / "authority-keys" / "staffordshire-key.pem"
    signed = _openssl(
        "cms", "-sign", "-binary", "-md", "sha256", "-signer", str(cert), "-inkey", str(key), data=content
    )
    head = (
        f"From: {authority.address}\r\nTo: {GATEWAY_ADDRESS}\r\nSubject: Request\r\n"
        f"Message-ID: {make_msgid(domain=authority.address.rpartition('@')[2])}\r\n"
    )
    return head.encode() + signed.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


@dataclass(frozen=True)
class Sample:
    title: str
    sender: str
    raw: bytes


def _samples(directory: Path, keys: Keyring, fingerprints: dict[str, str]) -> list[Sample]:
    purpose = "Purpose: Safeguarding children accommodated in children's homes in our area.\r\n"
    border = f"Authentication-Results: {BORDER}; spf=pass; dkim=pass; dmarc=pass header.from=shropshire.gov.example\r\n"
    return [
        Sample(
            "West Mercia Police asks for its area, signing with its key (PGP/MIME)",
            POLICE.address,
            _signed(keys, fingerprints[POLICE.address], POLICE.address, "Request: disclosure\r\n" + purpose),
        ),
        Sample(
            "Shropshire Council asks, authenticated by the border's DMARC pass",
            COUNCIL.address,
            _plain(
                COUNCIL.address, "Request: disclosure\r\n" + purpose + "\r\nDirector of Children's Services\r\n", border
            ),
        ),
        Sample(
            "West Mercia Police asks for Kent, outside its area, and forgets the purpose",
            POLICE.address,
            _signed(keys, fingerprints[POLICE.address], POLICE.address, "Request: disclosure\r\nArea: Kent\r\n"),
        ),
        Sample(
            "Staffordshire Police asks from Outlook, signing with its S/MIME certificate",
            STAFFS.address,
            _smime_signed(directory, STAFFS, "Request: disclosure\r\n" + purpose),
        ),
        Sample(
            "Someone unregistered asks",
            "curious@example.org",
            _plain("curious@example.org", "Request: disclosure\r\n" + purpose),
        ),
        Sample(
            "An impostor writes from the police address with no signature",
            POLICE.address,
            _plain(POLICE.address, "Request: disclosure\r\n" + purpose),
        ),
    ]


# ---------------------------------------------------------------- the relay: what each party receives


@dataclass
class Relay:
    received: list[Envelope] = field(default_factory=list)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.received.append(envelope)
        return "250 2.0.0 Delivered"


def _show_received(envelope: Envelope, keys: Keyring, gateway_key: str) -> None:
    raw = envelope.original_content if isinstance(envelope.original_content, bytes) else b""
    outer = message_from_bytes(raw, policy=policy.default)
    recipient = ", ".join(envelope.rcpt_tos)
    print(f"   {recipient} received: {outer['Subject']}")
    if outer.get_content_type() == "application/pkcs7-mime":
        _show_smime(raw, keys.home.parent)
        return
    if not isinstance(outer, EmailMessage) or outer.get_content_type() != "multipart/encrypted":
        body = outer.get_body(preferencelist=("plain",)) if isinstance(outer, EmailMessage) else None
        text = body.get_content() if body is not None else ""
        reason = next((line for line in text.splitlines() if line.startswith("Reason:")), "")
        parts = split_signed(outer, raw) if isinstance(outer, EmailMessage) else None
        signed = "unsigned"
        if isinstance(parts, SignedParts):
            status = keys.verify_detached(parts.signed_bytes, parts.signature)
            signed = "signed by the gateway's key: " + (
                "good" if status.good and status.primary_fingerprint == gateway_key else "NOT GOOD"
            )
        print(f"     an alert with no register data, not encrypted, {signed}; {reason}")
        return
    payload = list(outer.iter_parts())[1].get_payload(decode=True)
    opened = keys.decrypt(payload if isinstance(payload, bytes) else b"")
    verdict = "good" if opened.signature.good and opened.signature.primary_fingerprint == gateway_key else "NOT GOOD"
    inner = message_from_bytes(opened.data, policy=policy.default)
    print(f"     encrypted to its key; decrypted with it; signature by the gateway's key: {verdict}")
    print(f"     protected subject: {inner['Subject']}")
    assert isinstance(inner, EmailMessage)  # noqa: S101 - what the parser returns with policy.default
    for attachment in inner.iter_attachments():
        lines = list(csv.reader(io.StringIO(attachment.get_content())))
        print(f"     attachment {attachment.get_filename()}: {len(lines) - 2} rows (line 1: {lines[0][0]})")
    if not list(inner.iter_attachments()):
        body = inner.get_body(preferencelist=("plain",))
        text = body.get_content() if body is not None else ""
        for line in text.splitlines():
            if line.startswith("  - "):
                print(f"     says what to fix: {line[4:]}")


def _show_smime(raw: bytes, directory: Path) -> None:
    """Opened as Outlook would, with OpenSSL: decrypted with the authority's key, the signature verified against
    the gateway's certificate (which the authority imported from `gateway key export --smime`)."""
    cert, key = directory / STAFFS.key_file, directory / "authority-keys" / "staffordshire-key.pem"
    signed = _openssl("cms", "-decrypt", "-recip", str(cert), "-inkey", str(key), data=raw)
    try:
        opened = _openssl(
            "cms", "-verify", "-CAfile", str(directory / "smime-cert.pem"), "-purpose", "smimesign", data=signed
        )
        verdict = "good"
    except GatewayError:
        opened, verdict = b"", "NOT GOOD"
    print(f"     opened with OpenSSL: decrypted with its key; signature by the gateway's certificate: {verdict}")
    inner = message_from_bytes(opened, policy=policy.default)
    print(f"     protected subject: {inner['Subject']}")
    assert isinstance(inner, EmailMessage)  # noqa: S101 - what the parser returns with policy.default
    for attachment in inner.iter_attachments():
        lines = list(csv.reader(io.StringIO(attachment.get_content())))
        print(f"     attachment {attachment.get_filename()}: {len(lines) - 2} rows (line 1: {lines[0][0]})")


async def _mail_path(directory: Path, config_path: Path, fingerprints: dict[str, str]) -> None:
    relay = Relay()
    loop = asyncio.get_running_loop()
    relay_server = await loop.create_server(lambda: SMTP(relay), "127.0.0.1", 0)
    config = load_config(config_path)
    db = create_database(config.database)
    listener = await start_listener(
        InboundSmtpSettings("127.0.0.1", 0, 10 * 1024 * 1024), db, GATEWAY_ADDRESS, asyncio.Event()
    )
    keys = Keyring(directory / "authority-keys")
    # Authorities import the gateway's public key (`gateway key export`) so their clients can check its signature.
    gateway_public = await in_thread(Keyring(config.gpg.home).export_public, config.gpg.signing_key or "")
    await in_thread(keys.import_public, gateway_public.encode())
    try:
        ctx = Context(
            config, db, Keyring(config.gpg.home), Templates(config.gateway.templates), smime=load_identity(config)
        )
        listener_port = listener.sockets[0].getsockname()[1]
        relay_port = relay_server.sockets[0].getsockname()[1]
        print(f"\n== The mail path: sample requests to the gateway's SMTP listener (127.0.0.1:{listener_port}),")
        print(f"   replies through a relay on 127.0.0.1:{relay_port}, opened with each authority's own key")
        outcomes: list[Outcome] = []

        async def handle(raw: bytes) -> int:
            outcomes.append(await process(ctx, raw, source="smtp"))
            return outcomes[-1].inbound_id

        gateway_key = config.gpg.signing_key or ""
        transport = smtp_transport(SmtpSettings("127.0.0.1", relay_port, None, None, "none"))
        for number, sample in enumerate(await in_thread(_samples, directory, keys, fingerprints), start=1):
            print(f"\n{number}. {sample.title}")
            await aiosmtplib.send(
                sample.raw, sender=sample.sender, recipients=[GATEWAY_ADDRESS], hostname="127.0.0.1", port=listener_port
            )
            await drain_spool(db, handle)
            outcome = outcomes[-1]
            reference = f" (reference {outcome.reference})" if outcome.reference else ""
            print(f"   outcome: {outcome.kind}: {outcome.reason}{reference}")
            before = len(relay.received)
            await deliver_due(db, transport, admin_address=ADMIN_ADDRESS, now=dt.datetime.now(dt.UTC))
            if len(relay.received) == before:
                print("   nobody receives anything")
            for envelope in relay.received[before:]:
                await in_thread(_show_received, envelope, keys, gateway_key)
    finally:
        listener.close()
        relay_server.close()
        await db.close()
        kill_agent(directory / "authority-keys")


async def run_demo(directory: Path, cli: Callable[[Sequence[str]], int]) -> int:
    directory = directory.resolve()
    _prepare(directory)
    config = directory / "gateway.toml"
    config.write_text(CONFIG)
    shown = {str(directory): "demo"}

    async def step(*argv: str) -> None:
        line = " ".join(shlex.quote(shown.get(a, a.replace(str(directory), "demo"))) for a in argv)
        print(f"\n$ gateway {line}", flush=True)
        code = await asyncio.to_thread(cli, ["--config", str(config), *argv])
        if code != 0:
            raise GatewayError(f"demo step `gateway {line}` failed with exit code {code}")

    try:
        await step("init", "--smime", "--actor", "demo-admin")
        keyring = Keyring(directory / "gnupg")
        fingerprint = (await in_thread(keyring.secret_fingerprints))[0]
        config.write_text(CONFIG + f'signing_key = "{fingerprint}"\n')
        print(f"\n(the demo put signing_key = {fingerprint} into {config})")
        await step("register", "sample", "--homes", str(DEMO_HOMES), "--out", str(directory / "register"))
        await step(
            "register", "import", "--actor", "demo-admin",
            "--homes", str(directory / "register/homes.csv"),
            "--enforcement", str(directory / "register/enforcement.csv"),
        )  # fmt: skip
        fingerprints = await asyncio.to_thread(_authority_keys, directory)
        # Admins are keys: the host's administrator registers the first two (and would confirm their
        # fingerprints with them out of band); every change is signed by one and approved by the other.
        alice, bob = await asyncio.to_thread(_admin_keys, directory)
        for home_name, name in zip(ADMIN_HOMES, ("Alice", "Bob"), strict=True):
            await step("admin", "add", "--key", str(directory / f"{home_name}.asc"), "--name", name)
        proposing = ["--gpg-home", str(directory / ADMIN_HOMES[0]), "--local-user", alice]
        approving = ["--gpg-home", str(directory / ADMIN_HOMES[1]), "--local-user", bob]
        for a in AUTHORITIES:
            area = ["--area", a.area] if a.area else []
            key = [] if a.smime else ["--key", str(directory / a.key_file)]
            await step(
                "authority", "add", "--name", a.name, "--kind", a.kind, *area, "--email", a.address, *key, *proposing
            )
        await step("change", "list")
        for number in range(1, len(AUTHORITIES) + 1):
            await step("change", "approve", str(number), *approving)
        for number, a in enumerate((a for a in AUTHORITIES if a.smime), start=len(AUTHORITIES) + 1):
            # Its certificate, pinned for its address: a change of its own, whose statement shows the fingerprint
            # the admins confirm with the authority out of band.
            cert = str(directory / a.key_file)
            await step("authority", "set-cert", a.name, "--email", a.address, "--cert", cert, *proposing)
            await step("change", "approve", str(number), *approving)
        await step("authority", "list")
        await _mail_path(directory, config, fingerprints)
        await step("outbox", "list")
        await step("audit", "verify")
    finally:
        _kill_agents(directory)
    print(f"\nThe demo gateway lives in {directory}. Try:")
    print(f"  gateway --config {config} audit list")
    return 0
