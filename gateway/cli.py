"""The `gateway` command: admin and operator commands, one clear line on any error."""

from __future__ import annotations

import argparse
import asyncio
import csv
import dataclasses
import datetime as dt
import json
import os
import re
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from tqdm import tqdm

from gateway import __version__, audit, daemon, quarantine
from gateway.admin import admins, approvals
from gateway.admin.authorities import AUTH_POLICIES, DEFAULT_AUTH_POLICY, KINDS, Allowlist, AuthorityView, Change
from gateway.admin.reference import local_authorities, police_force_areas
from gateway.admin.register import RegisterRefused, import_register, parse_register, summarise
from gateway.compose import Templates
from gateway.config import Config, load_config, resolve_config_path
from gateway.crypto import KeyInfo, KeyProblem, Keyring, in_thread
from gateway.db.engine import Database, create_database, require_current_schema, upgrade_schema
from gateway.db.models import Authority, OutboxMessage, Subscription
from gateway.dev.demo import run_demo
from gateway.dev.sample import write_sample
from gateway.entitlement import Keeper
from gateway.errors import ConfigError, GatewayError, UsageError
from gateway.extracts import defuse
from gateway.logs import configure as configure_logs
from gateway.outbox import RetryPolicy, deliver_due, retry_now, smtp_transport
from gateway.pipeline import process
from gateway.schedule import next_events, run_due
from gateway.subscriptions import change_by_hand, history
from gateway.values import Context, OutcomeKind

Handler = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]
EXIT_INTERNAL = 70  # EX_SOFTWARE


# ---------------------------------------------------------------- output


def _emit_json(value: Any, out: TextIO | None = None) -> None:
    json.dump(value, out or sys.stdout, indent=2, default=str, ensure_ascii=False)
    (out or sys.stdout).write("\n")


def _emit_rows(args: argparse.Namespace, rows: Sequence[dict[str, Any]], *, empty: str) -> None:
    """A listing: JSON with --json, else a table, or one line saying why there is nothing to list."""
    if args.json:
        _emit_json(list(rows))
    elif not rows:
        print(empty)
    else:
        print_table(list(rows[0].keys()), [list(row.values()) for row in rows])


