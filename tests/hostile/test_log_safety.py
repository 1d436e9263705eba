"""What the gateway logs holds no register data and no secret, at any level and whatever fails, and `process --json`
prints only JSON."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import json
import logging
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
import structlog
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword
from aiosmtpd.smtp import Envelope as SmtpEnvelope

from gateway.config import InboundSmtpSettings, load_config
from gateway.db.engine import create_database
from gateway.dev.dovecot import ImapServer, free_port
from gateway.dev.sample import write_sample
from gateway.inbound.smtp import start_listener
from gateway.logs import configure as configure_logs
from gateway.schedule import delivery_instant
from gateway.subscriptions import add_months
from tests.support.addresses import ADMIN_ADDRESS, GATEWAY_ADDRESS, POLICE_ADDRESS
from tests.support.gateway_cli import Gateway
from tests.support.keys import AuthorityKeys
from tests.support.live import outbox, outbox_content
from tests.support.relay import Relay
from tests.support.requests import BORDER, FROM_POLICE, REQUEST, dmarc_request, police_says, request_from_police
from tests.support.sqlite_only import database_url
from tests.support.wire import decrypt, evaluated, read_csv

# Imported, the SQLite-only database_url overrides the registered one here, as in test_output_safety.
__all__ = ["database_url"]


def test_process_json_prints_only_json_even_when_the_pipeline_logs(hostile_live: Gateway, tmp_path: Path) -> None:
    broken = tmp_path / "broken-templates"
    broken.mkdir()
    (broken / "refusal.txt.j2").write_text("{{ no_such_value }}\n")
    config = tmp_path / "broken.toml"
    config.write_text(
        hostile_live.config_path.read_text().replace("[gateway]\n", f'[gateway]\ntemplates = "{broken}"\n')
    )
    mail = tmp_path / "kent.eml"
    mail.write_bytes(dmarc_request(b"<kent@westmercia.police.example>", "Request: disclosure\r\nArea: Kent\r\n"))
    command = [sys.executable, "-m", "gateway", "--config", str(config), "process", str(mail), "--json"]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["kind"] == "quarantined"


# ---------------------------------------------------------------- logs


# Commands as an operator runs them, in one process (it saves a second of start-up each), with the daemon's
# JSON logging on at debug level; each prints its exit code as a line of JSON when done.
LOGGED_COMMANDS = """
import json, sys
from gateway.logs import configure
configure("debug")
from gateway.cli import main
for argv in json.loads(sys.argv[1]):
    print(json.dumps({"exit": main(argv), "command": argv[2:4]}), flush=True)
"""
IMAP_SECRET = "imap-secret-Pa55word-7c1e"  # noqa: S105 - made up for the test, so that it can be looked for
SMTP_SECRET = "smtp-secret-Pa55word-42d9"  # noqa: S105
SMTP_USER = "gateway-relay-user"
PERSONAL = "jasmine.lee.55.manor.grove@example.org"  # a person, where a database error will quote it


def strings_in(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from strings_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings_in(item)
    else:
        yield str(value)


def readable(output: str) -> str:
    """The output as written, and each JSON line's strings decoded (a name with an accent is \\u-escaped)."""
    texts = [output]
    for line in output.splitlines():
        try:
            texts.extend(strings_in(json.loads(line)))
        except ValueError:
            continue
    return "\n".join(texts)


def register_secrets(homes_path: Path) -> set[str]:
    """Every value of the register that identifies a home or a person: names, addresses, postcodes, phones."""
    columns = (
        "urn", "name", "address", "postcode", "telephone", "provider_name", "provider_address",
        "responsible_individual_name", "responsible_individual_address", "manager_name", "manager_address",
    )  # fmt: skip
    with homes_path.open(newline="") as handle:
        return {row[column] for row in csv.DictReader(handle) for column in columns if row[column]}


