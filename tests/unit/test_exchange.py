"""PGP/MIME as Microsoft Exchange rewrites it: the exact mangled shape is repaired, nothing else is.

Exchange turns an RFC 3156 multipart/encrypted message into multipart/mixed: an empty text/plain part (not
always), then the application/pgp-encrypted control part and the application/octet-stream data part, both
re-encoded in base64. The requests here are real: encrypted with gpg to the gateway's key and signed by the
police key, as a PGP/MIME client sends them, then rewritten the way Exchange does.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.authenticate import Authenticated, PinnedKey, Refused, authenticate
from gateway.crypto import Keyring
from gateway.dev.sample import write_sample
from gateway.requests import body_text, parse_request
from tests.support.addresses import POLICE_ADDRESS
from tests.support.gateway_cli import Gateway
from tests.support.keys import AuthorityKeys, gateway_keyring, run_gpg
from tests.support.requests import FROM_POLICE, REQUEST, signed_message
from tests.support.wire import parse

HEADERS = FROM_POLICE + "Message-ID: <exchange1@westmercia.police.example>\nMIME-Version: 1.0\n"
INNER = f'Content-Type: text/plain; charset="utf-8"\r\n\r\n{REQUEST}'.encode()
REWRITTEN = "the message looks like PGP/MIME rewritten by Microsoft Exchange, but"


@dataclass(frozen=True)
class GatewayRing:
    ring: Keyring
    fingerprint: str


@pytest.fixture(scope="module")
def gateway_ring(tmp_path_factory: pytest.TempPathFactory, keys: AuthorityKeys) -> Iterator[GatewayRing]:
    """The gateway's keyring: its own key, and the police and council keys pinned, as `authority add` leaves it."""
    home = tmp_path_factory.mktemp("exchange-gnupg")
    with gateway_keyring(home, keys, "HMCI register gateway", keys.police, keys.la) as made:
        yield GatewayRing(*made)


def authority_gpg(keys: AuthorityKeys, *args: str, data: bytes) -> bytes:
    """gpg in the authorities' home, as their mail client runs it."""
    return run_gpg(keys.home, *args, data=data)


def encrypt(keys: AuthorityKeys, recipient: str, inner: bytes = INNER, signer: str | None = None) -> bytes:
    """The armoured OpenPGP message a client puts in the application/octet-stream part."""
    signing = ["--sign", "--local-user", signer] if signer else []
    return authority_gpg(
        keys, "--armor", "--trust-model", "always", "--encrypt", "--recipient", recipient, *signing, data=inner
    )


# ---------------------------------------------------------------- building messages


def crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def part(content_type: str, body: bytes, *extra: str, encoding: str = "base64") -> str:
    """One MIME part as Exchange writes it: base64 in 76-character lines (or 7bit, as the sender wrote it)."""
    text = base64.encodebytes(body).decode().replace("\n", "\r\n") if encoding == "base64" else body.decode()
    head = "".join(f"{line}\r\n" for line in (f"Content-Type: {content_type}", *extra))
    return f"{head}Content-Transfer-Encoding: {encoding}\r\n\r\n{text}"


def empty_text() -> str:
    return 'Content-Type: text/plain; charset="us-ascii"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n'


def control(body: bytes = b"Version: 1\r\n", encoding: str = "base64") -> str:
    return part(
        "application/pgp-encrypted",
        body,
        "Content-Description: PGP/MIME Versions Identification",
        'Content-Disposition: attachment; filename="PGPMIME Versions Identification"',
        encoding=encoding,
    )


def data(armour: bytes, encoding: str = "base64") -> str:
    return part(
        'application/octet-stream; name="encrypted.asc"',
        armour,
        "Content-Description: OpenPGP encrypted message",
        'Content-Disposition: attachment; filename="encrypted.asc"',
        encoding=encoding,
    )


def multipart(
    content_type: str, *parts: str, headers: str = HEADERS, boundary: str = "_002_DB9PR07MB7XXXEURPRD07PRODOUTLOOKCOM_"
) -> bytes:
    body = "".join(f"--{boundary}\r\n{p}\r\n" for p in parts)
    head = headers.replace("\n", "\r\n") + f'Content-Type: {content_type}; boundary="{boundary}"\r\n'
    return f"{head}X-MS-Has-Attach: yes\r\n\r\n{body}--{boundary}--\r\n".encode()


def mangled(armour: bytes, *, with_text: bool = True) -> bytes:
    """What Exchange delivers for a multipart/encrypted message carrying `armour`."""
    return multipart("multipart/mixed", *([empty_text()] if with_text else []), control(), data(crlf(armour)))


