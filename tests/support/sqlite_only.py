"""A `database_url` on SQLite alone, for the modules that import it to override the registered one (never registered
itself): for tests whose subject does not depend on the database."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite only: what the gateway writes does not depend on the database (the other tests cover both)."""
    return f"sqlite:///{tmp_path / 'gateway.db'}"
