"""A fuzzer for the whole mail path: arbitrary bytes, random MIME trees and mutated real messages (a request
correctly signed by the pinned police key, the hand-written corpus in tests/hostile/corpus/ and a few messages made with
the session's keys, see seeds()) go through `gateway.pipeline.process` in-process, against the `live` gateway and
a real database. It fails on any exception, on a step that broke on its input (the pipeline's "processing failed"
safety net), on a message that does not end in exactly one recorded outcome, on a message that took over 10
seconds, on any answer to a sender that was not authenticated, and on any disclosure of anything but what the
police key signed, to anyone but the police under its pinned key.

It runs for GATEWAY_FUZZ_SECONDS seconds in all (default 20; CI should set 120), shared equally between the
databases being tested, in rounds of a few dozen inputs, each round with a fresh random seed (derandomize off) and
the unmutated signed request as an explicit example, so that every round reaches a disclosure. How many inputs it
tried is printed (pytest -s or -rA), kept as the junit property fuzz_inputs and shown in the terminal summary, also
when it fails. A failure is shrunk to a small input, printed with a `@reproduce_failure` blob, and every input that
broke a rule is kept in the test's tmp_path (failing-inputs/) to run again by hand. No example database is kept
(database=None): a failure is for fixing, not for replaying from a directory in the tree.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import re
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.config import load_config
from gateway.db.engine import Database, create_database
from gateway.pipeline import process
from gateway.values import Context
from tests.support.databases import POSTGRES_ENV
from tests.support.gateway_cli import Gateway
from tests.support.hostile_corpus import (
    ANSWERED,
    FILES,
    OUTCOMES,
    OWN_AREA,
    SIGNED_PURPOSE,
    Expect,
    context,
    corpus_files,
    generated_cases,
    left_behind,
    police_request,
    problems,
    signed_part_and_signature,
    unlimited,
)
from tests.support.keys import AuthorityKeys
from tests.support.requests import BORDER

FUZZ_SECONDS_ENV = "GATEWAY_FUZZ_SECONDS"
DEFAULT_SECONDS = 20.0
ROUND = 40  # inputs per hypothesis run; the time budget is checked between runs
SLOWEST = 10.0  # seconds one message may take

settings.register_profile(
    "gateway-fuzz",
    deadline=None,  # gpg and the database make timings vary; SLOWEST is checked by the test itself
    derandomize=False,
    database=None,
    max_examples=ROUND,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)


def budget() -> float:
    """This database's share of the fuzzing time."""
    total = float(os.environ.get(FUZZ_SECONDS_ENV) or DEFAULT_SECONDS)
    backends = 2 if os.environ.get(POSTGRES_ENV) else 1
    return total / backends


# ---------------------------------------------------------------- seeds


@dataclass(frozen=True)
class Seed:
    name: str
    raw: bytes
    signed: tuple[bytes, bytes] | None = None  # the police-signed first part and its signature, when it holds one


def seeds(keys: AuthorityKeys) -> list[Seed]:
    """The corpus the mutations start from: a correctly signed police request, the hand-written hostile
    messages and a few made with the real keys. Messages that carry our border's authserv-id are left out:
    a mutation of one may become authentic by DMARC, which the oracle below does not try to judge."""
    request = police_request(keys, message_id="fuzz-seed")
    found = [Seed("signed-police-request", with_placeholder(request), signed_part_and_signature(request))]
    found += [
        Seed(path.name, with_placeholder(path.read_bytes()))
        for path in corpus_files()
        if BORDER.encode() not in path.read_bytes()
    ]
    wanted = {
        "forged-request-in-rfc822-from-police",
        "signature-wrapping-in-preamble",
        "signed-by-another-authoritys-key",
    }
    for case in generated_cases():
        if case.name in wanted:
            raw = case.make(keys, "")  # none of these is encrypted to the gateway
            genuine = b"BEGIN PGP SIGNATURE" in raw and case.name != "signed-by-another-authoritys-key"
            found.append(Seed(case.name, with_placeholder(raw), signed_part_and_signature(raw) if genuine else None))
    return found


