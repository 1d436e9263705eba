"""Stand-ins for the register's rows, shaped as the extract builder reads homes and enforcement actions."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass


@dataclass(frozen=True)
class FakeHome:
    urn: str
    name: str = "Oakfield House"
    address: str = "12 Mill Lane"
    postcode: str = "SY1 1AA"
    telephone: str | None = "+44 1632 960001"
    local_authority: str = "Shropshire"
    police_force_area: str = "West Mercia"
    provider_name: str = '=HYPERLINK("http://evil.example","click")'
    provider_address: str = "@SUM(1+1)"
    responsible_individual_name: str | None = "-2+3"
    responsible_individual_address: str | None = "\tTabbed"
    manager_name: str | None = None
    manager_address: str | None = None
    status: str = "suspended"
    provider_type: str = "organisation"


@dataclass(frozen=True)
class FakeAction:
    urn: str
    date: dt.date
    nature: str
