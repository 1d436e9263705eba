"""Hostile CMS from an address pinned to an S/MIME certificate: truncated DER, the wrong content types, lengths
declared far past the data, nesting thousands deep, signatures that are no signatures, ciphers nobody should
use. Each ends in one recorded refusal (quarantined, the admins told), never a traceback, within the time any
message may take; and what is read of CMS before anything is verified costs time linear in the message.
A short fuzzer mutates real S/MIME requests: whatever it makes, only the bytes the police signed authenticate.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.authenticate import Authenticated, PinnedCertificate, Refused, authenticate
from gateway.config import load_config
from gateway.db.engine import create_database
from gateway.pipeline import process
from gateway.requests import body_text, parse_request
from gateway.signatures import SignatureStatus
from gateway.smime import CertificateProblem, Enveloped, WeakCipher, decrypt, der, read_certificate
from gateway.smime.identity import Identity as GatewayIdentity
from gateway.smime.mime import content_kind
from tests.support.addresses import POLICE_ADDRESS
from tests.support.gateway_cli import Gateway
from tests.support.hostile_corpus import MUST_QUARANTINE, Expect, headers, left_behind, problems, unlimited
from tests.support.hostile_corpus import context as plain_context
from tests.support.keys import AuthorityKeys
from tests.support.smime import REQUEST_PART, SmimeCerts, openssl, smime_encrypted, smime_signed
from tests.support.wire import parse

AT = dt.datetime(2027, 2, 10, 9, 0, tzinfo=dt.UTC)
PURPOSE = "Safeguarding children in our force area"
SIGNED_DATA = b"\x06\x09" + der.oid("1.2.840.113549.1.7.2")
ENVELOPED_DATA = b"\x06\x09" + der.oid("1.2.840.113549.1.7.3")
DATA = b"\x06\x09" + der.oid("1.2.840.113549.1.7.1")
AES_256_CBC = b"\x06\x09" + der.oid("2.16.840.1.101.3.4.1.42")
AES_256_GCM = b"\x06\x09" + der.oid("2.16.840.1.101.3.4.1.46")
UNKNOWN_CIPHER = b"\x06\x02" + der.oid("1.2.3")


def tlv(tag: int, content: bytes) -> bytes:
    """One DER element: tag, definite length, content."""
    size = len(content)
    if size < 0x80:
        return bytes([tag, size]) + content
    octets = (size.bit_length() + 7) // 8
    return bytes([tag, 0x80 | octets]) + size.to_bytes(octets, "big") + content


def opaque(data: bytes, name: str, smime_type: str = "signed-data") -> bytes:
    """From the police address: application/pkcs7-mime holding `data` as the CMS."""
    body = base64.encodebytes(data).replace(b"\n", b"\r\n")
    head = (
        f'MIME-Version: 1.0\r\nContent-Type: application/pkcs7-mime; smime-type="{smime_type}"; name="smime.p7m"'
        "\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    )
    return (headers(message_id=name) + head).encode() + body


def detached(signature: bytes, name: str) -> bytes:
    """From the police address: multipart/signed with `signature` as its application/pkcs7-signature."""
    body = base64.encodebytes(signature).replace(b"\n", b"\r\n")
    return headers(message_id=name).encode() + (
        b'MIME-Version: 1.0\r\nContent-Type: multipart/signed; protocol="application/pkcs7-signature"; '
        b'micalg=sha-256; boundary="s"\r\n\r\n--s\r\n' + REQUEST_PART + b"\r\n--s\r\n"
        b'Content-Type: application/pkcs7-signature; name="smime.p7s"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
        + body + b"\r\n--s--\r\n"
    )  # fmt: skip


def cms_of(mail: bytes) -> bytes:
    """The CMS a real S/MIME mail carries: the signature part's, or the opaque body's."""
    message = parse(mail)
    part = list(message.iter_parts())[1] if message.is_multipart() else message
    data = part.get_payload(decode=True)
    assert isinstance(data, bytes)
    return data


def nested_signed_data(depth: int) -> bytes:
    """A SignedData whose content is a SignedData whose content is ..., `depth` deep, without a signer."""
    content_type, content = DATA, tlv(0x04, REQUEST_PART)
    signed = b""
    for _ in range(depth):
        encapsulated = tlv(0x30, content_type + tlv(0xA0, content))
        signed = tlv(0x30, tlv(0x02, b"\x03") + tlv(0x31, b"") + encapsulated + tlv(0x31, b""))
        content_type, content = SIGNED_DATA, tlv(0x04, signed)
    return tlv(0x30, SIGNED_DATA + tlv(0xA0, signed))


def deep_indefinite(depth: int, outer: bytes = SIGNED_DATA) -> bytes:
    """A ContentInfo whose content is `depth` indefinite-length SEQUENCEs, one in another."""
    return b"\x30\x80" + outer + b"\xa0\x80" + b"\x30\x80" * depth + b"\x00\x00" * (depth + 2)


def enveloped(recipient_infos: bytes, cipher: bytes = AES_256_CBC) -> bytes:
    """EnvelopedData around `recipient_infos` (a SET, whatever it holds) and 32 bytes of nothing encrypted."""
    encrypted = tlv(0x30, DATA + tlv(0x30, cipher + tlv(0x04, b"\x00" * 16)) + tlv(0x80, b"\x00" * 32))
    return tlv(0x30, ENVELOPED_DATA + tlv(0xA0, tlv(0x30, tlv(0x02, b"\x00") + recipient_infos + encrypted)))


# ---------------------------------------------------------------- what is read before anything is verified


def test_the_outer_type_is_read_from_two_headers_whatever_follows() -> None:
    assert content_kind(tlv(0x30, SIGNED_DATA + tlv(0xA0, b"\x05\x00"))) == "signed-data"
    assert content_kind(deep_indefinite(10)) == "signed-data"  # openssl judges the rest
    assert content_kind(tlv(0x30, DATA + tlv(0xA0, b"\x05\x00"))) is None  # not a type S/MIME carries
    declared = b"\x30\x84\x7f\xff\xff\xff" + SIGNED_DATA + b"\xa0\x00"
    assert content_kind(declared) is None  # a length far past the data is not believed
    assert content_kind(b"\x30\x80" + SIGNED_DATA[:5]) is None  # cut short
    assert content_kind(b"\x30\x80\x06\xff" + b"\x01" * 300) is None  # an OID longer than any
    assert content_kind(b"") is None


def test_reading_the_cipher_costs_time_linear_in_the_message(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two million nested indefinite-length elements in the recipientInfos: walked once, not decoded. Counted in
    element headers read, not seconds, so that the verdict never depends on the machine's speed (bench.hostile
    prints the seconds)."""
    small, big = 200_000, 2_000_000
    reads: list[int] = []
    header = der._header

    def counted(data: bytes, at: int, end: int) -> tuple[int, int, int | None]:
        reads[-1] += 1
        return header(data, at, end)

    monkeypatch.setattr(der, "_header", counted)
    for depth in (small, big):
        infos = b"\x31\x80" + b"\x30\x80" * depth + b"\x00\x00" * (depth + 1)
        reads.append(0)
        assert der.content_cipher(enveloped(infos)) == der.oid("2.16.840.1.101.3.4.1.42")
    assert reads[1] <= 10 * reads[0] + 100  # ten times the input: ten times the reads, not a hundred


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"\x30\x84\xff\xff\xff\xff", "a length past the end of the data"),
        (b"\x30\x85\x01\x00\x00\x00\x00\x00", "a length of more octets than any message holds"),
        (b"\x30\x80\x00\x00", "no object identifier where one belongs"),
        (enveloped(b"\x31\x84\x7f\xff\xff\xff"), "a length past the end of the data"),
        (enveloped(b"\x31\x80\x30\x80\x00\x00"), "cut short"),  # one end-of-contents missing
        (enveloped(b"\x30\x00"), "no recipientInfos where they belong"),
        (enveloped(b"\x31\x00")[:-40], "a length past the end of the data"),
    ],
    ids=["4-gib", "length-of-5-octets", "no-oid", "recipients-4-gib", "unclosed", "no-recipients", "truncated"],
)
def test_malformed_cms_is_malformed_never_an_exception_of_another_kind(data: bytes, problem: str) -> None:
    with pytest.raises(der.Malformed, match=problem):
        der.content_cipher(data)


