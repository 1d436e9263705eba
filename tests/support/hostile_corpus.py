"""The corpus of hostile mail: the small hand-written messages in tests/hostile/corpus/, and the ones made at test time
because they are too big to keep in git or need the session's real keys.

Every case says which recorded outcomes are acceptable and whether it is authentic (signed by the pinned police
key, or passed by the border's DMARC, which the test gateway trusts). Only an authentic message may get an answer
(a disclosure, refusal or acknowledgement); any other may cause only an alert to the admins or a notice to the
registered address, encrypted to its pinned key. Only the cases that must be quarantined say so.

`python -m tests.support.hostile_corpus CONFIG SECONDS MESSAGE...` runs messages through `gateway.pipeline.process`,
each in a process of its own forked from a clean one, with a Context built as `gateway process` builds it (but without
that command's own size check, so that the pipeline's own limits are what is tested), and prints one JSON line per
message: the outcome, the seconds the pipeline took and how much the peak memory grew meanwhile, or what went
wrong (an exception, or no outcome within SECONDS). tests/hostile/test_corpus.py runs the heavy cases this way.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import functools
import hashlib
import json
import os
import re
import resource
import signal
import struct
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from gateway.compose import Templates
from gateway.config import Config, load_config
from gateway.crypto import Keyring
from gateway.db.engine import Database, create_database
from gateway.db.models import Disclosure, InboundMessage, OutboxMessage
from gateway.pipeline import process
from gateway.values import Context, Outcome
from tests.support.addresses import ADMIN_ADDRESS, GATEWAY_ADDRESS, LA_ADDRESS, POLICE_ADDRESS
from tests.support.keys import AuthorityKeys, run_gpg
from tests.support.requests import FROM_POLICE, REQUEST, signed_message

HOSTILE_DIR = Path(__file__).resolve().parents[1] / "hostile" / "corpus"

ANSWERED, REFUSED, REJECTED, QUARANTINED = "answered", "refused", "rejected", "quarantined"
OUTCOMES = frozenset({ANSWERED, REFUSED, REJECTED, QUARANTINED})
# An unauthenticated message gets no answer at all (README, "Security model"): a refusal is an answer too.
NO_ANSWER = frozenset({REJECTED, QUARANTINED})
MUST_QUARANTINE = frozenset({QUARANTINED})
ANY = OUTCOMES

MAX_MESSAGE = 10 * 1024 * 1024  # the README's limit: larger mail is quarantined without being parsed
SIGNED_PURPOSE = "Safeguarding children in our force area"  # the purpose in tests.unit.test_authenticate.REQUEST
OWN_AREA = "West Mercia police force area"
ATTACKER = "evil@attacker.example"


@dataclass(frozen=True)
class Expect:
    outcomes: frozenset[str] = NO_ANSWER
    authentic: bool = False  # signed by the pinned police key or passed by the border: may get an answer
    why: str = ""


# ---------------------------------------------------------------- the hand-written messages in tests/hostile/corpus/

_BORDER = Expect(ANY, authentic=True, why="police mail the border passed (DMARC), with a hostile body")
_MALFORMED_FROM = Expect(MUST_QUARANTINE, why="a malformed or multiple From naming the police address is quarantined")
_FROM_POLICE = Expect(NO_ANSWER, why="claims to be from the police, is not authenticated: no answer")

FILES: dict[str, Expect] = {
    # empty, truncated, garbage
    "empty.eml": Expect(why="0 bytes"),
    "blank-lines-only.eml": Expect(why="three empty lines, no header at all"),
    "binary-garbage.eml": Expect(why="700 random bytes"),
    "truncated-in-from-header.eml": Expect(why="cut off in the middle of the From address"),
    "headers-without-body.eml": _FROM_POLICE,
    "truncated-in-signature.eml": _FROM_POLICE,
    "mbox-from-line-first.eml": _FROM_POLICE,
    "continuation-line-first.eml": _FROM_POLICE,
    # boundaries
    "multipart-without-boundary.eml": _FROM_POLICE,
    "multipart-wrong-boundary.eml": _FROM_POLICE,
    "multipart-never-closed.eml": _FROM_POLICE,
    "multipart-empty-boundary.eml": _FROM_POLICE,
    "multipart-boundary-2000-chars.eml": _FROM_POLICE,
    "multipart-boundary-regex-characters.eml": _FROM_POLICE,
    "multipart-boundary-in-preamble-and-epilogue.eml": _FROM_POLICE,
    "content-type-garbage.eml": _FROM_POLICE,
    "content-type-duplicated.eml": _FROM_POLICE,
    # PGP/MIME that is not what it claims
    "signed-one-part.eml": _FROM_POLICE,
    "signed-three-parts.eml": _FROM_POLICE,
    "signed-signature-first.eml": _FROM_POLICE,
    "signed-garbage-armored-signature.eml": _FROM_POLICE,
    "signed-binary-junk-signature.eml": _FROM_POLICE,
    "signed-empty-signature.eml": _FROM_POLICE,
    "signed-signature-is-pgp-message.eml": _FROM_POLICE,
    "signed-signature-invalid-base64.eml": _FROM_POLICE,
    "signed-smime-protocol.eml": _FROM_POLICE,
    "encrypted-armored-junk.eml": _FROM_POLICE,
    "encrypted-binary-junk.eml": _FROM_POLICE,
    "encrypted-invalid-base64.eml": _FROM_POLICE,
    "encrypted-one-part.eml": _FROM_POLICE,
    "encrypted-three-parts.eml": _FROM_POLICE,
    "encrypted-without-protocol.eml": _FROM_POLICE,
    "encrypted-is-plain-literal-data.eml": Expect(NO_ANSWER, why="gpg --store output: OpenPGP, but not encrypted"),
    "encrypted-symmetrically-with-a-passphrase.eml": Expect(NO_ANSWER, why="gpg -c: decrypting it wants a passphrase"),
    # NUL bytes, line ends, 8-bit and invalid bytes
    "nul-bytes-in-body.eml": _FROM_POLICE,
    "nul-bytes-in-headers.eml": Expect(NO_ANSWER, why="NUL in Message-ID and Subject (PostgreSQL text holds no NUL)"),
    "nul-byte-in-from-address.eml": _MALFORMED_FROM,
    "bare-lf-line-ends.eml": _FROM_POLICE,
    "bare-cr-line-ends.eml": _FROM_POLICE,
    "mixed-line-ends.eml": _FROM_POLICE,
    "bare-cr-multipart-signed.eml": _FROM_POLICE,
    "8bit-headers.eml": _FROM_POLICE,
    "invalid-bytes-in-from.eml": _MALFORMED_FROM,
    "8bit-in-from-address.eml": Expect(why="a look-alike of the police address with a raw UTF-8 letter"),
    "encoded-words-invalid.eml": _FROM_POLICE,
    "encoded-word-posing-as-address.eml": Expect(why="the police address as an encoded-word, not as an address"),
    # the From rules
    "two-from-headers.eml": _MALFORMED_FROM,
    "from-two-mailboxes.eml": _MALFORMED_FROM,
    "from-display-name-trick.eml": _MALFORMED_FROM,
    "from-group-syntax.eml": _MALFORMED_FROM,
    "from-address-cut-after-at-sign.eml": _MALFORMED_FROM,
    "address-headers-cut-after-at-sign.eml": Expect(NO_ANSWER, why="Reply-To and Sender that end at the @"),
    "from-unregistered-with-reply-to-and-sender.eml": Expect(why="police only in Sender, Reply-To and Resent-From"),
    "no-from-header.eml": Expect(why="no From at all"),
    "dmarc-pass-from-another-border.eml": Expect(MUST_QUARANTINE, why="a dmarc=pass written by someone else's MX"),
    "dmarc-pass-below-the-top.eml": Expect(MUST_QUARANTINE, why="our border says fail on top; a pass below it"),
    # text the border copies from the envelope into its own header, and a header without authserv-id
    "dmarc-pass-in-a-quoted-mail-from.eml": Expect(MUST_QUARANTINE, why="a dmarc=pass inside a quoted local part"),
    "dmarc-pass-in-an-encoded-word-in-a-comment.eml": Expect(MUST_QUARANTINE, why="an encoded word in an SPF comment"),
    "dmarc-pass-behind-a-parenthesis-in-a-quoted-string.eml": Expect(
        MUST_QUARANTINE, why="a '(' in one quoted string and ')' in another hide the fail between them"
    ),
    "dmarc-pass-from-microsoft-365-without-authserv-id.eml": Expect(
        MUST_QUARANTINE, why="Microsoft 365's header names no authserv-id: never trusted"
    ),
    # header fields over their bound, from an unregistered address: quarantined unparsed, never parsed slowly
    "from-obsolete-local-part-over-the-bound.eml": Expect(MUST_QUARANTINE, why="3 kB of dots and atoms in From"),
    "content-type-obsolete-local-part-over-the-bound.eml": Expect(MUST_QUARANTINE, why="2 kB of them in Content-Type"),
    "reply-to-long-run-without-at-sign.eml": Expect(MUST_QUARANTINE, why="a Reply-To of 3000 letters, no @"),
    "to-many-encoded-words-over-the-bound.eml": Expect(MUST_QUARANTINE, why="a To of 150 encoded words"),
    # charsets, transfer encodings and HTML, unauthenticated
    "unknown-charset.eml": _FROM_POLICE,
    "lying-charset-utf16.eml": _FROM_POLICE,
    "invalid-base64-body.eml": _FROM_POLICE,
    "invalid-quoted-printable-body.eml": _FROM_POLICE,
    "html-only-with-scripts.eml": _FROM_POLICE,
    # message/* types
    "message-rfc822-garbage.eml": _FROM_POLICE,
    "message-partial.eml": _FROM_POLICE,
    "message-external-body.eml": _FROM_POLICE,
    # authenticated by the border, hostile body: any outcome, but recorded, and only ever to the police
    "border-dmarc-unknown-charset.eml": _BORDER,
    "border-dmarc-idna-charset.eml": _BORDER,
    "border-dmarc-utf7-charset-with-script.eml": _BORDER,
    "border-dmarc-charset-rfc2231-junk.eml": _BORDER,
    "border-dmarc-invalid-base64.eml": _BORDER,
    "border-dmarc-invalid-quoted-printable.eml": _BORDER,
    "border-dmarc-unknown-transfer-encoding.eml": _BORDER,
    "border-dmarc-nul-bytes-in-body.eml": _BORDER,
    "border-dmarc-html-only-with-scripts.eml": _BORDER,
    "border-dmarc-8bit-and-invalid-headers.eml": _BORDER,
    "border-dmarc-nul-in-purpose-only.eml": Expect(ANY, authentic=True, why="a NUL in a valid request's Purpose"),
    # a sentence of the sender's choosing where the gateway once copied it into mail it signs (test_told_safely)
    "message-id-sentence-from-lookalike.eml": Expect(MUST_QUARANTINE, why="a Message-ID that is a sentence"),
    "message-id-comment-from-lookalike.eml": Expect(MUST_QUARANTINE, why="a sentence in a Message-ID's comment"),
    "message-id-encoded-word-from-lookalike.eml": Expect(MUST_QUARANTINE, why="a Message-ID as an encoded word"),
    "from-quoted-local-part-sentence.eml": _MALFORMED_FROM,
    "sender-header-sentence.eml": Expect(MUST_QUARANTINE, why="a Sender header naming a sentence"),
}


def corpus_files() -> list[Path]:
    return sorted(HOSTILE_DIR.glob("*.eml"))


# ---------------------------------------------------------------- gpg, as an authority (or an attacker) uses it


def gpg(keys: AuthorityKeys, *args: str, data: bytes = b"") -> bytes:
    return run_gpg(keys.home, *args, data=data)


def detached_signature(keys: AuthorityKeys, signer: str, data: bytes) -> bytes:
    return gpg(keys, "--armor", "--detach-sign", "--digest-algo", "SHA256", "--local-user", signer, data=data)


def crlf(text: str) -> str:
    return re.sub(r"\r?\n", "\r\n", text)


def headers(sender: str = f"West Mercia Police <{POLICE_ADDRESS}>", message_id: str = "gen", extra: str = "") -> str:
    return crlf(
        f"From: {sender}\nTo: {GATEWAY_ADDRESS}\nSubject: request\nDate: Tue, 24 Nov 2026 09:00:00 +0000\n"
        f"Message-ID: <hostile-{message_id}@westmercia.police.example>\n{extra}"
    )


def multipart_signed(
    head: str, first: bytes, signature: bytes, *, boundary: str = "sig-b", preamble: bytes = b""
) -> bytes:
    return (
        head.encode() + b"MIME-Version: 1.0\r\nContent-Type: multipart/signed; micalg=pgp-sha256; "
        b'protocol="application/pgp-signature"; boundary="' + boundary.encode() + b'"\r\n\r\n'
        + preamble + b"--" + boundary.encode() + b"\r\n" + first + b"\r\n--" + boundary.encode() + b"\r\n"
        b'Content-Type: application/pgp-signature; name="signature.asc"\r\n\r\n'
        + signature + b"\r\n--" + boundary.encode() + b"--\r\n"
    )  # fmt: skip


def signed_part_and_signature(raw: bytes) -> tuple[bytes, bytes]:
    """The first part exactly as signed and the armoured signature of a message from `signed_message`."""
    boundary = re.search(rb'boundary="([^"]+)"', raw)
    assert boundary is not None
    delimiter = b"\r\n--" + boundary[1]
    wire = re.sub(rb"\r?\n", b"\r\n", raw)
    start = wire.index(b"\r\n", wire.index(delimiter) + len(delimiter)) + 2
    end = wire.index(delimiter, start)
    signature = re.search(rb"-----BEGIN PGP SIGNATURE-----.*?-----END PGP SIGNATURE-----\r?\n", wire, re.DOTALL)
    assert signature is not None
    return wire[start:end], signature[0]


def police_request(keys: AuthorityKeys, body: str = REQUEST, message_id: str = "signed") -> bytes:
    """A request correctly signed by the pinned police key (what an attacker may have captured and replays)."""
    extra = f"Message-ID: <hostile-{message_id}@westmercia.police.example>\n"
    return signed_message(keys, keys.police.fingerprint, body=body, headers=FROM_POLICE + extra)


def signed_by_police(keys: AuthorityKeys, first_part: str, name: str) -> bytes:
    """A multipart/signed message whose first part (a hostile body) the police key really signed."""
    first = crlf(first_part).encode("latin-1")
    signature = detached_signature(keys, keys.police.fingerprint, first)
    return multipart_signed(headers(message_id=name), first, signature)


FORGED = "Request: disclosure\r\nFrequency: monthly\r\nPurpose: FORGED by someone who never held the police key\r\n"


# ---------------------------------------------------------------- made with the session's keys (small, fast)


def _forged_rfc822(keys: AuthorityKeys, sender: str, name: str) -> bytes:
    inner = police_request(keys, message_id=f"{name}-inner")
    return headers(sender, name).encode() + b"MIME-Version: 1.0\r\nContent-Type: message/rfc822\r\n\r\n" + inner


def _forged_attachment(keys: AuthorityKeys) -> bytes:
    inner = police_request(keys, message_id="attachment-inner")
    return (
        headers(message_id="forged-attachment").encode()
        + b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="mix"\r\n\r\n--mix\r\n'
        b"Content-Type: text/plain\r\n\r\nSee the signed request attached.\r\n--mix\r\n"
        b'Content-Type: message/rfc822\r\nContent-Disposition: attachment; filename="request.eml"\r\n\r\n'
        + inner + b"\r\n--mix--\r\n"
    )  # fmt: skip


def _signed_entity_inside_mixed(keys: AuthorityKeys) -> bytes:
    signed = police_request(keys, message_id="nested-inner")
    entity = signed[signed.index(b"MIME-Version") :]  # the multipart/signed entity, without the police's headers
    return (
        headers(message_id="nested-signed").encode()
        + b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="outer"\r\n\r\n--outer\r\n'
        + entity + b"\r\n--outer--\r\n"
    )  # fmt: skip


def _signature_wrapping(keys: AuthorityKeys) -> bytes:
    """A replayed police signature over a replayed first part, hidden in the preamble behind lines that start
    like the boundary but are not delimiters; the real first part, which Python's parser reads, is the
    attacker's. The signed bytes must be the bytes the request is read from, or the signature means nothing."""
    genuine = police_request(keys, message_id="wrapping-genuine")
    signed_part, signature = signed_part_and_signature(genuine)
    preamble = b"--sig-bX\r\n" + signed_part + b"\r\n--sig-bX--\r\n"
    first = b'Content-Type: text/plain; charset="utf-8"\r\n\r\n' + FORGED.encode()
    return multipart_signed(headers(message_id="wrapping"), first, signature, preamble=preamble)


