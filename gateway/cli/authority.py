"""`gateway authority`: the allowlist of authorities, their secure addresses and pinned keys."""

from __future__ import annotations

import argparse
import base64

from gateway.admin import approvals
from gateway.admin.authorities import (
    AUTH_POLICIES,
    DEFAULT_AUTH_POLICY,
    KINDS,
    OLD_POLICIES,
    AddressView,
    AuthorityView,
    addresses_of,
)
from gateway.cli.opening import read_file
from gateway.cli.output import date, emit_json, print_table, warn
from gateway.cli.proposing import allowlist, make_or_propose, print_authority, report
from gateway.cli.tree import Commands
from gateway.errors import UsageError
from gateway.smime import CertificateProblem, certificates_in_signed_message


async def cmd_authority_add(args: argparse.Namespace) -> int:
    key = approvals.key_argument(read_file(args.key, "key file")) if args.key else None
    arguments = {"kind": args.kind, "area": args.area, "emails": args.email, "key": key, "auth": args.auth}
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
            ["name", "kind", "area", "status", "auth", "addresses", "key", "key expires", "certs expire"],
            [
                [
                    v.name,
                    v.kind,
                    v.area or "(national)",
                    v.status,
                    v.auth_policy,
                    ", ".join(map(_delivery, v.delivery)),
                    v.key_fingerprint[-16:] if v.key_fingerprint else "-",
                    date(v.key_expires) if v.key_fingerprint else "-",
                    _earliest(v),
                ]
                for v in views
            ],
        )
    return 0


def _delivery(entry: AddressView) -> str:
    """An address with its method, and the end of its certificate's fingerprint (as the key column shows keys)."""
    pinned = f" {entry.cert_fingerprint[-16:]}" if entry.cert_fingerprint else ""
    return f"{entry.address} ({entry.method}{pinned})"


def _earliest(view: AuthorityView) -> str:
    """When the first of an authority's pinned certificates expires ("-" with none)."""
    expiries = [d.cert_expires for d in view.delivery if d.cert_expires is not None]
    return date(min(expiries)) if expiries else "-"


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
                 "add_emails": args.add_email or [], "remove_emails": args.remove_email or [],
                 "use_openpgp": args.use_openpgp or []}  # fmt: skip
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


def _certificate_from(args: argparse.Namespace) -> bytes:
    """The certificate to pin: a file as given (PEM or DER), or the one a signed mail from the address carries."""
    if args.cert is not None:
        return read_file(args.cert, "certificate file")
    raw = read_file(args.from_message, "message file")
    try:
        carried = certificates_in_signed_message(raw)
    except CertificateProblem as exc:
        raise UsageError(f"--from-message {args.from_message}: {exc}") from None
    address = addresses_of([args.email])[0]
    naming = [c for c in carried if address in {e.lower() for e in c.emails}]
    if len(naming) != 1:
        found = "; ".join(f"{c.fingerprint} for {', '.join(c.emails) or 'no address'}" for c in carried)
        raise UsageError(
            f"--from-message {args.from_message}: {len(naming)} of the certificates it carries name {address} "
            f"(it carries {found})"
        )
    # Carried in a message, a certificate proves nothing: the admins confirm its fingerprint with the authority.
    warn(
        f"the message carries certificate {naming[0].fingerprint} for {address}; confirm this fingerprint with the "
        "authority out of band (by phone, on a number you already have) before approving"
    )
    return naming[0].pem


async def cmd_authority_set_cert(args: argparse.Namespace) -> int:
    cert = base64.b64encode(_certificate_from(args)).decode("ascii")
    proposal = approvals.Proposal("set-cert", args.authority, {"address": args.email, "cert": cert})
    return await make_or_propose(args, proposal, "new certificate pinned for")


async def cmd_authority_remove_cert(args: argparse.Namespace) -> int:
    async with allowlist(args) as authorities:
        change = await authorities.remove_certificate(args.authority, args.email, actor=args.actor)
    return report(change, "certificate removed for", args)


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
        "--key",
        metavar="FILE.asc",
        help="the authority's OpenPGP public key ('-' = stdin); without one, its addresses take S/MIME and get "
        "nothing until `authority set-cert` pins a certificate for each",
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
    update.add_argument(
        "--use-openpgp",
        action="append",
        metavar="ADDR",
        help="send to this address by OpenPGP again, to the authority's key, forgetting its certificate",
    )
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
    set_cert = c.command(
        authority,
        "set-cert",
        cmd_authority_set_cert,
        "pin an S/MIME certificate for one of an authority's addresses (mail to it is then S/MIME)",
        acting=True,
        listing=True,
        signing=True,
    )
    set_cert.add_argument("authority", metavar="NAME")
    set_cert.add_argument("--email", required=True, metavar="ADDR", help="the registered address it is for")
    source = set_cert.add_mutually_exclusive_group(required=True)
    source.add_argument("--cert", metavar="FILE", help="the certificate, PEM or DER ('-' = stdin)")
    source.add_argument(
        "--from-message",
        metavar="FILE.eml",
        help="take it from an S/MIME signed mail the address sent (confirm its fingerprint out of band)",
    )
    remove_cert = c.command(
        authority,
        "remove-cert",
        cmd_authority_remove_cert,
        "stop trusting an address's certificate at once (nothing is sent to it until a new one is pinned)",
        acting=True,
        listing=True,
    )
    remove_cert.add_argument("authority", metavar="NAME")
    remove_cert.add_argument("--email", required=True, metavar="ADDR", help="the registered address")
