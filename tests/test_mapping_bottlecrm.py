"""BottleCRM's quirks, each handled in mappings/bottlecrm.yaml alone, checked against the real CRM.

Facts behind each test: docs/targets/bottlecrm.md (measured on django-crm 1.35.0).
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import requests

from tests.support.khoros import KhorosClient
from tests.targets.registry import ROOT

pytestmark = [pytest.mark.bottlecrm, pytest.mark.slow]
MAPPING = f"{ROOT}/mappings/bottlecrm.yaml"


@pytest.fixture(scope="module")
def khoros(bridge, bottlecrm_env: dict[str, str]) -> KhorosClient:
    return bridge(MAPPING, bottlecrm_env)


@pytest.fixture
def customer(khoros: KhorosClient) -> dict[str, Any]:
    unique = uuid.uuid4().hex[:8]
    answer = khoros.create_customer({"firstName": "Case", "lastName": f"Heavy{unique}",
                                     "email": f"heavy.{unique}@example.com"})
    assert answer.status == 201
    return answer.body


def test_repeated_titles_become_distinct_case_names_and_read_back_unchanged(khoros: KhorosClient,
                                                                           customer: dict[str, Any]) -> None:
    title = f"Where is my order {uuid.uuid4().hex[:6]}"
    first = khoros.create_case({"customerId": customer["id"], "title": title})
    second = khoros.create_case({"customerId": customer["id"], "title": title.upper()})
    assert (first.status, second.status) == (201, 201)
    assert first.body["title"] == title
    assert second.body["title"] == title.upper()
    assert first.body["id"] != second.body["id"]


def test_a_title_too_long_for_bottlecrm_is_refused_not_cut(khoros: KhorosClient, customer: dict[str, Any]) -> None:
    answer = khoros.create_case({"customerId": customer["id"], "title": "x" * 54})
    assert answer.status == 422
    assert answer.body["fields"][0]["name"] == "title"


def test_customer_cases_finds_more_than_the_ten_bottlecrm_lists_on_a_contact(khoros: KhorosClient,
                                                                           customer: dict[str, Any]) -> None:
    created = {khoros.create_case({"customerId": customer["id"], "title": f"Case {n}"}).body["id"]
               for n in range(12)}
    answer = khoros.customer_cases(customer["id"])
    assert answer.status == 200
    assert {c["id"] for c in answer.body} == created
    assert {c["customerId"] for c in answer.body} == {customer["id"]}


def test_reopening_keeps_a_finer_open_status_and_closing_closes(khoros: KhorosClient, customer: dict[str, Any],
                                                                bottlecrm_env: dict[str, str]) -> None:
    case = khoros.create_case({"customerId": customer["id"], "title": "Pending one"}).body
    api = bottlecrm_env["BOTTLECRM_URL"] + "/api"
    auth = {"Authorization": f"Bearer {bottlecrm_env['BOTTLECRM_TOKEN']}"}
    assert requests.patch(f"{api}/cases/{case['id']}/", json={"status": "Pending"}, headers=auth,
                          timeout=10).status_code == 200
    kept = khoros.update_case(case["id"], {"status": "open", "description": "still waiting"})
    assert kept.status == 200 and kept.body["status"] == "open"
    status = requests.get(f"{api}/cases/{case['id']}/", headers=auth, timeout=10).json()["cases_obj"]["status"]
    assert status == "Pending"
    closed = khoros.update_case(case["id"], {"status": "closed"})
    assert closed.body["status"] == "closed"


def test_an_interaction_logged_in_bottlecrm_itself_is_shown_with_defaults(khoros: KhorosClient,
                                                                         customer: dict[str, Any],
                                                                         bottlecrm_env: dict[str, str]) -> None:
    case = khoros.create_case({"customerId": customer["id"], "title": "Phone call"}).body
    api = bottlecrm_env["BOTTLECRM_URL"] + "/api"
    auth = {"Authorization": f"Bearer {bottlecrm_env['BOTTLECRM_TOKEN']}"}
    logged = requests.post(f"{api}/interactions/", headers=auth, timeout=10, json={
        "kind": "call", "direction": "inbound", "occurred_at": "2024-01-02T03:04:05Z",
        "subject": "Called about the charger", "body": "Customer called", "case": case["id"]})
    assert logged.status_code == 201
    answer = khoros.get_case(case["id"])
    assert answer.status == 200
    (post,) = answer.body["interactions"]
    assert post["body"] == "Customer called"
    assert post["created"] == "2024-01-02T03:04:05Z"
    assert post["contentType"] == "call"
    assert post["serviceId"] == logged.json()["id"]
