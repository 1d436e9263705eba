"""What the gateway writes: headers and file names no hostile value can break, and CSV cells no spreadsheet runs
(its logs are in test_log_safety.py)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from gateway.compose import Envelope, Templates, envelope_for, inner_message, outer_message
from gateway.config import DatabaseSettings, load_config
from gateway.crypto import Keyring
from gateway.db.engine import create_database
from gateway.db.models import OutboxMessage
from gateway.extracts import ENFORCEMENT_EXTRACT_COLUMNS, HOME_EXTRACT_COLUMNS, ExtractFile, build_extract
from gateway.outbox import deliver_due, smtp_transport
from gateway.schedule import Changes
from gateway.values import Context
from tests.support.addresses import ADMIN_ADDRESS, GATEWAY_ADDRESS, POLICE_ADDRESS
from tests.support.gateway_cli import Gateway
from tests.support.keys import AuthorityKeys
from tests.support.live import FORMULAS, outbox, outbox_content
from tests.support.register import FakeAction, FakeHome
from tests.support.relay import Relay, plain_relay, serve
from tests.support.requests import FROM_POLICE, REQUEST, dmarc_request
from tests.support.sqlite_only import database_url
from tests.support.wire import (
    check_inner,
    decrypt,
    evaluated,
    field_names,
    fields,
    parse,
    read_csv,
    well_formed,
    wire_problems,
)

# Imported, the SQLite-only database_url overrides the registered one here: what the gateway writes does not
# depend on the database (the other tests cover both).
__all__ = ["database_url"]

MARKING = "OFFICIAL-SENSITIVE"
REFERENCE = "HMCI-20261125-0A1B2C3D"
EVIL = "Bcc: evil@attacker.example"


# ---------------------------------------------------------------- reading the wire


OUTER_FIELDS = {
    "From", "To", "Subject", "Date", "Message-ID", "In-Reply-To", "References", "Auto-Submitted", "SIO-Label",
    "MIME-Version", "Content-Type",
}  # fmt: skip
# A msg-id as RFC 5322 3.6.4 has it (no obsolete forms), and never anything a client could decode (RFC 2047).
MSG_ID = re.compile(r"<[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+>")


def check_outer(wire: bytes) -> EmailMessage:
    assert wire_problems(wire) == []
    names = Counter(field_names(wire))
    assert set(names) <= OUTER_FIELDS, names
    assert max(names.values()) == 1, names
    outer = well_formed(parse(wire))
    for name in ("In-Reply-To", "References"):
        for ident in str(outer.get(name, "")).split():
            assert MSG_ID.fullmatch(ident), (name, ident[:100])
            assert "=?" not in ident
    for name, value in fields(wire):  # encoded words (RFC 2047) only in the text of the Subject or the marking
        assert name in ("Subject", "SIO-Label") or b"=?" not in value, (name, value[:100])
    return outer


# ---------------------------------------------------------------- hostile values


def _b64_word(text: str) -> str:
    return f"=?utf-8?b?{base64.b64encode(text.encode()).decode()}?="


HOSTILE: dict[str, str] = {
    "crlf": f"x\r\n{EVIL}",
    "crlf then a blank line": f"x\r\n\r\n{EVIL}",
    "bare cr": f"x\r{EVIL}",
    "bare lf": f"x\n{EVIL}",
    "nul": f"x\x00{EVIL}",
    "other line breaks": f"x\x0b{EVIL}\x0c{EVIL}\x85{EVIL}\u2028{EVIL}\u2029{EVIL}",
    "5000 characters in one word": "A" * 5000,
    "5000 characters of words": "word " * 1000,
    "non-ascii": "Tŷ Gwyn, Caffè Düsseldorf, 児童養護施設",
    "rfc 2047 q": "=?utf-8?q?x=0D=0ABcc:_evil@attacker.example?=",
    "rfc 2047 b": _b64_word(f"x\r\n{EVIL}"),
    "rfc 2047 inside text": f"a =?utf-8?q?=0D=0A{EVIL.replace(' ', '_')}?= b",
    "rfc 2047 without spaces": f"a{_b64_word(chr(13) + chr(10) + EVIL)}b",
}
HOSTILE_IDS = {
    **HOSTILE,
    **{f"<{name}>": f"<{value}@westmercia.police.example>" for name, value in HOSTILE.items()},
    "two ids and a comment": "<a@b.example> (comment) <c@d.example>",
}


def envelope(**changes: Any) -> Envelope:
    values: dict[str, Any] = {
        "sender": GATEWAY_ADDRESS, "recipient": POLICE_ADDRESS, "marking": MARKING, "reference": REFERENCE,
        "subject": "Register of children's homes: West Mercia police force area (HMCI-20261125-0A1B2C3D)",
        **changes,
    }  # fmt: skip
    return Envelope(**values)


def built(env: Envelope, files: Iterable[ExtractFile] = ()) -> tuple[bytes, bytes]:
    """The inner part's bytes and the outer message's, as the pipeline makes them (the encryption left out)."""
    inner = inner_message(env, "OFFICIAL-SENSITIVE\r\nThe text.\r\n", tuple(files))
    armour = b"-----BEGIN PGP MESSAGE-----\r\n\r\nhQEMA\r\n-----END PGP MESSAGE-----\r\n"
    return inner, outer_message(env, armour)


@pytest.mark.parametrize("value", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_hostile_subject_stays_one_header(value: str) -> None:
    inner_wire, outer_wire = built(envelope(subject=value))
    check_outer(outer_wire)
    inner = check_inner(inner_wire)
    assert "Bcc" not in inner
    assert "\n" not in str(inner["Subject"])
    assert "\r" not in str(inner["Subject"])
    if value.isprintable() and "=?" not in value:  # nothing to take out: the words are the same
        assert str(inner["Subject"]).split() == value.split()


@pytest.mark.parametrize("value", HOSTILE_IDS.values(), ids=HOSTILE_IDS.keys())
def test_a_hostile_message_id_is_never_copied_into_a_header(value: str) -> None:
    _, wire = built(envelope(in_reply_to=value, references=(value, "<earlier@westmercia.police.example>", value)))
    outer = check_outer(wire)
    assert "Bcc" not in outer
    assert "<earlier@westmercia.police.example>" in str(outer["References"]).split()


@pytest.mark.parametrize("length", [60, 90, 200, 250])
def test_a_long_but_proper_message_id_is_threaded_as_it_is(length: int) -> None:
    """Python's email package cuts a msg-id longer than a line into encoded words: no client threads on those."""
    right = "@mail.westmercia.police.example>"
    ident = "<" + "a" * (length - 1 - len(right)) + right
    assert len(ident) == length
    assert MSG_ID.fullmatch(ident)
    _, wire = built(envelope(in_reply_to=ident, references=("<first@westmercia.police.example>", ident)))
    outer = check_outer(wire)
    assert str(outer["In-Reply-To"]) == ident
    assert str(outer["References"]).split() == ["<first@westmercia.police.example>", ident]


