"""Every disclosure is logged in one shape (DPA 2018 s.62), whether a request or the schedule caused it."""

from __future__ import annotations

from tests.support.addresses import POLICE_ADDRESS
from tests.support.areas import DELIVERY, MONTHLY, asks
from tests.support.gateway_cli import Gateway
from tests.support.live import audit_actions, details, outbox
from tests.support.schedule import run as schedule


def test_a_scheduled_disclosure_is_logged_with_the_same_keys_as_an_answered_request(live: Gateway) -> None:
    """The monthly delivery's audit record says who disclosed what to whom, under the very keys the answer to
    the request that started it used; and each names its own outgoing message."""
    assert asks(live, POLICE_ADDRESS, MONTHLY, "shape")["kind"] == "answered"
    assert schedule(live, DELIVERY)["delivery"] == 1
    answered, delivered = (details(record) for record in audit_actions(live, "disclosure"))
    assert set(delivered) == set(answered)
    assert delivered["disclosed_by"] == answered["disclosed_by"] == "gateway (register-requests@hmci.example)"
    assert (delivered["authority"], delivered["recipient"], delivered["area"]) == (
        answered["authority"],
        answered["recipient"],
        answered["area"],
    )
    disclosures = [row["id"] for row in outbox(live) if row["kind"] == "disclosure"]
    assert [answered["outbox_id"], delivered["outbox_id"]] == disclosures
    assert isinstance(delivered["homes"], int)
    assert isinstance(delivered["enforcement_actions"], int)
