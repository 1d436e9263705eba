"""Which homes an authority may see: its own area for police and local authorities, any area for national ones."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from sqlalchemy import ColumnElement, Select, select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway import shown
from gateway.admin.authorities import NATIONAL_KINDS
from gateway.admin.reference import find_local_authority, find_police_force_area
from gateway.db.models import Authority, EnforcementAction, Home, Subscription
from gateway.extracts import EnforcementLike, HomeLike

ENGLAND_NAMES = frozenset({"england", "all of england", "all england", "national"})
_PFA_SUFFIXES = (" police force area", " force area", " police area")
_LA_SUFFIXES = (" local authority", " council")


@dataclass(frozen=True)
class Scope:
    """An area of England: one police force area, one local authority, or (both None) all of it."""

    police_force_area: str | None = None
    local_authority: str | None = None

    @property
    def description(self) -> str:
        if self.local_authority:
            return f"{self.local_authority} local authority area"
        if self.police_force_area:
            return f"{self.police_force_area} police force area"
        return "all of England"


@dataclass(frozen=True)
class ScopeRefusal:
    reason: str


def _named_area(text: str) -> Scope | None:
    """An area named in a request. A bare name that is both a force and a council (Kent) means the force area;
    a suffix such as "Kent local authority" or "Kent police force area" says which is meant."""
    name = " ".join(text.split())
    folded = name.casefold()
    if folded in ENGLAND_NAMES:
        return Scope()
    for suffix in _LA_SUFFIXES:
        if folded.endswith(suffix):
            la = find_local_authority(name[: -len(suffix)])
            return Scope(local_authority=la.name) if la else None
    for suffix in _PFA_SUFFIXES:
        if folded.endswith(suffix):
            pfa = find_police_force_area(name[: -len(suffix)])
            return Scope(police_force_area=pfa) if pfa else None
    pfa = find_police_force_area(name)
    if pfa is not None:
        return Scope(police_force_area=pfa)
    la = find_local_authority(name)
    return Scope(local_authority=la.name) if la else None


def _covers(own: Scope, asked: Scope) -> bool:
    """Whether an authority whose own area is `own` may ask for `asked` (a police force for one of its councils)."""
    if own.local_authority is not None:
        return asked.local_authority == own.local_authority
    if own.police_force_area is not None:
        if asked.police_force_area == own.police_force_area:
            return True
        la = find_local_authority(asked.local_authority) if asked.local_authority else None
        return la is not None and la.police_force_area == own.police_force_area
    return True  # national authorities may ask for any area


def _own_scope(kind: str, own_area: str | None) -> Scope | ScopeRefusal:
    if kind in NATIONAL_KINDS:
        return Scope()
    if kind == "police" and own_area is not None:
        return Scope(police_force_area=own_area)
    if kind == "local-authority" and own_area is not None:
        return Scope(local_authority=own_area)
    return ScopeRefusal(f"the authority's registration has no usable area ({kind}, {own_area!r})")


def _within(own: Scope, scope: Scope) -> Scope | ScopeRefusal:
    if not _covers(own, scope):
        return ScopeRefusal(
            f"{scope.description} is outside your own area ({own.description}): "
            "police forces and local authorities may ask only for their own area"
        )
    return scope


def resolve_scope(kind: str, own_area: str | None, asked: str | None) -> Scope | ScopeRefusal:
    """The area a request covers: the authority's own unless it asks for another it is entitled to."""
    own = _own_scope(kind, own_area)
    if isinstance(own, ScopeRefusal) or asked is None:
        return own
    scope = _named_area(asked)
    if scope is None:
        return ScopeRefusal(
            f"{shown.token(asked)} is not an area the gateway knows: give a police force area or a local authority "
            "in England"
        )
    return _within(own, scope)


def entitled(kind: str, own_area: str | None, scope: Scope) -> Scope | ScopeRefusal:
    """resolve_scope's rule for an area already resolved (a subscription's): whether this registration covers it."""
    own = _own_scope(kind, own_area)
    return own if isinstance(own, ScopeRefusal) else _within(own, scope)


def _disclosable(scope: Scope) -> list[ColumnElement[bool]]:
    # Closed homes are no longer on the register's disclosable part; suspended ones are still registered.
    conditions = [Home.status != "closed"]
    if scope.local_authority is not None:
        conditions.append(Home.local_authority == scope.local_authority)
    elif scope.police_force_area is not None:
        conditions.append(Home.police_force_area == scope.police_force_area)
    return conditions


def homes_in(scope: Scope) -> Select[Home]:
    """The homes a disclosure for this scope holds: every registered or suspended home in it, never closed ones."""
    return select(Home).where(*_disclosable(scope)).order_by(Home.urn)


async def disclosable(session: AsyncSession, scope: Scope) -> tuple[list[HomeLike], list[EnforcementLike]]:
    """The homes and enforcement actions of homes_in and enforcement_in, as plain rows: an extract only reads
    them, and building an ORM object for each of a few hundred rows was a tenth of a request's cost."""
    homes = (await session.execute(homes_in(scope).with_only_columns(*Home.__table__.columns))).all()
    actions = (
        await session.execute(enforcement_in(scope).with_only_columns(*EnforcementAction.__table__.columns))
    ).all()
    return cast(list[HomeLike], homes), cast(list[EnforcementLike], actions)


def enforcement_in(scope: Scope) -> Select[EnforcementAction]:
    """The enforcement actions of exactly those homes."""
    return (
        select(EnforcementAction)
        .join(Home, Home.urn == EnforcementAction.urn)
        .where(*_disclosable(scope))
        .order_by(EnforcementAction.urn, EnforcementAction.date, EnforcementAction.id)
    )


def still_allowed(authority: Authority, subscription: Subscription) -> Scope | ScopeRefusal:
    """The mail path's rules, asked again of the authority as registered now: its kind and area must still
    cover the subscription's area, and the address that asked must still be one of its addresses. Whether the
    authority is suspended is the caller's question: suspension pauses deliveries, it does not end them."""
    if subscription.address not in {a.address for a in authority.addresses}:
        return ScopeRefusal(f"{subscription.address} is no longer one of the authority's registered addresses")
    return entitled(authority.kind, authority.area, Scope(subscription.police_force_area, subscription.local_authority))
