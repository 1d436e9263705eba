"""The command line as an admin meets it: help everywhere, one-line errors, init and the gateway's own key."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.admin.reference import local_authorities
from gateway.cli import build_parser, main
from gateway.crypto import kill_agent
from gateway.db.engine import head_revision
from tests.support.addresses import GATEWAY_ADDRESS
from tests.support.gateway_cli import Gateway


def all_commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield prefix
    for action in parser._actions:  # argparse offers no public way to walk its tree
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from all_commands(sub, (*prefix, name))


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    commands = list(all_commands(build_parser()))
    assert ("authority", "set-key") in commands
    assert len(commands) > 20
    for command in commands:
        with pytest.raises(SystemExit) as exited:
            main([*command, "--help"])
        assert exited.value.code == 0
        assert "usage: gateway" in capsys.readouterr().out


def test_python_dash_m_and_console_script_agree() -> None:
    by_module = subprocess.run(
        [sys.executable, "-m", "gateway", "--version"], capture_output=True, text=True, check=False
    )
    script = Path(sys.executable).parent / "gateway"
    by_script = subprocess.run([str(script), "--version"], capture_output=True, text=True, check=False)
    assert by_module.returncode == by_script.returncode == 0
    assert by_module.stdout == by_script.stdout == "gateway 0.1.0\n"


def test_missing_config_is_one_line_and_no_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "GATEWAY_CONFIG": str(tmp_path / "nowhere.toml")}
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "authority", "list"], capture_output=True, text=True, env=env, check=False
    )
    assert result.returncode == 78
    assert result.stdout == ""
    assert result.stderr == (
        f"gateway: error: {tmp_path}/nowhere.toml: config file not found (copy config/gateway.example.toml there, "
        "or pass --config PATH or set GATEWAY_CONFIG)\n"
    )


def test_config_option_works_before_and_after_the_command(gateway: Gateway) -> None:
    after = main(["areas", "--json"])
    assert after == 0
    assert main(["register", "show", "--config", str(gateway.config_path), "--json"]) == 0


def test_init_makes_a_private_home_and_a_usable_key(fresh_gateway: Gateway) -> None:
    out = fresh_gateway.ok("init")
    assert stat.S_IMODE(fresh_gateway.gnupg_home.stat().st_mode) == 0o700
    assert f"upgraded from schema none to {head_revision()}" in out
    fingerprint = out.split('signing_key = "')[1].split('"')[0]
    assert len(fingerprint) == 40

    again = fresh_gateway.ok("init")
    assert f"a gateway key for {GATEWAY_ADDRESS} already exists: {fingerprint}" in again
    assert f"is up to date (schema {head_revision()})" in again

    fresh_gateway.signing_key = fingerprint
    fresh_gateway.write_config()
    assert f"signing key {fingerprint} is usable" in fresh_gateway.ok("init")
    records = json.loads(fresh_gateway.ok("audit", "list", "--json"))
    assert [r["action"] for r in records] == ["database.upgrade", "gateway.key-generated"]
    assert records[1]["details"]["fingerprint"] == fingerprint


def test_init_refuses_a_configured_key_it_does_not_hold(fresh_gateway: Gateway) -> None:
    fresh_gateway.signing_key = "0123456789ABCDEF0123456789ABCDEF01234567"
    fresh_gateway.write_config()
    result = fresh_gateway.run("init")
    assert result.code == 1
    assert result.err.strip().endswith("has no secret key in " + str(fresh_gateway.gnupg_home))


def test_key_export_prints_the_public_key(gateway: Gateway, tmp_path: Path) -> None:
    exported = gateway.ok("key", "export")
    assert exported.startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")
    assert "PRIVATE" not in exported
    (tmp_path / "exported.asc").write_text(exported)
    home = tmp_path / "authority-home"
    home.mkdir(mode=0o700)
    try:
        shown = subprocess.run(
            ["gpg", "--homedir", str(home), "--with-colons", "--show-keys", str(tmp_path / "exported.asc")],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    finally:
        kill_agent(home)
    assert f":{gateway.signing_key}:" in shown
    assert GATEWAY_ADDRESS in shown


def test_key_export_without_a_key_says_what_to_do(fresh_gateway: Gateway) -> None:
    result = fresh_gateway.run("key", "export")
    assert result.code == 78
    assert "[gpg] signing_key is not set: run `gateway init` and set it" in result.err


def test_commands_on_an_uninitialised_database_say_run_init(fresh_gateway: Gateway) -> None:
    result = fresh_gateway.run("register", "show")
    assert result.code == 1
    assert result.err.strip().endswith("run `gateway init` first")
    assert len(result.err.splitlines()) == 1
    # Looking must not create an empty database file that would then pass for a real one.
    assert not (fresh_gateway.directory / "gateway.db").exists()


def test_unreachable_database_is_one_line(tmp_path: Path) -> None:
    gateway = Gateway(tmp_path, "postgresql+asyncpg://nobody:secret@127.0.0.1:1/none")
    gateway.write_config()
    result = gateway.run("audit", "verify")
    assert result.code == 1
    assert result.err.startswith(
        "gateway: error: cannot open database postgresql+asyncpg://nobody:***@127.0.0.1:1/none"
    )
    assert "secret" not in result.err
    assert len(result.err.splitlines()) == 1


def test_bad_arguments_are_usage_errors(gateway: Gateway) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--config", str(gateway.config_path), "authority", "add", "--kind", "army"])
    assert exited.value.code == 2


def test_areas_lists_the_reference_data(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["areas", "--json"]) == 0
    areas = json.loads(capsys.readouterr().out)
    assert len(areas) == 39
    assert "Shropshire" in areas["West Mercia"]


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temporary directory with a short path: gpg-agent's sockets live in GnuPG homes under it."""
    directory = Path(tempfile.mkdtemp(prefix="gw-"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_demo_runs_and_will_not_wipe_a_directory_it_did_not_make(
    short_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tmp_path = short_tmp
    assert main(["demo", "--dir", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "$ gateway authority add" in out
    outcomes = [line.split(":")[1].strip() for line in out.splitlines() if line.strip().startswith("outcome:")]
    assert outcomes == ["answered", "answered", "refused", "answered", "rejected", "quarantined"]
    # Each authority's client checks the gateway's signature with the key it imported.
    assert out.count("signature by the gateway's key: good") == 4  # three answers and the impostor notice
    # Staffordshire Police, on S/MIME alone: its Outlook-style request answered, the reply opened with OpenSSL.
    assert out.count("opened with OpenSSL: decrypted with its key; signature by the gateway's certificate: good") == 1
    assert "public.protection@staffordshire.police.example (smime " in out
    assert "NOT GOOD" not in out
    assert "an alert with no register data, not encrypted, signed by the gateway's key: good" in out  # admins too
    assert "audit trail intact" in out
    assert main(["demo", "--dir", str(tmp_path / "demo")]) == 0  # a rerun starts afresh
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "thesis.tex").write_text("years of work")
    assert main(["demo", "--dir", str(tmp_path / "precious")]) == 1
    assert (tmp_path / "precious" / "thesis.tex").exists()


def test_a_failed_init_still_records_the_schema_it_created(fresh_gateway: Gateway) -> None:
    fresh_gateway.signing_key = "0123456789ABCDEF0123456789ABCDEF01234567"
    fresh_gateway.write_config()
    assert fresh_gateway.run("init").code == 1
    records = json.loads(fresh_gateway.ok("audit", "list", "--json"))
    assert [(r["action"], r["details"]["from"], r["details"]["to"]) for r in records] == [
        ("database.upgrade", None, head_revision())
    ]


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (
            ["audit", "list", "--since", "0001-01-01T00:00:00+01:00"],
            64,
            "--since '0001-01-01T00:00:00+01:00': expected",
        ),
        (["register", "import", "--homes", "x.csv", "--actor", "a" * 201], 64, "--actor must be 1 to 200 printable"),
        (["register", "import", "--homes", "x.csv", "--actor", "bad\x1b[2Jactor"], 64, "--actor must be 1 to 200"),
    ],
)
def test_bad_option_values_are_usage_errors(gateway: Gateway, argv: list[str], code: int, message: str) -> None:
    result = gateway.run(*argv)
    assert result.code == code
    assert result.err.startswith(f"gateway: error: {message}")
    assert len(result.err.splitlines()) == 1


def test_an_unusable_gnupg_home_is_one_line(fresh_gateway: Gateway) -> None:
    (fresh_gateway.directory / "a-file").write_text("not a directory")
    fresh_gateway.write_config()
    text = fresh_gateway.config_path.read_text().replace('home = "gnupg"', 'home = "a-file/gnupg"')
    fresh_gateway.config_path.write_text(text)
    result = fresh_gateway.run("init")
    assert result.code == 1
    assert result.err.startswith(f"gateway: error: cannot create GnuPG home {fresh_gateway.directory}/a-file/gnupg:")
    assert len(result.err.splitlines()) == 1


def test_a_gnupg_home_others_can_read_stops_every_command_that_uses_it(gateway: Gateway) -> None:
    gateway.gnupg_home.chmod(0o755)
    result = gateway.run("key", "export")
    assert result.code == 1
    home = gateway.gnupg_home.resolve()
    assert result.err.strip() == (
        f"gateway: error: the GnuPG home is not private: {home} is open to other users (mode 0755): "
        f"run `chmod 700 {home}`"
    )
    gateway.gnupg_home.chmod(0o700)
    assert "BEGIN PGP PUBLIC KEY BLOCK" in gateway.ok("key", "export")


def test_a_gnupg_home_too_long_for_the_agents_sockets_is_named(gateway: Gateway, tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True, mode=0o700)
    gateway.write_config()
    config = gateway.config_path.read_text().replace('home = "gnupg"', f'home = "{deep}"')
    gateway.config_path.write_text(config)
    result = gateway.run("key", "export")
    assert result.code == 1
    assert "is too long a path for gpg-agent's sockets" in result.err
    assert result.err.strip().endswith("use a shorter path")


NOBODY = 65534  # the user a GnuPG home is given to, to be another user's


def test_a_gnupg_home_owned_by_another_user_is_refused_naming_both(gateway: Gateway) -> None:
    home = gateway.gnupg_home.resolve()
    gateway.write_config('\n[smtp]\nhost = "127.0.0.1"\nport = 1\ntls = "none"\n')  # for outbox send
    kill_agent(home)
    os.chown(home, NOBODY, NOBODY)
    try:
        for argv in (("key", "export"), ("init",), ("quarantine", "list"), ("outbox", "send")):
            result = gateway.run(*argv)
            assert result.code == 78, argv
            assert result.err == (
                f"gateway: error: the GnuPG home {home} belongs to nobody, but this command runs as root: "
                "run it as nobody (`sudo -u nobody gateway ...`)\n"
            ), argv
    finally:
        os.chown(home, 0, 0)
    assert "BEGIN PGP PUBLIC KEY BLOCK" in gateway.ok("key", "export")


def test_a_file_left_in_the_gnupg_home_by_another_user_is_refused_naming_the_fix(gateway: Gateway) -> None:
    """What root's `change approve` once did: pubring.kbx rewritten as root's, the owner's next import failing."""
    home = gateway.gnupg_home.resolve()
    pubring = home / "pubring.kbx"
    os.chown(pubring, NOBODY, NOBODY)
    try:
        result = gateway.run("key", "export")
    finally:
        os.chown(pubring, 0, 0)
    assert result.code == 78
    assert result.err == (
        f"gateway: error: {pubring} in the GnuPG home belongs to nobody, not to root who owns the home "
        f"(a command was run as nobody): run `chown -R root: {home}` as root, and run every gateway command as "
        "root (`sudo -u root gateway ...`)\n"
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_makes_the_sqlite_database_and_its_wal_and_shm_private(fresh_gateway: Gateway) -> None:
    if not fresh_gateway.database_url.startswith("sqlite"):
        pytest.skip("SQLite files only")
    old = os.umask(0o022)  # the usual umask, whatever the test run's
    try:
        fresh_gateway.ok("init")
    finally:
        os.umask(old)
    database = fresh_gateway.directory / "gateway.db"
    assert mode(database) == 0o600
    # SQLite makes -wal and -shm while a connection is open, with the database file's mode.
    os.umask(0o022)
    try:
        connection = sqlite3.connect(database)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("CREATE TABLE probe (x)")
        connection.commit()
        assert mode(database.with_name("gateway.db-wal")) == 0o600
        assert mode(database.with_name("gateway.db-shm")) == 0o600
        connection.close()
    finally:
        os.umask(old)


def test_init_makes_an_older_readable_database_private_and_says_so(gateway: Gateway) -> None:
    if not gateway.database_url.startswith("sqlite"):
        pytest.skip("SQLite files only")
    database = (gateway.directory / "gateway.db").resolve()
    database.chmod(0o644)
    out = gateway.ok("init")
    assert out.splitlines().count(f"database file {database} was open to other users (mode 0644): made 0600") == 1
    assert mode(database) == 0o600
    assert "open to other users" not in gateway.ok("init")


def test_areas_fits_a_terminal_and_lists_every_local_authority(gateway: Gateway) -> None:
    out = gateway.ok("areas")
    assert max(len(line) for line in out.splitlines()) <= 100
    text = " ".join(out.split())
    for la in local_authorities():
        assert la.name in text
    assert len(out.splitlines()) > 39 + 2  # long lists go on over several lines
