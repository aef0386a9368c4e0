"""mappings/freshdesk.yaml through our real server against the Freshdesk fake.

The Khoros scenario (tests/test_khoros_scenario.py) proves every operation
works; these tests pin what is particular to Freshdesk: the API key as the
Basic user, values that reach Freshdesk as literals, integer statuses folded
into Khoros's open/closed, interactions kept as private notes and read back
oldest first with author and link, cf_ dropdowns in the live data model, and
every way Freshdesk fails (401, 404, 400/409 validation, 429, 5xx). Facts and
sources: docs/vendors/freshdesk-api.md; set-up: docs/mappings/freshdesk.md.

The fake's state is shared by the whole session, so every test makes its own
records (uuid) and the ``freshdesk`` fixture leaves no fault armed.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import pytest
import requests

from tests.conftest import Fake
from tests.fakes.freshdesk import FreshdeskState
from tests.support.khoros import KhorosClient
from tests.support.mappings import without_live_cache
from tests.support.openapi_check import OpenApiCheck
from tests.support.vendor_mapping import TRACE, checked_state, created, named_customer, since
from tests.support.vendor_mapping import interaction as _interaction
from tests.targets.registry import ROOT

MAPPING = f"{ROOT}/mappings/freshdesk.yaml"
HOSTILE = "O'Brien ^ a=b \"quoted\" back\\slash"


@pytest.fixture(scope="module")
def khoros(bridge: Callable[[str, dict[str, str]], KhorosClient], freshdesk_env: dict[str, str]) -> KhorosClient:
    return bridge(MAPPING, freshdesk_env)


SPEC = OpenApiCheck(f"{ROOT}/tests/specs/freshdesk.yaml")


@pytest.fixture
def freshdesk(freshdesk_fake: Fake) -> Iterator[FreshdeskState]:
    """The fake's state; afterwards every request the test caused is held to the description
    in tests/specs/freshdesk.yaml, and no fault is left queued."""
    yield from checked_state(freshdesk_fake.state, SPEC)


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:10]


def interaction(unique: str, n: int, **extra: Any) -> dict[str, Any]:
    """An interaction whose text has markup and an ampersand, which the HTML notes must keep."""
    return _interaction(unique, n, "<b>my</b> order & never came", **extra)


def make_customer(khoros: KhorosClient, unique: str, **fields: Any) -> dict[str, Any]:
    return created(khoros, named_customer(unique, **fields))


# --------------------------------------------------------------- credentials


def test_the_api_key_is_the_basic_user_name(khoros: KhorosClient, freshdesk: FreshdeskState,
                                           freshdesk_env: dict[str, str], unique: str) -> None:
    mark = len(freshdesk.requests)
    customer = make_customer(khoros, unique, jobTitle="Buyer")

    (received,) = since(freshdesk, mark)
    assert (received.method, received.path) == ("POST", "/api/v2/contacts")
    scheme, _, encoded = (received.header("Authorization") or "").partition(" ")
    assert scheme == "Basic"
    assert base64.b64decode(encoded).decode() == f"{freshdesk_env['FRESHDESK_API_KEY']}:X"
    assert received.json == {"name": f"Ann Lee {unique}", "email": f"ann.{unique}@example.com",
                             "job_title": "Buyer"}
    assert customer["uri"] == f"{freshdesk_env['FRESHDESK_URL']}/a/contacts/{customer['id']}"


def test_a_reset_api_key_is_a_500_that_names_the_variable(
        bridge: Callable[[str, dict[str, str]], KhorosClient], freshdesk_env: dict[str, str],
        freshdesk: FreshdeskState, unique: str) -> None:
    key = f"old-key-{unique}"
    freshdesk.api_keys.append(key)
    khoros = bridge(MAPPING, {**freshdesk_env, "FRESHDESK_API_KEY": key})
    try:
        customer = make_customer(khoros, unique)
    finally:
        freshdesk.api_keys.remove(key)  # the agent resets their key: the old one stops working

    answer = khoros.get_customer(customer["id"])

    assert answer.status == 500
    assert answer.body["error"] == "crm_auth_failed"
    assert "FRESHDESK_API_KEY" in answer.body["message"] and "HTTP 401" in answer.body["message"]
    assert key not in answer.body["message"]
    match = TRACE.search(answer.body["message"])
    assert match and answer.headers["X-Trace-Id"] == match.group(1)


# --------------------------------------------------------------- values stay literal


def test_hostile_search_values_reach_freshdesk_as_literal_parameters(khoros: KhorosClient,
                                                                     freshdesk: FreshdeskState,
                                                                     unique: str) -> None:
    name = f"{HOSTILE} {unique}"
    phone = f"+1 555 {unique[:4]}'^=\"\\"
    customer = make_customer(khoros, unique, name=name, phone=phone)
    mark = len(freshdesk.requests)

    by_name = khoros.search({"name": name})
    by_phone = khoros.search({"phone": phone})

    assert [c["id"] for c in by_name.body] == [customer["id"]], by_name.body
    assert [c["id"] for c in by_phone.body] == [customer["id"]], by_phone.body
    received = since(freshdesk, mark)
    autocomplete = next(r for r in received if r.path == "/api/v2/contacts/autocomplete")
    assert autocomplete.arg("term") == name
    assert autocomplete.query_string == "term=" + quote_plus(name, safe="")
    phone_lookup = next(r for r in received if r.arg("phone") is not None)
    assert phone_lookup.arg("phone") == phone
    # Nothing was sent through Freshdesk's filter language, which documents no escape for a quote.
    assert not [r for r in received if r.path.startswith("/api/v2/search/")]


def test_a_hostile_email_in_best_match_finds_nobody_and_stays_one_value(khoros: KhorosClient,
                                                                        freshdesk: FreshdeskState,
                                                                        unique: str) -> None:
    make_customer(khoros, unique)
    email = f"ann.{unique}@example.com' OR email:'*"
    mark = len(freshdesk.requests)

    answer = khoros.best_match({"email": email})

    assert answer.status == 200
    assert answer.body == []
    (received,) = since(freshdesk, mark)
    assert received.query == {"email": [email], "per_page": ["100"]}


# --------------------------------------------------------------- statuses


@pytest.mark.parametrize(("freshdesk_status", "khoros_status"), [(2, "open"), (3, "open"), (4, "closed"),
                                                                 (5, "closed")])
def test_integer_statuses_fold_into_khoros_open_and_closed(khoros: KhorosClient, freshdesk: FreshdeskState,
                                                           unique: str, freshdesk_status: int,
                                                           khoros_status: str) -> None:
    customer = make_customer(khoros, unique)
    ticket = freshdesk.add_ticket(requester_id=int(customer["id"]), subject=f"S {unique}", status=freshdesk_status)

    case = khoros.get_case(str(ticket["id"]))
    listed = khoros.customer_cases(customer["id"])

    assert case.status == 200
    assert (case.body["status"], case.body["ticketStatus"]) == (khoros_status, str(freshdesk_status))
    assert [(c["id"], c["status"]) for c in listed.body] == [(str(ticket["id"]), khoros_status)]


@pytest.mark.parametrize(("sent", "stored"), [
    ({"status": "closed"}, 4), ({"status": "open"}, 2), ({"ticketStatus": "3"}, 3),
    ({"status": "closed", "ticketStatus": "5"}, 5),  # Freshdesk's own status is the precise one
])
def test_khoros_status_writes_become_freshdesk_integers(khoros: KhorosClient, freshdesk: FreshdeskState,
                                                        unique: str, sent: dict[str, str], stored: int) -> None:
    customer = make_customer(khoros, unique)
    created = khoros.create_case({"customerId": customer["id"], "title": f"Status {unique}"}).body
    mark = len(freshdesk.requests)

    answer = khoros.update_case(created["id"], sent)

    assert answer.status == 200, answer.body
    put = next(r for r in since(freshdesk, mark) if r.method == "PUT")
    assert put.json["status"] == stored and isinstance(put.json["status"], int)
    assert freshdesk.tickets[int(created["id"])]["status"] == stored


# --------------------------------------------------------------- interactions


def test_interactions_are_private_notes_read_back_oldest_first_with_author_and_link(
        khoros: KhorosClient, freshdesk: FreshdeskState, unique: str) -> None:
    customer = make_customer(khoros, unique)
    first = interaction(unique, 1)
    second = interaction(unique, 2, author={"service": "twitter", "serviceId": "1", "handle": "shop",
                                            "name": "O'Shop <Support>", "brandOwned": True})
    third = interaction(unique, 3)

    created = khoros.create_case({"customerId": customer["id"], "title": f"Order {unique}",
                                  "description": "Order 42\nmissing", "interactions": [first, second]})
    updated = khoros.update_case(created.body["id"], {"interactions": [third]})

    assert created.status == 201, created.body
    assert updated.status == 200, updated.body
    ticket_id = int(created.body["id"])
    notes = freshdesk.conversations[ticket_id]
    assert [n["private"] for n in notes] == [True, True, True]
    assert "&lt;b&gt;my&lt;/b&gt; order &amp; never came" in notes[0]["body"]  # the post is text, not HTML
    assert "O&#39;Shop &lt;Support&gt; (@shop)" in notes[1]["body"]
    assert freshdesk.tickets[ticket_id]["description"] == "Order 42<br>missing"
    assert created.body["interactions"] == [first, second]
    assert updated.body["interactions"] == [first, second, third]
    looked_up = khoros.get_case(created.body["id"]).body
    assert looked_up["interactions"] == [first, second, third]
    assert [i["author"]["handle"] for i in looked_up["interactions"]] == ["annlee", "shop", "annlee"]
    assert [i["linkUrl"] for i in looked_up["interactions"]] == [first["linkUrl"], second["linkUrl"],
                                                                 third["linkUrl"]]
    assert looked_up["description"] == "Order 42\nmissing"


def test_notes_agents_write_in_freshdesk_are_not_interactions_and_repeats_are_not_added(
        khoros: KhorosClient, freshdesk: FreshdeskState, freshdesk_fake: Fake, freshdesk_env: dict[str, str],
        unique: str) -> None:
    customer = make_customer(khoros, unique)
    first, later = interaction(unique, 1), interaction(unique, 3)
    case = khoros.create_case({"customerId": customer["id"], "title": f"Later {unique}", "interactions": [first]}).body
    reply = requests.post(f"{freshdesk_fake.url}/api/v2/tickets/{case['id']}/notes",
                          json={"body": "Hi Ann, we are on it", "private": False},
                          auth=(freshdesk_env["FRESHDESK_API_KEY"], "X"), timeout=5)
    assert reply.status_code == 201

    updated = khoros.update_case(case["id"], {"priority": "4", "interactions": [first, later]})

    assert updated.status == 200, updated.body
    assert updated.body["priority"] == "4"
    assert updated.body["interactions"] == [first, later]
    bodies = [n["body_text"] for n in freshdesk.conversations[int(case["id"])]]
    assert sum(first["serviceId"] in b for b in bodies) == 1
    assert len(bodies) == 3


def test_a_ticket_keeps_only_its_first_interactions_key_as_a_tag_when_retried(
        khoros: KhorosClient, freshdesk: FreshdeskState, unique: str) -> None:
    """The tag is how a retried create finds its ticket (tests/test_mapping_contract.py)."""
    customer = make_customer(khoros, unique)
    first, second = interaction(unique, 1), interaction(unique, 2)
    body = {"customerId": customer["id"], "title": f"Retry {unique}", "interactions": [first]}
    original = khoros.create_case(body).body

    khoros.create_case({**body, "interactions": [first, second]})

    assert freshdesk.tickets[int(original["id"])]["tags"] == [f"khoros:twitter:{first['serviceId']}"]


def test_customer_cases_follow_the_link_header_to_the_next_page(khoros: KhorosClient, freshdesk: FreshdeskState,
                                                               unique: str) -> None:
    customer = make_customer(khoros, unique)
    for n in range(103):
        freshdesk.add_ticket(requester_id=int(customer["id"]), subject=f"Bulk {n} {unique}")
    mark = len(freshdesk.requests)

    answer = khoros.customer_cases(customer["id"])

    assert answer.status == 200
    assert len(answer.body) == 103
    pages = [r.arg("page") for r in since(freshdesk, mark) if r.path == "/api/v2/tickets"]
    assert pages == ["1", "2"]


# --------------------------------------------------------------- Freshdesk failing


def test_a_duplicate_email_409_is_a_422_naming_email(khoros: KhorosClient, unique: str) -> None:
    customer = make_customer(khoros, unique)

    answer = khoros.create_customer({"name": "Someone else", "email": customer["email"]})

    assert answer.status == 422
    assert [f["name"] for f in answer.body["fields"]] == ["email"]
    assert "unique" in answer.body["fields"][0]["errorMessage"]


def test_freshdesk_field_names_in_a_validation_error_become_khoros_field_names(khoros: KhorosClient,
                                                                               freshdesk: FreshdeskState,
                                                                               unique: str) -> None:
    customer = make_customer(khoros, unique)
    mark = len(freshdesk.requests)
    freshdesk.fail_next(200, freshdesk.contacts[int(customer["id"])])  # the customer check passes ...
    freshdesk.fail_next(400, {"description": "Validation failed", "errors": [  # ... and the ticket is refused
        {"field": "subject", "message": "It should be a/an String", "code": "missing_field"},
        {"field": "requester_id", "message": "There is no contact matching the given requester_id",
         "code": "invalid_value"},
        {"field": "type", "message": "It should be one of these values: 'Question'", "code": "invalid_value"}]})

    answer = khoros.create_case({"customerId": customer["id"], "title": f"T {unique}"})

    assert answer.status == 422, answer.body
    assert sorted(f["name"] for f in answer.body["fields"]) == ["customerId", "ticketType", "title"]
    assert "It should be a/an String" in answer.body["message"]
    assert [r.method for r in since(freshdesk, mark)] == ["GET", "POST"]


@pytest.mark.parametrize("status", [500, 502, 503])
def test_freshdesk_5xx_is_a_500_with_the_trace_id(khoros: KhorosClient, freshdesk: FreshdeskState,
                                                  status: int) -> None:
    freshdesk.fail_next(status, {"code": "internal_error", "message": "We're sorry, but something went wrong."},
                        times=1 if status == 500 else 3)  # a read is retried twice after a 502/503

    answer = khoros.search({"email": "someone@example.com"})

    assert answer.status == 500
    assert answer.body["error"] == "crm_unavailable"
    assert f"HTTP {status}" in answer.body["message"]
    assert TRACE.search(answer.body["message"])


# --------------------------------------------------------------- the live data model


def field(meta: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f for f in meta["fields"] if f["name"] == name)


@pytest.fixture
def uncached_mapping(tmp_path: Path) -> str:
    return without_live_cache(MAPPING, tmp_path, expected=1)


def test_case_meta_lists_freshdesks_choices_with_their_labels(
        bridge: Callable[[str, dict[str, str]], KhorosClient], freshdesk_env: dict[str, str],
        freshdesk: FreshdeskState, uncached_mapping: str, unique: str) -> None:
    khoros = bridge(uncached_mapping, freshdesk_env)
    status = next(f for f in freshdesk.ticket_fields if f["type"] == "default_status")
    status["choices"]["6"] = [f"Waiting on {unique}", "Being Processed"]
    try:
        meta = khoros.meta("case").body
    finally:
        del status["choices"]["6"]

    assert field(meta, "ticketStatus") == {
        "name": "ticketStatus", "label": "Freshdesk status", "type": "single_sel_list", "searchable": False,
        "listValues": [{"name": "Open", "value": "2"}, {"name": "Pending", "value": "3"},
                       {"name": "Resolved", "value": "4"}, {"name": "Closed", "value": "5"},
                       {"name": f"Waiting on {unique}", "value": "6"}]}
    assert field(meta, "priority")["listValues"] == [
        {"name": "Low", "value": "1"}, {"name": "Medium", "value": "2"}, {"name": "High", "value": "3"},
        {"name": "Urgent", "value": "4"}]
    assert field(meta, "cf_product") == {
        "name": "cf_product", "label": "Product", "type": "single_sel_list", "searchable": False,
        "listValues": [{"name": v, "value": v} for v in ("Widget Pro", "Widget Lite", "Gadget")]}


def test_a_cf_dropdown_from_the_live_model_is_written_as_a_custom_field(
        khoros: KhorosClient, freshdesk: FreshdeskState, unique: str) -> None:
    customer = make_customer(khoros, unique)

    created = khoros.create_case({"customerId": customer["id"], "title": f"Cf {unique}", "cf_product": "Gadget"})
    refused = khoros.create_case({"customerId": customer["id"], "title": f"Cf {unique}", "cf_product": "Nope"})

    assert created.status == 201, created.body
    assert freshdesk.tickets[int(created.body["id"])]["custom_fields"]["cf_product"] == "Gadget"
    assert refused.status == 422  # checked against the live choices before Freshdesk is called
    assert [f["name"] for f in refused.body["fields"]] == ["cf_product"]


# --------------------------------------------------------------- the description


def test_every_request_the_session_sent_to_freshdesk_fits_the_description(freshdesk: FreshdeskState) -> None:
    """Everything received so far, the Khoros scenario's requests included when it ran first."""
    assert len(freshdesk.requests) > 50
    assert [p for r in freshdesk.requests for p in SPEC.problems(r)] == []


