"""The bounds on the header fields Python's email package parses before a sender is authenticated: measured on
the raw bytes, so a field over its bound is refused before anything parses it, and a request's own are not."""

from __future__ import annotations

import datetime as dt
import hashlib
import re

import pytest

from gateway.config import LimitSettings
from gateway.guard import too_big
from gateway.lookalike import address_like, claims
from gateway.pipeline import arrive
from tests.support.addresses import GATEWAY_ADDRESS, POLICE_ADDRESS
from tests.support.hostile_corpus import dots_and_atoms, folded
from tests.support.requests import plain
from tests.support.wire import parse

LIMITS = LimitSettings()
AT = dt.datetime(2026, 11, 24, 9, 0, tzinfo=dt.UTC)
HEAD = f"From: West Mercia Police <{POLICE_ADDRESS}>\nTo: {GATEWAY_ADDRESS}\nSubject: request\n"


def mail(extra: str, head: str = HEAD, body: str = "Request: disclosure\r\n") -> bytes:
    return re.sub(r"\r?\n", "\r\n", head + extra).encode() + b"\r\n" + body.encode()


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (mail("", head=f"From: {dots_and_atoms(3000)}@attacker.example\n"), "the From header is "),
        (mail(f"Sender: {'x' * 1100}\n"), "the Sender header is "),
        (mail(f"Reply-To: {folded('(' * 600 + ')' * 600)} a@b.example\n"), "the Reply-To header is "),
        (mail(f"Cc: {' '.join(['=?utf-8?q?a=C3=A9?='] * 120)} <a@b.example>\n"), "the Cc header is "),
        (mail("".join(f"Cc: {'c' * 900}@b.example\n" for _ in range(5))), "the address headers take "),
        (mail(f"Content-Type: text/plain; a={dots_and_atoms(2000)}\n"), "a MIME header field is "),
        (
            mail(f'Authentication-Results: mx.hmci.example; spf=pass smtp.mailfrom="{"q" * 17000}"@x\n'),
            "the Authentication-Results header is 17",
        ),
    ],
)
def test_a_field_over_its_bound_is_refused_before_parsing(raw: bytes, reason: str) -> None:
    refused = too_big(raw, LIMITS)
    assert refused is not None
    assert refused.startswith(reason)
    assert refused.endswith("not parsed")


@pytest.mark.parametrize("line_end", ["\r", "\n", "\r\n"])
def test_fields_are_told_apart_at_every_line_end_the_parser_knows(line_end: str) -> None:
    """Python's parser ends a line at a lone CR too: a long From behind one is still measured as a From."""
    head = f"Subject: hi{line_end}From: {dots_and_atoms(2000)}@x{line_end}".replace("\r\n ", f"{line_end} ")
    part = f"--b{line_end}Content-Type: text/plain; a={dots_and_atoms(2000)}{line_end}".replace("\r\n ", f"{line_end} ")
    assert (too_big(head.encode() + b"\r\n\r\nx", LIMITS) or "").startswith("the From header is ")
    multipart = f"From: a@b.example\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n{part}{line_end}x"
    assert (too_big(multipart.encode(), LIMITS) or "").startswith("a MIME header field is ")


def test_a_part_header_over_its_bound_is_refused_as_well() -> None:
    body = f'--b\r\nContent-Type: text/plain; name="{"n" * 1200}"\r\n\r\nx\r\n--b--\r\n'
    raw = mail('MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="b"\n', body=body)
    assert (too_big(raw, LIMITS) or "").startswith("a MIME header field is ")


def test_many_small_mime_fields_add_up() -> None:
    part = f"--b\r\nContent-Type: text/plain; name={dots_and_atoms(900)}\r\n\r\nx\r\n"
    raw = mail('MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="b"\n', body=part * 10 + "--b--\r\n")
    assert too_big(raw, LIMITS) == "the MIME header fields take over 8192 bytes: not parsed"


def test_a_request_with_ordinary_fields_at_every_bound_is_parsed() -> None:
    fields = (
        f"Sender: {POLICE_ADDRESS}\nReply-To: Desk <{POLICE_ADDRESS}>\nCc: {', '.join(['x@y.example'] * 80)}\n"
        f"Content-Type: text/plain; charset=utf-8; format=flowed\nMessage-ID: <{'m' * 900}@x>\n"
        f"Authentication-Results: mx.hmci.example; {'dkim=pass header.d=x.example; ' * 300}dmarc=pass\n"
    )
    assert too_big(mail(fields), LIMITS) is None


def test_body_text_that_only_looks_like_a_long_mime_field_is_not_one() -> None:
    assert too_big(mail("", body="Content-wise, " + "x" * 5000 + "\r\n"), LIMITS) is None


def test_arrive_keeps_a_long_message_id_by_its_digest_and_refuses_nothing_for_it() -> None:
    short = arrive(mail("Message-ID: <a@b.example>\n"), "file", AT)
    assert short.message_id == "<a@b.example>"
    hostile = f"<{dots_and_atoms(1500)}@x>"
    raw = mail(f"Message-ID: {hostile}\n")
    written = hostile.replace("\r\n", "").encode()
    assert arrive(raw, "file", AT).message_id == f"sha256:{hashlib.sha256(written).hexdigest()}"
    assert too_big(raw, LIMITS) is None


def test_address_like_words_are_found_in_one_pass() -> None:
    text = f'"Police" <{POLICE_ADDRESS}>, x@y (a@b) [c@d];e@f:g@h @i j@ k.l@m.n'
    assert address_like(text) == [POLICE_ADDRESS, "x@y", "a@b", "c@d", "e@f", "g@h", "k.l@m.n"]
    assert address_like("a@@b @@ x@y@z") == ["a@@b", "x@y@z"]


def test_a_look_alike_is_still_found_in_a_field_at_its_bound() -> None:
    imitation = POLICE_ADDRESS.replace("l", "I", 1)
    message = parse(plain(f"From: {'a.' * 400}x <{imitation}>\nTo: {GATEWAY_ADDRESS}\n"))
    [claim] = claims(message, [POLICE_ADDRESS], sender=imitation)
    assert claim.registered == POLICE_ADDRESS
