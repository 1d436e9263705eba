"""`gateway change`: allowlist, key and admin changes waiting for a second admin (the two-person rule)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import sys

from gateway.admin import approvals
from gateway.admin.authorities import Change
from gateway.cli.opening import config_of, database
from gateway.cli.output import emit_json, emit_rows, printable
from gateway.cli.proposing import allowlist, report, sign_proposal, signature, wants_signing
from gateway.cli.tree import Commands
from gateway.config import Config


async def cmd_change_list(args: argparse.Namespace) -> int:
    config = config_of(args)
    async with database(config) as db:
        rows = [dataclasses.asdict(p) for p in await approvals.listing(db, everything=args.all)]
    if not args.json:
        for row in rows:
            row["proposer"] = row["proposer"] or "(not signed yet)"
    emit_rows(args, rows, empty="no changes were ever proposed" if args.all else "no changes wait for approval")
    return 0


async def cmd_change_show(args: argparse.Namespace) -> int:
    async with database(config_of(args)) as db:
        shown = await approvals.show(db, args.id)
    if args.json:
        emit_json({**dataclasses.asdict(shown.change), "statement": shown.statement,
                   "proposer_name": shown.proposer_name, "approver_name": shown.approver_name})  # fmt: skip
        return 0
    if shown.statement is None:
        raise approvals.ApprovalError(f"change {args.id} has no statement: it was proposed under the old rule")
    # Exactly the bytes that are signed, and nothing else on stdout: `gateway change show 7 > change-7.txt`
    # is what an admin signs on another machine.
    sys.stdout.write(shown.statement)
    return 0


async def _to_sign(args: argparse.Namespace, config: Config, *, approving: bool) -> str:
    """The statement, checked ready for this signature; shown before the admin's own gpg signs it."""
    async with database(config) as db:
        statement = await approvals.to_sign(db, args.id, approving=approving)
    if wants_signing(args) and sys.stderr.isatty():
        # For the person whose gpg (pinentry, smartcard) is about to sign; stdout keeps saying what was done.
        print(f"change {args.id} reads, as you are about to sign it:\n\n{statement}", file=sys.stderr)
    return statement


async def cmd_change_sign(args: argparse.Namespace) -> int:
    config = config_of(args)
    await sign_proposal(args, config, args.id, await _to_sign(args, config, approving=False))
    return 0


async def cmd_change_approve(args: argparse.Namespace) -> int:
    config = config_of(args)
    statement = await _to_sign(args, config, approving=True)
    made = await asyncio.to_thread(signature, args, statement, config.gpg.binary)
    async with allowlist(args) as changing:

        async def make(proposal: approvals.Proposal, approval: approvals.Approval) -> Change:
            return await approvals.apply(
                changing, proposal, actor=approval.actor, approval=approval, binary=config.gpg.binary
            )

        proposal, change = await approvals.approve(
            changing.db, args.id, made, binary=config.gpg.binary, gateway=config.gateway.address,
            now=dt.datetime.now(dt.UTC), make=make,
        )  # fmt: skip
    if proposal.kind in approvals.ADMIN_KINDS:
        print(f"change {args.id} approved and made: {printable(proposal.summary())}")
        return 0
    return report(change, approvals.VERBS[proposal.kind], args)


async def cmd_change_reject(args: argparse.Namespace) -> int:
    async with database(config_of(args)) as db:
        proposal = await approvals.reject(db, args.id, actor=args.actor, now=dt.datetime.now(dt.UTC))
    print(f"change {args.id} rejected: {printable(proposal.summary())}; nothing was changed")
    return 0


def add_commands(c: Commands) -> None:
    change = c.group("change", "allowlist, key and admin changes waiting for a second admin (two-person rule)")
    change_list = c.command(change, "list", cmd_change_list, "the changes waiting for approval", listing=True)
    change_list.add_argument("--all", action="store_true", help="also those approved, rejected or cancelled")
    show = c.command(
        change, "show", cmd_change_show, "print exactly the statement of a change that admins sign", listing=True
    )
    show.add_argument("id", type=int, metavar="ID")
    signature_help = "a detached signature over `gateway change show ID`, made elsewhere ('-' = stdin)"
    sign = c.command(change, "sign", cmd_change_sign, "sign a change you proposed, as its proposer", signing=True)
    sign.add_argument("id", type=int, metavar="ID")
    sign.add_argument("--signature", metavar="FILE.asc", help=signature_help)
    approve = c.command(
        change, "approve", cmd_change_approve, "sign and make a change another admin proposed and signed",
        listing=True, signing=True,
    )  # fmt: skip
    approve.add_argument("id", type=int, metavar="ID")
    approve.add_argument("--signature", metavar="FILE.asc", help=signature_help)
    reject = c.command(change, "reject", cmd_change_reject, "drop a pending change (only takes it away)", acting=True)
    reject.add_argument("id", type=int, metavar="ID")