# ---------------------------------------------------------------- inputs

TOKENS = [
    b"\r\n", b"\n", b"\r", b"\r\n\r\n", b"\x00", b"\xff", b"\xc3", b"--", b"--sig-b", b"--sig-b--",
    b"------=_signed_7f3a", b"boundary=", b'boundary=""', b"Content-Type: multipart/mixed; boundary=x\r\n",
    b"Content-Type: message/rfc822\r\n",
    b"Content-Type: multipart/signed; protocol=\"application/pgp-signature\"; boundary=z\r\n",
    b"Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\"; boundary=z\r\n",
    b"Content-Transfer-Encoding: base64\r\n", b"Content-Transfer-Encoding: quoted-printable\r\n", b"charset=",
    b"charset=idna", b"charset=utf-16", b"=?utf-8?q?", b"=?utf-8?b?", b"?=", b"From: ",
    b"From: evil@attacker.example\r\n", b"Sender: ", b"Message-ID: ", b"Auto-Submitted: no\r\n",
    b"-----BEGIN PGP SIGNATURE-----", b"-----END PGP MESSAGE-----", b"Request: disclosure\r\n",
    b"Frequency: monthly\r\n", b"Area: Kent\r\n", b"Purpose: ", b"<script>", b"&#0;", b"=\r\n", b"=ZZ",
    b"disclosures@westmercia.police.example",
]  # fmt: skip

HEADER_LINES = [
    b"Reply-To: evil@attacker.example", b"Sender: evil@attacker.example",
    b"Sender: disclosures@westmercia.police.example", b"From: evil@attacker.example", b"Content-Type: text/plain",
    b"Content-Transfer-Encoding: base64", b"Auto-Submitted: auto-replied", b"Precedence: bulk", b"Return-Path: <>",
    b"MIME-Version: 2.0", b"X-Junk: \xff\xfe\x00", b"Subject: =?utf-8?b?!!!?=",
    b"Message-ID: <fuzz-ID@westmercia.police.example>", b"Resent-From: evil@attacker.example",
    b"Authentication-Results: mx.attacker.example; dmarc=pass header.from=westmercia.police.example",
    b"Content-Type: multipart/signed; boundary=\"----=_signed_7f3a\"", b"List-Id: <x>",
]  # fmt: skip
_LINE_START = re.compile(rb"\r?\n")
_MESSAGE_ID = re.compile(rb"(?im)^Message-ID:[^\r\n]*")
PLACEHOLDER = b"<fuzz-ID@westmercia.police.example>"


def with_placeholder(raw: bytes) -> bytes:
    """The message's first Message-ID made a placeholder, which each input replaces with a Message-ID of its own,
    so that a message surviving its mutations is not quarantined as a replay of an earlier one."""
    return _MESSAGE_ID.sub(b"Message-ID: " + PLACEHOLDER, raw, count=1)