def proper(armour: bytes) -> bytes:
    """The same message as the client sent it (RFC 3156 section 4)."""
    return multipart(
        'multipart/encrypted; protocol="application/pgp-encrypted"',
        control(encoding="7bit"),
        data(armour, encoding="7bit"),
    )


def check(raw: bytes, ring: GatewayRing, keys: AuthorityKeys) -> Authenticated | Refused:
    return authenticate(
        parse(raw),
        raw,
        policy="signed",
        pinned=PinnedKey(POLICE_ADDRESS, keys.police.fingerprint),
        authserv_id=None,
        verify=ring.ring.verify_detached,
        decrypt=ring.ring.decrypt,
    )


def purpose(result: Authenticated | Refused) -> str | None:
    assert isinstance(result, Authenticated), result
    request = parse_request(body_text(result.content)).request
    return request.purpose if request else None


# ---------------------------------------------------------------- repaired


def test_an_exchange_mangled_request_is_read_like_the_one_that_was_sent(
    gateway_ring: GatewayRing, keys: AuthorityKeys
) -> None:
    armour = encrypt(keys, gateway_ring.fingerprint, signer=keys.police.fingerprint)
    rewritten = mangled(armour)
    assert parse(rewritten).get_content_type() == "multipart/mixed"
    assert armour not in rewritten  # really re-encoded: the armour is only there in base64
    repaired, sent = check(rewritten, gateway_ring, keys), check(proper(armour), gateway_ring, keys)
    assert isinstance(repaired, Authenticated)
    assert isinstance(sent, Authenticated)
    assert repaired.method == sent.method == "pgp"
    assert repaired.signature is not None
    assert sent.signature is not None
    assert repaired.signature.primary_fingerprint == sent.signature.primary_fingerprint == keys.police.fingerprint
    assert purpose(repaired) == purpose(sent) == "Safeguarding children in our force area"


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda a: mangled(a, with_text=False), id="no-empty-text-part"),
        pytest.param(
            lambda a: multipart("multipart/mixed", empty_text(), control(b"Version : 1"), data(crlf(a))),
            id="version-with-space-before-colon-and-no-line-end",
        ),
        pytest.param(
            lambda a: multipart("multipart/mixed", empty_text(), control(b"Version: 1"), data(a.rstrip(b"\r\n"))),
            id="no-line-end-after-the-version-or-the-armour",
        ),
        pytest.param(
            lambda a: multipart("multipart/mixed", empty_text(), control(encoding="7bit"), data(a, encoding="7bit")),
            id="parts-left-in-7bit",
        ),
        pytest.param(
            lambda a: multipart("multipart/mixed", empty_text(), control(b"Version: 1\r\n\r\n"), data(a + b"\r\n")),
            id="blank-lines-after-version-and-armour",
        ),
    ],
)
def test_variants_of_the_mangled_shape_are_repaired(
    gateway_ring: GatewayRing, keys: AuthorityKeys, build: Callable[[bytes], bytes]
) -> None:
    armour = encrypt(keys, gateway_ring.fingerprint, signer=keys.police.fingerprint)
    result = check(build(armour), gateway_ring, keys)
    assert purpose(result) == "Safeguarding children in our force area"


def test_signed_then_encrypted_and_mangled_is_authenticated_by_the_inner_signature(
    gateway_ring: GatewayRing, keys: AuthorityKeys
) -> None:
    # RFC 3156 6.1: a multipart/signed entity, encrypted without a signature of its own.
    inner = signed_message(keys, keys.police.fingerprint)
    result = check(mangled(encrypt(keys, gateway_ring.fingerprint, inner)), gateway_ring, keys)
    assert isinstance(result, Authenticated)
    assert result.signature is not None
    assert result.signature.primary_fingerprint == keys.police.fingerprint
    assert purpose(result) == "Safeguarding children in our force area"


def test_repaired_is_still_checked_against_the_pinned_key(gateway_ring: GatewayRing, keys: AuthorityKeys) -> None:
    by_council = encrypt(keys, gateway_ring.fingerprint, signer=keys.la.fingerprint)
    assert check(mangled(by_council), gateway_ring, keys) == Refused(
        f"the message is signed by key {keys.la.fingerprint}, not the pinned key"
    )
    unsigned = encrypt(keys, gateway_ring.fingerprint)
    assert check(mangled(unsigned), gateway_ring, keys) == Refused(
        "the message is not PGP/MIME signed (multipart/signed)"
    )


