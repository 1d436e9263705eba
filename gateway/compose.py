"""Templates to mail on the wire: the reply's MIME tree (protected headers inside, PGP/MIME outside, the
marking everywhere) sealed to the authority's key, and the admins' signed notices."""

from __future__ import annotations

import base64
import datetime as dt
import functools
import re
import secrets
import unicodedata
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from email import policy, quoprimime
from email.headerregistry import BaseHeader, HeaderRegistry, UnstructuredHeader
from email.message import EmailMessage
from email.policy import Policy
from email.utils import format_datetime, make_msgid
from importlib import resources
from pathlib import Path
from typing import Any

import structlog
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from gateway import metrics, smime
from gateway.addresses import normalise_address
from gateway.admin.authorities import OPENPGP, SMIME  # the delivery methods of a registered address
from gateway.db.models import Authority, AuthorityAddress
from gateway.extracts import ExtractFile
from gateway.gpgrun import KeyProblem, in_thread
from gateway.guard import header_block
from gateway.smime import CertificateProblem, CertInfo, read_certificate
from gateway.smime.identity import Identity
from gateway.values import Context, Credential, Outgoing

# The shipped templates (templates/ in a checkout, installed as gateway.templates); a configured directory
# may override single templates.
DEFAULT_TEMPLATES = Path(str(resources.files("gateway.templates")))
SIGNED_POLICY = policy.SMTP  # CRLF everywhere: what gets encrypted must be what a client will read back

# ---------------------------------------------------------------- what may go into a header or a file name
#
# Python's email package refuses CR and LF in a header value, but decodes an RFC 2047 encoded word in it
# ("=?utf-8?q?=0D=0ABcc:...?=") and then writes the decoded line break out as it is (before Python 3.11.10 and
# 3.12.5): a header injection. It also turns a long Message-ID into encoded words, which no client threads on.
# So every header and file name the gateway writes goes through one of these first.
_INVISIBLE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})  # controls (CR, LF, NUL...), format marks, separators
_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-"
_MSG_ID = re.compile(rf"<[{_ATEXT}.]+@(?:[{_ATEXT}.]+|\[[!-Z^-~]*\])>")  # RFC 5322 3.6.4, no obsolete forms
MAX_MSG_ID = 250  # real ones are under 100; a longer one is not worth a line
MAX_REFERENCES = 10  # the thread's first message and the latest ones (RFC 5322 3.6.4 allows trimming)
MAX_FILE_NAME = 120
_UNSAFE_IN_NAME = re.compile(r"[^A-Za-z0-9._ -]+")


def header_text(value: str) -> str:
    """Text safe as an unstructured header (Subject): one line, no control character, no encoded word to decode.

    Non-ASCII and long text are fine: the email package encodes (RFC 2047) and folds them on output.
    """
    visible = "".join(" " if unicodedata.category(ch) in _INVISIBLE else ch for ch in value)
    # "=?" is how every encoded word starts; a space between them leaves the text readable and inert.
    return " ".join(visible.split()).replace("=?", "= ?")


def message_ids(values: Iterable[str], keep: int = MAX_REFERENCES) -> tuple[str, ...]:
    """The well-formed msg-ids among `values` (each split at whitespace), once each: the first and the latest,
    `keep` in all. Anything else a request's Message-ID or References held is dropped, never copied."""
    found: dict[str, None] = {}
    for value in values:
        for token in value.split():
            if len(token) <= MAX_MSG_ID and _MSG_ID.fullmatch(token) and "=?" not in token:
                found.setdefault(token)
    ids = tuple(found)
    return ids if len(ids) <= keep else (ids[0], *ids[len(ids) - keep + 1 :])


def attachment_name(name: str) -> str:
    """A file name any mail client and file system takes as it is: ASCII letters, digits, space, dot, hyphen and
    underscore, no path, no leading dot or hyphen, at most MAX_FILE_NAME characters with its extension kept."""
    cleaned = re.sub(r"\.{2,}", ".", _UNSAFE_IN_NAME.sub("_", name)).strip(" ._-") or "attachment"
    if len(cleaned) > MAX_FILE_NAME:
        _stem, dot, extension = cleaned.rpartition(".")
        suffix = f".{extension}" if dot and len(extension) <= 10 else ""
        cleaned = cleaned[: MAX_FILE_NAME - len(suffix)].rstrip(" ._-") + suffix
    return cleaned


