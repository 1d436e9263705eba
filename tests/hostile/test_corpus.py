"""Hostile mail through the real pipeline (support/hostile_corpus.py has the corpus): whatever arrives, no exception
escapes, the message ends in exactly one recorded outcome, no step of the pipeline breaks on it, and nothing is
disclosed, or answered at all, unless the message is authentic.

The small messages (the hand-written ones in tests/hostile/corpus/ and those made with the session's real keys) run
in-process, all of them against one `live` gateway per database, each with its own bytes and Message-ID; every
check looks at that message's own rows, and a test lists every message that broke a rule, not just the first.
The heavy ones (up to 10.5 MB, or a few hundred kB that open to 256 MiB) run on SQLite only, each in a child
process that is timed, measured and killed if it hangs.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.db.engine import create_database
from gateway.pipeline import process
from gateway.values import Outcome, OutcomeKind
from tests.support.gateway_cli import Gateway
from tests.support.hostile_corpus import (
    FILES,
    Expect,
    Heavy,
    Left,
    context,
    corpus_files,
    deflate_bomb,
    generated_cases,
    heavy_cases,
    left_behind,
    problems,
    trust_gateway,
    unlimited,
)
from tests.support.keys import AuthorityKeys

ROOT = Path(__file__).resolve().parents[2]
SECONDS = 10.0  # the most any one message may take
KILL_AFTER = 45.0  # a heavy message's child process is killed after this: a hang is a failure, not a stuck suite


async def run_all(gateway: Gateway, keys: AuthorityKeys, messages: list[tuple[str, bytes, Expect]]) -> list[str]:
    """Every message through the pipeline, in-process; what each did wrong, one line per message."""
    config = unlimited(load_config(gateway.config_path))
    db = create_database(config.database)
    failures: list[str] = []
    try:
        for name, raw, expect in messages:
            start = time.perf_counter()
            try:
                outcome = await process(context(config, db), raw, source="file")
            except Exception as exc:  # that is the finding; the other messages still run
                text = " ".join(str(exc).split())[:300]
                failures.append(f"{name}: {type(exc).__name__} escaped the pipeline: {text}")
                continue
            seconds = time.perf_counter() - start
            left = await left_behind(db, raw)
            found = problems(outcome, left, expect, keys.police.fingerprint)
            if seconds > SECONDS:
                found.append(f"the pipeline took {seconds:.1f} s (at most {SECONDS:.0f} s)")
            if found:
                failures.append(f"{name} ({expect.why}): " + "; ".join(found))
    finally:
        await db.close()
    return failures


def test_the_hand_written_hostile_messages(live: Gateway, keys: AuthorityKeys) -> None:
    files = corpus_files()
    assert sorted(FILES) == [path.name for path in files], "tests/hostile/corpus/ and FILES in hostile_corpus.py differ"
    failures = asyncio.run(run_all(live, keys, [(path.name, path.read_bytes(), FILES[path.name]) for path in files]))
    assert not failures, f"{len(failures)} of {len(files)} messages:\n" + "\n".join(failures)


def test_the_hostile_messages_made_with_real_keys(live: Gateway, keys: AuthorityKeys) -> None:
    trust_gateway(keys, live.ok("key", "export").encode())
    cases = generated_cases()
    made = [(case.name, case.make(keys, str(live.signing_key)), case.expect) for case in cases]
    failures = asyncio.run(run_all(live, keys, made))
    assert not failures, f"{len(failures)} of {len(cases)} messages:\n" + "\n".join(failures)


# ---------------------------------------------------------------- heavy: SQLite only, in a child process


def run_in_child(gateway: Gateway, messages: list[Path]) -> dict[str, dict[str, object]]:
    """Each message's report from the child (outcome, seconds, memory growth, or an error), by file name."""
    command = [sys.executable, "-m", "tests.support.hostile_corpus", str(gateway.config_path), str(KILL_AFTER)]
    done = subprocess.run(
        [*command, *map(str, messages)], cwd=ROOT, capture_output=True, check=False, timeout=KILL_AFTER * len(messages)
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    reports = [json.loads(line) for line in done.stdout.decode().splitlines() if line.startswith("{")]
    return {str(report.pop("message")): report for report in reports}


def judge(case: Heavy, raw: bytes, report: dict[str, object], left: Left, police_key: str) -> list[str]:
    if "error" in report:
        return [str(report["error"])]
    kind, reason, inbound_id = str(report["kind"]), str(report["reason"]), int(str(report["inbound_id"]))
    found = problems(
        Outcome(OutcomeKind(kind), reason, inbound_id, settled_as=str(report["settled_as"])),
        left,
        case.expect,
        police_key,
    )
    seconds, memory = float(str(report["seconds"])), float(str(report["memory_mib"]))
    print(f"{case.name}: {len(raw)} bytes, {kind} in {seconds:.2f} s, memory +{memory:.0f} MiB ({reason[:120]})")
    if seconds > case.seconds:
        found.append(f"the pipeline took {seconds:.1f} s (at most {case.seconds:.0f} s)")
    if memory > case.memory_mib:
        found.append(f"peak memory grew by {memory:.0f} MiB (at most {case.memory_mib} MiB)")
    return found


class TestHeavy:
    @pytest.fixture
    def database_url(self, tmp_path: Path) -> str:
        """SQLite only: what these test is the parser, gpg and the limits before them, not the database."""
        return f"sqlite:///{tmp_path / 'gateway.db'}"

    def test_the_heavy_hostile_messages_on_sqlite(self, live: Gateway, keys: AuthorityKeys, tmp_path: Path) -> None:
        trust_gateway(keys, live.ok("key", "export").encode())  # so that the bomb can be encrypted to it
        cases = heavy_cases()
        built: dict[str, bytes] = {}
        for case in cases:
            built[case.name] = case.build(keys, str(live.signing_key))
            (tmp_path / f"{case.name}.eml").write_bytes(built[case.name])
        reports = run_in_child(live, [tmp_path / f"{case.name}.eml" for case in cases])

        async def left_by_each() -> dict[str, Left]:
            db = create_database(load_config(live.config_path).database)
            try:
                return {name: await left_behind(db, raw) for name, raw in built.items()}
            finally:
                await db.close()

        left = asyncio.run(left_by_each())
        failures = []
        for case in cases:
            report = reports.get(f"{case.name}.eml", {"error": "the child did not report on it"})
            found = judge(case, built[case.name], report, left[case.name], keys.police.fingerprint)
            if found:
                failures.append(f"{case.name} ({case.expect.why}, {len(built[case.name])} bytes): " + "; ".join(found))
        assert not failures, f"{len(failures)} of {len(cases)} messages:\n" + "\n".join(failures)


def test_the_bomb_generator_makes_what_it_says() -> None:
    """The decompression bomb is hand-made deflate: check it opens to exactly the prefix and the copies."""
    prefix = b"Content-Type: text/plain\r\n\r\n" * 3000 + b" "  # more than one stored block
    for copies in (0, 1, 3, 4, 5, 1001):
        assert zlib.decompress(deflate_bomb(prefix, copies), -15) == prefix + b" " * (258 * copies)
    assert len(deflate_bomb(b" ", 4_000_000)) < 1_001_000  # a thousand bytes out per byte in
