"""The shipped systemd unit, read as systemd reads it, and its sandbox rebuilt where systemd itself cannot run.

No systemd runs as process 1 on the machines the tests run on, so `sandboxed` builds what the unit's settings
make with the tools systemd's own settings map onto: bubblewrap for the file system (ProtectSystem=strict and
ReadWritePaths=, PrivateTmp=, PrivateDevices=, ProtectHome=), setpriv for NoNewPrivileges= and an empty
CapabilityBoundingSet=, and tests/support/unit_sandbox.py for SystemCallFilter=, SystemCallArchitectures= and
MemoryDenyWriteExecute=. Each is built only when the unit asks for it, so the emulation follows the unit.
What it does not rebuild: User= (the command keeps the test's user, root, with every capability dropped, so
file ownership is not what a service user would see; README "On a host, as a service" was walked by hand for
that), the Protect*/Restrict* settings of kernel interfaces and namespaces, and MemoryMax=.
"""

from __future__ import annotations

import configparser
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
UNIT = ROOT / "config" / "register-gateway.service"
LOADER = Path(__file__).with_name("unit_sandbox.py")
# The loader runs under Debian's python3 with its python3-seccomp module (the venv has no libseccomp binding).
SYSTEM_PYTHON = "/usr/bin/python3"
REQUIRE_SANDBOX_ENV = "GATEWAY_TEST_REQUIRE_SANDBOX"
# What a User= service's environment holds besides Environment= (systemd.exec(5), "Environment variables in
# spawned processes"), for the unit's user: its home is the state directory.
SERVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"


def unit() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    # systemd's keys are case-sensitive; configparser would lower-case them.
    parser.optionxform = str  # type: ignore[assignment, method-assign]
    parser.read(UNIT)
    return parser


def require_sandbox() -> None:
    """Skip unless the sandbox can be built here (fail instead under GATEWAY_TEST_REQUIRE_SANDBOX, as in CI)."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root (bubblewrap binds paths and setpriv drops capabilities)")
    missing += [tool for tool in ("bwrap", "setpriv", "systemd-analyze") if shutil.which(tool) is None]
    has_seccomp = Path(SYSTEM_PYTHON).exists() and (
        subprocess.run([SYSTEM_PYTHON, "-c", "import seccomp"], capture_output=True, check=False).returncode == 0
    )
    if not has_seccomp:
        missing.append(f"{SYSTEM_PYTHON} with the seccomp module")
    if not missing:
        return
    reason = (
        f"the unit's sandbox needs {', '.join(missing)} (scripts/test installs bubblewrap, python3-seccomp and systemd)"
    )
    if os.environ.get(REQUIRE_SANDBOX_ENV):
        pytest.fail(reason)
    pytest.skip(reason)


def exec_start(gateway: Path) -> list[str]:
    """The unit's ExecStart as an argument vector, with `gateway` in place of the installed console script."""
    command = unit()["Service"]["ExecStart"]
    return shlex.split(command.replace("/opt/register-gateway/.venv/bin/gateway", str(gateway)))


def sandboxed(command: list[str], writable: Path, visible: list[Path], environment: dict[str, str]) -> list[str]:
    """`command` as the unit runs its ExecStart: `writable` stands in for its ReadWritePaths= (and is the
    working directory and HOME), `visible` are paths the command needs that PrivateTmp= or ProtectHome= would
    hide on this machine but not on a host (a checkout in /tmp, a Python under /root), bound read-only."""
    service = unit()["Service"]
    argv = ["bwrap", "--die-with-parent"]
    argv += ["--ro-bind", "/", "/"] if service.get("ProtectSystem") == "strict" else ["--bind", "/", "/"]
    argv += ["--proc", "/proc"]
    if service.get("PrivateDevices") == "yes":
        argv += ["--dev", "/dev"]
    else:
        argv += ["--dev-bind", "/dev", "/dev"]
    if service.get("PrivateTmp") == "yes":
        argv += ["--tmpfs", "/tmp", "--tmpfs", "/var/tmp"]  # noqa: S108 - hidden, as PrivateTmp= hides them
    if service.get("ProtectHome") == "yes":
        for hidden in ("/root", "/home", "/run/user"):
            if Path(hidden).exists():
                argv += ["--tmpfs", hidden]
    for path in visible:
        argv += ["--ro-bind", str(path), str(path)]
    argv += ["--bind", str(writable), str(writable), "--chdir", str(writable), "--clearenv"]
    service_environment = {
        "PATH": SERVICE_PATH, "HOME": str(writable), "USER": "root", "LOGNAME": "root", "SHELL": "/bin/sh",
        **environment,
    }  # fmt: skip
    for name, value in service_environment.items():
        argv += ["--setenv", name, value]
    argv += ["--", "setpriv"]
    if service.get("NoNewPrivileges") == "yes":
        argv.append("--no-new-privs")
    if service.get("CapabilityBoundingSet", None) == "":
        argv += ["--inh-caps", "-all", "--ambient-caps", "-all", "--bounding-set", "-all"]
    argv.append("--")
    if "SystemCallFilter" in service:
        argv += [SYSTEM_PYTHON, str(LOADER), "--syscall-filter", service["SystemCallFilter"]]
        if service.get("MemoryDenyWriteExecute") == "yes":
            argv.append("--memory-deny-write-execute")
        argv.append("--")
    umask = service.get("UMask", "0022")
    return [*argv, "/bin/sh", "-c", f'umask {umask} && exec "$@"', "sh", *command]


def interpreter_paths() -> list[Path]:
    """What running this venv's gateway needs to see: the checkout (with its venv) and the base Python."""
    return sorted({ROOT.resolve(), Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()})