def leaks(output: str, secrets: Iterable[str]) -> list[str]:
    text = readable(output)
    return sorted(secret for secret in secrets if secret in text)


def _login(server: SMTP, session: Any, envelope: SmtpEnvelope, mechanism: str, data: Any) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (SMTP_USER.encode(), SMTP_SECRET.encode())
    return AuthResult(success=ok)


@pytest.fixture
async def auth_relay() -> AsyncIterator[tuple[Relay, int]]:
    relay = Relay()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(relay, authenticator=_login, auth_require_tls=False, auth_required=True), "127.0.0.1", 0
    )
    try:
        yield relay, server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def logged(*commands: list[str]) -> str:
    """`gateway` commands, each `["--config", FILE, ...]`, run as LOGGED_COMMANDS does; all they wrote."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", LOGGED_COMMANDS, json.dumps(commands),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 120)
    output = out.decode() + err.decode()
    assert process.returncode == 0, output[-2000:]
    codes = [json.loads(line) for line in out.decode().splitlines() if line.startswith('{"exit": ')]
    assert [code["exit"] for code in codes] == [0] * len(commands), output[-3000:]
    return output


def with_secrets(gateway: Gateway, relay_port: int, imap: str | None = None) -> None:
    imap = imap or f'host = "127.0.0.1"\nport = 1\nusername = "gateway"\npassword = "{IMAP_SECRET}"\ntls = "none"\n'
    gateway.write_config(
        f'\n[imap]\n{imap}\n[smtp]\nhost = "127.0.0.1"\nport = {relay_port}\nusername = "{SMTP_USER}"\n'
        f'password = "{SMTP_SECRET}"\ntls = "none"\n'
    )


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
async def test_a_full_run_logs_no_register_data_and_no_secret(
    gateway: Gateway, keys: AuthorityKeys, tmp_path: Path, auth_relay: tuple[Relay, int]
) -> None:
    relay, relay_port = auth_relay
    gateway.authserv_id = BORDER
    with_secrets(gateway, relay_port)
    config = gateway.config_path
    sample = write_sample(tmp_path / "register", 300, seed=7)
    with sample.homes_path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    ours = next(row for row in rows if row["police_force_area"] == "West Mercia" and row["status"] != "closed")
    ours["name"] = "Tŷ Gwyn Children's Home"  # logged as JSON it would be \u-escaped: looked for decoded too
    with sample.homes_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    secrets = {*register_secrets(sample.homes_path), IMAP_SECRET, SMTP_SECRET}
    key = keys.police.write(tmp_path, "police.asc")
    setup = await logged(
        ["--config", str(config), "register", "import", "--homes", str(sample.homes_path),
         "--enforcement", str(sample.enforcement_path)],
        ["--config", str(config), "authority", "add", "--name", "West Mercia Police", "--kind", "police",
         "--area", "West Mercia", "--email", POLICE_ADDRESS, "--key", str(key)],
    )  # fmt: skip
    monthly = "Request: disclosure\r\nFrequency: monthly\r\nPurpose: Safeguarding children in our area\r\n"
    requests = {
        "answered": police_says(keys, monthly, "logs-m1"),
        "refused": dmarc_request(b"<logs-r1@westmercia.police.example>", "Request: disclosure\r\nArea: Kent\r\n"),
        "quarantined": (FROM_POLICE.replace("\n", "\r\n") + "Message-ID: <q1@x.example>\r\n\r\n" + REQUEST).encode(),
    }  # fmt: skip
    for expected, raw in requests.items():
        (tmp_path / f"{expected}.eml").write_bytes(raw)
    # A template override with a mistake: the pipeline logs the failure (so the capture is seen to work).
    broken = tmp_path / "broken-templates"
    broken.mkdir()
    (broken / "refusal.txt.j2").write_text("{{ no_such_value }}\n")
    broken_config = tmp_path / "broken.toml"
    broken_config.write_text(config.read_text().replace("[gateway]\n", f'[gateway]\ntemplates = "{broken}"\n', 1))
    broken_mail = tmp_path / "broken.eml"
    broken_mail.write_bytes(
        dmarc_request(b"<logs-b1@westmercia.police.example>", "Request: disclosure\r\nArea: Kent\r\n")
    )
    first_of = add_months(dt.datetime.now(dt.UTC).date().replace(day=1), 1)
    moment = delivery_instant(first_of.year, first_of.month, load_config(config).schedule) + dt.timedelta(minutes=1)
    mail_path = await logged(
        *(["--config", str(config), "process", str(tmp_path / f"{expected}.eml"), "--json"] for expected in requests),
        ["--config", str(broken_config), "process", str(broken_mail), "--json"],
        ["--config", str(config), "schedule", "run", "--as-of", moment.isoformat()],
        ["--config", str(config), "outbox", "send"],
    )
    for expected in requests:
        assert f'"kind": "{expected}"' in mail_path
    assert "message could not be decided" in mail_path  # the broken template, logged
    assert "1 delivery" in mail_path
    rows = await asyncio.to_thread(outbox, gateway)
    sent = [row for row in rows if row["status"] == "sent"]
    assert len(relay.received) == len(sent) >= 5  # answers, alerts and notices; the delivery waits for its day
    [delivery] = [row for row in rows if row["status"] == "pending"]
    # The delivery's files too: named plainly, no cell a spreadsheet would run.
    wire = await asyncio.to_thread(outbox_content, gateway, delivery["id"])
    inner = await asyncio.to_thread(decrypt, gateway, keys, wire)
    names = [str(part.get_filename()) for part in inner.iter_attachments()]
    assert [name.rsplit("-", 1)[1] for name in names] == ["homes.csv", "enforcement.csv", "changes.csv"]
    for part in inner.iter_attachments():
        assert not any(evaluated(cell) for row in read_csv(part.get_content().encode())[2:] for cell in row)

    everything = setup + mail_path
    assert leaks(json.dumps({"event": ours["name"]}), secrets) == [ours["name"]]  # escaped, and still found
    assert leaks(everything, secrets) == []
    assert ours["name"] not in readable(everything)


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
async def test_the_daemon_at_debug_level_logs_no_register_data_and_no_password(
    gateway: Gateway, keys: AuthorityKeys, tmp_path: Path, auth_relay: tuple[Relay, int], dovecot_server: ImapServer
) -> None:
    relay, relay_port = auth_relay
    gateway.authserv_id = BORDER
    listener_port = free_port()
    imap = (
        f'host = "{dovecot_server.host}"\nport = {dovecot_server.port}\nusername = "{dovecot_server.username}"\n'
        f'password = "{dovecot_server.password}"\ntls = "none"\n'
    )
    with_secrets(gateway, relay_port, imap)
    config = gateway.config_path
    config.write_text(config.read_text() + f'\n[inbound_smtp]\nhost = "127.0.0.1"\nport = {listener_port}\n')
    sample = write_sample(tmp_path / "register", 300, seed=8)
    key = keys.police.write(tmp_path, "police.asc")
    commands = [
        ("register", "import", "--homes", str(sample.homes_path), "--enforcement", str(sample.enforcement_path)),
        ("authority", "add", "--name", "West Mercia Police", "--kind", "police", "--area", "West Mercia",
         "--email", POLICE_ADDRESS, "--key", str(key)),
    ]  # fmt: skip
    for command in commands:
        await asyncio.to_thread(gateway.ok, *command)
    secrets = {*register_secrets(sample.homes_path), dovecot_server.password, SMTP_SECRET}

    daemon = await asyncio.create_subprocess_exec(
        sys.executable, "-c", LOGGED_COMMANDS, json.dumps([["--config", str(config), "run", "--log-level", "debug"]]),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        dovecot_server.deliver(request_from_police(keys, message_id="<daemon-logs-1@westmercia.police.example>"))
        by_smtp = dmarc_request(b"<daemon-logs-2@westmercia.police.example>", REQUEST)
        for _ in range(100):  # the listener starts a moment after the daemon
            try:
                await aiosmtplib.send(by_smtp, sender=POLICE_ADDRESS, recipients=[GATEWAY_ADDRESS],
                                      hostname="127.0.0.1", port=listener_port, timeout=10)  # fmt: skip
                break
            except (OSError, aiosmtplib.SMTPException):
                await asyncio.sleep(0.1)
        for _ in range(300):
            if len(relay.received) >= 2 or daemon.returncode is not None:
                break
            await asyncio.sleep(0.1)
        daemon.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(daemon.communicate(), 15)
    finally:
        if daemon.returncode is None:
            daemon.kill()
    output = out.decode() + err.decode()
    assert daemon.returncode == 0, output[-2000:]
    assert len(relay.received) == 2
    events = [json.loads(line) for line in err.decode().splitlines()]  # every line JSON
    assert Counter(e.get("outcome") for e in events if e.get("event") == "message")["answered"] == 2
    assert {"started", "outbox", "stopped"} <= {e.get("event") for e in events}
    assert leaks(output, secrets) == []


async def test_a_library_error_is_logged_without_its_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """aiosmtpd logs a failed session with its traceback, and the database error in it quotes the statement's
    parameters (here the envelope sender; in other statements, register rows). The daemon's log names the error
    and where it happened, never what it said."""
    # A database the listener cannot write to (no tables): its INSERT fails, quoting what it was to store.
    empty = tmp_path / "no-tables.toml"
    empty.write_text(
        f'[gateway]\naddress = "{GATEWAY_ADDRESS}"\nadmin_address = "{ADMIN_ADDRESS}"\n'
        f'[database]\nurl = "sqlite:///{tmp_path / "empty.db"}"\n'
    )
    db = create_database(load_config(empty).database)
    saved = _save_logging()
    try:
        configure_logs("debug")
        server = await start_listener(
            InboundSmtpSettings("127.0.0.1", 0, 100_000), db, GATEWAY_ADDRESS, asyncio.Event()
        )
        port = server.sockets[0].getsockname()[1]
        message = f"From: {PERSONAL}\r\nTo: {GATEWAY_ADDRESS}\r\n\r\nRequest: disclosure\r\n".encode()
        try:
            with pytest.raises(aiosmtplib.SMTPResponseException):
                await aiosmtplib.send(message, sender=PERSONAL, recipients=[GATEWAY_ADDRESS],
                                      hostname="127.0.0.1", port=port, timeout=10)  # fmt: skip
        finally:
            server.close()
    finally:
        _restore_logging(saved)
        await db.close()
    logged_text = capsys.readouterr().err
    events = [json.loads(line) for line in logged_text.splitlines() if line.startswith("{")]
    failures = [e for e in events if "exception" in e]
    assert failures, logged_text[-2000:]
    assert any("OperationalError" in json.dumps(e["exception"]) for e in failures)  # what failed, and where
    assert "jasmine" not in readable(logged_text)


def _save_logging() -> dict[str, Any]:
    root = logging.getLogger()
    noisy = ("aioimaplib", "sqlalchemy", "aiosqlite", "asyncio", "gnupg", "mail.log", "apscheduler")
    return {
        "structlog": structlog.get_config(),
        "handlers": list(root.handlers),
        "level": root.level,
        "levels": {name: logging.getLogger(name).level for name in noisy},
    }


def _restore_logging(saved: dict[str, Any]) -> None:
    structlog.configure(**saved["structlog"])
    root = logging.getLogger()
    root.handlers[:] = saved["handlers"]
    root.setLevel(saved["level"])
    for name, level in saved["levels"].items():
        logging.getLogger(name).setLevel(level)
