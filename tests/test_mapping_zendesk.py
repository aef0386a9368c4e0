"""mappings/zendesk.yaml through our real server against the Zendesk fake.

The Khoros scenario (tests/test_khoros_scenario.py) proves every operation
works; these tests pin what is particular to Zendesk: API-token auth, search
values that stay one quoted phrase, ticket statuses folded into Khoros's
open/closed, interactions kept as internal notes and read back, the live data
model, and every way Zendesk can fail (401, 404, 422, 429, 5xx). Facts and
sources: docs/vendors/zendesk-api.md; set-up: docs/mappings/zendesk.md.

The fake's state is shared by the whole session, so every test makes its own
records (uuid) and the ``faults`` fixture leaves no fault knob armed.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import Fake
from tests.fakes.zendesk import SearchTerm, ZendeskState, create_app
from tests.support.khoros import KhorosClient
from tests.support.live_server import LiveServer
from tests.support.mappings import without_live_cache
from tests.support.vendor_mapping import TRACE, checked_state, created, interaction, named_customer, since
from tests.targets.registry import ROOT

MAPPING = f"{ROOT}/mappings/zendesk.yaml"
TAG = "\nkhoros-interaction: "


@pytest.fixture(scope="module")
def khoros(bridge: Callable[[str, dict[str, str]], KhorosClient], zendesk_env: dict[str, str]) -> KhorosClient:
    return bridge(MAPPING, zendesk_env)


@pytest.fixture
def zendesk(zendesk_fake: Fake) -> Iterator[ZendeskState]:
    """The fake's state; afterwards no fault is left queued and no delay is left set."""
    state: ZendeskState = zendesk_fake.state
    try:
        yield from checked_state(state)
    finally:
        state.slow_seconds = 0.0


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:10]


def make_customer(khoros: KhorosClient, unique: str, **fields: Any) -> dict[str, Any]:
    return created(khoros, named_customer(unique, **fields))


