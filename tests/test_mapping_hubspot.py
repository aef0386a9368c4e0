"""mappings/hubspot.yaml through our real server, against the HubSpot fake.

The Khoros scenario (tests/test_khoros_scenario.py) proves the contract; these
tests pin how the mapping uses HubSpot, by reading what the fake received
(``hubspot_fake.state.requests``) and by arranging the fake's account the way
an administrator or a HubSpot user could (extra pipelines, notes written in
HubSpot, tickets linked outside Khoros). The fake is shared by the whole test
session: data is made unique per test, and every fault knob is checked to be
spent when a test ends.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.base import RecordedRequest
from tests.fakes.hubspot import HubSpotState, Issue, validation_error
from tests.fakes.hubspot import create_app as create_fake_app
from tests.support.khoros import Answer, KhorosClient
from tests.support.live_server import LiveServer
from tests.support.mappings import without_live_cache
from tests.targets.registry import ROOT

pytestmark = pytest.mark.vendor

MAPPING = f"{ROOT}/mappings/hubspot.yaml"
TOKEN = "hs-private-app-token-123"
PORTAL = "4242"
TRACE = re.compile(r"\(trace ([0-9a-f]{16})\)")


# -- fixtures and helpers ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def khoros(bridge, hubspot_env: dict[str, str]) -> KhorosClient:
    return bridge(MAPPING, {**hubspot_env, "HUBSPOT_PORTAL_ID": PORTAL})


@pytest.fixture
def state(hubspot_fake) -> Iterator[HubSpotState]:
    """The shared fake's account; fails the test if it leaves a fault armed or the fake slowed."""
    yield hubspot_fake.state
    leftover = 0
    while hubspot_fake.state.take_fault() is not None:
        leftover += 1
    slow = hubspot_fake.state.slow_seconds
    hubspot_fake.state.slow_seconds = 0.0
    assert leftover == 0 and not slow, "a test left a fault knob of the HubSpot fake armed"


def unique() -> str:
    return uuid.uuid4().hex[:10]


def mark(state: HubSpotState) -> int:
    with state.lock:
        return len(state.requests)


def since(state: HubSpotState, start: int, method: str | None = None,
          path: str | None = None) -> list[RecordedRequest]:
    with state.lock:
        found = state.requests[start:]
    return [r for r in found if (method is None or r.method == method) and (path is None or r.path == path)]


def interaction(tag: str, n: int, *, author: bool = True) -> dict[str, Any]:
    item: dict[str, Any] = {
        "created": f"2021-03-0{n}T10:1{n}:0{n}Z", "body": f"Post {n} of {tag}",
        "linkUrl": f"https://twitter.com/jane/status/{tag}{n}", "serviceId": f"{tag}{n}",
        "service": "twitter", "contentType": "post" if n == 1 else "reply",
    }
    if author:
        item["author"] = {"service": "twitter", "serviceId": f"77{n}", "handle": f"jane{tag}",
                          "name": "Jane Doe", "brandOwned": False}
    return item


def new_customer(khoros: KhorosClient, **fields: Any) -> dict[str, Any]:
    tag = unique()
    body = {"firstName": "Jane", "lastName": f"Doe{tag}", "email": f"jane.{tag}@example.com", **fields}
    answer = khoros.create_customer(body)
    assert answer.status == 201, answer.body
    return dict(answer.body)


def new_case(khoros: KhorosClient, customer_id: str, **fields: Any) -> dict[str, Any]:
    body = {"customerId": customer_id, "title": f"Broken charger {unique()}", **fields}
    answer = khoros.create_case(body)
    assert answer.status == 201, answer.body
    return dict(answer.body)


def assert_khoros_500(answer: Answer, code: str) -> str:
    """A Khoros 500 with the given error code and a trace id that matches the header."""
    assert answer.status == 500, answer.body
    assert answer.body["error"] == code
    match = TRACE.search(answer.body["message"])
    assert match and answer.headers["X-Trace-Id"] == match.group(1)
    return str(answer.body["message"])