class _MessageIdsHeader(UnstructuredHeader, BaseHeader):
    """In-Reply-To and References: msg-ids, folded between ids only (never cut into encoded words)."""

    def fold(self, *, policy: Policy) -> str:
        limit = policy.max_line_length or 78
        lines = [f"{self.name}:"]
        for ident in str(self).split():
            if len(lines[-1]) + 1 + len(ident) > limit and lines[-1] != f"{self.name}:":
                lines.append("")
            lines[-1] += f" {ident}"
        return policy.linesep.join(lines) + policy.linesep


_HEADERS = HeaderRegistry()
_HEADERS.map_to_type("in-reply-to", _MessageIdsHeader)
_HEADERS.map_to_type("references", _MessageIdsHeader)
OUTER_POLICY = SIGNED_POLICY.clone(header_factory=_HEADERS)


@dataclass(frozen=True)
class Envelope:
    """Who a reply is from and to, and what it answers. The real subject only ever travels encrypted."""

    sender: str
    recipient: str
    marking: str
    reference: str
    subject: str
    auto_submitted: str = "auto-replied"  # RFC 3834: "auto-generated" for scheduled mail
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Addresses are the allowlist's and the settings' plain addr-specs; anything else is a bug to stop at.
        for address in (self.sender, self.recipient):
            try:
                plain = normalise_address(address) == address
            except ValueError:
                plain = False
            if not plain:
                raise ValueError(f"{address[:100]!r} is not a plain email address: no mail is built to or from it")


def new_reference(now: dt.datetime | None = None) -> str:
    """A reference to quote: date and random, so it tells nothing about who asked or where."""
    moment = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    return f"HMCI-{moment:%Y%m%d}-{secrets.token_hex(4).upper()}"


class Templates:
    """Jinja2 over the shipped templates, with an optional directory of overrides searched first."""

    def __init__(self, override: Path | None = None) -> None:
        search = [str(override)] if override else []
        self._env = Environment(
            loader=FileSystemLoader([*search, str(DEFAULT_TEMPLATES)]),
            undefined=StrictUndefined,  # a missing value is a bug to see, not a blank in a legal notice
            autoescape=False,  # noqa: S701 - plain-text mail only; nothing here is ever rendered as HTML
            keep_trailing_newline=True,
        )

    def render(self, name: str, values: Mapping[str, Any]) -> str:
        return self._env.get_template(name).render(**values)


log = structlog.get_logger("gateway.compose")
_LINE = 78  # RFC 5322's "SHOULD" for a line, as the email package folds


def _header(name: str, value: str) -> str:
    """One header line as the email package would write it under OUTER_POLICY: plain when it is short ASCII
    with nothing to encode, else folded (and RFC 2047-encoded) by the package itself."""
    plain = value.isascii() and "=?" not in value and value.isprintable()
    if plain and len(name) + len(value) <= _LINE - 2:
        return f"{name}: {value}\r\n"
    if plain and value == " ".join(value.split()) and max(map(len, value.split())) <= _LINE - len(name) - 3:
        return _folded_words(name, value)  # a word too long for a line is left to the package to encode
    folded: str = OUTER_POLICY.header_factory(name, value).fold(policy=OUTER_POLICY)
    return folded


def _folded_words(name: str, value: str) -> str:
    """Plain words folded at spaces, the first on the field's own line. The email package would move the whole
    value to a continuation line when it does not fit after the name, and Python's parser then reads it back
    with a leading space."""
    lines = [f"{name}:"]
    for word in value.split(" "):
        if lines[-1] == f"{name}:" or len(lines[-1]) + 1 + len(word) <= _LINE - 2:
            lines[-1] += f" {word}"
        else:
            lines.append(f" {word}")
    return "\r\n".join(lines) + "\r\n"