@st.composite
def mutated(draw: st.DrawFn, seeds: list[Seed]) -> tuple[str, bytes, Seed]:
    seed = draw(st.one_of(st.just(seeds[0]), st.sampled_from(seeds)))  # the signed request half the time
    raw = seed.raw
    for _ in range(draw(st.sampled_from((1, 1, 1, 2, 2, 3, 4, 6)))):
        at = draw(st.integers(0, len(raw)))
        op = draw(
            st.sampled_from(("header", "insert", "token", "delete", "replace", "duplicate", "truncate", "line-ends"))
        )
        if op == "header":  # a whole header line, at the start of a line of the header block
            end = raw.find(b"\r\n\r\n") if b"\r\n\r\n" in raw else len(raw)
            starts = [0, *(m.end() for m in _LINE_START.finditer(raw, 0, end))]
            at = draw(st.sampled_from(starts))
            line = draw(st.one_of(st.sampled_from(HEADER_LINES), st.from_regex(rb"\A[A-Za-z-]{1,20}: [ -~]{0,60}\Z")))
            raw = raw[:at] + line + b"\r\n" + raw[at:]
        elif op == "insert":
            raw = raw[:at] + draw(st.binary(min_size=1, max_size=64)) + raw[at:]
        elif op == "token":
            raw = raw[:at] + draw(st.sampled_from(TOKENS)) + raw[at:]
        elif op == "delete":
            raw = raw[:at] + raw[at + draw(st.integers(1, 256)) :]
        elif op == "replace" and at < len(raw):
            raw = raw[:at] + bytes([draw(st.integers(0, 255))]) + raw[at + 1 :]
        elif op == "duplicate":
            length, times = draw(st.integers(1, 512)), draw(st.integers(1, 40))
            raw = raw[:at] + raw[at : at + length] * times + raw[at:]
        elif op == "truncate":
            raw = raw[:at]
        elif op == "line-ends":
            end = at + draw(st.integers(1, 4096))
            ending = draw(st.sampled_from((b"\n", b"\r", b"\n\r", b"\r\r\n")))
            raw = raw[:at] + re.sub(rb"\r?\n", ending, raw[at:end]) + raw[end:]
    return f"mutated {seed.name}", raw[: 256 * 1024], seed


_HEADER = "From: West Mercia Police <disclosures@westmercia.police.example>\r\nTo: register-requests@hmci.example\r\n"


@st.composite
def mime_tree(draw: st.DrawFn, depth: int = 0) -> str:
    """A random MIME entity: headers a parser has to take seriously, bodies that may or may not match them."""
    kinds = ["text/plain", "text/html", "application/pgp-signature", "application/octet-stream", "message/rfc822"]
    if depth < 4:
        kinds += ["multipart/mixed", "multipart/signed", "multipart/encrypted", "multipart/alternative"]
    kind = draw(st.sampled_from(kinds))
    params = draw(
        st.lists(
            st.sampled_from(
                ['charset="utf-8"', "charset=x-klingon", "charset=idna", "charset=utf-16", "charset=utf-7",
                 'protocol="application/pgp-signature"', 'protocol="application/pgp-encrypted"', "micalg=pgp-sha256",
                 "name*=''%ff%00", 'boundary=""', "charset*0*=x; charset*1=y"]
            ),
            max_size=3,
        )
    )  # fmt: skip
    encoding = draw(st.sampled_from(["", "base64", "quoted-printable", "8bit", "binary", "x-uuencode"]))
    head = f"Content-Type: {kind}" + "".join(f"; {p}" for p in params)
    if encoding:
        head += f"\r\nContent-Transfer-Encoding: {encoding}"
    if kind.startswith("multipart/"):
        boundary = draw(st.sampled_from(["b", "sig-b", "b b", "=_x", "b" * 80]))
        children = draw(st.lists(mime_tree(depth + 1), max_size=4))
        body = "".join(f"--{boundary}\r\n{child}\r\n" for child in children)
        body += draw(st.sampled_from([f"--{boundary}--\r\n", "", f"--{boundary}"]))
        return f'{head}; boundary="{boundary}"\r\n\r\n{body}'
    if kind == "message/rfc822":
        return f"{head}\r\n\r\n{_HEADER}{draw(mime_tree(depth + 1))}"
    body = draw(
        st.one_of(
            st.sampled_from(["Request: disclosure\r\nPurpose: fuzz\r\n", "<p>Request: disclosure</p>", "=ZZ=\r\n",
                             "UmVxdWVzdDog!!!", "-----BEGIN PGP SIGNATURE-----\r\n\r\niQ==\r\n-----END PGP"]),
            st.text(max_size=200),
        )
    )  # fmt: skip
    return f"{head}\r\n\r\n{body}"


