"""The gateway's speed, end to end, on real components: prints its figures, asserts nothing.

    .venv/bin/python -m bench.run [--requests 500] [--light 30] [--postgres URL]

It starts a Dovecot and an SMTP relay on loopback and a gateway (`gateway run`, its own process) with a
5,000-home sample register and 40 authorities (the 39 police forces and the Children's Commissioner), each
with its own real key. Then:
- burst: N requests signed by the police forces, appended to the mailbox as fast as IMAP takes them;
  requests per second until the relay accepted the last reply, latency from append to relay (p50, p95,
  p99), the daemon's CPU seconds per request (its gpg children included) and its peak RSS;
- the floor: what gpg alone spends on one request (verify its signature; sign and encrypt an extract of the
  same size), and the ratio of the daemon's CPU per request to it;
- light load: one request a second, latency percentiles;
- national: the Children's Commissioner asking for all of England, append to relay.
Targets (issue 6, 2-core machine): 25 requests/s in the burst, CPU per request at most 1.5 x the gpg floor,
p95 under 500 ms at light load, peak RSS under 150 MB, a national extract in under 2 s.
Needs the dev install (`scripts/test` makes it) and Dovecot (`apt-get install dovecot-imapd`).
"""

from __future__ import annotations

import argparse
import asyncio
import imaplib
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from pathlib import Path

from aiosmtpd.smtp import SMTP, Envelope, Session

from gateway.admin.reference import police_force_areas
from gateway.dev.dovecot import ImapServer, start_dovecot
from gateway.dev.sample import write_sample

GATEWAY = "register-requests@hmci.example"
ADMIN = "gateway-admin@hmci.example"
OCC = "register@occ.example"
HOMES = 5000


@dataclass
class Relay:
    """Records when each reply arrived, by the request it answers."""

    arrived: dict[str, float] = field(default_factory=dict)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        mail = message_from_bytes(bytes(envelope.original_content or b""), policy=policy.default)
        self.arrived.setdefault(str(mail.get("In-Reply-To", "")), time.perf_counter())
        return "250 2.0.0 Queued"


def gpg(home: Path, *args: str, data: bytes | None = None) -> bytes:
    command = ["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback", "--passphrase", "", *args]
    return subprocess.run(command, input=data, capture_output=True, check=True).stdout


def slug(name: str) -> str:
    return "".join(c for c in name.lower() if c.isalnum())[:30]


def police_address(force: str) -> str:
    return f"disclosures@{slug(force)}.police.example"


def signed_request(home: Path, signer: str, sender: str, message_id: str, area: str | None = None) -> bytes:
    body = "Request: disclosure\r\n" + (f"Area: {area}\r\n" if area else "") + "Purpose: Safeguarding children\r\n"
    first = f'Content-Type: text/plain; charset="utf-8"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n{body}'
    signature = gpg(home, "--armor", "--detach-sign", "--digest-algo", "SHA256", "--local-user", signer,
                    data=first.encode()).decode()  # fmt: skip
    boundary = "----=_bench"
    return (
        f"From: <{sender}>\r\nTo: {GATEWAY}\r\nSubject: request\r\nMessage-ID: {message_id}\r\nMIME-Version: 1.0\r\n"
        f'Content-Type: multipart/signed; micalg=pgp-sha256; protocol="application/pgp-signature"; '
        f'boundary="{boundary}"\r\n\r\n--{boundary}\r\n{first}\r\n--{boundary}\r\n'
        f"Content-Type: application/pgp-signature\r\n\r\n{signature}\r\n--{boundary}--\r\n"
    ).encode()


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def cpu_times(pid: int) -> tuple[float, float, float]:
    """The process's user and system CPU seconds, and its waited-for children's (its gpg calls), both kinds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick, (int(fields[13]) + int(fields[14])) / tick


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Bench:
    def __init__(self, directory: Path, database: str) -> None:
        self.directory = directory
        self.database = database
        self.keys = directory / "authority-keys"
        self.keys.mkdir(mode=0o700)
        self.config = directory / "gateway.toml"

    def gateway(self, *argv: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "gateway", "--config", str(self.config), *argv],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise SystemExit(f"gateway {' '.join(argv[:3])} failed: {result.stderr.strip()}")
        return result.stdout

    def write_config(self, extra: str = "") -> None:
        self.config.write_text(
            f'[gateway]\naddress = "{GATEWAY}"\nadmin_address = "{ADMIN}"\nrequire_second_admin = false\n'
            f'[database]\nurl = "{self.database}"\n[gpg]\nhome = "gnupg"\n{extra}'
            "[limits]\nanswers_per_day = 100000\nalerts_per_hour = 10000\n"
        )

    def set_up(self) -> dict[str, str]:
        """The register, the gateway's key and 40 authorities with keys of their own; returns signer by address."""
        self.write_config()
        out = self.gateway("init", "--actor", "bench")
        signing = out.split('signing_key = "')[1].split('"')[0] if 'signing_key = "' in out else ""
        self.write_config(f'signing_key = "{signing}"\n')
        sample = write_sample(self.directory / "register", HOMES, seed=6)
        self.gateway("register", "import", "--homes", str(sample.homes_path),
                     "--enforcement", str(sample.enforcement_path))  # fmt: skip
        signers: dict[str, str] = {}
        authorities: list[tuple[str, str, str, str | None]] = [
            (force, police_address(force), "police", force) for force in police_force_areas()
        ]
        authorities.append(("Office of the Children's Commissioner", OCC, "childrens-commissioner", None))
        for name, address, kind, area in authorities:
            gpg(self.keys, "--quick-gen-key", f"{name} <{address}>", "ed25519", "sign,cert", "1y")
            listing = gpg(self.keys, "--with-colons", "--list-keys", f"={name} <{address}>").decode()
            fingerprint = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr"))
            gpg(self.keys, "--quick-add-key", fingerprint, "cv25519", "encr", "1y")
            key = self.keys / f"{slug(name)}.asc"
            key.write_bytes(gpg(self.keys, "--armor", "--export", fingerprint))
            where = ["--area", area] if area else []
            self.gateway("authority", "add", "--name", name if kind != "police" else f"{name} Police",
                         "--kind", kind, *where, "--email", address, "--key", str(key))  # fmt: skip
            signers[address] = fingerprint
        return signers


