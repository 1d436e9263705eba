"""What each kind of authority may see: its own area, or for national authorities any area they name."""

from __future__ import annotations

import asyncio
import csv
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.db.engine import create_database
from gateway.dev.sample import write_sample
from gateway.scope import Scope, ScopeRefusal, enforcement_in, homes_in, resolve_scope
from tests.support.gateway_cli import Gateway


@pytest.mark.parametrize(
    ("kind", "own", "asked", "expected"),
    [
        ("police", "West Mercia", None, Scope(police_force_area="West Mercia")),
        ("police", "West Mercia", "west mercia", Scope(police_force_area="West Mercia")),
        ("police", "West Mercia", "Shropshire", Scope(local_authority="Shropshire")),
        ("local-authority", "Shropshire", None, Scope(local_authority="Shropshire")),
        ("local-authority", "Shropshire", "Shropshire Council", Scope(local_authority="Shropshire")),
        ("childrens-commissioner", None, None, Scope()),
        ("secretary-of-state", None, "All of England", Scope()),
        ("secretary-of-state", None, "Kent", Scope(police_force_area="Kent")),
        ("secretary-of-state", None, "Kent local authority", Scope(local_authority="Kent")),
        ("childrens-commissioner", None, "Brighton & Hove", Scope(local_authority="Brighton and Hove")),
    ],
)
def test_areas_an_authority_is_entitled_to(kind: str, own: str | None, asked: str | None, expected: Scope) -> None:
    assert resolve_scope(kind, own, asked) == expected


@pytest.mark.parametrize(
    ("kind", "own", "asked", "reason"),
    [
        (
            "police",
            "West Mercia",
            "Kent",
            "Kent police force area is outside your own area (West Mercia police force area): "
            "police forces and local authorities may ask only for their own area",
        ),
        (
            "police",
            "West Mercia",
            "All of England",
            "all of England is outside your own area (West Mercia police force area): "
            "police forces and local authorities may ask only for their own area",
        ),
        (
            "local-authority",
            "Shropshire",
            "West Mercia",
            "West Mercia police force area is outside your own area (Shropshire local authority area): "
            "police forces and local authorities may ask only for their own area",
        ),
        (
            "secretary-of-state",
            None,
            "Gotham",
            '"Gotham" is not an area the gateway knows: give a police force area or a local authority in England',
        ),
    ],
)
def test_areas_outside_an_authoritys_own_are_refused_with_the_reason(
    kind: str, own: str | None, asked: str, reason: str
) -> None:
    assert resolve_scope(kind, own, asked) == ScopeRefusal(reason)


def test_a_scope_selects_exactly_its_open_homes_and_their_enforcement(gateway: Gateway, tmp_path: Path) -> None:
    sample = write_sample(tmp_path / "register", 600, seed=11)
    gateway.ok("register", "import", "--homes", str(sample.homes_path), "--enforcement", str(sample.enforcement_path))
    with sample.homes_path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    with sample.enforcement_path.open(newline="") as handle:
        actions = list(csv.DictReader(handle))

    async def select(scope: Scope) -> tuple[set[str], int]:
        db = create_database(load_config(gateway.config_path).database)
        try:
            async with db.transaction(write=False) as session:
                homes = (await session.execute(homes_in(scope))).scalars().all()
                enforcement = (await session.execute(enforcement_in(scope))).scalars().all()
        finally:
            await db.close()
        return {h.urn for h in homes}, len(enforcement)

    for scope, keep in (
        (Scope(police_force_area="West Mercia"), lambda r: r["police_force_area"] == "West Mercia"),
        (Scope(local_authority="Birmingham"), lambda r: r["local_authority"] == "Birmingham"),
        (Scope(), lambda r: True),
    ):
        expected = {r["urn"] for r in rows if keep(r) and r["status"] != "closed"}
        urns, action_count = asyncio.run(select(scope))
        assert urns == expected, scope.description
        assert action_count == sum(1 for a in actions if a["urn"] in expected)
    assert any(r["status"] == "closed" for r in rows)
    assert any(r["status"] == "suspended" and r["urn"] in asyncio.run(select(Scope()))[0] for r in rows)
