"""How commands speak: JSON for scripts, tables and lines for people, warnings and progress on stderr."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from tqdm import tqdm


def emit_json(value: Any, out: TextIO | None = None) -> None:
    json.dump(value, out or sys.stdout, indent=2, default=str, ensure_ascii=False)
    (out or sys.stdout).write("\n")


def emit_rows(args: argparse.Namespace, rows: Sequence[dict[str, Any]], *, empty: str) -> None:
    """A listing: JSON with --json, else a table, or one line saying why there is nothing to list."""
    if args.json:
        emit_json(list(rows))
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


def warn(message: str) -> None:
    print(f"gateway: warning: {message}", file=sys.stderr)


def date(value: dt.datetime | None) -> str:
    return value.date().isoformat() if value else "never"


class Bar:
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
