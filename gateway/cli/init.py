"""`gateway init` and `gateway key`: the schema, the GnuPG home and the gateway's own keys (OpenPGP and S/MIME)."""

from __future__ import annotations

import argparse
import re
import stat
import sys
from pathlib import Path
from typing import Any

from gateway import audit
from gateway.cli.opening import config_of, keyring
from gateway.cli.output import date
from gateway.cli.tree import Commands
from gateway.config import Config, SmimeSettings
from gateway.crypto import Keyring, require_owner
from gateway.db.engine import Database, create_database, upgrade_schema
from gateway.errors import ConfigError, UsageError
from gateway.gpgrun import KeyProblem, in_thread
from gateway.keyinfo import KeyInfo
from gateway.smime import CertificateProblem, load_key, make_key, make_self_signed_at, read_certificate, write_csr
from gateway.smime.identity import load_identity

# Said whenever the gateway makes S/MIME material: what a trial certificate costs, and what production needs.
SELF_SIGNED_WARNING = (
    "A self-signed certificate makes Outlook warn on every reply: production needs one from a publicly trusted CA "
    "(`gateway init --smime-csr FILE` writes the request)."
)


async def cmd_init(args: argparse.Namespace) -> int:
    config = config_of(args)
    if not re.fullmatch(r"0|[1-9][0-9]*[dwmy]?", args.key_expiry):
        raise UsageError(f"--key-expiry {args.key_expiry!r}: use 0 (never), or a number with d, w, m or y (e.g. 2y)")
    smime = _check_smime_options(config, args)
    require_owner(config.gpg.home)  # before gpg writes a file in it that its owner could no longer read
    created = Keyring.create_home(config.gpg.home)
    print(f"GnuPG home {config.gpg.home} {'created' if created else 'exists'} (mode 0700)")
    db = create_database(config.database)
    try:
        upgrade = await upgrade_schema(db)  # a SQLite database's files made private first: said here if they were not
        for line in upgrade.made_private:
            print(line)
        before, after = upgrade.before, upgrade.after
        if before == after:
            print(f"database {config.database.display_url} is up to date (schema {after})")
        else:
            print(f"database {config.database.display_url} upgraded from schema {before or 'none'} to {after}")
            # Recorded at once, so that a later step failing cannot leave the upgrade unrecorded.
            await _record(
                db, args.actor, "database.upgrade", config.database.display_url, {"from": before, "to": after}
            )
        generated = await _ensure_signing_key(config, Keyring(config.gpg.home, config.gpg.binary), args.key_expiry)
        if generated is not None:
            await _record(
                db,
                args.actor,
                "gateway.key-generated",
                config.gateway.address,
                {"fingerprint": generated.fingerprint, "expires": generated.expires},
            )
        if smime is not None and args.smime:
            await _make_self_signed(config.gateway.address, smime, db, args.actor)
        elif smime is not None and args.smime_csr:
            await _write_request(config.gateway.address, smime, db, args.actor, Path(args.smime_csr))
        # After a request the CA's certificate is still to come: nothing to check yet.
        if not args.smime_csr and (identity := load_identity(config)) is not None:
            certificate = identity.certificate
            print(
                f"S/MIME certificate for {config.gateway.address} is usable: SHA-256 fingerprint "
                f"{certificate.fingerprint}, expires {date(certificate.not_after)}"
            )
    finally:
        await db.close()
    return 0


def _check_smime_options(config: Config, args: argparse.Namespace) -> SmimeSettings | None:
    """The [smime] settings --smime or --smime-csr works on (None without either), checked before anything is
    made: the gateway's identity is never overwritten."""
    option = "--smime" if args.smime else "--smime-csr" if args.smime_csr else None
    if option is None:
        return None
    if config.smime is None:
        raise _no_section(config, option)
    if args.smime:
        for setting, path in (("certificate", config.smime.certificate), ("key", config.smime.key)):
            if path.exists():
                raise CertificateProblem(
                    f"[smime] {setting} {path} already exists: `gateway init --smime` never overwrites the "
                    "gateway's identity (move it away first to start again)"
                )
    else:
        if Path(args.smime_csr).exists():
            raise CertificateProblem(f"--smime-csr {args.smime_csr} already exists: it is not overwritten")
        if config.smime.key.exists():
            load_key(config.smime.key)  # the request will be for it: one line now if it is no key
    return config.smime


def _no_section(config: Config, option: str) -> ConfigError:
    return ConfigError(
        f"{config.path}: {option} needs an [smime] section: add one (config/gateway.example.toml shows it)"
    )


async def _make_self_signed(address: str, smime: SmimeSettings, db: Database, actor: str) -> None:
    """A self-signed certificate and its key at the configured paths, for trials and tests; recorded."""
    cert_path, key_path = make_self_signed_at(address, smime.certificate, smime.key)
    made = read_certificate(cert_path.read_bytes())
    print(f"made a self-signed S/MIME certificate for {address}: SHA-256 fingerprint {made.fingerprint}")
    print(f"  certificate {cert_path} (mode {_mode(cert_path)})")
    print(f"  key         {key_path} (mode {_mode(key_path)})")
    print(SELF_SIGNED_WARNING)
    # Recorded at once, as the OpenPGP key is: the files are made whatever happens next.
    await _record(
        db, actor, "gateway.smime-generated", address,
        {"fingerprint": made.fingerprint, "expires": made.not_after, "certificate": str(cert_path),
         "key": str(key_path), "self_signed": True},
    )  # fmt: skip


