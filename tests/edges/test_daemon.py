"""`gateway run` as an operator starts it: a request in the mailbox comes out of the relay; SIGTERM stops it cleanly."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import signal
import subprocess
import sys
from dataclasses import dataclass
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from sqlalchemy import update

from gateway import daemon as gateway_daemon
from gateway.compose import Templates
from gateway.config import load_config
from gateway.crypto import Keyring
from gateway.db.engine import create_database
from gateway.db.models import Subscription
from gateway.dev.dovecot import ImapServer, free_port
from gateway.oauth import Tokens
from gateway.outbox import ROUND
from gateway.values import Context
from tests.support.addresses import POLICE_ADDRESS
from tests.support.daemon import daemon_settings, get, wait_started
from tests.support.gateway_cli import Gateway
from tests.support.keys import AuthorityKeys
from tests.support.live import process, register_urns
from tests.support.relay import Relay, plain_relay, queue, serve
from tests.support.requests import police_says, request_from_police


@dataclass(frozen=True)
class OneRequest:
    """What `gateway run` did with one signed request in the mailbox, from its start to SIGTERM."""

    returncode: int | None
    log: bytes  # everything it wrote to stderr
    relay: Relay
    agent_before_stop: bool  # whether its gpg-agent answered just before SIGTERM


async def one_request_then_sigterm(live: Gateway, dovecot_server: ImapServer, keys: AuthorityKeys) -> OneRequest:
    relay = Relay()
    server, port = await serve(relay)
    live.write_config(daemon_settings(dovecot_server, port))
    daemon = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "--config", str(live.config_path), "run",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        early = await wait_started(daemon)
        dovecot_server.deliver(request_from_police(keys))
        for _ in range(300):
            if relay.received or daemon.returncode is not None:
                break
            await asyncio.sleep(0.1)
        agent = agent_running(live.gnupg_home)
        daemon.send_signal(signal.SIGTERM)
        _, rest = await asyncio.wait_for(daemon.communicate(), 15)
    finally:
        if daemon.returncode is None:
            daemon.kill()
        server.close()
    return OneRequest(daemon.returncode, early + rest, relay, agent)


def agent_running(home: Path) -> bool:
    """Whether a gpg-agent answers on this home's socket (never starting one)."""
    result = subprocess.run(
        ["gpg-connect-agent", "--homedir", str(home), "--no-autostart", "GETINFO pid", "/bye"],
        capture_output=True, text=True, check=False, timeout=30,
    )  # fmt: skip
    return result.returncode == 0 and result.stdout.startswith("D ")


async def test_the_daemon_answers_from_the_mailbox_and_stops_on_sigterm(
    live: Gateway, dovecot_server: ImapServer, keys: AuthorityKeys, tmp_path: Path
) -> None:
    run = await one_request_then_sigterm(live, dovecot_server, keys)
    stderr = run.log

    assert run.returncode == 0, stderr.decode()[-2000:]
    [delivered] = run.relay.received
    assert delivered.rcpt_tos == [POLICE_ADDRESS]
    reply = message_from_bytes(bytes(delivered.original_content or b""), policy=policy.default)
    assert reply.get_content_type() == "multipart/encrypted"

    lines = stderr.decode().splitlines()
    events = [json.loads(line) for line in lines]  # every line is JSON, or this fails
    assert any(e.get("event") == "message" and e.get("outcome") == "answered" for e in events)
    assert any(e.get("event") == "stopped" for e in events)
    text = stderr.decode()
    assert not any(urn in text for urn in register_urns(tmp_path, "West Mercia"))


async def test_a_delivery_missed_while_stopped_is_sent_once_at_start(
    live: Gateway, dovecot_server: ImapServer, keys: AuthorityKeys
) -> None:
    monthly = "Request: disclosure\r\nFrequency: monthly\r\nPurpose: Safeguarding children in our area\r\n"
    answered = await asyncio.to_thread(process, live, police_says(keys, monthly, "daemon-m1"))
    assert answered["kind"] == "answered"
    # The subscription began two months ago: this month's delivery fell while the gateway was stopped.
    config = load_config(live.config_path)
    db = create_database(config.database)
    try:
        async with db.transaction() as session:
            await session.execute(update(Subscription).values(started_on=dt.date.today() - dt.timedelta(days=62)))
    finally:
        await db.close()
    relay = Relay()
    server, port = await serve(relay)
    live.write_config(daemon_settings(dovecot_server, port))
    try:
        for _ in range(2):  # started twice: the second start must send nothing more
            daemon = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway", "--config", str(live.config_path), "run",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            early = await wait_started(daemon)  # a SIGTERM before the handlers are in would just kill it
            for _ in range(150):
                if len(relay.received) >= 2 or daemon.returncode is not None:  # the first answer, then the delivery
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)
            daemon.send_signal(signal.SIGTERM)
            _, stderr = await asyncio.wait_for(daemon.communicate(), 15)
            assert daemon.returncode == 0, (early + stderr).decode()[-2000:]
    finally:
        server.close()
    # The first answer went out with the first start too (it was waiting in the outbox), then one delivery.
    subjects = [
        message_from_bytes(bytes(e.original_content or b""), policy=policy.default)["Subject"] for e in relay.received
    ]
    assert len(subjects) == 2, subjects


