"""Real gpg keys for the tests, made once per session: the authorities' keys and the admins'."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.crypto import Keyring, kill_agent
from tests.support.addresses import GATEWAY_ADDRESS, LA_ADDRESS, OCC_ADDRESS, POLICE_ADDRESS

# The day the timeless test keys are made on (gpg --faked-system-time): before any date a test walks through.
TIMELESS_KEYS_MADE = "20260101T000000"


@dataclass(frozen=True)
class AuthorityKey:
    fingerprint: str
    public: bytes

    def write(self, directory: Path, name: str) -> Path:
        path = directory / name
        path.write_bytes(self.public)
        return path


@dataclass(frozen=True)
class AuthorityKeys:
    home: Path  # the authorities' own GnuPG home, holding their secret keys, for decrypting as they would
    police: AuthorityKey
    # Made on a fixed day long past, never expiring: gpg judges what it signs the same whatever today is, so
    # walks through time can start from fixed dates (signed with gpg's clock faked to each moment).
    police_timeless: AuthorityKey
    police_renewed: AuthorityKey
    la: AuthorityKey
    occ: AuthorityKey
    expired: AuthorityKey
    revoked: AuthorityKey
    revoked_unaware: AuthorityKey  # the same key as exported before it was revoked
    sign_only: AuthorityKey
    wrong_uid: AuthorityKey
    expiring_soon: AuthorityKey
    display_trick: AuthorityKey  # user ID "police address <attacker address>": gpg's mailbox is the attacker's
    police_and_la: AuthorityKey  # one key carrying both the police and the local authority address
    subkey_expiring_soon: AuthorityKey  # primary never expires, its only encryption subkey in 5 days
    weak_rsa: AuthorityKey  # RSA-1024
    secret: bytes
    two_keys: bytes
    police_revocation: bytes  # a revocation certificate for the police key, to smuggle in


def run_gpg(home: Path, *args: str, data: bytes = b"") -> bytes:
    """gpg in a test's own home, as a mail client runs it (batch, no passphrase); a failure raises with gpg's words."""
    command = ["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback", "--passphrase", "", *args]
    result = subprocess.run(command, input=data, capture_output=True, check=False, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"gpg {' '.join(args)} failed: {result.stderr.decode(errors='replace')}")
    return result.stdout


@contextlib.contextmanager
def gateway_keyring(home: Path, keys: AuthorityKeys, name: str, *pinned: AuthorityKey) -> Iterator[tuple[Keyring, str]]:
    """A gateway-like GnuPG home: its own secret key, these authority keys pinned, and its public key known to
    the authorities (so that they can encrypt to it). Yields the keyring and the gateway key's fingerprint."""
    Keyring.create_home(home)
    ring = Keyring(home)
    try:
        fingerprint = ring.generate(name, GATEWAY_ADDRESS, "1y")
        for key in pinned:
            ring.import_public(key.public)
        run_gpg(keys.home, "--import", data=ring.export_public(fingerprint).encode())
        yield ring, fingerprint
    finally:
        kill_agent(home)


