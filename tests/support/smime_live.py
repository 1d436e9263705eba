"""The `smime_live` gateway: `live` with an S/MIME identity of its own ([smime]: the session's gateway certificate),
West Mercia Police's address pinned to an RSA certificate and Shropshire Council's to an EC one (through
`authority set-cert`), driven through `gateway process` and `gateway schedule run` at fixed moments; and a reply
opened as its recipient opens it, with openssl."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import Executable

from gateway.config import load_config
from gateway.db.engine import create_database
from tests.support.addresses import LA_ADDRESS, POLICE_ADDRESS
from tests.support.gateway_cli import Gateway
from tests.support.live import process as process_file
from tests.support.requests import BORDER
from tests.support.schedule import run as schedule_run
from tests.support.smime import Identity, SmimeCerts, openssl

COUNCIL = "Shropshire Council"
POLICE = "West Mercia Police"
_MESSAGES = itertools.count()


def smime_settings(gateway: Gateway, certs: SmimeCerts, extra: str = "") -> None:
    """The gateway's settings with its S/MIME identity ([smime]) and `extra` sections after."""
    gateway.write_config(f'\n[smime]\ncertificate = "{certs.gateway.cert}"\nkey = "{certs.gateway.key}"\n{extra}')


@pytest.fixture
def smime_live(live: Gateway, smime_certs: SmimeCerts) -> Gateway:
    """`live`, with an S/MIME identity; the police address takes S/MIME (RSA 2048), and Shropshire Council, with
    no OpenPGP key at all, takes S/MIME at its address (EC P-256). Both trusted through the border's DMARC pass."""
    smime_settings(live, smime_certs)
    live.ok("authority", "set-cert", POLICE, "--email", POLICE_ADDRESS, "--cert", str(smime_certs.police.cert))
    live.ok(
        "authority", "add", "--name", COUNCIL, "--kind", "local-authority", "--area", "Shropshire",
        "--email", LA_ADDRESS,
    )  # fmt: skip
    live.ok("authority", "set-cert", COUNCIL, "--email", LA_ADDRESS, "--cert", str(smime_certs.la.cert))
    return live


# Who reads mail at each registered address of `smime_live`: the certificate and key their client holds.
def recipient_of(certs: SmimeCerts, address: str) -> Identity:
    return {POLICE_ADDRESS: certs.police, LA_ADDRESS: certs.la}[address]


def process(gateway: Gateway, raw: bytes, at: dt.datetime) -> dict[str, object]:
    """`gateway process --as-of AT --json`: the gateway reads its identity from [smime] as it always does."""
    return process_file(gateway, raw, f"message-{next(_MESSAGES)}.eml", at)


def run_schedule(gateway: Gateway, as_of: dt.datetime) -> dict[str, int]:
    """`gateway schedule run --as-of AS_OF`: what was done, by kind."""
    return schedule_run(gateway, as_of)


def change_database(gateway: Gateway, statement: Executable) -> None:
    """A statement (an UPDATE) committed as another admin's command would commit it, from elsewhere."""

    async def run() -> None:
        db = create_database(load_config(gateway.config_path).database)
        try:
            async with db.transaction() as session:
                await session.execute(statement)
        finally:
            await db.close()

    asyncio.run(run())


def asks(gateway: Gateway, address: str, body: str, name: str, at: dt.datetime) -> dict[str, object]:
    """A request from `address`, authenticated by the border's DMARC pass, processed at `at`."""
    domain = address.rpartition("@")[2]
    raw = (
        f"Authentication-Results: {BORDER}; dmarc=pass header.from={domain}\r\n"
        f"From: <{address}>\r\nTo: register-requests@hmci.example\r\nSubject: request\r\n"
        f"Message-ID: <{name}@{domain}>\r\n\r\n{body}"
    ).encode()
    return process(gateway, raw, at)


def impostor(gateway: Gateway, address: str, name: str, at: dt.datetime) -> dict[str, object]:
    """A request from `address` that nothing authenticates: no signature, no DMARC pass."""
    domain = address.rpartition("@")[2]
    raw = (
        f"From: <{address}>\r\nTo: register-requests@hmci.example\r\nSubject: request\r\n"
        f"Message-ID: <{name}@{domain}>\r\n\r\nRequest: disclosure\r\nPurpose: Safeguarding children\r\n"
    ).encode()
    return process(gateway, raw, at)


_OPENED = itertools.count()


def opened_by_openssl(wire: bytes, recipient: Identity, gateway_cert: Path, directory: Path) -> bytes:
    """The reply as its recipient's client opens it: decrypted by `openssl cms -decrypt` with the recipient's own
    certificate and key, then its signature verified by `openssl cms -verify` with the gateway's certificate as
    the only trust anchor (-CAfile), as an authority that imported it; the signer openssl names (-signer) must be
    that very certificate. Returns the signed content: the inner message's bytes as the gateway signed them."""
    run = next(_OPENED)
    mail, signed, signer = (directory / f"{run}-{name}" for name in ("reply.eml", "signed.eml", "signer.pem"))
    mail.write_bytes(wire)
    signed.write_bytes(
        openssl("cms", "-decrypt", "-recip", str(recipient.cert), "-inkey", str(recipient.key), "-in", str(mail))
    )
    content = openssl("cms", "-verify", "-CAfile", str(gateway_cert), "-signer", str(signer), "-in", str(signed))
    assert _der(signer) == _der(gateway_cert), "the reply is signed by a certificate other than the gateway's"
    return content


def _der(pem: Path) -> bytes:
    return openssl("x509", "-in", str(pem), "-outform", "DER")


def outer(wire: bytes) -> EmailMessage:
    """The message as it goes on the wire, parsed as a client does: an S/MIME enveloped-data message."""
    message = message_from_bytes(wire, policy=policy.default)
    assert isinstance(message, EmailMessage)
    assert [part.defects for part in message.walk()] == [[]]
    assert message.get_content_type() == "application/pkcs7-mime"
    assert message.get_param("smime-type") == "enveloped-data"
    return message
