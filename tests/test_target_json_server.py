"""json-server 0.17.4 works as a test target, and behaves as documented.

These tests prove the ``json_server`` fixture and pin the json-server facts
that ``docs/targets/json-server.md`` reports and that mappings rely on: if an
upgrade changes one of them, a test here fails before a mapping does.
"""

from __future__ import annotations

from typing import Any

import pytest
import requests

from tests.targets import json_server as target
from tests.targets.json_server import JsonServer

# The session fixture ``json_server`` comes from tests/conftest.py, which
# imports it from tests/targets/json_server.py.

pytestmark = pytest.mark.jsonserver


def post(server: JsonServer, path: str, body: Any) -> requests.Response:
    return requests.post(server.url + path, json=body, timeout=10)


def test_customer_and_case_round_trip(json_server: JsonServer) -> None:
    created = post(json_server, "/customers", {"firstName": "Ada", "email": "Ada@Example.com"})
    assert created.status_code == 201
    customer = created.json()
    assert type(customer["id"]) is int  # json-server numbers new records itself

    found = requests.get(json_server.url + "/customers", params={"email": "Ada@Example.com"}, timeout=10)
    assert found.status_code == 200 and found.json() == [customer]
    other_case = requests.get(json_server.url + "/customers", params={"email": "ada@example.com"}, timeout=10)
    assert other_case.json() == []  # ?email= is exact and case-sensitive

    case = post(json_server, "/cases", {"customerId": customer["id"], "subject": "Broken"})
    assert case.status_code == 201
    post(json_server, "/cases", {"customerId": customer["id"] + 1000, "subject": "Someone else's"})
    by_filter = requests.get(json_server.url + "/cases", params={"customerId": customer["id"]}, timeout=10)
    assert by_filter.json() == [case.json()]
    nested = requests.get(f"{json_server.url}/customers/{customer['id']}/cases", timeout=10)
    assert nested.json() == [case.json()]

    patched = requests.patch(f"{json_server.url}/customers/{customer['id']}", json={"phone": "+1 555 0199"},
                             timeout=10)
    assert patched.status_code == 200
    assert patched.json() == {**customer, "phone": "+1 555 0199"}
    json_server.stored(until=lambda db: {**customer, "phone": "+1 555 0199"} in db.get("customers", []))


def test_missing_record_is_404_with_empty_object(json_server: JsonServer) -> None:
    for answer in (requests.get(json_server.url + "/customers/987654", timeout=10),
                   requests.patch(json_server.url + "/customers/987654", json={"phone": "x"}, timeout=10)):
        assert answer.status_code == 404
        assert answer.json() == {}


def test_malformed_json_is_an_html_400(json_server: JsonServer) -> None:
    answer = requests.post(json_server.url + "/customers", data=b'{"firstName": ',
                           headers={"Content-Type": "application/json"}, timeout=10)
    assert answer.status_code == 400
    assert answer.headers["Content-Type"].startswith("text/html")


def test_q_is_case_insensitive_substring_over_all_fields(json_server: JsonServer) -> None:
    made = post(json_server, "/customers", {"firstName": "Quentin", "phone": "+1 555 0142"}).json()
    for q in ("QUENT", "0142"):
        hits = requests.get(json_server.url + "/customers", params={"q": q}, timeout=10).json()
        assert made in hits


def test_filter_on_a_field_no_record_has_is_silently_dropped() -> None:
    fixture = {"customers": [{"id": 1, "name": "No email field"}], "cases": []}
    with target.running_json_server(fixture) as server:
        answer = requests.get(server.url + "/customers", params={"email": "nobody@example.com"}, timeout=10)
        assert answer.json() == fixture["customers"]  # everything, not []
        post(server, "/customers", {"id": 2, "email": "someone@example.com"})
        answer = requests.get(server.url + "/customers", params={"email": "nobody@example.com"}, timeout=10)
        assert answer.json() == []  # once some record has the field, the filter applies
