"""What every vendor mapping keeps, each against its vendor's fake: one test, many CRMs.

The vendor modules (tests/test_mapping_<vendor>.py) pin what is particular to
one CRM; the behaviours here were written once per vendor and are the same
contract: an unknown record is a 404 naming it with a trace id, a short 429 is
waited out and a long one is a clear 500 without a second call, a retried
case create finds the case it made instead of making another, and a closed
case is never taken for a new one. A vendor joins
by a row in ``VENDORS``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.fakes.dynamics import API as DYNAMICS_API
from tests.fakes.servicenow import CASE_TABLE, CONTACT_TABLE
from tests.support.khoros import KhorosClient
from tests.support.openapi_check import OpenApiCheck
from tests.support.vendor_mapping import (
    TRACE,
    checked_state,
    created,
    first_last_customer,
    interaction,
    named_customer,
    since,
)
from tests.targets.registry import ROOT

pytestmark = pytest.mark.vendor


@dataclass(frozen=True)
class Vendor:
    """One vendor mapping and what the contract needs to know about its fake."""

    name: str
    customer: Callable[[str], dict[str, Any]]  # a Khoros customer body with this test's unique part
    customer_path: Callable[[str], str]  # the path a customer lookup reads at the CRM
    cases_titled: Callable[[Any, str], list[str]]  # ids of the CRM's cases with this title
    missing: str = "98765432"  # an id no record has
    update_customer: dict[str, Any] = field(default_factory=lambda: {"jobTitle": "x"})
    update_case: dict[str, Any] = field(default_factory=lambda: {"priority": "1"})
    spec: OpenApiCheck | None = None  # the API description every request must fit
    described: Callable[[Any], bool] = lambda request: True  # which requests it describes
    unique_length: int = 10
    interaction_text: str = "my order never came"  # Freshdesk's has markup and an ampersand to keep

    @property
    def mapping(self) -> str:
        return f"{ROOT}/mappings/{self.name}.yaml"


ZENDESK = Vendor(
    "zendesk", named_customer, lambda id_: f"/api/v2/users/{id_}.json",
    lambda state, title: [str(k) for k, t in state.tickets.items() if t["subject"] == title],
    update_customer={"notes": "x"}, update_case={"priority": "low"})
FRESHDESK = Vendor(
    "freshdesk", named_customer, lambda id_: f"/api/v2/contacts/{id_}",
    lambda state, title: [str(k) for k, t in state.tickets.items() if t["subject"] == title],
    update_customer={"notes": "x"}, spec=OpenApiCheck(f"{ROOT}/tests/specs/freshdesk.yaml"),
    interaction_text="<b>my</b> order & never came")
SERVICENOW = Vendor(
    "servicenow", first_last_customer, lambda id_: f"/api/now/table/{CONTACT_TABLE}/{id_}",
    lambda state, title: [r["sys_id"] for r in state.tables[CASE_TABLE].values()
                          if r["short_description"] == title],
    missing="0123456789abcdef0123456789abcdef", spec=OpenApiCheck(f"{ROOT}/tests/specs/servicenow.yaml"))
DYNAMICS = Vendor(
    "dynamics", first_last_customer, lambda id_: f"{DYNAMICS_API}/contacts({id_})",
    lambda state, title: [k for k, i in state.records["incidents"].items() if i["title"] == title],
    missing="00000000-0000-0000-0000-0000000000aa", spec=OpenApiCheck(f"{ROOT}/tests/specs/dynamics.yaml"),
    described=lambda request: request.path.startswith(DYNAMICS_API), unique_length=8)

# Dynamics has its own 404 test (ids that are not GUIDs too) and a combined 429 test.
VENDORS = [ZENDESK, FRESHDESK, SERVICENOW]
WRITING_VENDORS = [*VENDORS, DYNAMICS]


def _ids(vendor: Vendor) -> str:
    return vendor.name


@pytest.fixture(scope="module")
def servers(bridge: Callable[[str, dict[str, str]], KhorosClient]) -> dict[str, KhorosClient]:
    return {}  # one server per vendor for the module, started on first use


@pytest.fixture
def khoros(vendor: Vendor, servers: dict[str, KhorosClient], bridge: Callable[[str, dict[str, str]], KhorosClient],
           request: pytest.FixtureRequest) -> KhorosClient:
    if vendor.name not in servers:
        servers[vendor.name] = bridge(vendor.mapping, request.getfixturevalue(f"{vendor.name}_env"))
    return servers[vendor.name]


@pytest.fixture
def state(vendor: Vendor, request: pytest.FixtureRequest) -> Iterator[Any]:
    fake = request.getfixturevalue(f"{vendor.name}_fake")
    yield from checked_state(fake.state, vendor.spec, vendor.described)


@pytest.fixture
def unique(vendor: Vendor) -> str:
    return uuid.uuid4().hex[:vendor.unique_length]


def make_customer(khoros: KhorosClient, vendor: Vendor, unique: str) -> dict[str, Any]:
    return created(khoros, vendor.customer(unique))


CALLS: dict[str, Callable[[KhorosClient, Vendor], Any]] = {
    "get_customer": lambda khoros, v: khoros.get_customer(v.missing),
    "customer_cases": lambda khoros, v: khoros.customer_cases(v.missing),
    "update_customer": lambda khoros, v: khoros.update_customer(v.missing, v.update_customer),
    "get_case": lambda khoros, v: khoros.get_case(v.missing),
    "update_case": lambda khoros, v: khoros.update_case(v.missing, v.update_case),
}


@pytest.mark.parametrize("call", list(CALLS))
@pytest.mark.parametrize("vendor", VENDORS, ids=_ids)
def test_unknown_records_are_404_with_a_trace_id(khoros: KhorosClient, vendor: Vendor, call: str) -> None:
    answer = CALLS[call](khoros, vendor)

    assert answer.status == 404
    assert answer.body["error"] == "not_found"
    assert vendor.missing in answer.body["message"]
    assert TRACE.search(answer.body["message"])


@pytest.mark.parametrize("vendor", VENDORS, ids=_ids)
def test_a_short_429_is_waited_out_within_the_budget(khoros: KhorosClient, vendor: Vendor, state: Any,
                                                    unique: str) -> None:
    customer = make_customer(khoros, vendor, unique)
    state.rate_limit_next(retry_after=1)
    mark = len(state.requests)

    answer = khoros.get_customer(customer["id"])

    assert answer.status == 200
    assert answer.body["id"] == customer["id"]
    assert [r.path for r in since(state, mark)] == [vendor.customer_path(customer["id"])] * 2


@pytest.mark.parametrize("vendor", VENDORS, ids=_ids)
def test_a_429_longer_than_the_budget_is_a_clear_500(khoros: KhorosClient, vendor: Vendor, state: Any) -> None:
    state.rate_limit_next(retry_after=45)
    mark = len(state.requests)

    answer = khoros.get_case(vendor.missing)

    assert answer.status == 500
    assert answer.body["error"] == "crm_rate_limited"
    assert "45 seconds" in answer.body["message"]
    assert TRACE.search(answer.body["message"])
    assert len(since(state, mark)) == 1  # not retried: the wait would not fit


@pytest.mark.parametrize("vendor", WRITING_VENDORS, ids=_ids)
def test_a_retried_create_returns_the_same_case_and_adds_only_what_is_missing(
        khoros: KhorosClient, vendor: Vendor, state: Any, unique: str) -> None:
    customer = make_customer(khoros, vendor, unique)
    first, second = (interaction(unique, n, vendor.interaction_text) for n in (1, 2))
    body = {"customerId": customer["id"], "title": f"Retry {unique}", "interactions": [first]}
    original = khoros.create_case(body).body

    retried = khoros.create_case({**body, "interactions": [first, second]})

    assert retried.status == 201
    assert retried.body["id"] == original["id"]
    assert retried.body["interactions"] == [first, second]
    assert vendor.cases_titled(state, f"Retry {unique}") == [original["id"]]


@pytest.mark.parametrize("vendor", VENDORS, ids=_ids)
def test_a_closed_case_is_not_reused_for_a_new_case(khoros: KhorosClient, vendor: Vendor, state: Any,
                                                    unique: str) -> None:
    customer = make_customer(khoros, vendor, unique)
    body = {"customerId": customer["id"], "title": f"Again {unique}",
            "interactions": [interaction(unique, 1, vendor.interaction_text)]}
    old = khoros.create_case(body).body
    assert khoros.update_case(old["id"], {"status": "closed"}).status == 200

    # A new title: the same first interaction (the mappings' key), but another Khoros request,
    # which the server's idempotency store would otherwise answer with the old case.
    new = khoros.create_case({**body, "title": f"Again {unique} later"})

    assert new.status == 201
    assert new.body["id"] != old["id"]

