"""`gateway admin`: the admins, OpenPGP keys that propose and approve changes."""

from __future__ import annotations

import argparse
import datetime as dt

from gateway.admin import admins, approvals
from gateway.cli.opening import config_of, database, read_file
from gateway.cli.output import emit_json, emit_rows, printable
from gateway.cli.proposing import make_or_propose
from gateway.cli.tree import Commands


async def cmd_admin_add(args: argparse.Namespace) -> int:
    config = config_of(args)
    key_data = read_file(args.key, "key file")
    now = dt.datetime.now(dt.UTC)
    async with database(config) as db:
        count = await admins.registered_count(db)
        if count < admins.SETUP_ADMINS:
            scanned = await admins.scan_admin_key(key_data, config.gpg.binary, now)
            view = await admins.register(
                db, scanned, args.name, actor=args.actor, gateway_key=config.gpg.signing_key, now=now
            )
    if count >= admins.SETUP_ADMINS:
        proposal = approvals.Proposal(
            "admin-add", admins.clean_name(args.name), {"key": approvals.key_argument(key_data)}
        )
        return await make_or_propose(args, proposal, approvals.VERBS["admin-add"])
    if args.json:
        emit_json({**view.as_dict(), "user_ids": list(scanned.info.user_ids)})
        return 0
    print(f"registered admin {printable(view.name)} at set-up ({count + 1} of {admins.SETUP_ADMINS})")
    print(f"fingerprint:    {view.fingerprint}")
    for uid in scanned.info.user_ids:
        print(f"user ID:        {printable(uid)}")
    print("confirm this fingerprint with the admin in person or by phone (never by the mail it came with)")
    return 0


async def cmd_admin_remove(args: argparse.Namespace) -> int:
    fingerprint = args.fingerprint.replace(" ", "").upper()
    async with database(config_of(args)) as db:
        name = await admins.check_removable(db, fingerprint)
    proposal = approvals.Proposal("admin-remove", fingerprint, {"name": name})
    return await make_or_propose(args, proposal, approvals.VERBS["admin-remove"])


async def cmd_admin_list(args: argparse.Namespace) -> int:
    async with database(config_of(args)) as db:
        rows = [view.as_dict() for view in await admins.listing(db)]
    emit_rows(args, rows, empty="no admins yet: the host's administrator registers two with `gateway admin add`")
    return 0


def add_commands(c: Commands) -> None:
    admin = c.group("admin", "the admins: OpenPGP keys that propose and approve changes")
    admin_add = c.command(
        admin, "add", cmd_admin_add,
        "register an admin's key: the first two at set-up, any later one as a change under the two-person rule",
        acting=True, listing=True, signing=True,
    )  # fmt: skip
    admin_add.add_argument("--key", required=True, metavar="FILE.asc", help="the admin's OpenPGP public key")
    admin_add.add_argument("--name", required=True, help="the admin's name, for people reading the audit trail")
    admin_remove = c.command(
        admin, "remove", cmd_admin_remove, "propose taking an admin's key out of the rule (two must remain)",
        acting=True, listing=True, signing=True,
    )  # fmt: skip
    admin_remove.add_argument("fingerprint", metavar="FINGERPRINT", help="the admin key's full fingerprint")
    c.command(admin, "list", cmd_admin_list, "list the admins and who registered them", listing=True)
