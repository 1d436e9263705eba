"""A reply as its recipient opens it: PGP/MIME, decrypted by their own key, signed by the gateway, marked."""

from __future__ import annotations

import datetime as dt
import subprocess
from collections.abc import Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from gateway.compose import Envelope, Templates, _header, inner_message, new_reference, outer_message
from gateway.crypto import Keyring, kill_agent
from gateway.extracts import build_extract
from gateway.gpgrun import KeyProblem
from tests.support.addresses import GATEWAY_ADDRESS, POLICE_ADDRESS
from tests.support.keys import AuthorityKeys
from tests.support.register import FakeAction, FakeHome

MARKING = "OFFICIAL-SENSITIVE"


@pytest.fixture
def gateway_keyring(tmp_path: Path, keys: AuthorityKeys) -> Iterator[tuple[Keyring, str]]:
    home = tmp_path / "gateway-gnupg"
    Keyring.create_home(home)
    keyring = Keyring(home)
    try:
        fingerprint = keyring.generate("HMCI register disclosure gateway", GATEWAY_ADDRESS, "1y")
        keyring.import_public(keys.police.public)
        yield keyring, fingerprint
    finally:
        kill_agent(home)


def recipient_gpg(keys: AuthorityKeys, *args: str, data: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["gpg", "--homedir", str(keys.home), "--batch", "--status-fd", "2", *args],
        input=data, capture_output=True, check=False, timeout=60,
    )  # fmt: skip


def payload_bytes(part: object) -> bytes:
    assert isinstance(part, EmailMessage)
    data = part.get_payload(decode=True)
    assert isinstance(data, bytes)
    return data


def build_reply(keyring: Keyring, signer: str, keys: AuthorityKeys) -> tuple[bytes, str]:
    reference = new_reference()
    extract = build_extract(
        [FakeHome("SC100001"), FakeHome("SC100002", name="Meadow View")],
        [FakeAction("SC100001", dt.date(2024, 1, 3), "Compliance notice issued")],
        marking=MARKING,
        reference=reference,
    )
    envelope = Envelope(
        sender=GATEWAY_ADDRESS,
        recipient=POLICE_ADDRESS,
        marking=MARKING,
        reference=reference,
        subject=f"Register of children's homes: West Mercia police force area ({reference})",
        in_reply_to="<request-1@westmercia.police.example>",
        references=("<request-1@westmercia.police.example>",),
    )
    text = Templates().render(
        "disclosure.txt.j2",
        {
            "marking": MARKING, "reference": reference, "date": "2026-11-25", "authority": "West Mercia Police",
            "recipient": POLICE_ADDRESS, "area": "West Mercia police force area", "request_date": "2026-11-25",
            "homes_file": extract.homes.name, "home_count": extract.home_count,
            "enforcement_file": extract.enforcement.name, "enforcement_count": extract.enforcement_count,
            "purpose": "Safeguarding children", "contact": "gateway-admin@hmci.example", "subscription": None,
        },
    )  # fmt: skip
    inner = inner_message(envelope, text, extract.files)
    encrypted = keyring.sign_and_encrypt(inner, keys.police.fingerprint, signer)
    return outer_message(envelope, encrypted), reference


def test_the_reply_opens_in_gpg_with_a_good_signature_from_the_gateway(
    gateway_keyring: tuple[Keyring, str], keys: AuthorityKeys, tmp_path: Path
) -> None:
    keyring, signer = gateway_keyring
    wire, reference = build_reply(keyring, signer, keys)

    outer = message_from_bytes(wire, policy=policy.default)
    assert isinstance(outer, EmailMessage)
    assert outer["Subject"] == f"[{MARKING}] {reference}"
    assert outer["SIO-Label"] == f'marking="{MARKING}"'
    assert outer["Auto-Submitted"] == "auto-replied"
    assert outer["In-Reply-To"] == "<request-1@westmercia.police.example>"
    assert outer.get_content_type() == "multipart/encrypted"
    assert outer.get_param("protocol") == "application/pgp-encrypted"
    control, payload = outer.iter_parts()
    assert control.get_content_type() == "application/pgp-encrypted"
    assert payload_bytes(control).strip() == b"Version: 1"
    # Nothing that says where, or about whom, is readable on the wire.
    for secret in (b"West Mercia", b"Oakfield", b"SC100001", b"Safeguarding"):
        assert secret not in wire

    (tmp_path / "gateway.asc").write_text(keyring.export_public(signer))
    assert recipient_gpg(keys, "--import", str(tmp_path / "gateway.asc")).returncode == 0
    decrypted = recipient_gpg(keys, "--decrypt", data=payload_bytes(payload))
    assert decrypted.returncode == 0, decrypted.stderr
    status = decrypted.stderr.decode()
    assert f"[GNUPG:] VALIDSIG {signer}" in status
    assert "[GNUPG:] GOODSIG" in status
    assert "[GNUPG:] DECRYPTION_OKAY" in status

    inner = message_from_bytes(decrypted.stdout, policy=policy.default)
    assert isinstance(inner, EmailMessage)
    assert inner["Subject"].startswith("Register of children's homes: West Mercia police force area")
    assert inner.get_param("protected-headers") == "v1"
    body = inner.get_body(preferencelist=("plain",))
    assert body is not None
    text = body.get_content().strip().splitlines()
    assert text[0] == MARKING
    assert text[-1] == MARKING
    assert "Information Commissioner" in "\n".join(text)
    names = [part.get_filename() for part in inner.iter_attachments()]
    assert names == [f"{MARKING}-{reference}-homes.csv", f"{MARKING}-{reference}-enforcement.csv"]
    for part in inner.iter_attachments():
        assert part.get_content().splitlines()[0] == MARKING


def test_no_usable_recipient_key_means_no_message(gateway_keyring: tuple[Keyring, str]) -> None:
    keyring, signer = gateway_keyring
    with pytest.raises(KeyProblem, match="could not sign and encrypt"):
        keyring.sign_and_encrypt(b"register data", "0" * 40, signer)


def test_a_configured_directory_overrides_single_templates(tmp_path: Path) -> None:
    (tmp_path / "refusal.txt.j2").write_text("{{ marking }}\nLocal wording for {{ reference }}\n{{ marking }}\n")
    templates = Templates(tmp_path)
    assert templates.render("refusal.txt.j2", {"marking": MARKING, "reference": "R-9"}).splitlines()[1] == (
        "Local wording for R-9"
    )
    alert = templates.render(
        "alert.txt.j2",
        {"title": "t", "date": "d", "outcome": "o", "reason": "r", "sender": None, "authority": None,
         "message_id": None, "sha256": "s"},
    )  # fmt: skip
    assert alert.startswith("Register disclosure gateway: t")  # not overridden: the shipped one


@pytest.mark.parametrize(
    "subject",
    [
        "Register gateway: someone tried to use your name (HMCI-20261206-005626BF)",
        "Register of children's homes: Staffordshire police force area and more words besides (HMCI-1)",
        "x" * 100 + " tail",
    ],
)
def test_a_long_subject_is_folded_at_its_spaces_and_reads_back_exactly(subject: str) -> None:
    field = _header("Subject", subject)
    lines = field.split("\r\n")[:-1]
    assert lines[0].startswith("Subject: ")  # the first word stays on the field's own line
    assert all(len(line) <= 78 or len(line.split()) <= 2 for line in lines)  # longer only for one long word
    parsed = message_from_bytes((field + "\r\n").encode(), policy=policy.default)
    assert str(parsed["Subject"]) == subject  # no leading space, as a value moved whole to a new line would have
