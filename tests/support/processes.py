"""The child processes of this test process, read from Linux /proc: to show a bounded tool was stopped and reaped."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def children(named: Callable[[str], bool]) -> list[str]:
    """Processes, running or zombie, whose parent is this test process and whose name `named` accepts."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        state, parent = text[text.rindex(")") + 2 :].split()[:2]
        if int(parent) == os.getpid() and named(name):
            found.append(f"{stat.parent.name} {name} {state}")
    return found
