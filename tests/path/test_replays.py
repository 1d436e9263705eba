"""Replays are caught by what was signed: the same OpenPGP signature again, under a new Message-ID, none, or
another armour, is recorded and not acted on; a new signature over the same words is a new request."""

from __future__ import annotations

import base64
import datetime as dt
import re
from collections import Counter
from pathlib import Path

from gateway.crypto import kill_agent
from tests.support.addresses import GATEWAY_ADDRESS, POLICE_ADDRESS
from tests.support.gateway_cli import Gateway
from tests.support.keys import AuthorityKeys, run_gpg
from tests.support.live import outbox, process, subscriptions
from tests.support.requests import REQUEST
from tests.support.schedule import MONTHLY, police_at

AT = dt.datetime(2027, 2, 10, 9, 0, tzinfo=dt.UTC)
CANCEL = "Request: cancel\r\nPurpose: no longer needed\r\n"


def with_message_id(raw: bytes, message_id: str | None) -> bytes:
    """The same bytes with only the Message-ID changed, or removed: what an attacker copying it off the wire can do."""
    line = b"" if message_id is None else f"Message-ID: {message_id}\r\n".encode()
    return re.sub(rb"Message-ID: [^\r\n]*\r\n", line, raw, count=1)


def kinds(gateway: Gateway) -> Counter[str]:
    return Counter(str(row["kind"]) for row in outbox(gateway))


def test_a_signed_request_under_a_new_message_id_or_none_is_a_replay(walker: Gateway, keys: AuthorityKeys) -> None:
    original = police_at(keys, REQUEST, "first", AT)
    assert process(walker, original, as_of=AT)["kind"] == "answered"
    later = AT + dt.timedelta(hours=2)
    for n, copy in enumerate([with_message_id(original, "<fresh@westmercia.police.example>"),
                              with_message_id(original, None)]):  # fmt: skip
        outcome = process(walker, copy, f"copy{n}.eml", as_of=later)
        assert outcome["kind"] == "quarantined", outcome
        assert "its signature was already used by message 1" in str(outcome["reason"])
    assert kinds(walker) == Counter({"disclosure": 1, "alert": 2})  # the authority is not answered again


def test_the_same_signature_in_other_armour_is_still_a_replay(walker: Gateway, keys: AuthorityKeys) -> None:
    original = police_at(keys, REQUEST, "armour", AT)
    assert process(walker, original, as_of=AT)["kind"] == "answered"
    rearmoured = original.replace(
        b"-----BEGIN PGP SIGNATURE-----\n", b"-----BEGIN PGP SIGNATURE-----\nComment: re-armoured\n"
    )
    assert rearmoured != original
    copy = with_message_id(rearmoured, "<other@westmercia.police.example>")
    outcome = process(walker, copy, "copy.eml", as_of=AT + dt.timedelta(minutes=5))
    assert outcome["kind"] == "quarantined", outcome


def test_a_cancel_copied_off_the_wire_cannot_end_the_next_subscription(walker: Gateway, keys: AuthorityKeys) -> None:
    assert process(walker, police_at(keys, MONTHLY, "m1", AT), "m1.eml", AT)["kind"] == "answered"
    cancel = police_at(keys, CANCEL, "c1", AT + dt.timedelta(days=1))
    assert process(walker, cancel, "c1.eml", AT + dt.timedelta(days=1))["kind"] == "answered"
    again = AT + dt.timedelta(days=2)
    assert process(walker, police_at(keys, MONTHLY, "m2", again), "m2.eml", again)["kind"] == "answered"
    replayed = with_message_id(cancel, "<c1-again@westmercia.police.example>")
    outcome = process(walker, replayed, "replay.eml", AT + dt.timedelta(days=3))
    assert outcome["kind"] == "quarantined"
    assert sorted(str(row["status"]) for row in subscriptions(walker)) == ["active", "cancelled"]


def test_the_same_words_signed_again_are_a_new_request(walker: Gateway, keys: AuthorityKeys) -> None:
    """Next year's identical renewal is no replay: only the very same signature is."""
    first = police_at(keys, REQUEST, "same-words-1", AT)
    second = police_at(keys, REQUEST, "same-words-2", AT + dt.timedelta(hours=1))
    assert process(walker, first, "1.eml", AT)["kind"] == "answered"
    assert process(walker, second, "2.eml", AT + dt.timedelta(hours=1))["kind"] == "answered"
    assert kinds(walker)["disclosure"] == 2


# ---------------------------------------------------------------- a malleable signature (ECDSA's s and n - s)

P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def _crc24(data: bytes) -> int:
    crc = 0xB704CE
    for byte in data:
        crc ^= byte << 16
        for _ in range(8):
            crc <<= 1
            if crc & 0x1000000:
                crc ^= 0x1864CFB
    return crc & 0xFFFFFF


