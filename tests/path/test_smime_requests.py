"""S/MIME requests end to end: an address pinned to a certificate (`authority set-cert`) is authenticated by an
S/MIME signature of that certificate through `gateway process`, signed or signed then encrypted to the gateway's
own certificate ([smime]), recorded as such, and the signature's time and identity get the same age and replay
rules as a PGP/MIME one.

The police here have no OpenPGP key: their address takes S/MIME alone. Until replies are sealed in S/MIME an
answer to it fails closed; these tests judge the recorded authentication, not the reply.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import re
from pathlib import Path

import pytest
from sqlalchemy import select

from gateway import pipeline
from gateway.cli.opening import context
from gateway.config import load_config
from gateway.db.engine import create_database
from gateway.db.models import SeenSignature
from gateway.dev.sample import write_sample
from gateway.values import Outcome
from tests.support.addresses import POLICE_ADDRESS
from tests.support.gateway_cli import Gateway
from tests.support.keys import AuthorityKeys
from tests.support.live import audit_actions, checks_timed, details, process
from tests.support.requests import BORDER, signed_message
from tests.support.smime import SmimeCerts, as_sent, smime_encrypted, smime_signed

AT = dt.datetime(2027, 2, 10, 9, 0, tzinfo=dt.UTC)
# The police take the default policy, signed-or-dmarc: when the signature fails, so does DMARC, for want of it.
NO_DMARC = "; no Authentication-Results header from the border"


@pytest.fixture
def smime_live(gateway: Gateway, smime_certs: SmimeCerts, tmp_path: Path) -> Gateway:
    """A register, and West Mercia Police registered without an OpenPGP key, the police certificate pinned for
    its address; our border trusted; the gateway's own S/MIME identity in [smime], to decrypt with."""
    gateway.authserv_id = BORDER
    gateway.write_config(f'\n[smime]\ncertificate = "{smime_certs.gateway.cert}"\nkey = "{smime_certs.gateway.key}"\n')
    sample = write_sample(tmp_path / "register", 800, seed=5)
    gateway.ok("register", "import", "--homes", str(sample.homes_path), "--enforcement", str(sample.enforcement_path))
    gateway.ok(
        "authority", "add", "--name", "West Mercia Police", "--kind", "police", "--area", "West Mercia",
        "--email", POLICE_ADDRESS,
    )  # fmt: skip
    gateway.ok(
        "authority", "set-cert", "West Mercia Police", "--email", POLICE_ADDRESS, "--cert", str(smime_certs.police.cert)
    )
    return gateway


def recorded(gateway: Gateway, inbound_id: object) -> dict[str, object]:
    """The audit record of one inbound message's outcome."""
    [record] = [r for r in audit_actions(gateway, "inbound.") if details(r)["inbound_id"] == inbound_id]
    return details(record)


def with_message_id(raw: bytes, message_id: str) -> bytes:
    """The same bytes, the Message-ID changed: what someone copying the mail off the wire can do."""
    return re.sub(rb"Message-ID: [^\r\n]*\r\n", f"Message-ID: {message_id}\r\n".encode(), raw, count=1)


def test_an_smime_signed_request_is_authenticated_by_the_pinned_certificate(
    smime_live: Gateway, smime_certs: SmimeCerts
) -> None:
    raw = as_sent(smime_signed(smime_certs.police, AT), "first", AT)
    outcome = process(smime_live, raw, as_of=AT + dt.timedelta(minutes=3))
    reason = str(outcome["reason"])
    assert not reason.startswith("authentication failed"), reason
    record = recorded(smime_live, outcome["inbound_id"])
    assert (record["sender"], record["authority"], record["authenticated"]) == (
        POLICE_ADDRESS, "West Mercia Police", "smime"
    )  # fmt: skip
    # Answered once replies go out in S/MIME; until then the answer fails closed, nothing sent in the clear.
    assert outcome["kind"] == "answered" or reason.startswith("no data sent:"), outcome


def test_an_smime_signature_check_is_timed_as_openssls_never_as_gpgs(
    smime_live: Gateway, smime_certs: SmimeCerts
) -> None:
    """What operators read of each tool: openssl's time checking an S/MIME request goes to
    gateway_openssl_seconds, as its sealing of a reply does, and none of it to gateway_gpg_seconds. The
    message goes through the path in this process, where the histograms are."""
    raw = as_sent(smime_signed(smime_certs.police, AT), "timed", AT)

    async def processed() -> Outcome:
        async with context(load_config(smime_live.config_path)) as opened:
            ctx = dataclasses.replace(opened, clock=lambda: AT + dt.timedelta(minutes=3))
            return await pipeline.process(ctx, raw, "test")

    openssl_before, gpg_before = checks_timed()
    outcome = asyncio.run(processed())
    assert recorded(smime_live, outcome.inbound_id)["authenticated"] == "smime"
    openssl_after, gpg_after = checks_timed()
    assert (openssl_after - openssl_before, gpg_after - gpg_before) == (1.0, 0.0)


