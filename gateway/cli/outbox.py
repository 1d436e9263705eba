"""`gateway outbox`: mail waiting to be sent, and what was sent."""

from __future__ import annotations

import argparse
import datetime as dt

from gateway import outbox
from gateway.cli.opening import config_of, database
from gateway.cli.output import emit_rows
from gateway.cli.tree import Commands
from gateway.crypto import Keyring
from gateway.errors import ConfigError, GatewayError
from gateway.oauth import Tokens


async def cmd_outbox_list(args: argparse.Namespace) -> int:
    async with database(config_of(args)) as db:
        rows = await outbox.listing(db)
    listed = [
        {
            "id": r.id,
            "kind": r.kind,
            "recipient": r.recipient,
            "status": r.status,
            "attempts": r.attempts,
            "created_at": r.created_at.isoformat(timespec="seconds"),
            "last_error": r.last_error,
        }
        for r in rows
    ]
    emit_rows(args, listed, empty="the outbox is empty")
    return 0


async def cmd_outbox_send(args: argparse.Namespace) -> int:
    config = config_of(args)
    if config.smtp is None:
        raise ConfigError(f"{config.path}: [smtp] is not configured: there is no relay to send through")
    async with database(config) as db:
        keyring = Keyring.private(config.gpg.home, config.gpg.binary)  # it signs the admins' alerts
        transport = outbox.smtp_transport(config.smtp, tokens=Tokens(config).smtp)  # with [smtp.oauth], its tokens
        counts = await outbox.deliver_due(
            db, transport, admin_address=config.gateway.admin_address,
            now=dt.datetime.now(dt.UTC), retry=outbox.RetryPolicy.of(config.smtp),
            sign=keyring.signer(config.gpg.signing_key),
        )  # fmt: skip
    print(f"sent {counts['sent']}, will retry {counts['retrying']}, failed {counts['failed']}")
    return 0


async def cmd_outbox_retry(args: argparse.Namespace) -> int:
    config = config_of(args)
    async with database(config) as db:
        row = await outbox.retry_now(db, args.id, actor=args.actor, now=dt.datetime.now(dt.UTC))
    if row is None:
        raise GatewayError(f"no outgoing message {args.id} (see `gateway outbox list`)")
    if row.status == "sent":
        raise GatewayError(f"outgoing message {args.id} was already sent on {row.sent_at}")
    print(f"outgoing message {args.id} to {row.recipient} will be sent on the next delivery run")
    return 0


def add_commands(c: Commands) -> None:
    group = c.group("outbox", "mail waiting to be sent, and what was sent")
    c.command(group, "list", cmd_outbox_list, "list the outbox", listing=True)
    c.command(group, "send", cmd_outbox_send, "deliver what is due now through the [smtp] relay, once")
    retry = c.command(group, "retry", cmd_outbox_retry, "send a failed message again", acting=True)
    retry.add_argument("id", type=int, metavar="ID", help="the message's id in `gateway outbox list`")
