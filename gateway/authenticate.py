"""Who really sent this? One From mailbox on the allowlist, then a signature by the credential pinned for that
address (a PGP/MIME signature by its authority's key, or an S/MIME one by its certificate) or the border's DMARC
pass."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from email import message_from_bytes
from email.headerregistry import AddressHeader, BaseHeader
from email.message import EmailMessage, Message

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from gateway import shown
from gateway.addresses import normalise_address
from gateway.authresults import AuthResults, Unreadable, raw_values
from gateway.authresults import parse as parse_results
from gateway.config import LimitSettings
from gateway.crypto import Decrypted
from gateway.db.engine import Database
from gateway.db.models import Authority, AuthorityAddress
from gateway.gpgrun import GpgLimitExceeded, KeyProblem
from gateway.guard import read_policy, too_big
from gateway.signatures import BADSIG, SignatureStatus, hashed_subpackets
from gateway.signedpart import BARE_CR, first_part_bytes, has_bare_cr
from gateway.smime import cms
from gateway.smime.certs import CertificateProblem
from gateway.smime.identity import Identity
from gateway.smime.mime import MIME_TYPES, SIGNATURE_TYPES, Detached, Enveloped, NotSmime, Opaque, smime_layer

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
    addr_spec = header.addresses[0].addr_spec
    try:
        return normalise_address(addr_spec)
    except ValueError:  # its words quote the address as written: shown here only as an address, or a digest
        return Refused(f"the From address {shown.address(addr_spec)} is not a plain ASCII local-part@domain")


# ---------------------------------------------------------------- the one credential pinned for the address


@dataclass(frozen=True)
class PinnedKey:
    """An "openpgp" address: its authority's pinned OpenPGP key, by primary fingerprint."""

    address: str
    fingerprint: str


@dataclass(frozen=True)
class PinnedCertificate:
    """An "smime" address: the certificate pinned for that address alone."""

    address: str
    pem: bytes


# What a request from the address must be signed by; Refused when nothing usable is pinned for it, so that no
# signature can authenticate it (the border's DMARC still may, if the authority's policy allows).
Credential = PinnedKey | PinnedCertificate | Refused


def pinned_credential(authority: Authority, address: str, now: dt.datetime) -> Credential:
    """What a request from this registered address of the authority must be signed by, as it stands at `now`:
    the method the address was registered with decides which, and the other never counts for it."""
    row = next((row for row in authority.addresses if row.address == address), None)
    if row is None:
        return Refused(f"{address} is not a registered address of this authority")
    if row.method == "smime":
        return _pinned_certificate(row, now)
    if row.method != "openpgp":
        return Refused(f"{address} is registered with an unknown method ({shown.token(row.method)})")
    if authority.key_fingerprint is None:
        return Refused(f"no OpenPGP key is pinned for {address}")
    return PinnedKey(address, authority.key_fingerprint)


def _pinned_certificate(row: AuthorityAddress, now: dt.datetime) -> PinnedCertificate | Refused:
    """An expired certificate authenticates nothing, as gpg refuses a signature by an expired key."""
    if not row.cert_pem:
        return Refused(f"no certificate is pinned for {row.address}")
    if row.cert_expires is not None and row.cert_expires <= now:
        return Refused(f"the certificate pinned for {row.address} expired on {row.cert_expires:%Y-%m-%d %H:%M} UTC")
    return PinnedCertificate(row.address, row.cert_pem.encode("ascii", "replace"))


# ---------------------------------------------------------------- DMARC, as the border MTA reported it


def _border_header(message: Message, authserv_id: str | None) -> AuthResults | Refused:
    """The topmost Authentication-Results, if our own border wrote it and it can be read."""
    if authserv_id is None:
        return Refused("DMARC results are not trusted: [gateway] authserv_id is not set")
    values = raw_values(message)
    if not values:
        return Refused("no Authentication-Results header from the border")
    try:
        header = parse_results(values[0])
    except Unreadable as exc:
        return Refused(f"the topmost Authentication-Results cannot be read ({exc})")
    if header.authserv_id is None:
        return Refused("the topmost Authentication-Results names no authserv-id: it is not from our border")
    if header.authserv_id.lower() != authserv_id.lower():
        return Refused(
            # Not shown even as a token: a host name can spell a sentence (gateway.moved.send.unsigned.to...).
            f"the topmost Authentication-Results is from {shown.digest(header.authserv_id)}, not from {authserv_id!r}"
        )
    return header


