"""The sliding window of messages in flight: a few at once, bounded by count and bytes, one sender's in order."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from email.utils import parseaddr

from gateway.db.engine import SIDE_BY_SIDE
from gateway.inbound.imap import MailboxError
from gateway.inbound.ledger import Settled
from gateway.values import Outcome

# Messages worked on at once, at most, and the bytes of them held at once, at most (a bigger message alone).
WINDOW = SIDE_BY_SIDE
WINDOW_BYTES = 4 * 1024 * 1024
TOP_UP = 8  # places free before more are claimed and fetched: one size, claim and fetch fills them all
_FROM = re.compile(rb"^From:([^\r\n]*)", re.IGNORECASE | re.MULTILINE)

Handler = Callable[[bytes], Awaitable[Outcome]]


class Window:
    """The messages being worked on: a task each, one sender's messages chained so that they go in order (its
    daily limit and its subscriptions then read as they would one at a time); what they settled as."""

    def __init__(self, handle: Handler, stop: asyncio.Event) -> None:
        self._handle = handle
        self._stop = stop
        self._running: dict[asyncio.Task[Outcome | None], tuple[int, int, str]] = {}  # task: uid, size, sender
        self._lanes: dict[str, asyncio.Task[Outcome | None]] = {}  # each sender's last message
        self._bytes = 0
        self._outcomes: dict[int, Outcome] = {}  # decided, not yet remembered
        self._settled: dict[int, Settled] = {}  # decided, not yet filed
        self._next_size = 0  # of the next message, when it did not fit: no top-up until it does
        self.failure: BaseException | None = None  # the first; no more is started after it

    @property
    def busy(self) -> bool:
        return bool(self._running)

    @property
    def unfiled(self) -> int:
        """How many messages have settled and are not yet filed."""
        return len(self._settled)

    def wants_more(self) -> bool:
        """Room for a top-up: nothing running, or TOP_UP places and half the bytes free (and room for the next
        message, if it did not fit last time)."""
        free = WINDOW_BYTES - self._bytes
        room = WINDOW - len(self._running) >= TOP_UP and free >= max(WINDOW_BYTES // 2, self._next_size)
        return not self._running or room

    def places(self) -> int:
        """How many more messages may be worked on now, by count."""
        return WINDOW - len(self._running)

    def fitting(self, uids: list[int], sizes: dict[int, int]) -> list[int]:
        """The first of these messages that fit in the bytes free (one bigger than that goes alone, when nothing
        else is running); the size of the next is kept, so that no top-up comes before there is room for it."""
        budget, taken = WINDOW_BYTES - self._bytes, 0
        for uid in uids:
            if sizes[uid] > budget and (taken or self._running):
                break
            budget -= sizes[uid]
            taken += 1
        self._next_size = sizes[uids[taken]] if taken < len(uids) else 0
        return uids[:taken]

    def fail(self, error: BaseException) -> None:
        """Start nothing more; the first failure is the one raised once the window has drained."""
        self.failure = self.failure or error

    def settled_before(self, settled: dict[int, Settled]) -> None:
        """Messages decided in an earlier round (by a gateway that died before filing them): to be filed only."""
        self._settled.update(settled)

    def start(self, uid: int, raw: bytes, size: int) -> None:
        sender = _from_line(raw)
        task = asyncio.create_task(self._after(self._lanes.get(sender), raw))
        self._running[task] = (uid, size, sender)
        self._lanes[sender] = task
        self._bytes += size

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
        done, _ = await asyncio.wait(self._running, return_when=asyncio.FIRST_COMPLETED)
        self._collect(done)

    def _collect(self, done: set[asyncio.Task[Outcome | None]]) -> None:
        for task in done:
            uid, size, sender = self._running.pop(task)
            self._bytes -= size
            if self._lanes.get(sender) is task:
                del self._lanes[sender]
            if task.cancelled():  # by cancel(), as the watcher itself is being cancelled
                self.fail(MailboxError("a message's work was cancelled"))
            elif (exc := task.exception()) is not None:
                self.fail(exc)
            elif (outcome := task.result()) is not None:
                self._outcomes[uid] = outcome
                self._settled[uid] = Settled(outcome.settled_as, outcome.inbound_id)

    def take_outcomes(self) -> dict[int, Outcome]:
        """What was decided since last asked, to be remembered before anything is filed."""
        outcomes, self._outcomes = self._outcomes, {}
        return outcomes

    def take_settled(self) -> dict[int, Settled]:
        """What has settled since last asked, to be filed."""
        settled, self._settled = self._settled, {}
        return settled

    def cancel(self) -> None:
        for task in self._running:
            task.cancel()

    async def wait(self) -> None:
        """Until every message being worked on has ended, as an outcome or a failure."""
        if self._running:
            done, _ = await asyncio.wait(self._running)
            self._collect(done)


def _from_line(raw: bytes) -> str:
    """The From address, roughly, to schedule by (never to decide by): one sender's messages go in order."""
    found = _FROM.search(raw, 0, 65_536)
    text = found[1].decode("utf-8", "replace") if found else ""
    return (parseaddr(text)[1] or text).strip().lower()
