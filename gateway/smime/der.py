"""The few fields of CMS data the gateway reads before anything is verified (what kind of ContentInfo it is,
and which cipher encrypted it), from its tags and lengths alone: never the whole decoded, whatever it holds."""

from __future__ import annotations

from pyasn1.codec.ber import decoder
from pyasn1.codec.der import encoder
from pyasn1.error import PyAsn1Error
from pyasn1.type import univ


class Malformed(ValueError):
    """The data is not the BER the gateway reads: cut short, a length past its end, a tag not where it must be."""


# Universal and context tags, as single octets: all that the fields read here ever carry.
SEQUENCE, SET, INTEGER, OID, CONTEXT_0 = 0x30, 0x31, 0x02, 0x06, 0xA0
_CONSTRUCTED = 0x20
_MAX_LENGTH_OCTETS = 4  # 4 GiB: more than any message the gateway takes
_MAX_OID = 64  # an object identifier's content octets; real ones take under 20


def _header(data: bytes, at: int, end: int) -> tuple[int, int, int | None]:
    """The element at `at`, which must end by `end` (its parent's end, where that is known): its first tag
    octet, where its contents start, and their length (None: indefinite). A length is never believed past
    the end of what holds it."""
    if at + 2 > end:
        raise Malformed("cut short")
    tag, at = data[at], at + 1
    if tag & 0x1F == 0x1F:  # a tag number in the octets that follow (X.690 8.1.2.4)
        while at < end and data[at] & 0x80:
            at += 1
        at += 1
    if at >= end:
        raise Malformed("cut short")
    first, at = data[at], at + 1
    if first == 0x80:
        if not tag & _CONSTRUCTED:
            raise Malformed("an indefinite length on a primitive element")
        return tag, at, None
    if first & 0x80:
        octets = first & 0x7F
        if octets > _MAX_LENGTH_OCTETS or at + octets > end:
            raise Malformed("a length of more octets than any message holds")
        length, at = int.from_bytes(data[at : at + octets], "big"), at + octets
    else:
        length = first
    if at + length > end:
        raise Malformed("a length past the end of the data")
    return tag, at, length


def _end(data: bytes, at: int, end: int) -> int:
    """Where the element at `at` ends, its contents skipped. An indefinite-length one is walked to its
    end-of-contents, every element inside visited once, by a loop rather than recursion: linear in the data,
    however deep it is nested."""
    open_elements = 0  # indefinite-length elements entered and not yet closed
    while True:
        tag, start, length = _header(data, at, end)
        if length is None:
            open_elements, at = open_elements + 1, start
            continue
        at = start + length
        if tag == 0 and length == 0:  # end-of-contents
            if open_elements == 0:
                raise Malformed("an end-of-contents outside any element")
            open_elements -= 1
        if open_elements == 0:
            return at


def _enter(data: bytes, at: int, tag: int, end: int) -> tuple[int, int]:
    """Where the contents of the element at `at` start, and where they must end; it must carry `tag`."""
    found, start, length = _header(data, at, end)
    if found != tag:
        raise Malformed(f"tag {found:#04x} where {tag:#04x} belongs")
    return start, end if length is None else start + length


def _oid(data: bytes, at: int, end: int) -> tuple[bytes, int]:
    """The content octets of the object identifier at `at`, and where it ends."""
    tag, start, length = _header(data, at, end)
    if tag != OID or length is None or not 0 < length <= _MAX_OID:
        raise Malformed("no object identifier where one belongs")
    return data[start : start + length], start + length


def oid(dotted: str) -> bytes:
    """An object identifier's content octets, as they appear in DER: how the fields read here are compared."""
    encoded: bytes = encoder.encode(univ.ObjectIdentifier(dotted))
    return encoded[2:]  # past the tag and the one-octet length every OID named in this package has


def dotted(content: bytes) -> str:
    """Content octets of an object identifier (at most 64 of them) in dotted form, to name it in a reason."""
    try:
        value, _ = decoder.decode(bytes([OID, len(content)]) + content, asn1Spec=univ.ObjectIdentifier())
    except PyAsn1Error:
        return "an unreadable object identifier"
    return str(value)


def content_type(data: bytes) -> bytes | None:
    """The contentType of a CMS ContentInfo (RFC 5652 3), as content octets; None when the data does not start
    as one. Only the two outer headers are read, whatever follows them."""
    try:
        at, end = _enter(data, 0, SEQUENCE, len(data))
        return _oid(data, at, end)[0]
    except Malformed:
        return None


def content_cipher(data: bytes) -> bytes:
    """The content-encryption algorithm of a ContentInfo holding EnvelopedData (RFC 5652 6.1) or
    AuthEnvelopedData (RFC 5083 2.1), as content octets; Malformed when it is not there.

    Both begin alike: a version, originatorInfo ([0], optional), the recipientInfos, then the
    EncryptedContentInfo whose second field names the cipher. The recipientInfos are skipped, not decoded;
    every element read lies within the elements that hold it, as openssl, which decrypts next, reads them."""
    at, end = _enter(data, 0, SEQUENCE, len(data))  # ContentInfo
    at = _oid(data, at, end)[1]  # its contentType, which the caller has read
    at, end = _enter(data, at, CONTEXT_0, end)  # [0] EXPLICIT content
    at, end = _enter(data, at, SEQUENCE, end)  # EnvelopedData or AuthEnvelopedData
    if _header(data, at, end)[0] != INTEGER:
        raise Malformed("no version where it belongs")
    at = _end(data, at, end)
    if _header(data, at, end)[0] == CONTEXT_0:  # originatorInfo ([0] IMPLICIT)
        at = _end(data, at, end)
    if _header(data, at, end)[0] != SET:
        raise Malformed("no recipientInfos where they belong")
    at = _end(data, at, end)
    at, end = _enter(data, at, SEQUENCE, end)  # EncryptedContentInfo
    at = _oid(data, at, end)[1]  # its contentType
    at, end = _enter(data, at, SEQUENCE, end)  # contentEncryptionAlgorithm
    return _oid(data, at, end)[0]