def _signature_is_a_public_key(keys: AuthorityKeys) -> bytes:
    first = b'Content-Type: text/plain; charset="utf-8"\r\n\r\n' + FORGED.encode()
    return multipart_signed(headers(message_id="sig-is-key"), first, keys.police.public)


def _signature_is_inline_signed(keys: AuthorityKeys) -> bytes:
    """The police key's signature, but over something else, inline (not detached): gpg must not verify the
    part against it."""
    other = gpg(keys, "--armor", "--sign", "--local-user", keys.police.fingerprint, data=b"Season's greetings\r\n")
    first = b'Content-Type: text/plain; charset="utf-8"\r\n\r\n' + FORGED.encode()
    return multipart_signed(headers(message_id="sig-inline"), first, other)


def _encrypted(head: str, payload: bytes) -> bytes:
    return (
        head.encode() + b'MIME-Version: 1.0\r\nContent-Type: multipart/encrypted; protocol="application/pgp-encrypted";'
        b' boundary="enc"\r\n\r\n--enc\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n--enc\r\n'
        b'Content-Type: application/octet-stream; name="encrypted.asc"\r\n\r\n' + payload + b"\r\n--enc--\r\n"
    )  # fmt: skip


def _encrypted_to_the_police(keys: AuthorityKeys) -> bytes:
    inner = b'Content-Type: text/plain; charset="utf-8"\r\n\r\n' + REQUEST.encode()
    sealed = gpg(
        keys, "--armor", "--trust-model", "always", "--encrypt", "-r", keys.police.fingerprint,
        "--sign", "--local-user", keys.la.fingerprint, data=inner,
    )  # fmt: skip
    return _encrypted(headers(message_id="enc-to-police"), sealed)


