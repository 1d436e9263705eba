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
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import parseaddr
from typing import Any, NamedTuple

import aioimaplib
from sqlalchemy import ColumnElement, delete, select, update

from gateway import metrics
from gateway.config import ImapSettings
from gateway.db.engine import SIDE_BY_SIDE, Database
from gateway.db.models import InboundMessage, MailboxClaim, MailboxProgress, QuarantinedMessage
from gateway.values import Outcome, OutcomeKind

log = logging.getLogger("gateway.mailbox")

# Taken for each top-up of the window, just before its messages are fetched and started: long enough for an
# ordinary message, short enough that a gateway that died holding a claim delays those messages by no more
# than this. Should it run out first (one sender's messages go in order, and each gpg call may take up to
# 30 s), the other gateway only repeats the work: each message is recorded once, by its SHA-256, under the
# write lock.
CLAIM_LEASE = dt.timedelta(seconds=30)
COMMAND_TIMEOUT = 60.0  # every IMAP await has its own limit: a dropped link must never hang the watcher
MAX_BACKOFF = 60.0
# Messages worked on at once, at most, and the bytes of them held at once, at most (a bigger message alone).
WINDOW = SIDE_BY_SIDE
WINDOW_BYTES = 4 * 1024 * 1024
TOP_UP = 8  # places free before more are claimed and fetched: one size, claim and fetch fills them all
FILE_AT = 8  # settled messages are filed this many at a time (fewer when nothing else is being worked on)
SETTLE_SECONDS = 5.0  # how soon a person's release or discard is reflected in the Quarantine folder, at most
_UID = re.compile(rb"\bUID (\d+)")
_SIZE = re.compile(rb"\bRFC822\.SIZE (\d+)")
_RESPONSE = re.compile(rb"^\d+ FETCH \(")
_FROM = re.compile(rb"^From:([^\r\n]*)", re.IGNORECASE | re.MULTILINE)

Handler = Callable[[bytes], Awaitable[Outcome]]


def label(inbound_id: int) -> str:
    """The IMAP keyword that ties a quarantined message in the mailbox to its record."""
    return f"gateway-{inbound_id}"


