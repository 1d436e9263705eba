"""Sequoia (`sq`) and RNP (`rnp`, Thunderbird's OpenPGP engine), implementations nobody here wrote, opening the
gateway's replies and signing requests with the authorities' keys as exported from their GnuPG home."""

from __future__ import annotations

import itertools
import os
import quopri
import shutil
import subprocess
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Protocol

import pytest

from gateway.signatures import hashed_subpackets
from tests.support.keys import run_gpg
from tests.support.live import as_shown

REQUIRE_CLIENTS_ENV = "GATEWAY_TEST_REQUIRE_CLIENTS"
CLIENTS = ("sq", "rnp")

_RUNS = itertools.count()


def require_tool(command: str) -> None:
    """Skip the test when `command` is not installed; fail it instead when GATEWAY_TEST_REQUIRE_CLIENTS is set."""
    if shutil.which(command) is not None:
        return
    reason = f"{command} is not installed (scripts/test installs it: Debian package {command})"
    if os.environ.get(REQUIRE_CLIENTS_ENV):
        pytest.fail(reason)
    pytest.skip(reason)


def _run(*command: str, data: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """The command with its output kept; a failure raises with what it said."""
    result = subprocess.run(command, input=data, capture_output=True, check=False, timeout=120)
    if result.returncode != 0:
        said = result.stderr.decode(errors="replace")
        raise AssertionError(f"{' '.join(command[:2])} exited {result.returncode}: {said}")
    return result


def encrypted_payload(wire: bytes) -> bytes:
    """The OpenPGP message inside a PGP/MIME (RFC 3156) multipart/encrypted reply."""
    outer = message_from_bytes(wire, policy=policy.default)
    assert isinstance(outer, EmailMessage)
    assert outer.get_content_type() == "multipart/encrypted"
    assert outer.get_param("protocol") == "application/pgp-encrypted"
    control, data = outer.iter_parts()
    assert control.get_content_type() == "application/pgp-encrypted"
    payload = data.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload


@dataclass(frozen=True)
class Opened:
    """A reply as the client opened it: the decrypted inner message, its bytes, and what the client said."""

    inner: EmailMessage
    wire: bytes
    said: str


class Client(Protocol):
    @property
    def name(self) -> str: ...

    def open(self, payload: bytes, recipient: str, gateway_cert: bytes, gateway_key: str) -> Opened:
        """Decrypt with the recipient's secret key; verify the signature with the gateway's certificate alone
        (whose fingerprint is `gateway_key`): an AssertionError unless it is good."""

    def sign(self, data: bytes, signer: str) -> bytes:
        """An armoured detached signature over exactly `data` by the signer's key."""


@dataclass(frozen=True)
class _Keys:
    """The authorities' secret keys, exported from their GnuPG home (unprotected, as the test keys are made)."""

    gnupg_home: Path
    directory: Path

    def secret(self, fingerprint: str) -> Path:
        path = self.directory / f"{fingerprint}.sec.asc"
        if not path.exists():
            path.write_bytes(run_gpg(self.gnupg_home, "--armor", "--export-secret-keys", fingerprint))
        return path

    def file(self, name: str, content: bytes) -> Path:
        path = self.directory / f"{next(_RUNS)}-{name}"
        path.write_bytes(content)
        return path


def _parsed(data: bytes, said: str) -> Opened:
    inner = message_from_bytes(data, policy=policy.default)
    assert isinstance(inner, EmailMessage)
    return Opened(as_shown(inner), data, said)  # the text as the client shows it: flowed lines joined


@dataclass(frozen=True)
class Sequoia:
    """`sq` 0.27: keys and certificates as files, no keyring; decrypt fails unless a signature verifies."""

    keys: _Keys
    name: str = "sq"

    def open(self, payload: bytes, recipient: str, gateway_cert: bytes, gateway_key: str) -> Opened:
        cert = self.keys.file("gateway.asc", gateway_cert)
        result = _run(
            "sq", "decrypt", "--recipient-key", str(self.keys.secret(recipient)), "--signer-cert", str(cert),
            "--signatures", "1", data=payload,
        )  # fmt: skip
        said = result.stderr.decode(errors="replace")
        assert f"Good signature from {gateway_key[-16:].upper()}" in said, said
        assert "1 good signature." in said, said
        return _parsed(result.stdout, said)

    def sign(self, data: bytes, signer: str) -> bytes:
        signed = self.keys.file("signed-part", data)
        return _run("sq", "sign", "--detached", "--signer-key", str(self.keys.secret(signer)), str(signed)).stdout


@dataclass(frozen=True)
class Rnp:
    """`rnp` 0.16 with a keyring of its own (`--homedir`), as Thunderbird keeps one: the recipient's secret key
    and the gateway's certificate imported. It exits 0 even when no signature verifies: its words are read."""

    keys: _Keys
    name: str = "rnp"

    def _home(self, *imports: Path) -> Path:
        home = self.keys.directory / f"rnp-{next(_RUNS)}"
        home.mkdir(mode=0o700)
        for key in imports:
            _run("rnpkeys", "--homedir", str(home), "--import", str(key))
        return home

    def open(self, payload: bytes, recipient: str, gateway_cert: bytes, gateway_key: str) -> Opened:
        home = self._home(self.keys.secret(recipient), self.keys.file("gateway.asc", gateway_cert))
        message = self.keys.file("reply.asc", payload)
        result = _run("rnp", "--homedir", str(home), "--decrypt", str(message), "--output", "-")
        said = result.stderr.decode(errors="replace")
        assert "Good signature made" in said, said
        assert f"key {gateway_key[-16:].lower()}" in said, said
        assert "Signature(s) verified successfully" in said, said
        return _parsed(result.stdout, said)

    def sign(self, data: bytes, signer: str) -> bytes:
        home = self._home(self.keys.secret(signer))
        signed = self.keys.file("signed-part", data)
        return _run(
            "rnp", "--homedir", str(home), "--sign", "--detach", "--armor", "--userid", signer, str(signed),
            "--output", "-",
        ).stdout  # fmt: skip


def client_named(name: str, gnupg_home: Path, directory: Path) -> Client:
    """The client `name` (one of CLIENTS), working in `directory`, once it is known to be installed."""
    require_tool(name)
    keys = _Keys(gnupg_home, directory)
    directory.mkdir(mode=0o700, exist_ok=True)
    return Sequoia(keys) if name == "sq" else Rnp(keys)


# ---------------------------------------------------------------- requests as these clients' users send them

_HASHES = {8: "sha256", 9: "sha384", 10: "sha512"}  # RFC 4880 9.4


def micalg(signature: bytes) -> str:
    """The multipart/signed micalg a client writes for this signature: its hash algorithm (RFC 3156 5)."""
    hashed = hashed_subpackets(signature)
    assert hashed is not None, "not one v4 signature packet"
    return f"pgp-{_HASHES[hashed[3]]}"


def pgp_mime_signed(headers: str, part: bytes, signature: bytes, *, signature_name: str = "signature.asc") -> bytes:
    """A multipart/signed message (RFC 3156) around `part`, exactly as signed, with this detached signature."""
    boundary = "------------a1B2c3D4e5F6g7H8i9J0k1L2"
    head = headers.replace("\n", "\r\n") + (
        f"MIME-Version: 1.0\r\nContent-Type: multipart/signed; micalg={micalg(signature)};\r\n"
        f' protocol="application/pgp-signature";\r\n boundary="{boundary}"\r\n'
    )
    return (
        head.encode()
        + b"\r\nThis is an OpenPGP/MIME signed message (RFC 4880 and 3156)\r\n"
        + f"--{boundary}\r\n".encode() + part + f"\r\n--{boundary}\r\n".encode()
        + f'Content-Type: application/pgp-signature; name="{signature_name}"\r\n'
          "Content-Description: OpenPGP digital signature\r\n"
          f'Content-Disposition: attachment; filename="{signature_name}"\r\n\r\n'.encode()
        + signature.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        + f"\r\n--{boundary}--\r\n".encode()
    )  # fmt: skip


def plain_part(body: str) -> bytes:
    """A single text/plain part, as most clients sign a short plain-text mail."""
    return f'Content-Type: text/plain; charset="utf-8"\r\nContent-Transfer-Encoding: 7bit\r\n\r\n{body}'.encode()


def flowed(text: str, width: int = 72) -> str:
    """Text as a client writes it in format=flowed (RFC 3676): long lines broken after a space, which it keeps
    at the end of the line (a soft break); space-stuffed where a line would start with a space, "From " or ">".
    Written apart from gateway.compose.flowed on purpose: the gateway's reader (requests.unflowed) is tested
    against a writer that shares no code, and no mistake, with the gateway's own."""
    out: list[str] = []
    for written in text.split("\n"):
        rest = written
        while len(rest) > width and " " in rest[:width]:
            cut = rest.rindex(" ", 0, width) + 1
            out.append(rest[:cut])
            rest = rest[cut:]
        out.append(rest)
    return "\n".join(" " + line if line.startswith((" ", "From ", ">")) else line for line in out)


def thunderbird_part(body: str, headers: str, sender_key: bytes, sender_fingerprint: str) -> bytes:
    """What Thunderbird (115 and later) signs: multipart/mixed with protected-headers="v1" and the message's own
    headers, holding a multipart/mixed of the text (format=flowed, quoted-printable so that the soft breaks'
    trailing spaces survive) and the sender's public key as OpenPGP_0x<key ID>.asc."""
    outer, inner = "------------Xq7Tb2vLmN4pR8sW1yZ3cE5f", "------------Hk9Gd6Ja0Uo3Ii8Ee2Rr5Tt7"
    text = quopri.encodestring(flowed(body).encode()).replace(b"\n", b"\r\n")
    name = f"OpenPGP_0x{sender_fingerprint[-16:]}.asc"
    key = sender_key.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return (
        f'Content-Type: multipart/mixed; boundary="{outer}";\r\n protected-headers="v1"\r\n'.encode()
        + headers.replace("\n", "\r\n").encode()
        + f"\r\n--{outer}\r\n"
          f'Content-Type: multipart/mixed; boundary="{inner}"\r\n\r\n'
          f"--{inner}\r\n"
          "Content-Type: text/plain; charset=UTF-8; format=flowed\r\n"
          "Content-Transfer-Encoding: quoted-printable\r\n\r\n".encode()
        + text
        + f"\r\n--{inner}\r\n"
          f'Content-Type: application/pgp-keys; name="{name}"\r\n'
          f'Content-Disposition: attachment; filename="{name}"\r\n'
          "Content-Description: OpenPGP public key\r\n"
          "Content-Transfer-Encoding: quoted-printable\r\n\r\n".encode()
        + key
        + f"\r\n--{inner}--\r\n\r\n--{outer}--\r\n".encode()
    )  # fmt: skip