def printable(value: object) -> str:
    """Text for a terminal: control characters (an escape sequence in an attacker's From, say) become '?'."""
    return "".join(c if c.isprintable() else "?" for c in str(value))


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]], out: TextIO | None = None) -> None:
    stream = out or sys.stdout
    cells = [[("" if v is None else printable(v)) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    for row in [list(headers), ["-" * w for w in widths], *cells]:
        stream.write("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() + "\n")


def _warn(message: str) -> None:
    print(f"gateway: warning: {message}", file=sys.stderr)


def _date(value: dt.datetime | None) -> str:
    return value.date().isoformat() if value else "never"


class _Bar:
    """A progress bar per stage on a terminal; silent when stderr is a pipe or a file."""

    def __init__(self) -> None:
        self._bars: dict[str, tqdm[Any]] = {}
        self._enabled = sys.stderr.isatty()

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self._enabled:
            return
        bar = self._bars.get(stage)
        if bar is None:
            bar = self._bars[stage] = tqdm(total=total, desc=stage, unit="row", file=sys.stderr, leave=False)
        bar.update(done - bar.n)

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()


# ---------------------------------------------------------------- plumbing


def _config(args: argparse.Namespace) -> Config:
    return load_config(resolve_config_path(getattr(args, "config", None)))


@asynccontextmanager
async def _database(config: Config) -> AsyncIterator[Database]:
    db = create_database(config.database)
    try:
        await require_current_schema(db)
        yield db
    finally:
        await db.close()


def _keyring(config: Config) -> Keyring:
    if not config.gpg.home.is_dir():
        raise GatewayError(f"GnuPG home {config.gpg.home} does not exist: run `gateway init` first")
    return Keyring.private(config.gpg.home, config.gpg.binary)


def _read_key_file(path: str) -> bytes:
    try:
        return sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise GatewayError(f"cannot read key file {path}: {exc.strerror}") from None


@asynccontextmanager
async def _allowlist(args: argparse.Namespace, *, rehearse: bool = False) -> AsyncIterator[Allowlist]:
    config = _config(args)
    keyring = _keyring(config)
    async with _database(config) as db:
        yield Allowlist(
            db,
            keyring,
            reserved={config.gateway.address, config.gateway.admin_address},
            gateway_key=config.gpg.signing_key,
            standing=Keeper(Context(config, db, keyring, Templates(config.gateway.templates))),
            rehearse=rehearse,
        )


# ---------------------------------------------------------------- init and keys


async def cmd_init(args: argparse.Namespace) -> int:
    config = _config(args)
    if not re.fullmatch(r"0|[1-9][0-9]*[dwmy]?", args.key_expiry):
        raise UsageError(f"--key-expiry {args.key_expiry!r}: use 0 (never), or a number with d, w, m or y (e.g. 2y)")
    created = Keyring.create_home(config.gpg.home)
    print(f"GnuPG home {config.gpg.home} {'created' if created else 'exists'} (mode 0700)")
    db = create_database(config.database)
    try:
        before, after = await upgrade_schema(db)
        if before == after:
            print(f"database {config.database.display_url} is up to date (schema {after})")
        else:
            print(f"database {config.database.display_url} upgraded from schema {before or 'none'} to {after}")
            # Recorded at once, so that a later step failing cannot leave the upgrade unrecorded.
            await _record(
                db, args.actor, "database.upgrade", config.database.display_url, {"from": before, "to": after}
            )
        keyring = Keyring(config.gpg.home, config.gpg.binary)
        generated = await _ensure_signing_key(config, keyring, args.key_expiry)
        if generated is not None:
            await _record(
                db,
                args.actor,
                "gateway.key-generated",
                config.gateway.address,
                {"fingerprint": generated.fingerprint, "expires": generated.expires},
            )
    finally:
        await db.close()
    return 0


async def _record(db: Database, actor: str, action: str, subject: str, details: dict[str, Any]) -> None:
    async with db.transaction() as session:
        await audit.record(session, actor=actor, action=action, subject=subject, details=details)


async def _ensure_signing_key(config: Config, keyring: Keyring, expiry: str) -> KeyInfo | None:
    """Check the configured key, or make one; returns the key made now, if one was."""
    address = config.gateway.address
    if config.gpg.signing_key:
        fingerprint = config.gpg.signing_key
        info = await in_thread(keyring.inspect, fingerprint)
        if info is None or not await in_thread(keyring.has_secret, fingerprint):
            raise KeyProblem(f"[gpg] signing_key {fingerprint} has no secret key in {config.gpg.home}")
        problems = info.problems()
        if not info.can_sign:
            problems.append("it cannot sign")
        if problems:
            raise KeyProblem(f"[gpg] signing_key {fingerprint} is unusable: {'; '.join(problems)}")
        print(f"signing key {fingerprint} is usable (expires {_date(info.expires)})")
        return None
    for fingerprint in await in_thread(keyring.secret_fingerprints):
        info = await in_thread(keyring.inspect, fingerprint)
        if info is not None and address in info.emails and not info.problems():
            print(f"a gateway key for {address} already exists: {fingerprint}")
            print(f'put it into {config.path}:\n\n[gpg]\nsigning_key = "{fingerprint}"')
            return None
    fingerprint = await in_thread(keyring.generate, "HMCI register disclosure gateway", address, expiry)
    print(f"generated the gateway's signing and encryption key: {fingerprint}")
    print(f'put it into {config.path}:\n\n[gpg]\nsigning_key = "{fingerprint}"')
    made = await in_thread(keyring.inspect, fingerprint)
    if made is None:
        raise KeyProblem(f"gpg generated {fingerprint} but cannot list it in {config.gpg.home}")
    return made


async def cmd_key_export(args: argparse.Namespace) -> int:
    config = _config(args)
    if not config.gpg.signing_key:
        raise ConfigError(f"{config.path}: [gpg] signing_key is not set: run `gateway init` and set it")
    keyring = _keyring(config)
    sys.stdout.write(await in_thread(keyring.export_public, config.gpg.signing_key))
    return 0


# ---------------------------------------------------------------- register


async def cmd_register_import(args: argparse.Namespace) -> int:
    bar = _Bar()
    try:
        parsed = await asyncio.to_thread(
            parse_register, Path(args.homes), Path(args.enforcement) if args.enforcement else None, bar
        )
        if args.check:
            counts = f"{len(parsed.homes)} homes, {len(parsed.enforcement)} enforcement actions"
            print(f"register OK: {counts} (not imported)")
            return 0
        if args.enforcement is None:
            _warn("no --enforcement file given: the register will hold no enforcement actions")
        async with _database(_config(args)) as db:
            summary = await import_register(db, parsed, actor=args.actor, progress=bar)
    finally:
        bar.close()
    print(
        f"imported {summary.homes} homes and {summary.enforcement_actions} enforcement actions "
        f"(import {summary.import_id}, replaced {summary.replaced_homes} homes; "
        f"homes file sha256 {summary.homes_sha256})"
    )
    return 0


async def cmd_register_sample(args: argparse.Namespace) -> int:
    summary = await asyncio.to_thread(write_sample, Path(args.out), args.homes, seed=args.seed)
    print(
        f"wrote {summary.homes} synthetic homes to {summary.homes_path} and "
        f"{summary.enforcement_actions} enforcement actions to {summary.enforcement_path}"
    )
    return 0


async def cmd_register_show(args: argparse.Namespace) -> int:
    config = _config(args)
    async with _database(config) as db, db.transaction(write=False) as session:
        summary = await summarise(session)
    if args.json:
        _emit_json(
            {
                "homes": summary.homes,
                "last_import": None
                if summary.last_import is None
                else {
                    "id": summary.last_import.id,
                    "imported_at": summary.last_import.imported_at.isoformat(),
                    "actor": summary.last_import.actor,
                    "homes_sha256": summary.last_import.homes_sha256,
                },
                "areas": [{**area.__dict__, "homes": area.homes} for area in summary.areas],
            }
        )
        return 0
    if summary.last_import is None:
        print("the register is empty: load it with `gateway register import --homes FILE`")
        return 0
    key = (
        (lambda a: (a.police_force_area,))
        if args.by == "police"
        else (lambda a: (a.police_force_area, a.local_authority))
    )
    grouped: dict[tuple[str, ...], list[int]] = {}
    for area in summary.areas:
        totals = grouped.setdefault(key(area), [0, 0, 0, 0, 0])
        for i, n in enumerate((area.homes, area.registered, area.suspended, area.closed, area.enforcement_actions)):
            totals[i] += n
    headers = ["police force area"] + (["local authority"] if args.by == "local-authority" else [])
    print_table(
        [*headers, "homes", "registered", "suspended", "closed", "enforcement"],
        [[*k, *v] for k, v in sorted(grouped.items())],
    )
    last = summary.last_import
    print(
        f"\n{summary.homes} homes in {len(grouped)} areas; last import {last.id} on "
        f"{last.imported_at.isoformat(timespec='seconds')} by {last.actor}"
    )
    return 0


# ---------------------------------------------------------------- authorities


def _print_authority(view: AuthorityView) -> None:
    rows = [
        ("name", view.name),
        ("kind", view.kind),
        ("area", view.area or "all of England (national)"),
        ("status", view.status),
        ("authentication", view.auth_policy),
        ("addresses", ", ".join(view.addresses)),
        ("key", view.key_fingerprint),
        ("key expires", _date(view.key_expires)),
        ("created", view.created_at.isoformat(timespec="seconds")),
        ("updated", view.updated_at.isoformat(timespec="seconds")),
    ]
    for label, value in rows:
        print(f"{label + ':':16}{value}")


def _report(change: Change, verb: str, args: argparse.Namespace) -> int:
    for warning in change.warnings:
        _warn(warning)
    if change.authority is None:
        return 0
    if getattr(args, "json", False):
        _emit_json(change.authority.as_dict())
    else:
        print(f"{verb} authority {change.authority.name!r}")
        _print_authority(change.authority)
    return 0


def _signature(args: argparse.Namespace, statement: str, gpg: str) -> bytes:
    """The admin's detached signature over the statement: from --signature FILE, or made now by their own gpg."""
    path = getattr(args, "signature", None)
    if path is not None and _wants_signing(args):
        raise UsageError("give either --signature FILE (made elsewhere) or --local-user/--gpg-home, not both")
    if path is not None:
        try:
            return sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
        except OSError as exc:
            raise GatewayError(f"cannot read signature file {path}: {exc.strerror}") from None
    home = Path(args.gpg_home) if args.gpg_home else None
    return admins.sign(statement, home=home, local_user=args.local_user, binary=gpg)


def _wants_signing(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "local_user", None) or getattr(args, "gpg_home", None))


async def _sign_proposal(args: argparse.Namespace, config: Config, ident: int, statement: str) -> None:
    signature = await asyncio.to_thread(_signature, args, statement, config.gpg.binary)
    async with _database(config) as db:
        fingerprint, name = await approvals.sign_proposal(
            db, ident, signature, binary=config.gpg.binary, gateway=config.gateway.address, now=dt.datetime.now(dt.UTC)
        )
    print(f"change {ident} signed by its proposer, admin {printable(name)} ({fingerprint})")


async def _make_or_propose(args: argparse.Namespace, proposal: approvals.Proposal, verb: str) -> int:
    """The change at once, or (with [gateway] require_second_admin) kept until two admins' keys have signed it."""
    config = _config(args)
    if not config.gateway.require_second_admin and proposal.kind not in approvals.ADMIN_KINDS:
        async with _allowlist(args) as allowlist:
            change = await approvals.apply(allowlist, proposal, actor=args.actor)
        return _report(change, verb, args)
    async with _allowlist(args, rehearse=True) as rehearsal:
        preview = await approvals.rehearse(rehearsal, proposal, binary=config.gpg.binary)
        proposal = approvals.settled(proposal, preview)
        ident, statement = await approvals.propose(
            rehearsal.db, proposal, actor=args.actor, now=dt.datetime.now(dt.UTC), gateway=config.gateway.address,
            binary=config.gpg.binary,
        )  # fmt: skip
    for warning in preview.warnings:
        _warn(warning)
    if args.json:
        _emit_json({"pending_change": ident, "statement": statement,
                    "would_be": preview.authority.as_dict() if preview.authority else None})  # fmt: skip
    else:
        print(f"change {ident} proposed; it needs two admins' signatures. It reads:\n")
        sys.stdout.write(statement)
        print()
    if _wants_signing(args):
        await _sign_proposal(args, config, ident, statement)
    elif not args.json:
        print(f"its proposer signs it with: gateway change sign {ident} --local-user YOUR-KEY")
    if not args.json:
        print(f"a different admin checks it with `gateway change show {ident}` and approves it with:")
        print(f"  gateway change approve {ident} --local-user THEIR-KEY")
    return 0


async def cmd_authority_add(args: argparse.Namespace) -> int:
    key_data = _read_key_file(args.key)
    arguments = {"kind": args.kind, "area": args.area, "emails": args.email, "key": approvals.key_argument(key_data),
                 "auth": args.auth}  # fmt: skip
    return await _make_or_propose(args, approvals.Proposal("add", args.name, arguments), "added")


async def cmd_authority_list(args: argparse.Namespace) -> int:
    async with _allowlist(args) as allowlist:
        views = await allowlist.list()
    if args.json:
        _emit_json([v.as_dict() for v in views])
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
                    v.key_fingerprint[-16:],
                    _date(v.key_expires),
                ]
                for v in views
            ],
        )
    return 0


