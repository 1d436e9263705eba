"""`gateway subscription`: authorities' monthly subscriptions and their reviews."""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

from gateway import subscriptions
from gateway.cli.opening import config_of, database
from gateway.cli.output import emit_json, emit_rows, print_table
from gateway.cli.tree import Commands
from gateway.errors import UsageError


async def cmd_subscription_list(args: argparse.Namespace) -> int:
    async with database(config_of(args)) as db:
        rows = await subscriptions.listing(db)
    listed = [
        {
            "id": sub.id,
            "authority": name,
            "area": sub.area,
            "address": sub.address,
            "status": sub.status,
            "started_on": sub.started_on.isoformat(),
            "review_on": sub.review_on.isoformat(),
        }
        for sub, name in rows
    ]
    emit_rows(args, listed, empty="no subscriptions: an authority starts one by asking with Frequency: monthly")
    return 0


async def cmd_subscription_show(args: argparse.Namespace) -> int:
    config = config_of(args)
    async with database(config) as db:
        sub, authority, events = await subscriptions.history(db, args.id)
    steps = [
        {"kind": e.kind, "key": e.key, "at": e.happened_at.isoformat(timespec="seconds"), "reference": e.reference}
        for e in events
    ]
    shown: dict[str, Any] = {
        "id": sub.id,
        "authority": authority,
        "area": sub.area,
        "status": sub.status,
        "started_on": sub.started_on.isoformat(),
        "review_on": sub.review_on.isoformat(),
        "purpose": sub.purpose,
    }
    if args.json:
        emit_json({**shown, "history": steps})
        return 0
    for label, value in shown.items():
        print(f"{label + ':':13}{value}")
    print()
    print_table(["kind", "key", "at", "reference"], [list(step.values()) for step in steps])
    return 0


async def cmd_subscription_cancel(args: argparse.Namespace) -> int:
    config = config_of(args)
    async with database(config) as db:
        row = await subscriptions.change_by_hand(db, args.id, actor=args.actor, cancel=True)
    print(f"subscription {row.id} ({row.area}) cancelled: no further deliveries")
    return 0


async def cmd_subscription_extend(args: argparse.Namespace) -> int:
    config = config_of(args)
    try:
        until = dt.date.fromisoformat(args.until)
    except ValueError:
        raise UsageError(f"--until {args.until!r}: expected a date, YYYY-MM-DD") from None
    async with database(config) as db:
        row = await subscriptions.change_by_hand(db, args.id, actor=args.actor, review_on=until)
    print(f"subscription {row.id} ({row.area}) now comes up for review on {row.review_on.isoformat()}")
    return 0


def add_commands(c: Commands) -> None:
    subscription = c.group("subscription", "authorities' monthly subscriptions and their reviews")
    c.command(subscription, "list", cmd_subscription_list, "list the subscriptions", listing=True)
    show_sub = c.command(
        subscription, "show", cmd_subscription_show, "one subscription and its deliveries and notices", listing=True
    )
    show_sub.add_argument("id", type=int, metavar="ID")
    cancel_sub = c.command(subscription, "cancel", cmd_subscription_cancel, "end a subscription by hand", acting=True)
    cancel_sub.add_argument("id", type=int, metavar="ID")
    extend_sub = c.command(
        subscription, "extend", cmd_subscription_extend, "move a subscription's review date by hand", acting=True
    )
    extend_sub.add_argument("id", type=int, metavar="ID")
    extend_sub.add_argument("--until", required=True, metavar="DATE", help="the new review date, YYYY-MM-DD")