def test_a_thousand_references_are_trimmed_to_the_first_and_the_latest() -> None:
    ids = tuple(f"<r{n}@westmercia.police.example>" for n in range(1000))
    _, wire = built(envelope(in_reply_to=ids[-1], references=ids))
    kept = str(check_outer(wire)["References"]).split()
    assert kept[0] == ids[0]
    assert kept[-1] == ids[-1]
    assert len(kept) <= 20


HOSTILE_NAMES = {
    **HOSTILE,
    "path": "../../../etc/cron.d/x.csv",
    "windows path": "..\\..\\Windows\\x.csv",
    "hidden": ".bashrc",
    "option": "-rf.csv",
    "quotes": 'a";filename="evil.exe',
    "only dots": "....",
}


@pytest.mark.parametrize("name", HOSTILE_NAMES.values(), ids=HOSTILE_NAMES.keys())
def test_a_hostile_file_name_becomes_a_plain_one(name: str) -> None:
    inner_wire, _ = built(envelope(), [ExtractFile(name, b"OFFICIAL-SENSITIVE\r\n")])
    inner = check_inner(inner_wire)
    assert "Bcc" not in inner
    [attachment] = inner.iter_attachments()
    assert attachment.get_content() == "OFFICIAL-SENSITIVE\r\n"


def test_the_gateways_own_file_names_are_kept_as_they_are() -> None:
    extract = build_extract([FakeHome("SC1")], [], marking=MARKING, reference=REFERENCE)
    inner_wire, _ = built(envelope(), extract.files)
    names = [str(part.get_filename()) for part in check_inner(inner_wire).iter_attachments()]
    assert names == [file.name for file in extract.files]


