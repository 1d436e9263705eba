"""An installed gateway (not only an editable checkout) holds every one of its packages."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_of_the_gateway_is_installed() -> None:
    """pyproject.toml lists its packages by hand (templates/ installs as gateway.templates): a package added
    to gateway/ but not listed works in a checkout and is missing from a real install."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "gateway").rglob("__init__.py")} | {
        "gateway.templates",
        "gateway.data",
    }
    assert found - listed == set(), "packages in gateway/ that pyproject.toml does not install"
