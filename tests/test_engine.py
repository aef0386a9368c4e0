"""The engine without any web framework: operation name and body in, status and payload out.

``tests/mappings/good/people.yaml`` is served against a small stateful
"people and tickets" CRM on loopback. The tests pin what the engine adds
around the steps: binding settings and secrets from the environment, checking
Khoros's input before any CRM call, shaping answers, unsupported operations,
and the data model, declared or live (cached, served stale when the CRM is
down, an error when it was never fetched).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from flask import Flask, Response, jsonify, request

from mapper.core.engine import Engine, Tenancy, utc_now
from mapper.errors import (
    BadRequest,
    ConfigError,
    MappingRuntimeError,
    NotFound,
    Overloaded,
    Unsupported,
    UpstreamError,
    UpstreamUnavailable,
    ValidationFailed,
)
from tests.support.live_server import LiveServer, free_port, serve

PEOPLE_YAML = os.path.join(os.path.dirname(__file__), "mappings", "good", "people.yaml")
API_KEY = "people-api-key-0042"

INTERACTION = {"created": "2017-08-07T14:09:00Z", "body": "My charger is broken",
               "linkUrl": "https://twitter.com/jane/status/1", "serviceId": "1", "service": "twitter",
               "contentType": "post"}


@dataclass
class PeopleCrm:
    """The CRM's state; every test starts from the same three records."""

    people: dict[str, dict[str, Any]] = field(default_factory=lambda: {
        "1": {"id": 1, "given_name": "Jane", "family_name": "Doe", "email_address": "jane@example.com",
              "tier": "gold"},
        "2": {"id": 2, "given_name": "Joe", "family_name": "Bloggs", "email_address": "joe@example.com"},
    })
    tickets: dict[str, dict[str, Any]] = field(default_factory=lambda: {
        "10": {"id": 10, "person_id": 1, "subject": "Broken charger", "opened_at": 1502114940,
               "solved": False, "priority": "high"},
    })
    requests: list[str] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    fields_down: bool = False
    fields_title: str = "Team"
    fields_hang: threading.Event | None = None  # set: /ticket_fields waits for it (a hanging CRM)
    lock: threading.Lock = field(default_factory=threading.Lock)


def people_app(crm: PeopleCrm) -> Flask:
    app = Flask("people-crm")

    @app.before_request
    def record() -> Response | None:
        crm.requests.append(f"{request.method} {request.full_path.rstrip('?')}")
        crm.headers.append(dict(request.headers))
        if request.headers.get("X-Api-Key") != API_KEY:
            return Response('{"error": "bad key"}', status=401, mimetype="application/json")
        return None

    @app.get("/people")
    def search() -> Response:
        found = [p for p in crm.people.values() if all(str(p.get(k)) == v for k, v in request.args.items())]
        return jsonify({"data": found})

    @app.get("/people/<pid>")
    def get_person(pid: str) -> Response:
        if pid not in crm.people:
            return Response('{"error": "no such person"}', status=404, mimetype="application/json")
        return jsonify({"data": crm.people[pid]})

    @app.post("/people")
    def create_person() -> tuple[Response, int]:
        body = request.get_json()
        if body.get("email_address", "").endswith("@blocked.example"):
            return jsonify({"errors": {"email_address": ["is on the block list"]}}), 422
        pid = str(max(int(k) for k in crm.people) + 1)
        crm.people[pid] = {"id": int(pid), **body}
        return jsonify({"data": crm.people[pid]}), 201

    @app.patch("/people/<pid>")
    def update_person(pid: str) -> Response:
        if pid not in crm.people:
            return Response('{"error": "no such person"}', status=404, mimetype="application/json")
        crm.people[pid].update(request.get_json())
        return jsonify({"data": crm.people[pid]})

    @app.get("/people/<pid>/tickets")
    def person_tickets(pid: str) -> Response:
        return jsonify({"data": [t for t in crm.tickets.values() if str(t["person_id"]) == pid]})

    @app.post("/tickets")
    def create_ticket() -> tuple[Response, int]:
        with crm.lock:
            tid = str(max(int(k) for k in crm.tickets) + 1)
            crm.tickets[tid] = {"id": int(tid), "opened_at": "2024-03-01T10:00:00+01:00", "solved": False,
                                **request.get_json()}
        return jsonify({"data": crm.tickets[tid]}), 201

    @app.get("/tickets/<tid>")
    def get_ticket(tid: str) -> Response:
        if tid not in crm.tickets:
            return Response('{"error": "no such ticket"}', status=404, mimetype="application/json")
        return jsonify({"data": crm.tickets[tid]})

    @app.get("/ticket_fields")
    def ticket_fields() -> Response:
        if crm.fields_hang is not None:
            crm.fields_hang.wait(30)
        if crm.fields_down:
            return Response("<html>maintenance</html>", status=503, mimetype="text/html")
        return jsonify({"fields": [
            {"key": "team", "title": crm.fields_title, "visible": True, "options": ["billing", "hardware"]},
            {"key": "internal_score", "title": "Score", "visible": False},
            {"key": "title", "title": "Subject line", "visible": True},
        ]})

    return app


