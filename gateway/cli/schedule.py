"""`gateway schedule`: monthly deliveries, review reminders and lapses, run now or shown ahead."""

from __future__ import annotations

import argparse
import datetime as dt

from gateway import subscriptions
from gateway.cli.opening import config_of, context, database, moment
from gateway.cli.output import emit_rows
from gateway.cli.tree import Commands
from gateway.schedule import next_events, run_due


async def cmd_schedule_run(args: argparse.Namespace) -> int:
    config = config_of(args)
    as_of = moment(args.as_of, "--as-of") or dt.datetime.now(dt.UTC)
    async with context(config) as ctx:
        counts = await run_due(ctx, as_of)
    summary = ", ".join(f"{n} {kind}" for kind, n in counts.items())
    print(f"as of {as_of.isoformat(timespec='seconds')}: {summary} (queued in the outbox)")
    return 0


async def cmd_schedule_show(args: argparse.Namespace) -> int:
    config = config_of(args)
    now = dt.datetime.now(dt.UTC)
    async with database(config) as db:
        rows = await subscriptions.listing(db, active_only=True)
    listed = [
        {"id": sub.id, "authority": name, "area": sub.area, **next_events(sub, now, config.schedule)}
        for sub, name in rows
    ]
    emit_rows(args, listed, empty="nothing scheduled: there are no active subscriptions")
    return 0


def add_commands(c: Commands) -> None:
    schedule = c.group("schedule", "monthly deliveries, review reminders and lapses")
    schedule_run = c.command(
        schedule, "run", cmd_schedule_run, "do everything due now (or as of a moment), each thing once", listing=False
    )
    schedule_run.add_argument("--as-of", metavar="WHEN", help="an ISO date-time (UTC unless it says otherwise)")
    c.command(schedule, "show", cmd_schedule_show, "what is due next, and when", listing=True)