def test_repaired_but_not_for_the_gateways_key_is_refused(gateway_ring: GatewayRing, keys: AuthorityKeys) -> None:
    for_police = encrypt(keys, keys.police.fingerprint, signer=keys.police.fingerprint)
    assert check(mangled(for_police), gateway_ring, keys) == Refused(
        "the message could not be decrypted with the gateway's key"
    )


# ---------------------------------------------------------------- near misses, refused


def detached_signature(keys: AuthorityKeys, content: bytes) -> bytes:
    return authority_gpg(keys, "--armor", "--detach-sign", "--local-user", keys.police.fingerprint, data=content)


NEAR_MISSES = {
    "extra-part-after": (
        lambda a, s: multipart(
            "multipart/mixed", empty_text(), control(), data(a), part("text/plain", REQUEST.encode())
        ),
        f"{REWRITTEN} its parts are text/plain, application/pgp-encrypted, application/octet-stream, text/plain, "
        "not an empty text/plain (optional), application/pgp-encrypted and application/octet-stream",
    ),
    "extra-part-before": (
        lambda a, s: multipart("multipart/mixed", empty_text(), empty_text(), control(), data(a)),
        f"{REWRITTEN} its parts are text/plain, text/plain, application/pgp-encrypted, application/octet-stream, "
        "not an empty text/plain (optional), application/pgp-encrypted and application/octet-stream",
    ),
    "wrong-order": (
        lambda a, s: multipart("multipart/mixed", empty_text(), data(a), control()),
        f"{REWRITTEN} its parts are text/plain, application/octet-stream, application/pgp-encrypted, "
        "not an empty text/plain (optional), application/pgp-encrypted and application/octet-stream",
    ),
    "text-part-not-empty": (
        lambda a, s: multipart(
            "multipart/mixed", part("text/plain", b"Purpose: all of England\r\n"), control(), data(a)
        ),
        f"{REWRITTEN} its parts are text/plain, application/pgp-encrypted, application/octet-stream, "
        "not an empty text/plain (optional), application/pgp-encrypted and application/octet-stream",
    ),
    "version-2": (
        lambda a, s: multipart("multipart/mixed", empty_text(), control(b"Version: 2\r\n"), data(a)),
        f"{REWRITTEN} its application/pgp-encrypted part does not say Version: 1",
    ),
    "version-10": (
        lambda a, s: multipart("multipart/mixed", empty_text(), control(b"Version: 10\r\n"), data(a)),
        f"{REWRITTEN} its application/pgp-encrypted part does not say Version: 1",
    ),
    "version-and-more": (
        lambda a, s: multipart("multipart/mixed", empty_text(), control(b"Version: 1\r\nPurpose: x\r\n"), data(a)),
        f"{REWRITTEN} its application/pgp-encrypted part does not say Version: 1",
    ),
    "version-empty": (
        lambda a, s: multipart("multipart/mixed", empty_text(), control(b""), data(a)),
        f"{REWRITTEN} its application/pgp-encrypted part does not say Version: 1",
    ),
    "data-is-a-signature-of-another-message": (
        lambda a, s: multipart("multipart/mixed", empty_text(), control(), data(s)),
        f"{REWRITTEN} its application/octet-stream part is not one armoured OpenPGP message",
    ),
    "data-is-two-messages": (
        lambda a, s: multipart("multipart/mixed", empty_text(), control(), data(a + a)),
        f"{REWRITTEN} its application/octet-stream part is not one armoured OpenPGP message",
    ),
    "text-before-the-armour": (
        lambda a, s: multipart("multipart/mixed", empty_text(), control(), data(b"Purpose: all of England\r\n" + a)),
        f"{REWRITTEN} its application/octet-stream part is not one armoured OpenPGP message",
    ),
    "signature-part-of-another-message-added": (
        lambda a, s: multipart(
            "multipart/mixed", empty_text(), control(), data(a), part("application/pgp-signature", s, encoding="7bit")
        ),
        "the message carries an OpenPGP signature but is no longer multipart/signed: a server on the way "
        "(such as Microsoft Exchange) rewrote it, and a rewritten message cannot be verified; "
        "signing and encrypting to the gateway's key avoids this",
    ),
    "mangled-message-forwarded-inside-another": (
        lambda a, s: multipart(
            "multipart/mixed", part("message/rfc822", mangled(a), encoding="7bit"), boundary="forwarded"
        ),
        "the message is not PGP/MIME signed (multipart/signed)",
    ),
}


