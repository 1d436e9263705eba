"""Requests for an area as any authority may send them: passed by our border's DMARC check and processed at fixed
instants, so that no signature's age depends on today's date."""

from __future__ import annotations

import datetime as dt

from tests.support.gateway_cli import Gateway
from tests.support.live import process
from tests.support.requests import BORDER

# Fixed instants: the border's DMARC pass authenticates, so no signature's age depends on today's date.
ASKED = dt.datetime(2027, 1, 12, 9, 0, tzinfo=dt.UTC)
DELIVERY = dt.datetime(2027, 2, 1, 6, 1, tzinfo=dt.UTC)  # 06:00 London in February is 06:00 UTC
MONTHLY = "Request: disclosure\r\nFrequency: monthly\r\nPurpose: Safeguarding children\r\n"


def asks(gateway: Gateway, address: str, body: str, name: str, at: dt.datetime = ASKED) -> dict[str, object]:
    """A request from `address`, authenticated by the border's DMARC pass, processed at `at`."""
    domain = address.rpartition("@")[2]
    raw = (
        f"Authentication-Results: {BORDER}; dmarc=pass header.from={domain}\r\n"
        f"From: <{address}>\r\nTo: register-requests@hmci.example\r\nSubject: request\r\n"
        f"Message-ID: <{name}@{domain}>\r\n\r\n{body}"
    ).encode()
    return process(gateway, raw, f"{name}.eml", at)
