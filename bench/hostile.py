"""What hostile header shapes at the size limits cost before a sender is authenticated: prints each shape's time,
the worst per-message time and the longest event-loop stall; asserts nothing. S/MIME bodies too: CMS nested as
deep as the message limit allows, read before anything is verified.

    .venv/bin/python -m bench.hostile [--cap SECONDS]

Each shape (an obsolete local part of dots and atoms, a long run without "@", deep comments, a long quoted
string, many encoded words: in From, Content-Type, Message-ID or Authentication-Results, each filling the
header block up to the 256 kB `max_header_bytes`; and a body of parts with hostile Content-Type fields) runs in
a child process of its own, on an event loop with a ticker task that records the longest gap between its ticks,
through the steps `process()` and `decide()` take before anything is authenticated: arrive, too_big, parse,
unreadable_headers, automatic_mail, sender_of, claims, sender_header_problem, dmarc_pass, and for S/MIME the
layer and the content cipher (gateway/smime/mime.py, der.py), which run before openssl verifies anything. A child still
running after --cap seconds is killed and reported as "> cap".
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import json
import subprocess
import sys
import time
from collections.abc import Callable
from email import message_from_bytes

from gateway.authenticate import dmarc_pass, sender_of
from gateway.config import LimitSettings
from gateway.guard import automatic_mail, read_policy, sender_header_problem, too_big, unreadable_headers
from gateway.lookalike import claims
from gateway.pipeline import arrive
from gateway.smime.der import Malformed, content_cipher
from gateway.smime.mime import Enveloped, smime_layer

HEADER_LIMIT = 256 * 1024
POLICE = "police@westmercia.police.example"
BORDER = "mx.hmci.example"
FILL = (HEADER_LIMIT - 4096) * 70 // 74  # folded, with room for the other header fields


def fold(text: str, width: int = 70) -> str:
    """Short lines, each of which looks normal."""
    return "\r\n ".join(text[i : i + width] for i in range(0, len(text), width))


def obsolete_local_part(size: int) -> str:
    """Dots and atoms, folded: about `size` bytes."""
    return fold(".".join(["a"] * (size * 70 // 146)))


def message(fields: str, body: str = "Request: disclosure\r\n") -> bytes:
    head = f"Subject: register request\r\nMessage-ID: <bench@attacker.example>\r\n{fields}"
    return (head + "\r\n" + body).encode()


def from_police(extra: str) -> str:
    return f"From: {POLICE}\r\n{extra}"


SMIME_DER = 6 * 1024 * 1024  # base64 of it stays within the 10 MB max_message_bytes


def smime(smime_type: str, der: bytes) -> bytes:
    """An opaque S/MIME part from the police address carrying `der`, base64 in lines of 76."""
    encoded = base64.encodebytes(der).decode().replace("\n", "\r\n")
    fields = f"MIME-Version: 1.0\r\nContent-Type: application/pkcs7-mime; smime-type={smime_type}\r\n"
    return message(from_police(fields + "Content-Transfer-Encoding: base64\r\n"), encoded)


ENVELOPED = bytes.fromhex("06092a864886f70d010703")  # id-envelopedData


def shapes() -> dict[str, bytes]:
    size = FILL
    words = " ".join(["=?utf-8?q?a=C3=A9?="] * (size // 20))
    comments = "(" * (size // 4) + ")" * (size // 4)
    part = "--p\r\nContent-Type: " + obsolete_local_part(1000) + "\r\n\r\nx\r\n"
    return {
        "From: obsolete local part": message(f"From: {obsolete_local_part(size)}@attacker.example\r\n"),
        "From: run without @": message(f"From: {'x' * size}\r\n"),
        "From: deep comments": message(f"From: {fold(comments)} evil@attacker.example\r\n"),
        "From: long quoted string": message(f'From: "{fold("q" * size)}" <evil@attacker.example>\r\n'),
        "From: many encoded words": message(f"From: {fold(words, 76)} <evil@attacker.example>\r\n"),
        "Reply-To: obsolete local part": message(
            f"From: evil@attacker.example\r\nReply-To: {obsolete_local_part(size)}@x\r\n"
        ),
        "Content-Type: obsolete local part": message(
            from_police(f"Content-Type: text/plain; a={obsolete_local_part(size)}\r\n")
        ),
        "Message-ID: obsolete local part": message(
            from_police(f"X-Id: 1\r\nMessage-ID: <{obsolete_local_part(size)}@x>\r\n")
        ),
        "Authentication-Results: deep comments": message(
            from_police(f"Authentication-Results: {BORDER}; dmarc=pass {fold(comments)} header.from=x\r\n")
        ),
        "Authentication-Results: long quoted string": message(
            from_police(f'Authentication-Results: {BORDER}; spf=pass smtp.mailfrom="{fold("q" * size)}"@x\r\n')
        ),
        "Authentication-Results: many encoded words": message(
            from_police(f"Authentication-Results: {BORDER}; spf=pass ({fold(words, 76)})\r\n")
        ),
        # Just within the bounds the fix puts on each field: what is still parsed, at its worst.
        "address fields at their bounds, obsolete local parts": message(
            "".join(
                f"{name}: {obsolete_local_part(bound - 40)}@attacker.example\r\n"
                for name, bound in (("From", 1024), ("To", 2048))
            )
        ),
        "Authentication-Results of 16 kB, deep comments": message(
            from_police(
                f"Authentication-Results: {BORDER}; dmarc=pass {fold(comments[: 15 * 512] + comments[-15 * 512 :])}\r\n"
            )
        ),
        "Authentication-Results of 16 kB, quoted strings": message(
            from_police(f'Authentication-Results: {BORDER}; spf=pass smtp.mailfrom="{fold("q;" * 7500)}"@x\r\n')
        ),
        "7 parts, each Content-Type 1 kB of obsolete local part": message(
            from_police('MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="p"\r\n'),
            ("--p\r\nContent-Type: text/plain; a=" + obsolete_local_part(960) + "\r\n\r\nx\r\n") * 7 + "--p--\r\n",
        ),
        "150 parts, each Content-Type an obsolete local part": message(
            from_police('MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="p"\r\n'),
            part * 150 + "--p--\r\n",
        ),
        # BER's indefinite lengths nest without bound: three million levels in 6 MB.
        "S/MIME signed-data: 6 MB of nested indefinite lengths": smime("signed-data", b"\x30\x80" * (SMIME_DER // 2)),
        "S/MIME enveloped-data: its cipher under 6 MB of nesting": smime(
            "enveloped-data",
            b"\x30\x80" + ENVELOPED + b"\xa0\x80\x30\x80\x02\x01\x00" + b"\x31\x80" * (SMIME_DER // 2),
        ),
    }


def steps(raw: bytes) -> list[tuple[str, Callable[[], object]]]:
    """The steps before authentication, in the order process() and decide() take them."""
    parsed: dict[str, object] = {}

    def parse() -> object:
        parsed["message"] = message_from_bytes(raw, policy=read_policy())
        return None

    def on_message(step: Callable[..., object], *args: object, **kwargs: object) -> Callable[[], object]:
        return lambda: step(parsed["message"], *args, **kwargs)

    return [
        ("arrive", lambda: arrive(raw, "bench", dt.datetime(2026, 1, 1, tzinfo=dt.UTC), HEADER_LIMIT)),
        ("too_big", lambda: too_big(raw, LimitSettings())),
        ("parse", parse),
        ("unreadable_headers", on_message(unreadable_headers)),
        ("automatic_mail", on_message(automatic_mail)),
        ("sender_of", on_message(sender_of)),
        ("claims", on_message(claims, [POLICE], sender="evil@attacker.example")),
        ("sender_header_problem", on_message(sender_header_problem, POLICE)),
        ("dmarc_pass", on_message(dmarc_pass, BORDER, "westmercia.police.example")),
        ("smime_layer", on_message(lambda message: parsed.update(layer=smime_layer(raw, message)))),
        ("content_cipher", lambda: _cipher(parsed.get("layer"))),
    ]


def _cipher(layer: object) -> object:
    """What is read of an encrypted request before openssl decrypts it: its content cipher."""
    if not isinstance(layer, Enveloped):
        return None
    try:
        return content_cipher(layer.enveloped)
    except Malformed:
        return None


async def measure(raw: bytes) -> dict[str, object]:
    """Seconds for all the steps, the longest gap between a ticker's ticks meanwhile, and where it stopped."""
    gap = 0.0
    running = True

    async def ticker() -> None:
        nonlocal gap
        last = time.perf_counter()
        while running:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gap, last = max(gap, now - last), now

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    start = time.perf_counter()
    stopped_at = ""
    slowest = (0.0, "")
    for name, step in steps(raw):
        await asyncio.sleep(0)  # as the pipeline's awaits between steps
        began = time.perf_counter()
        try:
            outcome = step()
        except Exception as exc:  # the pipeline records this as "processing failed"
            stopped_at = f"{name}: {type(exc).__name__}"
            break
        finally:
            slowest = max(slowest, (time.perf_counter() - began, name))
        if name == "too_big" and outcome is not None:
            stopped_at = f"too_big: {str(outcome)[:70]}"
            break
    seconds = time.perf_counter() - start
    await asyncio.sleep(0.01)
    running = False
    await task
    return {"seconds": seconds, "stall": gap, "stopped_at": stopped_at, "slowest": slowest[1]}


