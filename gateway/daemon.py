"""`gateway run`: startup, serve (mailbox watcher and outbox sender in one task group), bounded shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fcntl
import hashlib
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway import metrics
from gateway.compose import Templates
from gateway.config import Config, ImapSettings, InboundSmtpSettings, SmtpSettings
from gateway.crypto import Keyring, kill_agent
from gateway.db.engine import Database, create_database, require_current_schema
from gateway.errors import ConfigError
from gateway.gpgrun import KeyProblem, in_thread
from gateway.inbound.smtp import drain_spool, start_listener
from gateway.inbound.watcher import Watcher
from gateway.oauth import Tokens
from gateway.outbox import ROUND, RetryPolicy, deliver_due, smtp_transport
from gateway.pipeline import process
from gateway.schedule import run_due
from gateway.smime.identity import load_identity
from gateway.values import Context, Outcome

log = structlog.get_logger("gateway.daemon")

SHUTDOWN_LIMIT = 10.0  # seconds from SIGTERM to exit, the messages in hand included
OUTBOX_INTERVAL = 5.0
RUN_LOCK = "gateway-run.lock"  # in the GnuPG home: held (shared) by each `gateway run` using it


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


@contextlib.contextmanager
def _survive(loop: str) -> Iterator[None]:
    """One failed round of a loop (the database down, say) is logged; the loop goes on, nothing is dropped."""
    try:
        yield
    except Exception as exc:
        log.error("round failed; retrying", loop=loop, error=type(exc).__name__)  # noqa: TRY400 - no traceback: its text could quote the message or register data


async def _nap(stop: asyncio.Event, wake: asyncio.Event, seconds: float) -> None:
    """Until the gateway stops, there is new work, or `seconds` pass: whichever comes first."""
    waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())]
    await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    for waiting in waits:
        waiting.cancel()
    wake.clear()


LEADER_KEY = 0x6761_7465_6C64  # "gateld": the scheduler's session-level advisory lock on PostgreSQL
LEADER_INTERVAL = 15.0  # seconds between a follower's attempts to take over


class Leadership:
    """One scheduler among the gateways sharing a PostgreSQL database: the one holding a session advisory lock
    on a connection of its own. When that gateway dies its connection goes, the lock with it, and another takes
    over. With SQLite there is one host and one gateway: it always leads. (The schedule's unique keys make a
    second scheduler harmless anyway; leadership saves the work.)"""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._connection: AsyncConnection | None = None
        self.held = db.settings.is_sqlite

    async def take(self) -> bool:
        """True when this gateway has just become the leader."""
        if self._db.settings.is_sqlite:
            return False
        if self._connection is not None:
            try:  # still ours while the connection lives
                await self._connection.execute(text("SELECT 1"))
                await self._connection.commit()
            except Exception:
                log.warning("lost the scheduler leadership with its database connection")
                await self.release()
            else:
                return False
        connection = await self._db.engine.connect()
        try:
            got = bool(await connection.scalar(text("SELECT pg_try_advisory_lock(:key)"), {"key": LEADER_KEY}))
            await connection.commit()
        except Exception:
            await connection.close()
            raise
        if not got:
            await connection.close()
            return False
        self._connection, self.held = connection, True
        log.info("scheduler leader")
        return True

    async def release(self) -> None:
        self.held = False
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()
            self._connection = None


class Services:
    """What runs inside the daemon's task group; each loop ends soon after `stop` is set."""

    def __init__(self, ctx: Context, stop: asyncio.Event, tokens: Tokens) -> None:
        self.ctx = ctx
        self.stop = stop
        self.tokens = tokens
        self.leadership = Leadership(ctx.db)
        self.outbox_due = asyncio.Event()
        self.spooled = asyncio.Event()
        self.sign = ctx.keyring.signer(ctx.config.gpg.signing_key)  # checked at start: the daemon needs one

    async def handle(self, raw: bytes, source: str = "imap") -> Outcome:
        with structlog.contextvars.bound_contextvars(message=hashlib.sha256(raw).hexdigest()[:12]):
            with metrics.PROCESSING.time():
                outcome = await process(self.ctx, raw, source=source)
            metrics.MESSAGES.labels(outcome.kind).inc()
            log.info("message", outcome=outcome.kind, inbound_id=outcome.inbound_id, reference=outcome.reference)
        self.outbox_due.set()  # a reply is waiting: send it now rather than at the next tick
        return outcome

    async def send_outbox(self, smtp: SmtpSettings) -> None:
        transport, config = smtp_transport(smtp, tokens=self.tokens.smtp), self.ctx.config
        while not self.stop.is_set():
            with _survive("outbox"):
                counts = await deliver_due(
                    self.ctx.db, transport, admin_address=config.gateway.admin_address, now=dt.datetime.now(dt.UTC),
                    retry=RetryPolicy.of(smtp), limit=ROUND, sign=self.sign,
                )  # fmt: skip
                if any(counts.values()):
                    log.info("outbox", **counts)
                if sum(counts.values()) >= ROUND:
                    continue  # a full round: more is due now, so no nap (a backlog must not go 50 per interval)
            await _nap(self.stop, self.outbox_due, OUTBOX_INTERVAL)

    async def lead(self) -> None:
        """Take the scheduler over when no other gateway holds it, and catch up at once when it does."""
        while not self.stop.is_set():
            with _survive("leadership"):
                if await self.leadership.take():
                    await self.schedule()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), LEADER_INTERVAL)
        await self.leadership.release()

    async def schedule(self) -> None:
        """Deliveries, reminders and lapses due now; the tables, not the scheduler, know what was done."""
        if not self.leadership.held:
            return  # another gateway on this database runs the schedule
        with _survive("schedule"):
            counts = await run_due(self.ctx, dt.datetime.now(dt.UTC))
            if any(counts.values()):
                log.info("schedule", **counts)
                self.outbox_due.set()

    def scheduler(self) -> AsyncIOScheduler:
        """APScheduler only decides when to look: at the monthly delivery moment, and every hour (also at start,
        so a gateway that was down catches up: one delivery for the latest month, the reminders still due)."""
        settings = self.ctx.config.schedule
        scheduler = AsyncIOScheduler(timezone=settings.timezone)
        monthly = CronTrigger(
            day=settings.delivery_day,
            hour=settings.delivery_time.hour,
            minute=settings.delivery_time.minute,
            timezone=settings.timezone,
        )
        # Coalesced, with a day's grace: a late trigger still runs, once, and run_due is idempotent anyway.
        options: dict[str, Any] = {"coalesce": True, "misfire_grace_time": 86_400, "max_instances": 1}
        scheduler.add_job(self.schedule, monthly, id="monthly", **options)
        scheduler.add_job(
            self.schedule, IntervalTrigger(hours=1), id="hourly", next_run_time=dt.datetime.now(dt.UTC), **options
        )
        return scheduler

    async def listen(self, inbound: InboundSmtpSettings) -> None:
        """The inbound SMTP listener, and what it stored, through the same pipeline."""

        async def one(raw: bytes) -> int:
            return (await self.handle(raw, "smtp")).inbound_id

        server = await start_listener(inbound, self.ctx.db, self.ctx.config.gateway.address, self.spooled)
        try:
            while not self.stop.is_set():
                with _survive("spool"):  # what failed stays pending in the spool and is tried again
                    await drain_spool(self.ctx.db, one)
                await _nap(self.stop, self.spooled, OUTBOX_INTERVAL)
        finally:
            server.close()