def inputs(seeds: list[Seed]) -> st.SearchStrategy[tuple[str, bytes, Seed | None]]:
    none: st.SearchStrategy[Seed | None] = st.none()
    arbitrary = st.tuples(st.just("arbitrary bytes"), st.binary(max_size=4096), none)
    from_police = st.tuples(
        st.just("police headers + arbitrary bytes"), st.binary(max_size=2048).map(lambda b: _HEADER.encode() + b), none
    )
    trees = st.tuples(
        st.just("random MIME tree"),
        mime_tree().map(lambda tree: (_HEADER + "MIME-Version: 1.0\r\n" + tree).encode("utf-8", "surrogatepass")),
        none,
    )
    mutations = mutated(seeds)
    return st.one_of(arbitrary, from_police, trees, mutations, mutations, mutations)


# ---------------------------------------------------------------- the oracle


_NOT_RADIX64 = re.compile(rb"[^A-Za-z0-9+/]")


def _packets(armour: bytes) -> bytes:
    """The radix-64 letters of an armoured signature's data lines: gpg skips any other character in them, and
    does without the checksum line, so only these letters say which signature it is."""
    lines = armour.split(b"-----")[2].strip().splitlines()  # between BEGIN and END
    data = [line for line in lines if line.strip() and b":" not in line and not line.startswith(b"=")]
    return _NOT_RADIX64.sub(b"", b"".join(data))


def authentic(raw: bytes, seed: Seed | None) -> bool:
    """Whether the input may still be a message the police key signed: its seed held a police-signed part, that
    part is still there byte for byte (line ends aside) and so is its signature (as gpg reads armour), in a
    multipart/signed message. Anything else is not authentic, whatever the gateway makes of it."""
    if seed is None or seed.signed is None:
        return False
    part, signature = seed.signed
    wire = re.sub(rb"\r?\n", b"\r\n", raw)
    if part not in wire or _packets(signature) not in _NOT_RADIX64.sub(b"", raw):
        return False
    return message_from_bytes(raw, policy=policy.compat32).get_content_type() == "multipart/signed"


@dataclass
class Fuzzer:
    keys: AuthorityKeys
    ctx: Context
    db: Database
    loop: asyncio.AbstractEventLoop
    failures: Path  # where the inputs that broke a rule are kept, to run again by hand
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    tried: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    slowest: float = 0.0

    def check(self, label: str, raw: bytes, seed: Seed | None) -> None:
        self.tried[label] += 1
        unique = f"<fuzz-{self.run}-{sum(self.tried.values())}@westmercia.police.example>".encode()
        self.loop.run_until_complete(self._check(raw.replace(PLACEHOLDER, unique), seed))

    async def _check(self, raw: bytes, seed: Seed | None) -> None:
        start = time.perf_counter()
        outcome = await process(self.ctx, raw, source="fuzz")  # any exception fails the test
        seconds = time.perf_counter() - start
        self.slowest = max(self.slowest, seconds)
        self.outcomes[outcome.settled_as] += 1
        left = await left_behind(self.db, raw)
        is_authentic = authentic(raw, seed)
        found = problems(outcome, left, Expect(OUTCOMES, is_authentic), self.keys.police.fingerprint)
        if outcome.settled_as == ANSWERED and not is_authentic:
            found.append(f"answered ({outcome.reason[:200]}) though not authentic")
        for disclosure in left.disclosures:
            if (disclosure.purpose, disclosure.area) != (SIGNED_PURPOSE, OWN_AREA):
                found.append(f"disclosed {disclosure.area!r} for {disclosure.purpose!r}: not what the police signed")
        if seconds > SLOWEST:
            found.append(f"the pipeline took {seconds:.1f} s")
        if found:
            kept = self.failures / f"{hashlib.sha256(raw).hexdigest()[:16]}.eml"
            kept.write_bytes(raw)
            found.append(f"the input is kept in {kept}")
        assert not found, "; ".join(found)


