"""Making an allowlist or admin change from the keyboard: at once, or proposed under the two-person rule and signed
by the admin's own gpg; and saying what it did."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from gateway.admin import admins, approvals
from gateway.admin.allowlist import Allowlist
from gateway.admin.authorities import AuthorityView, Change
from gateway.cli.opening import config_of, database, keyring, read_file
from gateway.cli.output import date, emit_json, printable, warn
from gateway.compose import Templates
from gateway.config import Config
from gateway.errors import UsageError
from gateway.smime.identity import load_identity
from gateway.subscriptions import Keeper
from gateway.values import Context


@asynccontextmanager
async def allowlist(args: argparse.Namespace, *, rehearse: bool = False) -> AsyncIterator[Allowlist]:
    config = config_of(args)
    keys = keyring(config)
    identity = load_identity(config)  # the notices a change sends may go by S/MIME
    async with database(config) as db:
        yield Allowlist(
            db,
            keys,
            reserved={config.gateway.address, config.gateway.admin_address},
            gateway_key=config.gpg.signing_key,
            standing=Keeper(Context(config, db, keys, Templates(config.gateway.templates), smime=identity)),
            rehearse=rehearse,
            trust_store=config.smime.trust_store if config.smime else None,
            openssl=config.smime.binary if config.smime else "openssl",
        )


def print_authority(view: AuthorityView) -> None:
    rows = [
        ("name", view.name),
        ("kind", view.kind),
        ("area", view.area or "all of England (national)"),
        ("status", view.status),
        ("authentication", view.auth_policy),
        ("addresses", ", ".join(view.addresses)),
        ("key", view.key_fingerprint or "none (its addresses take S/MIME)"),
        ("key expires", date(view.key_expires) if view.key_fingerprint else "-"),
        ("created", view.created_at.isoformat(timespec="seconds")),
        ("updated", view.updated_at.isoformat(timespec="seconds")),
    ]
    for label, value in rows:
        print(f"{label + ':':16}{value}")
    for entry in view.delivery:
        print(f"{'address:':16}{entry.address}")
        print(f"{'  method:':16}{entry.method}")
        if entry.method == "smime":
            print(f"{'  certificate:':16}{entry.cert_fingerprint or 'none pinned: nothing is sent to this address'}")
        if entry.cert_fingerprint:
            print(f"{'  subject:':16}{printable(entry.cert_subject or '')}")
            print(f"{'  expires:':16}{date(entry.cert_expires)}")


def report(change: Change, verb: str, args: argparse.Namespace) -> int:
    for warning in change.warnings:
        warn(warning)
    if change.authority is None:
        return 0
    if getattr(args, "json", False):
        emit_json(change.authority.as_dict())
    else:
        print(f"{verb} authority {change.authority.name!r}")
        print_authority(change.authority)
    return 0


def signature(args: argparse.Namespace, statement: str, gpg: str) -> bytes:
    """The admin's detached signature over the statement: from --signature FILE, or made now by their own gpg."""
    path = getattr(args, "signature", None)
    if path is not None and wants_signing(args):
        raise UsageError("give either --signature FILE (made elsewhere) or --local-user/--gpg-home, not both")
    if path is not None:
        return read_file(path, "signature file")
    home = Path(args.gpg_home) if args.gpg_home else None
    return admins.sign(statement, home=home, local_user=args.local_user, binary=gpg)


def wants_signing(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "local_user", None) or getattr(args, "gpg_home", None))


async def sign_proposal(args: argparse.Namespace, config: Config, ident: int, statement: str) -> None:
    made = await asyncio.to_thread(signature, args, statement, config.gpg.binary)
    async with database(config) as db:
        fingerprint, name = await approvals.sign_proposal(
            db, ident, made, binary=config.gpg.binary, gateway=config.gateway.address, now=dt.datetime.now(dt.UTC)
        )
    print(f"change {ident} signed by its proposer, admin {printable(name)} ({fingerprint})")


async def make_or_propose(args: argparse.Namespace, proposal: approvals.Proposal, verb: str) -> int:
    """The change at once, or (with [gateway] require_second_admin) kept until two admins' keys have signed it."""
    config = config_of(args)
    if not config.gateway.require_second_admin and proposal.kind not in approvals.ADMIN_KINDS:
        async with allowlist(args) as changing:
            change = await approvals.apply(changing, proposal, actor=args.actor)
        return report(change, verb, args)
    async with allowlist(args, rehearse=True) as rehearsal:
        preview = await approvals.rehearse(rehearsal, proposal, binary=config.gpg.binary)
        proposal = approvals.settled(proposal, preview)
        ident, statement = await approvals.propose(
            rehearsal.db, proposal, actor=args.actor, now=dt.datetime.now(dt.UTC), gateway=config.gateway.address,
            binary=config.gpg.binary,
        )  # fmt: skip
    for warning in preview.warnings:
        warn(warning)
    if args.json:
        emit_json({"pending_change": ident, "statement": statement,
                   "would_be": preview.authority.as_dict() if preview.authority else None})  # fmt: skip
    else:
        print(f"change {ident} proposed; it needs two admins' signatures. It reads:\n")
        sys.stdout.write(statement)
        print()
    if wants_signing(args):
        await sign_proposal(args, config, ident, statement)
    elif not args.json:
        print(f"its proposer signs it with: gateway change sign {ident} --local-user YOUR-KEY")
    if not args.json:
        print(f"a different admin checks it with `gateway change show {ident}` and approves it with:")
        print(f"  gateway change approve {ident} --local-user THEIR-KEY")
        print(
            f"(or, with the key on another machine: `gateway change show {ident} > change-{ident}.txt`, "
            f"`gpg --armor --detach-sign change-{ident}.txt` there, then --signature change-{ident}.txt.asc "
            "in place of --local-user)"
        )
    return 0
