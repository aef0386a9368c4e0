"""mappings/servicenow.yaml through our real server against the ServiceNow fake.

The Khoros scenario (tests/test_khoros_scenario.py) proves every operation
works; these tests pin what is particular to ServiceNow: basic auth, values
that stay one condition of an encoded query (carets doubled), case states
folded into Khoros's open/closed, interactions kept as work notes and read
back from the journal oldest first with author and link, choice lists from
sys_choice in the live data model, X-Total-Count paging, and every way the
instance fails (401, 403 data policy, 404, 429, 5xx). Facts and sources:
docs/vendors/servicenow-api.md; set-up: docs/mappings/servicenow.md.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Fake
from tests.fakes.servicenow import CASE_TABLE, Condition, ServiceNowState
from tests.support.khoros import KhorosClient
from tests.support.mappings import without_live_cache
from tests.support.openapi_check import OpenApiCheck
from tests.support.vendor_mapping import TRACE, checked_state, created, first_last_customer, interaction, since
from tests.targets.registry import ROOT

MAPPING = f"{ROOT}/mappings/servicenow.yaml"
SPEC = OpenApiCheck(f"{ROOT}/tests/specs/servicenow.yaml")
HOSTILE = "O'B ^NQactive=false ^ORx=1 a=b \"q\" \\"  # within last_name's 50 characters


@pytest.fixture(scope="module")
def khoros(bridge: Callable[[str, dict[str, str]], KhorosClient], servicenow_env: dict[str, str]) -> KhorosClient:
    return bridge(MAPPING, servicenow_env)


@pytest.fixture
def servicenow(servicenow_fake: Fake) -> Iterator[ServiceNowState]:
    """The fake's state; afterwards every request the test caused is held to
    tests/specs/servicenow.yaml, and no fault is left queued."""
    yield from checked_state(servicenow_fake.state, SPEC)


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:10]


def make_customer(khoros: KhorosClient, unique: str, **fields: Any) -> dict[str, Any]:
    return created(khoros, first_last_customer(unique, **fields))


# --------------------------------------------------------------- credentials


def test_basic_auth_and_plain_reference_values(khoros: KhorosClient, servicenow: ServiceNowState,
                                               servicenow_env: dict[str, str], unique: str) -> None:
    mark = len(servicenow.requests)
    customer = make_customer(khoros, unique, jobTitle="Buyer")

    (received,) = since(servicenow, mark)
    assert (received.method, received.path) == ("POST", "/api/now/table/customer_contact")
    scheme, _, encoded = (received.header("Authorization") or "").partition(" ")
    assert base64.b64decode(encoded).decode() == "khoros.bridge:sn-password-123" and scheme == "Basic"
    assert received.arg("sysparm_exclude_reference_link") == "true"
    assert received.json == {"first_name": "Ann", "last_name": f"Lee {unique}", "email": f"ann.{unique}@example.com",
                             "title": "Buyer"}
    assert customer["uri"] == f"{servicenow_env['SERVICENOW_URL']}/customer_contact.do?sys_id={customer['id']}"


def test_an_expired_password_is_a_500_that_names_the_variables(
        bridge: Callable[[str, dict[str, str]], KhorosClient], servicenow_env: dict[str, str],
        servicenow: ServiceNowState, unique: str) -> None:
    user = f"bridge.{unique}"
    servicenow.users[user] = "old-password"
    khoros = bridge(MAPPING, {**servicenow_env, "SERVICENOW_USER": user, "SERVICENOW_PASSWORD": "old-password"})
    customer = make_customer(khoros, unique)
    servicenow.users[user] = "rotated-password"  # the password expires and is reset

    answer = khoros.get_customer(customer["id"])

    assert answer.status == 500
    assert answer.body["error"] == "crm_auth_failed"
    assert "SERVICENOW_USER" in answer.body["message"] and "SERVICENOW_PASSWORD" in answer.body["message"]
    assert "old-password" not in answer.body["message"]
    match = TRACE.search(answer.body["message"])
    assert match and answer.headers["X-Trace-Id"] == match.group(1)


# --------------------------------------------------------------- encoded queries stay one condition each


def test_hostile_search_values_stay_one_condition_each(khoros: KhorosClient, servicenow: ServiceNowState,
                                                      unique: str) -> None:
    last_name = f"{HOSTILE} {unique[:6]}"
    customer = make_customer(khoros, unique, lastName=last_name, phone=f"+1 555 {unique[:4]}^1=2")
    make_customer(khoros, unique + "x")  # would match if the value widened the query (active=false, OR email)
    mark = len(servicenow.queries)

    by_name = khoros.search({"lastName": last_name})
    by_phone = khoros.search({"phone": f"+1 555 {unique[:4]}^1=2"})

    assert [c["id"] for c in by_name.body] == [customer["id"]], by_name.body
    assert [c["id"] for c in by_phone.body] == [customer["id"]], by_phone.body
    (_, raw, parsed), (_, phone_raw, phone_parsed) = servicenow.queries[mark:]
    assert raw == "last_name=" + last_name.replace("^", "^^")
    assert parsed.conditions == (Condition("last_name", "=", last_name, "AND"),)
    assert phone_parsed.conditions == (
        Condition("phone", "=", f"+1 555 {unique[:4]}^1=2", "AND"),
        Condition("mobile_phone", "=", f"+1 555 {unique[:4]}^1=2", "OR"))
    assert "^^1=2^ORmobile_phone=" in phone_raw


def test_a_best_match_email_cannot_add_conditions(khoros: KhorosClient, servicenow: ServiceNowState,
                                                 unique: str) -> None:
    make_customer(khoros, unique)
    email = f"nobody.{unique}@example.com^NQactive=true"
    mark = len(servicenow.queries)

    answer = khoros.best_match({"email": email})

    assert answer.status == 200
    assert answer.body == []
    (_, raw, parsed) = servicenow.queries[mark]
    assert raw == f"email=nobody.{unique}@example.com^^NQactive=true^active=true"
    assert [c.field for c in parsed.conditions] == ["email", "active"]
    assert parsed.conditions[0].value == email


def test_a_retry_key_with_carets_is_looked_up_as_one_value(khoros: KhorosClient, servicenow: ServiceNowState,
                                                          unique: str) -> None:
    customer = make_customer(khoros, unique)
    odd = interaction(unique, 1, serviceId=f"{unique}^ORactive=false")
    mark = len(servicenow.queries)

    created = khoros.create_case({"customerId": customer["id"], "title": f"Odd {unique}", "interactions": [odd]})

    assert created.status == 201, created.body
    lookup = next(p for t, _, p in servicenow.queries[mark:] if t == CASE_TABLE)
    assert lookup.conditions[0] == Condition("correlation_id", "=", f"khoros:twitter:{unique}^ORactive=false", "AND")
    assert servicenow.tables[CASE_TABLE][created.body["id"]]["correlation_id"] == (
        f"khoros:twitter:{unique}^ORactive=false")


# --------------------------------------------------------------- states


@pytest.mark.parametrize(("state", "khoros_status"), [("1", "open"), ("10", "open"), ("18", "open"),
                                                      ("6", "closed"), ("3", "closed"), ("7", "closed")])
def test_case_states_fold_into_khoros_open_and_closed(khoros: KhorosClient, servicenow: ServiceNowState,
                                                      unique: str, state: str, khoros_status: str) -> None:
    customer = make_customer(khoros, unique)
    case = servicenow.insert(CASE_TABLE, {"short_description": f"S {unique}", "contact": customer["id"],
                                          "state": state})

    answer = khoros.get_case(case["sys_id"])
    listed = khoros.customer_cases(customer["id"])

    assert (answer.body["status"], answer.body["caseState"]) == (khoros_status, state)
    assert answer.body["number"].startswith("CS")
    assert [(c["id"], c["status"]) for c in listed.body] == [(case["sys_id"], khoros_status)]


@pytest.mark.parametrize(("sent", "stored"), [
    ({"status": "closed"}, "6"), ({"status": "open"}, "10"), ({"caseState": "18"}, "18"),
    ({"status": "closed", "caseState": "3"}, "3"),  # ServiceNow's own state is the precise one
])
def test_khoros_status_writes_become_states(khoros: KhorosClient, servicenow: ServiceNowState, unique: str,
                                            sent: dict[str, str], stored: str) -> None:
    customer = make_customer(khoros, unique)
    created = khoros.create_case({"customerId": customer["id"], "title": f"State {unique}"}).body

    answer = khoros.update_case(created["id"], sent)

    assert answer.status == 200, answer.body
    record = servicenow.tables[CASE_TABLE][created["id"]]
    assert record["state"] == stored
    assert record["close_notes"] == ("Closed from Khoros by agent@example.com" if stored in ("3", "6") else "")


# --------------------------------------------------------------- interactions


def test_interactions_are_work_notes_read_back_oldest_first_with_author_and_link(
        khoros: KhorosClient, servicenow: ServiceNowState, unique: str) -> None:
    customer = make_customer(khoros, unique)
    first = interaction(unique, 1)
    second = interaction(unique, 2, author={"service": "twitter", "serviceId": "1", "handle": "shop",
                                            "name": "O'Shop ^ Support", "brandOwned": True})
    third = interaction(unique, 3)

    created = khoros.create_case({"customerId": customer["id"], "title": f"Order {unique}",
                                  "description": "Order 42 missing", "interactions": [first, second]})
    updated = khoros.update_case(created.body["id"], {"interactions": [third]})

    assert created.status == 201, created.body
    journal = servicenow.journal(created.body["id"])
    assert [j["element"] for j in journal] == ["work_notes"] * 3
    assert journal[0]["value"].startswith(first["body"] + "\n\n---\nKhoros twitter post by Ann Lee (@annlee), "
                                          "2024-03-01T10:11:00Z\n" + first["linkUrl"] + "\nkhoros-interaction: ")
    assert created.body["interactions"] == [first, second]
    assert updated.body["interactions"] == [first, second, third]
    looked_up = khoros.get_case(created.body["id"]).body
    assert looked_up["interactions"] == [first, second, third]
    assert [i["author"]["name"] for i in looked_up["interactions"]] == ["Ann Lee", "O'Shop ^ Support", "Ann Lee"]


def test_comments_and_other_notes_are_not_interactions_and_repeats_are_not_added(
        khoros: KhorosClient, servicenow: ServiceNowState, unique: str) -> None:
    customer = make_customer(khoros, unique)
    first, later = interaction(unique, 1), interaction(unique, 3)
    case = khoros.create_case({"customerId": customer["id"], "title": f"Later {unique}", "interactions": [first]}).body
    servicenow.update(CASE_TABLE, case["id"], {"comments": "Hi Ann, we are on it", "work_notes": "Called her"},
                      by="beth.agent")

    updated = khoros.update_case(case["id"], {"priority": "1", "interactions": [first, later]})

    assert updated.status == 200, updated.body
    assert updated.body["priority"] == "1"
    assert updated.body["interactions"] == [first, later]
    values = [j["value"] for j in servicenow.journal(case["id"])]
    assert sum(first["serviceId"] in v for v in values) == 1
    assert "Hi Ann, we are on it" in values and "Called her" in values


def test_customer_cases_page_by_offset_until_x_total_count(khoros: KhorosClient, servicenow: ServiceNowState,
                                                           unique: str) -> None:
    customer = make_customer(khoros, unique)
    for n in range(103):
        servicenow.insert(CASE_TABLE, {"short_description": f"Bulk {n}", "contact": customer["id"]})
    mark = len(servicenow.requests)

    answer = khoros.customer_cases(customer["id"])

    assert answer.status == 200
    assert len(answer.body) == 103
    offsets = [r.arg("sysparm_offset") for r in since(servicenow, mark) if r.path.endswith(CASE_TABLE)]
    assert offsets == ["0", "100"]


# --------------------------------------------------------------- the instance failing


def test_a_data_policy_refusal_is_a_422_with_khoros_field_names(khoros: KhorosClient, servicenow: ServiceNowState,
                                                               unique: str) -> None:
    customer = make_customer(khoros, unique)
    servicenow.mandatory[CASE_TABLE]["description"] = "Description"
    try:
        answer = khoros.create_case({"customerId": customer["id"], "title": f"Policy {unique}"})
    finally:
        del servicenow.mandatory[CASE_TABLE]["description"]

    assert answer.status == 422, answer.body
    assert [f["name"] for f in answer.body["fields"]] == ["description"]
    assert "Description is mandatory" in answer.body["fields"][0]["errorMessage"]


def test_several_mandatory_fields_are_all_named(khoros: KhorosClient, servicenow: ServiceNowState,
                                                unique: str) -> None:
    customer = make_customer(khoros, unique)
    servicenow.fail_next(200, {"result": {"sys_id": customer["id"]}})
    servicenow.fail_next(403, {"error": {"message": "Operation Failed", "detail":
                                         "Data Policy Exception: \n Short description is mandatory\n"
                                         " Contact is mandatory\n Priority is mandatory\n"}, "status": "failure"})

    answer = khoros.create_case({"customerId": customer["id"], "title": f"T {unique}"})

    assert answer.status == 422
    assert sorted(f["name"] for f in answer.body["fields"]) == ["customerId", "priority", "title"]


def test_an_acl_refusal_is_a_clear_500(khoros: KhorosClient, servicenow: ServiceNowState) -> None:
    servicenow.fail_next(403, {"error": {"message": "Operation Failed",
                                         "detail": "ACL Exception Insert Failed due to security constraints"},
                               "status": "failure"})

    answer = khoros.create_customer({"lastName": "Nobody"})

    assert answer.status == 500
    assert answer.body["error"] == "crm_forbidden"
    assert "ACL Exception" in answer.body["message"]


@pytest.mark.parametrize("status", [500, 502, 503])
def test_instance_5xx_is_a_500_with_the_trace_id(khoros: KhorosClient, servicenow: ServiceNowState,
                                                 status: int) -> None:
    # A read is tried three times (two retries): every try fails.
    servicenow.fail_next(status, "<html><body>Instance hibernating</body></html>", times=3)

    answer = khoros.search({"email": "someone@example.com"})

    assert answer.status == 500
    assert answer.body["error"] == "crm_unavailable"
    assert f"HTTP {status}" in answer.body["message"]
    assert TRACE.search(answer.body["message"])


# --------------------------------------------------------------- choice lists


@pytest.fixture
def uncached_mapping(tmp_path: Path) -> str:
    return without_live_cache(MAPPING, tmp_path, expected=1)


def test_case_meta_lists_the_instances_choice_lists_with_labels(
        bridge: Callable[[str, dict[str, str]], KhorosClient], servicenow_env: dict[str, str],
        servicenow: ServiceNowState, uncached_mapping: str, unique: str) -> None:
    khoros = bridge(uncached_mapping, servicenow_env)
    added = servicenow.insert("sys_choice", {"name": CASE_TABLE, "element": "state", "value": "20",
                                             "label": f"With vendor {unique}", "sequence": "350",
                                             "inactive": "false", "language": "en"})
    retired = servicenow.insert("sys_choice", {"name": CASE_TABLE, "element": "state", "value": "21",
                                               "label": "Retired", "sequence": "360", "inactive": "true",
                                               "language": "en"})
    try:
        meta = khoros.meta("case").body
    finally:
        del servicenow.tables["sys_choice"][added["sys_id"]]
        del servicenow.tables["sys_choice"][retired["sys_id"]]

    state = next(f for f in meta["fields"] if f["name"] == "caseState")
    assert state["listValues"] == [
        {"name": "New", "value": "1"}, {"name": "Open", "value": "10"}, {"name": "Awaiting Info", "value": "18"},
        {"name": f"With vendor {unique}", "value": "20"}, {"name": "Resolved", "value": "6"},
        {"name": "Closed", "value": "3"}, {"name": "Cancelled", "value": "7"}]
    priority = next(f for f in meta["fields"] if f["name"] == "priority")
    assert [v["name"] for v in priority["listValues"]] == ["1 - Critical", "2 - High", "3 - Moderate", "4 - Low"]


# --------------------------------------------------------------- the description


def test_every_request_the_session_sent_fits_the_description(servicenow: ServiceNowState) -> None:
    assert len(servicenow.requests) > 50
    assert [p for r in servicenow.requests for p in SPEC.problems(r)] == []