@contextmanager
def extra_pipeline(state: HubSpotState) -> Iterator[str]:
    """An administrator adds a ticket pipeline whose stage labels say nothing about open/closed."""
    pipeline_id = "77"
    stamp = state.now()
    stages = [("771", "Closed (waiting for survey)", "OPEN"), ("772", "Done", "CLOSED"),
              ("773", "Archived", "CLOSED")]
    pipeline = {"id": pipeline_id, "label": "Social care", "displayOrder": 1, "createdAt": stamp,
                "updatedAt": stamp, "archived": False,
                "stages": [{"id": sid, "label": label, "displayOrder": i, "metadata": {"ticketState": ticket_state},
                            "createdAt": stamp, "updatedAt": stamp, "archived": False}
                           for i, (sid, label, ticket_state) in enumerate(stages)]}
    with state.lock:
        props = state.properties["tickets"]
        saved = {name: props[name] for name in ("hs_pipeline", "hs_pipeline_stage")}
        state.pipelines["tickets"].append(pipeline)
        props["hs_pipeline"] = dataclasses.replace(
            saved["hs_pipeline"], options=saved["hs_pipeline"].options + (("Social care", pipeline_id),))
        props["hs_pipeline_stage"] = dataclasses.replace(
            saved["hs_pipeline_stage"],
            options=saved["hs_pipeline_stage"].options + tuple((label, sid) for sid, label, _ in stages))
    try:
        yield pipeline_id
    finally:
        with state.lock:
            state.pipelines["tickets"].remove(pipeline)
            props.update(saved)


# -- credentials -----------------------------------------------------------------------------------

class TestCredentials:
    def test_every_call_sends_the_private_app_token_as_a_bearer_token(self, khoros: KhorosClient,
                                                                      state: HubSpotState) -> None:
        customer = new_customer(khoros)
        start = mark(state)
        assert khoros.get_customer(customer["id"]).status == 200
        sent = since(state, start)
        assert sent and all(r.headers.get("Authorization") == f"Bearer {TOKEN}" for r in sent)

    def test_a_wrong_token_is_a_500_that_names_the_variable_to_fix(self, bridge, hubspot_env: dict[str, str],
                                                                  state: HubSpotState) -> None:
        wrong = bridge(MAPPING, {**hubspot_env, "HUBSPOT_TOKEN": "pat-na1-revoked"})
        message = assert_khoros_500(wrong.get_customer("1001"), "crm_auth_failed")
        assert "HUBSPOT_TOKEN" in message
        assert "pat-na1-revoked" not in message

    def test_an_expired_token_answer_is_the_same_clear_500(self, khoros: KhorosClient, state: HubSpotState) -> None:
        state.fail_next(401, {"status": "error", "message": "The OAuth token used to make this call expired 1 "
                              "hour(s) ago.", "correlationId": str(uuid.uuid4()), "category": "EXPIRED_AUTHENTICATION"})
        assert "HUBSPOT_TOKEN" in assert_khoros_500(khoros.get_customer("1001"), "crm_auth_failed")

    def test_a_missing_scope_is_a_500_carrying_hubspots_explanation(self, khoros: KhorosClient,
                                                                    state: HubSpotState) -> None:
        state.fail_next(403, {"status": "error", "message": "This app hasn't been granted all required scopes",
                              "correlationId": str(uuid.uuid4()), "category": "MISSING_SCOPES"})
        message = assert_khoros_500(khoros.get_customer("1001"), "crm_forbidden")
        assert "required scopes" in message and "docs/mappings/hubspot.md" in message


# -- (a) search and best match ---------------------------------------------------------------------

