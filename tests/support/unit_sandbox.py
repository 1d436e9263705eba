"""Loads the seccomp filters a systemd unit's settings make, then runs a command under them: run by Debian's
/usr/bin/python3 (its python3-seccomp module), not the project's venv, and importing nothing of the project.

    python3 unit_sandbox.py --syscall-filter @system-service [--memory-deny-write-execute] -- COMMAND...

What systemd does, as systemd does it (src/shared/seccomp-util.c): SystemCallFilter= is an allowlist of the
system calls in the named sets, expanded by `systemd-analyze syscall-filter` itself, and any other call kills
the process (SIGSYS); SystemCallArchitectures=native is libseccomp's default (another architecture's calls are
killed too); MemoryDenyWriteExecute= refuses, with EPERM, memory that is writable and executable at once and
memory made executable later (mmap, mprotect, pkey_mprotect, shmat). no_new_privs must already be set
(NoNewPrivileges=, setpriv --no-new-privs): an unprivileged process may not load a filter without it.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import subprocess
import sys

import seccomp  # type: ignore[import-not-found, unused-ignore]  # Debian's python3-seccomp, not in the venv

PROT_WRITE = 0x2
PROT_EXEC = 0x4
SHM_EXEC = 0o100000


def expand(group: str, seen: set[str]) -> set[str]:
    """The system calls a set names, its nested sets expanded, as `systemd-analyze syscall-filter` lists them."""
    listed = subprocess.run(
        ["systemd-analyze", "syscall-filter", group], capture_output=True, text=True, check=True
    ).stdout
    names: set[str] = set()
    for line in (line.strip() for line in listed.splitlines()[1:]):
        if not line or line.startswith("#"):
            continue
        if not line.startswith("@"):
            names.add(line)
        elif line not in seen:
            seen.add(line)
            names |= expand(line, seen)
    return names


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--syscall-filter", required=True)
    parser.add_argument("--memory-deny-write-execute", action="store_true")
    parser.add_argument("command", nargs="+")
    args = parser.parse_args()
    allowed: set[str] = set()
    for group in args.syscall_filter.split():
        allowed |= expand(group, {group}) if group.startswith("@") else {group}
    # Two filters, as systemd loads them: stacked, the most restrictive verdict wins. The write-execute one
    # first, so that loading the allowlist (seccomp(2), in no set) still passes the filters already loaded.
    if args.memory_deny_write_execute:
        wx = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
        wx.add_rule(
            seccomp.ERRNO(errno.EPERM),
            "mmap",
            seccomp.Arg(2, seccomp.MASKED_EQ, PROT_WRITE | PROT_EXEC, PROT_WRITE | PROT_EXEC),
        )
        wx.add_rule(seccomp.ERRNO(errno.EPERM), "mprotect", seccomp.Arg(2, seccomp.MASKED_EQ, PROT_EXEC, PROT_EXEC))
        wx.add_rule(
            seccomp.ERRNO(errno.EPERM), "pkey_mprotect", seccomp.Arg(2, seccomp.MASKED_EQ, PROT_EXEC, PROT_EXEC)
        )
        wx.add_rule(seccomp.ERRNO(errno.EPERM), "shmat", seccomp.Arg(2, seccomp.MASKED_EQ, SHM_EXEC, SHM_EXEC))
        wx.load()
    calls = seccomp.SyscallFilter(defaction=seccomp.KILL_PROCESS)
    for name in sorted(allowed):
        with contextlib.suppress(RuntimeError, ValueError, OSError):  # a call this architecture lacks: skipped
            calls.add_rule(seccomp.ALLOW, name)
    calls.load()
    os.execv(args.command[0], args.command)  # noqa: S606 - the command the test gave, as systemd runs it


if __name__ == "__main__":
    sys.exit(main())
