"""The IMAP edge: one logged-in session whose every command is time-limited, and the few commands the watcher uses."""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from collections.abc import Awaitable
from typing import Any

import aioimaplib

from gateway.config import ImapSettings
from gateway.oauth import TokenSource

COMMAND_TIMEOUT = 60.0  # every IMAP await has its own limit: a dropped link must never hang the watcher
_UID = re.compile(rb"\bUID (\d+)")
_SIZE = re.compile(rb"\bRFC822\.SIZE (\d+)")
_RESPONSE = re.compile(rb"^\d+ FETCH \(")
_CAPABILITY = re.compile(r"\[CAPABILITY ([^\]]*)\]")


class MailboxError(Exception):
    """The server said NO or BAD, or answered in a way the watcher cannot use: reconnect and try again."""


class TokenNotAccepted(MailboxError):
    """The server refused the OAuth access token at login: the next try brings a new one. Until a login succeeds,
    the token source reports it (on /healthz)."""


# What ends a session and is mended by reconnecting after a backoff; anything else is a failure of the work.
LINK_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    MailboxError,
    aioimaplib.Abort,
    aioimaplib.CommandTimeout,
)


class Connection:
    """An aioimaplib client, with each command's answer checked and cut short as soon as the link drops."""

    def __init__(self, client: aioimaplib.IMAP4) -> None:
        self._client = client
        self._lost = asyncio.Event()

    @classmethod
    async def open(
        cls, settings: ImapSettings, tls: ssl.SSLContext | None, tokens: TokenSource | None = None
    ) -> Connection:
        """Connected and logged in (with the password, or XOAUTH2 and a token from `tokens`), not yet selected.
        TokenUnavailable when there is no token to log in with, TokenNotAccepted when the server refuses it."""
        token = await tokens.token() if tokens else None  # before connecting: no link is left open without one
        if settings.tls == "tls":
            client: aioimaplib.IMAP4 = aioimaplib.IMAP4_SSL(
                host=settings.host, port=settings.port, timeout=COMMAND_TIMEOUT, ssl_context=tls
            )
        else:
            client = aioimaplib.IMAP4(host=settings.host, port=settings.port, timeout=COMMAND_TIMEOUT)
        link = cls(client)
        # Told at once when the link drops (IMAP4_SSL does not pass the callback on, so it is set here),
        # instead of finding out when an IDLE or a command times out.
        client.protocol.conn_lost_cb = lambda _exc: link._lost.set()
        try:
            await link._timed(client.wait_hello_from_server())
            if tokens is None or token is None:
                assert settings.password is not None  # noqa: S101 - the settings give a password or an OAuth client
                await link._ok(client.login(settings.username, settings.password.value), "LOGIN")
            else:
                await link._xoauth2(settings.username, token, tokens)
        except BaseException:
            await link.logout()  # a login refused (or cut short) leaves no session open behind it
            raise
        return link

    async def _xoauth2(self, username: str, token: str, tokens: TokenSource) -> None:
        client = self._client
        self._answer_sasl_challenges()
        response = await self._timed(client.xoauth2(username, token))
        if response.result != "OK":
            said = f"AUTHENTICATE XOAUTH2: {response.result} {_text(response.lines)[:200]}"
            await tokens.refused("the mailbox", said)  # not offered again, and on /healthz until a login succeeds
            raise TokenNotAccepted(said)
        tokens.accepted("the mailbox")
        # What the server can do once logged in (MOVE, UIDPLUS) is in its answer; aioimaplib reads it only after
        # LOGIN, and the greeting's list is the one from before.
        offered = _CAPABILITY.search(_text(response.lines))
        if offered:
            client.protocol.capabilities |= set(offered[1].split())
        else:
            await self._timed(client.protocol.capability())

    def _answer_sasl_challenges(self) -> None:
        """A server that refuses an XOAUTH2 token says why in a challenge (`+ <base64 JSON>`) and waits for the
        client's empty answer before its NO. aioimaplib has no way to answer it and would wait out the command's
        timeout: this sends the empty answer, so a refusal is known at once."""
        protocol = self._client.protocol
        plain = protocol._continuation

        def continuation(line: bytes) -> None:
            command = protocol.pending_sync_command
            if command is not None and command.name == "AUTHENTICATE":
                protocol.transport.write(b"\r\n")
                return
            plain(line)

        protocol._continuation = continuation

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

    async def create(self, folder: str) -> None:
        # NO means it exists already; anything worse shows up when a message is moved there.
        await self._timed(self._client.create(folder))

    async def select(self, folder: str) -> None:
        await self._ok(self._client.select(folder), f"SELECT {folder}")

    async def select_watched(self, folder: str) -> int:
        """Select the folder; its UIDVALIDITY, which says whether the UIDs remembered for it still hold."""
        response = await self._ok(self._client.select(folder), f"SELECT {folder}")
        match = re.search(r"UIDVALIDITY (\d+)", _text(response.lines))
        if match is None:
            raise MailboxError("the server reported no UIDVALIDITY")
        return int(match[1])

    async def search(self, criteria: str) -> list[int]:
        """The UIDs of the selected folder's messages that match, as the server listed them."""
        found = await self._ok(self._client.uid_search(criteria), "UID SEARCH")
        return [int(word) for word in _text(found.lines).split() if word.isdigit()]

    async def wait(self, stop: asyncio.Event, *, idle: float, poll: float) -> None:
        """Until the server pushes news, `idle` seconds pass (`poll` seconds, if the server cannot IDLE), or the
        gateway stops: a wake-up, never the truth."""
        client = self._client
        if not client.has_capability("IDLE"):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), poll)
            if self._lost.is_set():
                raise MailboxError("the server closed the connection")
            return
        started = await self._timed(client.idle_start(timeout=idle + COMMAND_TIMEOUT))
        push = asyncio.ensure_future(client.wait_server_push(timeout=idle + COMMAND_TIMEOUT))
        stopping = asyncio.ensure_future(stop.wait())
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            await asyncio.wait({push, stopping, lost}, timeout=idle, return_when=asyncio.FIRST_COMPLETED)
            if client.has_pending_idle() and not self._lost.is_set():
                client.idle_done()
            # A server going down pushes BYE and then closes: the IDLE never completes, so wait for either.
            await asyncio.wait({started, lost}, timeout=COMMAND_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (push, stopping, lost):
                task.cancel()
            if push.done() and not push.cancelled():
                push.exception()  # retrieved: a push wait that timed out is no error
        if self._lost.is_set() or not started.done():
            started.cancel()
            raise MailboxError("the server closed the connection")

    async def sizes(self, uids: list[int]) -> dict[int, int]:
        """Each message's size by UID; a message expunged meanwhile is not there."""
        response = await self._ok(
            self._client.uid("fetch", uid_set(uids), "(UID RFC822.SIZE)"), "UID FETCH RFC822.SIZE"
        )
        sizes: dict[int, int] = {}
        for line in response.lines:
            raw = bytes(line) if isinstance(line, bytes | bytearray) else b""
            named, size = _UID.search(raw), _SIZE.search(raw)
            if named and size:
                sizes[int(named[1])] = int(size[1])
        return {uid: sizes[uid] for uid in uids if uid in sizes}

    async def fetch(self, uids: list[int]) -> dict[int, bytes]:
        """The raw messages by UID, in UID order; a message expunged meanwhile is simply not there."""
        which = uid_set(uids)
        # BODY.PEEK leaves \\Seen alone: flags are the mailbox owner's, progress is ours (in the database).
        response = await self._ok(self._client.uid("fetch", which, "(UID BODY.PEEK[])"), f"UID FETCH {which}")
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
            raw = bytes(line) if isinstance(line, bytes) else b""
            named = _UID.search(raw)
            if _RESPONSE.match(raw):  # a new response (perhaps an unsolicited one): nothing carries over
                uid, literal = (int(named[1]) if named else None), None
            elif named is not None and literal is not None and uid is None:
                found.setdefault(int(named[1]), literal)
                literal = None
        return {uid: found[uid] for uid in sorted(found) if uid in wanted}

    async def add_keyword(self, uid: int, keyword: str) -> str:
        """The server's answer (OK, NO or BAD): some servers refuse keywords, and the caller decides what then."""
        stored = await self._timed(self._client.uid("store", str(uid), "+FLAGS.SILENT", f"({keyword})"))
        return str(stored.result)

    async def move(self, uids: list[int], folder: str) -> None:
        client, which = self._client, uid_set(uids)
        if client.has_capability("MOVE"):
            await self._ok(client.uid("move", which, folder), f"UID MOVE {which}")
            return
        await self._ok(client.uid("copy", which, folder), f"UID COPY {which}")
        await self._ok(client.uid("store", which, "+FLAGS.SILENT", r"(\Deleted)"), f"UID STORE {which}")
        if client.has_capability("UIDPLUS"):
            await self._ok(client.uid("expunge", which), f"UID EXPUNGE {which}")
        else:
            await self._ok(client.expunge(), "EXPUNGE")

    async def logout(self) -> None:
        # If the link is already gone there is nothing to log out of.
        with contextlib.suppress(OSError, TimeoutError, MailboxError, aioimaplib.Abort, aioimaplib.CommandTimeout):
            await self._timed(self._client.logout(), 5)


def _text(lines: list[Any]) -> str:
    """A response's lines as one string, to read a figure from or quote in an error."""
    return " ".join(bytes(line).decode("utf-8", "replace") for line in lines if isinstance(line, bytes | bytearray))


def uid_set(uids: list[int]) -> str:
    """An IMAP UID set: 3,5,6."""
    return ",".join(str(uid) for uid in uids)
