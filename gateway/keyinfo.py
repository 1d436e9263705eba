"""An OpenPGP key as gpg lists it: who it names, when it expires, what it can do, and why it may be too weak
to pin."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from gateway.addresses import normalise_address


@dataclass(frozen=True)
class KeyInfo:
    fingerprint: str
    user_ids: tuple[str, ...]
    emails: frozenset[str]
    created: dt.datetime
    # When the key stops being usable to encrypt to: the primary's expiry or, if sooner, that of the last
    # valid encryption subkey. None means never.
    expires: dt.datetime | None
    revoked: bool
    expired: bool
    can_encrypt: bool
    can_sign: bool
    weaknesses: tuple[str, ...] = ()
    # When the key stops being able to sign: the primary's expiry or, if sooner, that of the last signing key.
    signing_expires: dt.datetime | None = None
    # The primary key and each valid subkey: "primary EdDSA ed25519 sign,certify expires 2028-12-06", say.
    algorithms: tuple[str, ...] = ()

    def problems(self, now: dt.datetime | None = None) -> list[str]:
        """Why this key cannot be pinned for an authority, if it cannot (the root cause only)."""
        moment = now or dt.datetime.now(dt.UTC)
        if self.revoked:
            return ["the key is revoked"]
        if self.expired or (self.expires is not None and self.expires <= moment):
            when = self.expires.date().isoformat() if self.expires else "an unknown date"
            return [f"the key expired on {when}"]
        if not self.can_encrypt:
            return ["the key has no valid encryption-capable subkey"]
        return list(self.weaknesses)


# OpenPGP public-key algorithm ids (RFC 4880 9.1) whose strength is their length in bits.
_LENGTH_ALGORITHMS = {"1": "RSA", "2": "RSA", "3": "RSA", "16": "ElGamal", "17": "DSA", "20": "ElGamal"}


MIN_KEY_BITS = 2048


# OpenPGP public-key algorithm ids (RFC 4880 9.1, RFC 6637, RFC 9580) as people name them.
_ALGORITHM_NAMES = {
    "1": "RSA", "2": "RSA", "3": "RSA", "16": "ElGamal", "17": "DSA", "18": "ECDH", "19": "ECDSA", "22": "EdDSA",
    "25": "X25519", "26": "X448", "27": "Ed25519", "28": "Ed448",
}  # fmt: skip


_CAPABILITIES = {"s": "sign", "c": "certify", "e": "encrypt", "a": "authenticate"}


def _describe_key(role: str, record: dict[str, Any]) -> str:
    algo = record.get("algo", "")
    name = _ALGORITHM_NAMES.get(algo, f"algorithm-{algo}")
    size = record.get("curve") or f"{record.get('length') or '?'} bits"
    uses = ",".join(word for letter, word in _CAPABILITIES.items() if letter in record.get("cap", ""))
    expires = _epoch(record.get("expires", ""))
    until = f"expires {expires.isoformat().replace('+00:00', 'Z')}" if expires else "never expires"
    return f"{role} {name} {size} {uses or 'no-use'} {until}"


def _epoch(value: str) -> dt.datetime | None:
    return dt.datetime.fromtimestamp(int(value), dt.UTC) if value else None


def uid_address(uid: str) -> str | None:
    """A user ID's mailbox as gpg and mail clients read it: the last <...>, else the whole ID; None if invalid."""
    match = re.search(r"<([^<>]*)>\s*$", uid)
    try:
        return normalise_address(match[1] if match else uid)
    except ValueError:
        return None


def _usable(record: dict[str, str]) -> bool:
    # Validity letters (gpg's DETAILS, field 2): r revoked, e expired, i invalid, d disabled.
    return record.get("trust", "") not in ("r", "e", "i", "d")


def _effective_expiry(entry: dict[str, Any], capability: str = "e") -> dt.datetime | None:
    never = dt.datetime.max.replace(tzinfo=dt.UTC)
    capable = [entry] if capability in entry.get("cap", "") else []
    capable += [s for s in entry.get("subkey_info", {}).values() if capability in s.get("cap", "") and _usable(s)]
    latest = max((_epoch(s.get("expires", "")) or never for s in capable), default=never)
    soonest = min(_epoch(entry.get("expires", "")) or never, latest)
    return None if soonest == never else soonest


def _weaknesses(entry: dict[str, Any]) -> tuple[str, ...]:
    found = []
    for record in [entry, *(s for s in entry.get("subkey_info", {}).values() if _usable(s))]:
        name = _LENGTH_ALGORITHMS.get(record.get("algo", ""))
        bits = int(record.get("length") or 0)
        if name and bits < MIN_KEY_BITS:
            found.append(f"it uses a {bits}-bit {name} key (at least {MIN_KEY_BITS} bits are needed)")
    return tuple(dict.fromkeys(found))


def key_info(entry: dict[str, Any], uid_map: dict[str, dict[str, str]]) -> KeyInfo:
    # Upper-case capability letters (field 12) are what the key as a whole can do now, counting only its
    # valid subkeys; revoked and expired user IDs are left out.
    uids = tuple(uid for uid in entry["uids"] if uid_map.get(uid, {}).get("trust") not in ("r", "e"))
    emails = frozenset(address for address in map(uid_address, uids) if address is not None)
    cap = entry.get("cap", "")
    return KeyInfo(
        fingerprint=entry["fingerprint"],
        user_ids=uids,
        emails=emails,
        created=_epoch(entry["date"]) or dt.datetime.fromtimestamp(0, dt.UTC),
        expires=_effective_expiry(entry),
        revoked=entry.get("trust") == "r",
        expired=entry.get("trust") == "e",
        can_encrypt="E" in cap,
        can_sign="S" in cap,
        weaknesses=_weaknesses(entry),
        signing_expires=_effective_expiry(entry, "s"),
        algorithms=(
            _describe_key("primary", entry),
            *(_describe_key("subkey", sub) for sub in entry.get("subkey_info", {}).values() if _usable(sub)),
        ),
    )