class TestSearch:
    def test_search_is_one_filter_group_of_eq_filters_with_values_as_json_data(self, khoros: KhorosClient,
                                                                              state: HubSpotState) -> None:
        tricky = f"O'Hara \"Q\" {unique()} OR email=*"
        customer = new_customer(khoros, lastName=tricky)
        start = mark(state)
        answer = khoros.search({"lastName": tricky, "email": customer["email"]})
        assert answer.status == 200
        assert [c["id"] for c in answer.body] == [customer["id"]]
        [search] = since(state, start, "POST", "/crm/v3/objects/contacts/search")
        assert search.json["filterGroups"] == [{"filters": [
            {"propertyName": "lastname", "operator": "EQ", "value": tricky},
            {"propertyName": "email", "operator": "EQ", "value": customer["email"]},
        ]}]
        assert {"email", "firstname", "lastname", "phone", "twitterhandle"} <= set(search.json["properties"])

    def test_an_empty_search_asks_hubspot_nothing_and_finds_nobody(self, khoros: KhorosClient,
                                                                   state: HubSpotState) -> None:
        start = mark(state)
        answer = khoros.search({"email": ""})
        assert answer.status == 200 and answer.body == []
        assert since(state, start, "POST", "/crm/v3/objects/contacts/search") == []

    def test_best_match_is_one_search_with_a_group_per_signal(self, khoros: KhorosClient,
                                                              state: HubSpotState) -> None:
        tag = "a" + unique()[1:]  # a letter, so "+44 <tag>" is never a phone number (all digits once was)
        customer = new_customer(khoros, twitter=f"jane{tag}")
        start = mark(state)
        answer = khoros.best_match({"email": f"nobody.{tag}@example.com", "phoneNumbers": [f"+44 {tag}"],
                                    "screenName": f"@Jane{tag}", "displayName": f"Jane Marie {tag}"})
        assert answer.status == 200
        assert [c["id"] for c in answer.body] == [customer["id"]]
        [search] = since(state, start, "POST", "/crm/v3/objects/contacts/search")
        assert search.json["filterGroups"] == [
            {"filters": [{"propertyName": "email", "operator": "EQ", "value": f"nobody.{tag}@example.com"}]},
            # every spelling of each number in one IN (here only the one given: it is not a number)
            {"filters": [{"propertyName": "phone", "operator": "IN", "values": [f"+44 {tag}"]}]},
            {"filters": [{"propertyName": "twitterhandle", "operator": "IN",
                          "values": [f"jane{tag}", f"@jane{tag}"]}]},
            {"filters": [{"propertyName": "firstname", "operator": "EQ", "value": "Jane Marie"},
                         {"propertyName": "lastname", "operator": "EQ", "value": tag}]},
        ]

    def test_best_match_puts_the_contact_matching_the_strongest_signal_first(self, khoros: KhorosClient) -> None:
        tag = unique()
        by_handle = new_customer(khoros, twitter=f"sam{tag}")
        by_email = new_customer(khoros, email=f"sam.{tag}@example.com")
        answer = khoros.best_match({"screenName": f"sam{tag}", "email": f"sam.{tag}@example.com"})
        assert answer.status == 200
        assert [c["id"] for c in answer.body] == [by_email["id"], by_handle["id"]]

    def test_best_match_with_no_usable_signal_asks_hubspot_nothing(self, khoros: KhorosClient,
                                                                    state: HubSpotState) -> None:
        start = mark(state)
        answer = khoros.best_match({"displayName": "Cher", "profileUrl": "https://twitter.com/cher"})
        assert answer.status == 200 and answer.body == []
        assert since(state, start, "POST", "/crm/v3/objects/contacts/search") == []


# -- (b) tickets: pipeline, stage, and open/closed from ticketState --------------------------------