async def cmd_authority_show(args: argparse.Namespace) -> int:
    async with _allowlist(args) as allowlist:
        view = await allowlist.show(args.authority)
    if args.json:
        _emit_json(view.as_dict())
    else:
        _print_authority(view)
    return 0


async def cmd_authority_update(args: argparse.Namespace) -> int:
    arguments = {"new_name": args.name, "kind": args.kind, "area": args.area, "auth": args.auth,
                 "add_emails": args.add_email or [], "remove_emails": args.remove_email or []}  # fmt: skip
    return await _make_or_propose(args, approvals.Proposal("update", args.authority, arguments), "updated")


async def cmd_authority_suspend(args: argparse.Namespace) -> int:
    async with _allowlist(args) as allowlist:
        change = await allowlist.set_status(args.authority, "suspended", actor=args.actor)
    return _report(change, "suspended", args)


async def cmd_authority_resume(args: argparse.Namespace) -> int:
    return await _make_or_propose(args, approvals.Proposal("resume", args.authority, {}), "resumed")


async def cmd_authority_remove(args: argparse.Namespace) -> int:
    async with _allowlist(args) as allowlist:
        change = await allowlist.remove(args.authority, actor=args.actor)
    return _report(change, "removed", args)


async def cmd_authority_set_key(args: argparse.Namespace) -> int:
    key = approvals.key_argument(_read_key_file(args.key_file))
    return await _make_or_propose(
        args, approvals.Proposal("set-key", args.authority, {"key": key}), "new key pinned for"
    )


