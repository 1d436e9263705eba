"""England's local authorities with children's services and the police force area each lies in."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from functools import cache
from importlib import resources


@dataclass(frozen=True)
class LocalAuthority:
    name: str
    police_force_area: str


def _fold(name: str) -> str:
    """Match names the way people type them: case, spacing and '&' for 'and' do not matter."""
    return " ".join(name.replace("&", " and ").split()).casefold()


@cache
def local_authorities() -> tuple[LocalAuthority, ...]:
    text = resources.files("gateway").joinpath("data/local_authorities.csv").read_text(encoding="utf-8")
    rows = csv.DictReader(io.StringIO(text))
    return tuple(LocalAuthority(row["local_authority"], row["police_force_area"]) for row in rows)


@cache
def police_force_areas() -> tuple[str, ...]:
    return tuple(sorted({la.police_force_area for la in local_authorities()}))


@cache
def _la_index() -> dict[str, LocalAuthority]:
    return {_fold(la.name): la for la in local_authorities()}


@cache
def _pfa_index() -> dict[str, str]:
    return {_fold(area): area for area in police_force_areas()}


def find_local_authority(name: str) -> LocalAuthority | None:
    """The local authority with this name (ignoring case and spacing), or None."""
    return _la_index().get(_fold(name))


def find_police_force_area(name: str) -> str | None:
    """The canonical name of this police force area (ignoring case and spacing), or None."""
    return _pfa_index().get(_fold(name))


def local_authorities_in(police_force_area: str) -> tuple[LocalAuthority, ...]:
    return tuple(la for la in local_authorities() if la.police_force_area == police_force_area)
