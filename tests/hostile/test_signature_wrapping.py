"""Signature wrapping: a genuine signature over a replayed part must never vouch for another part's text.

The signed bytes are cut from the raw message by delimiter lines, and the request is read from exactly those
bytes. These messages try to make the cut and Python's parser disagree.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.authenticate import Authenticated, PinnedKey, Refused, authenticate
from gateway.crypto import Keyring, kill_agent
from gateway.requests import body_text, parse_request
from gateway.signedpart import BARE_CR
from tests.support.addresses import POLICE_ADDRESS
from tests.support.keys import AuthorityKeys
from tests.support.requests import FROM_POLICE, REQUEST, signed_message
from tests.support.wire import parse

FORGED = REQUEST.replace("our force area", "all of England")
BAD = (
    "the PGP signature is not good: the signature does not match the signed part (it was altered or only partly "
    "signed; if your own script signed it, sign the part with CRLF line ends, RFC 3156 section 5)"
)


@pytest.fixture
def keyring(tmp_path: Path, keys: AuthorityKeys) -> Iterator[Keyring]:
    home = tmp_path / "gateway-gnupg"
    Keyring.create_home(home)
    ring = Keyring(home)
    try:
        ring.import_public(keys.police.public)
        yield ring
    finally:
        kill_agent(home)


def genuine(keys: AuthorityKeys) -> tuple[bytes, bytes]:
    """The first part exactly as the police signed it, and that signature: what an attacker can replay."""
    raw = signed_message(keys, keys.police.fingerprint)
    delimiter = b"\r\n------=_signed_7f3a"
    start = raw.index(b"\r\n", raw.index(delimiter) + len(delimiter)) + 2
    end = raw.index(delimiter, start)
    assert raw[start:].startswith(b"Content-Type: text/plain")
    signature = re.search(rb"-----BEGIN PGP SIGNATURE-----.*?-----END PGP SIGNATURE-----\r?\n", raw, re.DOTALL)
    assert signature is not None
    return raw[start:end], signature[0]


def check(raw: bytes, keyring: Keyring, keys: AuthorityKeys) -> Authenticated | Refused:
    return authenticate(
        parse(raw), raw, policy="signed", pinned=PinnedKey(POLICE_ADDRESS, keys.police.fingerprint),
        authserv_id=None, verify=keyring.verify_detached,
    )  # fmt: skip


HEAD = FROM_POLICE.replace("\n", "\r\n") + (
    'MIME-Version: 1.0\r\nContent-Type: multipart/signed; micalg=pgp-sha256; protocol="application/pgp-signature"; '
    'boundary="b"\r\n\r\n'
)
FORGED_PART = f'Content-Type: text/plain; charset="utf-8"\r\n\r\n{FORGED}'.encode()
SIGNATURE_HEAD = b'Content-Type: application/pgp-signature; name="signature.asc"\r\n\r\n'


def test_the_genuine_message_authenticates_and_is_read_from_the_signed_bytes(
    keyring: Keyring, keys: AuthorityKeys
) -> None:
    signed, signature = genuine(keys)
    raw = HEAD.encode() + b"--b\r\n" + signed + b"\r\n--b\r\n" + SIGNATURE_HEAD + signature + b"\r\n--b--\r\n"
    result = check(raw, keyring, keys)
    assert isinstance(result, Authenticated)
    request = parse_request(body_text(result.content)).request
    assert request is not None
    assert request.purpose == "Safeguarding children in our force area"


def test_lines_that_only_start_like_the_boundary_are_not_delimiters(keyring: Keyring, keys: AuthorityKeys) -> None:
    # The replayed part sits in the preamble between "--bX" lines; the parser's first part is the forgery.
    signed, signature = genuine(keys)
    raw = (
        HEAD.encode() + b"--bX\r\n" + signed + b"\r\n--bX--\r\n"
        + b"--b\r\n" + FORGED_PART + b"\r\n--b\r\n" + SIGNATURE_HEAD + signature + b"\r\n--b--\r\n"
    )  # fmt: skip
    assert check(raw, keyring, keys) == Refused(BAD)


def test_a_lone_cr_ends_a_line_for_the_cut_as_for_the_parser(keyring: Keyring, keys: AuthorityKeys) -> None:
    # To Python's parser a lone CR ends a line: it sees the forgery, the genuine signature and a close
    # delimiter, then an epilogue, where the replayed part hides between CRLF delimiters.
    signed, signature = genuine(keys)
    raw = (
        HEAD.encode() + b"--b\r" + FORGED_PART + b"\r--b\r" + SIGNATURE_HEAD + signature + b"\r--b--\r"
        + b"\r\n--b\r\n" + signed + b"\r\n--b\r\n" + SIGNATURE_HEAD + signature + b"\r\n--b--\r\n"
    )  # fmt: skip
    parts = list(parse(raw).iter_parts())
    assert len(parts) == 2
    assert "all of England" in str(parts[0].get_payload())
    assert check(raw, keyring, keys) == Refused(BARE_CR)


def test_a_signed_request_with_a_bare_cr_is_refused_even_when_genuine(keyring: Keyring, keys: AuthorityKeys) -> None:
    # The fuzzer's find: CRLF CRLF after the part's headers turned into CR CRLF. Read with a lone CR as a line
    # end it is the genuine request, read otherwise it is not: ambiguous, so refused.
    signed, signature = genuine(keys)
    raw = HEAD.encode() + b"--b\r\n" + signed.replace(b"\r\n\r\n", b"\r\r\n", 1) + b"\r\n--b\r\n"
    raw += SIGNATURE_HEAD + signature + b"\r\n--b--\r\n"
    assert check(raw, keyring, keys) == Refused(BARE_CR)


def test_a_transport_padded_delimiter_is_still_a_delimiter(keyring: Keyring, keys: AuthorityKeys) -> None:
    # RFC 2046 allows spaces or tabs after a delimiter; the parser and the cut both accept them.
    signed, signature = genuine(keys)
    raw = (
        HEAD.encode() + b"preamble\r\n--b \t\r\n" + signed + b"\r\n--b  \r\n" + SIGNATURE_HEAD + signature
        + b"\r\n--b-- \r\n"
    )  # fmt: skip
    assert isinstance(check(raw, keyring, keys), Authenticated)
