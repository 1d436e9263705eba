"""`gateway audit`: the hash-chained audit trail, listed, exported and verified."""

from __future__ import annotations

import argparse
import csv
import json
import sys

from gateway import audit
from gateway.cli.opening import config_of, database, moment
from gateway.cli.output import emit_json, print_table
from gateway.cli.tree import Commands
from gateway.extracts import defuse


async def cmd_audit_list(args: argparse.Namespace) -> int:
    config = config_of(args)
    async with database(config) as db, db.transaction(write=False) as session:
        records = [entry async for entry in audit.entries(session, moment(args.since))]
    if args.json:
        emit_json([entry.as_dict() for entry in records])
    elif not records:
        print("no audit records" + (f" since {args.since}" if args.since else ""))
    else:
        print_table(
            ["seq", "recorded at (UTC)", "actor", "action", "subject"],
            [[e.seq, e.recorded_at, e.actor, e.action, e.subject] for e in records],
        )
    return 0


async def cmd_audit_export(args: argparse.Namespace) -> int:
    config = config_of(args)
    out = sys.stdout
    writer = csv.writer(out, lineterminator="\r\n") if args.format == "csv" else None
    if writer is not None:
        writer.writerow(["seq", "recorded_at", "actor", "action", "subject", "details", "prev_hash", "hash"])
    async with database(config) as db, db.transaction(write=False) as session:
        async for entry in audit.entries(session, moment(args.since)):
            row = entry.as_dict()
            if writer is None:
                out.write(json.dumps(row, ensure_ascii=False, sort_keys=True, default=str) + "\n")
            else:
                row["details"] = audit.canonical_json(entry.details)
                writer.writerow([defuse(str(row[k])) for k in row])
    return 0


async def cmd_audit_verify(args: argparse.Namespace) -> int:
    config = config_of(args)
    async with database(config) as db, db.transaction(write=False) as session:
        result = await audit.verify(session)
    if args.json:
        emit_json(
            {
                "ok": result.ok,
                "records": result.records,
                "head_seq": result.head_seq,
                "head_hash": result.head_hash,
                "problem": result.problem,
            }
        )
    elif result.ok:
        noun = "record" if result.records == 1 else "records"
        print(f"audit trail intact: {result.records} {noun}; head {result.head_seq} {result.head_hash}")
    if not result.ok:
        print(f"gateway: error: audit trail broken: {result.problem}", file=sys.stderr)
        return 1
    return 0


def add_commands(c: Commands) -> None:
    audit_group = c.group("audit", "the hash-chained audit trail")
    since_help = "only records at or after this ISO date or time (UTC)"
    audit_list = c.command(audit_group, "list", cmd_audit_list, "list audit records", listing=True)
    audit_list.add_argument("--since", metavar="WHEN", help=since_help)
    export = c.command(audit_group, "export", cmd_audit_export, "export audit records to stdout")
    export.add_argument("--format", choices=("csv", "jsonl"), required=True)
    export.add_argument("--since", metavar="WHEN", help=since_help)
    c.command(
        audit_group,
        "verify",
        cmd_audit_verify,
        "check the hash chain; exit 1 naming the first altered, removed or reordered record",
        listing=True,
    )