def append(server: ImapServer, messages: list[bytes]) -> list[float]:
    """APPEND each message to INBOX as fast as the server takes them; returns when each went in."""
    client = imaplib.IMAP4(server.host, server.port)
    client.login(server.username, server.password)
    times = []
    for raw in messages:
        client.append("INBOX", None, None, raw)
        times.append(time.perf_counter())
    client.logout()
    return times


async def wait_for(relay: Relay, wanted: list[str], timeout: float) -> None:
    deadline = time.perf_counter() + timeout
    while not all(w in relay.arrived for w in wanted):
        if time.perf_counter() > deadline:
            missing = sum(w not in relay.arrived for w in wanted)
            raise SystemExit(f"{missing} replies did not arrive within {timeout:.0f} s")
        await asyncio.sleep(0.05)


def floor(bench: Bench, signers: dict[str, str], reps: int = 40) -> float:
    """CPU seconds gpg alone spends on one request: verify it, then sign and encrypt an extract of its size."""
    force = police_force_areas()[0]
    address = police_address(force)
    homes = (bench.directory / "register" / "homes.csv").read_text().splitlines()
    extract = "\r\n".join([homes[0], *(line for line in homes if force in line)]).encode()
    signed = bench.directory / "signed.txt"
    signed.write_bytes(b"Request: disclosure\r\nPurpose: Safeguarding children\r\n")
    signature = bench.directory / "signed.txt.asc"
    signature.write_bytes(gpg(bench.keys, "--armor", "--detach-sign", "--local-user", signers[address],
                              data=signed.read_bytes()))  # fmt: skip
    gateway_home = bench.directory / "gnupg"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    for _ in range(reps):
        gpg(gateway_home, "--verify", str(signature), str(signed))
        gpg(gateway_home, "--trust-model", "always", "--armor", "--sign", "--encrypt",
            "--recipient", signers[address], data=extract)  # fmt: skip
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)) / reps


async def measure_burst(
    bench: Bench, imap: ImapServer, relay: Relay, *, pid: int, burst: list[bytes], signers: dict[str, str]
) -> None:
    cpu_before = cpu_times(pid)
    started = time.perf_counter()
    appended = await asyncio.to_thread(append, imap, burst)
    ids = [f"<burst{i}@bench.example>" for i in range(len(burst))]
    await wait_for(relay, ids, 600)
    elapsed = max(relay.arrived[i] for i in ids) - started
    user, system, children = (after - before for after, before in zip(cpu_times(pid), cpu_before, strict=True))
    per_request = (user + system + children) / len(burst)
    latencies = [relay.arrived[i] - t for i, t in zip(ids, appended, strict=True)]
    gpg_floor = floor(bench, signers)
    print("\nburst")
    print(f"  {len(burst)} requests in {elapsed:.1f} s: {len(burst) / elapsed:.1f} requests/s (target at least 25)")
    print(f"  latency append to relay: {spread(latencies)}")
    print(f"  daemon CPU per request (gpg children included): {per_request * 1000:.1f} ms")
    shares = (f"{name} {seconds / len(burst) * 1000:.1f} ms" for name, seconds in
              (("Python and libraries", user), ("kernel", system), ("gpg", children)))  # fmt: skip
    print(f"    of which {', '.join(shares)}")
    print(f"  gpg floor per request (verify + sign and encrypt): {gpg_floor * 1000:.1f} ms")
    print(f"  ratio: {per_request / gpg_floor:.2f} x the floor (target at most 1.5)")