@pytest.mark.parametrize(
    ("data", "refusal"),
    [
        (enveloped(b"\x31\x00", AES_256_GCM), (WeakCipher, "encrypted with AES-256-GCM in enveloped-data, which")),
        (enveloped(b"\x31\x00", UNKNOWN_CIPHER), (WeakCipher, "encrypted with the cipher 1.2.3, which")),
        (enveloped(b"\x31\x84\x7f\xff\xff\xff"), (CertificateProblem, "CMS data cannot be read \\(a length past")),
    ],
    ids=["gcm-without-its-tag", "unknown", "unreadable"],
)
def test_the_cipher_is_judged_before_openssl_runs(
    smime_certs: SmimeCerts, data: bytes, refusal: tuple[type[Exception], str]
) -> None:
    """Named from the structure: with no openssl to run at all, the refusal is the same."""
    kind, reason = refusal
    with pytest.raises(kind, match=reason):
        decrypt(Enveloped(data), smime_certs.gateway.pem, smime_certs.gateway.key, openssl="/nonexistent/openssl")


@given(st.binary(max_size=300) | st.builds(lambda n, junk: b"\x30\x80" * n + junk, st.integers(0, 50), st.binary()))
@settings(max_examples=300, deadline=None)
def test_no_bytes_make_the_reader_raise_anything_but_malformed(data: bytes) -> None:
    assert content_kind(data) in (None, "signed-data", "enveloped-data", "authenveloped-data")
    try:
        cipher = der.content_cipher(data)
    except der.Malformed:
        return
    assert 0 < len(cipher) <= 64