@pytest.mark.parametrize(("build", "reason"), NEAR_MISSES.values(), ids=NEAR_MISSES.keys())
def test_near_misses_of_the_mangled_shape_are_refused(
    gateway_ring: GatewayRing, keys: AuthorityKeys, build: Callable[[bytes, bytes], bytes], reason: str
) -> None:
    # Every one carries a good request, encrypted to the gateway and signed by the pinned key: only the
    # shape refuses it.
    armour = encrypt(keys, gateway_ring.fingerprint, signer=keys.police.fingerprint)
    assert purpose(check(mangled(armour), gateway_ring, keys)) is not None
    other = detached_signature(keys, b"some other message\r\n")
    assert check(build(armour, other), gateway_ring, keys) == Refused(reason)


def test_a_signed_only_message_mangled_by_exchange_stays_refused(
    gateway_ring: GatewayRing, keys: AuthorityKeys
) -> None:
    # The signature is good over what was sent; Exchange re-encoded the signed part, so nothing can check it.
    sent = signed_message(keys, keys.police.fingerprint)
    assert isinstance(check(sent, gateway_ring, keys), Authenticated)
    signature = list(parse(sent).iter_parts())[1].get_payload(decode=True)
    assert isinstance(signature, bytes)
    assert signature.startswith(b"-----BEGIN PGP SIGNATURE-----")
    rewritten = multipart(
        "multipart/mixed",
        part('text/plain; charset="utf-8"', REQUEST.encode()),
        part('application/pgp-signature; name="signature.asc"', signature),
    )
    result = check(rewritten, gateway_ring, keys)
    assert isinstance(result, Refused)
    assert result.reason.startswith("the message carries an OpenPGP signature but is no longer multipart/signed")


# ---------------------------------------------------------------- end to end


def test_a_mangled_request_is_answered_through_the_pipeline(
    gateway: Gateway, keys: AuthorityKeys, tmp_path: Path
) -> None:
    sample = write_sample(tmp_path / "register", 200, seed=5)
    gateway.ok("register", "import", "--homes", str(sample.homes_path), "--enforcement", str(sample.enforcement_path))
    gateway.ok(
        "authority", "add", "--name", "West Mercia Police", "--kind", "police", "--area", "West Mercia",
        "--email", POLICE_ADDRESS, "--key", str(keys.police.write(tmp_path, "police.asc")),
    )  # fmt: skip
    authority_gpg(keys, "--import", data=gateway.ok("key", "export").encode())
    message = tmp_path / "mangled.eml"
    message.write_bytes(mangled(encrypt(keys, str(gateway.signing_key), signer=keys.police.fingerprint)))
    outcome = json.loads(gateway.ok("process", str(message), "--json"))
    assert outcome["kind"] == "answered", outcome


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain; charset=idna",
        "multipart/mixed; charset=idna",
        'multipart/signed; protocol="application/pgp-signature"; charset=idna',
        'multipart/encrypted; protocol="application/pgp-encrypted"; charset=idna',
    ],
)
def test_looking_for_the_mangled_shape_never_decodes_text_in_a_hostile_charset(
    gateway_ring: GatewayRing, keys: AuthorityKeys, content_type: str
) -> None:
    # Python's get_payload() raises UnicodeError for 8-bit text in charset=idna; no boundary here, so even the
    # multipart types are read as one text payload.
    raw = (HEADERS.replace("\n", "\r\n") + f"Content-Type: {content_type}\r\n\r\n\x80\r\n").encode("latin-1")
    result = check(raw, gateway_ring, keys)
    assert isinstance(result, Refused)
    assert result.reason in (
        "the message is not PGP/MIME signed (multipart/signed)",
        "a multipart/signed message must have exactly two parts",
        "the message is encrypted, but not as PGP/MIME the gateway can read",
    )


def test_a_hostile_charset_in_the_empty_text_part_is_harmless(gateway_ring: GatewayRing, keys: AuthorityKeys) -> None:
    armour = encrypt(keys, gateway_ring.fingerprint, signer=keys.police.fingerprint)
    text = "Content-Type: text/plain; charset=idna\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\x80"
    raw = multipart("multipart/mixed", text, control(), data(armour)).decode().encode("latin-1")
    assert check(raw, gateway_ring, keys) == Refused(
        f"{REWRITTEN} its parts are text/plain, application/pgp-encrypted, application/octet-stream, "
        "not an empty text/plain (optional), application/pgp-encrypted and application/octet-stream"
    )