def test_the_same_signature_under_a_new_message_id_is_a_replay(smime_live: Gateway, smime_certs: SmimeCerts) -> None:
    original = as_sent(smime_signed(smime_certs.police, AT, "-nodetach"), "original", AT)
    first = process(smime_live, original, as_of=AT)
    assert recorded(smime_live, first["inbound_id"])["authenticated"] == "smime"
    copy = with_message_id(original, "<copy@westmercia.police.example>")
    assert copy != original
    again = process(smime_live, copy, "copy.eml", as_of=AT + dt.timedelta(hours=2))
    assert again["kind"] == "quarantined"
    assert again["reason"] == (
        f"its signature was already used by message {first['inbound_id']}: a replay of what was signed, not acted on "
        "again"
    )


def test_a_signature_made_long_before_the_request_arrived_is_refused(
    smime_live: Gateway, smime_certs: SmimeCerts
) -> None:
    made = AT - dt.timedelta(days=8)
    raw = as_sent(smime_signed(smime_certs.police, made), "old", AT)
    outcome = process(smime_live, raw, as_of=AT)
    assert outcome["kind"] == "quarantined"
    assert outcome["reason"] == (
        "the signature was made on 2027-02-02 09:00 UTC, more than 7 days before the message arrived: a replay"
    )
    future = as_sent(smime_signed(smime_certs.police, AT + dt.timedelta(days=1)), "future", AT)
    outcome = process(smime_live, future, "future.eml", as_of=AT)
    assert outcome["reason"] == "the signature is dated 2027-02-11 09:00 UTC, in the future"


def test_only_the_pinned_certificate_authenticates_the_address(
    smime_live: Gateway, smime_certs: SmimeCerts, keys: AuthorityKeys
) -> None:
    impostor = as_sent(smime_signed(smime_certs.impostor, AT), "impostor", AT)
    outcome = process(smime_live, impostor, as_of=AT)
    assert outcome["kind"] == "quarantined"
    assert str(outcome["reason"]).startswith(
        "authentication failed: the S/MIME signature is refused: the signature is not good, or not by the pinned"
    )
    pgp = signed_message(keys, keys.police.fingerprint).replace(b"Subject:", b"Message-ID: <pgp@x.example>\r\nSubject:")
    outcome = process(smime_live, pgp, "pgp.eml", as_of=AT)
    assert outcome["kind"] == "quarantined"
    assert str(outcome["reason"]).startswith(
        f"authentication failed: the message is OpenPGP, but {POLICE_ADDRESS} is registered for S/MIME"
    )
    assert recorded(smime_live, outcome["inbound_id"])["authenticated"] is None


def test_after_the_certificate_is_removed_nothing_authenticates_the_address(
    smime_live: Gateway, smime_certs: SmimeCerts
) -> None:
    smime_live.ok("authority", "remove-cert", "West Mercia Police", "--email", POLICE_ADDRESS)
    outcome = process(smime_live, as_sent(smime_signed(smime_certs.police, AT), "removed", AT), as_of=AT)
    assert outcome["kind"] == "quarantined"
    assert outcome["reason"] == f"authentication failed: no certificate is pinned for {POLICE_ADDRESS}{NO_DMARC}"


# ---------------------------------------------------------------- encrypted to the gateway's certificate


def seen_signatures(gateway: Gateway, inbound_id: object) -> list[str]:
    """The replay keys recorded for one inbound message."""

    async def read() -> list[str]:
        db = create_database(load_config(gateway.config_path).database)
        try:
            async with db.transaction(write=False) as session:
                query = select(SeenSignature.signature_id).where(SeenSignature.inbound_id == inbound_id)
                return sorted((await session.execute(query)).scalars())
        finally:
            await db.close()

    return asyncio.run(read())


def test_a_request_signed_then_encrypted_to_the_gateway_is_authenticated_and_its_signature_kept(
    smime_live: Gateway, smime_certs: SmimeCerts
) -> None:
    signed = smime_signed(smime_certs.police, AT, sender=None)
    raw = as_sent(smime_encrypted(signed, smime_certs.gateway), "sealed", AT)
    outcome = process(smime_live, raw, as_of=AT)
    assert not str(outcome["reason"]).startswith("authentication failed"), outcome
    assert recorded(smime_live, outcome["inbound_id"])["authenticated"] == "smime"
    assert [key.split(":")[0] for key in seen_signatures(smime_live, outcome["inbound_id"])] == ["id", "signed"]
    # The same signed entity encrypted again (other bytes, another Message-ID): still the same signature.
    again = as_sent(smime_encrypted(signed, smime_certs.gateway, "-aes128"), "sealed-again", AT)
    replayed = process(smime_live, again, "again.eml", as_of=AT + dt.timedelta(minutes=5))
    assert replayed["kind"] == "quarantined"
    assert str(replayed["reason"]).startswith(f"its signature was already used by message {outcome['inbound_id']}")


def test_a_request_encrypted_with_3des_is_refused_with_the_reason(smime_live: Gateway, smime_certs: SmimeCerts) -> None:
    signed = smime_signed(smime_certs.police, AT, sender=None)
    raw = as_sent(smime_encrypted(signed, smime_certs.gateway, "-des3"), "3des", AT)
    outcome = process(smime_live, raw, as_of=AT)
    assert outcome["kind"] == "quarantined"
    assert outcome["reason"] == (
        "authentication failed: the message is encrypted with 3DES (DES-EDE3-CBC), which the gateway does not "
        f"accept: encrypt with AES (128, 192 or 256 bits, CBC or GCM){NO_DMARC}"
    )
    assert seen_signatures(smime_live, outcome["inbound_id"]) == []