async def _write_request(address: str, smime: SmimeSettings, db: Database, actor: str, request: Path) -> None:
    """A certificate signing request for the gateway's address, with the configured key (made when missing)."""
    generated = not smime.key.exists()
    if generated:
        make_key(smime.key)
        print(f"made the gateway's S/MIME key {smime.key} (mode {_mode(smime.key)})")
    else:
        print(f"the request is for the existing S/MIME key {smime.key}")
    write_csr(address, smime.key, request)
    print(f"wrote a certificate signing request for {address} to {request}")
    print(
        "Send it to a publicly trusted CA that issues S/MIME certificates; put the certificate it returns at "
        f"{smime.certificate} ([smime] certificate) and run `gateway init` to check it."
    )
    print(
        "A self-signed certificate (`gateway init --smime`) makes Outlook warn on every reply: production "
        "needs one from a publicly trusted CA."
    )
    await _record(
        db, actor, "gateway.smime-csr-written", address,
        {"request": str(request), "key": str(smime.key), "key_generated": generated},
    )  # fmt: skip


def _mode(path: Path) -> str:
    return f"{stat.S_IMODE(path.stat().st_mode):04o}"


async def _record(db: Database, actor: str, action: str, subject: str, details: dict[str, Any]) -> None:
    async with db.transaction() as session:
        await audit.record(session, actor=actor, action=action, subject=subject, details=details)


async def _ensure_signing_key(config: Config, keys: Keyring, expiry: str) -> KeyInfo | None:
    """Check the configured key, or make one; returns the key made now, if one was."""
    address = config.gateway.address
    if config.gpg.signing_key:
        fingerprint = config.gpg.signing_key
        info = await in_thread(keys.inspect, fingerprint)
        if info is None or not await in_thread(keys.has_secret, fingerprint):
            raise KeyProblem(f"[gpg] signing_key {fingerprint} has no secret key in {config.gpg.home}")
        problems = info.problems()
        if not info.can_sign:
            problems.append("it cannot sign")
        if problems:
            raise KeyProblem(f"[gpg] signing_key {fingerprint} is unusable: {'; '.join(problems)}")
        print(f"signing key {fingerprint} is usable (expires {date(info.expires)})")
        return None
    for fingerprint in await in_thread(keys.secret_fingerprints):
        info = await in_thread(keys.inspect, fingerprint)
        if info is not None and address in info.emails and not info.problems():
            print(f"a gateway key for {address} already exists: {fingerprint}")
            print(f'put it into {config.path}:\n\n[gpg]\nsigning_key = "{fingerprint}"')
            return None
    fingerprint = await in_thread(keys.generate, "HMCI register disclosure gateway", address, expiry)
    print(f"generated the gateway's signing and encryption key: {fingerprint}")
    print(f'put it into {config.path}:\n\n[gpg]\nsigning_key = "{fingerprint}"')
    made = await in_thread(keys.inspect, fingerprint)
    if made is None:
        raise KeyProblem(f"gpg generated {fingerprint} but cannot list it in {config.gpg.home}")
    return made


async def cmd_key_export(args: argparse.Namespace) -> int:
    config = config_of(args)
    if args.smime:
        identity = load_identity(config)  # checked: never a certificate the gateway cannot sign or decrypt with
        if identity is None:
            raise _no_section(config, "--smime")
        sys.stdout.write(identity.certificate.pem.decode("ascii"))
        return 0
    if not config.gpg.signing_key:
        raise ConfigError(f"{config.path}: [gpg] signing_key is not set: run `gateway init` and set it")
    sys.stdout.write(await in_thread(keyring(config).export_public, config.gpg.signing_key))
    return 0


def add_commands(c: Commands) -> None:
    init = c.command(
        c.root,
        "init",
        cmd_init,
        "create or upgrade the database schema and the GnuPG home; make the gateway's key if none is set",
        acting=True,
    )
    init.add_argument(
        "--key-expiry",
        default="2y",
        metavar="WHEN",
        help="validity of a newly generated gateway key, in gpg's syntax (default 2y; 0 = never)",
    )
    smime = init.add_mutually_exclusive_group()
    smime.add_argument(
        "--smime",
        action="store_true",
        help="make a self-signed S/MIME certificate and key at the [smime] paths (trials and tests: Outlook warns "
        "on every reply signed with it)",
    )
    smime.add_argument(
        "--smime-csr",
        metavar="FILE",
        help="write a certificate signing request for a CA to FILE, with the [smime] key (made if missing)",
    )
    key = c.group("key", "the gateway's own keys (OpenPGP and S/MIME)")
    export = c.command(
        key, "export", cmd_key_export, "print the gateway's public key, or its S/MIME certificate (authorities need it)"
    )
    export.add_argument("--smime", action="store_true", help="print the S/MIME certificate (PEM) instead")