@pytest.fixture(scope="module")
def shared_crm() -> PeopleCrm:
    return PeopleCrm()


@pytest.fixture(scope="module")
def server(shared_crm: PeopleCrm) -> Iterator[LiveServer]:
    with serve(people_app(shared_crm)) as live:
        yield live


@pytest.fixture
def crm(shared_crm: PeopleCrm) -> PeopleCrm:
    """The CRM, reset to its three records and an empty request log for each test."""
    shared_crm.__dict__.update(PeopleCrm().__dict__)
    return shared_crm


def environ(server_url: str) -> dict[str, str]:
    return {"PEOPLE_CRM_URL": server_url, "PEOPLE_API_KEY": API_KEY}


@pytest.fixture(scope="module")
def loaded(server: LiveServer) -> Iterator[Engine]:
    """Loading compiles the mapping (about a second), so it happens once per module."""
    engine = Engine.load(PEOPLE_YAML, environ(server.url))
    yield engine
    engine.close()


@pytest.fixture
def engine(loaded: Engine, crm: PeopleCrm) -> Engine:
    """A fresh engine (empty data model cache) over the loaded mapping and its connection."""
    return Engine(loaded.mapping, loaded.settings, loaded.secrets, loaded.client, loaded.headers)


@pytest.fixture(scope="module")
def uncached(server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """The same mapping with ``cache_seconds: 0`` for its live case model."""
    with open(PEOPLE_YAML, encoding="utf-8") as handle:
        text = handle.read()
    path = tmp_path_factory.mktemp("uncached") / "people-uncached.yaml"
    path.write_text(text.replace("cache_seconds: 60", "cache_seconds: 0"), encoding="utf-8")
    engine = Engine.load(str(path), environ(server.url))
    yield engine
    engine.close()


# --- loading ----------------------------------------------------------------------------------

def test_loading_binds_settings_defaults_and_secrets_from_the_environment(engine, server):
    assert engine.settings == {"base_url": server.url, "site": "https://people.example"}
    assert engine.secrets == {"api_key": API_KEY}
    assert API_KEY in engine.secret_values


def test_a_missing_environment_variable_is_a_config_error_naming_it_and_its_line():
    with pytest.raises(ConfigError) as caught:
        Engine.load(PEOPLE_YAML, {})
    rendered = [str(p) for p in caught.value.problems]
    assert rendered == [
        f"{PEOPLE_YAML}:9: settings.base_url: the environment variable 'PEOPLE_CRM_URL' is not set; "
        "set it before starting the server",
        f"{PEOPLE_YAML}:12: secrets.api_key: the environment variable 'PEOPLE_API_KEY' is not set; "
        "set it before starting the server",
    ]


def test_an_empty_environment_variable_counts_as_unset():
    with pytest.raises(ConfigError, match="PEOPLE_API_KEY"):
        Engine.load(PEOPLE_YAML, {"PEOPLE_CRM_URL": "http://x", "PEOPLE_API_KEY": ""})


# --- operations -------------------------------------------------------------------------------

def test_get_customer_shapes_the_record_into_a_khoros_customer(engine, crm):
    status, payload = engine.run("get_customer", None, id="1")
    assert status == 200
    assert payload == {"id": "1", "uri": "https://people.example/people/1", "url": "https://people.example/people/1",
                       "firstName": "Jane", "lastName": "Doe", "email": "jane@example.com", "tier": "gold"}
    assert crm.headers[0]["X-Api-Key"] == API_KEY


def test_tenancy_headers_reach_templates(engine, crm):
    engine.run("get_customer", None, id="1", tenancy=Tenancy(user_email="agent@example.com"))
    engine.run("get_customer", None, id="1")
    assert [h["X-Agent"] for h in crm.headers] == ["agent@example.com", "unknown"]


def test_an_unknown_customer_is_not_found(engine):
    with pytest.raises(NotFound, match="The CRM has no such record"):
        engine.run("get_customer", None, id="404")


def test_search_answers_every_match_and_an_empty_list_for_none(engine, crm):
    status, payload = engine.run("search_customers", {"email": "joe@example.com"})
    assert (status, [c["id"] for c in payload]) == (200, ["2"])
    assert engine.run("search_customers", {"email": "nobody@example.com"}) == (200, [])
    assert crm.requests[0] == "GET /people?email_address=joe%40example.com"


def test_search_with_an_unknown_field_is_refused_before_any_crm_call(engine, crm):
    with pytest.raises(BadRequest, match="'shoeSize'"):
        engine.run("search_customers", {"shoeSize": "9"})
    assert crm.requests == []


@pytest.mark.parametrize("body", [None, [], "text", 42])
def test_a_body_that_is_not_an_object_is_a_bad_request(engine, body):
    with pytest.raises(BadRequest, match="must be a JSON object"):
        engine.run("create_customer", body)


def test_best_match_uses_the_first_strategy_that_finds_someone(engine, crm):
    status, payload = engine.run("best_match", {"displayName": "Joe Bloggs", "email": "nobody@example.com"})
    assert status == 200
    assert [c["id"] for c in payload] == ["2"]
    assert crm.requests == ["GET /people?email_address=nobody%40example.com",
                            "GET /people?given_name=Joe&family_name=Bloggs"]


def test_best_match_shape_errors_are_bad_requests(engine, crm):
    with pytest.raises(BadRequest):
        engine.run("best_match", {"phoneNumbers": "555"})
    assert crm.requests == []


def test_create_customer_answers_201_with_the_created_customer(engine, crm):
    status, payload = engine.run("create_customer", {"lastName": "New", "email": "new@example.com", "tier": "silver"})
    assert status == 201
    assert payload["id"] == "3"
    assert payload["lastName"] == "New"
    assert crm.people["3"] == {"id": 3, "family_name": "New", "email_address": "new@example.com", "tier": "silver"}


def test_create_customer_validates_against_the_model_before_calling_the_crm(engine, crm):
    with pytest.raises(ValidationFailed) as caught:
        engine.run("create_customer", {"email": "not-an-email", "tier": "platinum"})
    assert {f.name for f in caught.value.fields} == {"email", "tier", "lastName"}
    assert crm.requests == []


def test_crm_validation_errors_come_back_with_khoros_field_names(engine):
    with pytest.raises(ValidationFailed) as caught:
        engine.run("create_customer", {"lastName": "X", "email": "x@blocked.example"})
    assert [(f.name, f.error_message) for f in caught.value.fields] == [("email", "is on the block list")]


def test_update_customer_may_clear_a_field_and_answers_the_whole_customer(engine, crm):
    status, payload = engine.run("update_customer", {"tier": None, "firstName": "Janet", "id": "ignored"}, id="1")
    assert status == 200
    assert payload["firstName"] == "Janet"
    assert "tier" not in payload
    assert crm.people["1"]["tier"] is None


def test_customer_cases_are_shaped_cases(engine):
    status, payload = engine.run("customer_cases", None, id="1")
    assert status == 200
    assert payload == [{"id": "10", "number": "T-10", "customerId": "1", "title": "Broken charger",
                        "linkUrl": "https://people.example/tickets/10", "url": "https://people.example/tickets/10",
                        "created": "2017-08-07T14:09:00Z", "status": "open", "priority": "high"}]


def test_create_case_carries_customer_and_interactions(engine, crm):
    status, payload = engine.run("create_case", {"customerId": 2, "title": "Refund", "interactions": [INTERACTION]})
    assert status == 201
    assert payload["customerId"] == "2"
    assert payload["interactions"] == [INTERACTION]
    assert payload["created"] == "2024-03-01T09:00:00Z"
    assert crm.tickets["11"]["person_id"] == "2"


def test_create_case_with_an_incomplete_interaction_names_it(engine, crm):
    with pytest.raises(ValidationFailed) as caught:
        engine.run("create_case", {"customerId": "2", "title": "Refund",
                                   "interactions": [{k: v for k, v in INTERACTION.items() if k != "body"}]})
    assert [f.name for f in caught.value.fields] == ["interactions[0].body"]
    assert not [r for r in crm.requests if not r.startswith("GET ")]


def test_an_unsupported_operation_is_a_500_saying_why(engine, crm):
    with pytest.raises(Unsupported) as caught:
        engine.run("update_case", {"title": "x"}, id="10")
    assert caught.value.status == 500
    assert caught.value.code == "not_supported"
    assert "tickets cannot be changed from Khoros; edit them in the CRM" in caught.value.message
    assert crm.requests == []


def test_a_wrong_crm_credential_is_an_upstream_error(server, crm):
    engine = Engine.load(PEOPLE_YAML, {"PEOPLE_CRM_URL": server.url, "PEOPLE_API_KEY": "wrong-key-000"})
    with pytest.raises(UpstreamError, match="refused our credentials"):
        engine.run("get_customer", None, id="1")
    engine.close()


def test_a_crm_that_is_down_is_unavailable(loaded):
    down = Engine(loaded.mapping, {**loaded.settings, "base_url": f"http://127.0.0.1:{free_port()}"},
                  loaded.secrets, loaded.client, loaded.headers)
    with pytest.raises(UpstreamUnavailable):
        down.run("get_customer", None, id="1")


# --- the data model -----------------------------------------------------------------------------

def test_a_declared_model_is_answered_without_calling_the_crm(engine, crm):
    meta = engine.meta("customer")
    assert meta["name"] == "customer"
    assert [f["name"] for f in meta["fields"]] == ["id", "uri", "firstName", "lastName", "email", "tier"]
    assert crm.requests == []


def test_an_unknown_meta_type_is_not_found(engine):
    with pytest.raises(NotFound, match="Meta type 'contact' is not supported"):
        engine.meta("contact")


def test_a_live_model_merges_the_crms_fields_over_the_declared_ones(engine):
    fields = {f["name"]: f for f in engine.meta("case")["fields"]}
    assert list(fields) == ["id", "linkUrl", "created", "priority", "team", "title"]
    assert fields["team"] == {"name": "team", "label": "Team", "type": "single_sel_list", "searchable": False,
                              "listValues": [{"name": "Billing", "value": "billing"},
                                             {"name": "Hardware", "value": "hardware"}]}
    assert fields["title"]["label"] == "Subject line"
    assert "internal_score" not in fields


def test_a_live_model_is_cached_for_cache_seconds(engine, crm):
    first = engine.meta("case")
    crm.fields_title = "Squad"
    assert engine.meta("case") == first
    assert crm.requests == ["GET /ticket_fields"]


def test_a_live_model_past_its_cache_time_is_fetched_again(uncached, crm):
    uncached.meta("case")
    crm.fields_title = "Squad"
    fields = {f["name"]: f for f in uncached.meta("case")["fields"]}
    assert fields["team"]["label"] == "Squad"
    assert crm.requests == ["GET /ticket_fields", "GET /ticket_fields"]


def test_a_live_model_is_served_from_cache_when_the_crm_is_down(uncached, crm):
    good = uncached.meta("case")
    crm.fields_down = True
    assert uncached.meta("case") == good
    # One good fetch; then the 503 and the two retries a read gets (see mapper.core.upstream).
    assert crm.requests == ["GET /ticket_fields"] * 4


def test_a_live_model_never_fetched_is_an_error_when_the_crm_is_down(engine, crm):
    crm.fields_down = True
    with pytest.raises(UpstreamError, match="HTTP 503"):
        engine.meta("case")


# Both models live and never fresh: every operation would want to fetch them again.
BOTH_LIVE = """
  customer:
    live:
      cache_seconds: 0
      steps:
        - request: {method: GET, path: /ticket_fields}
          extract: {crm_fields: {path: "$.fields[*]", many: true}}
      fields:
        $map: "{{ crm_fields }}"
        $as: f
        $where: "{{ f.visible and f.key != 'title' }}"
        $to: {name: "{{ f.key }}", label: "{{ f.title }}", type: text}
    fields:"""


@pytest.fixture(scope="module")
def always_stale(server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    with open(PEOPLE_YAML, encoding="utf-8") as handle:
        text = handle.read()
    text = text.replace("cache_seconds: 60", "cache_seconds: 0").replace("\n  customer:\n    fields:", BOTH_LIVE, 1)
    path = tmp_path_factory.mktemp("stale") / "people-stale.yaml"
    path.write_text(text, encoding="utf-8")
    engine = Engine.load(str(path), environ(server.url))
    yield engine
    engine.close()


def test_a_hanging_metadata_call_holds_up_no_operation(always_stale, crm):
    engine = Engine(always_stale.mapping, always_stale.settings, always_stale.secrets, always_stale.client,
                    always_stale.headers)
    assert "team" in {f["name"] for f in engine.meta("customer")["fields"]}
    assert "team" in {f["name"] for f in engine.meta("case")["fields"]}
    crm.fields_hang = threading.Event()
    crm.requests.clear()

    def search(n: int) -> tuple[int, float]:
        started = time.monotonic()
        status, found = engine.run("search_customers", {"email": "jane@example.com", "team": "x"})
        assert [c["id"] for c in found] == ["1"]  # 'team' is known only from the cached live model
        return status, time.monotonic() - started

    def create(n: int) -> tuple[int, float]:
        started = time.monotonic()
        status, case = engine.run("create_case", {"customerId": "1", "title": f"Broken #{n}", "team": "billing"})
        assert case["title"] == f"Broken #{n}"
        return status, time.monotonic() - started

    try:
        with ThreadPoolExecutor(32) as pool:
            answers = list(pool.map(search, range(16))) + list(pool.map(create, range(16)))
    finally:
        crm.fields_hang.set()
    assert [status for status, _ in answers] == [200] * 16 + [201] * 16
    # Khoros's limit is 8 s; the metadata call hangs for 30 s (its own timeout is 10 s).
    assert max(seconds for _, seconds in answers) < 8
    # One refresh per kind went out, in the background; nobody else asked the hanging endpoint.
    assert crm.requests.count("GET /ticket_fields") == 2


def test_a_failed_metadata_call_is_not_repeated_by_every_request(always_stale, crm):
    engine = Engine(always_stale.mapping, always_stale.settings, always_stale.secrets, always_stale.client,
                    always_stale.headers)
    good = engine.meta("case")
    now = [time.monotonic()]
    engine._live._clock = lambda: now[0]  # the back-off is timed, not the machine's pace
    crm.fields_down = True
    crm.requests.clear()
    for _ in range(5):
        assert engine.meta("case") == good
        assert engine.run("create_case", {"customerId": "1", "title": "Broken", "team": "billing"})[0] == 201
    # One failed fetch (a read: tried three times), then it backs off.
    assert crm.requests.count("GET /ticket_fields") == 3
    now[0] += 1.5  # past the first back-off (1 s): one more fetch, then 2 s of quiet
    for _ in range(3):
        assert engine.meta("case") == good
    assert crm.requests.count("GET /ticket_fields") == 6


def test_best_match_does_not_fetch_the_data_model(always_stale, crm):
    engine = Engine(always_stale.mapping, always_stale.settings, always_stale.secrets, always_stale.client,
                    always_stale.headers)
    engine.run("best_match", {"displayName": "Jane Doe"})
    assert "GET /ticket_fields" not in crm.requests


def test_a_request_that_queued_past_the_budget_is_refused_before_any_crm_call(engine, crm):
    with pytest.raises(Overloaded, match=r"server is overloaded: this request waited 7\.[0-9] s"):
        engine.run("create_case", {"customerId": "1", "title": "Late"}, arrived=time.monotonic() - 7.2)
    assert crm.requests == []
    status, _ = engine.run("create_case", {"customerId": "1", "title": "Late"}, arrived=time.monotonic() - 2)
    assert status == 201  # queued, but with time enough left


def test_live_list_values_that_are_plain_strings_are_a_mapping_error_naming_the_place():
    from mapper.core.engine import _live_field

    with pytest.raises(MappingRuntimeError, match=r"m\.yaml:12 model\.customer\.live.*listValues for 'tier'"):
        _live_field({"name": "tier", "type": "single_sel_list", "listValues": ["gold"]},
                    "m.yaml:12 model.customer.live")
    good = _live_field({"name": "tier", "type": "single_sel_list", "listValues": [{"name": "Gold", "value": "gold"}]},
                       "m.yaml:12 model.customer.live")
    assert good["listValues"] == [{"name": "Gold", "value": "gold"}]


def test_now_is_the_current_utc_second_each_time_it_is_asked() -> None:
    for _ in range(3):  # the first call makes the text, the next ones may reuse it
        before = datetime.now(UTC).replace(microsecond=0)
        now = datetime.strptime(utc_now(), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        assert before <= now <= datetime.now(UTC)
        time.sleep(0.6)
