"""Where each message is filed: its outcome's folder, and out of Quarantine once a person releases or discards it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import structlog

from gateway.config import ImapSettings
from gateway.inbound.imap import Connection, MailboxError
from gateway.inbound.ledger import Ledger, Settled
from gateway.values import OutcomeKind

log = structlog.get_logger("gateway.inbound.filing")

SETTLE_SECONDS = 5.0  # how soon a person's release or discard is reflected in the Quarantine folder, at most


def label(inbound_id: int) -> str:
    """The IMAP keyword that ties a quarantined message in the mailbox to its record."""
    return f"gateway-{inbound_id}"


@dataclass(frozen=True)
class Folders:
    """The watched folder, and the folders its messages are filed in by outcome."""

    inbox: str
    processed: str
    rejected: str
    quarantine: str

    @classmethod
    def of(cls, settings: ImapSettings) -> Folders:
        return cls(settings.folder, settings.processed_folder, settings.rejected_folder, settings.quarantine_folder)

    def filed_in(self) -> tuple[str, ...]:
        """Every folder a message may be filed in."""
        return (self.processed, self.rejected, self.quarantine)

    def for_outcome(self, settled_as: str) -> str:
        folders: dict[str, str] = {OutcomeKind.REJECTED: self.rejected, OutcomeKind.QUARANTINED: self.quarantine}
        return folders.get(settled_as, self.processed)


class Filing:
    """Moves settled messages out of the watched folder, and keeps the Quarantine folder in step with the
    database; the ledger hears of every move as soon as it is made."""

    def __init__(self, folders: Folders, ledger: Ledger) -> None:
        self.folders = folders
        self._ledger = ledger
        self._quarantine_settled = -SETTLE_SECONDS

    async def file(self, link: Connection, uidvalidity: int, settled: dict[int, Settled]) -> None:
        """Each settled message to its outcome's folder: one move per folder."""
        by_folder: dict[str, list[int]] = {}
        for uid, message in sorted(settled.items()):
            if message.settled_as == OutcomeKind.QUARANTINED and message.inbound_id is not None:
                # Labelled with its record, so a release or discard later finds it in the Quarantine folder. A
                # server that refuses keywords still gets it filed: a person then moves it by hand.
                result = await link.add_keyword(uid, label(message.inbound_id))
                if result != "OK":
                    log.warning("quarantined message could not be labelled", uid=uid, result=result)
            by_folder.setdefault(self.folders.for_outcome(message.settled_as), []).append(uid)
        for folder, uids in by_folder.items():
            await link.move(uids, folder)
            await self._ledger.moved(uidvalidity, uids)  # at once: should the next move fail, these are known moved

    async def settle_quarantine(self, link: Connection, uidvalidity: int, *, worked: bool) -> None:
        """Make the Quarantine folder agree with the database: what a person released or discarded leaves it.
        Looked at after any round that filed something, and otherwise every SETTLE_SECONDS."""
        now = asyncio.get_running_loop().time()
        if not worked and now - self._quarantine_settled < SETTLE_SECONDS:
            return
        self._quarantine_settled = now
        reviewed = await self._ledger.reviewed()
        if not reviewed:
            return  # the usual case: no IMAP work at all
        await link.select(self.folders.quarantine)
        try:
            for message in reviewed:
                # A discarded message goes where unanswered mail goes; a released one where its new outcome does.
                settled = OutcomeKind.REJECTED if message.status == "discarded" else message.outcome
                uids = await link.search(f"KEYWORD {label(message.inbound_id or 0)}")
                if uids:
                    await link.move(uids, self.folders.for_outcome(settled))
                await self._ledger.refiled(message, settled)
        finally:
            if (
                await link.select_watched(self.folders.inbox) != uidvalidity
            ):  # its UIDs now name other messages: start again
                raise MailboxError(f"the UIDVALIDITY of {self.folders.inbox} changed")
