"""Keys about to expire: the authority (encrypted) and the admins are told once; nothing goes to an expired key."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from email import message_from_bytes, policy
from pathlib import Path

from gateway.config import ScheduleSettings
from gateway.schedule import delivery_instant
from gateway.subscriptions import add_months
from tests.support.addresses import ADMIN_ADDRESS, POLICE_ADDRESS
from tests.support.gateway_cli import Gateway
from tests.support.keys import AuthorityKeys, run_gpg
from tests.support.live import open_as_recipient, outbox, outbox_content, process, subscriptions
from tests.support.requests import police_says
from tests.support.schedule import MONTHLY, run
from tests.support.smime import certificate

SETTINGS = ScheduleSettings()


def text_of(gateway: Gateway, outbox_id: object) -> str:
    mail = message_from_bytes(outbox_content(gateway, outbox_id), policy=policy.default)
    body = mail.get_body(preferencelist=("plain",))
    assert body is not None
    return str(body.get_content())


def pin(gateway: Gateway, tmp_path: Path, key_name: str, keys: AuthorityKeys) -> None:
    key = getattr(keys, key_name).write(tmp_path, f"{key_name}.asc")
    gateway.ok("authority", "set-key", "West Mercia Police", str(key))


def test_an_expiring_authority_key_is_noticed_once_to_both(live: Gateway, keys: AuthorityKeys, tmp_path: Path) -> None:
    assert process(live, police_says(keys, MONTHLY, "k1"))["kind"] == "answered"
    pin(live, tmp_path, "expiring_soon", keys)  # ten days left
    now = dt.datetime.now(dt.UTC)
    assert run(live, now)["key notice"] == 1
    assert run(live, now + dt.timedelta(hours=1))["key notice"] == 0  # the next daily check: already told
    assert run(live, now + dt.timedelta(days=2))["key notice"] == 0

    notices = [row for row in outbox(live) if row["kind"] in ("key-notice", "alert")]
    assert sorted((row["kind"], row["recipient"]) for row in notices) == [
        ("alert", ADMIN_ADDRESS), ("key-notice", POLICE_ADDRESS)
    ]  # fmt: skip
    to_police = next(row for row in notices if row["kind"] == "key-notice")
    inner, status = open_as_recipient(live, keys, outbox_content(live, to_police["id"]))  # only their key opens it
    assert "[GNUPG:] GOODSIG" in status
    body = inner.get_body(preferencelist=("plain",))
    assert body is not None
    told = body.get_content()
    assert keys.expiring_soon.fingerprint in told
    assert "monthly deliveries will stop" in told
    to_admin = text_of(live, next(row for row in notices if row["kind"] == "alert")["id"])
    assert "The pinned key of West Mercia Police expires on" in to_admin
    assert "The authority has been told" in to_admin
    assert "West Mercia police force area" not in to_admin  # admins' mail goes in the clear: no register data
    [record] = [r for r in json.loads(live.ok("audit", "list", "--json")) if r["action"] == "key.expiry-notice"]
    assert record["details"]["fingerprint"] == keys.expiring_soon.fingerprint


def test_no_delivery_to_an_expired_key_until_a_new_one_is_pinned(
    live: Gateway, keys: AuthorityKeys, tmp_path: Path
) -> None:
    assert process(live, police_says(keys, MONTHLY, "k2"))["kind"] == "answered"
    pin(live, tmp_path, "expiring_soon", keys)
    started = dt.date.fromisoformat(str(subscriptions(live)[0]["started_on"]))
    # The daemon was down until after the key expired (ten days): the next delivery falls after it too.
    month = add_months(started.replace(day=1), 1)
    moment = max(delivery_instant(month.year, month.month, SETTINGS), dt.datetime.now(dt.UTC) + dt.timedelta(days=11))
    first = run(live, moment)
    assert (first["delivery"], first["key notice"], first["skipped"]) == (0, 1, 1)
    assert run(live, moment + dt.timedelta(hours=1))["delivery"] == 0
    kinds = Counter((row["kind"], row["recipient"]) for row in outbox(live))
    assert kinds[("disclosure", POLICE_ADDRESS)] == 1  # the first answer only: nothing to the expired key
    assert kinds[("key-notice", POLICE_ADDRESS)] == 0  # it could no longer be encrypted to
    assert kinds[("alert", ADMIN_ADDRESS)] == 2  # the key notice and the withheld delivery, once each
    alerts = [text_of(live, row["id"]) for row in outbox(live) if row["kind"] == "alert"]
    assert any("could NOT be told" in text for text in alerts)
    assert any("was not sent" in text and "expired" in text for text in alerts)
    history = json.loads(live.ok("subscription", "show", str(subscriptions(live)[0]["id"]), "--json"))["history"]
    assert [step["kind"] for step in history] == ["initial", "withheld"]

    pin(live, tmp_path, "police", keys)  # the police send a renewed key; HMCI pins it
    assert run(live, moment + dt.timedelta(hours=2))["delivery"] == 1  # the withheld month goes now, once
    assert run(live, moment + dt.timedelta(hours=3))["delivery"] == 0


def test_a_delivery_withheld_for_the_gateways_own_revoked_key_names_that_key_not_the_authoritys(
    live: Gateway, keys: AuthorityKeys
) -> None:
    """The police's key is fine; the gateway's cannot sign: the admins are told to mend the gateway's key, and
    not to pin a new key for the police, who have nothing to do."""
    assert process(live, police_says(keys, MONTHLY, "k5"))["kind"] == "answered"
    gateway_key = str(live.signing_key)
    home = live.gnupg_home
    kept = (home / "openpgp-revocs.d" / f"{gateway_key}.rev").read_text()  # gpg keeps one for each key it makes
    run_gpg(home, "--import", data=kept.replace(":-----BEGIN", "-----BEGIN").encode())
    started = dt.date.fromisoformat(str(subscriptions(live)[0]["started_on"]))
    month = add_months(started.replace(day=1), 1)
    moment = delivery_instant(month.year, month.month, SETTINGS)
    counts = run(live, moment)
    assert (counts["delivery"], counts["skipped"]) == (0, 1)
    assert run(live, moment + dt.timedelta(hours=1))["delivery"] == 0
    withheld = [
        " ".join(text.split())
        for text in (text_of(live, row["id"]) for row in outbox(live) if row["kind"] == "alert")
        if "delivery to West Mercia Police not sent" in text
    ]
    assert len(withheld) == 1  # told once
    [alert] = withheld
    assert f"the gateway's signing key {gateway_key} is revoked" in alert
    assert "The cause is the gateway's own identity, not West Mercia Police's" in alert
    assert "--quick-set-expire" in alert
    assert "gateway authority set-key" not in alert


def test_the_gateways_own_key_is_noticed_to_the_admins(fresh_gateway: Gateway) -> None:
    out = fresh_gateway.ok("init", "--key-expiry", "20d")
    fresh_gateway.signing_key = out.split('signing_key = "')[1].split('"')[0]
    fresh_gateway.write_config()
    now = dt.datetime.now(dt.UTC)
    assert run(fresh_gateway, now)["key notice"] == 1
    assert run(fresh_gateway, now + dt.timedelta(days=1))["key notice"] == 0
    [notice] = outbox(fresh_gateway)
    assert notice["recipient"] == ADMIN_ADDRESS
    text = text_of(fresh_gateway, notice["id"])
    assert "The gateway's own signing key expires on" in text
    assert fresh_gateway.signing_key in text
    assert "--quick-set-expire" in text


def test_a_key_with_months_left_gets_no_notice(live: Gateway, keys: AuthorityKeys) -> None:
    assert process(live, police_says(keys, MONTHLY, "k3"))["kind"] == "answered"
    assert run(live, dt.datetime.now(dt.UTC))["key notice"] == 0
    assert [row["kind"] for row in outbox(live)] == ["disclosure"]


def test_an_expiring_pinned_certificate_is_noticed_once_to_the_admins_naming_its_address(
    live: Gateway, tmp_path: Path
) -> None:
    soon = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(days=10)  # as the keys: ten days left
    cert = certificate(tmp_path, "renewing", (POLICE_ADDRESS,), not_after=soon)
    pinned = live.run(
        "authority", "set-cert", "West Mercia Police", "--email", POLICE_ADDRESS, "--cert", str(cert.cert)
    )
    assert pinned.code == 0, pinned.err
    assert "ask for a renewed certificate" in pinned.err  # warned when pinned, as a key is
    now = dt.datetime.now(dt.UTC)
    assert run(live, now)["key notice"] == 1
    assert run(live, now + dt.timedelta(hours=1))["key notice"] == 0  # already told
    [alert] = [row for row in outbox(live) if row["kind"] == "alert"]
    to_admin = text_of(live, alert["id"])
    assert f"The S/MIME certificate pinned for {POLICE_ADDRESS} (West Mercia Police) expires on" in to_admin
    assert f"gateway authority set-cert 'West Mercia Police' --email {POLICE_ADDRESS}" in to_admin
    [record] = [r for r in json.loads(live.ok("audit", "list", "--json")) if r["action"] == "key.expiry-notice"]
    assert (
        record["details"]["fingerprint"]
        == json.loads(live.ok("authority", "show", "West Mercia Police", "--json"))["delivery"][0]["cert_fingerprint"]
    )
