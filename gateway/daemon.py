"""`gateway run`: startup, serve (mailbox watcher and outbox sender in one task group), bounded shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import signal
from collections.abc import Iterator

import structlog

from gateway.compose import Templates
from gateway.config import Config
from gateway.crypto import KeyProblem, Keyring, in_thread
from gateway.db.engine import create_database, require_current_schema
from gateway.errors import ConfigError
from gateway.mailbox import Watcher
from gateway.outbox import deliver_due, smtp_transport
from gateway.pipeline import Context, Outcome, process

log = structlog.get_logger("gateway.daemon")

SHUTDOWN_LIMIT = 10.0  # seconds from SIGTERM to exit, the message in hand included
OUTBOX_INTERVAL = 5.0


@contextlib.contextmanager
def _signals(stop: asyncio.Event) -> Iterator[None]:
    """SIGTERM and SIGINT ask for a clean stop; the handlers they replaced are put back afterwards."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        yield
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def _check_key(config: Config, keyring: Keyring) -> None:
    if not config.gpg.signing_key:
        raise ConfigError(f"{config.path}: [gpg] signing_key is not set: run `gateway init` and set it")
    info = await in_thread(keyring.inspect, config.gpg.signing_key)
    if info is None or not await in_thread(keyring.has_secret, config.gpg.signing_key):
        raise KeyProblem(f"[gpg] signing_key {config.gpg.signing_key} has no secret key in {config.gpg.home}")
    if info.problems():
        raise KeyProblem(f"[gpg] signing_key {config.gpg.signing_key} is unusable: {'; '.join(info.problems())}")


async def run(config: Config, stop: asyncio.Event | None = None) -> None:
    """Startup, serve until asked to stop, shut down within SHUTDOWN_LIMIT seconds."""
    # Startup: everything checked before anything is touched, so a bad setting fails here, not at 3 a.m.
    if config.imap is None or config.smtp is None:
        missing = "[imap]" if config.imap is None else "[smtp]"
        raise ConfigError(f"{config.path}: {missing} is not configured: `gateway run` needs a mailbox and a relay")
    stop = stop or asyncio.Event()
    keyring = Keyring(config.gpg.home, config.gpg.binary)
    await _check_key(config, keyring)
    db = create_database(config.database)
    await require_current_schema(db)
    ctx = Context(config, db, keyring, Templates())
    smtp, outbox_due = config.smtp, asyncio.Event()

    async def handle(raw: bytes) -> Outcome:
        with structlog.contextvars.bound_contextvars(message=hashlib.sha256(raw).hexdigest()[:12]):
            outcome = await process(ctx, raw, source="imap")
            log.info("message", outcome=outcome.kind, inbound_id=outcome.inbound_id, reference=outcome.reference)
        outbox_due.set()  # a reply is waiting: send it now rather than at the next tick
        return outcome

    async def send_outbox() -> None:
        transport = smtp_transport(smtp)
        while not stop.is_set():
            counts = await deliver_due(
                db, transport, admin_address=config.gateway.admin_address, now=dt.datetime.now(dt.UTC)
            )
            if any(counts.values()):
                log.info("outbox", **counts)
            outbox_due.clear()
            waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(outbox_due.wait())]
            await asyncio.wait(waits, timeout=OUTBOX_INTERVAL, return_when=asyncio.FIRST_COMPLETED)
            for waiting in waits:
                waiting.cancel()

    watcher = Watcher(config.imap, handle, db, stop=stop)
    log.info("started", mailbox=f"{config.imap.host}:{config.imap.port}", relay=f"{smtp.host}:{smtp.port}")
    try:
        with _signals(stop):
            # Serve: the watcher finishes the message in hand when stop is set; the sender finishes its batch.
            async with asyncio.timeout(None) as limit, asyncio.TaskGroup() as tasks:
                tasks.create_task(watcher.run())
                tasks.create_task(send_outbox())
                await stop.wait()
                limit.reschedule(asyncio.get_running_loop().time() + SHUTDOWN_LIMIT)
    except TimeoutError:
        log.warning("shutdown took longer than the limit; stopped what was still running", limit=SHUTDOWN_LIMIT)
    finally:
        await db.close()
        log.info("stopped")