def child(name: str) -> None:
    sys.setrecursionlimit(1000)
    claims(message_from_bytes(b"From: a@b.example\r\n\r\n"), [POLICE], sender=None)  # the tables, loaded once
    print(json.dumps(asyncio.run(measure(shapes()[name]))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cap", type=float, default=60.0, help="seconds after which a shape is given up on")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        child(args.one)
        return
    worst_seconds = worst_stall = 0.0
    capped = False
    for name, raw in shapes().items():
        try:
            done = subprocess.run(
                [sys.executable, "-m", "bench.hostile", "--one", name],
                capture_output=True,
                check=True,
                timeout=args.cap,
            )
            report = json.loads(done.stdout)
            seconds, stall = float(report["seconds"]), float(report["stall"])
            shown = (
                f"{seconds * 1000:8.1f} ms, stall {stall * 1000:8.1f} ms (slowest: {report['slowest']}) "
                f"{report['stopped_at']}"
            )
        except subprocess.TimeoutExpired:
            seconds = stall = args.cap
            capped = True
            shown = f"> {args.cap:.0f} s (killed)"
        worst_seconds, worst_stall = max(worst_seconds, seconds), max(worst_stall, stall)
        print(f"{name:52} {len(raw):6} B {shown}", flush=True)
    more = "> " if capped else ""
    print(f"worst per-message time: {more}{worst_seconds * 1000:.1f} ms")
    print(f"longest event-loop stall: {more}{worst_stall * 1000:.1f} ms")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