async def cmd_change_list(args: argparse.Namespace) -> int:
    config = _config(args)
    async with _database(config) as db:
        rows = [dataclasses.asdict(p) for p in await approvals.listing(db, everything=args.all)]
    if not args.json:
        for row in rows:
            row["proposer"] = row["proposer"] or "(not signed yet)"
    _emit_rows(args, rows, empty="no changes were ever proposed" if args.all else "no changes wait for approval")
    return 0


async def cmd_change_show(args: argparse.Namespace) -> int:
    async with _database(_config(args)) as db:
        shown = await approvals.show(db, args.id)
    if args.json:
        _emit_json({**dataclasses.asdict(shown.change), "statement": shown.statement,
                    "proposer_name": shown.proposer_name, "approver_name": shown.approver_name})  # fmt: skip
        return 0
    if shown.statement is None:
        raise approvals.ApprovalError(f"change {args.id} has no statement: it was proposed under the old rule")
    # Exactly the bytes that are signed, and nothing else on stdout: `gateway change show 7 > change-7.txt`
    # is what an admin signs on another machine.
    sys.stdout.write(shown.statement)
    return 0


async def _to_sign(args: argparse.Namespace, config: Config, *, approving: bool) -> str:
    """The statement, checked ready for this signature; shown before the admin's own gpg signs it."""
    async with _database(config) as db:
        statement = await approvals.to_sign(db, args.id, approving=approving)
    if _wants_signing(args) and sys.stderr.isatty():
        # For the person whose gpg (pinentry, smartcard) is about to sign; stdout keeps saying what was done.
        print(f"change {args.id} reads, as you are about to sign it:\n\n{statement}", file=sys.stderr)
    return statement


async def cmd_change_sign(args: argparse.Namespace) -> int:
    config = _config(args)
    await _sign_proposal(args, config, args.id, await _to_sign(args, config, approving=False))
    return 0


async def cmd_change_approve(args: argparse.Namespace) -> int:
    config = _config(args)
    statement = await _to_sign(args, config, approving=True)
    signature = await asyncio.to_thread(_signature, args, statement, config.gpg.binary)
    async with _allowlist(args) as allowlist:

        async def make(proposal: approvals.Proposal, approval: approvals.Approval) -> Change:
            return await approvals.apply(
                allowlist, proposal, actor=approval.actor, approval=approval, binary=config.gpg.binary
            )

        proposal, change = await approvals.approve(
            allowlist.db, args.id, signature, binary=config.gpg.binary, gateway=config.gateway.address,
            now=dt.datetime.now(dt.UTC), make=make,
        )  # fmt: skip
    if proposal.kind in approvals.ADMIN_KINDS:
        print(f"change {args.id} approved and made: {printable(proposal.summary())}")
        return 0
    return _report(change, approvals.VERBS[proposal.kind], args)