@pytest.fixture
def fuzzer(live: Gateway, keys: AuthorityKeys, tmp_path: Path) -> Iterator[Fuzzer]:
    loop = asyncio.new_event_loop()
    failures = tmp_path / "failing-inputs"
    failures.mkdir()
    config = unlimited(load_config(live.config_path))
    db = create_database(config.database)
    try:
        yield Fuzzer(keys, context(config, db), db, loop, failures)
    finally:
        loop.run_until_complete(db.close())
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


def test_no_input_breaks_the_mail_path(
    fuzzer: Fuzzer,
    keys: AuthorityKeys,
    database_url: str,
    record_property: Any,
) -> None:
    corpus = seeds(keys)
    assert len(corpus) > len(FILES) // 2  # the seeds were found

    @given(inputs(corpus))
    @example(("the signed request itself", corpus[0].raw, corpus[0]))  # every round: the path to a disclosure
    @settings(settings.get_profile("gateway-fuzz"))
    def one(example: tuple[str, bytes, Seed | None]) -> None:
        fuzzer.check(*example)

    seconds = budget()
    start = time.monotonic()
    rounds, stopped = 0, "ran its time"
    try:
        while time.monotonic() - start < seconds or rounds == 0:
            one()
            rounds += 1
    except BaseException:
        stopped = "STOPPED BY A FAILURE (shrinking included)"
        raise
    finally:  # the count is reported whatever happened
        elapsed = time.monotonic() - start
        backend = "postgresql" if database_url.startswith("postgresql") else "sqlite"
        total = sum(fuzzer.tried.values())
        line = (
            f"{backend}: {total} inputs in {elapsed:.0f} s, {stopped} ({total / elapsed:.0f}/s, {rounds} rounds, "
            f"slowest {fuzzer.slowest:.2f} s); "
            + ", ".join(f"{n} {kind}" for kind, n in sorted(_kinds(fuzzer.tried).items()))
            + "; outcomes " + ", ".join(f"{n} {kind}" for kind, n in sorted(fuzzer.outcomes.items()))
        )  # fmt: skip
        print(f"fuzzer: {line}")
        record_property("fuzz_inputs", total)
        record_property("fuzz_summary", line)  # conftest puts it in the terminal summary, with or without xdist
    assert total >= ROUND  # it did run
    assert fuzzer.outcomes[ANSWERED] > 0  # and reached the end of the path, not just the first checks


def _kinds(tried: Counter[str]) -> Counter[str]:
    """Mutations counted together, whatever their seed."""
    kinds: Counter[str] = Counter()
    for label, n in tried.items():
        kinds["mutated" if label.startswith("mutated") else label] += n
    return kinds


def test_the_oracle_tells_a_signed_request_from_a_forgery(keys: AuthorityKeys) -> None:
    """The fuzzer's judgement of authenticity, on inputs whose answer is known."""
    [seed] = [s for s in seeds(keys) if s.name == "signed-police-request"]
    assert authentic(seed.raw, seed)
    assert authentic(seed.raw.replace(b"Subject: request", b"Subject: anything"), seed)  # outer headers are not signed
    assert not authentic(seed.raw.replace(b"our force area", b"all of England"), seed)
    line = re.search(rb"-----BEGIN PGP SIGNATURE-----\r?\n\r?\n([A-Za-z0-9+/]{40,})", seed.raw)
    assert line is not None
    data = line[1]
    assert authentic(seed.raw.replace(data, data[:20] + b"!\x00\r\n" + data[20:]), seed)  # gpg skips those
    other = b"B" if data[20:21] == b"A" else b"A"
    assert not authentic(seed.raw.replace(data, data[:20] + other + data[21:]), seed)
    assert not authentic(seed.raw.replace(b"multipart/signed", b"multipart/mixed"), seed)
    assert not authentic(seed.raw, dataclasses.replace(seed, signed=None))
    assert not authentic(seed.raw, None)
