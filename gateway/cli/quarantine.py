"""`gateway quarantine`: messages held for a person to look at, and what that person decides."""

from __future__ import annotations

import argparse
import dataclasses

from gateway.admin import quarantine
from gateway.cli.opening import config_of, context
from gateway.cli.output import emit_json, emit_rows, printable
from gateway.cli.tree import Commands
from gateway.errors import GatewayError
from gateway.values import OutcomeKind


async def cmd_quarantine_list(args: argparse.Namespace) -> int:
    config = config_of(args)
    async with context(config) as ctx:
        rows = [dataclasses.asdict(held) for held in await quarantine.listing(ctx, everything=args.all)]
    shown = rows if args.json else [{**row, "reason": _shortened(row["reason"])} for row in rows]
    emit_rows(args, shown, empty="nothing was ever quarantined" if args.all else "nothing is held in quarantine")
    return 0


def _shortened(reason: str, width: int = 80) -> str:
    """A reason cut to fit a table at a word's end, marked as cut: `quarantine show` gives it whole."""
    if len(reason) <= width:
        return reason
    room = width - len(" ...")
    cut = reason[:room]
    if reason[room] != " " and " " in cut:  # mid-word: back to the last whole word
        cut = cut.rsplit(" ", 1)[0]
    return cut.rstrip(" ,;:") + " ..."  # one word longer than the room (a digest) is cut where it is


async def cmd_quarantine_show(args: argparse.Namespace) -> int:
    config = config_of(args)
    async with context(config) as ctx:
        shown = await quarantine.show(ctx, args.id)
    if args.json:
        emit_json(shown)
        return 0
    for key in ("id", "status", "received_at", "source", "size", "sha256", "why"):
        print(f"{key}: {printable(shown[key])}")
    if shown["decided_by"] is not None:  # a held message has nobody's decision to show
        print(f"decided_by: {printable(shown['decided_by'])}")
    print("headers:")
    for name, value in shown["headers"]:
        print(f"  {name}: {printable(value)}")
    print("sent because of it:" if shown["sent"] else "sent because of it: nothing")
    for mail in shown["sent"]:
        print(printable(f"  outbox {mail['id']}: {mail['kind']} to {mail['recipient']} ({mail['status']})"))
    return 0


async def cmd_quarantine_release(args: argparse.Namespace) -> int:
    config = config_of(args)
    async with context(config) as ctx:
        outcome = await quarantine.release(ctx, args.id, actor=args.actor)
    if outcome.kind == OutcomeKind.QUARANTINED:
        raise GatewayError(f"message {args.id} {outcome.reason}")
    reference = f" (reference {outcome.reference})" if outcome.reference else ""
    print(f"message {args.id} released: {outcome.kind}: {outcome.reason}{reference}")
    return 0


async def cmd_quarantine_discard(args: argparse.Namespace) -> int:
    config = config_of(args)
    async with context(config) as ctx:
        await quarantine.discard(ctx, args.id, actor=args.actor)
    print(f"message {args.id} discarded: it stays on record, and nothing is sent")
    return 0


def add_commands(c: Commands) -> None:
    held = c.group("quarantine", "messages held for a person to look at")
    held_list = c.command(held, "list", cmd_quarantine_list, "the held messages, and why", listing=True)
    held_list.add_argument("--all", action="store_true", help="also those released or discarded")
    held_show = c.command(held, "show", cmd_quarantine_show, "one message: headers, why, what was sent", listing=True)
    held_show.add_argument("id", type=int, metavar="ID")
    held_release = c.command(
        held, "release", cmd_quarantine_release, "run a held message through the pipeline again", acting=True
    )
    held_release.add_argument("id", type=int, metavar="ID")
    held_discard = c.command(held, "discard", cmd_quarantine_discard, "set a held message aside", acting=True)
    held_discard.add_argument("id", type=int, metavar="ID")
