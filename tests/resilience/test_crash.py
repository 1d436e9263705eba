"""Crash tests: the daemon, or a schedule run, killed with SIGKILL at random moments and started again, loses
nothing and answers nothing twice."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from gateway.admin.reference import police_force_areas
from gateway.dev.dovecot import ImapServer
from tests.support.addresses import OCC_ADDRESS
from tests.support.daemon import daemon_settings, started, until
from tests.support.gateway_cli import Gateway
from tests.support.keys import AuthorityKeys
from tests.support.live import process
from tests.support.mailbox import folder_counts
from tests.support.relay import Relay, answers, serve
from tests.support.requests import request_from_police, signed_message

BURST = 200
KILLS = 6


async def test_sigkill_at_random_moments_loses_nothing_and_answers_once(
    live: Gateway, dovecot_server: ImapServer, keys: AuthorityKeys
) -> None:
    seed = int(os.environ.get("GATEWAY_CRASH_SEED", random.SystemRandom().randrange(1 << 30)))
    chance = random.Random(seed)  # noqa: S311 - when to kill, not a secret
    print(f"crash test seed {seed} (GATEWAY_CRASH_SEED={seed} repeats it)")
    relay = Relay()
    server, port = await serve(relay)
    live.write_config(daemon_settings(dovecot_server, port, "\n[limits]\nanswers_per_day = 1000\n"))
    wanted = {f"<crash{i}@westmercia.police.example>" for i in range(BURST)}
    for message_id in sorted(wanted):
        dovecot_server.deliver(request_from_police(keys, message_id=message_id))
    try:
        for _ in range(KILLS):  # mid-fetch, mid-encryption, between commit and send, between send and move...
            daemon = await started(live)
            await asyncio.sleep(chance.uniform(0.05, 1.5))
            daemon.send_signal(signal.SIGKILL)
            await daemon.wait()
        daemon = await started(live)
        # A message or an outgoing mail claimed by a killed daemon waits out its lease (30 and 90 seconds).
        await until(lambda: set(answers(relay)) >= wanted, 300)
        await until(
            lambda: folder_counts(dovecot_server, "INBOX", "Processed") == {"INBOX": 0, "Processed": BURST}, 120
        )
        daemon.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(daemon.wait(), 20) == 0
    finally:
        server.close()

    replies = answers(relay)
    assert set(replies) == wanted, "a reply to something that was never asked, or a request never answered"
    assert all(len(ids) == 1 for ids in replies.values()), "a request was answered twice"
    # The one thing a crash can repeat: the same outgoing message, if the daemon died after the relay said 250
    # and before that was recorded. Same Message-ID, so the receiving side sees a duplicate of one answer.
    resent = len(relay.received) - BURST
    print(f"{len(relay.received)} messages at the relay for {BURST} requests; {resent} sent twice by a crash")
    counts = await asyncio.to_thread(folder_counts, dovecot_server, "Rejected", "Quarantine")
    assert counts == {"Rejected": 0, "Quarantine": 0}
    records = json.loads(await asyncio.to_thread(live.ok, "audit", "list", "--json"))
    actions = Counter(str(row["action"]) for row in records)
    assert actions["inbound.answered"] == BURST  # each message recorded once, with one outcome
    assert actions["disclosure"] == BURST
    assert (await asyncio.to_thread(live.run, "audit", "verify")).code == 0


def monthly(area: str) -> str:
    return f"Request: disclosure\r\nFrequency: monthly\r\nArea: {area}\r\nPurpose: Safeguarding children\r\n"


def test_a_schedule_run_killed_midway_sends_each_delivery_once(
    live: Gateway, keys: AuthorityKeys, tmp_path: Path
) -> None:
    key = keys.occ.write(tmp_path, "occ.asc")
    live.ok("authority", "add", "--name", "OCC", "--kind", "childrens-commissioner", "--email", OCC_ADDRESS,
            "--key", str(key))  # fmt: skip
    live.write_config("\n[limits]\nanswers_per_day = 1000\n")
    areas = police_force_areas()[:10]
    for number, area in enumerate(areas):
        headers = f"From: OCC <{OCC_ADDRESS}>\nTo: x@hmci.example\nMessage-ID: <occ{number}@occ.example>\n"
        raw = signed_message(keys, keys.occ.fingerprint, body=monthly(area), headers=headers)
        assert process(live, raw, f"{number}.eml")["kind"] == "answered"
    subscriptions = json.loads(live.ok("subscription", "list", "--json"))
    assert len(subscriptions) == len(areas)
    as_of = "2027-01-01T06:30:00+00:00"  # the first delivery moment after they started
    command = [sys.executable, "-m", "gateway", "--config", str(live.config_path), "schedule", "run", "--as-of", as_of]
    chance = random.Random(int(os.environ.get("GATEWAY_CRASH_SEED", "7")))  # noqa: S311 - not a secret
    for _ in range(4):
        running = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(chance.uniform(0.8, 2.0))  # Python starts in about 0.7 s; then deliveries are being made
        running.kill()
        running.wait()
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    subprocess.run(command, check=True, capture_output=True, timeout=120)  # and again: nothing more
    deliveries = Counter(
        step["kind"]
        for sub in subscriptions
        for step in json.loads(live.ok("subscription", "show", str(sub["id"]), "--json"))["history"]
    )
    assert deliveries["delivery"] == len(areas)  # one each, however many runs died on the way
    kinds = Counter(str(row["kind"]) for row in json.loads(live.ok("outbox", "list", "--json")))
    assert kinds["disclosure"] == 2 * len(areas)  # the first answers, and one delivery each
    assert live.run("audit", "verify").code == 0
