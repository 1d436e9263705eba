"""`gateway run` as an operator starts it: a request in the mailbox comes out of the relay; SIGTERM stops it cleanly."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from email import message_from_bytes, policy
from pathlib import Path

from tests.conftest import POLICE_ADDRESS, AuthorityKeys, Gateway
from tests.dovecot import ImapServer, dovecot_server
from tests.test_outbox import Relay, serve
from tests.test_pipeline import live, register_urns, request_from_police

__all__ = ["dovecot_server", "live"]  # fixtures used here, defined elsewhere


async def test_the_daemon_answers_from_the_mailbox_and_stops_on_sigterm(
    live: Gateway, dovecot_server: ImapServer, keys: AuthorityKeys, tmp_path: Path
) -> None:
    relay = Relay()
    server, port = await serve(relay)
    live.write_config(
        f'\n[imap]\nhost = "{dovecot_server.host}"\nport = {dovecot_server.port}\n'
        f'username = "{dovecot_server.username}"\npassword = "{dovecot_server.password}"\ntls = "none"\n'
        f'\n[smtp]\nhost = "127.0.0.1"\nport = {port}\ntls = "none"\n'
    )
    daemon = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "--config", str(live.config_path), "run",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        dovecot_server.deliver(request_from_police(keys))
        for _ in range(300):
            if relay.received or daemon.returncode is not None:
                break
            await asyncio.sleep(0.1)
        daemon.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(daemon.communicate(), 15)
    finally:
        if daemon.returncode is None:
            daemon.kill()
        server.close()

    assert daemon.returncode == 0, stderr.decode()[-2000:]
    [delivered] = relay.received
    assert delivered.rcpt_tos == [POLICE_ADDRESS]
    reply = message_from_bytes(bytes(delivered.original_content or b""), policy=policy.default)
    assert reply.get_content_type() == "multipart/encrypted"

    lines = stderr.decode().splitlines()
    events = [json.loads(line) for line in lines]  # every line is JSON, or this fails
    assert any(e.get("event") == "message" and e.get("outcome") == "answered" for e in events)
    assert any(e.get("event") == "stopped" for e in events)
    text = stderr.decode()
    assert not any(urn in text for urn in register_urns(tmp_path, "West Mercia"))
