"""Replays are caught by what was signed: the same OpenPGP signature again, under a new Message-ID, none, or
another armour, is recorded and not acted on; a new signature over the same words is a new request."""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter

from tests.conftest import AuthorityKeys, Gateway
from tests.test_authenticate import REQUEST
from tests.test_pipeline import outbox, process, subscriptions
from tests.test_schedule import MONTHLY, police_at, walker

__all__ = ["walker"]  # the fixture used here, defined elsewhere

AT = dt.datetime(2027, 2, 10, 9, 0, tzinfo=dt.UTC)
CANCEL = "Request: cancel\r\nPurpose: no longer needed\r\n"


def with_message_id(raw: bytes, message_id: str | None) -> bytes:
    """The same bytes with only the Message-ID changed, or removed: what an attacker copying it off the wire can do."""
    line = b"" if message_id is None else f"Message-ID: {message_id}\r\n".encode()
    return re.sub(rb"Message-ID: [^\r\n]*\r\n", line, raw, count=1)


def kinds(gateway: Gateway) -> Counter[str]:
    return Counter(str(row["kind"]) for row in outbox(gateway))


def test_a_signed_request_under_a_new_message_id_or_none_is_a_replay(walker: Gateway, keys: AuthorityKeys) -> None:
    original = police_at(keys, REQUEST, "first", AT)
    assert process(walker, original, as_of=AT)["kind"] == "answered"
    later = AT + dt.timedelta(hours=2)
    for n, copy in enumerate([with_message_id(original, "<fresh@westmercia.police.example>"),
                              with_message_id(original, None)]):  # fmt: skip
        outcome = process(walker, copy, f"copy{n}.eml", as_of=later)
        assert outcome["kind"] == "quarantined", outcome
        assert "its signature was already used by message 1" in str(outcome["reason"])
    assert kinds(walker) == Counter({"disclosure": 1, "alert": 2})  # the authority is not answered again


def test_the_same_signature_in_other_armour_is_still_a_replay(walker: Gateway, keys: AuthorityKeys) -> None:
    original = police_at(keys, REQUEST, "armour", AT)
    assert process(walker, original, as_of=AT)["kind"] == "answered"
    rearmoured = original.replace(
        b"-----BEGIN PGP SIGNATURE-----\n", b"-----BEGIN PGP SIGNATURE-----\nComment: re-armoured\n"
    )
    assert rearmoured != original
    copy = with_message_id(rearmoured, "<other@westmercia.police.example>")
    outcome = process(walker, copy, "copy.eml", as_of=AT + dt.timedelta(minutes=5))
    assert outcome["kind"] == "quarantined", outcome


def test_a_cancel_copied_off_the_wire_cannot_end_the_next_subscription(walker: Gateway, keys: AuthorityKeys) -> None:
    assert process(walker, police_at(keys, MONTHLY, "m1", AT), "m1.eml", AT)["kind"] == "answered"
    cancel = police_at(keys, CANCEL, "c1", AT + dt.timedelta(days=1))
    assert process(walker, cancel, "c1.eml", AT + dt.timedelta(days=1))["kind"] == "answered"
    again = AT + dt.timedelta(days=2)
    assert process(walker, police_at(keys, MONTHLY, "m2", again), "m2.eml", again)["kind"] == "answered"
    replayed = with_message_id(cancel, "<c1-again@westmercia.police.example>")
    outcome = process(walker, replayed, "replay.eml", AT + dt.timedelta(days=3))
    assert outcome["kind"] == "quarantined"
    assert sorted(str(row["status"]) for row in subscriptions(walker)) == ["active", "cancelled"]


def test_the_same_words_signed_again_are_a_new_request(walker: Gateway, keys: AuthorityKeys) -> None:
    """Next year's identical renewal is no replay: only the very same signature is."""
    first = police_at(keys, REQUEST, "same-words-1", AT)
    second = police_at(keys, REQUEST, "same-words-2", AT + dt.timedelta(hours=1))
    assert process(walker, first, "1.eml", AT)["kind"] == "answered"
    assert process(walker, second, "2.eml", AT + dt.timedelta(hours=1))["kind"] == "answered"
    assert kinds(walker)["disclosure"] == 2
