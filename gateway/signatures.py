"""What gpg said of a detached signature, read from its status lines, and what makes a signature (OpenPGP or
S/MIME) the one it is, so that the same signature arriving again is known for a replay."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class SignatureStatus:
    """What gpg said of one detached signature, read from its status lines (python-gnupg's flags can mislead);
    or what openssl said of an S/MIME one, checked against the pinned certificate (smime/cms.py)."""

    good: bool
    # The key that made it: the primary key's fingerprint, never a subkey's; for S/MIME, the pinned
    # certificate's (SHA-256 of its DER, upper hex).
    primary_fingerprint: str | None
    signed_at: dt.datetime | None
    problem: str | None
    signed: bool = True  # False when there was no signature at all (an encrypted message need not carry one)
    # gpg's SIG_ID, or for S/MIME the SHA-256 (hex) of the signature value: a digest of the signature itself,
    # the same whatever armour or MIME carries it, so the same signature arriving again is known for a replay
    # (next year's identical request has another).
    signature_id: str | None = None
    # What the signer signed besides the data: a digest of the signature packet's hashed subpackets (its time,
    # notations, ...), or of a CMS SignerInfo's signed attributes, with the SHA-256 of the bytes it covers. Set
    # by whoever verified them (authenticate.py for OpenPGP, smime/cms.py for S/MIME).
    signed_sha256: str | None = None
    # gpg's status keyword that made it not good (BADSIG, EXPKEYSIG, NO_PUBKEY, ...), for whoever must tell one
    # cause from another: `problem` is words for people, never to compare. None when good, and for S/MIME.
    code: str | None = None

    def replay_keys(self) -> tuple[str, ...]:
        """What makes this signature the one it is, each enough to know it again (each at most 71 characters:
        seen_signatures holds 100). SIG_ID alone is not: an ECDSA signature's s can be replaced by n - s, which
        verifies the same and has another SIG_ID; but what the signer signed (the data, and the signature's own
        hashed subpackets or signed attributes) cannot be altered."""
        keys = [f"id:{self.signature_id}"] if self.signature_id else []
        if self.primary_fingerprint and self.signed_sha256:
            made = f"{self.primary_fingerprint}/{self.signed_sha256}"
            keys.append(f"signed:{hashlib.sha256(made.encode()).hexdigest()}")
        return tuple(keys)


def hashed_subpackets(signature: bytes) -> bytes | None:
    """The hashed subpacket area of the first (v4) signature packet in an OpenPGP signature, armoured or not;
    None when it is not one. Read only after gpg called the signature good: the packet is well formed."""
    data = _dearmoured(signature)
    if data is None or len(data) < 2 or not data[0] & 0x80:
        return None
    if data[0] & 0x40:  # new format packet header
        tag, first = data[0] & 0x3F, data[1]
        if first < 192:
            start, length = 2, first
        elif first < 224 and len(data) > 2:
            start, length = 3, ((first - 192) << 8) + data[2] + 192
        elif first == 255 and len(data) > 5:
            start, length = 6, int.from_bytes(data[2:6], "big")
        else:
            return None  # partial lengths: never a signature packet's
    else:  # old format: the length's size in the low two bits
        tag, size = (data[0] >> 2) & 0x0F, {0: 1, 1: 2, 2: 4}.get(data[0] & 3)
        if size is None:
            return None
        start, length = 1 + size, int.from_bytes(data[1 : 1 + size], "big")
    body = data[start : start + length]
    if tag != 2 or len(body) < 6 or body[0] != 4:
        return None
    hashed = int.from_bytes(body[4:6], "big")
    return body[: 6 + hashed] if len(body) >= 6 + hashed else None  # version, type, algorithms and the area


def _dearmoured(signature: bytes) -> bytes | None:
    text = signature.strip()
    if not text.startswith(b"-----BEGIN PGP SIGNATURE-----"):
        return text
    lines = text.splitlines()
    try:
        blank = next(i for i, line in enumerate(lines) if not line.strip())
    except StopIteration:
        return None
    body = b"".join(line.strip() for line in lines[blank + 1 :] if line.strip() and not line.startswith((b"=", b"-")))
    try:
        return base64.b64decode(body, validate=True)
    except ValueError:
        return None


# gpg's BADSIG: the signature was made over other bytes than those it came with.
BADSIG = "BADSIG"

_BAD_SIGNATURE = {
    BADSIG: "the signature does not match the signed part (it was altered or only partly signed)",
    "EXPKEYSIG": "the signing key has expired",
    "REVKEYSIG": "the signing key is revoked",
    "EXPSIG": "the signature has expired",
    "ERRSIG": "the signature could not be checked (unknown key or algorithm)",
    "NO_PUBKEY": "the signing key is not in the gateway's keyring",
}


# What gpg says of a signature by a key it does not hold.
UNKNOWN_SIGNER = frozenset({"ERRSIG", "NO_PUBKEY"})


_SIGNATURE_WORDS = frozenset({"NEWSIG", "GOODSIG", "VALIDSIG", *_BAD_SIGNATURE})


def signature_status(status_text: str) -> SignatureStatus:
    lines = [line.split()[1:] for line in status_text.splitlines() if line.startswith("[GNUPG:] ")]
    if not any(words and words[0] in _SIGNATURE_WORDS for words in lines):
        return SignatureStatus(False, None, None, "there is no signature", signed=False)
    for words in lines:
        if words and words[0] in _BAD_SIGNATURE:
            return SignatureStatus(False, None, None, _BAD_SIGNATURE[words[0]], code=words[0])
    valid = [words for words in lines if words and words[0] == "VALIDSIG"]
    if len(valid) != 1 or not any(words and words[0] == "GOODSIG" for words in lines):
        count = len(valid)
        return SignatureStatus(False, None, None, f"expected one good signature, gpg reported {count}")
    # VALIDSIG <fpr> <date> <timestamp> <expire> <version> <reserved> <algo> <hash> <class> <primary-fpr>
    words = valid[0]
    primary = words[10] if len(words) > 10 else words[1]
    signed_at = dt.datetime.fromtimestamp(int(words[3]), dt.UTC) if words[3].isdigit() else None
    ids = {words[1] for words in lines if len(words) > 1 and words[0] == "SIG_ID"}
    if len(ids) != 1:  # a signature that cannot be told from a replay of it is not accepted
        return SignatureStatus(False, None, None, "gpg gave the signature no identity, so a replay could not be told")
    return SignatureStatus(True, primary, signed_at, None, signature_id=ids.pop())