def dmarc_pass(message: Message, authserv_id: str | None, domain: str) -> Refused | None:
    """None when the topmost Authentication-Results, written by our own border, says dmarc=pass for `domain`.

    Only the topmost header is read: a sender can add any number of its own below it, and our border adds
    its header on top. A header from anyone else, or for another domain, counts for nothing. The header is
    read as written (RFC 8601 tokens, never RFC 2047 decoded): text the border copies into it from the
    envelope, in a quoted string or a comment, stays inside that string or comment. A topmost header without
    an authserv-id (Microsoft 365 writes them so) is refused, never skipped: the one below it could be anyone's.
    """
    header = _border_header(message, authserv_id)
    if isinstance(header, Refused):
        return header
    verdicts = []
    for result in header.results:
        if result.method != "dmarc":
            continue  # an odd resinfo cannot reach into another: the tokenizer tells a real ';' apart
        if not result.readable:
            return Refused("the border's DMARC result does not follow RFC 8601: it cannot be read")
        if len(result.properties) != len({name for name, _ in result.properties}):
            return Refused("the border's DMARC result names a property twice")
        header_from = dict(result.properties).get("header.from")
        if header_from is not None and header_from.lower() == domain:
            verdicts.append(result.result)
    if any(verdict != "pass" for verdict in verdicts):
        verdict = next(v for v in verdicts if v != "pass")  # a keyword (RFC 8601), or a digest
        return Refused(
            f"DMARC for {domain} is {verdict if verdict.isalpha() and len(verdict) <= 20 else shown.digest(verdict)}"
        )
    return None if verdicts else Refused(f"the border reported no DMARC result for {domain}")


# ---------------------------------------------------------------- PGP/MIME signatures (RFC 3156)


@dataclass(frozen=True)
class SignedParts:
    signed_bytes: bytes  # the first part exactly as received, with CRLF line ends: what was signed
    signature: bytes
    content: Message  # signed_bytes, parsed: where the request's text is read from


def _signed_structure(message: Message) -> tuple[str, bytes] | Refused:
    """The boundary and the signature of an RFC 3156 signed message, or what is wrong."""
    if message.get_content_type() != "multipart/signed":
        return Refused("the message is not PGP/MIME signed (multipart/signed)")
    if str(message.get_param("protocol", "")).lower() != "application/pgp-signature":
        return Refused("the multipart/signed message does not carry an OpenPGP signature")
    boundary = message.get_boundary()
    parts = message.get_payload() if message.is_multipart() else None
    if not boundary or not isinstance(parts, list) or len(parts) != 2:
        return Refused("a multipart/signed message must have exactly two parts")
    content, signature_part = parts
    if not isinstance(content, Message) or not isinstance(signature_part, Message):
        return Refused("a multipart/signed message must have exactly two parts")
    signature = signature_part.get_payload(decode=True)
    if signature_part.get_content_type() != "application/pgp-signature" or not isinstance(signature, bytes):
        return Refused("the second part of the signed message is not an OpenPGP signature")
    return boundary, signature


def split_signed(message: Message, raw: bytes) -> SignedParts | Refused:
    """The signed bytes of a multipart/signed message, cut from the raw message, never re-serialised."""
    structure = _signed_structure(message)
    if isinstance(structure, Refused):
        return structure
    if has_bare_cr(raw):
        return Refused(BARE_CR)
    boundary, signature = structure
    signed = first_part_bytes(raw, boundary)
    if signed is None:
        return Refused("the signed message's boundaries could not be found")
    # The request is read from the very bytes that are verified, never from the parser's idea of the first
    # part: wherever the two might disagree (a line that looks like a delimiter, an odd line end), the
    # signature then covers exactly what is read.
    return SignedParts(signed, signature, message_from_bytes(signed, policy=read_policy()))


# ---------------------------------------------------------------- the policy


@dataclass(frozen=True)
class Authenticated:
    method: str  # "pgp", "smime" or "dmarc"
    content: Message  # the part holding the request: the signed part, or the message itself
    signature: SignatureStatus | None = None


