"""python-gnupg at the edge: inspect, import, pin, export and generate OpenPGP keys.

What comes from outside (decrypting and verifying incoming mail) runs gpg directly instead (gpgrun.py),
bounded in the bytes it may produce and the time it may take: python-gnupg reads all of gpg's output into
memory.
"""

from __future__ import annotations

import functools
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import gnupg

from gateway.bounded import CHUNK, MAX_STATUS_BYTES
from gateway.config import exposed
from gateway.gpgrun import (
    DECRYPT_MAX_BYTES,
    GPG_TIMEOUT_SECONDS,
    GpgLimitExceeded,
    KeyProblem,
    in_thread,
    run_bounded,
)
from gateway.keyinfo import KeyInfo, key_info
from gateway.signatures import SignatureStatus, signature_status


def kill_agent(home: Path) -> None:
    """gpg-agent outlives the process that started it, one per home: stop it when the home is done with."""
    if shutil.which("gpgconf"):
        subprocess.run(  # noqa: S603 - fixed argv, no shell
            ["gpgconf", "--homedir", str(home), "--kill", "all"],  # noqa: S607 - gpgconf from PATH, like gpg
            check=False,
            capture_output=True,
            timeout=30,
        )


class ForeignHome(KeyProblem):
    """The GnuPG home, or a file in it, belongs to another user than the one running the command."""

    exit_code = 78  # EX_CONFIG: set-up to fix, which no restart mends (the unit does not restart on it)


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def require_owner(home: Path) -> None:
    """Refuse a GnuPG home that is not this user's, or that holds a file that is not: gpg run by another user
    (root, say) rewrites pubring.kbx as that user's, and the owner's next import then fails with no reason given.
    Nothing to check in a home not made yet."""
    try:
        owner = home.stat().st_uid
    except OSError:
        return
    me = os.geteuid()
    if owner != me:
        raise ForeignHome(
            f"the GnuPG home {home} belongs to {_user(owner)}, but this command runs as {_user(me)}: "
            f"run it as {_user(owner)} (`sudo -u {_user(owner)} gateway ...`)"
        )
    inside = [home / "private-keys-v1.d"] if (home / "private-keys-v1.d").is_dir() else []
    for path in [*home.iterdir(), *(p for d in inside for p in d.iterdir())]:
        if path.name.startswith("S."):
            continue  # the agent's sockets: its own, and gone with it
        uid = path.lstat().st_uid
        if uid != me:
            raise ForeignHome(
                f"{path} in the GnuPG home belongs to {_user(uid)}, not to {_user(me)} who owns the home "
                f"(a command was run as {_user(uid)}): run `chown -R {_user(me)}: {home}` as root, and run every "
                f"gateway command as {_user(me)} (`sudo -u {_user(me)} gateway ...`)"
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
        require_owner(home)
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
                return key_info(entry, listing.uid_map)
        return None

    async def inspect_cached(self, fingerprint: str, seconds: float = 60.0) -> KeyInfo | None:
        """inspect(), remembered for a minute, from the event loop: a gpg process per answer just to read a key
        is most of a request's cost, and within the minute not even a thread is needed. Safe to be a minute
        late: gpg itself refuses to encrypt to a key revoked or expired since."""
        cached = self._inspected.get(fingerprint)
        if cached is not None and time.monotonic() - cached[0] < seconds:
            return cached[1]
        info = await in_thread(self.inspect, fingerprint)
        self._inspected[fingerprint] = (time.monotonic(), info)
        return info

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
            finished = run_bounded(
                command, data, max_output=4 * len(data) + CHUNK * 16, timeout=GPG_TIMEOUT_SECONDS, what="the reply"
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
                finished = run_bounded(
                    self._gpg_command("--verify", sig.name, "-"),
                    data,
                    max_output=MAX_STATUS_BYTES,
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
        finished = run_bounded(
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
