"""For operators: /healthz and /metrics (Prometheus text format) on a loopback HTTP port, when [metrics] is set.

Counters and histograms live in one registry of this process; the outbox figures are read from the database
when scraped, so they are true for every gateway sharing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from sqlalchemy import func, select

from gateway.config import MetricsSettings
from gateway.db.engine import Database
from gateway.db.models import OutboxMessage

log = structlog.get_logger("gateway.metrics")
REGISTRY = CollectorRegistry()
MESSAGES = Counter("gateway_messages", "Inbound messages by outcome", ["outcome"], registry=REGISTRY)
DISCLOSURES = Counter("gateway_disclosures", "Disclosures made (answers and monthly deliveries)", registry=REGISTRY)
IMAP_RECONNECTS = Counter(
    "gateway_imap_reconnects", "Times the IMAP connection was lost and rebuilt", registry=REGISTRY
)
PROCESSING = Histogram(
    "gateway_processing_seconds",
    "Time from fetch to recorded outcome, per message",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
GPG = Histogram(
    "gateway_gpg_seconds",
    "Time of one gpg call",
    ["operation"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
    registry=REGISTRY,
)
OPENSSL = Histogram(
    "gateway_openssl_seconds",
    "Time of one openssl call (S/MIME)",
    ["operation"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
    registry=REGISTRY,
)
OUTBOX_DEPTH = Gauge("gateway_outbox_depth", "Outgoing messages waiting to be sent", registry=REGISTRY)
OUTBOX_AGE = Gauge("gateway_outbox_oldest_seconds", "Age of the oldest message waiting to be sent", registry=REGISTRY)


@contextlib.contextmanager
def _timed(histogram: Histogram, operation: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        histogram.labels(operation).observe(time.perf_counter() - started)


def timed_gpg(operation: str) -> contextlib.AbstractContextManager[None]:
    return _timed(GPG, operation)


def timed_openssl(operation: str) -> contextlib.AbstractContextManager[None]:
    return _timed(OPENSSL, operation)


@dataclass
class Health:
    """What the daemon knows of itself; the endpoint reads it."""

    imap_connected: Callable[[], bool]
    scheduler_alive: Callable[[], bool]
    db: Database
    max_outbox_age: float  # seconds; older pending mail means the relay or the sender is stuck
    # Why an OAuth client ([imap.oauth], [smtp.oauth]) has no access token now, or None.
    token_problem: Callable[[], str | None] = lambda: None


async def _outbox(db: Database) -> tuple[int, float]:
    async with db.transaction(write=False) as session:
        depth, oldest = (
            await session.execute(
                select(func.count(OutboxMessage.id), func.min(OutboxMessage.created_at)).where(
                    OutboxMessage.status == "pending"
                )
            )
        ).one()
    if oldest is not None and oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=dt.UTC)
    age = (dt.datetime.now(dt.UTC) - oldest).total_seconds() if oldest else 0.0
    return int(depth), max(age, 0.0)


async def health(state: Health) -> tuple[bool, dict[str, object]]:
    checks: dict[str, object] = {"imap_connected": state.imap_connected(), "scheduler_alive": state.scheduler_alive()}
    token_problem = state.token_problem()
    checks["oauth_token"] = token_problem is None
    if token_problem is not None:
        checks["oauth_error"] = token_problem  # the provider's error code and words: no secret in them
    try:
        depth, age = await asyncio.wait_for(_outbox(state.db), 5)
        checks.update(database_reachable=True, outbox_depth=depth, outbox_oldest_seconds=round(age, 1))
    except Exception as exc:  # the point of a health check: report, never raise
        checks.update(database_reachable=False, database_error=type(exc).__name__)
        age = 0.0
    healthy = bool(
        checks["imap_connected"]
        and checks["scheduler_alive"]
        and checks["oauth_token"]
        and checks["database_reachable"]
        and age <= state.max_outbox_age
    )
    return healthy, {"healthy": healthy, **checks}


Route = Callable[[], Awaitable[tuple[int, str, bytes]]]


async def serve(settings: MetricsSettings, state: Health, stop: asyncio.Event) -> None:
    """A minimal HTTP/1.0 server for two GET paths; anything else gets 404, and no request body is read."""

    async def healthz() -> tuple[int, str, bytes]:
        healthy, body = await health(state)
        return (200 if healthy else 503), "application/json", json.dumps(body).encode()

    async def metrics() -> tuple[int, str, bytes]:
        with contextlib.suppress(Exception):  # the counters still show when the database does not
            depth, age = await asyncio.wait_for(_outbox(state.db), 5)
            OUTBOX_DEPTH.set(depth)
            OUTBOX_AGE.set(age)
        return 200, CONTENT_TYPE_LATEST, generate_latest(REGISTRY)

    routes: dict[str, Route] = {"/healthz": healthz, "/metrics": metrics}

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            parts = line.decode("latin-1").split()
            route = routes.get(parts[1]) if len(parts) >= 2 and parts[0] == "GET" else None
            status, kind, body = await route() if route else (404, "text/plain", b"not found\n")
            reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
            head = f"HTTP/1.0 {status} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n\r\n"
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError, UnicodeDecodeError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(answer, settings.host, settings.port)
    log.info("metrics endpoint", address=f"{settings.host}:{settings.port}")
    try:
        await stop.wait()
    finally:
        server.close()