def by_service_id(interactions: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {item["serviceId"]: item for item in interactions}


# --------------------------------------------------------------- credentials


def test_api_token_goes_as_http_basic_email_slash_token(khoros: KhorosClient, zendesk: ZendeskState,
                                                       zendesk_env: dict[str, str], unique: str) -> None:
    mark = len(zendesk.requests)
    customer = make_customer(khoros, unique)

    received = since(zendesk, mark)
    assert [(r.method, r.path) for r in received] == [("POST", "/api/v2/users.json")]
    scheme, _, encoded = received[0].header("Authorization").partition(" ")
    assert scheme == "Basic"
    assert base64.b64decode(encoded).decode() == (
        f"{zendesk_env['ZENDESK_EMAIL']}/token:{zendesk_env['ZENDESK_API_TOKEN']}")
    assert received[0].header("Accept") == "application/json"
    assert received[0].json == {"user": {"name": f"Ann Lee {unique}", "email": f"ann.{unique}@example.com",
                                         "role": "end-user"}}
    assert customer["uri"] == f"{zendesk_env['ZENDESK_URL']}/agent/users/{customer['id']}"


def test_a_wrong_token_is_a_500_that_names_the_variables_to_check(
        bridge: Callable[[str, dict[str, str]], KhorosClient], zendesk_env: dict[str, str]) -> None:
    khoros = bridge(MAPPING, {**zendesk_env, "ZENDESK_API_TOKEN": "not-the-token"})

    answer = khoros.get_customer("10001")

    assert answer.status == 500
    assert answer.body["error"] == "crm_auth_failed"
    assert "ZENDESK_API_TOKEN" in answer.body["message"] and "ZENDESK_EMAIL" in answer.body["message"]
    assert "not-the-token" not in answer.body["message"]
    match = TRACE.search(answer.body["message"])
    assert match and answer.headers["X-Trace-Id"] == match.group(1)


def test_a_token_deleted_in_zendesk_stops_working_with_a_clear_error(
        bridge: Callable[[str, dict[str, str]], KhorosClient], zendesk_env: dict[str, str],
        zendesk: ZendeskState, unique: str) -> None:
    token = f"rotating-{unique}"
    zendesk.api_tokens.append(token)  # Zendesk allows several active tokens (rotation)
    khoros = bridge(MAPPING, {**zendesk_env, "ZENDESK_API_TOKEN": token})
    try:
        assert khoros.meta("case").status == 200
        customer = make_customer(khoros, unique)
    finally:
        zendesk.api_tokens.remove(token)  # an admin deletes (or expires) the token

    answer = khoros.get_customer(customer["id"])

    assert answer.status == 500
    assert answer.body["error"] == "crm_auth_failed"
    assert "HTTP 401" in answer.body["message"]


# --------------------------------------------------------------- search quoting


def test_a_search_value_with_quotes_and_syntax_stays_one_quoted_phrase(khoros: KhorosClient,
                                                                      zendesk: ZendeskState, unique: str) -> None:
    name = f'"a" OR type:ticket {unique}'
    customer = make_customer(khoros, unique, name=name)
    mark = len(zendesk.requests)

    answer = khoros.search({"name": name})

    assert answer.status == 200, answer.body
    assert [c["id"] for c in answer.body] == [customer["id"]]  # found by its words, kept by the exact re-check
    (request,) = since(zendesk, mark)
    assert request.path == "/api/v2/search.json"
    # Zendesk has no escape inside quotes: the quotes are dropped, the words stay one phrase.
    assert request.query_string == (
        "query=type%3Auser+name%3A%22a+OR+type%3Aticket+" + unique + "%22&per_page=100")
    assert zendesk.searches[-1].terms == (SearchTerm("type", "user", False),
                                          SearchTerm("name", f"a OR type:ticket {unique}", True))


def test_a_value_that_closes_the_phrase_cannot_add_a_term(khoros: KhorosClient, zendesk: ZendeskState,
                                                          unique: str) -> None:
    make_customer(khoros, unique, name=f"Ann {unique}")  # the customer a widened search would return
    hostile = f'qqq" name:"Ann {unique}'

    searched = khoros.search({"name": hostile})
    matched = khoros.best_match({"displayName": hostile})

    assert searched.status == 200 and matched.status == 200
    assert searched.body == [] and matched.body == []  # Ann is not returned for someone else's name
    for log in zendesk.searches[-2:]:
        assert log.terms == (SearchTerm("type", "user", False), SearchTerm("name", f"qqq name: Ann {unique}", True))


def test_a_best_match_value_cannot_widen_the_query_to_tickets(khoros: KhorosClient, zendesk: ZendeskState,
                                                             unique: str) -> None:
    display_name = f'"a" OR type:ticket {unique}'
    answer = khoros.best_match({"displayName": display_name, "email": f'x"{unique}@example.com OR type:ticket'})

    assert answer.status == 200
    assert answer.body == []
    email_search, name_search = zendesk.searches[-2:]
    assert email_search.raw_query == f'type:user email:"x {unique}@example.com OR type:ticket"'
    assert email_search.terms[1] == SearchTerm("email", f'x {unique}@example.com OR type:ticket', True)
    assert name_search.raw_query == f'type:user name:"a OR type:ticket {unique}"'
    assert name_search.terms == (SearchTerm("type", "user", False),
                                 SearchTerm("name", f"a OR type:ticket {unique}", True))


# --------------------------------------------------------------- statuses


@pytest.mark.parametrize(("zendesk_status", "khoros_status"), [
    ("new", "open"), ("open", "open"), ("pending", "open"), ("hold", "open"),
    ("solved", "closed"), ("closed", "closed"),
])
def test_ticket_statuses_fold_into_khoros_open_and_closed(khoros: KhorosClient, zendesk: ZendeskState,
                                                          unique: str, zendesk_status: str,
                                                          khoros_status: str) -> None:
    customer = make_customer(khoros, unique)
    ticket = zendesk.add_ticket(requester_id=int(customer["id"]), body="Seeded", subject=f"S {unique}",
                                status=zendesk_status)

    case = khoros.get_case(str(ticket["id"]))
    listed = khoros.customer_cases(customer["id"])

    assert case.status == 200
    assert case.body["status"] == khoros_status
    assert case.body["ticketStatus"] == zendesk_status
    assert [(c["id"], c["status"]) for c in listed.body] == [(str(ticket["id"]), khoros_status)]


@pytest.mark.parametrize(("sent", "stored"), [
    ({"status": "closed"}, "solved"),
    ({"status": "open"}, "open"),
    ({"ticketStatus": "pending"}, "pending"),
    ({"status": "closed", "ticketStatus": "hold"}, "hold"),  # Zendesk's own status is the precise one
])
def test_khoros_status_writes_become_zendesk_statuses(khoros: KhorosClient, zendesk: ZendeskState, unique: str,
                                                      sent: dict[str, str], stored: str) -> None:
    customer = make_customer(khoros, unique)
    created = khoros.create_case({"customerId": customer["id"], "title": f"Status {unique}"}).body

    answer = khoros.update_case(created["id"], sent)

    assert answer.status == 200, answer.body
    assert zendesk.tickets[int(created["id"])]["status"] == stored
    assert answer.body["ticketStatus"] == stored


# --------------------------------------------------------------- interactions


def test_interactions_become_internal_notes_that_read_back_whole(khoros: KhorosClient, zendesk: ZendeskState,
                                                                 unique: str) -> None:
    customer = make_customer(khoros, unique)
    first = interaction(unique, 1)
    second = interaction(unique, 2, author={"service": "twitter", "serviceId": "1", "handle": "shop",
                                            "name": "O'Shop <Support>", "brandOwned": True})

    created = khoros.create_case({"customerId": customer["id"], "title": f"Order {unique}",
                                  "description": "Order 42 missing", "interactions": [first, second]})

    assert created.status == 201, created.body
    comments = zendesk.comments[int(created.body["id"])]
    assert comments[0]["body"] == "Order 42 missing"  # the description is the first comment
    notes = comments[1:]
    assert [n["public"] for n in notes] == [False, False]
    assert notes[0]["body"].startswith(first["body"] + "\n\n---\nKhoros twitter post by Ann Lee (@annlee), "
                                       "2024-03-01T10:11:00Z\n" + first["linkUrl"] + TAG)
    assert "O'Shop <Support> (@shop)" in notes[1]["body"]
    ticket = zendesk.tickets[int(created.body["id"])]
    assert ticket["requester_id"] == int(customer["id"])
    assert ticket["external_id"] == f"khoros:twitter:{first['serviceId']}"

    looked_up = khoros.get_case(created.body["id"])

    assert looked_up.body["interactions"] == [first, second]
    assert created.body["interactions"] == [first, second]
    assert looked_up.body["description"] == "Order 42 missing"


def test_interactions_added_by_update_are_read_back_and_agent_replies_are_not(
        khoros: KhorosClient, zendesk: ZendeskState, zendesk_fake: Fake, zendesk_env: dict[str, str],
        unique: str) -> None:
    customer = make_customer(khoros, unique)
    first, later = interaction(unique, 1), interaction(unique, 3)
    case = khoros.create_case({"customerId": customer["id"], "title": f"Later {unique}", "interactions": [first]}).body
    # An agent answers in Zendesk itself: a comment the bridge did not write.
    reply = requests.put(f"{zendesk_fake.url}/api/v2/tickets/{case['id']}.json",
                         json={"ticket": {"comment": {"body": "Hi Ann, we are on it", "public": True}}},
                         auth=(f"{zendesk_env['ZENDESK_EMAIL']}/token", zendesk_env["ZENDESK_API_TOKEN"]), timeout=5)
    assert reply.status_code == 200

    updated = khoros.update_case(case["id"], {"priority": "urgent", "interactions": [first, later]})

    assert updated.status == 200, updated.body
    assert updated.body["priority"] == "urgent"
    assert updated.body["interactions"] == [first, later]  # `first` again is not stored twice
    bodies = [c["body"] for c in zendesk.comments[int(case["id"])]]
    assert sum(first["body"] in b for b in bodies) == 1
    assert "Hi Ann, we are on it" in bodies
    assert khoros.get_case(case["id"]).body["interactions"] == [first, later]


def test_interactions_on_a_closed_ticket_are_refused_with_the_field_named(khoros: KhorosClient,
                                                                         zendesk: ZendeskState,
                                                                         unique: str) -> None:
    customer = make_customer(khoros, unique)
    ticket = zendesk.add_ticket(requester_id=int(customer["id"]), body="Old", status="closed")

    answer = khoros.update_case(str(ticket["id"]), {"interactions": [interaction(unique, 1)]})

    assert answer.status == 422
    assert [f["name"] for f in answer.body["fields"]] == ["interactions"]
    assert "closed" in answer.body["fields"][0]["errorMessage"]


# --------------------------------------------------------------- fields Zendesk will not change


def test_the_primary_email_is_not_changed_behind_the_agents_back(khoros: KhorosClient, zendesk: ZendeskState,
                                                                 unique: str) -> None:
    customer = make_customer(khoros, unique)
    mark = len(zendesk.requests)

    answer = khoros.update_customer(customer["id"], {"email": f"new.{unique}@example.com"})

    assert answer.status == 422
    assert [f["name"] for f in answer.body["fields"]] == ["email"]
    assert [r.method for r in since(zendesk, mark)] == ["GET"]  # nothing was written
    same = khoros.update_customer(customer["id"], {"email": customer["email"].upper(), "notes": "VIP"})
    assert same.status == 200
    assert same.body["email"] == customer["email"]
    assert same.body["notes"] == "VIP"


def test_the_description_cannot_change_after_creation(khoros: KhorosClient, zendesk: ZendeskState,
                                                      unique: str) -> None:
    customer = make_customer(khoros, unique)
    case = khoros.create_case({"customerId": customer["id"], "title": f"Desc {unique}"}).body
    mark = len(zendesk.requests)

    answer = khoros.update_case(case["id"], {"description": "Something else"})

    assert answer.status == 422
    assert [f["name"] for f in answer.body["fields"]] == ["description"]
    assert since(zendesk, mark) == []


# --------------------------------------------------------------- Zendesk failing


def test_a_duplicate_email_is_a_422_naming_email(khoros: KhorosClient, unique: str) -> None:
    customer = make_customer(khoros, unique)

    answer = khoros.create_customer({"name": "Someone else", "email": customer["email"]})

    assert answer.status == 422
    assert answer.body["error"] == "validation_failed"
    assert [f["name"] for f in answer.body["fields"]] == ["email"]
    assert "already being used" in answer.body["fields"][0]["errorMessage"]


def test_updating_a_closed_ticket_is_a_422_naming_status(khoros: KhorosClient, zendesk: ZendeskState,
                                                        unique: str) -> None:
    customer = make_customer(khoros, unique)
    ticket = zendesk.add_ticket(requester_id=int(customer["id"]), body="Old", status="closed")

    answer = khoros.update_case(str(ticket["id"]), {"priority": "high"})

    assert answer.status == 422
    assert [f["name"] for f in answer.body["fields"]] == ["status"]
    assert "Status closed prevents ticket update" in answer.body["fields"][0]["errorMessage"]


def test_zendesk_field_names_in_a_422_become_khoros_field_names(khoros: KhorosClient, zendesk: ZendeskState,
                                                               unique: str) -> None:
    # Zendesk's RecordInvalid envelope for a ticket, answered to the first call of create_case.
    zendesk.fail_next(422, {"error": "RecordInvalid", "description": "Record validation errors", "details": {
        "subject": [{"description": "Subject: is too long", "error": "TooLong"}],
        "requester_id": [{"description": "Requester: is suspended", "error": "InvalidValue"}],
        "type": [{"description": "Type: is not allowed here", "error": "InvalidValue"}]}})

    answer = khoros.create_case({"customerId": "10001", "title": f"T {unique}"})

    assert answer.status == 422
    assert sorted(f["name"] for f in answer.body["fields"]) == ["customerId", "ticketType", "title"]
    assert "Subject: is too long" in answer.body["message"]


def test_a_422_without_details_still_says_why(khoros: KhorosClient, zendesk: ZendeskState, unique: str) -> None:
    zendesk.fail_next(422, {"error": "RecordInvalid", "description": "Too many comments on this ticket"})

    answer = khoros.create_customer({"name": f"N {unique}"})

    assert answer.status == 422
    assert answer.body["fields"] == []
    assert "Too many comments on this ticket" in answer.body["message"]


@pytest.mark.parametrize("status", [500, 502, 503])
def test_zendesk_5xx_is_a_500_with_the_trace_id(khoros: KhorosClient, zendesk: ZendeskState, status: int) -> None:
    zendesk.fail_next(status, {"error": "unavailable", "description": "Sorry, we could not complete your search"},
                      times=1 if status == 500 else 3)  # a read is retried twice after a 502/503

    answer = khoros.search({"email": "someone@example.com"})

    assert answer.status == 500
    assert answer.body["error"] == "crm_unavailable"
    assert f"HTTP {status}" in answer.body["message"]
    match = TRACE.search(answer.body["message"])
    assert match and answer.headers["X-Trace-Id"] == match.group(1)


# --------------------------------------------------------------- the live data model


def field(meta: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f for f in meta["fields"] if f["name"] == name)


@pytest.fixture
def uncached_mapping(tmp_path: Path) -> str:
    """The shipped mapping with cache_seconds 0: every /meta call asks Zendesk again."""
    return without_live_cache(MAPPING, tmp_path, expected=1)


def test_case_meta_lists_zendesks_dropdowns_with_their_values(
        bridge: Callable[[str, dict[str, str]], KhorosClient], zendesk_env: dict[str, str],
        zendesk: ZendeskState, uncached_mapping: str, unique: str) -> None:
    khoros = bridge(uncached_mapping, zendesk_env)
    priority = next(f for f in zendesk.ticket_fields if f["type"] == "priority")
    priority["system_field_options"].append({"name": f"Critical {unique}", "value": f"critical_{unique}"})
    try:
        meta = khoros.meta("case").body
    finally:
        priority["system_field_options"].pop()

    assert field(meta, "priority") == {
        "name": "priority", "label": "Priority", "type": "single_sel_list", "searchable": False,
        "listValues": [{"name": "Low", "value": "low"}, {"name": "Normal", "value": "normal"},
                       {"name": "High", "value": "high"}, {"name": "Urgent", "value": "urgent"},
                       {"name": f"Critical {unique}", "value": f"critical_{unique}"}]}
    status = field(meta, "ticketStatus")
    assert status["label"] == "Zendesk status"
    assert [v["value"] for v in status["listValues"]] == ["new", "open", "pending", "hold", "solved", "closed"]
    assert field(meta, "status")["listValues"] == [{"name": "Open", "value": "open"},
                                                   {"name": "Closed", "value": "closed"}]


def test_case_meta_answers_from_cache_when_zendesk_fails(
        bridge: Callable[[str, dict[str, str]], KhorosClient], zendesk_env: dict[str, str],
        zendesk: ZendeskState, uncached_mapping: str) -> None:
    khoros = bridge(uncached_mapping, zendesk_env)
    good = khoros.meta("case")
    assert good.status == 200
    zendesk.fail_next(503, "Service Unavailable", times=3)  # a read is tried three times: every try fails
    mark = len(zendesk.requests)

    stale = khoros.meta("case")

    assert [r.path for r in since(zendesk, mark)] == ["/api/v2/ticket_fields.json"] * 3  # it did ask Zendesk
    assert stale.status == 200
    assert stale.body == good.body


def test_case_meta_answers_from_cache_when_zendesk_is_gone(
        bridge: Callable[[str, dict[str, str]], KhorosClient], uncached_mapping: str) -> None:
    state = ZendeskState(agent_email="gone@example.com", api_token="gone-token")
    server = LiveServer(create_app(state)).start()
    khoros = bridge(uncached_mapping, {"ZENDESK_URL": server.url, "ZENDESK_EMAIL": "gone@example.com",
                                       "ZENDESK_API_TOKEN": "gone-token"})
    good = khoros.meta("case")
    assert good.status == 200
    server.stop()

    stale = khoros.meta("case")
    not_cached = khoros.get_case("10001")

    assert stale.status == 200
    assert stale.body == good.body
    assert not_cached.status == 500  # only the data model has a cache
    assert not_cached.body["error"] == "crm_unavailable"


def test_shipped_cache_answers_without_asking_zendesk_again(
        bridge: Callable[[str, dict[str, str]], KhorosClient], zendesk_env: dict[str, str],
        zendesk: ZendeskState) -> None:
    khoros = bridge(MAPPING, zendesk_env)
    first = khoros.meta("case")
    zendesk.fail_next(503, "Service Unavailable")
    mark = len(zendesk.requests)

    again = khoros.meta("case")

    assert since(zendesk, mark) == []
    assert again.body == first.body
    assert zendesk.take_fault() is not None  # still armed: Zendesk was not called; disarmed here


def test_a_note_whose_details_a_person_broke_is_skipped_not_fatal(khoros: KhorosClient, zendesk: ZendeskState,
                                                                   unique: str) -> None:
    customer = make_customer(khoros, unique)
    case = khoros.create_case({"customerId": customer["id"], "title": f"Edited {unique}",
                               "interactions": [interaction(unique, 1), interaction(unique, 2)]}).body
    notes = [c for c in zendesk.comments[int(case["id"])] if "khoros-interaction" in (c.get("body") or "")]
    assert len(notes) == 2
    notes[0]["body"] = notes[0]["body"][:-5]  # the JSON line cut short, as a hand edit might leave it
    answer = khoros.get_case(case["id"])
    assert answer.status == 200, answer.body
    assert [i["serviceId"] for i in answer.body["interactions"]] == [f"{unique}2"]
