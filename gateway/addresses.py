"""Email addresses as the allowlist stores them: one lower-cased ASCII addr-spec, checked strictly."""

from __future__ import annotations

import re

# Registered secure addresses are typed by HMCI admins, not parsed from mail, so the rule can be strict:
# a dot-atom local part and a host name of LDH labels. Anything else (quoted local parts, IP literals,
# non-ASCII) is refused rather than normalised, which keeps look-alikes out of the allowlist.
_LOCAL = r"[a-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_ADDR_SPEC = re.compile(rf"{_LOCAL}@{_LABEL}(?:\.{_LABEL})+")


def normalise_address(text: str) -> str:
    """The lower-cased addr-spec, or ValueError saying what is wrong with it."""
    candidate = text.strip()
    if not candidate:
        raise ValueError("an email address is empty")
    if not candidate.isascii():
        raise ValueError(f"{candidate!r} is not a plain ASCII address (non-ASCII addresses are refused)")
    address = candidate.lower()
    if len(address) > 254:
        raise ValueError(f"{candidate!r} is longer than 254 characters")
    if not _ADDR_SPEC.fullmatch(address):
        raise ValueError(f"{candidate!r} is not a valid email address (expected local-part@domain)")
    local, _, domain = address.rpartition("@")
    if len(local) > 64:
        raise ValueError(f"{candidate!r} has a local part longer than 64 characters")
    if domain.rsplit(".", 1)[-1].isdigit():
        raise ValueError(f"{candidate!r} has a numeric top-level domain")
    return address