def _only_signed_in_encrypted(keys: AuthorityKeys) -> bytes:
    inner = b'Content-Type: text/plain; charset="utf-8"\r\n\r\n' + REQUEST.encode()
    signed = gpg(keys, "--armor", "--sign", "--local-user", keys.police.fingerprint, data=inner)
    return _encrypted(headers(message_id="enc-only-signed"), signed)


def _from_rewritten(keys: AuthorityKeys) -> bytes:
    return police_request(keys, message_id="from-rewritten").replace(
        f"<{POLICE_ADDRESS}>".encode(), f"<{ATTACKER}>".encode(), 1
    )


def _second_from(keys: AuthorityKeys) -> bytes:
    raw = police_request(keys, message_id="second-from")
    return raw.replace(b"To: ", f"From: {ATTACKER}\r\nTo: ".encode(), 1)


def _signed_by_another_authority(keys: AuthorityKeys) -> bytes:
    extra = "Message-ID: <hostile-la-signed@westmercia.police.example>\n"
    return signed_message(keys, keys.la.fingerprint, headers=FROM_POLICE + extra)


def _signed_by_a_key_naming_police(keys: AuthorityKeys) -> bytes:
    """Signed by a key whose user ID names the police address (but is not the pinned key): still not the police."""
    extra = "Message-ID: <hostile-trick-signed@westmercia.police.example>\n"
    return signed_message(keys, keys.display_trick.fingerprint, headers=FROM_POLICE + extra)


