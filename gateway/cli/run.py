"""`gateway process`, `gateway run` and `gateway demo`: one message through the mail path, the daemon, the demo."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from gateway import daemon
from gateway.cli.opening import config_of, context, moment
from gateway.cli.output import emit_json, printable
from gateway.cli.tree import Commands
from gateway.dev.demo import run_demo
from gateway.errors import GatewayError
from gateway.logs import configure as configure_logs
from gateway.pipeline import process


async def cmd_process(args: argparse.Namespace) -> int:
    config = config_of(args)
    enough = config.limits.max_message_bytes + 1  # more is never read: it is quarantined as too big anyway
    try:
        if args.file == "-":
            raw = sys.stdin.buffer.read(enough)
        else:
            with Path(args.file).open("rb") as handle:
                raw = handle.read(enough)
    except OSError as exc:
        raise GatewayError(f"cannot read message {args.file}: {exc.strerror}") from None
    received = moment(args.as_of, "--as-of")
    async with context(config) as opened:
        ctx = opened if received is None else dataclasses.replace(opened, clock=lambda: received)
        outcome = await process(ctx, raw, source="file")
    if args.json:
        emit_json(outcome.__dict__)
    else:
        reference = f" (reference {outcome.reference})" if outcome.reference else ""
        print(printable(f"{outcome.kind}: {outcome.reason}{reference} [message {outcome.inbound_id}]"))
    return 0


async def cmd_run(args: argparse.Namespace) -> int:
    config = config_of(args)
    configure_logs(args.log_level)  # the daemon's own level; other commands log warnings and worse only
    await daemon.run(config)
    return 0


async def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.cli.root import main  # noqa: PLC0415 - the demo drives the root, which imports this module

    return await run_demo(Path(args.dir), main)


def add_process_and_run(c: Commands) -> None:
    process_command = c.command(
        c.root,
        "process",
        cmd_process,
        "run one raw message (a file, or - for stdin) through the mail path, as an MTA pipe would",
        listing=True,
    )
    process_command.add_argument("file", metavar="FILE", help="the raw message ('-' = stdin)")
    process_command.add_argument(
        "--as-of",
        metavar="WHEN",
        help="when the message counts as received, an ISO date-time (default now): for mail kept during an outage",
    )
    run = c.command(
        c.root,
        "run",
        cmd_run,
        "the daemon: watch the mailbox, answer requests, send the outbox; stops cleanly on SIGTERM or SIGINT",
    )
    run.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))


def add_demo(c: Commands) -> None:
    """Apart from process and run: `demo` is listed last in the help, after every noun."""
    demo = c.command(c.root, "demo", cmd_demo, "set up a throwaway gateway with sample data and show it working")
    demo.add_argument("--dir", default="demo", help="where to put the demo's files (default ./demo)")
