"""The IMAP watcher against a real Dovecot: each message processed once and filed by outcome, restarts survived."""

from __future__ import annotations

import asyncio
import imaplib
import itertools
from dataclasses import dataclass
from typing import Any, cast

import pytest
from sqlalchemy.exc import OperationalError

from gateway.compose import Templates
from gateway.config import ImapSettings, Secret, load_config
from gateway.crypto import Keyring
from gateway.db.engine import Database, create_database
from gateway.dev.dovecot import ImapServer, start_dovecot
from gateway.inbound.watcher import Watcher
from gateway.pipeline import process
from gateway.values import Context, Outcome
from tests.support.addresses import GATEWAY_ADDRESS
from tests.support.gateway_cli import Gateway
from tests.support.keys import AuthorityKeys
from tests.support.live import outbox
from tests.support.mailbox import Running, counts_are, eventually, imap_settings, watching
from tests.support.requests import FROM_POLICE, REQUEST, request_from_police


async def test_each_message_is_filed_by_its_outcome(
    running: Running, dovecot_server: ImapServer, live: Gateway, keys: AuthorityKeys
) -> None:
    await asyncio.wait_for(running.watcher.connected.wait(), 20)
    dovecot_server.deliver(request_from_police(keys))
    dovecot_server.deliver(f"From: someone@else.example\r\nTo: {GATEWAY_ADDRESS}\r\n\r\n{REQUEST}".encode())
    dovecot_server.deliver((FROM_POLICE.replace("\n", "\r\n") + "\r\n" + REQUEST).encode())  # not authenticated
    await eventually(counts_are(dovecot_server, {"INBOX": 0, "Processed": 1, "Rejected": 1, "Quarantine": 1}))
    kinds = sorted(str(row["kind"]) for row in await asyncio.to_thread(outbox, live))
    assert kinds == ["alert", "disclosure", "impostor-notice"]  # the police told someone used their address


