"""The systemd unit as shipped: its paths agree with the example settings, it is valid, and a settings error
ends it with exit 78, the status it does not restart on."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.crypto import kill_agent
from tests.support.unit import UNIT, exec_start, unit

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "config" / "gateway.example.toml"
SCRIPT = Path(sys.executable).parent / "gateway"  # the console script, as the unit runs it


def service_lines() -> dict[str, str]:
    """The example's "Under the systemd unit" values: the setting each names, and its line."""
    found = re.findall(r"^# Under the systemd unit: ((\w+) = .*)$", EXAMPLE.read_text(), re.MULTILINE)
    return {key: line for line, key in found}


def test_the_units_paths_and_the_examples_service_paths_agree() -> None:
    """Everything the settings make the gateway write lies in the unit's one writable directory, named absolutely:
    the settings file's own directory is read-only under ProtectSystem=strict."""
    service = unit()["Service"]
    state = Path("/var/lib") / service["StateDirectory"]
    assert service["ProtectSystem"] == "strict"
    assert service["ReadWritePaths"].split() == [str(state)]
    assert service["WorkingDirectory"] == str(state)
    settings = Path(service["Environment"].removeprefix("GATEWAY_CONFIG="))
    assert not settings.is_relative_to(state)
    lines = service_lines()
    # The settings whose defaults are relative to the settings file and that the gateway writes: the database and
    # the GnuPG home, and the S/MIME certificate and key `gateway init --smime` (or --smime-csr) makes.
    assert set(lines) == {"url", "home", "certificate", "key"}
    header = "\n".join(line.removeprefix("#").strip() for line in UNIT.read_text().splitlines()[:20])
    for line in lines.values():
        assert line in header  # the unit's header shows the very same lines
    found = [re.search(r'= "(?:sqlite:///)?(/[^"]+)"', line) for line in lines.values()]
    assert all(found)
    for path in (Path(match[1]) for match in found if match):
        assert path.is_absolute()
        assert path.is_relative_to(state)


def test_the_unit_does_not_restart_on_exit_78_and_runs_init_where_that_counts() -> None:
    """RestartPreventExitStatus= covers the main process only (not ExecStartPre=): init runs in it."""
    service = unit()["Service"]
    assert service["Restart"] == "on-failure"
    assert service["RestartPreventExitStatus"].split() == ["78"]
    assert "ExecStartPre" not in service
    assert " init " in service["ExecStart"]
    assert "&& exec " in service["ExecStart"]


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    # Verified where its binaries exist: the unit's /opt/register-gateway paths pointed at this checkout's.
    copy = tmp_path / "register-gateway.service"
    copy.write_text(UNIT.read_text().replace("/opt/register-gateway/.venv/bin/gateway", str(SCRIPT)))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(copy)], capture_output=True, text=True, check=False
    )
    # An unknown key, a value it cannot parse or a command it cannot run is named with the unit's file name.
    assert [line for line in result.stderr.splitlines() if copy.name in line] == []
    assert result.returncode == 0, result.stderr


def unit_command(config: Path) -> subprocess.CompletedProcess[str]:
    """The unit's ExecStart, as systemd runs it (sh -c), with this checkout's gateway."""
    return subprocess.run(
        exec_start(SCRIPT), capture_output=True, text=True, check=False,
        env={**os.environ, "GATEWAY_CONFIG": str(config)}, timeout=120,
    )  # fmt: skip


def test_a_settings_error_ends_the_units_command_with_78_at_either_step(tmp_path: Path) -> None:
    """Exit 78 from init (a placeholder address) and from run (no [imap]): the status the unit does not restart."""
    config = tmp_path / "gateway.toml"
    shutil.copy(EXAMPLE, config)
    placeholder = unit_command(config)
    assert placeholder.returncode == 78
    assert placeholder.stderr.strip() == (
        f"gateway: error: {config.resolve()}: [gateway] address: register-requests@hmci.invalid is a placeholder "
        "(.invalid never receives mail, RFC 6761): put the real address"
    )
    config.write_text(EXAMPLE.read_text().replace("@hmci.invalid", "@hmci.example"))
    try:
        no_mailbox = unit_command(config)
    finally:
        kill_agent(tmp_path / "gnupg")
    assert "generated the gateway's signing and encryption key" in no_mailbox.stdout  # init ran, then run
    assert no_mailbox.returncode == 78
    assert no_mailbox.stderr.strip().endswith("[imap] is not configured: `gateway run` needs a mailbox and a relay")


def test_init_with_the_examples_service_paths_writes_only_in_the_state_directory(tmp_path: Path) -> None:
    """The unit's layout: settings in a directory the service cannot write, state in one it can. With the example's
    service paths, `init --smime` leaves the settings directory as it was and makes the database, the GnuPG home
    and the S/MIME certificate and key in the state directory. (Run as root here, which could write anywhere:
    so what it wrote is what is checked.)"""
    settings, state = tmp_path / "etc", tmp_path / "state"
    settings.mkdir()
    state.mkdir(mode=0o700)
    text = EXAMPLE.read_text().replace("@hmci.invalid", "@hmci.example").replace("\n# [smime]\n", "\n[smime]\n")
    for key, line in service_lines().items():
        live = line.replace("/var/lib/register-gateway", str(state))
        text, count = re.subn(rf"^# {key} = .*$", live, text, count=1, flags=re.MULTILINE)
        assert count == 1
    config = settings / "gateway.toml"
    config.write_text(text)
    try:
        result = subprocess.run(
            [str(SCRIPT), "--config", str(config), "init", "--smime"], capture_output=True, text=True, check=False,
            cwd=tmp_path, timeout=120,
        )  # fmt: skip
    finally:
        kill_agent(state / "gnupg")
    assert result.returncode == 0, result.stderr
    assert "generated the gateway's signing and encryption key" in result.stdout
    assert [path.name for path in settings.iterdir()] == ["gateway.toml"]
    assert {"gateway.db", "gnupg", "smime-cert.pem", "smime-key.pem"} <= {path.name for path in state.iterdir()}
    assert stat.S_IMODE((state / "smime-key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((state / "gateway.db").stat().st_mode) == 0o600