async def cmd_change_reject(args: argparse.Namespace) -> int:
    async with _database(_config(args)) as db:
        proposal = await approvals.reject(db, args.id, actor=args.actor, now=dt.datetime.now(dt.UTC))
    print(f"change {args.id} rejected: {printable(proposal.summary())}; nothing was changed")
    return 0


# ---------------------------------------------------------------- admins


async def cmd_admin_add(args: argparse.Namespace) -> int:
    config = _config(args)
    key_data = _read_key_file(args.key)
    now = dt.datetime.now(dt.UTC)
    async with _database(config) as db:
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
        return await _make_or_propose(args, proposal, approvals.VERBS["admin-add"])
    if args.json:
        _emit_json({**view.as_dict(), "user_ids": list(scanned.info.user_ids)})
        return 0
    print(f"registered admin {printable(view.name)} at set-up ({count + 1} of {admins.SETUP_ADMINS})")
    print(f"fingerprint:    {view.fingerprint}")
    for uid in scanned.info.user_ids:
        print(f"user ID:        {printable(uid)}")
    print("confirm this fingerprint with the admin in person or by phone (never by the mail it came with)")
    return 0


async def cmd_admin_remove(args: argparse.Namespace) -> int:
    fingerprint = args.fingerprint.replace(" ", "").upper()
    async with _database(_config(args)) as db:
        name = await admins.check_removable(db, fingerprint)
    proposal = approvals.Proposal("admin-remove", fingerprint, {"name": name})
    return await _make_or_propose(args, proposal, approvals.VERBS["admin-remove"])


async def cmd_admin_list(args: argparse.Namespace) -> int:
    async with _database(_config(args)) as db:
        rows = [view.as_dict() for view in await admins.listing(db)]
    _emit_rows(args, rows, empty="no admins yet: the host's administrator registers two with `gateway admin add`")
    return 0


# ---------------------------------------------------------------- audit


def _since(value: str | None, option: str = "--since") -> dt.datetime | None:
    if value is None:
        return None
    try:
        moment = dt.datetime.fromisoformat(value)
        return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)
    except (ValueError, OverflowError):
        raise UsageError(f"{option} {value!r}: expected an ISO date or date-time, e.g. 2026-11-01") from None


