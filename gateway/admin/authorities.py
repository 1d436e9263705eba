"""What an authority on the allowlist is: its kind, its area, its secure addresses and the checks its pinned key
meets; and the views of it that commands show."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.addresses import normalise_address
from gateway.admin.reference import find_local_authority, find_police_force_area
from gateway.db.models import Authority, AuthorityAddress
from gateway.errors import Field, FieldError, FieldUsageError
from gateway.keyinfo import KeyInfo
from gateway.smime.certs import CertInfo

KINDS: tuple[str, ...] = ("police", "local-authority", "childrens-commissioner", "secretary-of-state")
NATIONAL_KINDS = frozenset({"childrens-commissioner", "secretary-of-state"})
# "signed": by the credential pinned for the sending address (its authority's OpenPGP key, or the address's
# S/MIME certificate); "dmarc": the border's DMARC pass; or either.
AUTH_POLICIES: tuple[str, ...] = ("signed", "dmarc", "signed-or-dmarc")
DEFAULT_AUTH_POLICY = "signed-or-dmarc"
# The spellings before S/MIME, still taken on input (migration 0015 renamed the stored ones).
OLD_POLICIES = {"pgp": "signed", "pgp-or-dmarc": "signed-or-dmarc"}
KEY_EXPIRY_WARNING = dt.timedelta(days=30)
# How mail to a registered address is sealed and a request from it authenticated.
OPENPGP, SMIME = "openpgp", "smime"
MAX_NAME = 200
# The fields a change is given, as its refusals name them.
NAME, NEW_NAME, KIND, AREA = Field("name"), Field("new_name"), Field("kind"), Field("area")
AUTH_POLICY, EMAILS = Field("auth_policy"), Field("emails")
ADD_EMAILS, REMOVE_EMAILS, USE_OPENPGP = Field("add_emails"), Field("remove_emails"), Field("use_openpgp")


def name_key(name: str) -> str:
    """How names are compared: spacing and case (in any script) do not make two authorities different."""
    return " ".join(name.split()).casefold()


def clean_name(name: str, named: Field) -> str:
    cleaned = " ".join(name.split())
    if not cleaned:
        raise FieldUsageError(named, " must not be empty")
    if len(cleaned) > MAX_NAME or not cleaned.isprintable():
        raise FieldUsageError(named, f" must be at most {MAX_NAME} printable characters")
    return cleaned


class AllowlistError(FieldError):
    """An allowlist change that cannot be made as asked."""


@dataclass(frozen=True)
class AddressView:
    """One registered address: its method, and the certificate pinned for it (S/MIME)."""

    address: str
    method: str
    cert_fingerprint: str | None
    cert_subject: str | None
    cert_expires: dt.datetime | None

    @classmethod
    def of(cls, row: AuthorityAddress) -> AddressView:
        return cls(row.address, row.method, row.cert_fingerprint, row.cert_subject, row.cert_expires)

    def as_dict(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "method": self.method,
            "cert_fingerprint": self.cert_fingerprint,
            "cert_subject": self.cert_subject,
            "cert_expires": self.cert_expires.isoformat() if self.cert_expires else None,
        }


@dataclass(frozen=True)
class AuthorityView:
    name: str
    kind: str
    area: str | None
    auth_policy: str
    status: str
    addresses: tuple[str, ...]
    delivery: tuple[AddressView, ...]  # each address's method and certificate, in the order of `addresses`
    key_fingerprint: str | None
    key_expires: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime

    @classmethod
    def of(cls, row: Authority) -> AuthorityView:
        return cls(
            name=row.name,
            kind=row.kind,
            area=row.area,
            auth_policy=row.auth_policy,
            status=row.status,
            addresses=tuple(a.address for a in row.addresses),
            delivery=tuple(AddressView.of(a) for a in row.addresses),
            key_fingerprint=row.key_fingerprint,
            key_expires=row.key_expires,
            created_at=row.created_at,
            updated_at=row.updated_at,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "area": self.area,
            "auth_policy": self.auth_policy,
            "status": self.status,
            "addresses": list(self.addresses),
            "delivery": [a.as_dict() for a in self.delivery],
            "key_fingerprint": self.key_fingerprint,
            "key_expires": self.key_expires.isoformat() if self.key_expires else None,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


@dataclass(frozen=True)
class Change:
    """What an allowlist command did, and anything the admin should be warned about."""

    authority: AuthorityView | None
    warnings: tuple[str, ...] = ()


def resolve_area(kind: str, area: str | None) -> str | None:
    """The canonical area for this kind of authority, or a one-line reason it cannot be."""
    if kind not in KINDS:
        raise AllowlistError(f"unknown kind {kind!r} (choose one of {', '.join(KINDS)})")
    if kind in NATIONAL_KINDS:
        if area is not None:
            raise AllowlistError(f"a {kind} authority is national and takes no ", AREA)
        return None
    if area is None:
        what = "police force area" if kind == "police" else "local authority"
        raise AllowlistError(f"a {kind} authority needs ", AREA, f": its {what}")
    if kind == "police":
        found = find_police_force_area(area)
        if found is None:
            raise AllowlistError(f"unknown police force area {area!r} (see `gateway areas`)")
        return found
    la = find_local_authority(area)
    if la is None:
        raise AllowlistError(f"unknown local authority {area!r} (see `gateway areas`)")
    return la.name


def check_policy(auth_policy: str) -> str:
    """The policy as stored (an old spelling taken for its new one), or AllowlistError."""
    auth_policy = OLD_POLICIES.get(auth_policy, auth_policy)
    if auth_policy not in AUTH_POLICIES:
        raise AllowlistError(
            "unknown ", AUTH_POLICY, f" policy {auth_policy!r} (choose one of {', '.join(AUTH_POLICIES)})"
        )
    return auth_policy


def addresses_of(emails: Iterable[str]) -> list[str]:
    """The addresses as stored: normalised (AllowlistError if one is not an address), each once."""
    found: list[str] = []
    for email in emails:
        try:
            address = normalise_address(email)
        except ValueError as exc:
            raise AllowlistError(str(exc)) from None
        if address not in found:
            found.append(address)
    return found


def key_checks(info: KeyInfo, addresses: Sequence[str], now: dt.datetime) -> list[str]:
    """Warnings for a key that is acceptable; AllowlistError for one that is not."""
    problems = info.problems(now)
    if problems:
        raise AllowlistError(f"key {info.fingerprint} refused: {'; '.join(problems)}")
    if not info.emails & set(addresses):
        carried = ", ".join(sorted(info.emails)) or "no email address"
        raise AllowlistError(
            f"key {info.fingerprint} refused: none of its user IDs is one of the authority's addresses "
            f"({', '.join(addresses)}); it carries {carried}"
        )
    if info.expires is not None and info.expires - now < KEY_EXPIRY_WARNING:
        return [f"key {info.fingerprint} expires on {info.expires.date().isoformat()}: ask for a renewed key"]
    return []


def openpgp_address_checks(info: KeyInfo, address: str, now: dt.datetime) -> list[str]:
    """Warnings for an address going back to OpenPGP, to the authority's pinned key `info`; AllowlistError when
    the key carries no user ID for that address, or is refused as `authority add` refuses one (key_checks)."""
    if address not in info.emails:
        carried = ", ".join(sorted(info.emails)) or "no email address"
        raise AllowlistError(
            f"{address} cannot go back to OpenPGP: the pinned key {info.fingerprint} has no user ID for it (it "
            f"carries {carried}); pin a key that does first (`gateway authority set-key`)"
        )
    return key_checks(info, [address], now)


def certificate_checks(info: CertInfo, address: str, now: dt.datetime) -> list[str]:
    """Warnings for a certificate that can be pinned for `address`; AllowlistError for one that cannot."""
    problems = info.problems(address, now)
    if problems:
        raise AllowlistError(f"certificate {info.fingerprint} refused for {address}: {'; '.join(problems)}")
    if info.not_after - now < KEY_EXPIRY_WARNING:
        return [
            f"certificate {info.fingerprint} for {address} expires on {info.not_after.date().isoformat()}: "
            "ask for a renewed certificate"
        ]
    return []