def _la_address_with_police_signature(keys: AuthorityKeys) -> bytes:
    extra = "Message-ID: <hostile-la-from@westmercia.police.example>\n"
    return signed_message(
        keys, keys.police.fingerprint, headers=FROM_POLICE.replace(POLICE_ADDRESS, LA_ADDRESS) + extra
    )


_SIGNED_BODIES: dict[str, str] = {
    "signed-unknown-charset": f'Content-Type: text/plain; charset="x-klingon"\n\n{REQUEST}',
    "signed-idna-charset": "Content-Type: text/plain; charset=idna\n\nRequest: disclosure\nPurpose: xn--\xff\xfe..\n",
    "signed-utf7-charset": "Content-Type: text/plain; charset=utf-7\n\nRequest: disclosure\n"
    "Purpose: +ADw-script+AD4-\n",
    "signed-utf16-lying-charset": f"Content-Type: text/plain; charset=utf-16\n\n{REQUEST}\xff",
    "signed-invalid-base64": "Content-Type: text/plain\nContent-Transfer-Encoding: base64\n\n"
    "UmVxdWVzdDog!!!===\n==\n\xff",
    "signed-invalid-quoted-printable": "Content-Type: text/plain\nContent-Transfer-Encoding: quoted-printable\n\n"
    "Request: =ZZdisclosure=\n=0\nPurpose: =E2=80 =FF=00\n=",
    "signed-nul-bytes": "Content-Type: text/plain\n\nRequest: disclosure\nPurpose: Safe\x00guarding\x00\n"
    "Area: West\x00Mercia\n",
    "signed-html-only-with-scripts": 'Content-Type: text/html; charset="utf-8"\n\n<script>Request: cancel</script>'
    "<p>Request: disclosure</p><p>Purpose: <b onmouseover=alert(1)>Safeguarding</b> &#0; &#xD800; &#99999999999;</p>",
    "signed-8bit-part-headers": 'Content-Type: text/plain; charset="\xff\xfe"; name="\xe9t\xe9"\nX-Junk: \x80\x00\n\n'
    + REQUEST,
    "signed-part-is-deep-multipart": "".join(
        f'Content-Type: multipart/mixed; boundary="d{i}"\n\n--d{i}\n' for i in range(60)
    )
    + f"Content-Type: text/plain\n\n{REQUEST}",
}


def _future_signature(keys: AuthorityKeys) -> bytes:
    """Correctly signed by the police key, but with the signature dated two days ahead: a forged date."""
    extra = "Message-ID: <hostile-future-signature@westmercia.police.example>\n"
    at = dt.datetime.now(dt.UTC) + dt.timedelta(days=2)
    return signed_message(keys, keys.police.fingerprint, headers=FROM_POLICE + extra, at=at)


def _encrypted_signature_wrapping(keys: AuthorityKeys, gateway_key: str) -> bytes:
    """The signature-wrapping message, signed then encrypted to the gateway (RFC 3156 6.1)."""
    inner = _signature_wrapping(keys)
    entity = inner[inner.index(b"MIME-Version") :]
    sealed = gpg(keys, "--armor", "--trust-model", "always", "--encrypt", "-r", gateway_key, data=entity)
    return _encrypted(headers(message_id="enc-wrapping"), sealed)


def _encrypted_two_signers(keys: AuthorityKeys, gateway_key: str) -> bytes:
    """Signed by the police key and by another key in one OpenPGP message, encrypted to the gateway."""
    inner = b'Content-Type: text/plain; charset="utf-8"\r\n\r\n' + FORGED.encode()
    sealed = gpg(
        keys, "--armor", "--trust-model", "always", "--encrypt", "-r", gateway_key, "--sign",
        "--local-user", keys.police.fingerprint, "--local-user", keys.la.fingerprint, data=inner,
    )  # fmt: skip
    return _encrypted(headers(message_id="enc-two-signers"), sealed)


def _encrypted_from_unregistered(keys: AuthorityKeys, gateway_key: str) -> bytes:
    """Signed by the police key and encrypted to the gateway, but sent From an unregistered address."""
    inner = b'Content-Type: text/plain; charset="utf-8"\r\n\r\n' + REQUEST.encode()
    sealed = gpg(
        keys, "--armor", "--trust-model", "always", "--encrypt", "-r", gateway_key, "--sign",
        "--local-user", keys.police.fingerprint, data=inner,
    )  # fmt: skip
    return _encrypted(headers(sender=ATTACKER, message_id="enc-unregistered"), sealed)


def trust_gateway(keys: AuthorityKeys, public_key: bytes) -> None:
    """Put the gateway's public key in the keys' home, so that messages can be encrypted to it."""
    gpg(keys, "--import", data=public_key)


@dataclass(frozen=True)
class Generated:
    name: str
    build: Callable[..., bytes]  # (keys), or (keys, the gateway's fingerprint) when `to_gateway`
    expect: Expect
    to_gateway: bool = False  # encrypted to the gateway's key: import it into the keys' home first

    def make(self, keys: AuthorityKeys, gateway_key: str) -> bytes:
        return self.build(keys, gateway_key) if self.to_gateway else self.build(keys)