def _actor(value: str) -> str:
    """The name recorded against a change: printable, bounded, and storable as UTF-8."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError("--actor is not valid text in this locale's encoding") from None
    if not value.strip() or not value.isprintable() or len(value) > 200:
        raise UsageError("--actor must be 1 to 200 printable characters")
    return value.strip()


async def cmd_audit_list(args: argparse.Namespace) -> int:
    config = _config(args)
    async with _database(config) as db, db.transaction(write=False) as session:
        records = [entry async for entry in audit.entries(session, _since(args.since))]
    if args.json:
        _emit_json([entry.as_dict() for entry in records])
    elif not records:
        print("no audit records" + (f" since {args.since}" if args.since else ""))
    else:
        print_table(
            ["seq", "recorded at (UTC)", "actor", "action", "subject"],
            [[e.seq, e.recorded_at, e.actor, e.action, e.subject] for e in records],
        )
    return 0


async def cmd_audit_export(args: argparse.Namespace) -> int:
    config = _config(args)
    out = sys.stdout
    writer = csv.writer(out, lineterminator="\r\n") if args.format == "csv" else None
    if writer is not None:
        writer.writerow(["seq", "recorded_at", "actor", "action", "subject", "details", "prev_hash", "hash"])
    async with _database(config) as db, db.transaction(write=False) as session:
        async for entry in audit.entries(session, _since(args.since)):
            row = entry.as_dict()
            if writer is None:
                out.write(json.dumps(row, ensure_ascii=False, sort_keys=True, default=str) + "\n")
            else:
                row["details"] = audit.canonical_json(entry.details)
                writer.writerow([defuse(str(row[k])) for k in row])
    return 0


async def cmd_audit_verify(args: argparse.Namespace) -> int:
    config = _config(args)
    async with _database(config) as db, db.transaction(write=False) as session:
        result = await audit.verify(session)
    if args.json:
        _emit_json(
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


# ---------------------------------------------------------------- the mail path


async def cmd_process(args: argparse.Namespace) -> int:
    config = _config(args)
    enough = config.limits.max_message_bytes + 1  # more is never read: it is quarantined as too big anyway
    try:
        if args.file == "-":
            raw = sys.stdin.buffer.read(enough)
        else:
            with Path(args.file).open("rb") as handle:
                raw = handle.read(enough)
    except OSError as exc:
        raise GatewayError(f"cannot read message {args.file}: {exc.strerror}") from None
    received = _since(args.as_of, "--as-of")
    async with _pipeline(config) as opened:
        ctx = opened if received is None else dataclasses.replace(opened, clock=lambda: received)
        outcome = await process(ctx, raw, source="file")
    if args.json:
        _emit_json(outcome.__dict__)
    else:
        reference = f" (reference {outcome.reference})" if outcome.reference else ""
        print(printable(f"{outcome.kind}: {outcome.reason}{reference} [message {outcome.inbound_id}]"))
    return 0


async def cmd_run(args: argparse.Namespace) -> int:
    config = _config(args)
    configure_logs(args.log_level)  # the daemon's own level; other commands log warnings and worse only
    await daemon.run(config)
    return 0


async def cmd_outbox_send(args: argparse.Namespace) -> int:
    config = _config(args)
    if config.smtp is None:
        raise ConfigError(f"{config.path}: [smtp] is not configured: there is no relay to send through")
    async with _database(config) as db:
        keyring = Keyring(config.gpg.home, config.gpg.binary)
        counts = await deliver_due(
            db, smtp_transport(config.smtp), admin_address=config.gateway.admin_address,
            now=dt.datetime.now(dt.UTC), retry=RetryPolicy.of(config.smtp),
            sign=keyring.signer(config.gpg.signing_key),
        )  # fmt: skip
    print(f"sent {counts['sent']}, will retry {counts['retrying']}, failed {counts['failed']}")
    return 0


async def cmd_outbox_retry(args: argparse.Namespace) -> int:
    config = _config(args)
    async with _database(config) as db:
        row = await retry_now(db, args.id, actor=args.actor, now=dt.datetime.now(dt.UTC))
    if row is None:
        raise GatewayError(f"no outgoing message {args.id} (see `gateway outbox list`)")
    if row.status == "sent":
        raise GatewayError(f"outgoing message {args.id} was already sent on {row.sent_at}")
    print(f"outgoing message {args.id} to {row.recipient} will be sent on the next delivery run")
    return 0


async def cmd_schedule_run(args: argparse.Namespace) -> int:
    config = _config(args)
    as_of = _since(args.as_of, "--as-of") or dt.datetime.now(dt.UTC)
    async with _pipeline(config) as ctx:
        counts = await run_due(ctx, as_of)
    summary = ", ".join(f"{n} {kind}" for kind, n in counts.items())
    print(f"as of {as_of.isoformat(timespec='seconds')}: {summary} (queued in the outbox)")
    return 0


async def cmd_schedule_show(args: argparse.Namespace) -> int:
    config = _config(args)
    now = dt.datetime.now(dt.UTC)
    async with _database(config) as db, db.transaction(write=False) as session:
        rows = (
            await session.execute(
                select(Subscription, Authority.name).join(Authority).where(Subscription.status == "active")
            )
        ).all()
    listed = [
        {"id": sub.id, "authority": name, "area": sub.area, **next_events(sub, now, config.schedule)}
        for sub, name in rows
    ]
    _emit_rows(args, listed, empty="nothing scheduled: there are no active subscriptions")
    return 0


async def cmd_subscription_show(args: argparse.Namespace) -> int:
    config = _config(args)
    async with _database(config) as db:
        sub, authority, events = await history(db, args.id)
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
        _emit_json({**shown, "history": steps})
        return 0
    for label, value in shown.items():
        print(f"{label + ':':13}{value}")
    print()
    print_table(["kind", "key", "at", "reference"], [list(step.values()) for step in steps])
    return 0


async def cmd_subscription_cancel(args: argparse.Namespace) -> int:
    config = _config(args)
    async with _database(config) as db:
        row = await change_by_hand(db, args.id, actor=args.actor, cancel=True)
    print(f"subscription {row.id} ({row.area}) cancelled: no further deliveries")
    return 0


async def cmd_subscription_extend(args: argparse.Namespace) -> int:
    config = _config(args)
    try:
        until = dt.date.fromisoformat(args.until)
    except ValueError:
        raise UsageError(f"--until {args.until!r}: expected a date, YYYY-MM-DD") from None
    async with _database(config) as db:
        row = await change_by_hand(db, args.id, actor=args.actor, review_on=until)
    print(f"subscription {row.id} ({row.area}) now comes up for review on {row.review_on.isoformat()}")
    return 0


@asynccontextmanager
async def _pipeline(config: Config) -> AsyncIterator[Context]:
    keyring = _keyring(config)
    async with _database(config) as db:
        yield Context(config, db, keyring, Templates(config.gateway.templates))


async def cmd_quarantine_list(args: argparse.Namespace) -> int:
    config = _config(args)
    async with _pipeline(config) as ctx:
        rows = [dataclasses.asdict(held) for held in await quarantine.listing(ctx, everything=args.all)]
    shown = rows if args.json else [{**row, "reason": row["reason"][:80]} for row in rows]
    _emit_rows(args, shown, empty="nothing was ever quarantined" if args.all else "nothing is held in quarantine")
    return 0


async def cmd_quarantine_show(args: argparse.Namespace) -> int:
    config = _config(args)
    async with _pipeline(config) as ctx:
        shown = await quarantine.show(ctx, args.id)
    if args.json:
        _emit_json(shown)
        return 0
    for key in ("id", "status", "received_at", "source", "size", "sha256", "why", "decided_by"):
        print(f"{key}: {printable(shown[key])}")
    print("headers:")
    for name, value in shown["headers"]:
        print(f"  {name}: {printable(value)}")
    print("sent because of it:" if shown["sent"] else "sent because of it: nothing")
    for mail in shown["sent"]:
        print(printable(f"  outbox {mail['id']}: {mail['kind']} to {mail['recipient']} ({mail['status']})"))
    return 0


async def cmd_quarantine_release(args: argparse.Namespace) -> int:
    config = _config(args)
    async with _pipeline(config) as ctx:
        outcome = await quarantine.release(ctx, args.id, actor=args.actor)
    if outcome.kind == OutcomeKind.QUARANTINED:
        raise GatewayError(f"message {args.id} {outcome.reason}")
    reference = f" (reference {outcome.reference})" if outcome.reference else ""
    print(f"message {args.id} released: {outcome.kind}: {outcome.reason}{reference}")
    return 0


async def cmd_quarantine_discard(args: argparse.Namespace) -> int:
    config = _config(args)
    async with _pipeline(config) as ctx:
        await quarantine.discard(ctx, args.id, actor=args.actor)
    print(f"message {args.id} discarded: it stays on record, and nothing is sent")
    return 0


async def cmd_subscription_list(args: argparse.Namespace) -> int:
    config = _config(args)
    async with _database(config) as db, db.transaction(write=False) as session:
        rows = (
            await session.execute(
                select(Subscription, Authority.name).join(Authority).order_by(Subscription.status, Subscription.id)
            )
        ).all()
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
    _emit_rows(args, listed, empty="no subscriptions: an authority starts one by asking with Frequency: monthly")
    return 0


async def cmd_outbox_list(args: argparse.Namespace) -> int:
    config = _config(args)
    async with _database(config) as db, db.transaction(write=False) as session:
        rows = (await session.execute(select(OutboxMessage).order_by(OutboxMessage.id))).scalars().all()
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
    _emit_rows(args, listed, empty="the outbox is empty")
    return 0


# ---------------------------------------------------------------- reference data and demo


async def cmd_areas(args: argparse.Namespace) -> int:
    if args.json:
        _emit_json(
            {
                pfa: [la.name for la in local_authorities() if la.police_force_area == pfa]
                for pfa in police_force_areas()
            }
        )
        return 0
    print_table(
        ["police force area", "local authorities"],
        [
            [pfa, ", ".join(la.name for la in local_authorities() if la.police_force_area == pfa)]
            for pfa in police_force_areas()
        ],
    )
    return 0


async def cmd_demo(args: argparse.Namespace) -> int:
    return await run_demo(Path(args.dir), main)


# ---------------------------------------------------------------- parser


@dataclass(frozen=True)
class _Parents:
    """Options shared by many commands; argparse needs them as parent parsers."""

    common: argparse.ArgumentParser
    acting: argparse.ArgumentParser
    listing: argparse.ArgumentParser
    signing: argparse.ArgumentParser


def _parents() -> _Parents:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS keeps a sub-command's default from overwriting a value given before the sub-command.
    common.add_argument(
        "--config",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="settings file (default: $GATEWAY_CONFIG, else ./config/gateway.toml)",
    )
    acting = argparse.ArgumentParser(add_help=False)
    acting.add_argument(
        "--actor",
        default=argparse.SUPPRESS,
        help="who is making this change, for the audit trail (default: your OS user name)",
    )
    listing = argparse.ArgumentParser(add_help=False)
    listing.add_argument("--json", action="store_true", help="print JSON for scripts instead of a table")
    signing = argparse.ArgumentParser(add_help=False)
    signing.add_argument(
        "--local-user",
        metavar="KEY",
        help="sign the change's statement with this admin key, in your own gpg (agent, pinentry or smartcard)",
    )
    signing.add_argument("--gpg-home", metavar="DIR", help="your GnuPG home for signing (default: gpg's own)")
    return _Parents(common, acting, listing, signing)


class _Commands:
    """Builds the command tree: a group is a noun, a command a verb under it."""

    def __init__(self, root: argparse.ArgumentParser, parents: _Parents) -> None:
        self.parents = parents
        self.root = root.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def group(self, name: str, help_text: str) -> Any:
        sub = self.root.add_parser(name, help=help_text, description=help_text, parents=[self.parents.common])
        return sub.add_subparsers(dest=f"{name}_command", metavar="COMMAND", required=True)

    def command(
        self,
        group: Any,
        name: str,
        handler: Handler,
        help_text: str,
        *,
        acting: bool = False,
        listing: bool = False,
        signing: bool = False,
    ) -> argparse.ArgumentParser:
        parents = [self.parents.common]
        parents += [self.parents.acting] if acting else []
        parents += [self.parents.listing] if listing else []
        parents += [self.parents.signing] if signing else []
        sub: argparse.ArgumentParser = group.add_parser(name, help=help_text, description=help_text, parents=parents)
        sub.set_defaults(handler=handler)
        return sub


def _init_and_key_commands(c: _Commands) -> None:
    init = c.command(
        c.root,
        "init",
        cmd_init,
        "create or upgrade the database schema and the GnuPG home; make the gateway's key if none is set",
        acting=True,
    )
    init.add_argument(
        "--key-expiry",
        default="2y",
        metavar="WHEN",
        help="validity of a newly generated gateway key, in gpg's syntax (default 2y; 0 = never)",
    )
    key = c.group("key", "the gateway's own OpenPGP key")
    c.command(key, "export", cmd_key_export, "print the gateway's public key (authorities need it)")


def _register_commands(c: _Commands) -> None:
    register = c.group("register", "the register of children's homes")
    imp = c.command(
        register,
        "import",
        cmd_register_import,
        "replace the register with the homes (and enforcement actions) in these CSV files",
        acting=True,
    )
    imp.add_argument("--homes", required=True, metavar="FILE", help="homes CSV (see README for the columns)")
    imp.add_argument("--enforcement", metavar="FILE", help="enforcement actions CSV: urn, date, nature")
    imp.add_argument("--check", action="store_true", help="only check the files; import nothing")
    sample = c.command(
        register,
        "sample",
        cmd_register_sample,
        "write a realistic synthetic register (fake data) for demos, tests and benchmarks",
    )
    sample.add_argument("--homes", required=True, type=int, metavar="N", help="number of homes")
    sample.add_argument("--out", required=True, metavar="DIR", help="directory for homes.csv and enforcement.csv")
    sample.add_argument("--seed", type=int, default=2013, help="random seed (same seed, same register)")
    show = c.command(register, "show", cmd_register_show, "summarise the register by area", listing=True)
    show.add_argument(
        "--by",
        choices=("police", "local-authority"),
        default="police",
        help="group by police force area (default) or by local authority",
    )


def _authority_commands(c: _Commands) -> None:
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
        choices=AUTH_POLICIES,
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
    update.add_argument("--auth", choices=AUTH_POLICIES, help="new authentication policy")
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
    change = c.group("change", "allowlist, key and admin changes waiting for a second admin (two-person rule)")
    change_list = c.command(change, "list", cmd_change_list, "the changes waiting for approval", listing=True)
    change_list.add_argument("--all", action="store_true", help="also those approved, rejected or cancelled")
    show = c.command(
        change, "show", cmd_change_show, "print exactly the statement of a change that admins sign", listing=True
    )
    show.add_argument("id", type=int, metavar="ID")
    signature_help = "a detached signature over `gateway change show ID`, made elsewhere ('-' = stdin)"
    sign = c.command(change, "sign", cmd_change_sign, "sign a change you proposed, as its proposer", signing=True)
    sign.add_argument("id", type=int, metavar="ID")
    sign.add_argument("--signature", metavar="FILE.asc", help=signature_help)
    approve = c.command(
        change, "approve", cmd_change_approve, "sign and make a change another admin proposed and signed",
        listing=True, signing=True,
    )  # fmt: skip
    approve.add_argument("id", type=int, metavar="ID")
    approve.add_argument("--signature", metavar="FILE.asc", help=signature_help)
    reject = c.command(change, "reject", cmd_change_reject, "drop a pending change (only takes it away)", acting=True)
    reject.add_argument("id", type=int, metavar="ID")
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


def _audit_and_other_commands(c: _Commands) -> None:
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
    schedule = c.group("schedule", "monthly deliveries, review reminders and lapses")
    schedule_run = c.command(
        schedule, "run", cmd_schedule_run, "do everything due now (or as of a moment), each thing once", listing=False
    )
    schedule_run.add_argument("--as-of", metavar="WHEN", help="an ISO date-time (UTC unless it says otherwise)")
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
    c.command(schedule, "show", cmd_schedule_show, "what is due next, and when", listing=True)
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
    outbox = c.group("outbox", "mail waiting to be sent, and what was sent")
    c.command(outbox, "list", cmd_outbox_list, "list the outbox", listing=True)
    c.command(outbox, "send", cmd_outbox_send, "deliver what is due now through the [smtp] relay, once")
    retry = c.command(outbox, "retry", cmd_outbox_retry, "send a failed message again", acting=True)
    retry.add_argument("id", type=int, metavar="ID", help="the message's id in `gateway outbox list`")
    c.command(
        c.root,
        "areas",
        cmd_areas,
        "list the police force areas and local authorities the gateway knows",
        listing=True,
    )
    demo = c.command(c.root, "demo", cmd_demo, "set up a throwaway gateway with sample data and show it working")
    demo.add_argument("--dir", default="demo", help="where to put the demo's files (default ./demo)")


def build_parser() -> argparse.ArgumentParser:
    parents = _parents()
    parser = argparse.ArgumentParser(
        prog="gateway",
        description="HMCI's register disclosure gateway: admin and operator commands.",
        parents=[parents.common, parents.acting],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = _Commands(parser, parents)
    _init_and_key_commands(commands)
    _register_commands(commands)
    _authority_commands(commands)
    _audit_and_other_commands(commands)
    return parser


def _explain(exc: BaseException) -> int:
    """One line on stderr for anything that stops a command; the exit code that goes with it."""
    if isinstance(exc, RegisterRefused):
        for problem in exc.problems:
            print(problem, file=sys.stderr)
    if isinstance(exc, GatewayError):
        print(f"gateway: error: {exc}", file=sys.stderr)
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
        args.actor = _actor(args.actor) if hasattr(args, "actor") else audit.default_actor()
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
