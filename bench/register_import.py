"""Prints how fast the register import is: 5,000 homes through the real `gateway register import` command.

Run: .venv/bin/python -m bench.register_import [--homes N] [--postgres URL]
Target (issue 2): a 5,000-home import in under 10 seconds. This prints figures; it asserts nothing,
because timings on shared machines are not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg

from gateway.dev.sample import write_sample


def run(config: Path, *argv: str) -> float:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "gateway", "--config", str(config), *argv], check=True, stdout=subprocess.DEVNULL
    )
    return time.perf_counter() - started


def bench(label: str, url: str, directory: Path, homes: Path, enforcement: Path) -> None:
    config = directory / f"{label}.toml"
    config.write_text(
        '[gateway]\naddress = "requests@hmci.example"\nadmin_address = "admin@hmci.example"\n'
        f'[database]\nurl = "{url}"\n[gpg]\nhome = "gnupg-{label}"\n'
    )
    run(config, "init", "--key-expiry", "1d")
    subprocess.run(["gpgconf", "--homedir", str(directory / f"gnupg-{label}"), "--kill", "all"], check=False)
    check = run(config, "register", "import", "--check", "--homes", str(homes), "--enforcement", str(enforcement))
    first = run(config, "register", "import", "--homes", str(homes), "--enforcement", str(enforcement))
    again = run(config, "register", "import", "--homes", str(homes), "--enforcement", str(enforcement))
    print(f"{label:10}  check only {check:5.2f} s   first import {first:5.2f} s   replacing import {again:5.2f} s")


async def _admin(dsn: str, statement: str) -> None:
    connection = await asyncpg.connect(dsn.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--homes", type=int, default=5000)
    parser.add_argument("--postgres", metavar="URL", help="also measure PostgreSQL (a database is created and dropped)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        started = time.perf_counter()
        sample = write_sample(directory / "register", args.homes)
        print(
            f"sample      {args.homes} homes, {sample.enforcement_actions} enforcement actions "
            f"written in {time.perf_counter() - started:.2f} s"
        )
        print("timings include starting Python and the gateway command (about 0.5 s)")
        bench("sqlite", f"sqlite:///{directory / 'bench.db'}", directory, sample.homes_path, sample.enforcement_path)
        if args.postgres:
            name = f"gateway_bench_{uuid.uuid4().hex[:8]}"
            asyncio.run(_admin(args.postgres, f'CREATE DATABASE "{name}"'))
            try:
                url = f"{args.postgres.rpartition('/')[0]}/{name}"
                bench("postgresql", url, directory, sample.homes_path, sample.enforcement_path)
            finally:
                asyncio.run(_admin(args.postgres, f'DROP DATABASE "{name}" WITH (FORCE)'))
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"peak memory of one gateway command: {peak:.0f} MiB; target: 5,000 homes imported in under 10 s")


if __name__ == "__main__":
    main()
