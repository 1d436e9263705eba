"""A throwaway gateway with a synthetic register and three authorities, driven through the real commands."""

from __future__ import annotations

import asyncio
import shlex
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.crypto import Keyring, in_thread, kill_agent
from gateway.errors import GatewayError

MARKER = ".gateway-demo"
GATEWAY_ADDRESS = "register-requests@hmci.example"
ADMIN_ADDRESS = "gateway-admin@hmci.example"
DEMO_HOMES = 500


@dataclass(frozen=True)
class DemoAuthority:
    name: str
    kind: str
    area: str | None
    address: str
    key_file: str


AUTHORITIES = (
    DemoAuthority("West Mercia Police", "police", "West Mercia", "disclosures@westmercia.police.example", "wmp.asc"),
    DemoAuthority(
        "Shropshire Council",
        "local-authority",
        "Shropshire",
        "dcs.secure@shropshire.gov.example",
        "shropshire.asc",
    ),
    DemoAuthority(
        "Office of the Children's Commissioner",
        "childrens-commissioner",
        None,
        "register@occ.example",
        "occ.asc",
    ),
)

CONFIG = f"""\
# Written by `gateway demo`: a throwaway gateway. config/gateway.example.toml explains every setting.
[gateway]
address = "{GATEWAY_ADDRESS}"
admin_address = "{ADMIN_ADDRESS}"

[database]
url = "sqlite:///gateway.db"

[gpg]
home = "gnupg"
"""


def _prepare(directory: Path) -> None:
    if directory.exists():
        # Only ever wipe a directory this command made, never one a user pointed at by mistake.
        if not (directory / MARKER).exists():
            raise GatewayError(f"{directory} exists and was not made by `gateway demo`: choose another --dir")
        kill_agent(directory / "gnupg")
        kill_agent(directory / "authority-keys")
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    (directory / MARKER).write_text("made by `gateway demo`; deleted and remade by the next run\n")


def _authority_keys(directory: Path) -> None:
    """Each authority makes its own key pair; the gateway only ever sees the public half."""
    home = directory / "authority-keys"
    Keyring.create_home(home)
    keyring = Keyring(home)
    try:
        for authority in AUTHORITIES:
            fingerprint = keyring.generate(authority.name, authority.address, "1y")
            (directory / authority.key_file).write_text(keyring.export_public(fingerprint))
    finally:
        kill_agent(home)


async def run_demo(directory: Path, cli: Callable[[Sequence[str]], int]) -> int:
    directory = directory.resolve()
    _prepare(directory)
    config = directory / "gateway.toml"
    config.write_text(CONFIG)
    shown = {str(directory): "demo"}

    async def step(*argv: str) -> None:
        line = " ".join(shlex.quote(shown.get(a, a.replace(str(directory), "demo"))) for a in argv)
        print(f"\n$ gateway {line}", flush=True)
        code = await asyncio.to_thread(cli, ["--config", str(config), *argv])
        if code != 0:
            raise GatewayError(f"demo step `gateway {line}` failed with exit code {code}")

    try:
        await step("init", "--actor", "demo-admin")
        keyring = Keyring(directory / "gnupg")
        fingerprint = (await in_thread(keyring.secret_fingerprints))[0]
        config.write_text(CONFIG + f'signing_key = "{fingerprint}"\n')
        print(f"\n(the demo put signing_key = {fingerprint} into {config})")
        await step("init")
        await step("register", "sample", "--homes", str(DEMO_HOMES), "--out", str(directory / "register"))
        await step(
            "register", "import", "--actor", "demo-admin",
            "--homes", str(directory / "register/homes.csv"),
            "--enforcement", str(directory / "register/enforcement.csv"),
        )  # fmt: skip
        await step("register", "show")
        await asyncio.to_thread(_authority_keys, directory)
        for a in AUTHORITIES:
            area = ["--area", a.area] if a.area else []
            await step(
                "authority", "add", "--actor", "demo-admin", "--name", a.name, "--kind", a.kind, *area,
                "--email", a.address, "--key", str(directory / a.key_file),
            )  # fmt: skip
        await step("authority", "list")
        await step("audit", "list")
        await step("audit", "verify")
    finally:
        kill_agent(directory / "gnupg")
    print(f"\nThe demo gateway lives in {directory}. Try:")
    print(f"  gateway --config {config} authority show 'West Mercia Police'")
    return 0
