"""The Salesforce fake answers as Salesforce's documentation says Salesforce answers.

These tests pin the behaviours ``mappings/salesforce.yaml`` relies on, over real
HTTP on loopback, so that a change to the fake that drifts from the documented
contract (``docs/vendors/salesforce-api.md``) fails here first.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests

from tests.fakes.salesforce import Comparison, SalesforceState, create_app, id18
from tests.support.live_server import LiveServer, serve

API = "/services/data/v62.0"
TIMEOUT = 10


class TimedSession(requests.Session):
    """A session whose every call gives up after ``TIMEOUT`` seconds."""

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", TIMEOUT)
        return super().request(*args, **kwargs)


@pytest.fixture()
def state() -> SalesforceState:
    return SalesforceState(client_id="test-client", client_secret="test-secret",
                           refresh_token="test-refresh")


@pytest.fixture()
def server(state: SalesforceState) -> Iterator[LiveServer]:
    with serve(create_app(state)) as live:
        yield live


@pytest.fixture()
def http(state: SalesforceState, server: LiveServer) -> Iterator[requests.Session]:
    """A session already holding a token from the client-credentials grant."""
    with TimedSession() as session:
        answer = session.post(f"{server.url}/services/oauth2/token", data={
            "grant_type": "client_credentials", "client_id": state.client_id,
            "client_secret": state.client_secret}, timeout=TIMEOUT)
        session.headers["Authorization"] = f"Bearer {answer.json()['access_token']}"
        yield session


def soql_literal(value: str) -> str:
    """Quote a value for an ``=`` comparison: backslash first, then the quote."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def where(select_from: str, condition: str) -> str:
    """``SELECT ... FROM ... WHERE condition``: the condition is built by the test."""
    return " WHERE ".join((select_from, condition))


def query(http: requests.Session, server: LiveServer, soql: str) -> requests.Response:
    return http.get(f"{server.url}{API}/query", params={"q": soql}, timeout=TIMEOUT)


def test_client_credentials_grant_answers_the_documented_token_shape(
        state: SalesforceState, server: LiveServer) -> None:
    answer = requests.post(f"{server.url}/services/oauth2/token", data={
        "grant_type": "client_credentials", "client_id": "test-client",
        "client_secret": "test-secret"}, timeout=TIMEOUT)
    assert answer.status_code == 200
    body = answer.json()
    assert {"access_token", "instance_url", "token_type", "issued_at", "signature", "id"} <= set(body)
    assert body["token_type"] == "Bearer"
    assert body["instance_url"] == server.url
    assert body["issued_at"].isdigit()  # milliseconds since the epoch, as a string
    assert "refresh_token" not in body  # the client-credentials flow issues none
    assert state.token_requests == 1
    assert state.requests[0].form["grant_type"] == ["client_credentials"]


def test_refresh_token_grant_and_its_invalid_grant_error(server: LiveServer) -> None:
    url = f"{server.url}/services/oauth2/token"
    good = requests.post(url, data={"grant_type": "refresh_token", "client_id": "test-client",
                                    "client_secret": "test-secret",
                                    "refresh_token": "test-refresh"}, timeout=TIMEOUT)
    bad = requests.post(url, data={"grant_type": "refresh_token", "client_id": "test-client",
                                   "refresh_token": "revoked"}, timeout=TIMEOUT)
    assert good.status_code == 200 and good.json()["access_token"]
    assert bad.status_code == 400
    assert bad.json() == {"error": "invalid_grant",
                          "error_description": "expired access/refresh token"}


def test_expired_token_answers_401_invalid_session_id(
        state: SalesforceState, server: LiveServer, http: requests.Session) -> None:
    assert http.get(f"{server.url}{API}/sobjects/Case/describe").status_code == 200
    state.expire_tokens()
    answer = http.get(f"{server.url}{API}/sobjects/Case/describe")
    assert answer.status_code == 401
    assert answer.json() == [{"message": "Session expired or invalid",
                              "errorCode": "INVALID_SESSION_ID"}]


def test_create_answers_201_with_an_18_character_id_of_the_right_prefix(
        server: LiveServer, http: requests.Session) -> None:
    contact = http.post(f"{server.url}{API}/sobjects/Contact/",
                        json={"LastName": "Doe", "Email": "jane@example.com"})
    case = http.post(f"{server.url}{API}/sobjects/Case/",
                     json={"ContactId": contact.json()["id"], "Subject": "Broken charger"})
    assert contact.status_code == 201 and case.status_code == 201
    assert contact.json() == {"id": contact.json()["id"], "success": True, "errors": []}
    for answer, prefix in ((contact, "003"), (case, "500")):
        record_id = answer.json()["id"]
        assert len(record_id) == 18 and record_id.startswith(prefix)
        assert id18(record_id[:15]) == record_id


def test_create_without_last_name_is_required_field_missing(
        server: LiveServer, http: requests.Session) -> None:
    answer = http.post(f"{server.url}{API}/sobjects/Contact/", json={"FirstName": "Jane"})
    assert answer.status_code == 400
    assert answer.json() == [{"message": "Required fields are missing: [LastName]",
                              "errorCode": "REQUIRED_FIELD_MISSING", "fields": ["LastName"]}]