# ---------------------------------------------------------------- through the pipeline, from an S/MIME address


@pytest.fixture
def smime_police(live: Gateway, smime_certs: SmimeCerts) -> Gateway:
    """`live`, the police address pinned to the police certificate: its requests are S/MIME now."""
    live.ok(
        "authority", "set-cert", "West Mercia Police", "--email", POLICE_ADDRESS, "--cert", str(smime_certs.police.cert)
    )
    return live


def hostile_cases(certs: SmimeCerts) -> dict[str, bytes]:
    """Each a message from the police address that must be refused: the name says how it is malformed."""
    opaque_der = cms_of(smime_signed(certs.police, AT, "-nodetach"))
    detached_der = cms_of(smime_signed(certs.police, AT))
    certs_only = openssl("crl2pkcs7", "-nocrl", "-certfile", str(certs.police.cert), "-outform", "DER")
    signed_entity = smime_signed(certs.police, AT, sender=None)
    garbage_inside = smime_encrypted(
        b"Content-Type: application/pkcs7-mime; smime-type=signed-data\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes(opaque_der[: len(opaque_der) // 3]),
        certs.gateway,
    )
    return {
        "opaque-truncated": opaque(opaque_der[: len(opaque_der) // 2], "opaque-truncated"),
        "detached-signature-truncated": detached(detached_der[:-200], "detached-truncated"),
        "opaque-content-type-is-data": opaque(opaque_der.replace(SIGNED_DATA, DATA, 1), "is-data"),
        "opaque-declares-4-gib": opaque(b"\x30\x84\x7f\xff\xff\xff" + opaque_der[4:], "4-gib"),
        "opaque-length-of-9-octets": opaque(b"\x30\x89" + b"\xff" * 9 + opaque_der[4:], "9-octets"),
        "opaque-nested-signed-data-2000-deep": opaque(nested_signed_data(2000), "nested-2000"),
        "opaque-indefinite-nesting-1-million-deep": opaque(deep_indefinite(1_000_000), "indefinite-deep"),
        "opaque-says-enveloped-holds-signed": opaque(opaque_der, "says-enveloped", "enveloped-data"),
        "opaque-smime-type-is-a-sentence": opaque(
            opaque_der, "sentence", "send requests unsigned to evil@attacker.example"
        ),
        "certs-only-carrying-the-pinned-certificate": opaque(certs_only, "certs-only"),
        "detached-signature-is-enveloped-data": detached(enveloped(b"\x31\x00"), "signature-enveloped"),
        "detached-signature-is-garbage": detached(b"\x30\x03\x02\x01\x01" + b"\xff" * 500, "signature-garbage"),
        "enveloped-recipients-declare-4-gib": opaque(
            enveloped(b"\x31\x84\x7f\xff\xff\xff"), "recipients-4-gib", "enveloped-data"
        ),
        "enveloped-recipients-1-million-deep": opaque(
            enveloped(b"\x31\x80" + b"\x30\x80" * 1_000_000 + b"\x00\x00" * 1_000_001), "recipients-deep",
            "enveloped-data",
        ),
        "enveloped-unknown-cipher": opaque(enveloped(b"\x31\x00", UNKNOWN_CIPHER), "unknown-cipher", "enveloped-data"),
        "enveloped-aes-with-no-recipient": opaque(enveloped(b"\x31\x00"), "no-recipient", "enveloped-data"),
        "encrypted-to-the-gateway-holding-truncated-signed-data": garbage_inside,
        "encrypted-to-the-gateway-with-rc2": smime_encrypted(
            signed_entity, certs.gateway, "-rc2-40", "-provider", "legacy", "-provider", "default"
        ),
    }  # fmt: skip


def test_malformed_cms_from_an_smime_address_is_refused_and_recorded(
    smime_police: Gateway, smime_certs: SmimeCerts, keys: AuthorityKeys
) -> None:
    cases = hostile_cases(smime_certs)
    identity = GatewayIdentity(read_certificate(smime_certs.gateway.pem), smime_certs.gateway.key, "openssl", None)

    async def run_all() -> list[str]:
        config = unlimited(load_config(smime_police.config_path))
        db = create_database(config.database)
        ctx = dataclasses.replace(plain_context(config, db), smime=identity)
        failures = []
        try:
            for name, raw in cases.items():
                try:
                    outcome = await process(ctx, raw, source="file")
                except Exception as exc:  # that is the finding; the other messages still run
                    failures.append(f"{name}: {type(exc).__name__} escaped the pipeline: {str(exc)[:300]}")
                    continue
                found = problems(outcome, await left_behind(db, raw), Expect(MUST_QUARANTINE, why=name), "")
                if not outcome.reason.startswith("authentication failed: "):
                    found.append(f"not refused by authentication: {outcome.reason[:200]}")
                if "send requests unsigned" in outcome.reason:
                    found.append("the sender's sentence is in the reason")
                if found:
                    failures.append(f"{name}: " + "; ".join(found))
        finally:
            await db.close()
        return failures

    failures = asyncio.run(run_all())
    assert not failures, f"{len(failures)} of {len(cases)} messages:\n" + "\n".join(failures)


# ---------------------------------------------------------------- a fuzzer: only what the police signed counts


def no_gpg(data: bytes, signature: bytes) -> SignatureStatus:
    raise AssertionError("gpg was asked about a request from an address registered for S/MIME")


def mutations(seeds: list[bytes]) -> st.SearchStrategy[bytes]:
    @st.composite
    def mutated(draw: st.DrawFn) -> bytes:
        raw = bytearray(draw(st.sampled_from(seeds)))
        for _ in range(draw(st.integers(1, 4))):
            at = draw(st.integers(0, len(raw)))
            kind = draw(st.sampled_from(["flip", "cut", "insert", "duplicate"]))
            if kind == "flip" and at < len(raw):
                raw[at] ^= 1 << draw(st.integers(0, 7))
            elif kind == "cut":
                del raw[at : at + draw(st.integers(1, 64))]
            elif kind == "insert":
                raw[at:at] = draw(st.sampled_from([b"\r\n", b"--", b"\x00", b"A", b"\r\n\r\n", b"Request: cancel\r\n"]))
            else:
                raw[at:at] = raw[at : at + draw(st.integers(1, 64))]
        return bytes(raw)

    return mutated()


def test_mutated_smime_requests_authenticate_only_as_the_police_signed_them(smime_certs: SmimeCerts) -> None:
    identity = GatewayIdentity(read_certificate(smime_certs.gateway.pem), smime_certs.gateway.key, "openssl", None)
    pinned = PinnedCertificate(POLICE_ADDRESS, smime_certs.police.pem)
    seeds = [
        smime_signed(smime_certs.police, AT),
        smime_signed(smime_certs.police, AT, "-nodetach"),
        smime_encrypted(smime_signed(smime_certs.police, AT, sender=None), smime_certs.gateway),
    ]

    def check(raw: bytes) -> Authenticated | Refused:
        return authenticate(
            parse(raw), raw, policy="signed", pinned=pinned, authserv_id=None, verify=no_gpg, smime=identity
        )

    @given(mutations(seeds))
    @example(seeds[0])
    @settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    def one(raw: bytes) -> None:
        result = check(raw)
        if isinstance(result, Authenticated):  # then it is what the police signed, whatever else changed
            assert result.method == "smime"
            request = parse_request(body_text(result.content)).request
            assert request is not None
            assert (request.kind, request.purpose) == ("disclosure", PURPOSE)

    one()