class TestTickets:
    def test_a_case_is_a_ticket_in_the_pipeline_at_its_first_open_stage_linked_to_the_contact(
            self, khoros: KhorosClient, state: HubSpotState) -> None:
        customer = new_customer(khoros)
        start = mark(state)
        case = new_case(khoros, customer["id"], description="It sparks", priority="HIGH")
        [create] = since(state, start, "POST", "/crm/v3/objects/tickets")
        assert create.json["properties"] == {"subject": case["title"], "content": "It sparks",
                                             "hs_ticket_priority": "HIGH", "hs_pipeline": "0",
                                             "hs_pipeline_stage": "1"}
        assert create.json["associations"] == [{"to": {"id": customer["id"]}, "types": [
            {"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 16}]}]
        assert state.associated_ids("tickets", case["id"], "contacts") == [customer["id"]]
        assert case["status"] == "open" and case["stage"] == "New"
        assert case["linkUrl"] == f"https://app.hubspot.com/contacts/{PORTAL}/record/0-5/{case['id']}"

    def test_a_case_created_closed_starts_at_the_first_closed_stage(self, khoros: KhorosClient,
                                                                    state: HubSpotState) -> None:
        customer = new_customer(khoros)
        case = new_case(khoros, customer["id"], status="closed")
        assert case["status"] == "closed"
        assert state.get("tickets", case["id"]).properties["hs_pipeline_stage"] == "4"

    def test_closing_and_reopening_move_the_ticket_between_stages(self, khoros: KhorosClient,
                                                                 state: HubSpotState) -> None:
        case = new_case(khoros, new_customer(khoros)["id"])
        start = mark(state)
        closed = khoros.update_case(case["id"], {"status": "closed"})
        assert closed.status == 200 and closed.body["status"] == "closed"
        reopened = khoros.update_case(case["id"], {"status": "open"})
        assert reopened.status == 200 and reopened.body["status"] == "open"
        patches = since(state, start, "PATCH", f"/crm/v3/objects/tickets/{case['id']}")
        assert [p.json["properties"] for p in patches] == [{"hs_pipeline_stage": "4"}, {"hs_pipeline_stage": "1"}]

    def test_a_status_that_does_not_change_the_state_keeps_the_stage(self, khoros: KhorosClient,
                                                                      state: HubSpotState) -> None:
        case = new_case(khoros, new_customer(khoros)["id"])
        state.update(state.get("tickets", case["id"]), {"hs_pipeline_stage": "3"})  # "Waiting on us"
        start = mark(state)
        answer = khoros.update_case(case["id"], {"status": "open", "description": "Still open"})
        assert answer.status == 200 and answer.body["stage"] == "Waiting on us"
        [patch] = since(state, start, "PATCH", f"/crm/v3/objects/tickets/{case['id']}")
        assert patch.json["properties"] == {"content": "Still open"}

    def test_status_comes_from_the_stage_metadata_never_from_its_label(self, khoros: KhorosClient,
                                                                       state: HubSpotState) -> None:
        case = new_case(khoros, new_customer(khoros)["id"])
        with extra_pipeline(state) as pipeline:
            ticket = state.get("tickets", case["id"])
            state.update(ticket, {"hs_pipeline": pipeline, "hs_pipeline_stage": "771"})
            looked = khoros.get_case(case["id"])
            assert looked.status == 200
            assert (looked.body["status"], looked.body["stage"]) == ("open", "Closed (waiting for survey)")

            start = mark(state)
            closed = khoros.update_case(case["id"], {"status": "closed"})
            assert (closed.body["status"], closed.body["stage"]) == ("closed", "Done")
            [patch] = since(state, start, "PATCH", f"/crm/v3/objects/tickets/{case['id']}")
            assert patch.json["properties"] == {"hs_pipeline_stage": "772"}  # its own pipeline's stage

            cases = khoros.customer_cases(case["customerId"])
            assert [c["status"] for c in cases.body if c["id"] == case["id"]] == ["closed"]


# -- (c) interactions are notes on the ticket -------------------------------------------------------

class TestInteractions:
    def test_each_interaction_becomes_a_note_associated_with_the_ticket_and_contact(
            self, khoros: KhorosClient, state: HubSpotState) -> None:
        customer = new_customer(khoros)
        tag = unique()
        sent = [interaction(tag, 1), interaction(tag, 2, author=False)]
        start = mark(state)
        case = new_case(khoros, customer["id"], interactions=sent)
        notes = since(state, start, "POST", "/crm/v3/objects/notes")
        assert [n.json["properties"]["hs_timestamp"] for n in notes] == [i["created"] for i in sent]
        for note in notes:
            assert note.json["associations"] == [
                {"to": {"id": case["id"]}, "types": [{"associationCategory": "HUBSPOT_DEFINED",
                                                      "associationTypeId": 228}]},
                {"to": {"id": customer["id"]}, "types": [{"associationCategory": "HUBSPOT_DEFINED",
                                                          "associationTypeId": 202}]}]
        body = notes[0].json["properties"]["hs_note_body"]
        assert "<p>Post 1 of" in body and 'href="https://twitter.com/jane/status/' in body
        assert len(state.associated_ids("tickets", case["id"], "notes")) == 2

    def test_case_lookup_reads_the_notes_back_through_v4_associations(self, khoros: KhorosClient,
                                                                      state: HubSpotState) -> None:
        tag = unique()
        sent = [interaction(tag, 2), interaction(tag, 1, author=False)]
        case = new_case(khoros, new_customer(khoros)["id"], interactions=sent)
        start = mark(state)
        answer = khoros.get_case(case["id"])
        assert answer.status == 200
        assert answer.body["interactions"] == sorted(sent, key=lambda i: i["created"])
        assert since(state, start, "GET", f"/crm/v4/objects/tickets/{case['id']}/associations/notes")
        [batch] = since(state, start, "POST", "/crm/v3/objects/notes/batch/read")
        note_ids = state.associated_ids("tickets", case["id"], "notes")
        assert sorted(i["id"] for i in batch.json["inputs"]) == sorted(note_ids)

    def test_text_that_looks_like_markup_or_our_marker_survives_the_round_trip(self, khoros: KhorosClient) -> None:
        item = interaction(unique(), 1)
        item["body"] = 'I <3 "this" & that\'s it\n<p>Khoros interaction: {"x": 1}</p>'
        item["author"]["name"] = "Jane <b>Doe</b>"
        item["linkUrl"] += "?a=1&b=2"
        case = new_case(khoros, new_customer(khoros)["id"], interactions=[item])
        assert khoros.get_case(case["id"]).body["interactions"] == [item]

    def test_notes_whose_quotes_hubspot_turned_into_entities_still_read_back(self, khoros: KhorosClient,
                                                                             state: HubSpotState) -> None:
        item = interaction(unique(), 1)
        case = new_case(khoros, new_customer(khoros)["id"], interactions=[item])
        [note_id] = state.associated_ids("tickets", case["id"], "notes")
        note = state.get("notes", note_id)
        with state.lock:
            note.properties["hs_note_body"] = note.properties["hs_note_body"].replace('"', "&quot;")
        assert khoros.get_case(case["id"]).body["interactions"] == [item]

    @pytest.mark.parametrize("damage", ["not json", '{"created": "2021-03-01T10:11:01Z"}'])
    def test_a_note_damaged_in_hubspot_is_dropped_not_a_failed_lookup(self, khoros: KhorosClient,
                                                                     state: HubSpotState, damage: str) -> None:
        tag = unique()
        kept, damaged = interaction(tag, 1), interaction(tag, 2)
        case = new_case(khoros, new_customer(khoros)["id"], interactions=[kept, damaged])
        for note_id in state.associated_ids("tickets", case["id"], "notes"):
            note = state.get("notes", note_id)
            if damaged["serviceId"] in note.properties["hs_note_body"]:
                with state.lock:
                    head = note.properties["hs_note_body"].rsplit("<p>Khoros interaction: ", 1)[0]
                    note.properties["hs_note_body"] = f"{head}<p>Khoros interaction: {damage}</p>"
        answer = khoros.get_case(case["id"])
        assert answer.status == 200, answer.body
        assert answer.body["interactions"] == [kept]

    def test_notes_people_wrote_in_hubspot_are_not_taken_for_interactions(self, khoros: KhorosClient,
                                                                          state: HubSpotState) -> None:
        item = interaction(unique(), 1)
        case = new_case(khoros, new_customer(khoros)["id"], interactions=[item])
        state.create("notes", {"hs_timestamp": "2021-03-09T09:00:00Z", "hs_note_body": "<p>Called her back</p>"},
                     [{"to": {"id": case["id"]},
                       "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 228}]}])
        answer = khoros.get_case(case["id"])
        assert len(state.associated_ids("tickets", case["id"], "notes")) == 2
        assert answer.body["interactions"] == [item]

    def test_update_adds_notes_and_answers_every_interaction(self, khoros: KhorosClient,
                                                             state: HubSpotState) -> None:
        tag = unique()
        first, second = interaction(tag, 1), interaction(tag, 2)
        case = new_case(khoros, new_customer(khoros)["id"], interactions=[first])
        answer = khoros.update_case(case["id"], {"interactions": [second]})
        assert answer.status == 200
        assert answer.body["interactions"] == [first, second]
        assert len(state.associated_ids("tickets", case["id"], "notes")) == 2


# -- (d) a customer's cases -------------------------------------------------------------------------

class TestCustomerCases:
    def test_cases_come_from_the_contacts_ticket_associations(self, khoros: KhorosClient,
                                                             state: HubSpotState) -> None:
        customer = new_customer(khoros)
        mine = new_case(khoros, customer["id"])
        linked_in_hubspot = state.create(
            "tickets", {"subject": f"Phoned in {unique()}", "hs_pipeline_stage": "2"},
            [{"to": {"id": customer["id"]},
              "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 16}]}])
        someone_else = state.create("tickets", {"subject": f"Not hers {unique()}", "hs_pipeline_stage": "1"})
        start = mark(state)
        answer = khoros.customer_cases(customer["id"])
        assert answer.status == 200
        ids = [c["id"] for c in answer.body]
        assert sorted(ids) == sorted([mine["id"], linked_in_hubspot.id])
        assert someone_else.id not in ids
        assert all(c["customerId"] == customer["id"] and c["status"] == "open" for c in answer.body)
        assert since(state, start, "GET", f"/crm/v4/objects/contacts/{customer['id']}/associations/tickets")
        [batch] = since(state, start, "POST", "/crm/v3/objects/tickets/batch/read")
        assert sorted(i["id"] for i in batch.json["inputs"]) == sorted(ids)

    def test_a_customer_without_tickets_has_no_cases_and_no_batch_read(self, khoros: KhorosClient,
                                                                       state: HubSpotState) -> None:
        customer = new_customer(khoros)
        start = mark(state)
        answer = khoros.customer_cases(customer["id"])
        assert answer.status == 200 and answer.body == []
        assert since(state, start, "POST", "/crm/v3/objects/tickets/batch/read") == []


# -- customers: writes -----------------------------------------------------------------------------

class TestCustomerWrites:
    def test_creating_a_contact_whose_email_exists_answers_that_contact(self, khoros: KhorosClient,
                                                                        state: HubSpotState) -> None:
        first = new_customer(khoros)
        again = khoros.create_customer({"firstName": "Someone", "email": first["email"].upper()})
        assert again.status == 201
        assert again.body == first
        with state.lock:
            same = [r for r in state.records["contacts"].values() if r.properties.get("email") == first["email"]]
        assert len(same) == 1

    def test_clearing_a_field_sends_hubspot_an_empty_string(self, khoros: KhorosClient, state: HubSpotState) -> None:
        customer = new_customer(khoros, jobTitle="Chief")
        start = mark(state)
        answer = khoros.update_customer(customer["id"], {"jobTitle": None})
        assert answer.status == 200 and "jobTitle" not in answer.body
        [patch] = since(state, start, "PATCH", f"/crm/v3/objects/contacts/{customer['id']}")
        assert patch.json == {"properties": {"jobtitle": ""}}


# -- unhappy paths ---------------------------------------------------------------------------------

class TestErrors:
    @pytest.mark.parametrize("call", ["get_customer", "customer_cases", "update_customer", "get_case",
                                      "update_case"])
    def test_unknown_ids_are_404_with_a_trace_id(self, khoros: KhorosClient, call: str) -> None:
        calls = {"get_customer": lambda: khoros.get_customer("999999"),
                 "customer_cases": lambda: khoros.customer_cases("999999"),
                 "update_customer": lambda: khoros.update_customer("999999", {"firstName": "X"}),
                 "get_case": lambda: khoros.get_case("999999"),
                 "update_case": lambda: khoros.update_case("999999", {"status": "closed"})}
        answer = calls[call]()
        assert answer.status == 404, answer.body
        assert answer.body["error"] == "not_found"
        assert "999999" in answer.body["message"] and TRACE.search(answer.body["message"])

    def test_a_contact_id_is_not_a_case_id(self, khoros: KhorosClient) -> None:
        customer = new_customer(khoros)
        assert khoros.get_case(customer["id"]).status == 404

    def test_a_dropdown_value_hubspot_does_not_offer_is_422_naming_khoros_fields(self, khoros: KhorosClient,
                                                                                state: HubSpotState) -> None:
        last_name = f"Doe{unique()}"
        answer = khoros.create_customer({"lastName": last_name, "leadStatus": "BOGUS", "lifecycleStage": "nonsense"})
        assert answer.status == 422, answer.body
        assert answer.body["error"] == "validation_failed"
        assert {f["name"] for f in answer.body["fields"]} == {"leadStatus", "lifecycleStage"}
        assert "BOGUS" not in answer.body["message"]
        with state.lock:
            assert not [r for r in state.records["contacts"].values() if r.properties.get("lastname") == last_name]

    def test_hubspots_validation_error_becomes_422_with_khoros_field_names(self, khoros: KhorosClient,
                                                                          state: HubSpotState) -> None:
        assert khoros.meta("customer").status == 200  # the data model is cached: the next HubSpot call is the write
        refusal = validation_error([
            Issue("hs_lead_status", "INVALID_OPTION", "BOGUS was not one of the allowed options: [NEW]"),
            Issue("twitterhandle", "SOMETHING_NEW", "twitterhandle says no"),
            Issue("email", "INVALID_EMAIL", "Email address jane@x is invalid")])
        state.fail_next(refusal.status, refusal.body)
        start = mark(state)
        answer = khoros.create_customer({"lastName": f"Doe{unique()}", "twitter": "jane", "leadStatus": "NEW",
                                         "email": f"jane.{unique()}@example.com"})
        assert since(state, start, "POST", "/crm/v3/objects/contacts"), "HubSpot's refusal did not answer the write"
        assert answer.status == 422, answer.body
        trace = answer.headers["X-Trace-Id"]
        assert answer.body["fields"] == [
            {"name": "leadStatus", "errorMessage": f"is not one of the values HubSpot allows for this field "
                                                   f"(trace {trace})"},
            {"name": "twitter", "errorMessage": f"was refused by HubSpot (trace {trace})"},
            {"name": "email", "errorMessage": f"is not a valid email address (trace {trace})"}]
        assert "BOGUS" not in str(answer.body) and "jane@x" not in str(answer.body)

    def test_hubspots_newer_error_shape_also_names_the_fields(self, khoros: KhorosClient,
                                                              state: HubSpotState) -> None:
        assert khoros.meta("customer").status == 200
        customer = new_customer(khoros)
        state.fail_next(400, {"status": "error", "message": "Invalid input", "correlationId": str(uuid.uuid4()),
                              "category": "VALIDATION_ERROR",
                              "errors": [{"message": "bad", "code": "INVALID_EMAIL",
                                          "context": {"propertyName": ["email"]}},
                                         {"message": "no context", "code": "OTHER"}]})
        answer = khoros.update_customer(customer["id"], {"email": f"new.{unique()}@example.com"})
        assert answer.status == 422, answer.body
        assert [f["name"] for f in answer.body["fields"]] == ["email"]
        assert answer.body["fields"][0]["errorMessage"].startswith("is not a valid email address")

    def test_a_priority_hubspot_does_not_know_is_422_and_creates_no_ticket(self, khoros: KhorosClient,
                                                                           state: HubSpotState) -> None:
        customer = new_customer(khoros)
        answer = khoros.create_case({"customerId": customer["id"], "title": "T", "priority": "URGENTISH",
                                     "interactions": [interaction(unique(), 1)]})
        assert answer.status == 422, answer.body
        assert [f["name"] for f in answer.body["fields"]] == ["priority"]
        assert state.associated_ids("contacts", customer["id"], "tickets") == []
        assert state.associated_ids("contacts", customer["id"], "notes") == []

    def test_an_email_taken_by_another_contact_is_422_on_email(self, khoros: KhorosClient) -> None:
        first, second = new_customer(khoros), new_customer(khoros)
        answer = khoros.update_customer(second["id"], {"email": first["email"]})
        assert answer.status == 422
        assert [f["name"] for f in answer.body["fields"]] == ["email"]

    def test_a_case_cannot_move_to_another_customer(self, khoros: KhorosClient, state: HubSpotState) -> None:
        case = new_case(khoros, new_customer(khoros)["id"])
        other = new_customer(khoros)
        start = mark(state)
        answer = khoros.update_case(case["id"], {"customerId": other["id"], "status": "closed"})
        assert answer.status == 422
        assert [f["name"] for f in answer.body["fields"]] == ["customerId"]
        assert since(state, start, "PATCH") == []

    def test_a_429_with_a_short_retry_after_is_retried_inside_the_budget(self, khoros: KhorosClient,
                                                                         state: HubSpotState) -> None:
        customer = new_customer(khoros)
        state.fail_next(429, headers={"Retry-After": "1"})
        start = mark(state)
        answer = khoros.get_customer(customer["id"])
        assert answer.status == 200 and answer.body == customer
        assert len(since(state, start, "GET", f"/crm/v3/objects/contacts/{customer['id']}")) == 2

    def test_a_429_asking_for_too_long_a_wait_is_a_clear_500_at_once(self, khoros: KhorosClient,
                                                                     state: HubSpotState) -> None:
        customer = new_customer(khoros)
        state.fail_next(429, headers={"Retry-After": "30"})
        start = mark(state)
        answer = khoros.get_customer(customer["id"])
        message = assert_khoros_500(answer, "crm_rate_limited")
        assert "rate limit" in message and "SECONDLY" in message
        assert len(since(state, start)) == 1  # no retry, no waiting
        assert answer.seconds < 5

    def test_a_429_without_retry_after_is_retried_after_the_mapping_s_wait(self, khoros: KhorosClient,
                                                                           state: HubSpotState) -> None:
        customer = khoros.create_customer({"firstName": "Rate", "lastName": "Limited",
                                           "email": f"rl.{unique()}@example.com"}).body
        state.fail_next(429)
        start = mark(state)
        answer = khoros.get_customer(customer["id"])
        assert answer.status == 200, answer.body
        assert len(since(state, start)) == 2  # the 429, then the same call again

    def test_a_429_that_persists_is_a_clear_500(self, khoros: KhorosClient, state: HubSpotState) -> None:
        state.fail_next(429, times=3)
        start = mark(state)
        assert_khoros_500(khoros.get_case("1001"), "crm_rate_limited")
        assert len(since(state, start)) == 3  # the first try and retry_429 (2) retries

    @pytest.mark.parametrize("body", ["<html><body>502 Bad Gateway</body></html>",
                                      {"status": "error", "message": "internal error"}])
    def test_hubspot_failing_is_a_500_with_a_trace_id(self, khoros: KhorosClient, state: HubSpotState,
                                                      body: Any) -> None:
        state.fail_next(502, body, times=3)  # the search is marked safe: tried three times
        start = mark(state)
        message = assert_khoros_500(khoros.search({"email": f"a.{unique()}@example.com"}), "crm_error")
        assert "HubSpot failed (HTTP 502)" in message
        assert len(since(state, start, "POST", "/crm/v3/objects/contacts/search")) == 3

    def test_a_search_sent_as_post_is_retried_after_a_502_because_the_mapping_marks_it_safe(
            self, khoros: KhorosClient, state: HubSpotState) -> None:
        customer = new_customer(khoros)
        state.fail_next(502, "<html><body>502 Bad Gateway</body></html>")
        start = mark(state)
        answer = khoros.search({"email": customer["email"]})
        assert answer.status == 200 and [c["id"] for c in answer.body] == [customer["id"]]
        assert len(since(state, start, "POST", "/crm/v3/objects/contacts/search")) == 2

    def test_a_create_is_not_retried_after_a_502(self, khoros: KhorosClient, state: HubSpotState) -> None:
        state.fail_next(502, "<html><body>502 Bad Gateway</body></html>")
        start = mark(state)
        answer = khoros.create_customer({"firstName": "Once", "lastName": "Only", "email": f"o.{unique()}@example.com"})
        assert answer.status == 500
        assert len(since(state, start, "POST", "/crm/v3/objects/contacts")) == 1


# -- the live data model ---------------------------------------------------------------------------

@pytest.fixture
def uncached_mapping(tmp_path: Path) -> str:
    """The shipped mapping with the live model's cache turned off, so every /meta call asks HubSpot."""
    return without_live_cache(MAPPING, tmp_path, expected=2)


def field(meta: Answer, name: str) -> dict[str, Any]:
    assert meta.status == 200, meta.body
    return next(f for f in meta.body["fields"] if f["name"] == name)


class TestLiveDataModel:
    def test_case_meta_lists_the_priority_dropdown_as_hubspot_defines_it(self, bridge, hubspot_env: dict[str, str],
                                                                         state: HubSpotState) -> None:
        with state.lock:
            props = state.properties["tickets"]
            saved = props["hs_ticket_priority"]
            props["hs_ticket_priority"] = dataclasses.replace(saved, options=saved.options + (("Urgent", "URGENT"),))
        try:
            fresh = bridge(MAPPING, hubspot_env)  # a new engine: nothing cached yet
            start = mark(state)
            priority = field(fresh.meta("case"), "priority")
        finally:
            with state.lock:
                props["hs_ticket_priority"] = saved
        assert priority["type"] == "single_sel_list"
        assert priority["listValues"] == [{"name": "Low", "value": "LOW"}, {"name": "Medium", "value": "MEDIUM"},
                                          {"name": "High", "value": "HIGH"}, {"name": "Urgent", "value": "URGENT"}]
        assert since(state, start, "GET", "/crm/v3/properties/tickets")
        lead = field(fresh.meta("customer"), "leadStatus")
        assert lead["type"] == "single_sel_list"
        assert {"name": "In Progress", "value": "IN_PROGRESS"} in lead["listValues"]

    def test_meta_answers_from_cache_when_hubspot_fails(self, bridge, hubspot_env: dict[str, str],
                                                        uncached_mapping: str, state: HubSpotState) -> None:
        client = bridge(uncached_mapping, hubspot_env)
        good = client.meta("case")
        assert field(good, "priority")["type"] == "single_sel_list"
        state.fail_next(503, "<html>Service Unavailable</html>")
        start = mark(state)
        again = client.meta("case")
        assert since(state, start, "GET", "/crm/v3/properties/tickets"), "the CRM was not asked again"
        assert again.status == 200 and again.body == good.body

    def test_meta_answers_from_cache_when_hubspot_is_down_and_500s_without_one(self, bridge,
                                                                               uncached_mapping: str) -> None:
        account = HubSpotState(token=TOKEN)
        server = LiveServer(create_fake_app(account)).start()
        environ = {"HUBSPOT_URL": server.url, "HUBSPOT_TOKEN": TOKEN}
        warm, cold = bridge(uncached_mapping, environ), bridge(uncached_mapping, environ)
        try:
            good = warm.meta("customer")
            assert field(good, "lifecycleStage")["type"] == "single_sel_list"
        finally:
            server.stop()
        again = warm.meta("customer")
        assert again.status == 200 and again.body == good.body
        assert_khoros_500(cold.meta("customer"), "crm_unavailable")
