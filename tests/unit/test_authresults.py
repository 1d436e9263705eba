"""The Authentication-Results reader: the headers real borders write, text a border copies from the envelope
that must stay inside its quoted string or comment, and a header without an authserv-id (Microsoft 365)."""

from __future__ import annotations

import contextlib
from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.authenticate import Refused, dmarc_pass
from gateway.authresults import Unreadable, parse, tokens
from tests.support.addresses import GATEWAY_ADDRESS, POLICE_ADDRESS

BORDER = "mx.hmci.example"
DOMAIN = POLICE_ADDRESS.rpartition("@")[2]  # westmercia.police.example
VICTIM = f"dmarc=pass header.from={DOMAIN}"


def message(*fields: str) -> EmailMessage:
    """Header fields as given (already folded, if at all), then the police From and a body."""
    head = "".join(f"{field}\r\n" for field in fields)
    raw = f"{head}From: West Mercia Police <{POLICE_ADDRESS}>\r\nTo: {GATEWAY_ADDRESS}\r\n\r\nRequest: disclosure\r\n"
    parsed = message_from_bytes(raw.encode("utf-8", "surrogateescape"), policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


# ---------------------------------------------------------------- the headers real borders write
# Each is in the shape the vendor's documentation shows (written from that documentation's examples, as
# remembered: no copy could be fetched here), with the example domain replaced by the police domain and the
# authserv-id by the one the gateway trusts, as a deployment configures it.

VENDORS = {
    # OpenDMARC, README and opendmarc(8): one header of its own, the policy and disposition in a comment.
    "OpenDMARC": [f"Authentication-Results: {BORDER}; dmarc=pass (p=none dis=none) header.from={DOMAIN}"],
    # Rspamd, "Authentication-Results" in the milter_headers module documentation: all results in one header.
    "Rspamd": [
        f"Authentication-Results: {BORDER};\r\n\tdkim=pass header.d={DOMAIN} header.s=dkim header.b=Vq2hVCLz;\r\n"
        f"\tspf=pass ({BORDER}: domain of user@{DOMAIN} designates 192.0.2.1 as permitted sender)"
        f" smtp.mailfrom=user@{DOMAIN};\r\n\tdmarc=pass (policy=reject) header.from={DOMAIN}"
    ],
    # Exim, spec chapter "DMARC" / ${authresults}: iprev, spf, dkim and dmarc in one header.
    "Exim": [
        f"Authentication-Results: {BORDER};\r\n\tiprev=pass (mail.{DOMAIN}) smtp.remote-ip=192.0.2.1;\r\n"
        f"\tspf=pass smtp.mailfrom={DOMAIN};\r\n\tdkim=pass header.d={DOMAIN} header.s=sel header.a=rsa-sha256;\r\n"
        f"\tdmarc=pass header.from={DOMAIN}"
    ],
    # Postfix with the OpenDKIM and OpenDMARC milters: each adds its own header on top, OpenDMARC last.
    "Postfix with OpenDKIM and OpenDMARC": [
        f"Authentication-Results: {BORDER}; dmarc=pass (p=reject dis=none) header.from={DOMAIN}",
        f"Authentication-Results: {BORDER};\r\n\tdkim=pass (2048-bit key; unprotected) header.d={DOMAIN}"
        f' header.i=@{DOMAIN} header.b="kL2x/9Qa"; dkim-atps=neutral',
    ],
    # Google Workspace (the MX is Gmail's; authserv_id = "mx.google.com"), as "Show original" displays it.
    "Google Workspace": [
        f"Authentication-Results: mx.google.com;\r\n       dkim=pass header.i=@{DOMAIN} header.s=20230601"
        f" header.b=AbCdEf12;\r\n       spf=pass (google.com: domain of user@{DOMAIN} designates 192.0.2.1 as"
        f" permitted sender) smtp.mailfrom=user@{DOMAIN};\r\n"
        f"       dmarc=pass (p=REJECT sp=REJECT dis=NONE) header.from={DOMAIN}"
    ],
}
AUTHSERV = {"Google Workspace": "mx.google.com"}
# Microsoft 365, "Authentication results header" in the Exchange Online Protection documentation: no
# authserv-id, and an "action" that is no RFC 8601 property.
MICROSOFT_365 = (
    f"Authentication-Results: spf=pass (sender IP is 192.0.2.1) smtp.mailfrom={DOMAIN}; dkim=pass (signature was"
    f" verified) header.d={DOMAIN};dmarc=pass action=none header.from={DOMAIN};compauth=pass reason=100"
)


@pytest.mark.parametrize("vendor", sorted(VENDORS))
def test_the_dmarc_pass_each_border_writes_is_read(vendor: str) -> None:
    assert dmarc_pass(message(*VENDORS[vendor]), AUTHSERV.get(vendor, BORDER), DOMAIN) is None


@pytest.mark.parametrize("vendor", sorted(VENDORS))
def test_the_same_headers_saying_fail_are_refused(vendor: str) -> None:
    failed = [field.replace("dmarc=pass", "dmarc=fail") for field in VENDORS[vendor]]
    assert dmarc_pass(message(*failed), AUTHSERV.get(vendor, BORDER), DOMAIN) == Refused(f"DMARC for {DOMAIN} is fail")


def test_a_header_without_authserv_id_microsoft_365_is_never_trusted() -> None:
    """Whoever wrote it cannot be told: refused for any authserv_id, the gateway's or "" or one of its words."""
    for trusted in (BORDER, "spf=pass", "spf"):
        refused = dmarc_pass(message(MICROSOFT_365), trusted, DOMAIN)
        assert refused == Refused("the topmost Authentication-Results names no authserv-id: it is not from our border")


def test_a_header_without_authserv_id_on_top_is_not_skipped_for_the_one_below() -> None:
    """Exchange Online stamps its own on top: the one below it could be the sender's, so nothing is read."""
    forged = f"Authentication-Results: {BORDER}; {VICTIM}"
    assert dmarc_pass(message(MICROSOFT_365, forged), BORDER, DOMAIN) is not None


# Microsoft 365 as a user of MimeKit found it in the wild (jstedfast/MimeKit issue #490, "Support parsing Office
# 365 Authentication-Results", redacted there): besides no authserv-id, bare domains between the results and a
# trailing ";", neither of which RFC 8601 allows.
MICROSOFT_365_IN_THE_WILD = (
    "Authentication-Results: spf=fail (sender IP is 1.1.1.1) smtp.mailfrom=eu-west-1.amazonses.com;"
    f" recevingdomain.com; dkim=pass (signature was verified) header.d={DOMAIN};domain1.com;"
    f" dmarc=bestguesspass action=none header.from={DOMAIN};"
)


def test_microsoft_365_as_found_in_the_wild_is_refused_on_top_and_ignored_below_our_border() -> None:
    refused = dmarc_pass(message(MICROSOFT_365_IN_THE_WILD), BORDER, DOMAIN)
    assert refused is not None
    assert "Authentication-Results" in refused.reason
    assert dmarc_pass(message(VENDORS["OpenDMARC"][0], MICROSOFT_365_IN_THE_WILD), BORDER, DOMAIN) is None


def test_our_border_on_top_of_microsoft_365_is_read() -> None:
    """A border of our own, in front of the mailbox, that stamps last: its header is the one read."""
    assert dmarc_pass(message(VENDORS["OpenDMARC"][0], MICROSOFT_365), BORDER, DOMAIN) is None


# ---------------------------------------------------------------- text the border copies from the envelope


@pytest.mark.parametrize(
    "field",
    [
        # A quoted local part in MAIL FROM, copied into smtp.mailfrom: its ";" is inside the quoted string.
        f'Authentication-Results: {BORDER}; spf=pass smtp.mailfrom="x;{VICTIM};"@attacker.example;'
        f" dmarc=fail header.from={DOMAIN}",
        # The same, with the real DMARC result for the attacker's own domain.
        f'Authentication-Results: {BORDER}; spf=pass smtp.mailfrom="a;{VICTIM} x"@attacker.example;'
        " dmarc=pass header.from=attacker.example",
        # An encoded word in an SPF comment: decoded, it closes the comment and adds a dmarc=pass.
        f"Authentication-Results: {BORDER}; spf=pass ( =?utf-8?q?x=29=3B_dmarc=3Dpass_header=2Efrom=3D"
        f"{DOMAIN.replace('.', '=2E')}_=28?= ) smtp.mailfrom=attacker.example; dmarc=fail header.from={DOMAIN}",
        # A parenthesis inside a quoted string is text, not the start of a comment (that would hide the fail).
        f'Authentication-Results: {BORDER}; spf=pass smtp.mailfrom="(x"@a.example; dmarc=fail header.from={DOMAIN};'
        f' spf=pass smtp.helo=") ; {VICTIM} ;"',
        # An escaped parenthesis inside a comment does not close it.
        f"Authentication-Results: {BORDER}; spf=pass (x\\); {VICTIM} ; y) smtp.mailfrom=a.example;"
        f" dmarc=fail header.from={DOMAIN}",
    ],
)
def test_envelope_text_inside_the_border_header_cannot_make_a_dmarc_pass(field: str) -> None:
    assert dmarc_pass(message(field), BORDER, DOMAIN) is not None


def test_the_header_is_read_as_written_not_rfc2047_decoded() -> None:
    encoded = f"=?utf-8?q?{BORDER.replace('.', '=2E')}?="
    assert dmarc_pass(message(f"Authentication-Results: {encoded}; {VICTIM}"), BORDER, DOMAIN) is not None
    assert dmarc_pass(message(f"Authentication-Results: {BORDER}; {VICTIM}"), BORDER, DOMAIN) is None


@pytest.mark.parametrize(
    ("field", "why"),
    [
        (f"{BORDER}; dmarc=pass (p=none header.from={DOMAIN}", "a comment that is never closed"),
        (f'{BORDER}; dmarc=pass reason="x header.from={DOMAIN}', "a quoted string that is never closed"),
        (f"{BORDER} mx.attacker.example; {VICTIM}", "more than an authserv-id and a version before the first ';'"),
        (f"; {VICTIM}", "no authserv-id"),
    ],
)
def test_a_broken_header_is_refused_whole(field: str, why: str) -> None:
    with pytest.raises(Unreadable, match=why):
        parse(field)
    assert dmarc_pass(message(f"Authentication-Results: {field}"), BORDER, DOMAIN) is not None


@pytest.mark.parametrize(
    "dmarc",
    [
        f"dmarc=pass header.from={DOMAIN} header.from=attacker.example",  # which one?
        f"dmarc=pass header.from={DOMAIN} junk",  # does not follow the grammar
        f"dmarc pass header.from={DOMAIN}",
    ],
)
def test_a_dmarc_result_that_cannot_be_read_unambiguously_is_refused(dmarc: str) -> None:
    assert dmarc_pass(message(f"Authentication-Results: {BORDER}; {dmarc}"), BORDER, DOMAIN) is not None


def test_a_pass_and_a_fail_for_the_domain_in_one_header_is_a_fail() -> None:
    field = f"Authentication-Results: {BORDER}; {VICTIM}; dmarc=fail header.from={DOMAIN}"
    assert dmarc_pass(message(field), BORDER, DOMAIN) == Refused(f"DMARC for {DOMAIN} is fail")


def test_the_method_version_and_authres_version_are_understood() -> None:
    field = f"Authentication-Results: {BORDER} 1; dmarc/1=pass header.from={DOMAIN}"
    assert dmarc_pass(message(field), BORDER, DOMAIN) is None


def test_deeply_nested_comments_and_long_strings_are_read() -> None:
    """Hostile depth and length cost a linear scan: no recursion to run out of, nothing retried."""
    deep = "(" * 5000 + ")" * 5000
    field = f'{BORDER}; spf=pass {deep} smtp.mailfrom="{"q" * 10000}"@a.example; {VICTIM}'
    assert [t.text for t in tokens(field)][-3:] == ["header.from", "=", DOMAIN]
    assert dmarc_pass(message(f"Authentication-Results: {field}"), BORDER, DOMAIN) is None


# ---------------------------------------------------------------- hostile values in every position

ENCODED_INJECTION = f" =?utf-8?q?=29=3B_dmarc=3Dpass_header=2Efrom=3D{DOMAIN.replace('.', '=2E')}_=28?= "
HOSTILE = st.lists(
    st.sampled_from(
        [*'abc.@;=()"\\ /', "dmarc=pass", f"header.from={DOMAIN}", f";{VICTIM};", f"); {VICTIM}; (", ENCODED_INJECTION]
    ),
    max_size=12,
).map("".join)


def quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def comment(text: str) -> str:
    return "(" + text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") + ")"


