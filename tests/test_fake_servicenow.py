"""The ServiceNow fake behaves as ServiceNow's reference says, over real HTTP.

These pin the fake itself: the encoded-query parser (``^^`` a literal caret,
``^OR`` binding tighter than ``^``), the Table API envelopes and error body,
reference fields and ``sysparm_display_value``, ``X-Total-Count`` paging,
journal fields becoming ``sys_journal_field`` rows, and data policies.
Facts and sources: docs/vendors/servicenow-api.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.fakes.servicenow import (
    CASE_TABLE,
    CONTACT_TABLE,
    Condition,
    QueryError,
    ServiceNowState,
    create_app,
    parse_encoded_query,
)
from tests.support.live_server import serve


@pytest.mark.parametrize(("query", "conditions"), [
    ("email=a@b.c^active=true", [("email", "=", "a@b.c", "AND"), ("active", "=", "true", "AND")]),
    ("email=a^^NQactive=false", [("email", "=", "a^NQactive=false", "AND")]),
    ("name=x=y", [("name", "=", "x=y", "AND")]),
    ("phone=1^ORmobile_phone=1", [("phone", "=", "1", "AND"), ("mobile_phone", "=", "1", "OR")]),
    ("short_descriptionLIKEnet^state!=6", [("short_description", "LIKE", "net", "AND"), ("state", "!=", "6", "AND")]),
    ("closed_atISEMPTY", [("closed_at", "ISEMPTY", "", "AND")]),
])
def test_the_parser_reads_the_documented_syntax(query: str, conditions: list[tuple[str, str, str, str]]) -> None:
    assert parse_encoded_query(query).conditions == tuple(Condition(*c) for c in conditions)


def test_orderby_terms_are_kept_apart_from_conditions() -> None:
    parsed = parse_encoded_query("contact=1^ORDERBYDESCsys_created_on^ORDERBYnumber")

    assert parsed.conditions == (Condition("contact", "=", "1", "AND"),)
    assert parsed.order_by == (("sys_created_on", True), ("number", False))


@pytest.mark.parametrize("query", ["email=a^NQactive=false", "^ORemail=a", "Email=a", "email"])
def test_what_the_fake_does_not_model_is_refused_not_guessed(query: str) -> None:
    with pytest.raises(QueryError):
        parse_encoded_query(query)


class Instance:
    def __init__(self, url: str) -> None:
        self.base = url + "/api/now/table"
        self.session = requests.Session()
        self.session.auth = ("admin", "pw")

    def get(self, path: str, **params: Any) -> requests.Response:
        return self.session.get(self.base + path, params=params, timeout=5)

    def post(self, path: str, body: Any, **params: Any) -> requests.Response:
        return self.session.post(self.base + path, json=body, params=params, timeout=5)

    def patch(self, path: str, body: Any) -> requests.Response:
        return self.session.patch(self.base + path, json=body, timeout=5)


@pytest.fixture
def state() -> ServiceNowState:
    return ServiceNowState(user="admin", password="pw")


@pytest.fixture
def sn(state: ServiceNowState) -> Iterator[Instance]:
    with serve(create_app(state)) as live:
        client = Instance(live.url)
        with client.session:
            yield client


def test_wrong_credentials_get_the_failure_envelope(sn: Instance) -> None:
    sn.session.auth = ("admin", "nope")

    answer = sn.get(f"/{CONTACT_TABLE}")

    assert answer.status_code == 401
    assert answer.json() == {"error": {"message": "User Not Authenticated",
                                       "detail": "Required to provide Auth information"}, "status": "failure"}


def test_a_missing_record_is_404_with_the_documented_message(sn: Instance) -> None:
    answer = sn.get(f"/{CASE_TABLE}/0123456789abcdef0123456789abcdef")

    assert answer.status_code == 404
    assert answer.json()["error"]["message"] == "No Record found"


def test_records_are_strings_and_references_carry_a_link_unless_excluded(sn: Instance) -> None:
    contact = sn.post(f"/{CONTACT_TABLE}", {"first_name": "Ann", "last_name": "Lee"}).json()["result"]
    case = sn.post(f"/{CASE_TABLE}", {"short_description": "S", "contact": contact["sys_id"], "priority": 2})

    assert case.status_code == 201
    body = case.json()["result"]
    assert body["priority"] == "2" and body["state"] == "1" and body["number"].startswith("CS")
    assert body["contact"] == {"link": f"{sn.base}/{CONTACT_TABLE}/{contact['sys_id']}", "value": contact["sys_id"]}
    plain = sn.get(f"/{CASE_TABLE}/{body['sys_id']}", sysparm_exclude_reference_link="true").json()["result"]
    assert plain["contact"] == contact["sys_id"]
    labelled = sn.get(f"/{CASE_TABLE}/{body['sys_id']}", sysparm_display_value="all").json()["result"]
    assert labelled["priority"] == {"display_value": "2 - High", "value": "2"}
    assert contact["name"] == "Ann Lee"


def test_lists_report_x_total_count_and_page_by_offset(sn: Instance) -> None:
    for n in range(5):
        sn.post(f"/{CONTACT_TABLE}", {"last_name": f"P{n}"})

    page = sn.get(f"/{CONTACT_TABLE}", sysparm_query="last_nameSTARTSWITHP^ORDERBYlast_name",
                  sysparm_limit=2, sysparm_offset=2)

    assert page.headers["X-Total-Count"] == "5"
    assert [r["last_name"] for r in page.json()["result"]] == ["P2", "P3"]
    assert 'rel="next"' in page.headers["Link"]


def test_journal_fields_become_journal_rows_and_read_back_empty(sn: Instance, state: ServiceNowState) -> None:
    case = sn.post(f"/{CASE_TABLE}", {"short_description": "S"}).json()["result"]

    sn.patch(f"/{CASE_TABLE}/{case['sys_id']}", {"work_notes": "first"})
    after = sn.patch(f"/{CASE_TABLE}/{case['sys_id']}", {"comments": "to the customer"}).json()["result"]
    rows = sn.get("/sys_journal_field", sysparm_query=f"element_id={case['sys_id']}^ORDERBYsys_created_on")

    assert after["work_notes"] == "" and after["comments"] == ""
    assert [(r["element"], r["value"]) for r in rows.json()["result"]] == [("work_notes", "first"),
                                                                          ("comments", "to the customer")]


def test_a_data_policy_refuses_with_403_operation_failed(sn: Instance) -> None:
    answer = sn.post(f"/{CASE_TABLE}", {"description": "no short description"})

    assert answer.status_code == 403
    assert answer.json()["error"] == {"message": "Operation Failed",
                                      "detail": "Data Policy Exception: \n Short description is mandatory\n"}


def test_an_encoded_query_with_an_unknown_field_is_refused(sn: Instance) -> None:
    answer = sn.get(f"/{CONTACT_TABLE}", sysparm_query="emial=a@b.c")

    assert answer.status_code == 400
    assert "emial" in answer.json()["error"]["detail"]