async def test_health_and_metrics_for_operators(live: Gateway, dovecot_server: ImapServer, keys: AuthorityKeys) -> None:
    relay = Relay()
    server, port = await serve(relay)
    metrics_port = free_port()
    live.write_config(daemon_settings(dovecot_server, port, f"\n[metrics]\nport = {metrics_port}\n"))
    daemon = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "--config", str(live.config_path), "run",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    base = f"http://127.0.0.1:{metrics_port}"
    try:
        dovecot_server.deliver(request_from_police(keys))
        for _ in range(300):
            if relay.received or daemon.returncode is not None:
                break
            await asyncio.sleep(0.1)
        for _ in range(100):  # the relay has it; the "sent" mark follows a moment later
            status, body = await asyncio.to_thread(get, f"{base}/healthz")
            health = json.loads(body)
            if health.get("outbox_depth") == 0:
                break
            await asyncio.sleep(0.1)
        assert status == 200, body
        assert health == {**health, "healthy": True, "imap_connected": True, "database_reachable": True}
        assert health["outbox_depth"] == 0
        status, text = await asyncio.to_thread(get, f"{base}/metrics")
        assert status == 200
        assert 'gateway_messages_total{outcome="answered"} 1.0' in text
        assert "gateway_disclosures_total 1.0" in text
        assert "gateway_processing_seconds_count 1.0" in text
        assert 'gateway_gpg_seconds_count{operation="sign_and_encrypt"}' in text
        assert "gateway_outbox_depth 0.0" in text
        assert (await asyncio.to_thread(get, f"{base}/other"))[0] == 404
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(daemon.communicate(), 15)
        server.close()
    assert daemon.returncode == 0, stderr.decode()[-2000:]


async def test_a_backlog_bigger_than_a_round_goes_out_at_once_not_a_round_per_tick(
    live: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway_daemon, "OUTBOX_INTERVAL", 3600.0)  # a nap now would outlast the test
    relay = Relay()
    server, port = await serve(relay)
    config = load_config(live.config_path)
    db = create_database(config.database)
    backlog = 2 * ROUND + 5  # after an outage, say
    for _ in range(backlog):
        await queue(db)
    stop = asyncio.Event()
    services = gateway_daemon.Services(Context(config, db, Keyring(config.gpg.home), Templates()), stop, Tokens(config))
    sender = asyncio.create_task(services.send_outbox(plain_relay(port)))
    try:
        for _ in range(600):
            if len(relay.received) >= backlog:
                break
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.wait_for(sender, 20)
        server.close()
        await db.close()
    assert len(relay.received) == backlog


async def test_the_daemon_logs_no_library_chatter_and_stops_its_gpg_agent(
    live: Gateway, dovecot_server: ImapServer, keys: AuthorityKeys
) -> None:
    run = await one_request_then_sigterm(live, dovecot_server, keys)
    assert run.returncode == 0, run.log.decode()[-2000:]
    assert run.relay.received
    events = [json.loads(line) for line in run.log.decode().splitlines()]
    assert any(e["event"] == "started" for e in events)
    # Alembic's two lines on its migration context, at every start (the schema check), are gone; below WARNING
    # only the gateway's own events are left, as the README says.
    assert not [e for e in events if str(e["event"]).startswith(("Context impl", "Will assume"))]
    ours = {"started", "scheduler leader", "message", "outbox", "schedule", "metrics endpoint", "stopped"}
    assert {e["event"] for e in events if e["level"] in ("debug", "info")} <= ours
    assert run.agent_before_stop  # it signed the answer
    assert not agent_running(live.gnupg_home)
