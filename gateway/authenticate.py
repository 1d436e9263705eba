"""Who really sent this? One From mailbox, then a PGP/MIME signature by the pinned key or the border's DMARC pass."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from email import message_from_bytes
from email import policy as email_policy
from email.headerregistry import AddressHeader, BaseHeader
from email.message import EmailMessage, Message

from gateway.addresses import normalise_address
from gateway.crypto import Decrypted, KeyProblem, SignatureStatus

Verify = Callable[[bytes, bytes], SignatureStatus]
Decrypt = Callable[[bytes], Decrypted]


@dataclass(frozen=True)
class Refused:
    """Why a message cannot be attributed to, or authenticated as, anyone."""

    reason: str


def sender_of(message: EmailMessage) -> str | Refused:
    """The lower-cased addr-spec of the one From mailbox, or why there is no trustworthy one.

    Python parses 'From: alice@police.example <evil@attacker.test>' as alice's address with a defect,
    so any defect refuses the header; display names are never compared.
    """
    headers = message.get_all("From") or []
    if len(headers) != 1:
        return Refused(f"the message has {len(headers)} From headers; exactly one is required")
    header = headers[0]
    # Parsed headers are both: AddressHeader has the addresses, BaseHeader the defects.
    if not isinstance(header, AddressHeader) or not isinstance(header, BaseHeader):
        return Refused("the From header could not be parsed as an address")
    if header.defects:
        return Refused(f"the From header is malformed ({type(header.defects[0]).__name__})")
    if len(header.addresses) != 1:
        return Refused(f"the From header names {len(header.addresses)} mailboxes; exactly one is required")
    try:
        return normalise_address(header.addresses[0].addr_spec)
    except ValueError as exc:
        return Refused(f"the From address is not acceptable: {exc}")


# ---------------------------------------------------------------- DMARC, as the border MTA reported it


def _without_comments(text: str) -> str:
    # RFC 8601 allows (comments), nested; none of them carries meaning for us.
    previous = None
    while previous != text:
        previous, text = text, re.sub(r"\([^()]*\)", " ", text)
    return text


def dmarc_pass(message: Message, authserv_id: str | None, domain: str) -> Refused | None:
    """None when the topmost Authentication-Results, written by our own border, says dmarc=pass for `domain`.

    Only the topmost header is read: a sender can add any number of its own below it, and our border adds
    its header on top. A header from anyone else, or for another domain, counts for nothing.
    """
    if authserv_id is None:
        return Refused("DMARC results are not trusted: [gateway] authserv_id is not set")
    headers = message.get_all("Authentication-Results") or []
    if not headers:
        return Refused("no Authentication-Results header from the border")
    fields = [part.strip() for part in _without_comments(str(headers[0])).split(";")]
    server = fields[0].split()[0].lower() if fields[0] else ""
    if server != authserv_id.lower():
        return Refused(f"the topmost Authentication-Results is from {server!r}, not from {authserv_id!r}")
    for result in fields[1:]:
        words = result.split()
        if not words or not words[0].lower().startswith("dmarc="):
            continue
        verdict = words[0].split("=", 1)[1].lower()
        header_from = next(
            (w.split("=", 1)[1].strip('"').lower() for w in words[1:] if w.lower().startswith("header.from=")), None
        )
        if header_from != domain:
            continue
        return None if verdict == "pass" else Refused(f"DMARC for {domain} is {verdict}")
    return Refused(f"the border reported no DMARC result for {domain}")


# ---------------------------------------------------------------- PGP/MIME signatures (RFC 3156)


@dataclass(frozen=True)
class SignedParts:
    signed_bytes: bytes  # the first part exactly as received, with CRLF line ends: what was signed
    signature: bytes
    content: Message  # the first part, parsed: where the request's text is


def _crlf(raw: bytes) -> bytes:
    return re.sub(rb"\r?\n", b"\r\n", raw)


def _signed_structure(message: Message) -> tuple[str, Message, bytes] | Refused:
    """The boundary, the content part and the signature of an RFC 3156 signed message, or what is wrong."""
    if message.get_content_type() != "multipart/signed":
        return Refused("the message is not PGP/MIME signed (multipart/signed)")
    if str(message.get_param("protocol", "")).lower() != "application/pgp-signature":
        return Refused("the multipart/signed message does not carry an OpenPGP signature")
    boundary = message.get_boundary()
    parts = message.get_payload()
    if not boundary or not isinstance(parts, list) or len(parts) != 2:
        return Refused("a multipart/signed message must have exactly two parts")
    content, signature_part = parts
    if not isinstance(content, Message) or not isinstance(signature_part, Message):
        return Refused("a multipart/signed message must have exactly two parts")
    signature = signature_part.get_payload(decode=True)
    if signature_part.get_content_type() != "application/pgp-signature" or not isinstance(signature, bytes):
        return Refused("the second part of the signed message is not an OpenPGP signature")
    return boundary, content, signature


def _first_part_bytes(raw: bytes, boundary: str) -> bytes | None:
    wire = _crlf(raw)
    head_end = wire.find(b"\r\n\r\n")
    # The CRLF before a delimiter belongs to the delimiter, not to the part (RFC 2046 5.1.1).
    delimiter = b"\r\n--" + boundary.encode("ascii", "replace")
    first = wire.find(delimiter, head_end) if head_end >= 0 else -1
    start = wire.find(b"\r\n", first + len(delimiter)) if first >= 0 else -1
    end = wire.find(delimiter, start + 2) if start >= 0 else -1
    return wire[start + 2 : end] if end >= 0 else None


def split_signed(message: Message, raw: bytes) -> SignedParts | Refused:
    """The signed bytes of a multipart/signed message, cut from the raw message, never re-serialised."""
    structure = _signed_structure(message)
    if isinstance(structure, Refused):
        return structure
    boundary, content, signature = structure
    signed = _first_part_bytes(raw, boundary)
    if signed is None:
        return Refused("the signed message's boundaries could not be found")
    return SignedParts(signed, signature, content)


# ---------------------------------------------------------------- the policy


@dataclass(frozen=True)
class Authenticated:
    method: str  # "pgp" or "dmarc"
    content: Message  # the part holding the request: the signed part, or the message itself
    signature: SignatureStatus | None = None


def _by_pinned_key(status: SignatureStatus, pinned_key: str) -> str | None:
    """Why this signature does not authenticate the authority, or None when it does."""
    if not status.good:
        return f"the PGP signature is not good: {status.problem}"
    if status.primary_fingerprint != pinned_key:
        return f"the message is signed by key {status.primary_fingerprint}, not the pinned key"
    return None


def _signed_by(message: Message, raw: bytes, pinned_key: str, verify: Verify) -> Authenticated | Refused:
    parts = split_signed(message, raw)
    if isinstance(parts, Refused):
        return parts
    status = verify(parts.signed_bytes, parts.signature)
    problem = _by_pinned_key(status, pinned_key)
    return Refused(problem) if problem else Authenticated("pgp", parts.content, status)


def _encrypted_payload(message: Message) -> bytes | None:
    """The OpenPGP data of an RFC 3156 multipart/encrypted message."""
    parts = message.get_payload()
    if str(message.get_param("protocol", "")).lower() != "application/pgp-encrypted" or not isinstance(parts, list):
        return None
    if len(parts) != 2 or not isinstance(parts[1], Message):
        return None
    data = parts[1].get_payload(decode=True)
    return data if isinstance(data, bytes) else None


def _pgp(
    message: Message, raw: bytes, pinned_key: str, verify: Verify, decrypt: Decrypt | None
) -> Authenticated | Refused:
    if message.get_content_type() != "multipart/encrypted":
        return _signed_by(message, raw, pinned_key, verify)
    payload = _encrypted_payload(message)
    if payload is None or decrypt is None:
        return Refused("the message is encrypted, but not as PGP/MIME the gateway can read")
    try:
        opened = decrypt(payload)
    except KeyProblem:
        return Refused("the message could not be decrypted with the gateway's key")
    inner = message_from_bytes(opened.data, policy=email_policy.default)
    if opened.signature.signed:  # signed and encrypted in one OpenPGP message (RFC 3156 6.2)
        problem = _by_pinned_key(opened.signature, pinned_key)
        return Refused(problem) if problem else Authenticated("pgp", inner, opened.signature)
    return _signed_by(inner, opened.data, pinned_key, verify)  # signed, then encrypted (RFC 3156 6.1)


def authenticate(
    message: EmailMessage,
    raw: bytes,
    *,
    policy: str,
    pinned_key: str,
    authserv_id: str | None,
    verify: Verify,
    decrypt: Decrypt | None = None,
) -> Authenticated | Refused:
    """Authenticate an already-identified sender by its authority's policy: pgp, dmarc or pgp-or-dmarc."""
    reasons: list[str] = []
    if policy in ("pgp", "pgp-or-dmarc"):
        signed = _pgp(message, raw, pinned_key, verify, decrypt)
        if isinstance(signed, Authenticated):
            return signed
        reasons.append(signed.reason)
    if policy in ("dmarc", "pgp-or-dmarc"):
        sender = sender_of(message)
        domain = sender.rpartition("@")[2] if isinstance(sender, str) else ""
        refused = dmarc_pass(message, authserv_id, domain)
        if refused is None:
            return Authenticated("dmarc", message)
        reasons.append(refused.reason)
    if not reasons:
        reasons.append(f"unknown authentication policy {policy!r}")
    return Refused("; ".join(reasons))
