"""Two gateways, one mailbox, one PostgreSQL: each request answered once, one scheduler, and when one dies
mid-burst the other finishes the work."""

from __future__ import annotations

import asyncio
import json
import signal
import sys

import pytest

from gateway.dev.dovecot import ImapServer
from tests.support.daemon import daemon_settings, until
from tests.support.gateway_cli import Gateway
from tests.support.keys import AuthorityKeys
from tests.support.mailbox import folder_counts
from tests.support.relay import Relay, answers, serve
from tests.support.requests import request_from_police

BURST = 40


async def start(gateway: Gateway) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "--config", str(gateway.config_path), "run",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def led(daemon: asyncio.subprocess.Process, lines: list[str]) -> None:
    """Collect a daemon's JSON log lines as they come."""
    assert daemon.stderr is not None
    async for line in daemon.stderr:
        lines.append(line.decode())


def leads(lines: list[str]) -> bool:
    return any(json.loads(line).get("event") == "scheduler leader" for line in lines if line.startswith("{"))


async def test_two_gateways_share_the_work_and_one_finishes_it_when_the_other_dies(
    live: Gateway, dovecot_server: ImapServer, keys: AuthorityKeys, database_url: str
) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("two gateways share a PostgreSQL database; SQLite is for one gateway on one host")
    relay = Relay()
    server, port = await serve(relay)
    live.write_config(daemon_settings(dovecot_server, port, "\n[limits]\nanswers_per_day = 1000\n"))
    first, second = await start(live), await start(live)
    logs: list[list[str]] = [[], []]
    readers = [asyncio.create_task(led(d, lines)) for d, lines in zip((first, second), logs, strict=True)]
    try:
        await until(lambda: leads(logs[0]) or leads(logs[1]), 30, "a scheduler leader")
        await asyncio.sleep(1)
        assert leads(logs[0]) != leads(logs[1]), "exactly one scheduler leader"
        leader, follower = (first, second) if leads(logs[0]) else (second, first)
        follower_log = logs[1] if leader is first else logs[0]

        for i in range(BURST):
            dovecot_server.deliver(request_from_police(keys, message_id=f"<pair{i}@westmercia.police.example>"))
        await until(lambda: len(relay.received) >= BURST // 4, 120, "a quarter of the answers")
        leader.send_signal(signal.SIGKILL)  # mid-burst, with no warning
        await leader.wait()

        await until(lambda: len(answers(relay)) >= BURST, 180, "every answer")  # a dead claim is taken over in a minute
        await until(lambda: leads(follower_log), 60, "the follower leading")  # and the schedule with it
        await asyncio.sleep(2)  # anything sent twice would have arrived by now
        replies = answers(relay)
        assert sorted(replies) == sorted(f"<pair{i}@westmercia.police.example>" for i in range(BURST))
        assert all(len(ids) == 1 for ids in replies.values()), "a request was answered twice"
        # What a kill can repeat (README): the one message the relay accepted just before the dead gateway
        # could record it, with the same Message-ID.
        assert len(relay.received) - BURST <= 1, f"{len(relay.received) - BURST} messages sent twice"
        filed = {"INBOX": 0, "Processed": BURST}
        await until(
            lambda: folder_counts(dovecot_server, "INBOX", "Processed") == filed, 60, f"folders {filed}"
        )  # each filed once
    finally:
        for daemon in (first, second):
            if daemon.returncode is None:
                daemon.send_signal(signal.SIGTERM)
        for daemon in (first, second):
            await asyncio.wait_for(daemon.wait(), 20)
        for reader in readers:
            reader.cancel()
        server.close()
    assert follower.returncode == 0, "".join(follower_log)[-2000:]
    assert (await asyncio.to_thread(live.run, "audit", "verify")).code == 0