# A multipart/signed part is signed as mail carries it, with CRLF line ends (RFC 3156 section 5); a script that
# signs the text as its file holds it (LF) makes a signature that never matches: the likeliest cause when an
# authority's own mail fails, and the authority reads this in the notice that someone used its name.
SIGNED_PART_MISMATCH = (
    "the PGP signature is not good: the signature does not match the signed part (it was altered or only partly "
    "signed; if your own script signed it, sign the part with CRLF line ends, RFC 3156 section 5)"
)


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
    if problem:
        return Refused(SIGNED_PART_MISMATCH if status.code == BADSIG else problem)
    hashed = hashed_subpackets(parts.signature)
    if hashed is None:  # gpg took it; the gateway could not tell a replay of it: not accepted
        return Refused("the signature is not one OpenPGP v4 signature packet the gateway can read")
    return Authenticated("pgp", parts.content, _covering(status, hashed, parts.signed_bytes))


def _covering(status: SignatureStatus, hashed: bytes, signed: bytes) -> SignatureStatus:
    """The status, knowing all that the signer signed: its hashed subpackets and the data. With the signer,
    what tells a replay, however the signature's own values were re-encoded."""
    digest = hashlib.sha256(hashlib.sha256(hashed).digest() + hashlib.sha256(signed).digest()).hexdigest()
    return dataclasses.replace(status, signed_sha256=digest)


def _encrypted_payload(message: Message) -> bytes | None:
    """The OpenPGP data of an RFC 3156 multipart/encrypted message."""
    parts = message.get_payload() if message.is_multipart() else None
    if str(message.get_param("protocol", "")).lower() != "application/pgp-encrypted" or not isinstance(parts, list):
        return None
    if len(parts) != 2 or not isinstance(parts[1], Message):
        return None
    data = parts[1].get_payload(decode=True)
    return data if isinstance(data, bytes) else None


# ---------------------------------------------------------------- PGP/MIME as Microsoft Exchange rewrites it

# RFC 3156's control part says "Version: 1"; some clients write "Version : 1", or leave off the line end.
_VERSION_ONE = re.compile(rb"Version ?: ?1[ \t]*(?:\r?\n[ \t]*)*")
_ARMOUR = re.compile(rb"\s*-----BEGIN PGP MESSAGE-----\r?\n.*\r?\n-----END PGP MESSAGE-----\s*", re.DOTALL)
_REWRITTEN = "the message looks like PGP/MIME rewritten by Microsoft Exchange, but"


def _decoded(part: Message) -> bytes:
    body = part.get_payload(decode=True)
    return body if isinstance(body, bytes) else b""


def _exchange_rewritten(message: Message) -> bool:
    """multipart/mixed carrying a PGP/MIME control or signature part: a PGP/MIME message someone rewrote."""
    if message.get_content_type() != "multipart/mixed" or not message.is_multipart():
        return False  # and get_payload() is never asked to decode text in a charset Python may choke on
    parts = message.get_payload()
    return isinstance(parts, list) and any(
        isinstance(part, Message)
        and part.get_content_type() in ("application/pgp-encrypted", "application/pgp-signature")
        for part in parts
    )


def _exchange_parts(message: Message) -> tuple[Message, Message] | Refused:
    """The control and data parts of a PGP/MIME encrypted message rewritten as multipart/mixed, if that is all."""
    payload = message.get_payload()
    parts = [part for part in payload if isinstance(part, Message)] if isinstance(payload, list) else []
    if not parts or len(parts) != len(payload):
        return Refused(f"{_REWRITTEN} its parts cannot be read")
    kinds = [part.get_content_type() for part in parts]
    if "application/pgp-signature" in kinds:
        return Refused(
            "the message carries an OpenPGP signature but is no longer multipart/signed: a server on the way "
            "(such as Microsoft Exchange) rewrote it, and a rewritten message cannot be verified; "
            "signing and encrypting to the gateway's key avoids this"
        )
    encrypted = ["application/pgp-encrypted", "application/octet-stream"]
    if kinds == ["text/plain", *encrypted] and not _decoded(parts[0]).strip():
        return parts[1], parts[2]
    if kinds == encrypted:
        return parts[0], parts[1]
    return Refused(
        f"{_REWRITTEN} its parts are {', '.join(shown.content_type(kind) for kind in kinds)}, not an empty text/plain "
        "(optional), application/pgp-encrypted and application/octet-stream"
    )


