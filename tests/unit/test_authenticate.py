"""Who sent it: one From mailbox, then a signature by the pinned key or our own border's DMARC pass."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from gateway.authenticate import (
    SIGNED_PART_MISMATCH,
    Authenticated,
    PinnedKey,
    Refused,
    Verify,
    authenticate,
    dmarc_pass,
    sender_of,
)
from gateway.crypto import Keyring, kill_agent
from gateway.requests import body_text, parse_request
from gateway.shown import digest
from gateway.signatures import SignatureStatus
from tests.support.addresses import GATEWAY_ADDRESS, POLICE_ADDRESS
from tests.support.keys import AuthorityKeys
from tests.support.requests import BORDER, FROM_POLICE, plain, signed_message
from tests.support.wire import parse

# ---------------------------------------------------------------- From


def test_the_one_from_mailbox_lower_cased() -> None:
    message = parse(plain(f"From: Chief Constable <{POLICE_ADDRESS.upper()}>\nTo: {GATEWAY_ADDRESS}\n"))
    assert sender_of(message) == POLICE_ADDRESS


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        (f"From: {POLICE_ADDRESS} <evil@attacker.example>\n", "the From header is malformed (InvalidHeaderDefect)"),
        (
            f"From: {POLICE_ADDRESS}\nFrom: evil@attacker.example\n",
            "the message has 2 From headers; exactly one is required",
        ),
        (
            f"From: {POLICE_ADDRESS}, evil@attacker.example\n",
            "the From header names 2 mailboxes; exactly one is required",
        ),
        ("To: someone@example.org\n", "the message has 0 From headers; exactly one is required"),
    ],
)
def test_from_headers_that_cannot_be_trusted(headers: str, reason: str) -> None:
    assert sender_of(parse(plain(headers))) == Refused(reason)


# ---------------------------------------------------------------- DMARC


def with_results(*results: str) -> EmailMessage:
    lines = "".join(f"Authentication-Results: {r}\n" for r in results)
    return parse(plain(lines + FROM_POLICE))


DOMAIN = POLICE_ADDRESS.rpartition("@")[2]


def test_dmarc_pass_from_our_border_for_the_from_domain() -> None:
    message = with_results(f"{BORDER}; spf=pass smtp.mailfrom={DOMAIN}; dmarc=pass (p=reject) header.from={DOMAIN}")
    assert dmarc_pass(message, BORDER, DOMAIN) is None


@pytest.mark.parametrize(
    ("results", "reason"),
    [
        (
            [f"{BORDER}; dmarc=fail header.from={DOMAIN}", f"{BORDER}; dmarc=pass header.from={DOMAIN}"],
            f"DMARC for {DOMAIN} is fail",
        ),
        (
            [f"mx.attacker.example; dmarc=pass header.from={DOMAIN}"],
            f"the topmost Authentication-Results is from {digest('mx.attacker.example')}, not from '{BORDER}'",
        ),
        ([f"{BORDER}; dmarc=pass header.from=attacker.example"], f"the border reported no DMARC result for {DOMAIN}"),
        ([], "no Authentication-Results header from the border"),
    ],
)
def test_dmarc_claims_that_do_not_count(results: list[str], reason: str) -> None:
    assert dmarc_pass(with_results(*results), BORDER, DOMAIN) == Refused(reason)


def test_a_pass_below_the_topmost_header_does_not_count() -> None:
    # A sender can write any header it likes under the one our border adds on top.
    message = with_results(f"{BORDER}; spf=none", f"{BORDER}; dmarc=pass header.from={DOMAIN}")
    assert dmarc_pass(message, BORDER, DOMAIN) == Refused(f"the border reported no DMARC result for {DOMAIN}")


def test_without_an_authserv_id_dmarc_is_never_trusted() -> None:
    message = with_results(f"{BORDER}; dmarc=pass header.from={DOMAIN}")
    assert dmarc_pass(message, None, DOMAIN) == Refused(
        "DMARC results are not trusted: [gateway] authserv_id is not set"
    )


# ---------------------------------------------------------------- PGP/MIME


@pytest.fixture
def keyring(tmp_path: Path, keys: AuthorityKeys) -> Iterator[Keyring]:
    home = tmp_path / "gateway-gnupg"
    Keyring.create_home(home)
    ring = Keyring(home)
    try:
        ring.import_public(keys.police.public)
        ring.import_public(keys.la.public)
        yield ring
    finally:
        kill_agent(home)


def check(
    raw: bytes, keyring: Keyring, *, pinned: str, auth: str = "signed", headers: str = "", verify: Verify | None = None
) -> Authenticated | Refused:
    raw = headers.replace("\n", "\r\n").encode() + raw
    return authenticate(
        parse(raw),
        raw,
        policy=auth,
        pinned=PinnedKey(POLICE_ADDRESS, pinned),
        authserv_id=BORDER,
        verify=verify or keyring.verify_detached,
    )


def test_a_good_signature_by_the_pinned_key(keyring: Keyring, keys: AuthorityKeys) -> None:
    result = check(signed_message(keys, keys.police.fingerprint), keyring, pinned=keys.police.fingerprint)
    assert isinstance(result, Authenticated)
    assert result.method == "pgp"
    assert result.signature is not None
    assert result.signature.primary_fingerprint == keys.police.fingerprint
    request = parse_request(body_text(result.content)).request
    assert request is not None
    assert request.purpose == "Safeguarding children in our force area"


def test_a_signed_message_stored_with_bare_lf_line_ends_still_verifies(keyring: Keyring, keys: AuthorityKeys) -> None:
    raw = signed_message(keys, keys.police.fingerprint).replace(b"\r\n", b"\n")
    assert isinstance(check(raw, keyring, pinned=keys.police.fingerprint), Authenticated)


def test_a_signature_by_another_authoritys_key_is_refused(keyring: Keyring, keys: AuthorityKeys) -> None:
    result = check(signed_message(keys, keys.la.fingerprint), keyring, pinned=keys.police.fingerprint)
    assert result == Refused(f"the message is signed by key {keys.la.fingerprint}, not the pinned key")


def test_an_altered_signed_part_is_refused(keyring: Keyring, keys: AuthorityKeys) -> None:
    result = check(signed_message(keys, keys.police.fingerprint, alter=True), keyring, pinned=keys.police.fingerprint)
    assert result == Refused(
        "the PGP signature is not good: the signature does not match the signed part (it was altered or only partly "
        "signed; if your own script signed it, sign the part with CRLF line ends, RFC 3156 section 5)"
    )


def test_the_line_end_hint_follows_gpgs_badsig_not_the_words_for_it(keyring: Keyring, keys: AuthorityKeys) -> None:
    """The hint about CRLF line ends is given because gpg said BADSIG, however that problem is worded."""

    def reworded(data: bytes, signature: bytes) -> SignatureStatus:
        return dataclasses.replace(keyring.verify_detached(data, signature), problem="worded otherwise")

    altered = signed_message(keys, keys.police.fingerprint, alter=True)
    assert check(altered, keyring, pinned=keys.police.fingerprint, verify=reworded) == Refused(SIGNED_PART_MISMATCH)


def test_pgp_policy_does_not_accept_dmarc_and_pgp_or_dmarc_does(keyring: Keyring, keys: AuthorityKeys) -> None:
    border = f"Authentication-Results: {BORDER}; dmarc=pass header.from={DOMAIN}\n"
    unsigned = plain(FROM_POLICE)
    strict = check(unsigned, keyring, pinned=keys.police.fingerprint, auth="signed", headers=border)
    assert strict == Refused("the message is not PGP/MIME signed (multipart/signed)")
    either = check(unsigned, keyring, pinned=keys.police.fingerprint, auth="signed-or-dmarc", headers=border)
    assert isinstance(either, Authenticated)
    assert either.method == "dmarc"
    neither = check(unsigned, keyring, pinned=keys.police.fingerprint, auth="signed-or-dmarc")
    assert neither == Refused(
        "the message is not PGP/MIME signed (multipart/signed); no Authentication-Results header from the border"
    )
