"""`gateway authority`: the allowlist of authorities, their secure addresses and pinned keys."""

from __future__ import annotations

import argparse

from gateway.admin import approvals
from gateway.admin.authorities import AUTH_POLICIES, DEFAULT_AUTH_POLICY, KINDS, OLD_POLICIES
from gateway.cli.opening import read_file
from gateway.cli.output import date, emit_json, print_table
from gateway.cli.proposing import allowlist, make_or_propose, print_authority, report
from gateway.cli.tree import Commands


async def cmd_authority_add(args: argparse.Namespace) -> int:
    key_data = read_file(args.key, "key file")
    arguments = {"kind": args.kind, "area": args.area, "emails": args.email, "key": approvals.key_argument(key_data),
                 "auth": args.auth}  # fmt: skip
    return await make_or_propose(args, approvals.Proposal("add", args.name, arguments), "added")


async def cmd_authority_list(args: argparse.Namespace) -> int:
    async with allowlist(args) as authorities:
        views = await authorities.list()
    if args.json:
        emit_json([v.as_dict() for v in views])
    elif not views:
        print("no authorities yet: add one with `gateway authority add`")
    else:
        print_table(
            ["name", "kind", "area", "status", "auth", "addresses", "key", "key expires"],
            [
                [
                    v.name,
                    v.kind,
                    v.area or "(national)",
                    v.status,
                    v.auth_policy,
                    ", ".join(v.addresses),
                    v.key_fingerprint[-16:] if v.key_fingerprint else "-",
                    date(v.key_expires),
                ]
                for v in views
            ],
        )
    return 0


async def cmd_authority_show(args: argparse.Namespace) -> int:
    async with allowlist(args) as authorities:
        view = await authorities.show(args.authority)
    if args.json:
        emit_json(view.as_dict())
    else:
        print_authority(view)
    return 0


async def cmd_authority_update(args: argparse.Namespace) -> int:
    arguments = {"new_name": args.name, "kind": args.kind, "area": args.area, "auth": args.auth,
                 "add_emails": args.add_email or [], "remove_emails": args.remove_email or []}  # fmt: skip
    return await make_or_propose(args, approvals.Proposal("update", args.authority, arguments), "updated")


async def cmd_authority_suspend(args: argparse.Namespace) -> int:
    async with allowlist(args) as authorities:
        change = await authorities.set_status(args.authority, "suspended", actor=args.actor)
    return report(change, "suspended", args)


async def cmd_authority_resume(args: argparse.Namespace) -> int:
    return await make_or_propose(args, approvals.Proposal("resume", args.authority, {}), "resumed")


async def cmd_authority_remove(args: argparse.Namespace) -> int:
    async with allowlist(args) as authorities:
        change = await authorities.remove(args.authority, actor=args.actor)
    return report(change, "removed", args)


async def cmd_authority_set_key(args: argparse.Namespace) -> int:
    key = approvals.key_argument(read_file(args.key_file, "key file"))
    return await make_or_propose(
        args, approvals.Proposal("set-key", args.authority, {"key": key}), "new key pinned for"
    )


def add_commands(c: Commands) -> None:
    authority = c.group("authority", "the allowlist of authorities, their secure addresses and pinned keys")
    add = c.command(
        authority,
        "add",
        cmd_authority_add,
        "register an authority with its addresses and key",
        acting=True,
        listing=True,
        signing=True,
    )
    add.add_argument("--name", required=True, help="the authority's name, e.g. 'West Mercia Police'")
    add.add_argument("--kind", required=True, choices=KINDS)
    add.add_argument("--area", help="police force area (police) or local authority (local-authority)")
    add.add_argument(
        "--email",
        required=True,
        action="append",
        metavar="ADDR",
        help="a registered secure address (repeat for more)",
    )
    add.add_argument(
        "--key", required=True, metavar="FILE.asc", help="the authority's OpenPGP public key ('-' = stdin)"
    )
    add.add_argument(
        "--auth",
        choices=[*AUTH_POLICIES, *OLD_POLICIES],
        default=DEFAULT_AUTH_POLICY,
        help=f"how its requests are authenticated (default {DEFAULT_AUTH_POLICY})",
    )
    c.command(authority, "list", cmd_authority_list, "list the authorities", listing=True)
    show = c.command(authority, "show", cmd_authority_show, "show one authority", listing=True)
    show.add_argument("authority", metavar="NAME")
    update = c.command(
        authority,
        "update",
        cmd_authority_update,
        "change an authority's name, kind, area, authentication or addresses",
        acting=True,
        listing=True,
        signing=True,
    )
    update.add_argument("authority", metavar="NAME")
    update.add_argument("--name", help="new name")
    update.add_argument("--kind", choices=KINDS, help="new kind (give --area with it for police and local authorities)")
    update.add_argument("--area", help="new area")
    update.add_argument("--auth", choices=[*AUTH_POLICIES, *OLD_POLICIES], help="new authentication policy")
    update.add_argument("--add-email", action="append", metavar="ADDR", help="add a secure address")
    update.add_argument("--remove-email", action="append", metavar="ADDR", help="remove a secure address")
    for name, handler, text in (
        ("suspend", cmd_authority_suspend, "stop all disclosures to an authority until it is resumed"),
        ("resume", cmd_authority_resume, "allow a suspended authority again"),
        (
            "remove",
            cmd_authority_remove,
            "delete an authority and its addresses (the audit trail keeps the record)",
        ),
    ):
        sub = c.command(authority, name, handler, text, acting=True, listing=True, signing=name == "resume")
        sub.add_argument("authority", metavar="NAME")
    set_key = c.command(
        authority,
        "set-key",
        cmd_authority_set_key,
        "pin a new OpenPGP key for an authority",
        acting=True,
        listing=True,
        signing=True,
    )
    set_key.add_argument("authority", metavar="NAME")
    set_key.add_argument("key_file", metavar="FILE.asc", help="the new public key ('-' = stdin)")
