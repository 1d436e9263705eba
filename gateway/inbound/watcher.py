"""The IMAP watcher: raw messages in from the secure mailbox, each moved to its outcome's folder afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ssl
from collections import deque
from collections.abc import Callable

import aioimaplib
import structlog

from gateway import metrics
from gateway.config import ImapSettings
from gateway.db.engine import Database
from gateway.inbound.filing import Filing, Folders
from gateway.inbound.imap import LINK_ERRORS, Connection, MailboxError, TokenNotAccepted, uid_set
from gateway.inbound.ledger import CLAIM_LEASE, Ledger
from gateway.inbound.window import Handler, Window
from gateway.oauth import TokenSource, TokenUnavailable

log = structlog.get_logger("gateway.inbound.watcher")

MAX_BACKOFF = 60.0
FILE_AT = 8  # settled messages are filed this many at a time (fewer when nothing else is being worked on)


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
        tokens: TokenSource | None = None,
    ) -> None:
        if (settings.oauth is None) != (tokens is None):
            raise ValueError("[imap.oauth] and a token source go together: the daemon's Tokens give it")
        self._settings = settings
        # With [imap.oauth], where the login's tokens come from (the daemon's, shared with the relay's login).
        self._tokens = tokens
        self._handle = handle
        self._stop = stop
        self._tls = tls_context
        self.folders = Folders.of(settings)
        self.ledger = Ledger(db, self.folders.inbox, clock=clock)
        self._filing = Filing(self.folders, self.ledger)
        self.connected = asyncio.Event()  # set while logged in and selected, for tests and health checks

    async def run(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            try:
                await self._session()
                backoff = 1.0
            except TokenUnavailable:
                # The provider's words are in the token source's error line, and on /healthz.
                self.connected.clear()
                log.warning("no access token for the mailbox; trying again", retry_in=backoff)
            except TokenNotAccepted:
                # The mailbox's words are in the token source's error line, and on /healthz.
                self.connected.clear()
                log.warning("the mailbox refused the access token; trying again with a new one", retry_in=backoff)
            except LINK_ERRORS as exc:
                self.connected.clear()
                metrics.IMAP_RECONNECTS.inc()
                log.warning("imap connection lost; reconnecting", retry_in=backoff, error=type(exc).__name__)
            except Exception as exc:
                self.connected.clear()
                log.error(  # noqa: TRY400 - no traceback: its text could quote the message or register data
                    "processing stopped; the message stays in the folder",
                    retry_in=backoff,
                    error=type(exc).__name__,
                )
            if not self._stop.is_set() and not self.connected.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    async def _session(self) -> None:
        link = await Connection.open(self._settings, self._tls, self._tokens)
        try:
            for folder in self.folders.filed_in():
                await link.create(folder)
            uidvalidity = await link.select_watched(self.folders.inbox)
            self.connected.set()
            while not self._stop.is_set():
                # Again until a search finds nothing to do: mail that came while we worked may have been announced
                # in the answer to a command, and IDLE would then never mention it.
                while await self.catch_up(link, uidvalidity) and not self._stop.is_set():
                    pass
                await link.wait(self._stop, idle=self._idle_period(), poll=self._settings.poll_seconds)
        finally:
            self.connected.clear()
            await link.logout()

    def _idle_period(self) -> float:
        # Never longer than a claim's lease: what a dead gateway on this mailbox left is looked at again by then.
        period = min(self._settings.idle_seconds, CLAIM_LEASE.total_seconds())
        if self._settings.check_ms:  # Dovecot holds IDLE news back 0.5 s: look sooner than that
            period = min(period, self._settings.check_ms / 1000)
        return period

    async def catch_up(self, link: Connection, uidvalidity: int) -> bool:
        """Every message in the folder now, oldest first: processed unless already, then moved to its folder.
        True when there was anything to do.

        A sliding window: up to WINDOW messages are worked on at once, so that one message's gpg runs while
        another's Python does. Once TOP_UP places are free, as many more as there is room for are claimed and
        fetched while the rest are worked on, with nothing standing idle between batches. What has settled is
        filed FILE_AT at a time. Each message still ends in exactly one outcome: the pipeline records each by
        itself, and the claims keep another gateway off them meanwhile."""
        pending = deque(sorted(await link.search("ALL")))
        work = Window(self._handle, self._stop)
        worked = False
        try:
            while True:
                going = work.failure is None and not self._stop.is_set()
                if pending and going and work.wants_more():
                    await self._top_up(link, uidvalidity, pending, work)
                if work.unfiled and (work.unfiled >= FILE_AT or not work.busy):
                    await self._file_settled(link, uidvalidity, work)
                    worked = True
                if not work.busy:
                    if pending and going:
                        continue
                    break
                await work.next_done()
        except asyncio.CancelledError:
            work.cancel()
            raise
        finally:  # even when the link dropped: what was decided is remembered, and filed next time
            await work.wait()
            await self.ledger.remember(uidvalidity, work.take_outcomes())
        if work.failure is not None:
            raise work.failure  # what was done is filed; the rest waits for the next round, after the backoff
        await self._filing.settle_quarantine(link, uidvalidity, worked=worked)
        return worked

    async def _top_up(self, link: Connection, uidvalidity: int, pending: deque[int], work: Window) -> None:
        """The next messages, as many as the window has room for (by count and by bytes): claimed, fetched and
        started. Only what is taken is claimed; the rest goes back to wait for room, free for another gateway."""
        chunk = [pending.popleft() for _ in range(min(len(pending), work.places()))]
        settled = await self.ledger.settled(uidvalidity, chunk)
        work.settled_before(settled)
        unsettled = [uid for uid in chunk if uid not in settled]
        sizes = await link.sizes(unsettled) if unsettled else {}
        present = [uid for uid in unsettled if uid in sizes]  # the rest were expunged since the search
        taken = work.fitting(present, sizes)
        pending.extendleft(reversed(present[len(taken) :]))
        mine = await self.ledger.claim(uidvalidity, taken) if taken else []
        if not mine:
            return  # nothing to take, or another gateway on this mailbox is working on it and will file it
        fetched = await link.fetch(mine)
        if len(fetched) < len(mine):  # listed, sized, yet not returned: never skipped in silence
            missing = uid_set([uid for uid in mine if uid not in fetched])
            work.fail(MailboxError(f"UID FETCH {missing} returned no message"))
        for uid, raw in fetched.items():
            work.start(uid, raw, sizes[uid])

    async def _file_settled(self, link: Connection, uidvalidity: int, work: Window) -> None:
        """Remember what the window has decided, then file everything settled."""
        await self.ledger.remember(uidvalidity, work.take_outcomes())
        await self._filing.file(link, uidvalidity, work.take_settled())

    async def _fetch(self, client: aioimaplib.IMAP4, uids: list[int]) -> dict[int, bytes]:
        """What `Connection.fetch` returns over this client: kept so that a test can feed the parsing a scripted
        server's answer through the watcher, as before the IMAP edge had a module of its own."""
        return await Connection(client).fetch(uids)