class Settled(NamedTuple):
    """What a message settled as, and its record: where it is filed."""

    settled_as: str
    inbound_id: int | None


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
        folders: dict[str, str] = {OutcomeKind.REJECTED: self.rejected, OutcomeKind.QUARANTINED: self.quarantine}
        return folders.get(settled_as, self.processed)


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
        self._quarantine_settled = -SETTLE_SECONDS

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
        if self._settings.check_ms:  # Dovecot holds IDLE news back 0.5 s: look sooner than that
            period = min(period, self._settings.check_ms / 1000)
        idle = await self._timed(client.idle_start(timeout=period + COMMAND_TIMEOUT))
        push = asyncio.ensure_future(client.wait_server_push(timeout=period + COMMAND_TIMEOUT))
        stopping = asyncio.ensure_future(self._stop.wait())
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            await asyncio.wait({push, stopping, lost}, timeout=period, return_when=asyncio.FIRST_COMPLETED)
            if client.has_pending_idle() and not self._lost.is_set():
                client.idle_done()
            # A server going down pushes BYE and then closes: the IDLE never completes, so wait for either.
            await asyncio.wait({idle, lost}, timeout=COMMAND_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (push, stopping, lost):
                task.cancel()
            if push.done() and not push.cancelled():
                push.exception()  # retrieved: a push wait that timed out is no error
        if self._lost.is_set() or not idle.done():
            idle.cancel()
            raise MailboxError("the server closed the connection")

    async def catch_up(self, client: aioimaplib.IMAP4, uidvalidity: int) -> bool:
        """Every message in the folder now, oldest first: processed unless already, then moved to its folder.
        True when there was anything to do.

        A sliding window: up to WINDOW messages are worked on at once, so that one message's gpg runs while
        another's Python does. Once TOP_UP places are free, as many more as there is room for are claimed and
        fetched while the rest are worked on, with nothing standing idle between batches. What has settled is
        filed FILE_AT at a time. Each message still ends in exactly one outcome: the pipeline records each by
        itself, and the claims keep another gateway off them meanwhile."""
        response = await self._ok(client.uid_search("ALL"), "UID SEARCH")
        pending = deque(sorted(int(word) for word in _text(response.lines).split() if word.isdigit()))
        work = _Window(self._handle, self._stop)
        worked = False
        try:
            while True:
                going = work.failure is None and not self._stop.is_set()
                if pending and going and work.wants_more():
                    await self._top_up(client, uidvalidity, pending, work)
                if work.settled and (len(work.settled) >= FILE_AT or not work.running):
                    await self._file_settled(client, uidvalidity, work)
                    worked = True
                if not work.running:
                    if pending and going:
                        continue
                    break
                await work.next_done()
        except asyncio.CancelledError:
            work.cancel()
            raise
        finally:  # even when the link dropped: what was decided is remembered, and filed next time
            await work.wait()
            await self._remember(uidvalidity, work.outcomes)
        if work.failure is not None:
            raise work.failure  # what was done is filed; the rest waits for the next round, after the backoff
        now = asyncio.get_running_loop().time()
        if worked or now - self._quarantine_settled >= SETTLE_SECONDS:
            self._quarantine_settled = now
            await self.settle_quarantine(client, uidvalidity)
        return worked

    async def _top_up(self, client: aioimaplib.IMAP4, uidvalidity: int, pending: deque[int], work: _Window) -> None:
        """The next messages, as many as the window has room for (by count and by bytes): claimed, fetched and
        started. Only what is taken is claimed; the rest goes back to wait for room, free for another gateway."""
        chunk = [pending.popleft() for _ in range(min(len(pending), WINDOW - len(work.running)))]
        settled = await self._settled(uidvalidity, chunk)
        work.settled.update(settled)  # decided before (by a gateway that died before filing them): filed only
        unsettled = [uid for uid in chunk if uid not in settled]
        sizes = await self._sizes(client, unsettled) if unsettled else {}
        present = [uid for uid in unsettled if uid in sizes]  # the rest were expunged since the search
        budget, taken = WINDOW_BYTES - work.bytes, 0
        for uid in present:  # a message bigger than the budget waits for room, or goes alone
            if sizes[uid] > budget and (taken or work.running):
                break
            budget -= sizes[uid]
            taken += 1
        pending.extendleft(reversed(present[taken:]))
        work.next_size = sizes[present[taken]] if taken < len(present) else 0
        mine = await self._claim(uidvalidity, present[:taken]) if taken else []
        if not mine:
            return  # nothing to take, or another gateway on this mailbox is working on it and will file it
        fetched = await self._fetch(client, mine)
        if len(fetched) < len(mine):  # listed, sized, yet not returned: never skipped in silence
            missing = _set([uid for uid in mine if uid not in fetched])
            work.failure = work.failure or MailboxError(f"UID FETCH {missing} returned no message")
        for uid, raw in fetched.items():
            work.start(uid, raw, sizes[uid])

    async def _file_settled(self, client: aioimaplib.IMAP4, uidvalidity: int, work: _Window) -> None:
        """Remember what the window has decided, then file everything settled."""
        await self._remember(uidvalidity, work.outcomes)
        work.outcomes = {}
        settled, work.settled = work.settled, {}
        await self._file(client, uidvalidity, settled)

    async def _file(self, client: aioimaplib.IMAP4, uidvalidity: int, settled: dict[int, Settled]) -> None:
        """Each settled message to its outcome's folder: one move per folder."""
        by_folder: dict[str, list[int]] = {}
        for uid, (settled_as, inbound_id) in sorted(settled.items()):
            if settled_as == OutcomeKind.QUARANTINED and inbound_id is not None:
                # Labelled with its record, so a release or discard later finds it in the Quarantine folder. A
                # server that refuses keywords still gets it filed: a person then moves it by hand.
                labelled = await self._timed(client.uid("store", str(uid), "+FLAGS.SILENT", f"({label(inbound_id)})"))
                if labelled.result != "OK":
                    log.warning("quarantined message %s could not be labelled: %s", uid, labelled.result)
            by_folder.setdefault(self.folders.for_outcome(settled_as), []).append(uid)
        for folder, uids in by_folder.items():
            await self._move(client, uids, folder)
            await self._moved(uidvalidity, uids)  # at once: should the next move fail, these are known moved

    async def settle_quarantine(self, client: aioimaplib.IMAP4, uidvalidity: int) -> None:
        """Make the Quarantine folder agree with the database: what a person released or discarded leaves it."""
        async with self._db.transaction(write=False) as session:
            rows = (
                await session.execute(
                    select(MailboxProgress, QuarantinedMessage.status, InboundMessage.outcome)
                    .join(QuarantinedMessage, QuarantinedMessage.inbound_id == MailboxProgress.inbound_id)
                    .join(InboundMessage, InboundMessage.id == MailboxProgress.inbound_id)
                    .where(
                        MailboxProgress.folder == self.folders.inbox,
                        MailboxProgress.settled_as == OutcomeKind.QUARANTINED,
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
                settled = OutcomeKind.REJECTED if status == "discarded" else outcome
                found = await self._ok(client.uid_search(f"KEYWORD {label(progress.inbound_id or 0)}"), "UID SEARCH")
                uids = [int(word) for word in _text(found.lines).split() if word.isdigit()]
                if uids:
                    await self._move(client, uids, self.folders.for_outcome(settled))
                async with self._db.transaction() as session:
                    row = await session.get(MailboxProgress, (progress.folder, progress.uidvalidity, progress.uid))
                    if row is not None:
                        row.settled_as = settled
        finally:
            if await self._select(client) != uidvalidity:  # its UIDs now name other messages: start again
                raise MailboxError(f"the UIDVALIDITY of {self.folders.inbox} changed")

    async def _sizes(self, client: aioimaplib.IMAP4, uids: list[int]) -> dict[int, int]:
        """Each message's size by UID, so that the window never holds more than WINDOW_BYTES of mail; a message
        expunged meanwhile is not there."""
        response = await self._ok(client.uid("fetch", _set(uids), "(UID RFC822.SIZE)"), "UID FETCH RFC822.SIZE")
        sizes: dict[int, int] = {}
        for line in response.lines:
            text = bytes(line) if isinstance(line, bytes | bytearray) else b""
            named, size = _UID.search(text), _SIZE.search(text)
            if named and size:
                sizes[int(named[1])] = int(size[1])
        return {uid: sizes[uid] for uid in uids if uid in sizes}

    async def _fetch(self, client: aioimaplib.IMAP4, uids: list[int]) -> dict[int, bytes]:
        """The raw messages by UID, in UID order; a message expunged meanwhile is simply not there."""
        # BODY.PEEK leaves \\Seen alone: flags are the mailbox owner's, progress is ours (in the database).
        response = await self._ok(client.uid("fetch", _set(uids), "(UID BODY.PEEK[])"), f"UID FETCH {_set(uids)}")
        wanted = set(uids)
        found: dict[int, bytes] = {}
        uid: int | None = None  # of the FETCH response being read: each literal belongs to its own response
        literal: bytes | None = None
        for line in response.lines:
            if isinstance(line, bytearray):  # a message's bytes: its UID came before them, or comes after
                if uid is not None:
                    found.setdefault(uid, bytes(line))
                else:
                    literal = bytes(line)
                continue
            text = bytes(line) if isinstance(line, bytes) else b""
            named = _UID.search(text)
            if _RESPONSE.match(text):  # a new response (perhaps an unsolicited one): nothing carries over
                uid, literal = (int(named[1]) if named else None), None
            elif named is not None and literal is not None and uid is None:
                found.setdefault(int(named[1]), literal)
                literal = None
        return {uid: found[uid] for uid in sorted(found) if uid in wanted}

    async def _move(self, client: aioimaplib.IMAP4, uids: list[int], folder: str) -> None:
        which = _set(uids)
        if client.has_capability("MOVE"):
            await self._ok(client.uid("move", which, folder), f"UID MOVE {which}")
            return
        await self._ok(client.uid("copy", which, folder), f"UID COPY {which}")
        await self._ok(client.uid("store", which, "+FLAGS.SILENT", r"(\Deleted)"), f"UID STORE {which}")
        if client.has_capability("UIDPLUS"):
            await self._ok(client.uid("expunge", which), f"UID EXPUNGE {which}")
        else:
            await self._ok(client.expunge(), "EXPUNGE")

    def _these(
        self, model: type[MailboxProgress] | type[MailboxClaim], uidvalidity: int, uids: list[int]
    ) -> tuple[ColumnElement[bool], ...]:
        """Where a progress or claim row is one of these messages of the watched folder."""
        return (model.folder == self.folders.inbox, model.uidvalidity == uidvalidity, model.uid.in_(uids))

    async def _settled(self, uidvalidity: int, uids: list[int]) -> dict[int, Settled]:
        async with self._db.transaction(write=False) as session:
            rows = await session.execute(
                select(MailboxProgress.uid, MailboxProgress.settled_as, MailboxProgress.inbound_id).where(
                    *self._these(MailboxProgress, uidvalidity, uids)
                )
            )
            return {row.uid: Settled(row.settled_as, row.inbound_id) for row in rows}

    async def _remember(self, uidvalidity: int, outcomes: dict[int, Outcome]) -> None:
        if not outcomes:
            return
        async with self._db.transaction(ahead=True) as session:
            known = set(
                (
                    await session.execute(
                        select(MailboxProgress.uid).where(*self._these(MailboxProgress, uidvalidity, list(outcomes)))
                    )
                ).scalars()
            )
            session.add_all(
                MailboxProgress(
                    folder=self.folders.inbox,
                    uidvalidity=uidvalidity,
                    uid=uid,
                    inbound_id=outcome.inbound_id,
                    settled_as=outcome.settled_as,
                    moved=False,
                    processed_at=self._clock(),
                )
                for uid, outcome in outcomes.items()
                if uid not in known
            )

    async def _claim(self, uidvalidity: int, uids: list[int]) -> list[int]:
        """Take these messages for this gateway, except those another holds whose lease has not run out."""
        now = self._clock()
        async with self._db.transaction(ahead=True) as session:
            claims = {
                claim.uid: claim
                for claim in (
                    await session.execute(select(MailboxClaim).where(*self._these(MailboxClaim, uidvalidity, uids)))
                ).scalars()
            }
            mine = []
            for uid in uids:
                claim = claims.get(uid)
                if claim is not None and claim.owner != self.owner and claim.until > now:
                    continue  # another gateway on this mailbox is working on it, and will file it
                if claim is None:
                    session.add(
                        MailboxClaim(
                            folder=self.folders.inbox, uidvalidity=uidvalidity, uid=uid, owner=self.owner,
                            until=now + CLAIM_LEASE,
                        )
                    )  # fmt: skip
                else:  # ours, or left by a gateway that died holding it
                    claim.owner, claim.until = self.owner, now + CLAIM_LEASE
                mine.append(uid)
            return mine

    async def _moved(self, uidvalidity: int, uids: list[int]) -> None:
        async with self._db.transaction(ahead=True) as session:
            moved = update(MailboxProgress).where(*self._these(MailboxProgress, uidvalidity, uids)).values(moved=True)
            await session.execute(moved)
            await session.execute(delete(MailboxClaim).where(*self._these(MailboxClaim, uidvalidity, uids)))


class _Window:
    """The messages being worked on: a task each, one sender's messages chained so that they go in order (its
    daily limit and its subscriptions then read as they would one at a time); what they settled as."""

    def __init__(self, handle: Handler, stop: asyncio.Event) -> None:
        self._handle = handle
        self._stop = stop
        self.running: dict[asyncio.Task[Outcome | None], tuple[int, int, str]] = {}  # task: uid, size, sender
        self._lanes: dict[str, asyncio.Task[Outcome | None]] = {}  # each sender's last message
        self.bytes = 0
        self.outcomes: dict[int, Outcome] = {}  # decided, not yet remembered
        self.settled: dict[int, Settled] = {}  # decided, not yet filed
        self.failure: BaseException | None = None  # the first; no more is started after it
        self.next_size = 0  # of the next message, when it did not fit: no top-up until it does

    def wants_more(self) -> bool:
        """Room for a top-up: nothing running, or TOP_UP places and half the bytes free (and room for the next
        message, if it did not fit last time)."""
        free = WINDOW_BYTES - self.bytes
        room = WINDOW - len(self.running) >= TOP_UP and free >= max(WINDOW_BYTES // 2, self.next_size)
        return not self.running or room

    def start(self, uid: int, raw: bytes, size: int) -> None:
        sender = _from_line(raw)
        task = asyncio.create_task(self._after(self._lanes.get(sender), raw))
        self.running[task] = (uid, size, sender)
        self._lanes[sender] = task
        self.bytes += size

    async def _after(self, before: asyncio.Task[Outcome | None] | None, raw: bytes) -> Outcome | None:
        """The message's outcome, once the same sender's message before it has one; None, left for the next
        round, when that one failed or the gateway is stopping meanwhile."""
        if before is not None:
            await asyncio.wait({before})
            if before.cancelled() or before.exception() is not None or before.result() is None:
                return None
            if self._stop.is_set():  # a long chain must not hold a shutdown up: the rest wait for the next start
                return None
        return await self._handle(raw)

    async def next_done(self) -> None:
        done, _ = await asyncio.wait(self.running, return_when=asyncio.FIRST_COMPLETED)
        self._collect(done)

    def _collect(self, done: set[asyncio.Task[Outcome | None]]) -> None:
        for task in done:
            uid, size, sender = self.running.pop(task)
            self.bytes -= size
            if self._lanes.get(sender) is task:
                del self._lanes[sender]
            if task.cancelled():  # by cancel(), as the watcher itself is being cancelled
                self.failure = self.failure or MailboxError("a message's work was cancelled")
            elif (exc := task.exception()) is not None:
                self.failure = self.failure or exc
            elif (outcome := task.result()) is not None:
                self.outcomes[uid] = outcome
                self.settled[uid] = Settled(outcome.settled_as, outcome.inbound_id)

    def cancel(self) -> None:
        for task in self.running:
            task.cancel()

    async def wait(self) -> None:
        """Until every message being worked on has ended, as an outcome or a failure."""
        if self.running:
            done, _ = await asyncio.wait(self.running)
            self._collect(done)


def _from_line(raw: bytes) -> str:
    """The From address, roughly, to schedule by (never to decide by): one sender's messages go in order."""
    found = _FROM.search(raw, 0, 65_536)
    text = found[1].decode("utf-8", "replace") if found else ""
    return (parseaddr(text)[1] or text).strip().lower()


def _set(uids: list[int]) -> str:
    """An IMAP UID set: 3,5,6."""
    return ",".join(str(uid) for uid in uids)