@pytest.mark.parametrize("value", [*HOSTILE.values(), 'OFFICIAL"; x="y', "OFFICIAL\\"])
def test_a_hostile_marking_stays_in_its_headers(value: str) -> None:
    """The marking is checked in the settings; the writer does not rely on that."""
    _, wire = built(envelope(marking=value))
    outer = check_outer(wire)
    assert str(outer["SIO-Label"]).count('"') == 2


@pytest.mark.parametrize(
    "address",
    [f"{POLICE_ADDRESS}\r\n{EVIL}", f"=?utf-8?q?x=0D=0A{EVIL.replace(' ', '_')}?= <{POLICE_ADDRESS}>",
     f"{POLICE_ADDRESS}, evil@attacker.example", "", "Ünïcödé@example.org"],
)  # fmt: skip
def test_a_reply_is_built_only_between_plain_addresses(address: str) -> None:
    for changes in ({"recipient": address}, {"sender": address}):
        with pytest.raises(ValueError, match="not a plain email address"):
            envelope(**changes)


# Arbitrary text, and text that begins with what breaks headers, CSV or spreadsheets.
TRICKY = [
    "=", "+", "-", "@", "\t", "\r", "\n", "\r\n", " ", "\u00a0", "\u3000", "\u200b", "\ufeff", '"', "'", ",",
    "\x00", "\x0b", "\u2028", "\uff1d", "\uff0b", "\uff0d", "\uff20", "\ufe66", "\uff02", "=?utf-8?q?", "?=",
    "=0D=0A", "é", "児",
]  # fmt: skip
tricky_text = st.one_of(
    st.text(),
    st.tuples(st.lists(st.sampled_from(TRICKY), max_size=6), st.text(max_size=30)).map(lambda t: "".join(t[0]) + t[1]),
    st.lists(st.sampled_from(TRICKY), min_size=1, max_size=12).map("".join),
)


@given(subject=tricky_text, name=tricky_text, in_reply_to=tricky_text, references=st.lists(tricky_text, max_size=4))
@settings(max_examples=300, deadline=None)
def test_no_text_at_all_breaks_the_headers(subject: str, name: str, in_reply_to: str, references: list[str]) -> None:
    env = envelope(subject=subject, in_reply_to=in_reply_to, references=tuple(references))
    inner_wire, outer_wire = built(env, [ExtractFile(name, b"x\r\n")])
    check_outer(outer_wire)
    inner = check_inner(inner_wire)
    assert not any(unicodedata.category(ch) in ("Cc", "Zl", "Zp") for ch in str(inner["Subject"]))


@pytest.fixture(scope="module")
def reply_context(tmp_path_factory: pytest.TempPathFactory) -> Context:
    """Enough of a gateway for the pipeline's reply envelope: its settings (nothing is sent or stored)."""
    directory = tmp_path_factory.mktemp("reply-context")
    path = directory / "gateway.toml"
    path.write_text(f'[gateway]\naddress = "{GATEWAY_ADDRESS}"\nadmin_address = "{ADMIN_ADDRESS}"\n')
    config = load_config(path)
    return Context(config, create_database(config.database), Keyring(directory), Templates())


header_value = st.one_of(
    tricky_text.map(lambda text: text.encode("utf-8", "surrogateescape")),
    st.binary(max_size=60),
    st.lists(st.sampled_from([b"<a@b.example>", b" ", b"\r\n ", b"=?utf-8?q?=0D=0A?=", b"(c)", b"\xff", b"<"])).map(
        b"".join
    ),
)


@given(message_id=header_value, references=header_value)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_whatever_a_request_says_its_message_id_is_the_reply_is_clean(
    reply_context: Context, message_id: bytes, references: bytes
) -> None:
    """The pipeline's own reply envelope, from the request's headers as Python's parser reads them."""
    raw = (
        FROM_POLICE.replace("\n", "\r\n").encode()
        + b"Message-ID: " + message_id + b"\r\nReferences: " + references + b"\r\n\r\n" + REQUEST.encode()
    )  # fmt: skip
    request = parse(raw)
    try:
        env = envelope_for(reply_context, POLICE_ADDRESS, REFERENCE, "subject", answering=request)
    except IndexError:
        # Python's header parser fails on some Message-IDs ("<"): the pipeline then quarantines the request and
        # builds no reply at all (safe); what is checked here is every reply built.
        return
    _, wire = built(env)
    assert "Bcc" not in check_outer(wire)