def spread(latencies: list[float]) -> str:
    return ", ".join(f"p{int(q * 100)} {percentile(latencies, q) * 1000:.0f} ms" for q in (0.5, 0.95, 0.99))


async def measure_light(bench: Bench, imap: ImapServer, relay: Relay, signers: dict[str, str], seconds: int) -> None:
    forces = police_force_areas()
    ids, times = [], []
    for i in range(seconds):
        address = police_address(forces[i % len(forces)])
        raw = signed_request(bench.keys, signers[address], address, f"<light{i}@bench.example>")
        times.extend(await asyncio.to_thread(append, imap, [raw]))
        ids.append(f"<light{i}@bench.example>")
        await asyncio.sleep(max(0.0, 1.0 - (time.perf_counter() - times[-1])))
    await wait_for(relay, ids, 60)
    latencies = [relay.arrived[i] - t for i, t in zip(ids, times, strict=True)]
    print(f"\nlight load, one request a second for {seconds} s")
    print(f"  latency append to relay: {spread(latencies)} (target p95 under 500 ms)")


async def measure_national(bench: Bench, imap: ImapServer, relay: Relay, signers: dict[str, str]) -> None:
    national = signed_request(bench.keys, signers[OCC], OCC, "<national@bench.example>")
    [sent] = await asyncio.to_thread(append, imap, [national])
    await wait_for(relay, ["<national@bench.example>"], 60)
    took = relay.arrived["<national@bench.example>"] - sent
    print("\nnational extract (all of England)")
    print(f"  {HOMES} homes, append to relay: {took:.2f} s (target under 2 s)")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--light", type=int, default=30, help="seconds of one request a second")
    parser.add_argument("--postgres", help="a PostgreSQL URL instead of SQLite (a database of its own)")
    args = parser.parse_args()
    if shutil.which("gpg") is None:
        raise SystemExit("gpg is needed (apt-get install gnupg)")
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
        directory = Path(tmp)
        database = args.postgres or f"sqlite:///{directory / 'gateway.db'}"
        bench = Bench(directory, database)
        print(f"setting up: {HOMES} homes, 40 authorities with keys, {database.split(':')[0]}", flush=True)
        signers = bench.set_up()
        imap = start_dovecot(directory / "dovecot")
        relay = Relay()
        server = await asyncio.get_running_loop().create_server(lambda: SMTP(relay), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        signing = bench.config.read_text().split('signing_key = "')[1].split('"')[0]
        bench.write_config(
            f'signing_key = "{signing}"\n'
            f'[imap]\nhost = "{imap.host}"\nport = {imap.port}\nusername = "{imap.username}"\n'
            f'password = "{imap.password}"\ntls = "none"\n'
            f'[smtp]\nhost = "127.0.0.1"\nport = {port}\ntls = "none"\n'
        )
        forces = police_force_areas()
        print(f"signing {args.requests} requests from {len(forces)} police forces", flush=True)
        burst = []
        for i in range(args.requests):
            force = forces[i % len(forces)]
            address = police_address(force)
            burst.append(signed_request(bench.keys, signers[address], address, f"<burst{i}@bench.example>"))
        daemon = subprocess.Popen(
            [sys.executable, "-m", "gateway", "--config", str(bench.config), "run", "--log-level", "warning"],
            stderr=subprocess.DEVNULL,
        )
        try:
            await asyncio.sleep(3)  # started and connected
            await measure_burst(bench, imap, relay, pid=daemon.pid, burst=burst, signers=signers)
            await measure_light(bench, imap, relay, signers, args.light)
            await measure_national(bench, imap, relay, signers)
            print(f"\ndaemon peak RSS: {peak_rss_mb(daemon.pid):.0f} MB (target under 150 MB)")
        finally:
            daemon.terminate()
            daemon.wait(20)
            server.close()
            imap.stop()
            subprocess.run(["gpgconf", "--homedir", str(bench.keys), "--kill", "all"], check=False)
            subprocess.run(["gpgconf", "--homedir", str(directory / "gnupg"), "--kill", "all"], check=False)


if __name__ == "__main__":
    asyncio.run(main())
