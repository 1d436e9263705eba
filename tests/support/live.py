"""The `live` gateway (a register, West Mercia Police, our border trusted), driven through `gateway process`, and
what it sent and recorded, read back."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import json
import subprocess
from collections import Counter
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import select

from gateway import metrics
from gateway.config import load_config
from gateway.db.engine import create_database
from gateway.db.models import OutboxMessage
from gateway.dev.sample import write_sample
from gateway.requests import unflowed
from tests.support.addresses import POLICE_ADDRESS
from tests.support.gateway_cli import Gateway
from tests.support.keys import AuthorityKeys
from tests.support.requests import BORDER


@pytest.fixture
def live(gateway: Gateway, keys: AuthorityKeys, tmp_path: Path) -> Gateway:
    """A gateway with a register and West Mercia Police registered, trusting our border's DMARC results."""
    gateway.authserv_id = BORDER
    gateway.write_config()
    sample = write_sample(tmp_path / "register", 800, seed=5)
    gateway.ok("register", "import", "--homes", str(sample.homes_path), "--enforcement", str(sample.enforcement_path))
    key = keys.police.write(tmp_path, "police.asc")
    gateway.ok(
        "authority", "add", "--name", "West Mercia Police", "--kind", "police", "--area", "West Mercia",
        "--email", POLICE_ADDRESS, "--key", str(key),
    )  # fmt: skip
    return gateway


FORMULAS = ['=HYPERLINK("http://evil.example","x")', "+44 1632 960001", "@SUM(A1)", "-1+2", "\uff1d1+1"]


@pytest.fixture
def hostile_live(gateway: Gateway, keys: AuthorityKeys, tmp_path: Path) -> Gateway:
    """West Mercia Police registered, DMARC trusted, and a register whose West Mercia homes hold formulas."""
    gateway.authserv_id = BORDER
    gateway.write_config()
    sample = write_sample(tmp_path / "register", 300, seed=11)
    with sample.homes_path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    ours = [row for row in rows if row["police_force_area"] == "West Mercia" and row["status"] != "closed"]
    for row, formula in zip(ours, FORMULAS, strict=False):
        row["name"] = formula
        row["manager_name"] = f"=1+1 {formula}"
        row["provider_address"] = formula
    with sample.homes_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    enforcement = tmp_path / "enforcement.csv"
    enforcement.write_text(f"urn,date,nature\n{ours[0]['urn']},2026-01-05,=cmd|' /C calc'!A0\n")
    gateway.ok("register", "import", "--homes", str(sample.homes_path), "--enforcement", str(enforcement))
    key = keys.police.write(tmp_path, "police.asc")
    gateway.ok(
        "authority", "add", "--name", "West Mercia Police", "--kind", "police", "--area", "West Mercia",
        "--email", POLICE_ADDRESS, "--key", str(key),
    )  # fmt: skip
    return gateway


def limited(gateway: Gateway, **limits: int) -> Gateway:
    gateway.write_config("\n[limits]\n" + "".join(f"{key} = {value}\n" for key, value in limits.items()))
    return gateway


def process(
    gateway: Gateway, raw: bytes, name: str = "message.eml", as_of: dt.datetime | None = None
) -> dict[str, object]:
    path = gateway.directory / name
    path.write_bytes(raw)
    when = ["--as-of", as_of.isoformat()] if as_of else []
    outcome: dict[str, object] = json.loads(gateway.ok("process", str(path), "--json", *when))
    return outcome


def outbox(gateway: Gateway) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = json.loads(gateway.ok("outbox", "list", "--json"))
    return rows


def outbox_content(gateway: Gateway, outbox_id: object) -> bytes:
    async def read() -> bytes:
        db = create_database(load_config(gateway.config_path).database)
        try:
            async with db.transaction(write=False) as session:
                row = (await session.execute(select(OutboxMessage).where(OutboxMessage.id == outbox_id))).scalar_one()
                return row.content
        finally:
            await db.close()

    return asyncio.run(read())