# ---------------------------------------------------------------- the CSV files


def kept(cell: str, original: str) -> None:
    """A disclosed cell is the register's value, or that value made text by a leading apostrophe; never run."""
    assert cell in (original, "'" + original), (cell, original)
    assert not evaluated(cell), cell
    if original[:1].isascii() and original[:1].isalnum():
        assert cell == original  # ordinary data is left alone


optional_text = st.one_of(st.none(), tricky_text)
homes_strategy = st.lists(
    st.builds(
        FakeHome,
        urn=tricky_text,
        name=tricky_text,
        address=tricky_text,
        postcode=tricky_text,
        telephone=optional_text,
        local_authority=tricky_text,
        police_force_area=tricky_text,
        provider_name=tricky_text,
        provider_address=tricky_text,
        responsible_individual_name=optional_text,
        responsible_individual_address=optional_text,
        manager_name=optional_text,
        manager_address=optional_text,
    ),
    min_size=1,
    max_size=4,
    unique_by=lambda home: home.urn,
)


@given(homes=homes_strategy, natures=st.lists(st.tuples(st.integers(0, 3), st.dates(), tricky_text), max_size=4))
@settings(max_examples=200, deadline=None)
def test_no_extract_cell_is_ever_a_formula_and_every_record_is_one_row(
    homes: list[FakeHome], natures: list[tuple[int, dt.date, str]]
) -> None:
    actions = [FakeAction(homes[i % len(homes)].urn, date, nature) for i, date, nature in natures]
    extract = build_extract(homes, actions, marking=MARKING, reference=REFERENCE)
    home_rows = read_csv(extract.homes.content)
    assert home_rows[:2] == [[MARKING], list(HOME_EXTRACT_COLUMNS)]
    assert len(home_rows) == 2 + len(homes)
    for row, home in zip(home_rows[2:], homes, strict=True):
        values = [getattr(home, column) for column in HOME_EXTRACT_COLUMNS]
        assert len(row) == len(values)
        for cell, value in zip(row, values, strict=True):
            kept(cell, "" if value is None else value)
    action_rows = read_csv(extract.enforcement.content)
    assert action_rows[:2] == [[MARKING], list(ENFORCEMENT_EXTRACT_COLUMNS)]
    assert len(action_rows) == 2 + len(actions)
    for row, action in zip(action_rows[2:], actions, strict=True):
        assert len(row) == 3
        for cell, value in zip(row, (action.urn, str(action.date), action.nature), strict=True):
            kept(cell, value)
    # As the recipient's mail client hands the files over: the same cells, whatever the characters.
    inner = check_inner(inner_message(envelope(), "text", extract.files))
    received = [part.get_content() for part in inner.iter_attachments()]
    assert received == [file.content.decode("utf-8") for file in extract.files]


no_bar = tricky_text.filter(lambda text: "|" not in text)


@given(
    new=st.lists(tricky_text, max_size=3),
    gone=st.lists(tricky_text, max_size=3),
    changed=st.lists(tricky_text, max_size=3),
    actions=st.lists(st.tuples(no_bar, no_bar, tricky_text), max_size=3),
)
@settings(max_examples=200, deadline=None)
def test_no_changes_cell_is_ever_a_formula(
    new: list[str], gone: list[str], changed: list[str], actions: list[tuple[str, str, str]]
) -> None:
    changes = Changes(tuple(new), tuple(gone), tuple(changed), tuple(f"{u}|{d}|{n}" for u, d, n in actions))
    rows = read_csv(changes.file(MARKING, REFERENCE).content)
    assert rows[:2] == [[MARKING], ["urn", "change"]]
    expected = [
        *((urn, "newly registered") for urn in new),
        *((urn, "details changed") for urn in changed),
        *((urn, "closed or removed") for urn in gone),
        *((urn, f"new enforcement action: {date} {nature}") for urn, date, nature in actions),
    ]
    assert len(rows) == 2 + len(expected)
    for row, (urn, what) in zip(rows[2:], expected, strict=True):
        assert len(row) == 2
        kept(row[0], urn)
        kept(row[1], what)