async def run(config: Config, stop: asyncio.Event | None = None) -> None:
    """Startup, serve until asked to stop, shut down within SHUTDOWN_LIMIT seconds."""
    # Startup: everything checked before anything is touched, so a bad setting fails here, not at 3 a.m.
    if config.imap is None or config.smtp is None:
        missing = "[imap]" if config.imap is None else "[smtp]"
        raise ConfigError(f"{config.path}: {missing} is not configured: `gateway run` needs a mailbox and a relay")
    if not config.gpg.home.is_dir():
        raise KeyProblem(f"GnuPG home {config.gpg.home} does not exist: run `gateway init` first")
    stop = stop or asyncio.Event()
    keyring = Keyring.private(config.gpg.home, config.gpg.binary)
    async with _agent_stopped_after(config.gpg.home):
        await _serve(config, config.imap, config.smtp, keyring, stop)


@contextlib.asynccontextmanager
async def _agent_stopped_after(home: Path) -> AsyncIterator[None]:
    """gpg-agent outlives the gpg that started it: the last `gateway run` on this GnuPG home to stop, stops it.
    Each holds a shared lock on a file in the home; the one that can then take the lock whole is the last (a
    second gateway on the host keeps its agent, which a command's gpg would otherwise have to start again)."""
    lock = os.open(home / RUN_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_SH)
        yield
    finally:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("gpg-agent left running for the other gateway on this GnuPG home")
        else:
            await asyncio.to_thread(kill_agent, home)
        finally:
            os.close(lock)


async def _serve(config: Config, imap: ImapSettings, smtp: SmtpSettings, keyring: Keyring, stop: asyncio.Event) -> None:
    await _check_key(config, keyring)
    identity = load_identity(config)  # the S/MIME identity, if [smime] names one: checked now, like the key
    tokens = Tokens(config)
    await tokens.check()  # with [imap.oauth] or [smtp.oauth]: a wrong secret stops the start with one line
    db = create_database(config.database)
    await require_current_schema(db)
    context = Context(config, db, keyring, Templates(config.gateway.templates), smime=identity)
    services = Services(context, stop, tokens)
    watcher = Watcher(imap, services.handle, db, stop=stop, tokens=tokens.imap)
    log.info("started", mailbox=f"{imap.host}:{imap.port}", relay=f"{smtp.host}:{smtp.port}")
    scheduler = services.scheduler()
    scheduler.start()
    try:
        with _signals(stop):
            # Serve: when stop is set the watcher finishes the messages in hand (its window) and the sender its round.
            async with asyncio.timeout(None) as limit, asyncio.TaskGroup() as tasks:
                tasks.create_task(watcher.run())
                tasks.create_task(services.send_outbox(smtp))
                tasks.create_task(services.lead())
                if config.inbound_smtp is not None:
                    tasks.create_task(services.listen(config.inbound_smtp))
                if config.metrics is not None:
                    state = metrics.Health(
                        imap_connected=watcher.connected.is_set,
                        scheduler_alive=lambda: scheduler.running and scheduler.get_job("hourly") is not None,
                        db=db,
                        max_outbox_age=config.metrics.max_outbox_age,
                        token_problem=tokens.problem,
                    )
                    tasks.create_task(metrics.serve(config.metrics, state, stop))
                await stop.wait()
                limit.reschedule(asyncio.get_running_loop().time() + SHUTDOWN_LIMIT)
    except TimeoutError:
        log.warning("shutdown took longer than the limit; stopped what was still running", limit=SHUTDOWN_LIMIT)
    finally:
        scheduler.shutdown(wait=False)
        await db.close()
        log.info("stopped")
