"""Time moved by hand: `schedule run --as-of`, and the `walker` gateway whose keys never age, asked by requests signed
at a given moment."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from gateway.crypto import Keyring
from gateway.dev.sample import write_sample
from tests.support.addresses import GATEWAY_ADDRESS, POLICE_ADDRESS
from tests.support.gateway_cli import Gateway
from tests.support.keys import TIMELESS_KEYS_MADE, AuthorityKeys, run_gpg
from tests.support.requests import BORDER, FROM_POLICE, signed_message

MONTHLY = "Request: disclosure\r\nFrequency: monthly\r\nPurpose: Safeguarding children in our area\r\n"


def run(gateway: Gateway, as_of: dt.datetime) -> dict[str, int]:
    out = gateway.ok("schedule", "run", "--as-of", as_of.isoformat())
    counts = out.split(": ", 1)[1].split(" (")[0]
    return {kind: int(n) for n, kind in (part.split(" ", 1) for part in counts.split(", "))}


@pytest.fixture
def walker(fresh_gateway: Gateway, keys: AuthorityKeys, tmp_path: Path) -> Gateway:
    """`live`, with every key made on a fixed day long past and never expiring, so that a walk through time can
    start from fixed dates: gpg then judges each signature the same, whatever today's date is."""
    home = fresh_gateway.gnupg_home
    Keyring.create_home(home)
    made = ["--faked-system-time", TIMELESS_KEYS_MADE]
    run_gpg(
        home, *made, "--quick-gen-key", f"HMCI register gateway <{GATEWAY_ADDRESS}>", "ed25519", "sign,cert", "never"
    )
    listing = run_gpg(home, "--with-colons", "--list-secret-keys").decode()
    fingerprint = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr"))
    run_gpg(home, *made, "--quick-add-key", fingerprint, "cv25519", "encr", "never")
    fresh_gateway.signing_key, fresh_gateway.authserv_id = fingerprint, BORDER
    fresh_gateway.write_config()
    fresh_gateway.ok("init")
    sample = write_sample(tmp_path / "register", 800, seed=5)
    fresh_gateway.ok(
        "register", "import", "--homes", str(sample.homes_path), "--enforcement", str(sample.enforcement_path)
    )
    fresh_gateway.ok(
        "authority", "add", "--name", "West Mercia Police", "--kind", "police", "--area", "West Mercia",
        "--email", POLICE_ADDRESS, "--key", str(keys.police_timeless.write(tmp_path, "police.asc")),
    )  # fmt: skip
    return fresh_gateway


def police_at(keys: AuthorityKeys, body: str, message_id: str, at: dt.datetime) -> bytes:
    """A request from the police, signed with the timeless key by a gpg whose clock says `at`."""
    headers = FROM_POLICE + f"Message-ID: <{message_id}@westmercia.police.example>\n"
    return signed_message(keys, keys.police_timeless.fingerprint, body=body, headers=headers, at=at)
