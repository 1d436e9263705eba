"""`gateway register` and `gateway areas`: the register of children's homes and the areas it is grouped by."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from gateway.admin.reference import local_authorities, police_force_areas
from gateway.admin.register import import_register, parse_register, summarise
from gateway.cli.opening import config_of, database
from gateway.cli.output import Bar, emit_json, print_table, warn
from gateway.cli.tree import Commands
from gateway.dev.sample import write_sample


async def cmd_register_import(args: argparse.Namespace) -> int:
    bar = Bar()
    try:
        parsed = await asyncio.to_thread(
            parse_register, Path(args.homes), Path(args.enforcement) if args.enforcement else None, bar
        )
        if args.check:
            counts = f"{len(parsed.homes)} homes, {len(parsed.enforcement)} enforcement actions"
            print(f"register OK: {counts} (not imported)")
            return 0
        if args.enforcement is None:
            warn("no --enforcement file given: the register will hold no enforcement actions")
        async with database(config_of(args)) as db:
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
    config = config_of(args)
    async with database(config) as db, db.transaction(write=False) as session:
        summary = await summarise(session)
    if args.json:
        emit_json(
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


async def cmd_areas(args: argparse.Namespace) -> int:
    if args.json:
        emit_json(
            {
                pfa: [la.name for la in local_authorities() if la.police_force_area == pfa]
                for pfa in police_force_areas()
            }
        )
        return 0
    rows: list[list[str]] = []
    room = AREAS_COLUMNS - len("  ") - max(len(pfa) for pfa in police_force_areas())
    for pfa in police_force_areas():
        lines = _packed([la.name for la in local_authorities() if la.police_force_area == pfa], room)
        rows += [[pfa if i == 0 else "", line] for i, line in enumerate(lines)]
    print_table(["police force area", "local authorities"], rows)
    return 0


AREAS_COLUMNS = 100  # the table's widest line: the local authorities are wrapped to fit


def _packed(names: list[str], width: int) -> list[str]:
    """Names joined with commas into lines of at most `width`, never breaking a name."""
    lines = [""]
    for name in names:
        joined = f"{lines[-1]}, {name}" if lines[-1] else name
        if len(joined) + 1 > width and lines[-1]:  # the comma that follows counts too
            lines[-1] += ","
            lines.append(name)
        else:
            lines[-1] = joined
    return lines


def add_commands(c: Commands) -> None:
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


def add_areas(c: Commands) -> None:
    """Kept apart from the register's group: `areas` stands at the root, where the help lists it last."""
    c.command(
        c.root,
        "areas",
        cmd_areas,
        "list the police force areas and local authorities the gateway knows",
        listing=True,
    )