async def test_large_messages_are_held_a_few_megabytes_at_a_time(
    running: Running, dovecot_server: ImapServer, live: Gateway, keys: AuthorityKeys
) -> None:
    await asyncio.wait_for(running.watcher.connected.wait(), 20)
    line = b"x" * 76 + b"\r\n"
    for i in range(3):  # 3 MB each: two are never held at once, and each still ends in one outcome
        head = f"From: someone{i}@else.example\r\nTo: {GATEWAY_ADDRESS}\r\nSubject: big\r\n\r\n"
        dovecot_server.deliver(head.encode() + line * (3 * 1024 * 1024 // len(line)))
    dovecot_server.deliver(request_from_police(keys))
    await eventually(counts_are(dovecot_server, {"INBOX": 0, "Processed": 1, "Rejected": 3}))
    kinds = [str(row["kind"]) for row in await asyncio.to_thread(outbox, live)]
    assert kinds == ["disclosure"]


async def test_each_fetched_message_is_paired_with_its_own_uid_whatever_else_the_server_says() -> None:
    """Dovecot always puts UID first; other servers may put it after the message, and any server may slip in
    news of another message (a flag another client set). Neither may give a message another one's UID."""

    @dataclass
    class Reply:
        result: str
        lines: list[bytes | bytearray]

    class Server:
        async def uid(self, *_args: str) -> Reply:
            return Reply("OK", [
                b"4 FETCH (UID 9 FLAGS (\\Seen))",  # unsolicited: another client read message 9
                b"5 FETCH (BODY[] {3}", bytearray(b"one"), b" UID 10)",  # the UID after the message
                b"6 FETCH (UID 11 BODY[] {3}", bytearray(b"two"), b")",
                b"Fetch completed",
            ])  # fmt: skip

    async def never(_raw: bytes) -> Outcome:
        raise AssertionError("not called")

    settings = ImapSettings("127.0.0.1", 1, "u", Secret("p"), "none", "INBOX")
    watcher = Watcher(settings, never, cast(Database, None), stop=asyncio.Event())
    fetched = await watcher._fetch(cast(Any, Server()), [9, 10, 11])
    assert fetched == {10: b"one", 11: b"two"}


def fetch_as_the_watcher_would(server: ImapServer) -> bytes:
    client = imaplib.IMAP4(server.host, server.port)
    try:
        client.login(server.username, server.password)
        client.select("INBOX")
        _, data = client.uid("fetch", "1:*", "(BODY.PEEK[])")
        first = data[0]
        assert isinstance(first, tuple)
        raw = first[1]
        assert isinstance(raw, bytes)
        return raw
    finally:
        client.logout()


async def test_a_message_processed_before_a_crash_is_moved_without_a_second_reply(
    live: Gateway, dovecot_server: ImapServer, keys: AuthorityKeys
) -> None:
    dovecot_server.deliver(request_from_police(keys))
    config = load_config(live.config_path)
    db = create_database(config.database)
    ctx = Context(config, db, Keyring(config.gpg.home), Templates())
    # The gateway fetched this message, recorded its outcome, and died before the IMAP move.
    first = await process(ctx, await asyncio.to_thread(fetch_as_the_watcher_would, dovecot_server), source="imap")
    assert first.kind == "answered"
    seen: list[Outcome] = []

    async def handle(message: bytes) -> Outcome:
        seen.append(await process(ctx, message, source="imap"))
        return seen[-1]

    stop = asyncio.Event()
    task = asyncio.create_task(Watcher(imap_settings(dovecot_server), handle, db, stop=stop).run())
    try:
        await eventually(counts_are(dovecot_server, {"INBOX": 0, "Processed": 1}))
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        await db.close()
    assert [o.kind for o in seen] == ["duplicate"]
    assert len(await asyncio.to_thread(outbox, live)) == 1


async def test_a_redelivery_with_other_bytes_is_not_answered_twice(
    running: Running, dovecot_server: ImapServer, live: Gateway, keys: AuthorityKeys
) -> None:
    await asyncio.wait_for(running.watcher.connected.wait(), 20)
    raw = request_from_police(keys)
    dovecot_server.deliver(raw)
    await eventually(counts_are(dovecot_server, {"INBOX": 0, "Processed": 1}))
    dovecot_server.deliver(b"Received: from relay2.example by mx.hmci.example\r\n" + raw)  # a replay, perhaps
    await eventually(counts_are(dovecot_server, {"INBOX": 0, "Processed": 1, "Quarantine": 1}))
    kinds = sorted(str(row["kind"]) for row in await asyncio.to_thread(outbox, live))
    assert kinds == ["alert", "disclosure", "impostor-notice"]  # one answer; the admins and the police told


async def test_a_server_restart_is_survived(running: Running, dovecot_server: ImapServer, keys: AuthorityKeys) -> None:
    await asyncio.wait_for(running.watcher.connected.wait(), 20)
    await asyncio.to_thread(dovecot_server.stop)
    await asyncio.to_thread(dovecot_server.start)
    dovecot_server.deliver(request_from_police(keys))
    await eventually(counts_are(dovecot_server, {"INBOX": 0, "Processed": 1}), timeout=90)


async def test_a_server_without_idle_or_move_is_polled_and_copied(
    live: Gateway, keys: AuthorityKeys, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # What the server advertises after login, without IDLE and MOVE: the watcher must poll and COPY + delete.
    server = start_dovecot(tmp_path_factory.mktemp("plain-dovecot"), "IMAP4rev1 LITERAL+ UIDPLUS")
    try:
        async with watching(live, server) as watched:
            await asyncio.wait_for(watched.watcher.connected.wait(), 20)
            server.deliver(request_from_police(keys))
            await eventually(counts_are(server, {"INBOX": 0, "Processed": 1}))
    finally:
        server.stop()
    assert len(await asyncio.to_thread(outbox, live)) == 1


async def test_a_failure_to_record_leaves_the_message_to_be_tried_again(
    live: Gateway, dovecot_server: ImapServer, keys: AuthorityKeys
) -> None:
    attempts: list[int] = []

    async def handle(ctx: Context, message: bytes) -> Outcome:
        attempts.append(1)
        if len(attempts) == 1:
            # What SQLAlchemy raises when the database goes away mid-outage (not an OSError).
            raise OperationalError("INSERT INTO inbound_messages", {}, Exception("the database is away"))
        return await process(ctx, message, source="imap")

    async with watching(live, dovecot_server, handle) as watched:
        await asyncio.wait_for(watched.watcher.connected.wait(), 20)
        dovecot_server.deliver(request_from_police(keys))
        await eventually(counts_are(dovecot_server, {"INBOX": 0, "Processed": 1}))
    assert len(attempts) == 2  # the watcher survived the failure and tried the same message again
    assert len(await asyncio.to_thread(outbox, live)) == 1


async def test_one_senders_messages_go_in_order_while_other_senders_are_worked_on_meanwhile(
    live: Gateway, dovecot_server: ImapServer
) -> None:
    spans: dict[str, list[tuple[str, float, float]]] = {}

    async def handle(ctx: Context, message: bytes) -> Outcome:
        head = message.split(b"\r\n\r\n", 1)[0].decode()
        sender = head.split("From: ", 1)[1].split("\r\n", 1)[0]
        subject = head.split("Subject: ", 1)[1].split("\r\n", 1)[0]
        began = asyncio.get_running_loop().time()
        await asyncio.sleep(0.3)  # as if gpg were at work
        spans.setdefault(sender, []).append((subject, began, asyncio.get_running_loop().time()))
        return await process(ctx, message, source="imap")

    for i in range(3):
        for sender in ("a@else.example", "b@else.example"):
            dovecot_server.deliver(f"From: {sender}\r\nTo: {GATEWAY_ADDRESS}\r\nSubject: {i}\r\n\r\nx\r\n".encode())
    async with watching(live, dovecot_server, handle):
        await eventually(counts_are(dovecot_server, {"INBOX": 0, "Rejected": 6}))
    a, b = spans["a@else.example"], spans["b@else.example"]
    assert [subject for subject, _, _ in a] == ["0", "1", "2"]  # in the order they came
    assert all(earlier[2] <= later[1] for earlier, later in itertools.pairwise(a))  # one at a time
    # The other sender's first message was worked on meanwhile.
    assert a[0][1] < b[0][2]
    assert b[0][1] < a[0][2]
