"""The IMAP watcher: raw messages in from the secure mailbox, each moved to its outcome's folder afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import re
import secrets
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aioimaplib
from sqlalchemy import select

from gateway import metrics
from gateway.config import ImapSettings
from gateway.db.engine import Database
from gateway.db.models import InboundMessage, MailboxClaim, MailboxProgress, QuarantinedMessage
from gateway.pipeline import Outcome

log = logging.getLogger("gateway.mailbox")

# Long enough for any one message (each gpg call is bounded at 30 s), short enough that a gateway that died
# holding a claim delays that message by no more than this. Should it run out mid-message, the other gateway
# only repeats the work: the message is recorded once, by its SHA-256, under the write lock.
CLAIM_LEASE = dt.timedelta(seconds=30)
COMMAND_TIMEOUT = 60.0  # every IMAP await has its own limit: a dropped link must never hang the watcher
MAX_BACKOFF = 60.0

Handler = Callable[[bytes], Awaitable[Outcome]]


def label(inbound_id: int) -> str:
    """The IMAP keyword that ties a quarantined message in the mailbox to its record."""
    return f"gateway-{inbound_id}"


class MailboxError(Exception):
    """The server said NO or BAD, or answered in a way the watcher cannot use: reconnect and try again."""


@dataclass(frozen=True)
class Folders:
    inbox: str
    processed: str
    rejected: str
    quarantine: str

    @classmethod
    def of(cls, settings: ImapSettings) -> Folders:
        return cls(settings.folder, settings.processed_folder, settings.rejected_folder, settings.quarantine_folder)

    def for_outcome(self, settled_as: str) -> str:
        return {"rejected": self.rejected, "quarantined": self.quarantine}.get(settled_as, self.processed)


def _text(lines: list[Any]) -> str:
    return " ".join(bytes(line).decode("utf-8", "replace") for line in lines if isinstance(line, bytes | bytearray))


class Watcher:
    """Connect, catch up, wait (IDLE or poll), repeat; on any failure rebuild the client after a backoff."""

    def __init__(
        self,
        settings: ImapSettings,
        handle: Handler,
        db: Database,
        *,
        stop: asyncio.Event,
        tls_context: ssl.SSLContext | None = None,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self._settings = settings
        self._handle = handle
        self._db = db
        self._stop = stop
        self._tls = tls_context
        self._clock = clock
        self.folders = Folders.of(settings)
        self.owner = f"{socket.gethostname()[:60]}:{os.getpid()}:{secrets.token_hex(4)}"
        self.connected = asyncio.Event()  # set while logged in and selected, for tests and health checks
        self._lost = asyncio.Event()

    async def _timed(self, call: Awaitable[Any], timeout: float = COMMAND_TIMEOUT) -> Any:
        """A command's answer, or MailboxError as soon as the link drops: aioimaplib may never fail a command
        whose connection has gone, and waiting out the timeout would hold the mailbox up for a minute."""
        command = asyncio.ensure_future(call)
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            done, _ = await asyncio.wait({command, lost}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
        if command in done:
            return command.result()
        command.cancel()
        if lost in done:
            raise MailboxError("the server closed the connection")
        raise TimeoutError

    async def _ok(self, call: Awaitable[Any], what: str) -> Any:
        response = await self._timed(call)
        if response.result != "OK":
            raise MailboxError(f"{what}: {response.result} {_text(response.lines)[:200]}")
        return response

    async def run(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            try:
                await self._session()
                backoff = 1.0
            except (OSError, TimeoutError, MailboxError, aioimaplib.Abort, aioimaplib.CommandTimeout) as exc:
                self.connected.clear()
                metrics.IMAP_RECONNECTS.inc()
                log.warning("imap connection lost; reconnecting in %.0f s: %s", backoff, type(exc).__name__)
            except Exception as exc:
                self.connected.clear()
                # No traceback: its text could quote the message or register data.
                log.error(  # noqa: TRY400
                    "processing stopped; the message stays in the folder, retried in %.0f s: %s",
                    backoff,
                    type(exc).__name__,
                )
            if not self._stop.is_set() and not self.connected.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    async def _connect(self) -> aioimaplib.IMAP4:
        settings = self._settings
        if settings.tls == "tls":
            client: aioimaplib.IMAP4 = aioimaplib.IMAP4_SSL(
                host=settings.host, port=settings.port, timeout=COMMAND_TIMEOUT, ssl_context=self._tls
            )
        else:
            client = aioimaplib.IMAP4(host=settings.host, port=settings.port, timeout=COMMAND_TIMEOUT)
        # Told at once when the link drops (IMAP4_SSL does not pass the callback on, so it is set here),
        # instead of finding out when an IDLE or a command times out.
        self._lost = asyncio.Event()
        client.protocol.conn_lost_cb = lambda _exc: self._lost.set()
        await self._timed(client.wait_hello_from_server())
        await self._ok(client.login(settings.username, settings.password.value), "LOGIN")
        return client

    async def _session(self) -> None:
        client = await self._connect()
        try:
            for folder in (self.folders.processed, self.folders.rejected, self.folders.quarantine):
                # NO means it exists already; anything worse shows up when a message is moved there.
                await self._timed(client.create(folder))
            uidvalidity = await self._select(client)
            self.connected.set()
            while not self._stop.is_set():
                # Again until a search finds nothing to do: mail that came while we worked may have been announced
                # in the answer to a command, and IDLE would then never mention it.
                while await self.catch_up(client, uidvalidity) and not self._stop.is_set():
                    pass
                await self._wait(client)
        finally:
            self.connected.clear()
            # If the link is already gone there is nothing to log out of.
            with contextlib.suppress(OSError, TimeoutError, aioimaplib.Abort, aioimaplib.CommandTimeout):
                await self._timed(client.logout(), 5)

    async def _select(self, client: aioimaplib.IMAP4) -> int:
        response = await self._ok(client.select(self.folders.inbox), f"SELECT {self.folders.inbox}")
        match = re.search(r"UIDVALIDITY (\d+)", _text(response.lines))
        if match is None:
            raise MailboxError("the server reported no UIDVALIDITY")
        return int(match[1])

    async def _wait(self, client: aioimaplib.IMAP4) -> None:
        """Until the server pushes news, the IDLE period ends, or the gateway stops: a wake-up, never the truth."""
        if not client.has_capability("IDLE"):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self._settings.poll_seconds)
            if self._lost.is_set():
                raise MailboxError("the server closed the connection")
            return
        # Never longer than a claim's lease: what a dead gateway on this mailbox left is looked at again by then.
        period = min(self._settings.idle_seconds, CLAIM_LEASE.total_seconds())
        idle = await self._timed(client.idle_start(timeout=period + COMMAND_TIMEOUT))
        push = asyncio.ensure_future(client.wait_server_push(timeout=period))
        stopping = asyncio.ensure_future(self._stop.wait())
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            await asyncio.wait({push, stopping, lost}, return_when=asyncio.FIRST_COMPLETED)
            if client.has_pending_idle() and not self._lost.is_set():
                client.idle_done()
            # A server going down pushes BYE and then closes: the IDLE never completes, so wait for either.
            await asyncio.wait({idle, lost}, timeout=COMMAND_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (push, stopping, lost):
                task.cancel()
        if self._lost.is_set() or not idle.done():
            idle.cancel()
            raise MailboxError("the server closed the connection")

    async def catch_up(self, client: aioimaplib.IMAP4, uidvalidity: int) -> bool:
        """Every message in the folder now, oldest first: processed unless already, then moved to its folder.
        True when there was anything to do."""
        response = await self._ok(client.uid_search("ALL"), "UID SEARCH")
        uids = sorted(int(word) for word in _text(response.lines).split() if word.isdigit())
        worked = False
        for uid in uids:
            if self._stop.is_set():
                return False
            progress = await self._settled(uidvalidity, uid)
            if progress is None:
                if not await self._claim(uidvalidity, uid):
                    continue  # another gateway on this mailbox is working on it, and will file it
                raw = await self._fetch(client, uid)
                outcome = await self._handle(raw)
                await self._remember(uidvalidity, uid, outcome)
                progress = (outcome.settled_as, outcome.inbound_id)
            settled_as, inbound_id = progress
            if settled_as == "quarantined" and inbound_id is not None:
                # Labelled with its record, so a release or discard later finds it in the Quarantine folder.
                await self._ok(client.uid("store", str(uid), "+FLAGS.SILENT", f"({label(inbound_id)})"), f"STORE {uid}")
            await self._move(client, uid, self.folders.for_outcome(settled_as))
            await self._moved(uidvalidity, uid)
            worked = True
        await self.settle_quarantine(client)
        return worked

    async def settle_quarantine(self, client: aioimaplib.IMAP4) -> None:
        """Make the Quarantine folder agree with the database: what a person released or discarded leaves it."""
        async with self._db.transaction(write=False) as session:
            rows = (
                await session.execute(
                    select(MailboxProgress, QuarantinedMessage.status, InboundMessage.outcome)
                    .join(QuarantinedMessage, QuarantinedMessage.inbound_id == MailboxProgress.inbound_id)
                    .join(InboundMessage, InboundMessage.id == MailboxProgress.inbound_id)
                    .where(
                        MailboxProgress.folder == self.folders.inbox,
                        MailboxProgress.settled_as == "quarantined",
                        MailboxProgress.moved.is_(True),
                        QuarantinedMessage.status != "held",
                    )
                )
            ).all()
        if not rows:
            return  # the usual case: no IMAP work at all
        await self._ok(client.select(self.folders.quarantine), f"SELECT {self.folders.quarantine}")
        try:
            for progress, status, outcome in rows:
                # A discarded message goes where unanswered mail goes; a released one where its new outcome does.
                settled = "rejected" if status == "discarded" else outcome
                found = await self._ok(client.uid_search(f"KEYWORD {label(progress.inbound_id or 0)}"), "UID SEARCH")
                for uid in (word for word in _text(found.lines).split() if word.isdigit()):
                    await self._move(client, int(uid), self.folders.for_outcome(settled))
                async with self._db.transaction() as session:
                    row = await session.get(MailboxProgress, (progress.folder, progress.uidvalidity, progress.uid))
                    if row is not None:
                        row.settled_as = settled
        finally:
            await self._ok(client.select(self.folders.inbox), f"SELECT {self.folders.inbox}")

    async def _fetch(self, client: aioimaplib.IMAP4, uid: int) -> bytes:
        # BODY.PEEK leaves \\Seen alone: flags are the mailbox owner's, progress is ours (in the database).
        response = await self._ok(client.uid("fetch", str(uid), "(BODY.PEEK[])"), f"UID FETCH {uid}")
        literals = [bytes(line) for line in response.lines if isinstance(line, bytearray)]
        if not literals:
            raise MailboxError(f"UID FETCH {uid} returned no message")
        return literals[0]

    async def _move(self, client: aioimaplib.IMAP4, uid: int, folder: str) -> None:
        if client.has_capability("MOVE"):
            await self._ok(client.uid("move", str(uid), folder), f"UID MOVE {uid}")
            return
        await self._ok(client.uid("copy", str(uid), folder), f"UID COPY {uid}")
        await self._ok(client.uid("store", str(uid), "+FLAGS.SILENT", r"(\Deleted)"), f"UID STORE {uid}")
        if client.has_capability("UIDPLUS"):
            await self._ok(client.uid("expunge", str(uid)), f"UID EXPUNGE {uid}")
        else:
            await self._ok(client.expunge(), "EXPUNGE")

    async def _settled(self, uidvalidity: int, uid: int) -> tuple[str, int | None] | None:
        async with self._db.transaction(write=False) as session:
            row = await session.get(MailboxProgress, (self.folders.inbox, uidvalidity, uid))
        return (row.settled_as, row.inbound_id) if row else None

    async def _remember(self, uidvalidity: int, uid: int, outcome: Outcome) -> None:
        async with self._db.transaction() as session:
            existing = await session.get(MailboxProgress, (self.folders.inbox, uidvalidity, uid))
            if existing is None:
                session.add(
                    MailboxProgress(
                        folder=self.folders.inbox,
                        uidvalidity=uidvalidity,
                        uid=uid,
                        inbound_id=outcome.inbound_id,
                        settled_as=outcome.settled_as,
                        moved=False,
                        processed_at=self._clock(),
                    )
                )

    async def _claim(self, uidvalidity: int, uid: int) -> bool:
        """Take a message for this gateway, unless another holds it and its lease has not run out."""
        now = self._clock()
        async with self._db.transaction() as session:
            claim = await session.get(MailboxClaim, (self.folders.inbox, uidvalidity, uid))
            if claim is not None and claim.owner != self.owner and claim.until > now:
                return False
            if claim is None:
                session.add(
                    MailboxClaim(
                        folder=self.folders.inbox, uidvalidity=uidvalidity, uid=uid, owner=self.owner,
                        until=now + CLAIM_LEASE,
                    )
                )  # fmt: skip
            else:  # ours, or left by a gateway that died holding it
                claim.owner, claim.until = self.owner, now + CLAIM_LEASE
            return True

    async def _moved(self, uidvalidity: int, uid: int) -> None:
        async with self._db.transaction() as session:
            row = await session.get(MailboxProgress, (self.folders.inbox, uidvalidity, uid))
            if row is not None:
                row.moved = True
            claim = await session.get(MailboxClaim, (self.folders.inbox, uidvalidity, uid))
            if claim is not None:
                await session.delete(claim)