@st.composite
def border_header(draw: st.DrawFn, verdict: str) -> str:
    """Our border's header, its own DMARC verdict for the police domain `verdict`, with hostile text in every
    place a border may copy outside text to: quoted local parts, property values, reasons, comments."""
    hostile = [draw(HOSTILE) for _ in range(6)]
    local = quoted(hostile[0])
    return (
        f"{BORDER} {comment(hostile[1])}; spf=pass {comment(hostile[2])} smtp.mailfrom={local}@attacker.example;"
        f" dkim=neutral reason={quoted(hostile[3])} header.d={quoted(hostile[4])};"
        f" dmarc={verdict} {comment(hostile[5])} header.from={DOMAIN}"
    )


@settings(max_examples=300, deadline=None)
@given(border_header("fail"), st.sampled_from(["top", "below"]), HOSTILE)
def test_no_hostile_text_in_any_position_turns_a_fail_into_a_pass(field: str, where: str, extra: str) -> None:
    forged = f"Authentication-Results: {BORDER}; dmarc=pass {comment(extra)} header.from={DOMAIN}"
    fields = [f"Authentication-Results: {field}", forged] if where == "top" else [f"Authentication-Results: {field}"]
    assert dmarc_pass(message(*fields), BORDER, DOMAIN) is not None


@settings(max_examples=300, deadline=None)
@given(border_header("pass"))
def test_hostile_text_in_any_position_does_not_hide_the_border_pass(field: str) -> None:
    assert dmarc_pass(message(f"Authentication-Results: {field}"), BORDER, DOMAIN) is None


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_any_text_is_tokenized_or_refused_never_an_exception_of_another_kind(text: str) -> None:
    with contextlib.suppress(Unreadable):
        parse(text)