@pytest.mark.parametrize(
    "value",
    ["=1+1", "+44 1632 960001", "-2+3", "@SUM(A1)", "\t=1", "\r=1", "\n=1", " =1", "\u00a0=1", "\u3000=1",
     "\u200b=1", "\ufeff=1", '"=1', '" =1', "\uff1d1+1", "\uff0b1", "\uff0d1", "\uff20SUM(A1)", "\ufe661",
     "\uff02\uff1d1", '=HYPERLINK("http://evil.example","x")', "=cmd|' /C calc'!A0"],
)  # fmt: skip
def test_the_known_tricks_are_all_defused(value: str) -> None:
    extract = build_extract([FakeHome("SC1", name=value)], [], marking=MARKING, reference="R")
    row = dict(zip(HOME_EXTRACT_COLUMNS, read_csv(extract.homes.content)[2], strict=True))
    assert row["name"] == "'" + value


# ---------------------------------------------------------------- through the real mail path


def process_raw(gateway: Gateway, raw: bytes, name: str) -> dict[str, Any]:
    path = gateway.directory / name
    path.write_bytes(raw)
    outcome: dict[str, Any] = json.loads(gateway.ok("process", str(path), "--json"))
    return outcome


INBOUND_IDS: dict[str, bytes] = {
    "rfc 2047 crlf": b"=?utf-8?q?<{n}=0D=0ABcc:_evil@attacker.example>?=",
    "rfc 2047 in the id": b"<{n}=?utf-8?b?DQpCY2M6IGV2aWxAYXR0YWNrZXIuZXhhbXBsZQ==?=@westmercia.police.example>",
    "5000 characters": b"<{n}" + b"a" * 5000 + b"@westmercia.police.example>",
    "a long proper id": b"<{n}-AM0PR07MB4563D1A2B3C4D5E6F7A8B9C0D1E2F3A4B5@AM0PR07MB4563.eurprd07.prod.outlook.com>",
    "non-ascii": "<{n}-児童@westmercia.police.example>".encode(),
    "nul": b"<{n}\x00@westmercia.police.example>",
    "bare cr": b"<{n}@westmercia.police.example>\rBcc: evil@attacker.example",
    "folded": b"<{n}@westmercia.police.example>\r\n (a comment)",
}


def test_hostile_request_headers_and_fields_never_reach_the_replys_headers(
    hostile_live: Gateway, keys: AuthorityKeys
) -> None:
    """The whole path: `gateway process` answers; what is queued (and what the recipient decrypts) is clean."""
    references = b" ".join(b"<ref%d@westmercia.police.example>" % n for n in range(3000))
    for n, (name, template) in enumerate(INBOUND_IDS.items()):
        message_id = template.replace(b"{n}", b"m%d" % n)
        extra = b"References: " + (references if n == 0 else message_id) + b"\r\n"
        outcome = process_raw(hostile_live, dmarc_request(message_id, REQUEST, extra), f"m{n}.eml")
        assert outcome["kind"] == "answered", (name, outcome)
        wire = outbox_content(hostile_live, outbox(hostile_live)[-1]["id"])
        outer = check_outer(wire)
        assert "Bcc" not in outer, name
        if name == "a long proper id":
            assert str(outer["In-Reply-To"]) == message_id.decode()  # threaded, not cut into encoded words
    # Hostile Purpose (it is quoted in the cover note) and formulas in the register: the disclosure is clean.
    purpose = f"=?utf-8?q?=0D=0A{EVIL.replace(' ', '_')}?= Safeguarding, naturally 児童 {'x' * 800}"
    body = f"Request: disclosure\r\nArea: West Mercia\r\nPurpose: {purpose}\r\n"
    outcome = process_raw(hostile_live, dmarc_request(b"<purpose@westmercia.police.example>", body), "purpose.eml")
    assert outcome["kind"] == "answered"
    inner = decrypt(hostile_live, keys, outbox_content(hostile_live, outbox(hostile_live)[-1]["id"]))
    files = {str(part.get_filename()): part.get_content() for part in inner.iter_attachments()}
    assert len(files) == 2
    homes = next(content for name, content in files.items() if name.endswith("-homes.csv"))
    cells = [cell for row in read_csv(homes.encode())[2:] for cell in row]
    assert "'" + FORMULAS[0] in cells  # the register's formulas arrived, made text
    assert not any(evaluated(cell) for cell in cells)
    actions = next(content for name, content in files.items() if name.endswith("-enforcement.csv"))
    assert not any(evaluated(cell) for row in read_csv(actions.encode())[2:] for cell in row)
    # A hostile Area is refused; the refusal is as clean.
    area = f"{EVIL} =?utf-8?q?=0D=0A?= 児童 {'y' * 500}"
    body = f"Request: disclosure\r\nArea: {area}\r\nPurpose: Safeguarding\r\n"
    outcome = process_raw(hostile_live, dmarc_request(b"<area@westmercia.police.example>", body), "area.eml")
    assert outcome["kind"] == "refused"
    wire = outbox_content(hostile_live, outbox(hostile_live)[-1]["id"])
    check_outer(wire)
    assert list(decrypt(hostile_live, keys, wire).iter_attachments()) == []


