"""The HubSpot fake answers as HubSpot's documentation says, over real HTTP.

Why: ``mappings/hubspot.yaml`` is only as well tested as this fake is
faithful, so each documented envelope, status and quirk the mapping relies on
is pinned here (sources in ``docs/vendors/hubspot-api.md``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from tests.fakes.hubspot import AUTH_MESSAGE, HubSpotState, create_app
from tests.support.live_server import serve

TOKEN = "pat-na1-11111111-2222-3333-4444-555555555555"
ISO_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
HUBSPOT_DEFINED = "HUBSPOT_DEFINED"


@dataclass
class Api:
    """A loopback HubSpot: ``api("GET", "/crm/v3/...")`` sends the bearer token."""

    url: str
    session: requests.Session

    def __call__(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {TOKEN}", **kwargs.pop("headers", {})}
        return self.session.request(method, self.url + path, headers=headers, timeout=5,
                                    **kwargs)


@pytest.fixture
def state() -> HubSpotState:
    return HubSpotState(token=TOKEN)


@pytest.fixture
def api(state: HubSpotState) -> Iterator[Api]:
    with serve(create_app(state)) as server, requests.Session() as session:
        yield Api(server.url, session)


def create_contact(api: Api, **properties: str) -> dict[str, Any]:
    answer = api("POST", "/crm/v3/objects/contacts", json={"properties": properties})
    assert answer.status_code == 201, answer.text
    return answer.json()


def link(type_id: int, to_id: str) -> dict[str, Any]:
    return {"to": {"id": to_id},
            "types": [{"associationCategory": HUBSPOT_DEFINED, "associationTypeId": type_id}]}


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token", f"Basic {TOKEN}"])
def test_missing_or_wrong_token_gets_hubspots_401_body(api: Api, authorization: str | None
                                                       ) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    answer = api.session.get(api.url + "/crm/v3/objects/contacts/1", headers=headers, timeout=5)
    assert answer.status_code == 401
    body = answer.json()
    assert body["status"] == "error"
    assert body["category"] == "INVALID_AUTHENTICATION"
    assert body["message"] == AUTH_MESSAGE
    assert body["correlationId"]


def test_create_contact_answers_201_with_string_id_and_ms_timestamps(api: Api) -> None:
    created = create_contact(api, email="Jane.Doe@Example.com", firstname="Jane")
    assert isinstance(created["id"], str) and created["id"].isdigit()
    assert ISO_MS.fullmatch(created["createdAt"]) and ISO_MS.fullmatch(created["updatedAt"])
    assert created["archived"] is False
    assert created["properties"]["email"] == "jane.doe@example.com"  # stored lower-cased
    assert created["properties"]["hs_object_id"] == created["id"]

    read = api("GET", f"/crm/v3/objects/contacts/{created['id']}",
               params={"properties": "email,lastname,not_a_property"}).json()
    assert read["properties"]["email"] == "jane.doe@example.com"
    assert read["properties"]["lastname"] is None  # defined but empty: null
    assert "not_a_property" not in read["properties"]  # undefined: left out
    assert {"createdate", "lastmodifieddate", "hs_object_id"} <= set(read["properties"])


def test_patch_contact_answers_200_with_the_updated_object(api: Api) -> None:
    contact = create_contact(api, email="a@example.com")
    answer = api("PATCH", f"/crm/v3/objects/contacts/{contact['id']}",
                 json={"properties": {"lastname": "Doe", "hs_lead_status": "OPEN"}})
    assert answer.status_code == 200
    changed = {"lastname": "Doe", "hs_lead_status": "OPEN"}
    assert changed.items() <= answer.json()["properties"].items()
    assert answer.json()["updatedAt"] >= contact["updatedAt"]


def test_search_ors_filter_groups_and_ands_filters_within_one(api: Api) -> None:
    jane = create_contact(api, email="jane@example.com", firstname="Jane", lastname="Doe")
    john = create_contact(api, email="john@other.org", firstname="John", lastname="Doe")
    create_contact(api, email="jim@example.com", firstname="Jim", lastname="Roe")
    body = {"filterGroups": [
        {"filters": [{"propertyName": "email", "operator": "EQ", "value": "JANE@EXAMPLE.COM"}]},
        {"filters": [{"propertyName": "lastname", "operator": "EQ", "value": "doe"},
                     {"propertyName": "email", "operator": "CONTAINS_TOKEN", "value": "*@other.org"}]},
    ], "properties": ["email"]}
    answer = api("POST", "/crm/v3/objects/contacts/search", json=body).json()
    assert answer["total"] == 2
    assert [r["id"] for r in answer["results"]] == [jane["id"], john["id"]]
    assert "paging" not in answer


def test_search_pages_with_after(api: Api) -> None:
    ids = [create_contact(api, email=f"p{i}@example.com")["id"] for i in range(3)]
    first = api("POST", "/crm/v3/objects/contacts/search", json={"limit": 2}).json()
    assert first["total"] == 3 and [r["id"] for r in first["results"]] == ids[:2]
    after = first["paging"]["next"]["after"]
    second = api("POST", "/crm/v3/objects/contacts/search", json={"limit": 2, "after": after})
    assert [r["id"] for r in second.json()["results"]] == ids[2:]


def test_search_refuses_more_than_five_filter_groups(api: Api) -> None:
    group = {"filters": [{"propertyName": "email", "operator": "HAS_PROPERTY"}]}
    answer = api("POST", "/crm/v3/objects/contacts/search", json={"filterGroups": [group] * 6})
    assert answer.status_code == 400
    assert answer.json()["category"] == "VALIDATION_ERROR"


def test_ticket_with_inline_contact_association_is_linked_both_ways(api: Api) -> None:
    contact = create_contact(api, email="t@example.com")
    answer = api("POST", "/crm/v3/objects/tickets", json={
        "properties": {"subject": "Broken charger", "content": "It sparks", "hs_pipeline": "0",
                       "hs_pipeline_stage": "1", "hs_ticket_priority": "HIGH"},
        "associations": [link(16, contact["id"])]})
    assert answer.status_code == 201, answer.text
    ticket = answer.json()

    to_contacts = api("GET", f"/crm/v4/objects/tickets/{ticket['id']}/associations/contacts")
    assert to_contacts.json()["results"] == [{"toObjectId": int(contact["id"]), "associationTypes": [
        {"category": HUBSPOT_DEFINED, "typeId": 16, "label": None}]}]
    to_tickets = api("GET", f"/crm/v4/objects/contacts/{contact['id']}/associations/tickets")
    assert [r["associationTypes"][0]["typeId"] for r in to_tickets.json()["results"]] == [15]

    # A contact's tickets can also be searched for through the association.
    found = api("POST", "/crm/v3/objects/tickets/search", json={"filterGroups": [{"filters": [
        {"propertyName": "associations.contact", "operator": "EQ", "value": contact["id"]}]}]})
    assert [r["id"] for r in found.json()["results"]] == [ticket["id"]]


def test_ticket_with_wrong_association_type_is_refused(api: Api) -> None:
    contact = create_contact(api, email="w@example.com")
    answer = api("POST", "/crm/v3/objects/tickets", json={
        "properties": {"subject": "x", "hs_pipeline_stage": "1"},
        "associations": [link(15, contact["id"])]})  # 15 is contact->ticket
    assert answer.status_code == 400


def test_note_on_ticket_reads_back_via_v4_associations_and_batch_read(api: Api) -> None:
    ticket = api("POST", "/crm/v3/objects/tickets",
                 json={"properties": {"subject": "s", "hs_pipeline_stage": "2"}}).json()
    bodies = ["first", "second"]
    for text in bodies:
        answer = api("POST", "/crm/v3/objects/notes", json={
            "properties": {"hs_note_body": text, "hs_timestamp": "2024-01-15T10:30:00Z"},
            "associations": [link(228, ticket["id"])]})
        assert answer.status_code == 201, answer.text
        assert answer.json()["properties"]["hs_timestamp"] == "2024-01-15T10:30:00.000Z"

    listed = api("GET", f"/crm/v4/objects/tickets/{ticket['id']}/associations/notes").json()
    assert {t["typeId"] for r in listed["results"] for t in r["associationTypes"]} == {227}
    note_ids = [str(r["toObjectId"]) for r in listed["results"]]
    read = api("POST", "/crm/v3/objects/notes/batch/read", json={
        "inputs": [{"id": i} for i in note_ids], "properties": ["hs_note_body", "hs_timestamp"]})
    assert read.status_code == 200
    assert read.json()["status"] == "COMPLETE"
    assert [r["properties"]["hs_note_body"] for r in read.json()["results"]] == bodies


def test_note_without_hs_timestamp_is_refused(api: Api) -> None:
    answer = api("POST", "/crm/v3/objects/notes", json={"properties": {"hs_note_body": "x"}})
    assert answer.status_code == 400


def test_put_default_association_links_existing_records(api: Api) -> None:
    contact = create_contact(api, email="d@example.com")
    ticket = api("POST", "/crm/v3/objects/tickets",
                 json={"properties": {"subject": "s", "hs_pipeline_stage": "1"}}).json()
    answer = api("PUT", f"/crm/v4/objects/ticket/{ticket['id']}/associations/default/contact/"
                        f"{contact['id']}")
    assert answer.status_code == 200
    assert answer.json()["results"][0]["associationSpec"] == {
        "associationCategory": HUBSPOT_DEFINED, "associationTypeId": 16}
    read = api("GET", f"/crm/v3/objects/contacts/{contact['id']}",
               params={"associations": "tickets"}).json()
    assert read["associations"]["tickets"]["results"] == [
        {"id": ticket["id"], "type": "contact_to_ticket"}]


def test_closed_stage_is_known_from_pipeline_metadata(api: Api) -> None:
    pipelines = api("GET", "/crm/v3/pipelines/tickets").json()["results"]
    stages = {s["id"]: (s["label"], s["metadata"]["ticketState"]) for s in pipelines[0]["stages"]}
    assert pipelines[0]["id"] == "0"
    assert stages == {"1": ("New", "OPEN"), "2": ("Waiting on contact", "OPEN"),
                      "3": ("Waiting on us", "OPEN"), "4": ("Closed", "CLOSED")}
    ticket = api("POST", "/crm/v3/objects/tickets",
                 json={"properties": {"subject": "s", "hs_pipeline_stage": "1"}}).json()
    closed = api("PATCH", f"/crm/v3/objects/tickets/{ticket['id']}",
                 json={"properties": {"hs_pipeline_stage": "4"}}).json()
    assert ISO_MS.fullmatch(closed["properties"]["closed_date"])


def test_properties_describe_types_field_types_and_options(api: Api) -> None:
    contacts = {p["name"]: p for p in api("GET", "/crm/v3/properties/contacts").json()["results"]}
    assert (contacts["email"]["type"], contacts["email"]["fieldType"]) == ("string", "text")
    lead = contacts["hs_lead_status"]
    assert lead["type"] == "enumeration"
    assert {"label": "Open", "value": "OPEN"}.items() <= lead["options"][1].items()
    assert contacts["vip_customer"]["fieldType"] == "booleancheckbox"
    tickets = {p["name"]: p for p in api("GET", "/crm/v3/properties/tickets").json()["results"]}
    assert [o["value"] for o in tickets["hs_ticket_priority"]["options"]] == ["LOW", "MEDIUM",
                                                                             "HIGH"]
    assert tickets["content"]["fieldType"] == "textarea"


def test_unknown_object_answers_404_object_not_found(api: Api) -> None:
    for method in ("GET", "PATCH"):
        answer = api(method, "/crm/v3/objects/contacts/424242", json={"properties": {}})
        assert answer.status_code == 404
        body = answer.json()
        assert (body["status"], body["category"]) == ("error", "OBJECT_NOT_FOUND")
        assert body["message"].startswith("Object not found.")
        assert body["context"] == {"id": ["424242"]}


def test_invalid_email_answers_400_validation_error(api: Api) -> None:
    answer = api("POST", "/crm/v3/objects/contacts", json={"properties": {"email": "nope"}})
    assert answer.status_code == 400
    body = answer.json()
    assert body["category"] == "VALIDATION_ERROR"
    assert body["message"].startswith("Property values were not valid: ")
    assert '"error":"INVALID_EMAIL","name":"email"' in body["message"]
    assert body["errors"][0]["context"] == {"propertyName": ["email"]}


def test_duplicate_email_answers_409_with_the_existing_id(api: Api) -> None:
    first = create_contact(api, email="dup@example.com")
    answer = api("POST", "/crm/v3/objects/contacts", json={"properties": {"email": "DUP@example.com"}})
    assert answer.status_code == 409
    assert answer.json()["category"] == "CONFLICT"
    assert answer.json()["message"] == f"Contact already exists. Existing ID: {first['id']}"


def test_fail_next_answers_429_with_retry_after_then_recovers(api: Api, state: HubSpotState
                                                              ) -> None:
    state.fail_next(429, headers={"Retry-After": "1"})
    limited = api("GET", "/crm/v3/properties/contacts")
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "1"
    assert limited.json() | {"correlationId": ""} == {
        "status": "error", "message": "You have reached your secondly limit.",
        "errorType": "RATE_LIMIT", "correlationId": "", "policyName": "SECONDLY"}
    assert api("GET", "/crm/v3/properties/contacts").status_code == 200


def test_fail_next_can_send_an_html_503(api: Api, state: HubSpotState) -> None:
    state.fail_next(503, "<html><body>Service Unavailable</body></html>")
    answer = api("GET", "/crm/v3/pipelines/tickets")
    assert answer.status_code == 503
    assert answer.headers["Content-Type"].startswith("text/html")


def test_requests_are_recorded_without_printing_the_token(api: Api, state: HubSpotState
                                                          ) -> None:
    api("POST", "/crm/v3/objects/contacts/search", params={"x": "1,2"}, json={"limit": 1})
    [seen] = state.requests_to("POST", "/crm/v3/objects/contacts/search")
    assert (seen.query_string, seen.query, seen.json) == ("x=1%2C2", {"x": ["1,2"]}, {"limit": 1})
    assert seen.headers["Authorization"] == f"Bearer {TOKEN}"
    assert TOKEN not in repr(seen)


def test_slow_seconds_delays_every_answer(api: Api, state: HubSpotState) -> None:
    state.slow_seconds = 0.3
    started = time.monotonic()
    assert api("GET", "/crm/v3/pipelines/tickets").status_code == 200
    assert time.monotonic() - started >= 0.3