def decrypted(gateway: Gateway, keys: AuthorityKeys, wire: bytes) -> tuple[bytes, str]:
    """Decrypt with the authority's own key and gpg; returns (the inner part's bytes as sent, gpg status)."""
    outer = message_from_bytes(wire, policy=policy.default)
    assert isinstance(outer, EmailMessage)
    assert outer.get_content_type() == "multipart/encrypted"
    payload = list(outer.iter_parts())[1].get_payload(decode=True)
    assert isinstance(payload, bytes)
    exported = gateway.directory / "gateway-public.asc"
    exported.write_text(gateway.ok("key", "export"))
    subprocess.run(
        ["gpg", "--homedir", str(keys.home), "--batch", "--import", str(exported)], check=True, capture_output=True
    )
    result = subprocess.run(
        ["gpg", "--homedir", str(keys.home), "--batch", "--status-fd", "2", "--decrypt"],
        input=payload, capture_output=True, check=True,
    )  # fmt: skip
    return result.stdout, result.stderr.decode()


def open_as_recipient(gateway: Gateway, keys: AuthorityKeys, wire: bytes) -> tuple[EmailMessage, str]:
    """Decrypt with the authority's own key and gpg, as their mail client would; returns (inner, gpg status),
    the inner part's text as the client shows it (flowed lines joined)."""
    data, status = decrypted(gateway, keys, wire)
    inner = message_from_bytes(data, policy=policy.default)
    assert isinstance(inner, EmailMessage)
    return as_shown(inner), status


def register_urns(tmp_path: Path, force: str) -> set[str]:
    with (tmp_path / "register" / "homes.csv").open(newline="") as handle:
        return {r["urn"] for r in csv.DictReader(handle) if r["police_force_area"] == force and r["status"] != "closed"}


def subscriptions(gateway: Gateway) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = json.loads(gateway.ok("subscription", "list", "--json"))
    return rows


def sent(gateway: Gateway) -> Counter[tuple[str, str]]:
    return Counter((str(row["kind"]), str(row["recipient"])) for row in outbox(gateway))


def alert_text(gateway: Gateway) -> str:
    rows = [row for row in outbox(gateway) if row["kind"] == "alert"]
    assert rows, "the admins were not alerted"
    mail = message_from_bytes(outbox_content(gateway, rows[-1]["id"]), policy=policy.default)
    body = mail.get_body(preferencelist=("plain",))  # type: ignore[attr-defined, unused-ignore]
    assert body is not None
    return str(body.get_content())


def audit_actions(gateway: Gateway, prefix: str) -> list[dict[str, object]]:
    records: list[dict[str, object]] = json.loads(gateway.ok("audit", "list", "--json"))
    return [r for r in records if str(r["action"]).startswith(prefix)]


def details(record: dict[str, object]) -> dict[str, object]:
    found = record["details"]
    assert isinstance(found, dict)
    return found


def as_shown(message: EmailMessage) -> EmailMessage:
    """The message as a mail client shows it: each format=flowed text part (RFC 3676) with its soft line breaks
    joined again. Its other Content-Type parameters (hp-legacy-display) are kept."""
    for part in message.walk():
        if part.get_content_type() != "text/plain" or part.get_param("format") != "flowed":
            continue
        params = {key: value for key, value in (part.get_params() or [])[1:] if key not in ("charset", "format")}
        part.set_content(unflowed(part.get_content().replace("\r\n", "\n")), charset="utf-8")
        for key, value in params.items():
            part.set_param(key, str(value))
    return message


def checks_timed() -> tuple[float, float]:
    """How many signature checks of requests this process has timed as openssl's, and as gpg's (the operators'
    gateway_openssl_seconds and gateway_gpg_seconds)."""

    def count(tool: str) -> float:
        return metrics.REGISTRY.get_sample_value(f"gateway_{tool}_seconds_count", {"operation": "verify"}) or 0.0

    return count("openssl"), count("gpg")