def generated_cases() -> list[Generated]:
    """The small messages made with the session's keys, run on both databases."""
    cases = [
        Generated(
            "forged-request-in-rfc822-from-police",
            lambda k: _forged_rfc822(k, f"West Mercia Police <{POLICE_ADDRESS}>", "forged-police"),
            Expect(MUST_QUARANTINE, why="a correctly signed police request inside an unsigned message from police"),
        ),
        Generated(
            "forged-request-in-rfc822-from-unregistered",
            lambda k: _forged_rfc822(k, ATTACKER, "forged-attacker"),
            Expect(NO_ANSWER, why="the same, from an address that is not registered"),
        ),
        Generated(
            "forged-request-attached-from-police",
            _forged_attachment,
            Expect(MUST_QUARANTINE, why="the signed request as an attachment of an unsigned message"),
        ),
        Generated(
            "signed-entity-nested-in-mixed-from-police",
            _signed_entity_inside_mixed,
            Expect(MUST_QUARANTINE, why="a multipart/signed entity one level down, not the message itself"),
        ),
        Generated(
            "signature-wrapping-in-preamble",
            _signature_wrapping,
            Expect(MUST_QUARANTINE, why="a replayed signature and signed part hidden in the preamble"),
        ),
        Generated(
            "signature-is-the-police-public-key",
            _signature_is_a_public_key,
            Expect(MUST_QUARANTINE, why="application/pgp-signature holding a public key block"),
        ),
        Generated(
            "signature-is-inline-signed-other-text",
            _signature_is_inline_signed,
            Expect(MUST_QUARANTINE, why="a police-signed inline message about something else as the 'signature'"),
        ),
        Generated(
            "encrypted-to-the-police-not-the-gateway",
            _encrypted_to_the_police,
            Expect(MUST_QUARANTINE, why="multipart/encrypted the gateway cannot decrypt"),
        ),
        Generated(
            "encrypted-part-only-signed-not-encrypted",
            _only_signed_in_encrypted,
            Expect(ANY, authentic=True, why="police-signed OpenPGP data that claims to be encrypted"),
        ),
        Generated(
            "signed-request-with-from-rewritten",
            _from_rewritten,
            Expect(NO_ANSWER, why="a genuine signed request re-sent with an unregistered From"),
        ),
        Generated(
            "signed-request-with-second-from",
            _second_from,
            Expect(MUST_QUARANTINE, why="a genuine signed request with a second From header added"),
        ),
        Generated(
            "signed-by-another-authoritys-key",
            _signed_by_another_authority,
            Expect(MUST_QUARANTINE, why="from the police address, signed by the council's key"),
        ),
        Generated(
            "signed-by-a-key-naming-the-police-address",
            _signed_by_a_key_naming_police,
            Expect(MUST_QUARANTINE, why="signed by a key whose user ID mentions the police address"),
        ),
        Generated(
            "police-signature-from-an-unregistered-address",
            _la_address_with_police_signature,
            Expect(NO_ANSWER, why="signed by police, From the council's address, which is not registered here"),
        ),
    ]
    cases += [
        Generated(
            "signature-dated-in-the-future",
            _future_signature,
            Expect(MUST_QUARANTINE, authentic=True, why="signed by the police key two days from now"),
        ),
        Generated(
            "encrypted-signature-wrapping",
            _encrypted_signature_wrapping,
            Expect(MUST_QUARANTINE, why="the signature-wrapping message, encrypted to the gateway"),
            to_gateway=True,
        ),
        Generated(
            "encrypted-signed-by-police-and-another-key",
            _encrypted_two_signers,
            Expect(ANY, authentic=True, why="two signatures in one message, one of them the police key's"),
            to_gateway=True,
        ),
        Generated(
            "encrypted-police-request-from-unregistered",
            _encrypted_from_unregistered,
            Expect(NO_ANSWER, why="signed by police, encrypted to the gateway, From an unregistered address"),
            to_gateway=True,
        ),
    ]
    for name, body in _SIGNED_BODIES.items():
        build = functools.partial(signed_by_police, first_part=body, name=name)
        cases.append(Generated(name, build, Expect(ANY, authentic=True, why="signed by police, hostile body")))
    return cases


# ---------------------------------------------------------------- heavy: made at test time, run on SQLite only


@dataclass(frozen=True)
class Heavy:
    name: str
    build: Callable[[AuthorityKeys, str], bytes]  # (keys, the gateway's fingerprint) -> message
    expect: Expect
    seconds: float = 10.0  # the pipeline's time for this message, at most
    # How much the process's peak memory may grow while the pipeline runs: parsing a legitimate 9 MiB message
    # takes about 100 MiB; a message of at most 10 MB must not cost over sixteen times its size.
    memory_mib: int = 160


def nested_multipart(depth: int) -> bytes:
    opening = "".join(f'Content-Type: multipart/mixed; boundary="n{i}"\r\n\r\n--n{i}\r\n' for i in range(depth))
    closing = "".join(f"\r\n--n{i}--" for i in reversed(range(depth)))
    return (
        headers(message_id=f"nested-{depth}") + "MIME-Version: 1.0\r\n" + opening + "Content-Type: text/plain\r\n\r\n"
        + REQUEST + closing + "\r\n"
    ).encode()  # fmt: skip


def nested_rfc822(depth: int) -> bytes:
    wrapper = headers(message_id=f"rfc822-{depth}") + "MIME-Version: 1.0\r\nContent-Type: message/rfc822\r\n\r\n"
    inner = "From: x@y.example\r\nContent-Type: message/rfc822\r\n\r\n" * depth
    return (wrapper + inner + "Content-Type: text/plain\r\n\r\n" + REQUEST).encode()


def many_parts(count: int) -> bytes:
    """`count` empty parts, 7 bytes each: 1.4 million fit in 9.8 MB, under the 10 MB limit."""
    head = headers(message_id=f"parts-{count}") + 'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="p"\r\n'
    return head.encode() + b"\r\n--p\r\n" * count + b"\r\n--p--\r\n"


def short_lines(count: int) -> bytes:
    """A body of `count` two-byte lines: 5.2 million fit under the 10 MB limit."""
    return (headers(message_id=f"lines-{count}") + "\r\n" + REQUEST).encode() + b"a\n" * count


