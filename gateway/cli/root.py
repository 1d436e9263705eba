"""The `gateway` command's root: the parser with every noun's commands, `main`, and one clear line on any error."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from sqlalchemy.exc import DBAPIError

from gateway import __version__
from gateway.admin.register import RegisterRefused
from gateway.audit import default_actor
from gateway.cli import admin, audit, authority, change, init, outbox, quarantine, register, run, schedule, subscription
from gateway.cli.tree import Commands, Handler, parents
from gateway.errors import Field, FieldError, GatewayError, UsageError
from gateway.logs import configure as configure_logs

EXIT_INTERNAL = 70  # EX_SOFTWARE
# The option that gives each field a refusal may name (gateway.admin.fields): said as the admin typed it.
FLAGS = {
    "name": "--name",
    "new_name": "--name",
    "kind": "--kind",
    "area": "--area",
    "auth_policy": "--auth",
    "emails": "--email",
    "add_emails": "--add-email",
    "remove_emails": "--remove-email",
    "use_openpgp": "--use-openpgp",
    "directory": "--dir",
    "review_on": "--until",
}


def build_parser() -> argparse.ArgumentParser:
    shared = parents()
    parser = argparse.ArgumentParser(
        prog="gateway",
        description="HMCI's register disclosure gateway: admin and operator commands.",
        parents=[shared.common, shared.acting],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = Commands(parser, shared)
    # In the order `gateway --help` lists them: setting up, what admins maintain, the mail path, then the rest.
    init.add_commands(commands)
    register.add_commands(commands)
    authority.add_commands(commands)
    change.add_commands(commands)
    admin.add_commands(commands)
    audit.add_commands(commands)
    run.add_process_and_run(commands)
    schedule.add_commands(commands)
    subscription.add_commands(commands)
    quarantine.add_commands(commands)
    outbox.add_commands(commands)
    register.add_areas(commands)
    run.add_demo(commands)
    return parser


def _actor(value: str) -> str:
    """The name recorded against a change: printable, bounded, and storable as UTF-8."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError("--actor is not valid text in this locale's encoding") from None
    if not value.strip() or not value.isprintable() or len(value) > 200:
        raise UsageError("--actor must be 1 to 200 printable characters")
    return value.strip()


def _said(exc: GatewayError) -> str:
    return exc.say(_flag) if isinstance(exc, FieldError) else str(exc)


def _flag(field: Field) -> str:
    return FLAGS.get(field.name, field.name)


def _explain(exc: BaseException) -> int:
    """One line on stderr for anything that stops a command; the exit code that goes with it."""
    if isinstance(exc, RegisterRefused):
        for problem in exc.problems:
            print(problem, file=sys.stderr)
    if isinstance(exc, GatewayError):
        print(f"gateway: error: {_said(exc)}", file=sys.stderr)
        return exc.exit_code
    if isinstance(exc, DBAPIError):
        # A constraint the checks before it did not foresee, or a change made at the same moment elsewhere.
        reason = " ".join(str(exc.orig or exc).split())[:300]
        print(f"gateway: error: the database refused the change, nothing was changed: {reason}", file=sys.stderr)
        return 1
    if isinstance(exc, KeyboardInterrupt):
        print("gateway: interrupted", file=sys.stderr)
        return 130
    print(
        f"gateway: internal error ({type(exc).__name__}): {' '.join(str(exc).split())[:300]} "
        "(set GATEWAY_DEBUG=1 to see the traceback)",
        file=sys.stderr,
    )
    return EXIT_INTERNAL


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    configure_logs("warning")  # JSON on stderr, never mixed into a command's output on stdout
    try:
        args.actor = _actor(args.actor) if hasattr(args, "actor") else default_actor()
        return asyncio.run(handler(args))
    except BrokenPipeError:
        # The reader went away (`gateway audit list | head`): not an error worth a word.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (GatewayError, DBAPIError, KeyboardInterrupt) as exc:
        return _explain(exc)
    except Exception as exc:
        if os.environ.get("GATEWAY_DEBUG"):
            raise
        return _explain(exc)
