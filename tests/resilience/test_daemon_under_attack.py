"""`gateway run` with hostile header fields at the size limits in its mailbox: while it takes them, /healthz keeps
answering and a genuine request behind them is answered; SIGTERM still stops it cleanly."""

from __future__ import annotations

import asyncio
import signal
import sys
import urllib.error
from email import message_from_bytes, policy

from gateway.dev.dovecot import ImapServer, free_port
from tests.support.daemon import daemon_settings, get, wait_started
from tests.support.gateway_cli import Gateway
from tests.support.hostile_corpus import hostile_fields
from tests.support.keys import AuthorityKeys
from tests.support.relay import Relay, serve
from tests.support.requests import request_from_police

GENUINE = "<genuine@westmercia.police.example>"
POLLS = 600  # /healthz is asked at most this many times while the daemon works through the mailbox


def answered(relay: Relay) -> bool:
    """The relay has the gateway's reply to the genuine request (the hostile ones cause only admin alerts)."""
    return any(
        message_from_bytes(bytes(envelope.original_content or b""), policy=policy.default)["In-Reply-To"] == GENUINE
        for envelope in relay.received
    )


def health(url: str) -> int | None:
    """The HTTP status /healthz answered with, or None when it did not answer at all (get() waits 10 s)."""
    try:
        return get(url)[0]
    except (urllib.error.URLError, TimeoutError, ConnectionError):
        return None


async def test_hostile_headers_neither_stall_the_daemon_nor_hold_up_a_genuine_request(
    live: Gateway, dovecot_server: ImapServer, keys: AuthorityKeys
) -> None:
    relay = Relay()
    server, port = await serve(relay)
    metrics_port = free_port()
    live.write_config(daemon_settings(dovecot_server, port, f"\n[metrics]\nport = {metrics_port}\n"))
    daemon = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "--config", str(live.config_path), "run",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    answers: list[int | None] = []
    try:
        started = await wait_started(daemon)
        for case in hostile_fields():  # the whole mailbox of them first, the genuine request last
            dovecot_server.deliver(case.build(keys, ""))
        dovecot_server.deliver(request_from_police(keys, message_id=GENUINE))
        for _ in range(POLLS):
            answers.append(await asyncio.to_thread(health, f"http://127.0.0.1:{metrics_port}/healthz"))
            if answered(relay) or answers[-1] is None or daemon.returncode is not None:
                break
            await asyncio.sleep(0.1)
        daemon.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(daemon.communicate(), 15)
    finally:
        if daemon.returncode is None:
            daemon.kill()
        server.close()

    assert daemon.returncode == 0, (started + stderr).decode()[-2000:]
    assert None not in answers, f"/healthz did not answer its request number {answers.index(None) + 1}"
    assert answered(relay), "the genuine request behind the hostile ones was not answered"
