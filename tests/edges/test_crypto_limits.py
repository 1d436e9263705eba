"""Hostile mail against gpg: a decompression bomb, a flood of signatures, a gpg that takes too long.

Everything here is real gpg on real OpenPGP data made at test time; nothing is mocked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.crypto import Keyring
from gateway.gpgrun import DECRYPT_MAX_BYTES, GpgLimitExceeded, KeyProblem
from tests.support.keys import AuthorityKeys, gateway_keyring, run_gpg
from tests.support.processes import children

BOMB_PLAINTEXT = 200 * 1024 * 1024  # zeros: compressed by gpg to a few hundred KB
PROJECT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Recipient:
    ring: Keyring
    fingerprint: str


@pytest.fixture(scope="module")
def recipient(tmp_path_factory: pytest.TempPathFactory, keys: AuthorityKeys) -> Iterator[Recipient]:
    """A gateway-like home: its own secret key, the police key pinned, and its public key known to the police."""
    with gateway_keyring(tmp_path_factory.mktemp("limits-gnupg"), keys, "Limits test gateway", keys.police) as made:
        yield Recipient(*made)


@pytest.fixture(scope="module")
def bomb(recipient: Recipient, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """200 MB of zeros, zlib level 9, encrypted to the recipient: a small message with an enormous plaintext."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.gpg"
    with path.open("wb") as out:  # to a file: gpg's output never backs up while the zeros go in
        encrypt = subprocess.Popen(
            ["gpg", "--homedir", str(recipient.ring.home), "--batch", "--trust-model", "always", "--compress-algo",
             "zlib", "--compress-level", "9", "--encrypt", "--recipient", recipient.fingerprint],
            stdin=subprocess.PIPE, stdout=out, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        assert encrypt.stdin is not None
        zeros = bytes(1024 * 1024)
        for _ in range(BOMB_PLAINTEXT // len(zeros)):
            encrypt.stdin.write(zeros)
        encrypt.stdin.close()
        assert encrypt.wait(timeout=60) == 0
    return path.read_bytes()


def encrypted(keys: AuthorityKeys, recipient: Recipient, plaintext: bytes, *, sign: bool = True) -> bytes:
    signing = ["--sign", "--local-user", keys.police.fingerprint] if sign else []
    return run_gpg(keys.home, "--trust-model", "always", "--armor", "--encrypt", "--recipient", recipient.fingerprint,
               *signing, data=plaintext)  # fmt: skip


def gpg_children() -> list[str]:
    """gpg processes, running or zombie, whose parent is this test process."""
    return children(lambda name: name.startswith("gpg"))


# ---------------------------------------------------------------- decryption


def test_the_bomb_is_small_and_its_plaintext_is_not(bomb: bytes) -> None:
    assert len(bomb) < 1024 * 1024  # what the gateway receives: well under the 10 MB mail limit
    assert BOMB_PLAINTEXT > DECRYPT_MAX_BYTES * 4


def test_a_decompression_bomb_is_refused_at_the_limit_and_gpg_reaped(recipient: Recipient, bomb: bytes) -> None:
    started = time.monotonic()
    with pytest.raises(GpgLimitExceeded, match=f"^the decrypted message is larger than {DECRYPT_MAX_BYTES} bytes$"):
        recipient.ring.decrypt(bomb)
    assert time.monotonic() - started < 10  # stopped at 25 MB, not after 200
    assert gpg_children() == []


MEASURE = """
import json, sys
from pathlib import Path
from gateway.crypto import Keyring
from gateway.gpgrun import KeyProblem

def peak_kb():  # this process's own high-water mark of resident memory
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))

ring = Keyring(Path(sys.argv[1]))
bomb = Path(sys.argv[2]).read_bytes()
before = peak_kb()
try:
    ring.decrypt(bomb, max_bytes=int(sys.argv[3]))
    outcome = "decrypted"
except KeyProblem as exc:
    outcome = str(exc)
print(json.dumps({"outcome": outcome, "grown_kb": peak_kb() - before}))
"""


def peak_growth(recipient: Recipient, bomb_file: Path, limit: int) -> tuple[str, int]:
    """Decrypt in a fresh interpreter and report how far that raised its peak resident memory, in bytes.

    Not ru_maxrss: on Linux a child inherits its parent's peak across fork and exec, so a child of this test
    process would start at pytest's peak. VmHWM belongs to the new program alone.
    """
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, str(recipient.ring.home), str(bomb_file), str(limit)],
        cwd=PROJECT, capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    report = json.loads(result.stdout)
    return str(report["outcome"]), int(report["grown_kb"]) * 1024


def test_the_bomb_raises_peak_memory_by_little_more_than_the_limit(
    recipient: Recipient, bomb: bytes, tmp_path: Path
) -> None:
    bomb_file = tmp_path / "bomb.gpg"
    bomb_file.write_bytes(bomb)
    outcome, grown = peak_growth(recipient, bomb_file, DECRYPT_MAX_BYTES)
    assert outcome == f"the decrypted message is larger than {DECRYPT_MAX_BYTES} bytes"
    assert grown < 50 * 1024 * 1024
    # The measure is live: allowed 120 MB, the same bomb does take that much memory before it is stopped.
    outcome, grown = peak_growth(recipient, bomb_file, 120 * 1024 * 1024)
    assert outcome == f"the decrypted message is larger than {120 * 1024 * 1024} bytes"
    assert grown > 100 * 1024 * 1024


def test_gpg_running_too_long_is_killed_and_reaped(recipient: Recipient, bomb: bytes) -> None:
    # No size limit to speak of: producing 200 MB through a pipe cannot be done in 50 ms.
    started = time.monotonic()
    with pytest.raises(GpgLimitExceeded, match=r"^gpg did not finish within 0\.05 seconds$"):
        recipient.ring.decrypt(bomb, max_bytes=10 * BOMB_PLAINTEXT, timeout=0.05)
    assert time.monotonic() - started < 3
    assert gpg_children() == []


def test_a_signed_message_still_decrypts_with_its_signature(keys: AuthorityKeys, recipient: Recipient) -> None:
    plaintext = b"Request: disclosure\r\nPurpose: Safeguarding children in our force area\r\n" * 100
    opened = recipient.ring.decrypt(encrypted(keys, recipient, plaintext))
    assert opened.data == plaintext
    assert opened.signature.good
    assert opened.signature.primary_fingerprint == keys.police.fingerprint
    assert opened.signature.signed_at is not None
    assert gpg_children() == []


def test_the_limit_is_exact(keys: AuthorityKeys, recipient: Recipient) -> None:
    plaintext = os.urandom(300_000)  # incompressible, and larger than any pipe buffer
    message = encrypted(keys, recipient, plaintext)
    assert recipient.ring.decrypt(message, max_bytes=len(plaintext)).data == plaintext
    with pytest.raises(GpgLimitExceeded, match=f"larger than {len(plaintext) - 1} bytes"):
        recipient.ring.decrypt(message, max_bytes=len(plaintext) - 1)


def test_an_unsigned_message_decrypts_as_unsigned(keys: AuthorityKeys, recipient: Recipient) -> None:
    opened = recipient.ring.decrypt(encrypted(keys, recipient, b"hello\n", sign=False))
    assert opened.data == b"hello\n"
    assert not opened.signature.signed
    assert not opened.signature.good


def test_a_message_for_another_key_is_a_key_problem_not_a_limit(keys: AuthorityKeys, recipient: Recipient) -> None:
    for_police = run_gpg(keys.home, "--trust-model", "always", "--armor", "--encrypt", "--recipient",
                     keys.police.fingerprint, data=b"not for the gateway")  # fmt: skip
    with pytest.raises(KeyProblem, match="could not be decrypted") as raised:
        recipient.ring.decrypt(for_police)
    assert not isinstance(raised.value, GpgLimitExceeded)


def test_a_large_ordinary_message_is_fed_and_read_without_deadlock(keys: AuthorityKeys, recipient: Recipient) -> None:
    # 8 MB in, 8 MB out at once: gpg must never wait on a pipe nobody reads.
    plaintext = os.urandom(8 * 1024 * 1024)
    opened = recipient.ring.decrypt(encrypted(keys, recipient, plaintext), timeout=20)
    assert opened.data == plaintext
    assert opened.signature.good


# ---------------------------------------------------------------- detached signatures


def detached(keys: AuthorityKeys, signer: str, data: bytes) -> bytes:
    return run_gpg(keys.home, "--detach-sign", "--local-user", signer, data=data)


def test_a_detached_signature_still_verifies(keys: AuthorityKeys, recipient: Recipient) -> None:
    data = b"Request: disclosure\r\n"
    status = recipient.ring.verify_detached(data, detached(keys, keys.police.fingerprint, data))
    assert status.good
    assert status.primary_fingerprint == keys.police.fingerprint
    bad = recipient.ring.verify_detached(data + b"x", detached(keys, keys.police.fingerprint, data))
    assert not bad.good
    assert bad.problem == "the signature does not match the signed part (it was altered or only partly signed)"
    assert bad.code == "BADSIG"  # what authenticate.py tells a CRLF mistake by, never the words above


def test_a_flood_of_signatures_is_stopped_by_the_status_limit(keys: AuthorityKeys, recipient: Recipient) -> None:
    # 8,000 copies of one signature by a key the gateway does not hold (cheap for gpg to reject, ~150 bytes of
    # status each): under 1 MB of signature part, over 1 MB of status.
    data = b"Request: disclosure\r\n"
    flood = detached(keys, keys.la.fingerprint, data) * 8000
    assert len(flood) < 1024 * 1024
    status = recipient.ring.verify_detached(data, flood)
    assert not status.good
    assert status.problem == "the signature could not be checked: gpg reported more than 1048576 bytes of status"
    assert gpg_children() == []


def test_a_flood_of_good_signatures_is_stopped_in_time(keys: AuthorityKeys, recipient: Recipient) -> None:
    # Signatures by a key the gateway holds cost gpg milliseconds each: 3,000 of them (350 KB) would keep it
    # busy for many seconds. One limit or the other stops it.
    data = b"Request: disclosure\r\n"
    flood = detached(keys, keys.police.fingerprint, data) * 3000
    started = time.monotonic()
    status = recipient.ring.verify_detached(data, flood, timeout=1)
    assert time.monotonic() - started < 5
    assert not status.good
    assert status.problem in (
        "the signature could not be checked: gpg did not finish within 1 seconds",
        "the signature could not be checked: gpg reported more than 1048576 bytes of status",
    )
    assert gpg_children() == []