def test_a_request_whose_message_id_python_cannot_parse_is_still_answered(hostile_live: Gateway) -> None:
    path = hostile_live.directory / "unparsable-id.eml"
    path.write_bytes(dmarc_request(b"<", REQUEST))
    outcome = hostile_live.ok("process", str(path)).strip().splitlines()[-1]
    assert outcome.startswith("answered: "), outcome


# ---------------------------------------------------------------- alerts and notices to admins and authorities


def test_an_authority_name_cannot_inject_headers_into_an_admin_notice(
    gateway: Gateway, keys: AuthorityKeys, tmp_path: Path
) -> None:
    name = f"=?utf-8?q?West_Mercia_Police=0D=0A{EVIL.replace(' ', '_')}?="
    key = keys.expiring_soon.write(tmp_path, "soon.asc")
    gateway.ok(
        "authority", "add", "--name", name, "--kind", "police", "--area", "West Mercia", "--email", POLICE_ADDRESS,
        "--key", str(key),
    )  # fmt: skip
    gateway.ok("schedule", "run")
    [notice] = [row for row in outbox(gateway) if row["recipient"] == ADMIN_ADDRESS]
    wire = outbox_content(gateway, notice["id"])
    assert wire_problems(wire) == []
    assert "Bcc" not in field_names(wire)


def test_an_alert_to_the_admins_has_a_date(hostile_live: Gateway) -> None:
    raw = (FROM_POLICE.replace("\n", "\r\n") + "Message-ID: <u1@westmercia.police.example>\r\n\r\n" + REQUEST).encode()
    assert process_raw(hostile_live, raw, "unsigned.eml")["kind"] == "quarantined"
    [alert] = [row for row in outbox(hostile_live) if row["recipient"] == ADMIN_ADDRESS]
    assert "Date" in field_names(outbox_content(hostile_live, alert["id"]))


async def test_a_delivery_failure_alert_has_a_date_and_its_message_id(migrated_settings: DatabaseSettings) -> None:
    db = create_database(migrated_settings)
    relay = Relay(refuse=1, refusal="550 5.1.1 No such user")
    server, port = await serve(relay)
    now = dt.datetime(2026, 11, 25, 9, 0, tzinfo=dt.UTC)
    try:
        async with db.transaction() as session:
            session.add(
                OutboxMessage(
                    kind="disclosure", inbound_id=None, sender=GATEWAY_ADDRESS, recipient=POLICE_ADDRESS,
                    message_id="<m1@hmci.example>", content=b"From: x\r\nTo: y\r\nSubject: s\r\n\r\nb\r\n",
                    status="pending", attempts=0, created_at=now, next_attempt_at=now,
                )
            )  # fmt: skip
        await deliver_due(db, smtp_transport(plain_relay(port)), admin_address=ADMIN_ADDRESS, now=now)
        async with db.transaction(write=False) as session:
            alert = (await session.execute(select(OutboxMessage).where(OutboxMessage.kind == "alert"))).scalar_one()
    finally:
        server.close()
        await db.close()
    assert wire_problems(alert.content) == []
    assert "Date" in field_names(alert.content)
    assert str(parse(alert.content)["Message-ID"]) == alert.message_id