def huge_subject(size: int) -> bytes:
    words = " ".join(["request"] * (size // 8))
    folded = "\r\n ".join(words[i : i + 76] for i in range(0, len(words), 76))
    return (headers(message_id="huge-subject", extra=f"X-Subject: {folded}\r\n") + "\r\n" + REQUEST).encode()


def many_header_fields(count: int) -> bytes:
    fields = "".join(f"X-Field-{i}: value {i}\r\n" for i in range(count))
    return (headers(message_id="many-fields", extra=fields) + "\r\n" + REQUEST).encode()


def from_with_mailboxes(count: int) -> bytes:
    mailboxes = ",\r\n ".join(f"person{i}@attacker.example" for i in range(count))
    head = headers(sender=f"{POLICE_ADDRESS},\r\n {mailboxes}", message_id="many-mailboxes")
    return (head + "\r\n" + REQUEST).encode()


def encoded_words(count: int) -> bytes:
    words = "\r\n ".join(f"=?utf-8?q?w{i}=C3=A9?=" for i in range(count))
    return (headers(message_id="encoded-words", extra=f"X-Words: {words}\r\n") + "\r\n" + REQUEST).encode()


def long_line(size: int) -> bytes:
    return (headers(message_id="long-line") + "\r\n" + REQUEST).encode() + b"x" * size


def big_attachment(size: int) -> bytes:
    data = (b"A" * 76 + b"\r\n") * (size // 78)
    first = (
        b'Content-Type: multipart/mixed; boundary="a"\r\n\r\n--a\r\nContent-Type: text/plain\r\n\r\n' + REQUEST.encode()
        + b'\r\n--a\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n'
        b'Content-Disposition: attachment; filename="big.bin"\r\n\r\n' + data + b"\r\n--a--"
    )  # fmt: skip
    signature = b"-----BEGIN PGP SIGNATURE-----\r\n\r\niHUEARYIAB0WIQQAAAA=\r\n=AAAA\r\n-----END PGP SIGNATURE-----\r\n"
    return multipart_signed(headers(message_id="big-attachment"), first, signature)


def oversized(size: int) -> bytes:
    head = headers(message_id="oversized") + "\r\n" + REQUEST
    return head.encode() + (b"padding " * 9 + b"\r\n") * (size // 74 + 1)


def oversized_signed(keys: AuthorityKeys, size: int) -> bytes:
    """A request correctly signed by the pinned police key, padded past the limit with a huge preamble."""
    raw = police_request(keys, message_id="oversized-signed")
    split = raw.index(b"This is an OpenPGP/MIME signed message.")
    padding = (b"preamble " * 9 + b"\r\n") * (size // 83 + 1)
    return raw[:split] + padding + raw[split:]


# A raw deflate stream (RFC 1951) of `prefix` followed by `copies` * 258 copies of its last byte, made without
# compressing anything: a stored block with the prefix, then one dynamic-Huffman block in which the length
# 258 / distance 1 pair takes two bits, so each byte of the stream stands for 1032 bytes of output.


class _Bits:
    def __init__(self) -> None:
        self.out = bytearray()
        self.value = 0
        self.count = 0

    def put(self, value: int, width: int) -> None:
        self.value |= value << self.count
        self.count += width
        while self.count >= 8:
            self.out.append(self.value & 0xFF)
            self.value >>= 8
            self.count -= 8

    def flush(self) -> bytes:
        if self.count:
            self.out.append(self.value & 0xFF)
        self.value = self.count = 0
        return bytes(self.out)


def deflate_bomb(prefix: bytes, copies: int) -> bytes:
    stream = bytearray()
    for offset in range(0, len(prefix), 65535):  # stored blocks, not final
        chunk = prefix[offset : offset + 65535]
        stream += b"\x00" + struct.pack("<HH", len(chunk), len(chunk) ^ 0xFFFF) + chunk
    bits = _Bits()
    bits.put(1, 1)  # BFINAL
    bits.put(2, 2)  # dynamic Huffman
    bits.put(29, 5)  # HLIT: 286 literal/length codes
    bits.put(0, 5)  # HDIST: 1 distance code
    bits.put(14, 4)  # HCLEN: 18 code length codes, in the order 16 17 18 0 8 7 9 6 10 5 11 4 12 3 13 2 14 1
    for symbol in (16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1):
        bits.put(1 if symbol in (1, 18) else 0, 3)
    # Code-length codes: symbol 1 is "0", symbol 18 (a run of 11-138 zeros, 7 extra bits) is "1".
    for run in (138, 118):  # literals 0-255 unused
        bits.put(1, 1)
        bits.put(run - 11, 7)
    bits.put(0, 1)  # 256, end of block: length 1
    bits.put(1, 1)
    bits.put(28 - 11, 7)  # 257-284 unused
    bits.put(0, 1)  # 285, length 258: length 1
    bits.put(0, 1)  # distance code 0 (distance 1): length 1
    # Literal/length codes: 256 is "0", 285 is "1"; the distance code is "0". One copy: bits 1, 0.
    while copies and bits.count:  # the header is an even number of bits: a few copies align it to a byte
        bits.put(0b01, 2)
        copies -= 1
    if bits.count == 0:
        stream += bits.flush()
        whole, copies = divmod(copies, 4)
        stream += b"\x55" * whole  # four copies per byte: 1,0,1,0,1,0,1,0 from the low bit
        bits = _Bits()
    for _ in range(copies):
        bits.put(0b01, 2)
    bits.put(0, 1)  # end of block
    return bytes(stream) + bits.flush()


def decompression_bomb(keys: AuthorityKeys, gateway_key: str, size: int) -> bytes:
    """A request signed by the pinned police key (RFC 3156 6.1), then encrypted to the gateway, whose epilogue
    decompresses to `size` spaces: a few hundred kilobytes on the wire."""
    signed = police_request(keys, message_id="bomb-inner") + b" "
    copies = max(0, size - len(signed)) // 258
    literal = b"b\x00\x00\x00\x00\x00" + signed  # binary, no file name, no date
    total = len(literal) + copies * 258
    packet = b"\xcb\xff" + struct.pack(">I", total) + literal  # new-format literal data packet, 5-octet length
    compressed = b"\xa3\x01" + deflate_bomb(packet, copies)  # old-format compressed packet, ZIP, to the end
    sealed = gpg(
        keys, "--armor", "--trust-model", "always", "--no-literal", "-z", "0", "--encrypt", "-r", gateway_key,
        data=compressed,
    )  # fmt: skip
    return _encrypted(headers(message_id="bomb"), sealed)


def folded(text: str, width: int = 70) -> str:
    """Short lines, each of which looks normal."""
    return "\r\n ".join(text[i : i + width] for i in range(0, len(text), width))


HEADER_FILL = 240 * 1024  # near the 256 kB max_header_bytes, folds and the other fields included


def dots_and_atoms(size: int) -> str:
    """An obsolete local part (RFC 5322 4.4), folded: about `size` bytes."""
    return folded(".".join(["a"] * (size * 70 // 146)))


def _built(raw: bytes, keys: AuthorityKeys, gateway_key: str) -> bytes:
    return raw


def with_field(field: str, sender: str = "Someone <someone@attacker.example>", name: str = "field") -> bytes:
    return (headers(sender=sender, message_id=name, extra=f"{field}\r\n") + "\r\n" + REQUEST).encode()


def hostile_fields() -> list[Heavy]:
    """Header fields at the size limit in the shapes Python's parser and the old look-alike check took minutes
    over, and every address field just within its bound: parsed, so the worst the parser is still given."""
    size = HEADER_FILL
    words = " ".join(["=?utf-8?q?a=C3=A9?="] * (size // 20))
    deep = folded("(" * (size // 4) + ")" * (size // 4))
    police = f"West Mercia Police <{POLICE_ADDRESS}>"
    quarantined = Expect(MUST_QUARANTINE, why="a header field far over its bound, quarantined unparsed")
    shapes = {
        "from-obsolete-local-part-240-kb": with_field("", sender=f"{dots_and_atoms(size)}@x"),
        "from-run-without-at-sign-240-kb": with_field("", sender="x" * size),
        "from-deep-comments-120-kb": with_field("", sender=f"{deep} a@attacker.example"),
        "from-long-quoted-string-240-kb": with_field("", sender=f'"{folded("q" * size)}" <a@b.example>'),
        "from-many-encoded-words-240-kb": with_field("", sender=f"{folded(words, 76)} <a@b.example>"),
        "content-type-obsolete-local-part-240-kb": with_field(
            f"Content-Type: text/plain; a={dots_and_atoms(size)}", sender=police
        ),
        "authentication-results-deep-comments-120-kb": with_field(
            f"Authentication-Results: mx.hmci.example; dmarc=pass {deep} header.from=westmercia.police.example",
            sender=police,
        ),
        "authentication-results-many-encoded-words-240-kb": with_field(
            f"Authentication-Results: mx.hmci.example; spf=pass ({folded(words, 76)})", sender=police
        ),
    }
    within = "\r\n".join(f"{name}: {dots_and_atoms(bound - 40)}@attacker.example" for name, bound in (("To", 2048),))
    return [
        *(Heavy(name, functools.partial(_built, raw), quarantined) for name, raw in shapes.items()),
        Heavy(
            "address-fields-of-dots-and-atoms-within-their-bounds",
            lambda k, g: with_field(within, sender=f"{dots_and_atoms(984)}@attacker.example"),
            Expect(NO_ANSWER, why="From and To of dots and atoms, each just within its bound, and together"),
        ),
    ]


def heavy_cases() -> list[Heavy]:
    mib = 1024 * 1024
    return [
        *hostile_fields(),
        Heavy(
            "nested-multipart-5000-deep",
            lambda k, g: nested_multipart(5000),
            Expect(MUST_QUARANTINE, why="multipart nested 5000 deep, from the police address"),
        ),
        Heavy(
            "nested-message-rfc822-5000-deep",
            lambda k, g: nested_rfc822(5000),
            Expect(MUST_QUARANTINE, why="message/rfc822 nested 5000 deep, from the police address"),
        ),
        Heavy(
            "1.4-million-tiny-parts",
            lambda k, g: many_parts(1_400_000),
            Expect(MUST_QUARANTINE, why="1,400,000 empty parts in 9.8 MB, from the police address"),
        ),
        Heavy(
            "5.2-million-short-lines",
            lambda k, g: short_lines(5_200_000),
            Expect(NO_ANSWER, why="a 10.4 MB body of 5.2 million two-byte lines, from the police address"),
        ),
        Heavy(
            "header-field-of-4-mib",
            lambda k, g: huge_subject(4 * mib),
            Expect(NO_ANSWER, why="one folded header field of 4 MiB, from the police address"),
        ),
        Heavy(
            "200000-header-fields",
            lambda k, g: many_header_fields(200_000),
            Expect(NO_ANSWER, why="200,000 header fields (5 MB), from the police address"),
        ),
        Heavy(
            "from-with-100000-mailboxes",
            lambda k, g: from_with_mailboxes(100_000),
            Expect(MUST_QUARANTINE, why="a From header of the police address and 100,000 more (3.5 MB)"),
        ),
        Heavy(
            "100000-encoded-words",
            lambda k, g: encoded_words(100_000),
            Expect(NO_ANSWER, why="a header of 100,000 encoded-words (2.4 MB)"),
        ),
        Heavy(
            "9-mib-line-without-line-end",
            lambda k, g: long_line(9 * mib),
            Expect(NO_ANSWER, why="a body that is one 9 MiB line"),
        ),
        Heavy(
            "9-mib-base64-attachment-in-signed",
            lambda k, g: big_attachment(9 * mib),
            Expect(NO_ANSWER, why="multipart/signed with a 9 MiB attachment and a junk signature"),
        ),
        Heavy(
            "over-10-mb-from-police",
            lambda k, g: oversized(MAX_MESSAGE + 512 * 1024),
            Expect(MUST_QUARANTINE, why="10.5 MiB from the police address: quarantined unparsed"),
            seconds=3.0,
            memory_mib=64,
        ),
        Heavy(
            "over-10-mb-of-short-lines",
            lambda k, g: short_lines(6_000_000),
            Expect(MUST_QUARANTINE, why="12 MB of two-byte lines from the police address: quarantined unparsed"),
            seconds=3.0,
            memory_mib=64,
        ),
        Heavy(
            "over-10-mb-correctly-signed-request",
            lambda k, g: oversized_signed(k, MAX_MESSAGE + 1024),
            Expect(MUST_QUARANTINE, authentic=True, why="a correctly signed request padded to just over 10 MB"),
            seconds=3.0,
            memory_mib=64,
        ),
        Heavy(
            "decompression-bomb-256-mib",
            lambda k, g: decompression_bomb(k, g, 256 * mib),
            Expect(frozenset({REFUSED, QUARANTINED}), authentic=True, why="signed, encrypted, 256 MiB once opened"),
        ),
    ]


# ---------------------------------------------------------------- what a message left behind

ANSWER_KINDS = frozenset({"disclosure", "refusal", "acknowledgement"})  # answers to a request, as opposed to alerts


@dataclass(frozen=True)
class Left:
    """Everything the database holds about one message's bytes after it went through the pipeline."""

    inbound: list[InboundMessage]
    outgoing: list[tuple[str, str, bytes]]  # (kind, recipient, content) of each outbox row it caused
    disclosures: list[Disclosure]


async def left_behind(db: Database, raw: bytes) -> Left:
    digest = hashlib.sha256(raw).hexdigest()
    async with db.transaction(write=False) as session:
        inbound = list((await session.execute(select(InboundMessage).where(InboundMessage.sha256 == digest))).scalars())
        ids = [row.id for row in inbound]
        outgoing = [
            (row.kind, row.recipient, row.content)
            for row in (await session.execute(select(OutboxMessage).where(OutboxMessage.inbound_id.in_(ids)))).scalars()
        ]
        disclosures = list((await session.execute(select(Disclosure).where(Disclosure.inbound_id.in_(ids)))).scalars())
    return Left(inbound, outgoing, disclosures)


def unlimited(config: Config) -> Config:
    """The configuration with no daily limit of answers: the corpus and the fuzzer send far more requests than
    a day's worth, and a request held back by the limit would hide what authentication made of it."""
    return dataclasses.replace(config, limits=dataclasses.replace(config.limits, answers_per_day=10**9))


def context(config: Config, db: Database) -> Context:
    """As `gateway process` builds it."""
    return Context(config, db, Keyring(config.gpg.home, config.gpg.binary), Templates(config.gateway.templates))


def problems(outcome: Outcome, left: Left, expect: Expect, police_key: str) -> list[str]:
    """Every way the message's recorded fate breaks the rules; empty when it is as it must be."""
    if len(left.inbound) != 1:
        return [f"the message left {len(left.inbound)} inbound_messages rows, not exactly one ({outcome})"]
    found: list[str] = []
    row = left.inbound[0]
    settled = outcome.settled_as if outcome.kind == "duplicate" else outcome.kind
    if row.id != outcome.inbound_id or row.outcome != settled:
        found.append(f"process() said {outcome.kind}/{outcome.inbound_id}, the database {row.outcome}/{row.id}")
    if row.outcome not in OUTCOMES:
        found.append(f"recorded outcome {row.outcome!r} is not one of {sorted(OUTCOMES)}")
    elif row.outcome not in expect.outcomes:
        found.append(f"{row.outcome} ({row.reason[:300]}), expected {' or '.join(sorted(expect.outcomes))}")
    if row.reason.startswith("processing failed"):  # the pipeline's safety net: a step raised on this message
        found.append(f"a step broke on it: {row.reason[:200]}")
    found += _outgoing_problems(left, expect, row.reason)
    for disclosure in left.disclosures:
        if not expect.authentic:
            found.append(f"DISCLOSURE {disclosure.reference} of {disclosure.area} for a message that is not authentic")
        if (disclosure.recipient, disclosure.key_fingerprint) != (POLICE_ADDRESS, police_key):
            found.append(f"disclosure to {disclosure.recipient} under key {disclosure.key_fingerprint}")
    return found


def _outgoing_problems(left: Left, expect: Expect, reason: str) -> list[str]:
    found: list[str] = []
    for kind, recipient, content in left.outgoing:
        if kind == "alert":
            if recipient != ADMIN_ADDRESS:
                found.append(f"an alert went to {recipient}")
            continue
        if recipient != POLICE_ADDRESS:
            found.append(f"a {kind} went to {recipient}, not to the registered address")
        head = content.split(b"\r\n\r\n", 1)[0]
        # Sealed in the recipient address's method: PGP/MIME, or S/MIME enveloped-data for a certificate.
        if b"multipart/encrypted" not in head and b"application/pkcs7-mime; smime-type=enveloped-data" not in head:
            found.append(f"a {kind} to {recipient} is not encrypted (PGP/MIME or S/MIME)")
        if not expect.authentic and kind in ANSWER_KINDS:
            found.append(f"a {kind} was sent in answer to a message that is not authentic ({reason[:200]})")
    return found


# ---------------------------------------------------------------- heavy messages in a child process


def _peak_kib() -> int:
    """This process's peak resident memory (VmHWM), in KiB."""
    status = Path("/proc/self/status").read_text()
    found = re.search(r"VmHWM:\s+(\d+)", status)
    return int(found[1]) if found else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _reset_peak() -> None:
    with contextlib.suppress(OSError):  # Linux 4.0+: the peak becomes the current size
        Path("/proc/self/clear_refs").write_text("5")


async def _run_one(config: Config, raw: bytes) -> dict[str, object]:
    db = create_database(config.database)
    try:
        ctx = context(config, db)
        async with db.transaction(write=False) as session:  # connect before measuring
            await session.connection()
        _reset_peak()
        before = _peak_kib()
        start = time.perf_counter()
        outcome = await process(ctx, raw, source="file")
        seconds = time.perf_counter() - start
        grown = _peak_kib() - before
    finally:
        await db.close()
    return {**outcome.__dict__, "seconds": round(seconds, 3), "memory_mib": round(grown / 1024, 1)}


def _in_fork(config: Config, message: Path, limit: float) -> dict[str, object]:
    """One message in a process forked from this clean one, so that each is measured from the same start;
    killed, with everything it started, after `limit` seconds."""
    raw = message.read_bytes()
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the fork: run, report through the pipe, leave without running anyone's clean-up
        os.close(reader)
        os.setpgid(0, 0)
        try:
            report: dict[str, object] = asyncio.run(_run_one(config, raw))
        except BaseException:  # an exception escaping the pipeline is the finding to report
            report = {"error": traceback.format_exc()[-2000:]}
        os.write(writer, json.dumps(report).encode())
        os._exit(0)
    os.close(writer)
    deadline = time.monotonic() + limit
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(reader)
            return {"error": f"no outcome after {limit:.0f} s: killed"}
        time.sleep(0.02)
    with os.fdopen(reader, "rb") as pipe:
        written = pipe.read()
    return json.loads(written) if written else {"error": "the process died without a word"}


def main(argv: list[str]) -> int:
    """`python -m tests.support.hostile_corpus CONFIG SECONDS MESSAGE...`: one JSON line per message."""
    config = unlimited(load_config(Path(argv[0])))
    for message in map(Path, argv[2:]):
        print(json.dumps({"message": message.name, **_in_fork(config, message, float(argv[1]))}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