def _boundary(*bodies: bytes) -> str:
    """A part boundary: "=_" never occurs in quoted-printable, base64 or ASCII armour, and it is checked anyway."""
    while True:
        boundary = f"=_{secrets.token_hex(16)}"
        if not any(boundary.encode() in body for body in bodies):
            return boundary


def _crlf(data: bytes) -> bytes:
    """Lines ended with CRLF, the last one too: what goes on the wire, and what gets signed."""
    return b"\r\n".join(data.splitlines()) + b"\r\n"


def _base64(data: bytes) -> bytes:
    return base64.encodebytes(data).replace(b"\n", b"\r\n")  # 76 characters a line, as the email package


def _multipart(head: str, boundary: str, parts: Sequence[bytes]) -> bytes:
    """The headers, a blank line, then each part (its own headers and body) between boundaries, then the
    closing boundary."""
    delimiter = f"\r\n--{boundary}\r\n".encode()
    return b"".join((head.encode("ascii"), delimiter, delimiter.join(parts), f"\r\n--{boundary}--\r\n".encode()))


def inner_message(
    envelope: Envelope,
    text: str,
    attachments: Sequence[ExtractFile] = (),
    *,
    outer: Sequence[tuple[str, str]] = (),
) -> bytes:
    """The part that gets encrypted: the real headers (RFC 9788 protected headers), the text, the files.

    Written directly, not through the email package's object model: its shape is fixed, and building it
    with the package cost a reply more than twice what gpg spends on it. What the package does well (a
    header to encode or fold, quoted-printable) is still done by it. CRLF everywhere: what gets encrypted must
    be what a client will read back.
    """
    # RFC 9788: with the outer header fields given (a reply being sealed), the real ones are repeated inside,
    # each outer one is recorded as HP-Outer, and the real Subject heads the text for clients that show only
    # the outer one (its Legacy Display Element, marked hp-legacy-display so that others leave it out).
    protected = _protected_fields(envelope, outer)
    legacy = f"Subject: {header_text(envelope.subject)}\n\n" if outer else ""
    # Flowed (RFC 3676): a reading pane narrower than the note rejoins and re-wraps its lines rather than
    # breaking each in two. Quoted-printable keeps the signed text 7-bit and byte-exact through any relay.
    lines = flowed(legacy + text).encode("utf-8").splitlines()
    body = quoprimime.body_encode((b"\n".join(lines) + b"\n").decode("latin-1"), _LINE, eol="\r\n").encode("ascii")
    display = '; hp-legacy-display="1"' if outer else ""
    parts = [f'Content-Type: text/plain; charset="utf-8"; format=flowed{display}\r\n'.encode("ascii")
             + b"Content-Transfer-Encoding: quoted-printable\r\n\r\n" + body]  # fmt: skip
    for attachment in attachments:
        name = attachment_name(attachment.name)  # nothing in it to quote or escape
        disposition = _header("Content-Disposition", f'attachment; filename="{name}"')
        parts.append(
            # text/* is US-ASCII unless it says otherwise (RFC 2046)
            f'Content-Type: text/csv; charset="utf-8"\r\nContent-Transfer-Encoding: base64\r\n{disposition}'
            f"MIME-Version: 1.0\r\n\r\n".encode("ascii")
            + _base64(attachment.content)
        )
    boundary = _boundary(*parts)
    scheme = ' hp="cipher";' if outer else ""  # protected-headers="v1" too: Thunderbird reads only that
    head = "".join((
        *(_header(name, value) for name, value in protected), "MIME-Version: 1.0\r\n",
        f'Content-Type: multipart/mixed; protected-headers="v1";{scheme}\r\n boundary="{boundary}"\r\n',
    ))  # fmt: skip
    return _multipart(head, boundary, parts)


FLOWED_WIDTH = 72  # RFC 3676 4.2: lines of 78 at most, 66 to 72 recommended


