"""mappings/dynamics.yaml through our real server against the Dataverse fake.

The Khoros scenario (tests/test_khoros_scenario.py) proves every operation
works; these tests pin what is particular to Dynamics 365: OAuth client
credentials against Entra ID with the environment's ``/.default`` scope and
renewal of an expired token, creates answered 204 whose id is read from
``OData-EntityId``, PATCH with ``If-Match: *`` so an unknown id is never
created, ``$filter`` string literals that keep every value literal, option
sets with labels from the metadata, statecode and CloseIncident, notes read
back oldest first, ``@odata.nextLink`` paging, and every way Dataverse fails.
Facts and sources: docs/vendors/dynamics-api.md; set-up: docs/mappings/dynamics.md.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Fake
from tests.fakes.dynamics import API, Comparison, DynamicsState, comparisons
from tests.support.khoros import KhorosClient
from tests.support.mappings import without_live_cache
from tests.support.openapi_check import OpenApiCheck
from tests.support.vendor_mapping import TRACE, checked_state, created, first_last_customer, interaction
from tests.targets.registry import ROOT

MAPPING = f"{ROOT}/mappings/dynamics.yaml"
SPEC = OpenApiCheck(f"{ROOT}/tests/specs/dynamics.yaml")
HOSTILE = "O'B ^ a=b \"q\" \\ ' or 1 eq 1"
MISSING = "00000000-0000-0000-0000-0000000000aa"


def api_requests(state: DynamicsState, mark: int = 0) -> list[Any]:
    return [r for r in state.requests[mark:] if r.path.startswith(API)]


@pytest.fixture(scope="module")
def khoros(bridge: Callable[[str, dict[str, str]], KhorosClient], dynamics_env: dict[str, str]) -> KhorosClient:
    return bridge(MAPPING, dynamics_env)


@pytest.fixture
def dynamics(dynamics_fake: Fake) -> Iterator[DynamicsState]:
    """The fake's state; afterwards every API request the test caused is held to
    tests/specs/dynamics.yaml, and no fault is left queued."""
    yield from checked_state(dynamics_fake.state, SPEC, lambda request: request.path.startswith(API))


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:8]


def make_customer(khoros: KhorosClient, unique: str, **fields: Any) -> dict[str, Any]:
    return created(khoros, first_last_customer(unique, **fields))


# --------------------------------------------------------------- OAuth


def test_client_credentials_with_the_environments_default_scope(khoros: KhorosClient, dynamics: DynamicsState,
                                                                dynamics_env: dict[str, str], unique: str) -> None:
    make_customer(khoros, unique)

    assert dynamics.token_requests, "no token was ever requested"
    assert dynamics.token_requests[-1] == {"grant_type": "client_credentials", "client_id": "dyn-client-id",
                                           "scope": f"{dynamics_env['DYNAMICS_URL']}/.default"}
    token_call = next(r for r in dynamics.requests if r.path == "/contoso-tenant/oauth2/v2.0/token")
    assert "client_secret=dyn-client-secret-123" in token_call.body.decode()
    create = api_requests(dynamics)[-2]
    assert (create.method, create.path) == ("POST", f"{API}/contacts")
    assert (create.header("Authorization") or "").startswith("Bearer ")
    assert (create.header("OData-Version"), create.header("OData-MaxVersion")) == ("4.0", "4.0")


def test_an_expired_token_is_renewed_once_and_the_call_repeated(khoros: KhorosClient, dynamics: DynamicsState,
                                                               unique: str) -> None:
    customer = make_customer(khoros, unique)
    tokens_before = len(dynamics.token_requests)
    dynamics.expire_tokens()
    mark = len(dynamics.requests)

    answer = khoros.get_customer(customer["id"])

    assert answer.status == 200
    assert len(dynamics.token_requests) == tokens_before + 1
    assert [r.path for r in api_requests(dynamics, mark)] == [f"{API}/contacts({customer['id']})"] * 2


def test_a_wrong_client_secret_is_a_clear_500(bridge: Callable[[str, dict[str, str]], KhorosClient],
                                              dynamics_env: dict[str, str], dynamics: DynamicsState) -> None:
    khoros = bridge(MAPPING, {**dynamics_env, "DYNAMICS_CLIENT_SECRET": "not-the-secret"})

    answer = khoros.get_customer(MISSING)

    assert answer.status == 500
    assert answer.body["error"] == "crm_auth_failed"
    assert "not-the-secret" not in answer.body["message"]
    assert TRACE.search(answer.body["message"])


# --------------------------------------------------------------- ids from OData-EntityId


def test_a_create_answered_204_gets_its_id_from_odata_entityid(khoros: KhorosClient, dynamics: DynamicsState,
                                                               unique: str) -> None:
    mark = len(dynamics.requests)

    customer = make_customer(khoros, unique)

    create, read = api_requests(dynamics, mark)
    assert create.header("Prefer") is None  # no return=representation: the answer is 204 without a body
    (stored,) = [c for c in dynamics.records["contacts"].values() if c["lastname"] == f"Lee {unique}"]
    assert customer["id"] == stored["contactid"]
    assert read.path == f"{API}/contacts({stored['contactid']})"
    assert customer["lastName"] == f"Lee {unique}"


def test_a_case_create_answered_204_gets_its_id_from_odata_entityid(khoros: KhorosClient, dynamics: DynamicsState,
                                                                    unique: str) -> None:
    customer = make_customer(khoros, unique)

    case = khoros.create_case({"customerId": customer["id"], "title": f"Case {unique}", "priority": "1"})

    assert case.status == 201, case.body
    (stored,) = [i for i in dynamics.records["incidents"].values() if i["title"] == f"Case {unique}"]
    assert case.body["id"] == stored["incidentid"]
    assert case.body["number"] == stored["ticketnumber"]
    assert case.body["customerId"] == customer["id"]
    post = next(r for r in dynamics.requests if r.method == "POST" and r.path == f"{API}/incidents"
                and r.json["title"] == f"Case {unique}")
    assert post.json["customerid_contact@odata.bind"] == f"/contacts({customer['id']})"
    assert post.json["prioritycode"] == 1


def test_an_update_of_an_unknown_id_is_404_and_creates_nothing(khoros: KhorosClient, dynamics: DynamicsState) -> None:
    before = len(dynamics.records["contacts"])
    mark = len(dynamics.requests)

    answer = khoros.update_customer(MISSING, {"jobTitle": "x"})

    assert answer.status == 404
    (patch,) = [r for r in api_requests(dynamics, mark) if r.method == "PATCH"]
    assert patch.header("If-Match") == "*"  # without it, PATCH would create the contact
    assert len(dynamics.records["contacts"]) == before


# --------------------------------------------------------------- $filter string literals


def test_hostile_values_stay_one_string_literal(khoros: KhorosClient, dynamics: DynamicsState, unique: str) -> None:
    last_name = f"{HOSTILE} {unique}"
    customer = make_customer(khoros, unique, lastName=last_name)
    make_customer(khoros, unique + "x")  # what "or 1 eq 1" would add
    mark = len(dynamics.filters)

    answer = khoros.search({"lastName": last_name})

    assert [c["id"] for c in answer.body] == [customer["id"]], answer.body
    (_, text, tree) = dynamics.filters[mark]
    assert text == "lastname eq '" + last_name.replace("'", "''") + "'"
    assert tree == Comparison("lastname", "eq", last_name)


def test_a_best_match_email_cannot_add_conditions(khoros: KhorosClient, dynamics: DynamicsState,
                                                 unique: str) -> None:
    make_customer(khoros, unique)
    email = f"x{unique}@example.com' or emailaddress1 ne '"
    mark = len(dynamics.filters)

    answer = khoros.best_match({"email": email})

    assert answer.body == []
    (_, text, tree) = dynamics.filters[mark]
    assert text == "(emailaddress1 eq '" + email.replace("'", "''") + "') and statecode eq 0"
    assert comparisons(tree) == [Comparison("emailaddress1", "eq", email), Comparison("statecode", "eq", 0)]


def test_a_retry_key_with_quotes_is_looked_up_as_one_literal(khoros: KhorosClient, dynamics: DynamicsState,
                                                            unique: str) -> None:
    customer = make_customer(khoros, unique)
    odd = interaction(unique, 1, serviceId=f"{unique}' or subject ne '")
    mark = len(dynamics.filters)

    created = khoros.create_case({"customerId": customer["id"], "title": f"Odd {unique}", "interactions": [odd]})

    assert created.status == 201, created.body
    (_, _, tree) = next(f for f in dynamics.filters[mark:] if f[0] == "annotations")
    assert comparisons(tree)[0] == Comparison("subject", "eq", f"khoros:twitter:{unique}' or subject ne '")


# --------------------------------------------------------------- states and CloseIncident


@pytest.mark.parametrize(("state", "status", "khoros_status"), [(0, 1, "open"), (0, 2, "open"), (1, 5, "closed"),
                                                                 (2, 6, "closed")])
def test_statecode_folds_into_khoros_open_and_closed(khoros: KhorosClient, dynamics: DynamicsState, unique: str,
                                                     state: int, status: int, khoros_status: str) -> None:
    customer = make_customer(khoros, unique)
    case = dynamics.insert("incidents", {"title": f"S {unique}", "_customerid_value": customer["id"],
                                         "statecode": state, "statuscode": status})

    answer = khoros.get_case(case["incidentid"])
    listed = khoros.customer_cases(customer["id"])

    assert (answer.body["status"], answer.body["caseStatus"]) == (khoros_status, str(status))
    assert [(c["id"], c["status"]) for c in listed.body] == [(case["incidentid"], khoros_status)]


def test_closing_uses_close_incident_and_reopening_resets_the_state(khoros: KhorosClient, dynamics: DynamicsState,
                                                                    unique: str) -> None:
    customer = make_customer(khoros, unique)
    case = khoros.create_case({"customerId": customer["id"], "title": f"Close {unique}"}).body
    mark = len(dynamics.requests)

    closed = khoros.update_case(case["id"], {"status": "closed"})
    reopened = khoros.update_case(case["id"], {"status": "open"})

    assert (closed.status, closed.body["status"], closed.body["caseStatus"]) == (200, "closed", "5")
    assert (reopened.status, reopened.body["status"]) == (200, "open")
    writes = [(r.method, r.path, r.json) for r in api_requests(dynamics, mark) if r.method != "GET"]
    assert writes[0][:2] == ("POST", f"{API}/CloseIncident")
    assert writes[0][2]["Status"] == 5
    assert writes[0][2]["IncidentResolution"]["incidentid@odata.bind"] == f"/incidents({case['id']})"
    assert writes[1] == ("PATCH", f"{API}/incidents({case['id']})", {"statecode": 0, "statuscode": 1})


def test_a_case_created_closed_is_resolved_at_once(khoros: KhorosClient, dynamics: DynamicsState,
                                                  unique: str) -> None:
    customer = make_customer(khoros, unique)

    case = khoros.create_case({"customerId": customer["id"], "title": f"Done {unique}", "status": "closed"})

    assert case.status == 201
    assert case.body["status"] == "closed"
    assert dynamics.records["incidents"][case.body["id"]]["statecode"] == 1


# --------------------------------------------------------------- notes


def test_interactions_are_notes_read_back_oldest_first_with_author_and_link(
        khoros: KhorosClient, dynamics: DynamicsState, unique: str) -> None:
    customer = make_customer(khoros, unique)
    first, second, third = interaction(unique, 1), interaction(unique, 2), interaction(unique, 3)

    created = khoros.create_case({"customerId": customer["id"], "title": f"Order {unique}",
                                  "interactions": [first, second]})
    updated = khoros.update_case(created.body["id"], {"interactions": [first, third]})
    dynamics.insert("annotations", {"subject": "Call", "notetext": "Phoned Ann",
                                    "_objectid_value": created.body["id"]})

    assert created.body["interactions"] == [first, second]
    assert updated.body["interactions"] == [first, second, third]
    looked_up = khoros.get_case(created.body["id"]).body
    assert looked_up["interactions"] == [first, second, third]
    notes = dynamics.notes_of(created.body["id"])
    assert [n["subject"] for n in notes][:3] == [f"khoros:twitter:{i['serviceId']}" for i in (first, second, third)]
    assert notes[0]["notetext"].startswith(first["body"] + "\n\n---\nKhoros twitter post by Ann Lee (@annlee)")


def test_customer_cases_follow_odata_nextlink(khoros: KhorosClient, dynamics: DynamicsState, unique: str) -> None:
    customer = make_customer(khoros, unique)
    for n in range(103):
        dynamics.insert("incidents", {"title": f"Bulk {n}", "_customerid_value": customer["id"]})
    mark = len(dynamics.requests)

    answer = khoros.customer_cases(customer["id"])

    assert len(answer.body) == 103
    pages = [r for r in api_requests(dynamics, mark) if r.path == f"{API}/incidents"]
    assert [r.arg("$skiptoken") for r in pages] == [None, "100"]
    assert all(r.header("Prefer") == "odata.maxpagesize=100" for r in pages)


# --------------------------------------------------------------- failures


@pytest.mark.parametrize("call", ["get_customer", "customer_cases", "get_case", "update_case"])
@pytest.mark.parametrize("missing", [MISSING, "not-a-guid"])
def test_unknown_records_are_404(khoros: KhorosClient, call: str, missing: str) -> None:
    calls = {"get_customer": lambda: khoros.get_customer(missing),
             "customer_cases": lambda: khoros.customer_cases(missing),
             "get_case": lambda: khoros.get_case(missing),
             "update_case": lambda: khoros.update_case(missing, {"priority": "1"})}

    answer = calls[call]()

    assert answer.status == 404
    assert answer.body["error"] == "not_found"
    assert TRACE.search(answer.body["message"])


def test_a_validation_error_names_the_khoros_field(khoros: KhorosClient, dynamics: DynamicsState,
                                                  unique: str) -> None:
    customer = make_customer(khoros, unique)
    case = khoros.create_case({"customerId": customer["id"], "title": f"V {unique}"}).body
    dynamics.labels[("incidents", "prioritycode")].pop(3)  # an admin retires "Low" after the model was cached
    try:
        answer = khoros.update_case(case["id"], {"priority": "3"})
    finally:
        dynamics.labels[("incidents", "prioritycode")][3] = "Low"

    assert answer.status == 422, answer.body
    assert [f["name"] for f in answer.body["fields"]] == ["priority"]
    assert "outside the valid range" in answer.body["fields"][0]["errorMessage"]


def test_a_short_429_is_waited_out_and_a_long_one_is_a_clear_500(khoros: KhorosClient, dynamics: DynamicsState,
                                                                 unique: str) -> None:
    customer = make_customer(khoros, unique)
    dynamics.rate_limit_next(retry_after=1)
    short = khoros.get_customer(customer["id"])
    dynamics.rate_limit_next(retry_after=300)
    long = khoros.get_customer(customer["id"])

    assert short.status == 200
    assert long.status == 500
    assert long.body["error"] == "crm_rate_limited"
    assert "300 seconds" in long.body["message"]


@pytest.mark.parametrize("status", [500, 502, 503])
def test_dataverse_5xx_is_a_500_with_the_trace_id(khoros: KhorosClient, dynamics: DynamicsState,
                                                  status: int) -> None:
    dynamics.fail_next(status, {"error": {"code": "0x80040216", "message": "An unexpected error occurred."}},
                       times=1 if status == 500 else 3)  # a read is retried twice after a 502/503

    answer = khoros.search({"email": "someone@example.com"})

    assert answer.status == 500
    assert answer.body["error"] == "crm_unavailable"
    assert f"HTTP {status}" in answer.body["message"]


# --------------------------------------------------------------- option sets in /meta


@pytest.fixture
def uncached_mapping(tmp_path: Path) -> str:
    return without_live_cache(MAPPING, tmp_path, expected=1)


def test_picklists_appear_in_meta_with_their_labels(bridge: Callable[[str, dict[str, str]], KhorosClient],
                                                    dynamics_env: dict[str, str], dynamics: DynamicsState,
                                                    uncached_mapping: str, unique: str) -> None:
    khoros = bridge(uncached_mapping, dynamics_env)
    dynamics.labels[("incidents", "caseorigincode")][100000000] = f"Khoros {unique}"
    try:
        meta = khoros.meta("case").body
    finally:
        del dynamics.labels[("incidents", "caseorigincode")][100000000]

    fields = {f["name"]: f for f in meta["fields"]}
    assert fields["priority"] == {"name": "priority", "label": "Priority", "type": "single_sel_list",
                                  "searchable": False, "listValues": [
                                      {"name": "High", "value": "1"}, {"name": "Normal", "value": "2"},
                                      {"name": "Low", "value": "3"}]}
    assert {"name": f"Khoros {unique}", "value": "100000000"} in fields["caseOrigin"]["listValues"]
    assert {"name": "Problem Solved", "value": "5"} in fields["caseStatus"]["listValues"]


def test_every_request_the_session_sent_fits_the_description(dynamics: DynamicsState) -> None:
    assert len(api_requests(dynamics)) > 50
    assert [p for r in api_requests(dynamics) for p in SPEC.problems(r)] == []