class _KeyMaker:
    """Makes keys with the gpg command line, as an authority would, in a home of its own."""

    def __init__(self, home: Path) -> None:
        self.home = home

    def gpg(self, *args: str, faked_time: str | None = None) -> str:
        command = [
            "gpg",
            "--homedir",
            str(self.home),
            "--batch",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
        ]
        if faked_time:
            command += ["--faked-system-time", faked_time]
        result = subprocess.run([*command, *args], capture_output=True, text=True, check=False, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"gpg {' '.join(args)} failed: {result.stderr}")
        return result.stdout

    def fingerprint(self, uid: str) -> str:
        listing = self.gpg("--with-colons", "--list-keys", f"={uid}")
        return next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr"))

    def make(
        self,
        uid: str,
        *,
        encrypt: bool = True,
        expiry: str = "2y",
        faked_time: str | None = None,
        algorithms: tuple[str, str] = ("ed25519", "cv25519"),
        subkey_expiry: str | None = None,
    ) -> str:
        self.gpg("--quick-gen-key", uid, algorithms[0], "sign,cert", expiry, faked_time=faked_time)
        fingerprint = self.fingerprint(uid)
        if encrypt:
            self.gpg(
                "--quick-add-key", fingerprint, algorithms[1], "encr", subkey_expiry or expiry, faked_time=faked_time
            )
        return fingerprint

    def revocation(self, fingerprint: str) -> bytes:
        certificate = (self.home / "openpgp-revocs.d" / f"{fingerprint}.rev").read_text()
        return certificate.replace(":-----BEGIN PGP PUBLIC KEY BLOCK", "-----BEGIN PGP PUBLIC KEY BLOCK").encode()

    def key(self, fingerprint: str) -> AuthorityKey:
        return AuthorityKey(fingerprint, self.gpg("--armor", "--export", fingerprint).encode())

    def revoke(self, fingerprint: str) -> None:
        # gpg stores a revocation certificate for every new key, with its armour line defused by a colon.
        revocation = self.home / "revoke.asc"
        revocation.write_bytes(self.revocation(fingerprint))
        self.gpg("--import", str(revocation))


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthorityKeys]:
    home = tmp_path_factory.mktemp("authority-keys")
    home.chmod(0o700)
    maker = _KeyMaker(home)
    try:
        police = maker.make(f"West Mercia Police <{POLICE_ADDRESS}>", expiry="3y")  # outlives the two-year walk
        timeless = maker.make(
            f"West Mercia Police (timeless) <{POLICE_ADDRESS}>", expiry="never", faked_time=TIMELESS_KEYS_MADE
        )
        renewed = maker.make(f"West Mercia Police (2027) <{POLICE_ADDRESS}>")
        la = maker.make(f"Shropshire Council <{LA_ADDRESS}>")
        occ = maker.make(f"OCC <{OCC_ADDRESS}>")
        expired = maker.make(f"Expired <{POLICE_ADDRESS}>", expiry="1d", faked_time="20200101T000000")
        revoked = maker.make(f"Revoked <{POLICE_ADDRESS}>")
        revoked_unaware = maker.key(revoked)
        maker.revoke(revoked)
        sign_only = maker.make(f"Sign Only <{POLICE_ADDRESS}>", encrypt=False)
        wrong_uid = maker.make("Somebody Else <someone@else.example>")
        soon = maker.make(f"Soon <{POLICE_ADDRESS}>", expiry="10d")
        trick = maker.make(f"{POLICE_ADDRESS} <evil@attacker.example>")
        both = maker.make(f"Shared <{POLICE_ADDRESS}>")
        maker.gpg("--quick-add-uid", both, f"Shared <{LA_ADDRESS}>")
        subkey_soon = maker.make(f"Subkey Soon <{POLICE_ADDRESS}>", expiry="never", subkey_expiry="5d")
        weak = maker.make(f"Weak <{POLICE_ADDRESS}>", algorithms=("rsa1024", "rsa1024"))
        yield AuthorityKeys(
            home=home,
            police=maker.key(police),
            police_timeless=maker.key(timeless),
            police_renewed=maker.key(renewed),
            la=maker.key(la),
            occ=maker.key(occ),
            expired=maker.key(expired),
            revoked=maker.key(revoked),
            revoked_unaware=revoked_unaware,
            sign_only=maker.key(sign_only),
            wrong_uid=maker.key(wrong_uid),
            expiring_soon=maker.key(soon),
            display_trick=maker.key(trick),
            police_and_la=maker.key(both),
            subkey_expiring_soon=maker.key(subkey_soon),
            weak_rsa=maker.key(weak),
            secret=maker.gpg("--armor", "--export-secret-keys", police).encode(),
            police_revocation=maker.revocation(police),
            two_keys=maker.key(police).public + maker.key(la).public,
        )
    finally:
        kill_agent(home)


@dataclass(frozen=True)
class AdminKey:
    """An admin's key in the admin's own GnuPG home, as on their own machine."""

    home: Path
    fingerprint: str
    public: bytes

    def write(self, directory: Path) -> Path:
        path = directory / f"admin-{self.fingerprint}.asc"
        path.write_bytes(self.public)
        return path

    def signing(self) -> tuple[str, ...]:
        """The options that make `gateway` sign with this admin's own gpg."""
        return ("--gpg-home", str(self.home), "--local-user", self.fingerprint)

    def detached(self, data: bytes) -> bytes:
        """A detached signature made with gpg itself, elsewhere than the gateway."""
        return run_gpg(self.home, "--armor", "--detach-sign", "--local-user", self.fingerprint, data=data)


@dataclass(frozen=True)
class AdminKeys:
    alice: AdminKey
    bob: AdminKey
    carol: AdminKey  # registered later, through the two-person rule; signs with a subkey
    mallory: AdminKey  # never registered


@pytest.fixture(scope="session")
def admin_keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AdminKeys]:
    made: dict[str, AdminKey] = {}
    try:
        for name in ("alice", "bob", "carol", "mallory"):
            home = tmp_path_factory.mktemp(f"admin-{name}")  # each admin's own machine, so to speak
            home.chmod(0o700)
            maker = _KeyMaker(home)
            uid = f"{name.title()} <{name}@hmci.example>"
            if name == "carol":  # signs with a subkey, her primary key only certifies: as on many smartcards
                maker.gpg("--quick-gen-key", uid, "ed25519", "cert", "2y")
                fingerprint = maker.fingerprint(uid)
                maker.gpg("--quick-add-key", fingerprint, "ed25519", "sign", "2y")
            else:
                fingerprint = maker.make(uid, encrypt=False)
            made[name] = AdminKey(home, fingerprint, maker.key(fingerprint).public)
        yield AdminKeys(**made)
    finally:
        for key in made.values():
            kill_agent(key.home)