@pytest.mark.parametrize(("method", "path", "query", "body", "problem"), [
    ("GET", "/api/v2/contacts", "emial=a", None, "query parameter 'emial' is not declared"),
    ("GET", "/api/v2/tickets", "requester_id=x", None, "requester_id 'x' is not an integer"),
    ("GET", "/api/v2/tickets", "per_page=101", None, "per_page: 101 is greater than the maximum of 100"),
    ("POST", "/api/v2/tickets", "", {"subject": "s", "description": "d", "requester_id": 1, "status": "2"},
     "body status: '2' is not of type 'integer'"),
    ("POST", "/api/v2/tickets/5/notes", "", {"body": "x", "privat": True}, "body (body): Additional properties"),
    ("POST", "/api/v2/contacts", "", {"email": "a@b.c"}, "body (body): 'name' is a required property"),
    ("DELETE", "/api/v2/contacts/5", "", None, "method not declared"),
    ("GET", "/api/v2/companies", "", None, "path not in the description"),
])
def test_the_description_check_catches_what_freshdesk_would_refuse(method: str, path: str, query: str,
                                                                     body: Any, problem: str) -> None:
    from urllib.parse import parse_qs

    from tests.fakes.base import RecordedRequest

    request = RecordedRequest(method, path, query, parse_qs(query), {}, b"{}" if body is not None else b"", body)

    assert any(problem in found for found in SPEC.problems(request)), SPEC.problems(request)