def test_patch_answers_204_without_a_body_and_closing_derives_is_closed(
        state: SalesforceState, server: LiveServer, http: requests.Session) -> None:
    case_id = state.seed("Case", Subject="Broken charger")
    answer = http.patch(f"{server.url}{API}/sobjects/Case/{case_id}", json={"Status": "Closed"})
    assert answer.status_code == 204 and answer.content == b""
    case = http.get(f"{server.url}{API}/sobjects/Case/{case_id}").json()
    assert case["attributes"] == {"type": "Case", "url": f"{API}/sobjects/Case/{case_id}"}
    assert case["CaseNumber"] == "00001001"
    assert case["IsClosed"] is True and case["ClosedDate"] is not None


def test_escaped_quote_is_matched_as_a_literal_string(
        state: SalesforceState, server: LiveServer, http: requests.Session) -> None:
    state.seed("Contact", LastName="O'Brien", Email="o'brien@example.com")
    state.seed("Contact", LastName="Other", Email="other@example.com")
    found = query(http, server, where("SELECT Id, Email FROM Contact",
                                      "Email = " + soql_literal("O'Brien@example.com")))
    assert found.status_code == 200
    assert [r["Email"] for r in found.json()["records"]] == ["o'brien@example.com"]

    hostile = "x' OR Name LIKE '%"
    answer = query(http, server, where("SELECT Id FROM Contact", "Email = " + soql_literal(hostile)))
    assert answer.json() == {"totalSize": 0, "done": True, "records": []}
    condition = state.requests[-1].soql.where  # type: ignore[union-attr]
    assert isinstance(condition, Comparison)
    assert condition.value.value == hostile  # type: ignore[union-attr]


def test_unescaped_quote_is_malformed_query(server: LiveServer, http: requests.Session) -> None:
    answer = query(http, server, "SELECT Id FROM Contact WHERE Email = 'o'brien@example.com'")
    assert answer.status_code == 400
    [error] = answer.json()
    assert error["errorCode"] == "MALFORMED_QUERY"
    assert "ERROR at Row:1:Column:" in error["message"]


def test_unescaped_injection_is_valid_soql_so_only_escaping_protects(
        state: SalesforceState, server: LiveServer, http: requests.Session) -> None:
    """Salesforce would run this injected query too: it is well-formed SOQL."""
    state.seed("Contact", LastName="Doe", Email="jane@example.com")
    pasted = query(http, server, "SELECT Id FROM Contact WHERE Email = 'x' OR Name LIKE '%'")
    assert pasted.status_code == 200 and pasted.json()["totalSize"] == 1
    mixed = query(http, server,
                  "SELECT Id FROM Contact WHERE Email = 'x' OR Name LIKE '%' AND Phone = null")
    assert mixed.status_code == 400 and mixed.json()[0]["errorCode"] == "MALFORMED_QUERY"


def test_cases_of_a_contact_newest_first(state: SalesforceState, server: LiveServer,
                                         http: requests.Session) -> None:
    contact_id = state.seed("Contact", LastName="Doe")
    start = datetime(2024, 1, 1, tzinfo=UTC)
    for days, subject in ((0, "old"), (2, "new"), (1, "middle")):
        state.seed("Case", ContactId=contact_id, Subject=subject,
                   CreatedDate=start + timedelta(days=days))
    answer = query(http, server, where("SELECT Id, Subject, CreatedDate FROM Case",
                                       f"ContactId = '{contact_id[:15]}' ORDER BY CreatedDate DESC"))
    assert [r["Subject"] for r in answer.json()["records"]] == ["new", "middle", "old"]
    assert answer.json()["records"][0]["CreatedDate"] == "2024-01-03T00:00:00.000+0000"


def test_case_describe_lists_picklists_with_their_defaults(
        server: LiveServer, http: requests.Session) -> None:
    describe = http.get(f"{server.url}{API}/sobjects/Case/describe").json()
    fields = {f["name"]: f for f in describe["fields"]}
    assert describe["keyPrefix"] == "500"
    status = fields["Status"]
    assert status["type"] == "picklist"
    assert [p["value"] for p in status["picklistValues"]] == ["New", "Working", "Escalated", "Closed"]
    assert [p["value"] for p in status["picklistValues"] if p["defaultValue"]] == ["New"]
    assert set(status["picklistValues"][0]) == {"active", "defaultValue", "label", "validFor", "value"}
    assert [p["value"] for p in fields["Priority"]["picklistValues"] if p["defaultValue"]] == ["Medium"]
    assert fields["CaseNumber"]["createable"] is False and fields["IsClosed"]["updateable"] is False
    assert fields["Description"]["type"] == "textarea"


def test_knobs_fail_next_and_record_what_arrived(
        state: SalesforceState, server: LiveServer, http: requests.Session) -> None:
    state.fail_next(403, [{"message": "TotalRequests Limit exceeded.",
                           "errorCode": "REQUEST_LIMIT_EXCEEDED"}], {"Retry-After": "60"})
    failed = http.get(f"{server.url}{API}/sobjects/Contact/describe")
    assert failed.status_code == 403 and failed.headers["Retry-After"] == "60"
    assert failed.json()[0]["errorCode"] == "REQUEST_LIMIT_EXCEEDED"
    assert http.get(f"{server.url}{API}/sobjects/Contact/describe").status_code == 200
    last = state.api_requests[-1]
    assert last.method == "GET" and last.path == f"{API}/sobjects/Contact/describe"
    assert last.header("authorization").startswith("Bearer ")  # type: ignore[union-attr]
