"""A gateway in a temporary directory, driven through its real CLI as an admin would."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.crypto import kill_agent
from tests.support.addresses import ADMIN_ADDRESS, GATEWAY_ADDRESS


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


@dataclass
class Gateway:
    """A gateway in a temporary directory, driven through `gateway.cli.main` like an admin would."""

    directory: Path
    database_url: str
    signing_key: str | None = None
    authserv_id: str | None = None
    # Most tests make allowlist changes as one admin; the two-person rule has tests of its own.
    second_admin: bool = False

    @property
    def config_path(self) -> Path:
        return self.directory / "gateway.toml"

    @property
    def gnupg_home(self) -> Path:
        return self.directory / "gnupg"

    def write_config(self, extra: str = "") -> None:
        signing = f'signing_key = "{self.signing_key}"\n' if self.signing_key else ""
        border = f'authserv_id = "{self.authserv_id}"\n' if self.authserv_id else ""
        border += "" if self.second_admin else "require_second_admin = false\n"
        self.config_path.write_text(
            f'[gateway]\naddress = "{GATEWAY_ADDRESS}"\nadmin_address = "{ADMIN_ADDRESS}"\n{border}\n'
            f'[database]\nurl = "{self.database_url}"\n\n[gpg]\nhome = "gnupg"\n{signing}{extra}'
        )

    def run(self, *argv: str) -> Result:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["--config", str(self.config_path), *argv])
        return Result(code, out.getvalue(), err.getvalue())

    def ok(self, *argv: str) -> str:
        result = self.run(*argv)
        assert result.code == 0, f"gateway {' '.join(argv)} exited {result.code}: {result.err}"
        return result.out


@pytest.fixture
def fresh_gateway(tmp_path: Path, database_url: str) -> Iterator[Gateway]:
    """Configured but not yet initialised."""
    gateway = Gateway(tmp_path, database_url)
    gateway.write_config()
    try:
        yield gateway
    finally:
        kill_agent(gateway.gnupg_home)


@pytest.fixture
def gateway(fresh_gateway: Gateway) -> Gateway:
    """Initialised, with its own key generated and set in the config, as an admin would leave it."""
    out = fresh_gateway.ok("init")
    fresh_gateway.signing_key = out.split('signing_key = "')[1].split('"')[0]
    fresh_gateway.write_config()
    return fresh_gateway
