"""python-gnupg at the edge: inspect, import, pin, export and generate OpenPGP keys.

What comes from outside (decrypting and verifying incoming mail) runs gpg directly instead, bounded in the
bytes it may produce and the time it may take: python-gnupg reads all of gpg's output into memory.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import functools
import hashlib
import os
import re
import selectors
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar, cast

import gnupg

from gateway.addresses import normalise_address
from gateway.config import exposed
from gateway.errors import GatewayError

T = TypeVar("T")

# python-gnupg runs one gpg process per call; more than a few at once only queue on gpg-agent. A thread
# semaphore, not an asyncio one, because it must not belong to any one event loop.
_GPG_CALLS = threading.BoundedSemaphore(4)


class KeyProblem(GatewayError):
    """A key that cannot be used, or a keyring that cannot be opened."""


class GpgUnavailable(GatewayError):
    """gpg itself cannot be run: this machine's fault, never the sender's (so not a KeyProblem, which would make
    a genuine request look like an impostor's)."""


class GpgLimitExceeded(KeyProblem):
    """gpg was stopped: a message made it produce more than allowed, or take longer."""


# What gpg may make of one incoming message. A message is at most 10 MB (the inbound limit), so 25 MB of
# plaintext leaves room for base64 and ordinary compression; without a bound a compressed packet can turn a few
# MB of mail into gigabytes (a decompression bomb), all of it read into memory.
DECRYPT_MAX_BYTES = 25 * 1024 * 1024
GPG_TIMEOUT_SECONDS = 30.0
_MAX_STATUS_BYTES = 1024 * 1024  # a few status lines per key and signature: more is somebody's doing
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class _Finished:
    output: bytes
    status: str  # gpg's status lines (--status-fd), on a pipe of their own: its messages on stderr are dropped
    returncode: int


class _Pump:
    """One running gpg and its four pipes: stdin fed, stdout, stderr and status read, all as they allow."""

    def __init__(self, process: subprocess.Popen[bytes], status: int, data: bytes, max_output: int, what: str):
        self.process = process
        # Started with all three as PIPE, so none is None.
        self.stdin = cast(IO[bytes], process.stdin)
        self.stdout = cast(IO[bytes], process.stdout)
        self.stderr = cast(IO[bytes], process.stderr)
        self.status_fd = status
        self.pending = memoryview(data)
        self.max_output = max_output
        self.what = what
        self.output: list[bytes] = []
        self.size = 0
        self.status = bytearray()

    def run(self, timeout: float) -> _Finished:
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(self.stdout.fileno(), selectors.EVENT_READ, self._output)
            selector.register(self.stderr.fileno(), selectors.EVENT_READ, lambda chunk: None)  # drained
            selector.register(self.status_fd, selectors.EVENT_READ, self._status)
            if self.pending:
                os.set_blocking(self.stdin.fileno(), False)
                selector.register(self.stdin.fileno(), selectors.EVENT_WRITE, None)
            else:
                self.stdin.close()
            reading = 3
            while reading:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise GpgLimitExceeded(f"gpg did not finish within {timeout:g} seconds")
                for key, _ in selector.select(remaining):
                    if key.data is None:
                        self._feed(selector, key.fd)
                        continue
                    chunk = os.read(key.fd, _CHUNK)
                    if chunk:
                        key.data(chunk)
                    else:
                        selector.unregister(key.fd)
                        reading -= 1
        try:
            self.process.wait(max(deadline - time.monotonic(), 0.001))
        except subprocess.TimeoutExpired:
            raise GpgLimitExceeded(f"gpg did not finish within {timeout:g} seconds") from None
        return _Finished(b"".join(self.output), self.status.decode("utf-8", "replace"), self.process.returncode)

    def _feed(self, selector: selectors.BaseSelector, fd: int) -> None:
        try:
            self.pending = self.pending[os.write(fd, self.pending[:_CHUNK]) :]
        except BlockingIOError:
            return
        except BrokenPipeError:  # gpg stopped reading; its status says why
            self.pending = self.pending[:0]
        if not self.pending:
            selector.unregister(fd)
            self.stdin.close()

    def _output(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.max_output:
            raise GpgLimitExceeded(f"{self.what} is larger than {self.max_output} bytes")
        self.output.append(chunk)

    def _status(self, chunk: bytes) -> None:
        self.status += chunk
        if len(self.status) > _MAX_STATUS_BYTES:
            raise GpgLimitExceeded(f"gpg reported more than {_MAX_STATUS_BYTES} bytes of status")

    def close(self) -> None:
        """Kill gpg if it still runs, reap it, close every pipe."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for stream in (self.stdin, self.stdout, self.stderr):
            with suppress(OSError):
                stream.close()
        os.close(self.status_fd)


def _run_bounded(command: list[str], data: bytes, *, max_output: int, timeout: float, what: str) -> _Finished:
    """Run gpg on `data` (its stdin), reading its output, status and messages as they come.

    gpg is killed and GpgLimitExceeded raised once its output passes `max_output` bytes (`what` names that
    output in the error), its status passes _MAX_STATUS_BYTES, or it has run `timeout` seconds. Every pipe is
    drained all along, so gpg never blocks on a full one, and the process is always reaped.
    """
    status_read, status_write = os.pipe()
    try:
        process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            [command[0], "--status-fd", str(status_write), *command[1:]],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(status_write,),
        )
    except OSError as exc:
        os.close(status_read)
        raise GpgUnavailable(f"cannot run {command[0]}: {exc.strerror or exc}") from None
    finally:
        os.close(status_write)
    pump = _Pump(process, status_read, data, max_output, what)
    try:
        return pump.run(timeout)
    finally:
        pump.close()


@dataclass(frozen=True)
class KeyInfo:
    fingerprint: str
    user_ids: tuple[str, ...]
    emails: frozenset[str]
    created: dt.datetime
    # When the key stops being usable to encrypt to: the primary's expiry or, if sooner, that of the last
    # valid encryption subkey. None means never.
    expires: dt.datetime | None
    revoked: bool
    expired: bool
    can_encrypt: bool
    can_sign: bool
    weaknesses: tuple[str, ...] = ()
    # When the key stops being able to sign: the primary's expiry or, if sooner, that of the last signing key.
    signing_expires: dt.datetime | None = None
    # The primary key and each valid subkey: "primary EdDSA ed25519 sign,certify expires 2028-12-06", say.
    algorithms: tuple[str, ...] = ()

    def problems(self, now: dt.datetime | None = None) -> list[str]:
        """Why this key cannot be pinned for an authority, if it cannot (the root cause only)."""
        moment = now or dt.datetime.now(dt.UTC)
        if self.revoked:
            return ["the key is revoked"]
        if self.expired or (self.expires is not None and self.expires <= moment):
            when = self.expires.date().isoformat() if self.expires else "an unknown date"
            return [f"the key expired on {when}"]
        if not self.can_encrypt:
            return ["the key has no valid encryption-capable subkey"]
        return list(self.weaknesses)


# OpenPGP public-key algorithm ids (RFC 4880 9.1) whose strength is their length in bits.
_LENGTH_ALGORITHMS = {"1": "RSA", "2": "RSA", "3": "RSA", "16": "ElGamal", "17": "DSA", "20": "ElGamal"}
MIN_KEY_BITS = 2048


# OpenPGP public-key algorithm ids (RFC 4880 9.1, RFC 6637, RFC 9580) as people name them.
_ALGORITHM_NAMES = {
    "1": "RSA", "2": "RSA", "3": "RSA", "16": "ElGamal", "17": "DSA", "18": "ECDH", "19": "ECDSA", "22": "EdDSA",
    "25": "X25519", "26": "X448", "27": "Ed25519", "28": "Ed448",
}  # fmt: skip
_CAPABILITIES = {"s": "sign", "c": "certify", "e": "encrypt", "a": "authenticate"}


def _describe_key(role: str, record: dict[str, Any]) -> str:
    algo = record.get("algo", "")
    name = _ALGORITHM_NAMES.get(algo, f"algorithm-{algo}")
    size = record.get("curve") or f"{record.get('length') or '?'} bits"
    uses = ",".join(word for letter, word in _CAPABILITIES.items() if letter in record.get("cap", ""))
    expires = _epoch(record.get("expires", ""))
    until = f"expires {expires.isoformat().replace('+00:00', 'Z')}" if expires else "never expires"
    return f"{role} {name} {size} {uses or 'no-use'} {until}"


def _epoch(value: str) -> dt.datetime | None:
    return dt.datetime.fromtimestamp(int(value), dt.UTC) if value else None


def uid_address(uid: str) -> str | None:
    """A user ID's mailbox as gpg and mail clients read it: the last <...>, else the whole ID; None if invalid."""
    match = re.search(r"<([^<>]*)>\s*$", uid)
    try:
        return normalise_address(match[1] if match else uid)
    except ValueError:
        return None


def _usable(record: dict[str, str]) -> bool:
    # Validity letters (gpg's DETAILS, field 2): r revoked, e expired, i invalid, d disabled.
    return record.get("trust", "") not in ("r", "e", "i", "d")


def _effective_expiry(entry: dict[str, Any], capability: str = "e") -> dt.datetime | None:
    never = dt.datetime.max.replace(tzinfo=dt.UTC)
    capable = [entry] if capability in entry.get("cap", "") else []
    capable += [s for s in entry.get("subkey_info", {}).values() if capability in s.get("cap", "") and _usable(s)]
    latest = max((_epoch(s.get("expires", "")) or never for s in capable), default=never)
    soonest = min(_epoch(entry.get("expires", "")) or never, latest)
    return None if soonest == never else soonest


def _weaknesses(entry: dict[str, Any]) -> tuple[str, ...]:
    found = []
    for record in [entry, *(s for s in entry.get("subkey_info", {}).values() if _usable(s))]:
        name = _LENGTH_ALGORITHMS.get(record.get("algo", ""))
        bits = int(record.get("length") or 0)
        if name and bits < MIN_KEY_BITS:
            found.append(f"it uses a {bits}-bit {name} key (at least {MIN_KEY_BITS} bits are needed)")
    return tuple(dict.fromkeys(found))


def _key_info(entry: dict[str, Any], uid_map: dict[str, dict[str, str]]) -> KeyInfo:
    # Upper-case capability letters (field 12) are what the key as a whole can do now, counting only its
    # valid subkeys; revoked and expired user IDs are left out.
    uids = tuple(uid for uid in entry["uids"] if uid_map.get(uid, {}).get("trust") not in ("r", "e"))
    emails = frozenset(address for address in map(uid_address, uids) if address is not None)
    cap = entry.get("cap", "")
    return KeyInfo(
        fingerprint=entry["fingerprint"],
        user_ids=uids,
        emails=emails,
        created=_epoch(entry["date"]) or dt.datetime.fromtimestamp(0, dt.UTC),
        expires=_effective_expiry(entry),
        revoked=entry.get("trust") == "r",
        expired=entry.get("trust") == "e",
        can_encrypt="E" in cap,
        can_sign="S" in cap,
        weaknesses=_weaknesses(entry),
        signing_expires=_effective_expiry(entry, "s"),
        algorithms=(
            _describe_key("primary", entry),
            *(_describe_key("subkey", sub) for sub in entry.get("subkey_info", {}).values() if _usable(sub)),
        ),
    )


def kill_agent(home: Path) -> None:
    """gpg-agent outlives the process that started it, one per home: stop it when the home is done with."""
    if shutil.which("gpgconf"):
        subprocess.run(  # noqa: S603 - fixed argv, no shell
            ["gpgconf", "--homedir", str(home), "--kill", "all"],  # noqa: S607 - gpgconf from PATH, like gpg
            check=False,
            capture_output=True,
            timeout=30,
        )


SOCKET_PATH_MAX = 107  # a Unix socket's path must fit in 108 bytes, its terminating NUL included


def _check_socket_room(home: Path) -> None:
    """gpg-agent puts its sockets in the home unless /run/user/UID exists; a long home path then breaks it
    with nothing clearer than "can't connect to the agent"."""
    longest = home.absolute() / "S.gpg-agent.browser"
    if len(str(longest).encode()) > SOCKET_PATH_MAX and not Path(f"/run/user/{os.getuid()}").is_dir():
        raise KeyProblem(
            f"the GnuPG home {home} is too long a path for gpg-agent's sockets "
            f"({len(str(longest).encode())} bytes with the socket's name, at most {SOCKET_PATH_MAX}): "
            "use a shorter path"
        )


class Keyring:
    """One GnuPG home. Keys are always named by full fingerprint, never looked up by user ID."""

    def __init__(self, home: Path, binary: str = "gpg") -> None:
        self.home = home
        self.binary = binary
        if shutil.which(binary) is None:
            raise KeyProblem(f"{binary} not found: install GnuPG (Debian: apt-get install gnupg)")
        _check_socket_room(home)
        try:
            self._gpg = gnupg.GPG(gpgbinary=binary, gnupghome=str(home))
        except (OSError, ValueError) as exc:
            raise KeyProblem(f"cannot use GnuPG home {home}: {exc}") from None
        self._gpg.encoding = "utf-8"
        self._inspected: dict[str, tuple[float, KeyInfo | None]] = {}

    @classmethod
    def private(cls, home: Path, binary: str = "gpg") -> Keyring:
        """The gateway's own keyring, refused when other users can open its home: whoever can read it can sign
        and decrypt as the gateway."""
        problem = exposed(home)
        if problem:
            raise KeyProblem(f"the GnuPG home is not private: {problem}")
        return cls(home, binary)

    @staticmethod
    def create_home(home: Path) -> bool:
        """Make the GnuPG home private to this user (gpg refuses unsafe homes); True if it was created."""
        created = not home.exists()
        try:
            home.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(home, 0o700)
        except OSError as exc:
            raise KeyProblem(f"cannot create GnuPG home {home}: {exc.strerror or exc}") from None
        return created

    def inspect(self, fingerprint: str) -> KeyInfo | None:
        listing = self._gpg.list_keys(keys=[fingerprint])
        for entry in listing:
            if entry["fingerprint"] == fingerprint:
                return _key_info(entry, listing.uid_map)
        return None

    def inspect_cached(self, fingerprint: str, seconds: float = 60.0) -> KeyInfo | None:
        """inspect(), remembered for a minute: a gpg process per answer just to read a key is most of a request's
        cost. Safe to be a minute late: gpg itself refuses to encrypt to a key revoked or expired since."""
        known, info = self.remembered(fingerprint, seconds)
        if not known:
            info = self.inspect(fingerprint)
            self._inspected[fingerprint] = (time.monotonic(), info)
        return info

    def remembered(self, fingerprint: str, seconds: float = 60.0) -> tuple[bool, KeyInfo | None]:
        """(True, what inspect_cached would return) when that needs no gpg; (False, None) when it does."""
        cached = self._inspected.get(fingerprint)
        if cached is not None and time.monotonic() - cached[0] < seconds:
            return True, cached[1]
        return False, None

    def has_secret(self, fingerprint: str) -> bool:
        return fingerprint in self.secret_fingerprints()

    def import_public(self, data: bytes) -> str:
        """Import exactly one public key; returns its fingerprint. Inspect it with `scan_key` first."""
        result = self._gpg.import_keys(data)
        fingerprints = sorted(set(result.fingerprints))
        if len(fingerprints) != 1:
            raise KeyProblem(f"expected to import one key, gpg imported {len(fingerprints)}")
        return str(fingerprints[0])

    def export_public(self, fingerprint: str, *, minimal: bool = False) -> str:
        armored = self._gpg.export_keys([fingerprint], armor=True, minimal=minimal)
        text = armored if isinstance(armored, str) else armored.decode("ascii")
        if "BEGIN PGP PUBLIC KEY BLOCK" not in text:
            raise KeyProblem(f"no public key {fingerprint} in {self.home}")
        return text

    def delete_public(self, fingerprint: str) -> None:
        self._gpg.delete_keys([fingerprint])

    def secret_fingerprints(self) -> list[str]:
        return [entry["fingerprint"] for entry in self._gpg.list_keys(secret=True)]

    def sign_and_encrypt(self, data: bytes, recipient: str, signer: str) -> bytes:
        """One ASCII-armoured OpenPGP message signed by `signer` and encrypted to `recipient` alone (RFC 3156 6.2).

        Both are full fingerprints. Nothing is sent in the clear if this fails: the caller gets KeyProblem.
        """
        # --trust-model always only skips the web-of-trust check: the recipient was pinned by fingerprint already,
        # and gpg still refuses an expired or revoked key. One gpg, its pipes read here: no helper threads.
        command = self._gpg_command(
            "--trust-model", "always", "--armor", "--local-user", signer, "--recipient", recipient,
            "--sign", "--encrypt",
        )  # fmt: skip
        try:
            finished = _run_bounded(
                command, data, max_output=4 * len(data) + _CHUNK * 16, timeout=GPG_TIMEOUT_SECONDS, what="the reply"
            )
        except GpgLimitExceeded as exc:
            raise KeyProblem(f"gpg could not sign and encrypt to {recipient}: {exc}") from None
        status = finished.status
        done = "[GNUPG:] SIG_CREATED" in status and "[GNUPG:] END_ENCRYPTION" in status and finished.output
        if finished.returncode != 0 or not done:
            lines = status.splitlines()
            reason = next((line for line in lines if "INV_RECP" in line or "FAILURE" in line or "INV_SGNR" in line), "")
            raise KeyProblem(f"gpg could not sign and encrypt to {recipient}: {(reason or status).strip()[-200:]}")
        return finished.output

    def _gpg_command(self, *args: str) -> list[str]:
        # No passphrase ever: the gateway's key has none, and --batch with loopback never prompts.
        return [self.binary, "--homedir", str(self.home), "--batch", "--no-tty", "--pinentry-mode", "loopback", *args]

    def verify_detached(
        self, data: bytes, signature: bytes, *, timeout: float = GPG_TIMEOUT_SECONDS
    ) -> SignatureStatus:
        """Check a detached signature over exactly these bytes.

        gpg writes nothing but its status here, and that is bounded like decryption's output: a signature part
        made of a flood of signatures, or of a compressed packet, is stopped and reported as not good.
        """
        with tempfile.NamedTemporaryFile(prefix="gateway-sig-", suffix=".asc") as sig:
            sig.write(signature)
            sig.flush()
            try:
                finished = _run_bounded(
                    self._gpg_command("--verify", sig.name, "-"),
                    data,
                    max_output=_MAX_STATUS_BYTES,
                    timeout=timeout,
                    what="gpg's output for a signature check",
                )
            except GpgLimitExceeded as exc:
                return SignatureStatus(False, None, None, f"the signature could not be checked: {exc}")
        return signature_status(finished.status)

    def signer(self, fingerprint: str | None) -> Callable[[bytes], bytes] | None:
        """Detached signing with this key (sign_detached), or None when there is none to sign with."""
        return None if fingerprint is None else functools.partial(self.sign_detached, signer=fingerprint)

    def sign_detached(self, data: bytes, signer: str) -> bytes:
        """An armoured detached signature over exactly these bytes (what a PGP/MIME client makes)."""
        # SHA-256, as the micalg of the PGP/MIME messages the gateway writes says.
        result = self._gpg.sign(
            data, keyid=signer, detach=True, passphrase=None, extra_args=["--digest-algo", "SHA256"]
        )
        if not result.data or "[GNUPG:] SIG_CREATED" not in (result.stderr or ""):
            raise KeyProblem(f"gpg could not sign with {signer}")
        return bytes(result.data)

    def decrypt(
        self, data: bytes, *, max_bytes: int = DECRYPT_MAX_BYTES, timeout: float = GPG_TIMEOUT_SECONDS
    ) -> Decrypted:
        """Decrypt with a secret key in this home; the signature inside, if any, is checked from gpg's status.

        Bounded: once the plaintext passes `max_bytes`, or gpg has run `timeout` seconds, gpg is killed and
        GpgLimitExceeded (a KeyProblem) raised; nothing is returned truncated. (gpg's own --max-output is no
        substitute: gpg 2.2 cuts the plaintext short yet still reports DECRYPTION_OKAY and exits 0.)
        """
        finished = _run_bounded(
            self._gpg_command("--trust-model", "always", "--decrypt"),
            data,
            max_output=max_bytes,
            timeout=timeout,
            what="the decrypted message",
        )
        keywords = {
            line.split()[1]
            for line in finished.status.splitlines()
            if line.startswith("[GNUPG:] ") and len(line.split()) > 1
        }
        if "DECRYPTION_OKAY" not in keywords or "DECRYPTION_FAILED" in keywords:
            raise KeyProblem("the message could not be decrypted with the keys in this home")
        return Decrypted(finished.output, signature_status(finished.status))

    def generate(self, name: str, address: str, expire: str) -> str:
        """Ed25519 to sign, a Cv25519 subkey to encrypt, no passphrase (see the README's security model)."""
        spec = self._gpg.gen_key_input(
            key_type="EDDSA",
            key_curve="ed25519",
            key_usage="sign,cert",
            subkey_type="ECDH",
            subkey_curve="cv25519",
            subkey_usage="encrypt",
            name_real=name,
            name_email=address,
            expire_date=expire,
            no_protection=True,
        )
        result = self._gpg.gen_key(spec)
        if not result.fingerprint:
            raise KeyProblem(f"gpg could not generate a key in {self.home}: {result.stderr.strip()[-200:]}")
        return str(result.fingerprint)


@contextmanager
def scratch_keyring(binary: str = "gpg") -> Iterator[Keyring]:
    """A throwaway GnuPG home, so that a key can be looked at before it goes anywhere near the real one."""
    with tempfile.TemporaryDirectory(prefix="gateway-gpg-") as tmp:
        home = Path(tmp)
        os.chmod(home, 0o700)
        try:
            yield Keyring(home, binary)
        finally:
            kill_agent(home)


@dataclass(frozen=True)
class SignatureStatus:
    """What gpg said of one detached signature, read from its status lines (python-gnupg's flags can mislead)."""

    good: bool
    primary_fingerprint: str | None  # the key that made it: the primary key's fingerprint, never a subkey's
    signed_at: dt.datetime | None
    problem: str | None
    signed: bool = True  # False when there was no signature at all (an encrypted message need not carry one)
    # gpg's SIG_ID: a digest of the signature itself, the same whatever armour or MIME carries it, so the same
    # signature arriving again is known for a replay (next year's identical request has another).
    signature_id: str | None = None
    # What the signer signed besides the data: a digest of the signature packet's hashed subpackets (its time,
    # notations, ...) with the SHA-256 of the bytes it covers. Set by whoever verified them (authenticate.py).
    signed_sha256: str | None = None

    def replay_keys(self) -> tuple[str, ...]:
        """What makes this signature the one it is, each enough to know it again. SIG_ID alone is not: an
        ECDSA signature's s can be replaced by n - s, which verifies the same and has another SIG_ID; but what
        the signer signed (the data, and the signature's own hashed subpackets) cannot be altered."""
        keys = [f"id:{self.signature_id}"] if self.signature_id else []
        if self.primary_fingerprint and self.signed_sha256:
            made = f"{self.primary_fingerprint}/{self.signed_sha256}"
            keys.append(f"signed:{hashlib.sha256(made.encode()).hexdigest()}")
        return tuple(keys)


def hashed_subpackets(signature: bytes) -> bytes | None:
    """The hashed subpacket area of the first (v4) signature packet in an OpenPGP signature, armoured or not;
    None when it is not one. Read only after gpg called the signature good: the packet is well formed."""
    data = _dearmoured(signature)
    if data is None or len(data) < 2 or not data[0] & 0x80:
        return None
    if data[0] & 0x40:  # new format packet header
        tag, first = data[0] & 0x3F, data[1]
        if first < 192:
            start, length = 2, first
        elif first < 224 and len(data) > 2:
            start, length = 3, ((first - 192) << 8) + data[2] + 192
        elif first == 255 and len(data) > 5:
            start, length = 6, int.from_bytes(data[2:6], "big")
        else:
            return None  # partial lengths: never a signature packet's
    else:  # old format: the length's size in the low two bits
        tag, size = (data[0] >> 2) & 0x0F, {0: 1, 1: 2, 2: 4}.get(data[0] & 3)
        if size is None:
            return None
        start, length = 1 + size, int.from_bytes(data[1 : 1 + size], "big")
    body = data[start : start + length]
    if tag != 2 or len(body) < 6 or body[0] != 4:
        return None
    hashed = int.from_bytes(body[4:6], "big")
    return body[: 6 + hashed] if len(body) >= 6 + hashed else None  # version, type, algorithms and the area


def _dearmoured(signature: bytes) -> bytes | None:
    text = signature.strip()
    if not text.startswith(b"-----BEGIN PGP SIGNATURE-----"):
        return text
    lines = text.splitlines()
    try:
        blank = next(i for i, line in enumerate(lines) if not line.strip())
    except StopIteration:
        return None
    body = b"".join(line.strip() for line in lines[blank + 1 :] if line.strip() and not line.startswith((b"=", b"-")))
    try:
        return base64.b64decode(body, validate=True)
    except ValueError:
        return None


_BAD_SIGNATURE = {
    "BADSIG": "the signature does not match the signed part (it was altered or only partly signed)",
    "EXPKEYSIG": "the signing key has expired",
    "REVKEYSIG": "the signing key is revoked",
    "EXPSIG": "the signature has expired",
    "ERRSIG": "the signature could not be checked (unknown key or algorithm)",
    "NO_PUBKEY": "the signing key is not in the gateway's keyring",
}


# What gpg says of a signature by a key it does not hold.
UNKNOWN_SIGNER = frozenset({_BAD_SIGNATURE["ERRSIG"], _BAD_SIGNATURE["NO_PUBKEY"]})

_SIGNATURE_WORDS = frozenset({"NEWSIG", "GOODSIG", "VALIDSIG", *_BAD_SIGNATURE})


def signature_status(status_text: str) -> SignatureStatus:
    lines = [line.split()[1:] for line in status_text.splitlines() if line.startswith("[GNUPG:] ")]
    if not any(words and words[0] in _SIGNATURE_WORDS for words in lines):
        return SignatureStatus(False, None, None, "there is no signature", signed=False)
    for words in lines:
        if words and words[0] in _BAD_SIGNATURE:
            return SignatureStatus(False, None, None, _BAD_SIGNATURE[words[0]])
    valid = [words for words in lines if words and words[0] == "VALIDSIG"]
    if len(valid) != 1 or not any(words and words[0] == "GOODSIG" for words in lines):
        count = len(valid)
        return SignatureStatus(False, None, None, f"expected one good signature, gpg reported {count}")
    # VALIDSIG <fpr> <date> <timestamp> <expire> <version> <reserved> <algo> <hash> <class> <primary-fpr>
    words = valid[0]
    primary = words[10] if len(words) > 10 else words[1]
    signed_at = dt.datetime.fromtimestamp(int(words[3]), dt.UTC) if words[3].isdigit() else None
    ids = {words[1] for words in lines if len(words) > 1 and words[0] == "SIG_ID"}
    if len(ids) != 1:  # a signature that cannot be told from a replay of it is not accepted
        return SignatureStatus(False, None, None, "gpg gave the signature no identity, so a replay could not be told")
    return SignatureStatus(True, primary, signed_at, None, signature_id=ids.pop())


@dataclass(frozen=True)
class Decrypted:
    data: bytes
    signature: SignatureStatus  # not good when the message was not signed, or not by a key we hold


@dataclass(frozen=True)
class ScannedKey:
    info: KeyInfo
    # The one key re-exported from the scratch home, minimal: whatever else the file carried (a revocation
    # of some other key, stray signatures) never reaches the gateway's keyring.
    public: bytes


def scan_key(data: bytes, binary: str = "gpg") -> ScannedKey:
    """What a key file holds, refused unless it is exactly one public key."""
    if not data.strip():
        raise KeyProblem("the key file is empty")
    with scratch_keyring(binary) as scratch:
        result = scratch._gpg.import_keys(data)
        if int(result.sec_read or 0) > 0:
            raise KeyProblem("the key file holds secret key material: give the authority's public key only")
        fingerprints = sorted(set(result.fingerprints))
        if not fingerprints:
            raise KeyProblem("the key file holds no OpenPGP public key")
        if len(fingerprints) > 1:
            raise KeyProblem(f"the key file holds {len(fingerprints)} keys: give exactly one")
        info = scratch.inspect(fingerprints[0])
        if info is None:
            raise KeyProblem("gpg imported the key but cannot list it")
        return ScannedKey(info, scratch.export_public(info.fingerprint, minimal=True).encode("ascii"))


async def in_thread(call: Callable[..., T], *args: Any) -> T:
    """Run a blocking gpg call off the event loop, a few at a time."""

    def limited() -> T:
        with _GPG_CALLS:
            return call(*args)

    return await asyncio.to_thread(limited)