def _mpi(value: int) -> bytes:
    return value.bit_length().to_bytes(2, "big") + value.to_bytes((value.bit_length() + 7) // 8, "big")


def flipped_ecdsa(armoured: bytes) -> bytes:
    """The same ECDSA signature with s replaced by n - s: it verifies just the same, yet is other bytes."""
    lines = armoured.decode().strip().splitlines()
    body = "".join(line for line in lines[lines.index("") + 1 : -1] if not line.startswith("="))
    packet = base64.b64decode(body)
    tag = packet[0]
    if tag & 0x40:  # new format: one-octet length here
        header, length = 2, packet[1]
    else:  # old format: length type in the low two bits
        size = {0: 1, 1: 2, 2: 4}[tag & 3]
        header, length = 1 + size, int.from_bytes(packet[1 : 1 + size], "big")
    sig = packet[header : header + length]
    assert (sig[0], sig[2]) == (4, 19), "a v4 ECDSA signature"
    hashed = int.from_bytes(sig[4:6], "big")
    at = 6 + hashed
    unhashed = int.from_bytes(sig[at : at + 2], "big")
    at += 2 + unhashed + 2  # past the unhashed area and the two-octet hash prefix
    r_bits = int.from_bytes(sig[at : at + 2], "big")
    r_end = at + 2 + (r_bits + 7) // 8
    s_bits = int.from_bytes(sig[r_end : r_end + 2], "big")
    s = int.from_bytes(sig[r_end + 2 : r_end + 2 + (s_bits + 7) // 8], "big")
    new_sig = sig[:r_end] + _mpi(P256_ORDER - s)
    new_packet = bytes([0xC2, len(new_sig)]) + new_sig  # new-format tag 2, one-octet length
    encoded = base64.b64encode(new_packet).decode()
    wrapped = "\n".join(encoded[i : i + 64] for i in range(0, len(encoded), 64))
    checksum = base64.b64encode(_crc24(new_packet).to_bytes(3, "big")).decode()
    return f"-----BEGIN PGP SIGNATURE-----\n\n{wrapped}\n={checksum}\n-----END PGP SIGNATURE-----\n".encode()


def test_an_ecdsa_signature_made_other_bytes_by_its_s_is_still_a_replay(gateway: Gateway, tmp_path: Path) -> None:
    """ECDSA is malleable: s and n - s both verify, with different SIG_IDs. What was signed, by whom and when
    cannot change, and that is what the gateway also keeps."""
    home = tmp_path / "ecdsa-police"
    home.mkdir(mode=0o700)
    try:
        run_gpg(home, "--quick-gen-key", f"West Mercia Police <{POLICE_ADDRESS}>", "nistp256", "sign,cert", "1y")
        listing = run_gpg(home, "--with-colons", "--list-keys").decode()
        fingerprint = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr"))
        run_gpg(home, "--quick-add-key", fingerprint, "nistp256", "encr", "1y")
        key = tmp_path / "police.asc"
        key.write_bytes(run_gpg(home, "--armor", "--export", fingerprint))
        gateway.ok(
            "authority", "add", "--name", "West Mercia Police", "--kind", "police", "--area", "West Mercia",
            "--email", POLICE_ADDRESS, "--key", str(key),
        )  # fmt: skip
        first = f'Content-Type: text/plain; charset="utf-8"\r\n\r\n{REQUEST}'.encode()
        signature = run_gpg(home, "--armor", "--detach-sign", "--digest-algo", "SHA256", data=first)
        flipped = flipped_ecdsa(signature)
        assert flipped != signature
        (tmp_path / "first").write_bytes(first)
        for name, sig in (("original.asc", signature), ("flipped.asc", flipped)):
            (tmp_path / name).write_bytes(sig)
            assert b"GOODSIG" in run_gpg(home, "--status-fd", "1", "--verify", str(tmp_path / name),
                                          str(tmp_path / "first"))  # fmt: skip

        def message(sig: bytes, message_id: str) -> bytes:
            boundary = "b0undary"
            return (
                (
                    f"From: {POLICE_ADDRESS}\r\nTo: {GATEWAY_ADDRESS}\r\nMessage-ID: <{message_id}@x.example>\r\n"
                    f'Content-Type: multipart/signed; micalg=pgp-sha256; protocol="application/pgp-signature"; '
                    f'boundary="{boundary}"\r\n\r\n--{boundary}\r\n'
                ).encode()
                + first
                + (f"\r\n--{boundary}\r\nContent-Type: application/pgp-signature\r\n\r\n").encode()
                + sig
                + f"\r\n--{boundary}--\r\n".encode()
            )

        assert process(gateway, message(signature, "one"), "one.eml")["kind"] == "answered"
        outcome = process(gateway, message(flipped, "two"), "two.eml")
        assert outcome["kind"] == "quarantined", outcome
        assert "already used by message 1" in str(outcome["reason"])
    finally:
        kill_agent(home)
