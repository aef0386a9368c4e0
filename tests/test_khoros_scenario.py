"""The Khoros scenario: every Custom CRM operation, as Khoros calls it, against real CRMs.

One scenario, parametrised over every target CRM (the bundled demo CRM,
json-server from npm, BottleCRM from PyPI, and the vendor fakes), each
reached through its shipped mapping and our real HTTP server. The data per
target lives in ``tests/scenarios/<target>.yaml``; the assertions are the
contract in ``shared/khoros-crm-api.md`` and do not change per target.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.support.khoros import KhorosClient
from tests.targets.registry import TARGETS, Target, load_scenario

ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")
TRACE = re.compile(r"\(trace [0-9a-f]{16}\)")


def interaction(n: int, unique: str, author: bool = True) -> dict[str, Any]:
    item: dict[str, Any] = {
        "created": f"2017-08-0{n}T14:09:0{n}Z", "body": f"Post {n} of {unique}: my charger is broken",
        "linkUrl": f"https://twitter.com/jane/status/{unique}{n}", "serviceId": f"{unique}{n}",
        "service": "twitter", "contentType": "post" if n == 1 else "reply",
    }
    if author:
        item["author"] = {"service": "twitter", "serviceId": f"99{n}", "handle": "jane", "name": "Jane Doe",
                          "brandOwned": n == 3}
    return item


@pytest.fixture(scope="module", params=[pytest.param(t.name, marks=t.marks) for t in TARGETS])
def target(request: pytest.FixtureRequest) -> Target:
    return next(t for t in TARGETS if t.name == request.param)


@pytest.fixture(scope="module")
def khoros(target: Target, request: pytest.FixtureRequest, bridge) -> KhorosClient:
    environ = request.getfixturevalue(target.env_fixture)
    # --record-exchanges re-records tests/recordings/<target>/, which tests/test_recordings.py replays.
    record = target.name if request.config.getoption("--record-exchanges") else None
    return bridge(target.mapping, environ, record=record)


@pytest.fixture(scope="module")
def data(target: Target) -> dict[str, Any]:
    return load_scenario(target.name)


@pytest.fixture(scope="module")
def world(khoros: KhorosClient, data: dict[str, Any]) -> dict[str, Any]:
    """One customer (plus a look-alike decoy) and one case with two interactions."""
    customer = khoros.create_customer(data["customer"])
    assert customer.status == 201, customer.body
    decoy = khoros.create_customer(data["decoy"])
    assert decoy.status == 201, decoy.body
    interactions = [interaction(1, data["unique"]), interaction(2, data["unique"], author=False)]
    case = khoros.create_case({**data["case"], "customerId": customer.body["id"], "interactions": interactions})
    assert case.status == 201, case.body
    return {"customer": customer.body, "decoy": decoy.body, "case": case.body, "interactions": interactions}


STORED_PHONE = "+15551469907"
NAME_FIELDS = ("name", "firstName", "lastName")  # changed too, so that the twins never match by name


@pytest.fixture(scope="module")
def phone_twins(khoros: KhorosClient, data: dict[str, Any]) -> dict[str, Any]:
    """The scenario's customer again (another email), with its phone stored in E.164, and one
    whose number differs in the last digit: best match must tell them apart by number."""
    def twin(prefix: str, phone: str) -> dict[str, Any]:
        body = {k: (prefix + v if isinstance(v, str) and ("@" in v or k in NAME_FIELDS) else v)
                for k, v in data["customer"].items()}
        body["phone"] = phone
        answer = khoros.create_customer(body)
        assert answer.status == 201, answer.body
        return answer.body

    return {"stored": twin("tel.", STORED_PHONE), "other": twin("other.", STORED_PHONE[:-1] + "8")}


def assert_interactions_equal(got: list[dict[str, Any]], sent: list[dict[str, Any]]) -> None:
    by_id = {item["serviceId"]: item for item in got}
    for item in sent:
        assert item["serviceId"] in by_id, f"interaction {item['serviceId']} was not read back"
        back = by_id[item["serviceId"]]
        for key in ("created", "body", "linkUrl", "service", "contentType"):
            assert back[key] == item[key], key
        if "author" in item:
            assert back["author"] == item["author"]


class TestDataModel:
    def test_customer_meta_lists_required_and_declared_fields(self, khoros: KhorosClient) -> None:
        answer = khoros.meta("customer")
        assert answer.status == 200
        assert answer.body["name"] == "customer"
        names = [f["name"] for f in answer.body["fields"]]
        assert {"id", "uri"} <= set(names)
        for field in answer.body["fields"]:
            assert field["type"] in {"text", "textarea", "single_sel_list", "checkbox"}
            assert ("listValues" in field) == (field["type"] == "single_sel_list")

    def test_case_meta_lists_required_fields_and_nothing_searchable(self, khoros: KhorosClient) -> None:
        answer = khoros.meta("case")
        assert answer.status == 200
        names = {f["name"] for f in answer.body["fields"]}
        assert {"id", "linkUrl", "created"} <= names
        assert not any(f["searchable"] for f in answer.body["fields"])

    def test_unknown_meta_type_is_404(self, khoros: KhorosClient) -> None:
        answer = khoros.meta("order")
        assert answer.status == 404
        assert answer.body["error"] == "not_found"


class TestCustomers:
    def test_create_answers_the_customer_with_id_and_link(self, world: dict[str, Any], data: dict[str, Any]) -> None:
        customer = world["customer"]
        assert isinstance(customer["id"], str) and customer["id"]
        assert customer["uri"] == customer["url"]
        for key, value in data["customer"].items():
            assert customer[key] == value, key

    def test_lookup_returns_the_same_customer(self, khoros: KhorosClient, world: dict[str, Any]) -> None:
        answer = khoros.get_customer(world["customer"]["id"])
        assert answer.status == 200
        assert answer.body == world["customer"]

    def test_search_finds_exact_matches_only(self, khoros: KhorosClient, world: dict[str, Any],
                                             data: dict[str, Any]) -> None:
        for key in data["search_by"]:
            answer = khoros.search({key: data["customer"][key]})
            assert answer.status == 200
            assert [c["id"] for c in answer.body] == [world["customer"]["id"]], key

    def test_search_without_match_is_an_empty_list(self, khoros: KhorosClient, data: dict[str, Any]) -> None:
        answer = khoros.search({"email": f"nobody.{data['unique']}@example.org"})
        assert answer.status == 200
        assert answer.body == []

    def test_best_match_finds_the_customer_by_each_strategy(self, khoros: KhorosClient, world: dict[str, Any],
                                                           data: dict[str, Any]) -> None:
        for body in data["bestmatch"]:
            answer = khoros.best_match(body)
            assert answer.status == 200, answer.body
            assert answer.body and answer.body[0]["id"] == world["customer"]["id"], body
            assert world["decoy"]["id"] not in [c["id"] for c in answer.body], body

    @pytest.mark.parametrize("typed", ["(555) 146-9907", "555-146-9907", "+1 555 146 9907"])
    def test_best_match_finds_a_phone_number_however_it_is_written(self, khoros: KhorosClient,
                                                                    phone_twins: dict[str, Any], typed: str) -> None:
        answer = khoros.best_match({"phoneNumbers": [typed]})
        assert answer.status == 200, answer.body
        ids = [c["id"] for c in answer.body]
        assert phone_twins["stored"]["id"] in ids, typed
        assert phone_twins["other"]["id"] not in ids, typed
        assert len(ids) == len(set(ids)), "a customer is listed twice"

    def test_best_match_with_nothing_known_is_an_empty_list(self, khoros: KhorosClient, data: dict[str, Any]) -> None:
        answer = khoros.best_match({"screenName": f"ghost{data['unique']}", "displayName": "Ghost"})
        assert answer.status == 200
        assert answer.body == []

    def test_update_changes_fields_and_answers_the_whole_customer(self, khoros: KhorosClient,
                                                                  data: dict[str, Any]) -> None:
        created = khoros.create_customer({**data["customer"], "email": f"edit.{data['unique']}@example.com"}).body
        answer = khoros.update_customer(created["id"], data["customer_update"])
        assert answer.status == 200
        expected = {**created, **data["customer_update"]}
        for key, value in expected.items():
            assert answer.body.get(key) == value, key
        assert khoros.get_customer(created["id"]).body == answer.body

    def test_unknown_customer_is_404(self, khoros: KhorosClient, data: dict[str, Any]) -> None:
        for answer in (khoros.get_customer(data["unknown_customer_id"]),
                       khoros.customer_cases(data["unknown_customer_id"])):
            assert answer.status == 404
            assert answer.body["error"] == "not_found"
            assert TRACE.search(answer.body["message"])


class TestCases:
    def test_create_answers_an_open_case_with_its_interactions(self, world: dict[str, Any],
                                                               data: dict[str, Any]) -> None:
        case = world["case"]
        assert isinstance(case["id"], str) and case["id"]
        assert case["customerId"] == world["customer"]["id"]
        assert case["title"] == data["case"]["title"]
        assert case["status"] == "open"
        assert case["linkUrl"] == case["url"]
        assert ISO.match(case["created"])
        assert case.get("number")
        assert_interactions_equal(case["interactions"], world["interactions"])

    def test_lookup_reads_every_interaction_back(self, khoros: KhorosClient, world: dict[str, Any]) -> None:
        answer = khoros.get_case(world["case"]["id"])
        assert answer.status == 200
        assert answer.body["id"] == world["case"]["id"]
        assert answer.body["customerId"] == world["customer"]["id"]
        assert_interactions_equal(answer.body["interactions"], world["interactions"])

    def test_customer_cases_lists_the_case(self, khoros: KhorosClient, world: dict[str, Any]) -> None:
        answer = khoros.customer_cases(world["customer"]["id"])
        assert answer.status == 200
        assert world["case"]["id"] in [c["id"] for c in answer.body]
        assert all(c["customerId"] == world["customer"]["id"] for c in answer.body)

    def test_update_changes_status_and_adds_interactions(self, khoros: KhorosClient, world: dict[str, Any],
                                                         data: dict[str, Any]) -> None:
        customer_id = world["customer"]["id"]
        sent = [interaction(1, data["unique"] + "u")]
        case = khoros.create_case({**data["case"], "title": data["case"]["title"] + " (update)",
                                   "customerId": customer_id, "interactions": sent}).body
        more = [interaction(3, data["unique"] + "u")]
        answer = khoros.update_case(case["id"], {**data["case_update"], "interactions": more})
        assert answer.status == 200, answer.body
        assert answer.body["status"] == data["closed_status"]
        for key, value in data["case_update"].items():
            if key != "status":
                assert answer.body[key] == value, key
        assert_interactions_equal(answer.body["interactions"], sent + more)
        again = khoros.get_case(case["id"])
        assert again.body["status"] == data["closed_status"]
        assert_interactions_equal(again.body["interactions"], sent + more)

    def test_unknown_case_is_404(self, khoros: KhorosClient, data: dict[str, Any]) -> None:
        answer = khoros.get_case(data["unknown_case_id"])
        assert answer.status == 404
        assert answer.body["error"] == "not_found"

    def test_case_for_unknown_customer_is_refused_with_the_field_named(self, khoros: KhorosClient,
                                                                       data: dict[str, Any]) -> None:
        answer = khoros.create_case({**data["case"], "customerId": data["unknown_customer_id"]})
        assert answer.status == 422, answer.body
        assert [f["name"] for f in answer.body["fields"]] == ["customerId"]


class TestBadInput:
    def test_missing_or_wrong_authorization_is_401(self, khoros: KhorosClient) -> None:
        for token in (None, "wrong-token"):
            answer = khoros.call("GET", "/meta/object/customer", token=token)
            assert answer.status == 401
            assert answer.body["error"] == "unauthorized"
            assert TRACE.search(answer.body["message"])

    def test_malformed_json_is_400(self, khoros: KhorosClient) -> None:
        answer = khoros.call("POST", "/customer", raw=b'{"firstName": ')
        assert answer.status == 400
        assert answer.body["error"] == "bad_request"

    def test_a_body_that_is_not_an_object_is_400(self, khoros: KhorosClient) -> None:
        answer = khoros.call("POST", "/customers", [1, 2])
        assert answer.status == 400

    def test_unknown_field_is_400_naming_it(self, khoros: KhorosClient, data: dict[str, Any]) -> None:
        answer = khoros.create_customer({**data["customer"], "shoeSize": "44"})
        assert answer.status == 400
        assert "shoeSize" in answer.body["message"]

    def test_invalid_fields_are_422_with_every_field_named(self, khoros: KhorosClient, data: dict[str, Any]) -> None:
        answer = khoros.create_customer(data["invalid_customer"]["body"])
        assert answer.status == 422
        assert answer.body["error"] == "validation_failed"
        assert sorted(f["name"] for f in answer.body["fields"]) == sorted(data["invalid_customer"]["fields"])
        assert all(f["errorMessage"] for f in answer.body["fields"])

    def test_incomplete_interaction_is_422_and_creates_nothing(self, khoros: KhorosClient, world: dict[str, Any],
                                                               data: dict[str, Any]) -> None:
        broken = interaction(1, data["unique"] + "b")
        del broken["linkUrl"]
        before = len(khoros.customer_cases(world["customer"]["id"]).body)
        answer = khoros.create_case({**data["case"], "customerId": world["customer"]["id"],
                                     "interactions": [broken]})
        assert answer.status == 422
        assert answer.body["fields"][0]["name"] == "interactions[0].linkUrl"
        assert len(khoros.customer_cases(world["customer"]["id"]).body) == before