def _exchange_payload(message: Message) -> bytes | Refused:
    """The OpenPGP data of a multipart/encrypted message that Microsoft Exchange turned into multipart/mixed.

    Exchange keeps the two RFC 3156 parts, in order, often re-encoded in base64, and may put an empty
    text/plain part before them. Exactly that is repaired (as Thunderbird, Mutt and notmuch do), and nothing
    else: the repaired message then goes through decryption and the pinned-key check like any other. A signed
    message (multipart/signed) rewritten this way cannot be repaired: what was signed is gone.
    """
    parts = _exchange_parts(message)
    if isinstance(parts, Refused):
        return parts
    control, data = parts
    if not _VERSION_ONE.fullmatch(_decoded(control)):
        return Refused(f"{_REWRITTEN} its application/pgp-encrypted part does not say Version: 1")
    payload = _decoded(data)
    if not _ARMOUR.fullmatch(payload) or payload.count(b"-----BEGIN PGP") != 1 or payload.count(b"-----END PGP") != 1:
        return Refused(f"{_REWRITTEN} its application/octet-stream part is not one armoured OpenPGP message")
    return payload


# ---------------------------------------------------------------- the policy, continued


def _opened(payload: bytes, pinned_key: str, verify: Verify, decrypt: Decrypt) -> Authenticated | Refused:
    """Decrypt with the gateway's key, then authenticate the signature inside (RFC 3156 6.1 or 6.2)."""
    try:
        opened = decrypt(payload)
    except GpgLimitExceeded as exc:
        return Refused(f"the message could not be decrypted: {exc}")
    except KeyProblem:
        return Refused("the message could not be decrypted with the gateway's key")
    inner = message_from_bytes(opened.data, policy=read_policy())
    if opened.signature.signed:  # signed and encrypted in one OpenPGP message (RFC 3156 6.2)
        # Sealed inside what only the gateway can open, the signature cannot be re-encoded by anyone who
        # copies the message: its SIG_ID is enough to know it again.
        problem = _by_pinned_key(opened.signature, pinned_key)
        return Refused(problem) if problem else Authenticated("pgp", inner, opened.signature)
    return _signed_by(inner, opened.data, pinned_key, verify)  # signed, then encrypted (RFC 3156 6.1)


def _pgp(
    message: Message, raw: bytes, pinned_key: str, verify: Verify, decrypt: Decrypt | None
) -> Authenticated | Refused:
    payload: bytes | Refused | None
    if _is_smime(message):
        return Refused(
            "the message is S/MIME, but the address is registered for OpenPGP: only its authority's pinned "
            "OpenPGP key authenticates it"
        )
    if _exchange_rewritten(message):
        payload = _exchange_payload(message)
        if isinstance(payload, Refused):
            return payload
    elif message.get_content_type() == "multipart/encrypted":
        payload = _encrypted_payload(message)
    else:
        return _signed_by(message, raw, pinned_key, verify)
    if payload is None or decrypt is None:
        return Refused("the message is encrypted, but not as PGP/MIME the gateway can read")
    return _opened(payload, pinned_key, verify, decrypt)


# ---------------------------------------------------------------- S/MIME (RFC 8551)


def _is_smime(message: Message) -> bool:
    if message.get_content_type() == "multipart/signed":
        return str(message.get_param("protocol", "")).lower() in SIGNATURE_TYPES
    return message.get_content_type() in MIME_TYPES


def _is_openpgp(message: Message) -> bool:
    protocol = str(message.get_param("protocol", "")).lower()
    return protocol in ("application/pgp-signature", "application/pgp-encrypted") or _exchange_rewritten(message)


def _smime(
    message: Message, raw: bytes, pinned: PinnedCertificate, gateway: Identity | None, limits: LimitSettings
) -> Authenticated | Refused:
    """An S/MIME signature by the certificate pinned for the address, detached or opaque, or inside what was
    encrypted to the gateway's certificate (as Outlook signs, then encrypts). The request is read from exactly
    the bytes the signature covers; nothing outside them counts."""
    layer = smime_layer(raw, message)
    if isinstance(layer, NotSmime):
        if _is_openpgp(message):
            return Refused(
                f"the message is OpenPGP, but {pinned.address} is registered for S/MIME: only the certificate "
                "pinned for it authenticates it"
            )
        return Refused(layer.reason)
    signed = _smime_opened(layer, pinned, gateway, limits) if isinstance(layer, Enveloped) else layer
    if isinstance(signed, Refused):
        return signed
    try:
        verified = cms.verify(signed, pinned.pem, openssl=gateway.openssl if gateway else "openssl")
    except CertificateProblem as exc:  # the pinned certificate itself: the database's, not the sender's
        return Refused(f"the certificate pinned for {pinned.address} cannot be used ({exc})")
    if not verified.signature.good:
        return Refused(f"the S/MIME signature is refused: {verified.signature.problem}")
    content = message_from_bytes(verified.content, policy=read_policy())
    return Authenticated("smime", content, verified.signature)


