"""The Freshdesk fake behaves as Freshdesk's reference says, over real HTTP.

These pin the fake itself, so the mapping tests built on it inherit the
documented behaviour: Basic auth with the API key, the validation envelope
(400 and 409), bare-array lists with a ``link`` header, integer statuses,
notes and their plain-text ``body_text``, ticket-field choices.
Facts and sources: docs/vendors/freshdesk-api.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.fakes.freshdesk import FreshdeskState, create_app
from tests.support.live_server import serve


class Freshdesk:
    def __init__(self, url: str, key: str) -> None:
        self.base = url + "/api/v2"
        self.session = requests.Session()
        self.session.auth = (key, "X")

    def get(self, path: str, **params: Any) -> requests.Response:
        return self.session.get(self.base + path, params=params, timeout=5)

    def post(self, path: str, body: Any) -> requests.Response:
        return self.session.post(self.base + path, json=body, timeout=5)

    def put(self, path: str, body: Any) -> requests.Response:
        return self.session.put(self.base + path, json=body, timeout=5)


@pytest.fixture
def state() -> FreshdeskState:
    return FreshdeskState(api_key="key-1")


@pytest.fixture
def fd(state: FreshdeskState) -> Iterator[Freshdesk]:
    with serve(create_app(state)) as live:
        client = Freshdesk(live.url, "key-1")
        with client.session:
            yield client


def contact(fd: Freshdesk, **attrs: Any) -> dict[str, Any]:
    answer = fd.post("/contacts", {"name": "Ann", "email": "ann@example.com", **attrs})
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


def test_a_wrong_key_is_401_with_freshdesks_body(fd: Freshdesk) -> None:
    fd.session.auth = ("not-the-key", "X")

    answer = fd.get("/contacts")

    assert answer.status_code == 401
    assert answer.json() == {"code": "invalid_credentials",
                             "message": "You have to be logged in to perform this action."}


def test_a_body_that_is_not_json_is_415(fd: Freshdesk) -> None:
    answer = fd.session.post(fd.base + "/contacts", data="name=Ann", timeout=5,
                             headers={"Content-Type": "application/x-www-form-urlencoded"})

    assert answer.status_code == 415
    assert answer.json()["code"] == "invalid_content_type"


def test_validation_errors_use_the_documented_envelope(fd: Freshdesk) -> None:
    answer = fd.post("/contacts", {"email": "not-an-email", "shoe": 44})

    assert answer.status_code == 400
    assert answer.json() == {"description": "Validation failed", "errors": [
        {"field": "shoe", "message": "Unexpected/invalid field in request", "code": "invalid_field"}]}
    missing = fd.post("/contacts", {"email": "not-an-email"})
    assert {e["field"]: e["code"] for e in missing.json()["errors"]} == {"name": "missing_field",
                                                                         "email": "invalid_value"}


def test_a_duplicate_email_is_409_naming_the_other_contact(fd: Freshdesk) -> None:
    first = contact(fd)

    answer = fd.post("/contacts", {"name": "Other", "email": "ANN@example.com"})

    assert answer.status_code == 409
    (error,) = answer.json()["errors"]
    assert (error["field"], error["code"], error["additional_info"]) == (
        "email", "duplicate_value", {"user_id": first["id"]})


def test_lists_are_bare_arrays_with_a_link_header_while_more_pages_exist(fd: Freshdesk) -> None:
    ann = contact(fd)
    for n in range(5):
        assert fd.post("/tickets", {"subject": f"T{n}", "description": "d", "requester_id": ann["id"]}).ok

    first = fd.get("/tickets", requester_id=ann["id"], per_page=2, order_type="asc")
    last = fd.get("/tickets", requester_id=ann["id"], per_page=2, page=3, order_type="asc")

    assert [t["subject"] for t in first.json()] == ["T0", "T1"]
    assert first.headers["link"].endswith('page=2>; rel="next"')
    assert [t["subject"] for t in last.json()] == ["T4"]
    assert "link" not in last.headers
    assert fd.get("/tickets", per_page=101).status_code == 400


def test_tickets_default_to_open_low_and_refuse_unknown_integers(fd: Freshdesk) -> None:
    ann = contact(fd)

    ticket = fd.post("/tickets", {"subject": "S", "description": "<p>Hi</p>", "requester_id": ann["id"]}).json()
    bad = fd.post("/tickets", {"subject": "S", "description": "d", "requester_id": ann["id"], "status": 9,
                               "priority": 7})

    assert (ticket["status"], ticket["priority"], ticket["description_text"]) == (2, 1, "Hi")
    assert sorted(e["field"] for e in bad.json()["errors"]) == ["priority", "status"]


def test_notes_keep_html_and_give_plain_text_oldest_first(fd: Freshdesk) -> None:
    ann = contact(fd)
    ticket = fd.post("/tickets", {"subject": "S", "description": "d", "requester_id": ann["id"]}).json()

    first = fd.post(f"/tickets/{ticket['id']}/notes", {"body": "<div>a &amp; b</div><div>line 2</div>"})
    fd.post(f"/tickets/{ticket['id']}/notes", {"body": "second", "private": False})
    listed = fd.get(f"/tickets/{ticket['id']}/conversations").json()

    assert first.status_code == 201
    assert first.json()["private"] is True  # notes are private unless asked otherwise
    assert [n["body_text"] for n in listed] == ["a & b\nline 2", "second"]
    assert [n["private"] for n in listed] == [True, False]


def test_unknown_records_are_404_without_a_body(fd: Freshdesk) -> None:
    answer = fd.get("/tickets/424242")

    assert answer.status_code == 404
    assert answer.content == b""


def test_ticket_fields_carry_each_kind_of_choices(fd: Freshdesk) -> None:
    fields = {f["type"]: f for f in fd.get("/ticket_fields").json()}

    assert fields["default_status"]["choices"]["2"] == ["Open", "Being Processed"]
    assert fields["default_priority"]["choices"] == {"Low": 1, "Medium": 2, "High": 3, "Urgent": 4}
    assert fields["custom_dropdown"]["name"] == "cf_product"
    assert fields["custom_dropdown"]["choices"] == ["Widget Pro", "Widget Lite", "Gadget"]


def test_a_queued_429_carries_retry_after_and_the_spent_budget(fd: Freshdesk, state: FreshdeskState) -> None:
    state.rate_limit_next(retry_after=7)

    limited = fd.get("/contacts")
    after = fd.get("/contacts")

    assert limited.status_code == 429
    assert (limited.headers["Retry-After"], limited.headers["X-RateLimit-Remaining"]) == ("7", "0")
    assert after.status_code == 200
    assert int(after.headers["X-RateLimit-Remaining"]) > 0