def flowed(text: str, width: int = FLOWED_WIDTH) -> str:
    """Text as format=flowed (RFC 3676, DelSp=no): each line longer than `width` is cut after a space, which
    stays at the end of the line to say it flows on; a line that itself ended in spaces loses them, so that it
    stays a line of its own (but the signature separator "-- ", 4.3); lines that start with a space, ">" or
    "From " are space-stuffed (4.4)."""
    out: list[str] = []
    for written in text.splitlines():
        line = written if written == "-- " else written.rstrip(" ")  # the signature separator keeps its space
        start = 0  # an index, not a shrinking copy of the rest: a long line costs time linear in its length
        while True:
            stuff = " " if line.startswith((" ", ">", "From "), start) else ""
            if len(stuff) + len(line) - start <= width:
                break
            # The space stays at the end of the line (a soft break); never the stuffing space itself.
            cut = line.rfind(" ", start + 1 - len(stuff), start + width - len(stuff))
            if cut < 0:
                cut = line.find(" ", start + width - len(stuff))  # a word longer than the line: cut after it
                if cut < 0:
                    break
            out.append(stuff + line[start : cut + 1])
            start = cut + 1
        out.append(stuff + line[start:])
    return "\n".join(out) + "\n"


def _protected_fields(envelope: Envelope, outer: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The header fields of the encrypted part: the real ones (the outer ones with the real Subject), then one
    HP-Outer field for each field the outer message shows (RFC 9788 2.2), so a reader knows what was hidden."""
    real = [("From", envelope.sender), ("To", envelope.recipient), ("Subject", header_text(envelope.subject))]
    if not outer:
        return real
    real += [(name, value) for name, value in outer if name in _USER_FACING - {"From", "To", "Subject"}]
    return [*real, *(("HP-Outer", f"{name}: {value}") for name, value in outer)]


# What a reader's client shows of a message (RFC 9788 1.1.2): the rest of the outer fields (Auto-Submitted,
# SIO-Label) describe the wire copy and are only recorded as HP-Outer.
_USER_FACING = frozenset({"From", "To", "Subject", "Date", "Message-ID", "In-Reply-To", "References"})


def outer_fields(
    envelope: Envelope, *, now: dt.datetime | None = None, domain: str | None = None
) -> list[tuple[str, str]]:
    """The outer message's header fields (but those that describe its MIME structure), in order: nothing but
    the marking and the reference is readable on the wire."""
    marking = header_text(envelope.marking).replace('"', "").replace("\\", "")  # inside a quoted-string
    fields = [
        ("From", envelope.sender),
        ("To", envelope.recipient),
        ("Subject", header_text(f"[{marking}] {envelope.reference}")),
        ("Date", format_datetime((now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC))),
        ("Message-ID", make_msgid(domain=domain or envelope.sender.rpartition("@")[2])),
    ]
    # Copied from the request: only what is a well-formed msg-id, so that nothing else reaches the headers.
    replying_to = message_ids([envelope.in_reply_to or ""], keep=1)
    if replying_to:
        fields.append(("In-Reply-To", replying_to[0]))
    earlier = message_ids(envelope.references)
    if earlier:
        fields.append(("References", " ".join(earlier)))
    fields.append(("Auto-Submitted", header_text(envelope.auto_submitted)))
    fields.append(("SIO-Label", f'marking="{marking}"'))  # RFC 7444 display marking
    return fields


def outer_message(
    envelope: Envelope,
    encrypted: bytes,
    *,
    now: dt.datetime | None = None,
    domain: str | None = None,
    fields: Sequence[tuple[str, str]] = (),
) -> bytes:
    """The PGP/MIME envelope (RFC 3156) with the outer header fields (`fields`, as the encrypted part recorded
    them, else made here): nothing but the marking and the reference is readable on the wire."""
    headers = [_header(name, value) for name, value in (fields or outer_fields(envelope, now=now, domain=domain))]
    control = (
        b"Content-Type: application/pgp-encrypted\r\nContent-Transfer-Encoding: 7bit\r\nMIME-Version: 1.0\r\n"
        b"Content-Description: PGP/MIME version identification\r\n\r\nVersion: 1\r\n"
    )
    payload = (
        b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: 7bit\r\n"
        b'Content-Disposition: inline; filename="encrypted.asc"\r\nMIME-Version: 1.0\r\n'
        b"Content-Description: OpenPGP encrypted message\r\n\r\n" + _crlf(encrypted)
    )
    boundary = _boundary(control, payload)
    headers.append("MIME-Version: 1.0\r\n")
    headers.append(
        f'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted";\r\n boundary="{boundary}"\r\n'
    )
    return _multipart("".join(headers), boundary, [control, payload])


Sign = Callable[[bytes], bytes]  # bytes in, an armoured detached OpenPGP signature (SHA-256) out


def admin_message(headers: Sequence[tuple[str, str]], text: str, sign: Sign | None) -> bytes:
    """A notice to the admins, PGP/MIME signed (RFC 3156) by the gateway's key, never encrypted: an alert that
    is not signed by that key did not come from the gateway. With no way to sign (`sign` None, or gpg failing),
    it goes unsigned and says so in its first line, so that no alert is lost for want of a key.

    gpg runs on the caller's thread, the event loop's too (some 10 ms an alert): alerts are few and bounded per
    hour, and one must not wait for a thread that a flood of requests keeps busy."""
    if sign is not None:
        try:
            return _signed_admin_message(headers, text, sign)
        except (KeyProblem, OSError, ValueError) as exc:
            log.error("an alert could not be signed", error=type(exc).__name__)  # noqa: TRY400 - no traceback
            text = f"THIS ALERT IS NOT SIGNED: gpg could not sign it ({type(exc).__name__})\n\n{text}"
    else:
        text = f"THIS ALERT IS NOT SIGNED: the gateway has no signing key ([gpg] signing_key)\n\n{text}"
    head, part = _admin_head_and_part(headers, text)
    return f"{head}{part}\r\n".encode("ascii")


def _admin_head_and_part(headers: Sequence[tuple[str, str]], text: str) -> tuple[str, str]:
    # Quoted-printable and CRLF: a signed part must be 7-bit, and is signed exactly as it goes on the wire.
    body = quoprimime.body_encode(text.encode("utf-8").decode("latin-1"), eol="\r\n").rstrip("\r\n")
    part = f'Content-Type: text/plain; charset="utf-8"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n{body}'
    return "".join(_header(name, value) for name, value in headers) + "MIME-Version: 1.0\r\n", part


def _signed_admin_message(headers: Sequence[tuple[str, str]], text: str, sign: Sign) -> bytes:
    head, part = _admin_head_and_part(headers, text)
    # The CRLF before a delimiter belongs to the delimiter: what is signed ends with the part's last character.
    signature = sign(part.encode("ascii")).rstrip(b"\r\n")
    signature_part = (
        b'Content-Type: application/pgp-signature; name="signature.asc"\r\n'
        b"Content-Description: OpenPGP digital signature\r\n\r\n" + _crlf(signature)[:-2]
    )
    boundary = _boundary(part.encode("ascii"), signature_part)
    head += (
        'Content-Type: multipart/signed; micalg=pgp-sha256;\r\n protocol="application/pgp-signature";\r\n'
        f' boundary="{boundary}"\r\n'
    )
    return _multipart(head, boundary, [part.encode("ascii"), signature_part])


def _read_header(message: EmailMessage, name: str) -> str:
    """A header's text, or nothing when Python's parser cannot read it ('Message-ID: <' raises IndexError)."""
    try:
        return str(message.get(name, ""))
    except Exception:
        return ""


def envelope_for(
    ctx: Context, recipient: str, reference: str, subject: str, *, answering: EmailMessage | None = None
) -> Envelope:
    """From the gateway to a registered address: an answer to the message `answering`, in its thread, or else
    mail the gateway starts of its own accord (RFC 3834 "auto-generated": a notice, a monthly delivery)."""
    thread: dict[str, Any] = {"auto_submitted": "auto-generated"}
    if answering is not None:
        original = _read_header(answering, "Message-ID").strip() or None
        earlier = tuple(_read_header(answering, "References").split())
        thread = {"in_reply_to": original, "references": (*earlier, original) if original else earlier}
    return Envelope(
        sender=ctx.config.gateway.address,
        recipient=recipient,
        marking=ctx.config.gateway.marking,
        reference=reference,
        subject=subject,
        **thread,
    )


# The inner message and the outer header fields in, the mail as it goes on the wire out.
Sealer = Callable[[bytes, Sequence[tuple[str, str]]], Awaitable[bytes]]


async def seal(
    ctx: Context, kind: str, envelope: Envelope, text: str, authority: Authority, *, files: Any = ()
) -> Outgoing:
    """The mail as it goes on the wire, to be queued as `kind`: signed by the gateway and encrypted to what is
    pinned for its recipient (one of the authority's addresses, loaded with it), in that address's method:
    PGP/MIME to the authority's key, or S/MIME to the address's certificate. KeyProblem when that cannot be
    done: no plaintext ever."""
    credential, sealer = await _sealer(ctx, authority, envelope)  # every check made before anything is built
    fields = outer_fields(envelope, now=ctx.clock())
    wire = await sealer(inner_message(envelope, text, files, outer=fields), fields)  # one inner message for both
    return Outgoing(kind, envelope.recipient, message_id_of(wire), wire, credential)


def sealing_credential(authority: Authority, recipient: str) -> Credential | None:
    """What mail to `recipient`, one of the authority's addresses, is sealed to, as the authority is now: its
    OpenPGP key, or the address's certificate. None when the address is not the authority's, or nothing usable
    by its method is pinned. What a delivery was sealed to is compared with this when it is recorded."""
    address = _address(authority, recipient)
    if address is None:
        return None
    if address.method == SMIME:
        return Credential(SMIME, address.cert_fingerprint) if address.cert_fingerprint else None
    if address.method == OPENPGP:
        return Credential(OPENPGP, authority.key_fingerprint) if authority.key_fingerprint else None
    return None


def _address(authority: Authority, recipient: str) -> AuthorityAddress | None:
    return next((row for row in authority.addresses if row.address == recipient), None)


async def _sealer(ctx: Context, authority: Authority, envelope: Envelope) -> tuple[Credential, Sealer]:
    """The credential pinned for the envelope's recipient, checked usable at ctx.clock(), and what seals mail to
    it; KeyProblem saying why there is none."""
    recipient = envelope.recipient
    address = _address(authority, recipient)
    if address is None:
        raise KeyProblem(f"{recipient} is not a registered address of {authority.name!r}")
    credential = sealing_credential(authority, recipient)
    if address.method not in (OPENPGP, SMIME):
        raise KeyProblem(f"{recipient} of {authority.name!r} has an unknown delivery method {address.method!r}")
    if credential is None:
        what = "OpenPGP key" if address.method == OPENPGP else "S/MIME certificate"
        raise KeyProblem(f"{recipient} of {authority.name!r} takes {address.method}, but no {what} is pinned for it")

    if address.method == SMIME:
        certificate, identity = _usable_certificate(ctx, address, credential.fingerprint)
        sign_and_encrypt = functools.partial(smime.sign_and_encrypt, openssl=identity.openssl)

        async def smime_sealed(inner: bytes, fields: Sequence[tuple[str, str]]) -> bytes:
            with metrics.timed_openssl("sign_and_encrypt"):  # off the event loop, a few at a time, as gpg
                entity = await in_thread(
                    sign_and_encrypt, inner, certificate.pem, identity.certificate.pem, identity.key_path
                )
            return smime_outer_message(entity, fields)

        return credential, smime_sealed

    signer = await _usable_key(ctx, authority, credential.fingerprint)

    async def openpgp_sealed(inner: bytes, fields: Sequence[tuple[str, str]]) -> bytes:
        with metrics.timed_gpg("sign_and_encrypt"):
            encrypted = await in_thread(ctx.keyring.sign_and_encrypt, inner, credential.fingerprint, signer)
        return outer_message(envelope, encrypted, fields=fields)

    return credential, openpgp_sealed


async def _usable_key(ctx: Context, authority: Authority, fingerprint: str) -> str:
    """The gateway's OpenPGP signing key, once the authority's pinned key is known usable now."""
    signer = ctx.config.gpg.signing_key
    if signer is None:
        raise KeyProblem("the gateway has no signing key configured ([gpg] signing_key)")
    info = await ctx.keyring.inspect_cached(fingerprint)
    if info is None or info.problems(ctx.clock()):
        why = "is not in the keyring" if info is None else "; ".join(info.problems(ctx.clock()))
        raise KeyProblem(f"the pinned key {fingerprint} of {authority.name!r} {why}")
    return signer


def _usable_certificate(ctx: Context, address: AuthorityAddress, fingerprint: str) -> tuple[CertInfo, Identity]:
    """The certificate pinned for the address, read from its stored copy and checked now as pinning checked it,
    and the gateway's own S/MIME identity to sign with, itself still valid."""
    where = f"the certificate {fingerprint} pinned for {address.address}"
    try:
        certificate = read_certificate((address.cert_pem or "").encode("ascii", "replace"))
    except CertificateProblem as exc:
        raise KeyProblem(f"{where} cannot be read: {exc}") from None
    if certificate.fingerprint != fingerprint:  # the fingerprint is what the admins approved, not the copy
        raise KeyProblem(f"{where} does not match its stored copy (fingerprint {certificate.fingerprint})")
    problems = certificate.problems(address.address, ctx.clock())
    if problems:
        raise KeyProblem(f"{where} cannot be used: {'; '.join(problems)}")
    identity = ctx.smime
    if identity is None:
        raise KeyProblem(f"{address.address} takes S/MIME, but the gateway has no S/MIME identity ([smime])")
    own = identity.certificate.problems(ctx.config.gateway.address, ctx.clock())
    if own:
        raise KeyProblem(f"the gateway's S/MIME certificate {identity.certificate.fingerprint}: {'; '.join(own)}")
    return certificate, identity


def smime_outer_message(entity: bytes, fields: Sequence[tuple[str, str]]) -> bytes:
    """The S/MIME message (RFC 8551 3.3): the outer header fields (outer_fields: nothing but the marking and the
    reference readable), MIME-Version, then the application/pkcs7-mime; smime-type=enveloped-data entity that
    gateway.smime wrote from the CMS data (canonical type, base64, named smime.p7m), CRLF throughout."""
    head = "".join(_header(name, value) for name, value in fields) + "MIME-Version: 1.0\r\n"
    return head.encode("ascii") + entity


def reply_values(ctx: Context, authority: Authority, recipient: str, reference: str) -> dict[str, Any]:
    return {
        "marking": ctx.config.gateway.marking,
        "reference": reference,
        "date": ctx.clock().strftime("%d %B %Y"),
        "authority": authority.name,
        "recipient": recipient,
        "gateway_address": ctx.config.gateway.address,
        "contact": ctx.config.gateway.admin_address,
    }


def admin_mail(ctx: Context, subject: str, text: str) -> Outgoing:
    """A message to the admins, signed by the gateway, not encrypted: so it never carries register data."""
    message_id = make_msgid(domain=ctx.config.gateway.address.rpartition("@")[2])
    headers = [
        ("From", ctx.config.gateway.address),
        ("To", ctx.config.gateway.admin_address),
        ("Date", format_datetime(ctx.clock())),
        ("Subject", header_text(subject)),  # it can name an authority, whose name an admin typed
        ("Auto-Submitted", "auto-generated"),
        ("Message-ID", message_id),
    ]
    wire = admin_message(headers, text, ctx.keyring.signer(ctx.config.gpg.signing_key))
    return Outgoing("alert", ctx.config.gateway.admin_address, message_id, wire)


def admin_notice(ctx: Context, title: str, lines: list[str]) -> Outgoing:
    """A plain notice to the admins (templates/admin-notice.txt.j2): no register data, ever."""
    values = {"title": title, "date": ctx.clock().isoformat(timespec="seconds"), "lines": lines}
    return admin_mail(ctx, f"Register gateway: {title}", ctx.templates.render("admin-notice.txt.j2", values))


_FOLD = re.compile(rb"\r\n(?=[ \t])")  # a header line's continuation (RFC 5322 2.2.3)


def message_id_of(wire: bytes) -> str:
    """The Message-ID of mail the gateway wrote (compose.outer_message): read from its header block, unfolded."""
    for line in _FOLD.sub(b" ", header_block(wire)).split(b"\r\n"):
        if line[:11].lower() == b"message-id:":
            return line[11:].strip().decode("ascii")
    return ""
