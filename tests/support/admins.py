"""What the admins do first, through the CLI: the two-person rule switched on, the police added, statements signed."""

from __future__ import annotations

from tests.support.addresses import POLICE_ADDRESS
from tests.support.gateway_cli import Gateway, Result
from tests.support.keys import AdminKey, AdminKeys, AuthorityKey


def two_person(gateway: Gateway, admin_keys: AdminKeys) -> Gateway:
    """The rule on, and the two set-up admins registered by the host's administrator."""
    gateway.second_admin = True
    gateway.write_config()
    for name, key in (("Alice", admin_keys.alice), ("Bob", admin_keys.bob)):
        gateway.ok("admin", "add", "--key", str(key.write(gateway.directory)), "--name", name)
    return gateway


def add_police(gateway: Gateway, key: AuthorityKey | bytes, *extra: str) -> Result:
    data = key.public if isinstance(key, AuthorityKey) else key
    path = gateway.directory / "police.asc"
    path.write_bytes(data)
    return gateway.run(
        "authority", "add", "--name", "West Mercia Police", "--kind", "police", "--area", "west mercia",
        "--email", POLICE_ADDRESS, "--key", str(path), *extra,
    )  # fmt: skip


def signature_file(gateway: Gateway, admin: AdminKey, statement: str, name: str = "sig.asc") -> str:
    path = gateway.directory / name
    path.write_bytes(admin.detached(statement.encode()))
    return str(path)