def _smime_opened(
    layer: Enveloped, pinned: PinnedCertificate, gateway: Identity | None, limits: LimitSettings
) -> Detached | Opaque | Refused:
    """The signed entity inside what was encrypted to the gateway. Decryption proves nothing (anyone may
    encrypt to the gateway's certificate): what it opens must be signed, and that signature is checked next."""
    if gateway is None:
        return Refused("the message is S/MIME encrypted, but the gateway has no S/MIME certificate ([smime])")
    try:
        opened = cms.decrypt(layer, gateway.certificate.pem, gateway.key_path, openssl=gateway.openssl)
    except CertificateProblem as exc:  # not to the gateway, too big, too slow, or a cipher refused
        return Refused(str(exc))
    # The outer message's own limits, before the parser reads what it opened: its size, parts and lines.
    unparsable = too_big(opened, limits)
    if unparsable is not None:
        return Refused(f"the encrypted message, decrypted: {unparsable}")
    inner = smime_layer(opened)
    if isinstance(inner, Enveloped):
        return Refused("the message is S/MIME encrypted twice: the gateway reads one layer, signed, then encrypted")
    if isinstance(inner, NotSmime):
        return Refused(
            f"the message is S/MIME encrypted but not signed inside ({inner.reason}): a request must be signed "
            f"with the certificate pinned for {pinned.address}, then encrypted"
        )
    return inner


# ---------------------------------------------------------------- the policy: the pinned credential, or the border


# The authentication policies under which a signature by the pinned credential is checked.
SIGNED_POLICIES = frozenset({"signed", "signed-or-dmarc"})


def authenticate(
    message: EmailMessage,
    raw: bytes,
    *,
    policy: str,
    pinned: Credential,
    authserv_id: str | None,
    verify: Verify,
    decrypt: Decrypt | None = None,
    smime: Identity | None = None,
    limits: LimitSettings | None = None,
) -> Authenticated | Refused:
    """Authenticate an already-identified sender by its authority's policy: signed, dmarc or signed-or-dmarc.

    "signed" means by the credential `pinned` for the sending address and no other: a PGP/MIME signature by
    its authority's key (`verify` and `decrypt` are gpg's), or an S/MIME one by its certificate (`smime` is
    the gateway's own identity, to decrypt with; `limits` bound what decryption opens).
    """
    reasons: list[str] = []
    if policy in SIGNED_POLICIES:
        signed: Authenticated | Refused
        if isinstance(pinned, PinnedCertificate):
            signed = _smime(message, raw, pinned, smime, limits or LimitSettings())
        elif isinstance(pinned, PinnedKey):
            signed = _pgp(message, raw, pinned.fingerprint, verify, decrypt)
        else:  # nothing usable is pinned for the address: no signature can authenticate it
            signed = pinned
        if isinstance(signed, Authenticated):
            return signed
        reasons.append(signed.reason)
    if policy in ("dmarc", "signed-or-dmarc"):
        sender = sender_of(message)
        domain = sender.rpartition("@")[2] if isinstance(sender, str) else ""
        refused = dmarc_pass(message, authserv_id, domain)
        if refused is None:
            return Authenticated("dmarc", message)
        reasons.append(refused.reason)
    if not reasons:
        reasons.append(f"unknown authentication policy {policy!r}")
    return Refused("; ".join(reasons))


async def registered_addresses(db: Database) -> dict[str, int]:
    """Every registered address, with its authority's id."""
    async with db.transaction(write=False) as session:
        rows = await session.execute(select(AuthorityAddress.address, AuthorityAddress.authority_id))
        return {row.address: row.authority_id for row in rows}


async def find_authority(db: Database, address: str) -> Authority | None:
    """The authority this address is registered to, with its addresses."""
    async with db.transaction(write=False) as session:
        return (
            await session.execute(
                select(Authority)
                .join(AuthorityAddress)
                .where(AuthorityAddress.address == address)
                .options(selectinload(Authority.addresses))
            )
        ).scalar()
