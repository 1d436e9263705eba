"""`gateway init` and `gateway key`: the schema, the GnuPG home and the gateway's own key."""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

from gateway import audit
from gateway.cli.opening import config_of, keyring
from gateway.cli.output import date
from gateway.cli.tree import Commands
from gateway.config import Config
from gateway.crypto import Keyring
from gateway.db.engine import Database, create_database, upgrade_schema
from gateway.errors import ConfigError, UsageError
from gateway.gpgrun import KeyProblem, in_thread
from gateway.keyinfo import KeyInfo


async def cmd_init(args: argparse.Namespace) -> int:
    config = config_of(args)
    if not re.fullmatch(r"0|[1-9][0-9]*[dwmy]?", args.key_expiry):
        raise UsageError(f"--key-expiry {args.key_expiry!r}: use 0 (never), or a number with d, w, m or y (e.g. 2y)")
    created = Keyring.create_home(config.gpg.home)
    print(f"GnuPG home {config.gpg.home} {'created' if created else 'exists'} (mode 0700)")
    db = create_database(config.database)
    try:
        before, after = await upgrade_schema(db)
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
    finally:
        await db.close()
    return 0


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
    key = c.group("key", "the gateway's own OpenPGP key")
    c.command(key, "export", cmd_key_export, "print the gateway's public key (authorities need it)")
