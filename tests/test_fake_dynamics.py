"""The Dataverse fake behaves as Microsoft's Web API reference says, over real HTTP.

These pin the fake itself: the $filter parser (string literals with doubled
quotes), the token endpoint's client-credentials checks, 204 creates with
``OData-EntityId``, PATCH as upsert unless ``If-Match: *``, the refusal to
resolve a case by PATCH, option-set metadata, and ``@odata.nextLink``.
Facts and sources: docs/vendors/dynamics-api.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.fakes.dynamics import API, Comparison, DynamicsState, FilterError, create_app, parse_filter
from tests.support.live_server import serve


@pytest.mark.parametrize(("text", "tree"), [
    ("lastname eq 'O''Brien'", Comparison("lastname", "eq", "O'Brien")),
    ("a eq '''' and b ne null", ("and", Comparison("a", "eq", "'"), Comparison("b", "ne", None))),
    ("a eq 1 or (b eq 'x' and c eq true)",
     ("or", Comparison("a", "eq", 1), ("and", Comparison("b", "eq", "x"), Comparison("c", "eq", True)))),
    ("_customerid_value eq 00000000-0000-0000-0000-000000000001",
     Comparison("_customerid_value", "eq", "00000000-0000-0000-0000-000000000001")),
])
def test_the_filter_parser_reads_odata_literals(text: str, tree: Any) -> None:
    assert parse_filter(text) == tree


@pytest.mark.parametrize("text", ["lastname eq 'O'Brien'", "lastname eq 'x", "lastname like 'x'", "eq 'x'"])
def test_a_quote_that_is_not_doubled_is_a_syntax_error(text: str) -> None:
    with pytest.raises(FilterError, match="Syntax error"):
        parse_filter(text)


@pytest.fixture
def state() -> DynamicsState:
    return DynamicsState(tenant="t1", client_id="c1", client_secret="s1")


@pytest.fixture
def org(state: DynamicsState) -> Iterator[tuple[str, requests.Session]]:
    with serve(create_app(state)) as live:
        session = requests.Session()
        answer = session.post(f"{live.url}/t1/oauth2/v2.0/token", timeout=5, data={
            "grant_type": "client_credentials", "client_id": "c1", "client_secret": "s1",
            "scope": f"{live.url}/.default"})
        assert answer.status_code == 200, answer.text
        session.headers["Authorization"] = "Bearer " + answer.json()["access_token"]
        with session:
            yield live.url + API, session


@pytest.mark.parametrize(("field", "value", "error"), [
    ("client_secret", "nope", "invalid_client"), ("scope", "https://other.crm.dynamics.com/.default", "invalid_scope"),
    ("grant_type", "password", "unsupported_grant_type"),
])
def test_the_token_endpoint_checks_the_client_credentials_grant(state: DynamicsState, field: str, value: str,
                                                                error: str) -> None:
    with serve(create_app(state)) as live:
        form = {"grant_type": "client_credentials", "client_id": "c1", "client_secret": "s1",
                "scope": f"{live.url}/.default", field: value}
        answer = requests.post(f"{live.url}/t1/oauth2/v2.0/token", data=form, timeout=5)

    assert answer.status_code in (400, 401)
    assert answer.json()["error"] == error


def test_an_unknown_token_is_401_with_a_bearer_challenge(org: tuple[str, requests.Session]) -> None:
    base, session = org

    answer = session.get(f"{base}/contacts", headers={"Authorization": "Bearer expired"})

    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')


def test_create_is_204_with_odata_entityid_unless_representation_is_asked(org: tuple[str, requests.Session]) -> None:
    base, session = org

    plain = session.post(f"{base}/contacts", json={"lastname": "Lee"})
    full = session.post(f"{base}/contacts", json={"lastname": "Lee"}, headers={"Prefer": "return=representation"})

    assert (plain.status_code, plain.content) == (204, b"")
    assert plain.headers["OData-EntityId"].startswith(f"{base}/contacts(")
    assert full.status_code == 201 and full.json()["lastname"] == "Lee"


def test_patch_creates_unless_if_match_star(org: tuple[str, requests.Session], state: DynamicsState) -> None:
    base, session = org
    key = "00000000-0000-0000-0000-000000000077"

    guarded = session.patch(f"{base}/contacts({key})", json={"lastname": "X"}, headers={"If-Match": "*"})
    upsert = session.patch(f"{base}/contacts({key})", json={"lastname": "X"})

    assert guarded.status_code == 404
    assert guarded.json()["error"]["code"] == "0x80040217"
    assert upsert.status_code == 204
    assert key in state.records["contacts"]


def test_a_case_is_resolved_only_through_close_incident(org: tuple[str, requests.Session]) -> None:
    base, session = org
    contact = session.post(f"{base}/contacts", json={"lastname": "Lee"}).headers["OData-EntityId"].split("contacts")[1]
    case_url = session.post(f"{base}/incidents", json={"title": "T", "customerid_contact@odata.bind":
                                                        f"/contacts{contact}"}).headers["OData-EntityId"]
    case_id = case_url.rsplit("(", 1)[1].rstrip(")")

    refused = session.patch(case_url, json={"statecode": 1, "statuscode": 5})
    closed = session.post(f"{base}/CloseIncident", json={
        "IncidentResolution": {"subject": "done", "incidentid@odata.bind": f"/incidents({case_id})"}, "Status": 5})

    assert refused.status_code == 400 and "CloseIncidentRequest" in refused.json()["error"]["message"]
    assert closed.status_code == 204
    assert session.get(case_url).json()["statecode"] == 1


def test_option_sets_come_with_their_labels(org: tuple[str, requests.Session]) -> None:
    base, session = org

    answer = session.get(f"{base}/EntityDefinitions(LogicalName='incident')/Attributes/"
                         "Microsoft.Dynamics.CRM.PicklistAttributeMetadata",
                         params={"$select": "LogicalName", "$expand": "OptionSet($select=Options)"})

    priority = next(a for a in answer.json()["value"] if a["LogicalName"] == "prioritycode")
    assert [(o["Value"], o["Label"]["UserLocalizedLabel"]["Label"]) for o in priority["OptionSet"]["Options"]] == [
        (1, "High"), (2, "Normal"), (3, "Low")]


def test_pages_are_linked_with_odata_nextlink(org: tuple[str, requests.Session]) -> None:
    base, session = org
    for n in range(3):
        session.post(f"{base}/contacts", json={"lastname": f"P{n}"})

    first = session.get(f"{base}/contacts", headers={"Prefer": "odata.maxpagesize=2"}).json()
    second = session.get(first["@odata.nextLink"], headers={"Prefer": "odata.maxpagesize=2"}).json()

    assert len(first["value"]) == 2 and len(second["value"]) == 1
    assert "@odata.nextLink" not in second
