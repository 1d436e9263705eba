"""Outages under load: the mailbox server restarting, the relay going away, the database dropping every
connection and refusing new ones for a while. The daemon rides them out; nothing is lost or doubled."""

from __future__ import annotations

import asyncio
import signal

import pytest
from aiosmtpd.smtp import SMTP

from gateway.dev.dovecot import ImapServer
from tests.support.daemon import daemon_settings, started, until
from tests.support.databases import _admin, _postgres_base_url
from tests.support.gateway_cli import Gateway
from tests.support.keys import AuthorityKeys
from tests.support.mailbox import folder_counts
from tests.support.relay import Relay, answers, serve
from tests.support.requests import request_from_police


def configure(gateway: Gateway, imap: ImapServer, smtp_port: int) -> None:
    gateway.write_config(daemon_settings(imap, smtp_port, "retry_seconds = 2\n\n[limits]\nanswers_per_day = 1000\n"))


def requests(keys: AuthorityKeys, tag: str, count: int) -> dict[str, bytes]:
    ids = (f"<{tag}{i}@westmercia.police.example>" for i in range(count))
    return {message_id: request_from_police(keys, message_id=message_id) for message_id in ids}


def answered_once(relay: Relay, wanted: set[str]) -> bool:
    return set(answers(relay)) >= wanted


async def test_the_mailbox_server_restarting_mid_burst(
    live: Gateway, dovecot_server: ImapServer, keys: AuthorityKeys
) -> None:
    relay = Relay()
    server, port = await serve(relay)
    configure(live, dovecot_server, port)
    burst = requests(keys, "imap", 40)
    daemon = await started(live)
    try:
        for raw in burst.values():
            dovecot_server.deliver(raw)
        await until(lambda: len(relay.received) >= 5, 60)
        for _ in range(2):  # mid-IDLE or mid-fetch, whichever it is doing
            await asyncio.to_thread(dovecot_server.stop)
            await asyncio.sleep(1)
            await asyncio.to_thread(dovecot_server.start)
        restarted = asyncio.get_running_loop().time()
        await until(lambda: answered_once(relay, set(burst)), 60)
        assert asyncio.get_running_loop().time() - restarted < 30, "it caught up within 30 seconds"
        filed = {"INBOX": 0, "Processed": len(burst)}
        await until(lambda: folder_counts(dovecot_server, "INBOX", "Processed") == filed, 30)
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(daemon.wait(), 20) == 0
        server.close()
    assert all(len(ids) == 1 for ids in answers(relay).values())
    assert len(relay.received) == len(burst)


async def test_mail_waits_while_the_relay_is_away_and_goes_once(
    live: Gateway, dovecot_server: ImapServer, keys: AuthorityKeys
) -> None:
    relay = Relay()
    server, port = await serve(relay)
    configure(live, dovecot_server, port)
    server.close()
    await server.wait_closed()  # the relay is down before the burst arrives
    burst = requests(keys, "relay", 10)
    daemon = await started(live)
    try:
        for raw in burst.values():
            dovecot_server.deliver(raw)
        await until(lambda: folder_counts(dovecot_server, "INBOX", "Processed") == {"INBOX": 0, "Processed": 10}, 60)
        await asyncio.sleep(3)  # a round of failed attempts
        assert relay.received == []
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: SMTP(relay), "127.0.0.1", port)  # back, on the same port
        await until(lambda: answered_once(relay, set(burst)), 60)
        await asyncio.sleep(3)  # anything sent twice would be here by now
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(daemon.wait(), 20) == 0
        server.close()
    assert len(relay.received) == len(burst)


async def test_the_database_going_away_under_load(
    live: Gateway, dovecot_server: ImapServer, keys: AuthorityKeys, database_url: str
) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("a database server restart is a PostgreSQL matter; SQLite is a file")
    name = database_url.rpartition("/")[2]
    base = _postgres_base_url()
    relay = Relay()
    server, port = await serve(relay)
    configure(live, dovecot_server, port)
    burst = requests(keys, "pg", 40)
    daemon = await started(live)
    try:
        for raw in burst.values():
            dovecot_server.deliver(raw)
        await until(lambda: len(relay.received) >= 5, 60)
        # What a restart looks like from the gateway: every connection dropped, new ones refused for a while.
        await _admin(base, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        kill = f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"  # noqa: S608 - our own test database's generated name
        await _admin(base, kill)
        await asyncio.sleep(5)
        await _admin(base, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await until(lambda: answered_once(relay, set(burst)), 120)
        filed = {"INBOX": 0, "Processed": len(burst)}
        await until(lambda: folder_counts(dovecot_server, "INBOX", "Processed") == filed, 60)
        await asyncio.sleep(2)
    finally:
        await _admin(base, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        daemon.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(daemon.wait(), 20) == 0
        server.close()
    assert all(len(ids) == 1 for ids in answers(relay).values()), "a request was answered twice"
    assert (await asyncio.to_thread(live.run, "audit", "verify")).code == 0
