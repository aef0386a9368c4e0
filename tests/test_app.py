"""The Flask adapter, called over real HTTP the way Khoros calls it.

Our app and a small CRM both run on loopback. The contract pinned here:
the Authorization check (several tokens, constant time, "Bearer" accepted),
every error as ``{"error", "message"}`` carrying the trace id that is also
in ``X-Trace-Id`` and in the log line, 400 for bodies that are not a JSON
object, JSON 404s, an unauthenticated ``/healthz``, the 8-second Khoros
deadline, and secrets that never reach a log.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
from flask import Flask, Response, jsonify, request

from mapper.core.engine import Engine
from mapper.errors import ConfigError
from mapper.service.app import ARRIVED_KEY, TokenCheck, arrival, create_app, parse_tokens
from tests.support.live_server import LiveServer, serve

pytestmark = pytest.mark.usefixtures("restore_logging")  # create_app configures the mapper log

PEOPLE_YAML = os.path.join(os.path.dirname(__file__), "mappings", "good", "people.yaml")
API_KEY = "people-api-key-0042"
TOKENS = ["khoros-new-secret-0123", "khoros-old-secret-4567"]


@dataclass
class CrmState:
    release: threading.Event = field(default_factory=threading.Event)
    agents: list[str | None] = field(default_factory=list)


def crm_app(state: CrmState) -> Flask:
    app = Flask("app-test-crm")

    @app.get("/people/<pid>")
    def person(pid: str) -> Response:
        state.agents.append(request.headers.get("X-Agent"))
        if pid == "hang":
            state.release.wait(10)  # a CRM that takes 10 s, past the Khoros limit
        if pid == "echo":  # a CRM that echoes our credential in its error page
            return Response(f"invalid key {request.headers['X-Api-Key']} for this account", status=500)
        if pid != "1":
            return Response('{"error": "no such person"}', status=404, mimetype="application/json")
        return jsonify({"data": {"id": 1, "given_name": "Jane", "family_name": "Doe"}})

    @app.get("/people")
    def search() -> Response:
        return jsonify({"data": []})

    @app.post("/people")
    def create() -> tuple[Response, int]:
        return jsonify({"data": {"id": 5, **request.get_json()}}), 201

    return app


@pytest.fixture(scope="module")
def crm_state() -> Iterator[CrmState]:
    state = CrmState()
    yield state
    state.release.set()


@pytest.fixture(scope="module")
def crm(crm_state: CrmState) -> Iterator[LiveServer]:
    with serve(crm_app(crm_state)) as live:
        yield live
        crm_state.release.set()


@pytest.fixture(scope="module")
def engine(crm: LiveServer) -> Iterator[Engine]:
    engine = Engine.load(PEOPLE_YAML, {"PEOPLE_CRM_URL": crm.url, "PEOPLE_API_KEY": API_KEY})
    yield engine
    engine.close()


@dataclass
class Khoros:
    """Calls our server as Khoros does; ``log()`` is what the server wrote to its log so far."""

    engine: Engine
    capsys: pytest.CaptureFixture[str]
    session: requests.Session = field(default_factory=requests.Session)
    servers: ExitStack = field(default_factory=ExitStack)
    _url: str | None = None

    @property
    def url(self) -> str:
        # Started on first use, inside the test: pytest gives each test phase a fresh
        # stderr, and create_app sends the log to the stderr of the moment.
        if self._url is None:
            self._url = self.servers.enter_context(serve(create_app(self.engine, tokens=TOKENS))).url
        return self._url

    def call(self, method: str, path: str, *, body: Any = None, data: bytes | None = None,
             token: str | None = TOKENS[0], headers: dict[str, str] | None = None,
             timeout: float = 30) -> requests.Response:
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = token
        if body is not None:
            data = json.dumps(body).encode()
        if data is not None:
            sent["Content-Type"] = "application/json"
        return self.session.request(method, self.url + path, data=data, headers=sent, timeout=timeout)

    def log(self) -> str:
        return self.capsys.readouterr().err


@pytest.fixture
def khoros(engine: Engine, capsys: pytest.CaptureFixture[str]) -> Iterator[Khoros]:
    client = Khoros(engine, capsys)
    yield client
    client.session.close()
    client.servers.close()


def trace_of(answer: requests.Response) -> str:
    match = re.search(r"\(trace ([0-9a-f]+)\)$", answer.json()["message"])
    assert match, answer.json()
    return match.group(1)


def assert_khoros_error(answer: requests.Response, status: int, code: str) -> str:
    """The Khoros error contract; returns the trace id."""
    assert answer.status_code == status
    assert answer.headers["Content-Type"] == "application/json"
    body = answer.json()
    assert set(body) == {"error", "message"} | ({"fields"} if code == "validation_failed" else set())
    assert body["error"] == code
    trace = trace_of(answer)
    assert answer.headers["X-Trace-Id"] == trace
    return trace


# --- authorization -------------------------------------------------------------------------------

def test_healthz_needs_no_authorization(khoros):
    answer = khoros.call("GET", "/healthz", token=None)
    assert answer.status_code == 200
    assert answer.json() == {"status": "ok", "mapping": "people"}


@pytest.mark.parametrize("token", [None, "", "wrong-secret", TOKENS[0] + "x", "Bearer wrong-secret",
                                   f"{TOKENS[0]},{TOKENS[1]}"])
def test_a_missing_or_wrong_authorization_is_401(khoros, token):
    answer = khoros.call("GET", "/api/v1/meta/object/customer", token=token)
    assert_khoros_error(answer, 401, "unauthorized")
    assert "Authorization" in answer.json()["message"]


@pytest.mark.parametrize("token", [TOKENS[0], TOKENS[1], f"Bearer {TOKENS[0]}", f"bearer {TOKENS[1]}"])
def test_any_configured_token_is_accepted_alone_or_as_bearer(khoros, token):
    assert khoros.call("GET", "/api/v1/meta/object/customer", token=token).status_code == 200


def test_unauthorized_calls_never_reach_the_crm(khoros, crm_state):
    before = len(crm_state.agents)
    khoros.call("GET", "/api/v1/customer/1", token="wrong")
    assert len(crm_state.agents) == before


def test_tokens_are_comma_separated_for_rotation():
    assert parse_tokens(" a-token , b-token,, ") == ["a-token", "b-token"]
    assert parse_tokens(None) == []


def test_the_token_check_compares_whole_values():
    check = TokenCheck(["s3cret-one", "s3cret-two"])
    assert check.allows("s3cret-two")
    assert check.allows("Bearer s3cret-one")
    assert not check.allows("s3cret")
    assert not check.allows("s3cret-one x")
    assert not check.allows("Bearer s3cret")
    assert check.allows(" s3cret-one\t")  # spaces around a header value are not part of it (RFC 9110)
    assert not check.allows(None)
    assert not check.allows(" ")


def test_tokens_come_from_mapper_auth_tokens_by_default(engine, monkeypatch):
    monkeypatch.setenv("MAPPER_AUTH_TOKENS", "env-token-one-111, env-token-two-222")
    with serve(create_app(engine)) as live:
        statuses = [requests.get(live.url + "/api/v1/meta/object/customer", headers={"Authorization": token},
                                 timeout=10).status_code
                    for token in ("env-token-one-111", "Bearer env-token-two-222", TOKENS[0])]
    assert statuses == [200, 200, 401]


def test_an_app_without_tokens_refuses_to_start(engine):
    with pytest.raises(ConfigError, match="MAPPER_AUTH_TOKENS"):
        create_app(engine, tokens=[])


# --- bodies and routes ------------------------------------------------------------------------

@pytest.mark.parametrize("data", [b"{not json", b"", b"   ", b"\xff\xfe", b"[1, 2]", b'"text"', b"null"])
def test_a_body_that_is_not_a_json_object_is_400(khoros, data):
    answer = khoros.call("POST", "/api/v1/customers", data=data)
    assert_khoros_error(answer, 400, "bad_request")


def test_an_unknown_route_is_a_json_404(khoros):
    assert_khoros_error(khoros.call("GET", "/api/v1/contacts/1"), 404, "not_found")
    assert_khoros_error(khoros.call("GET", "/favicon.ico", token=None), 404, "not_found")


def test_a_wrong_method_is_a_json_405_naming_the_allowed_ones(khoros):
    answer = khoros.call("DELETE", "/api/v1/customer/1")
    assert_khoros_error(answer, 405, "method_not_allowed")
    assert answer.headers["Allow"] == "GET, HEAD, PATCH"


def test_an_unknown_meta_type_is_a_404(khoros):
    answer = khoros.call("GET", "/api/v1/meta/object/contact")
    assert_khoros_error(answer, 404, "not_found")
    assert "'contact'" in answer.json()["message"]


# --- successes ---------------------------------------------------------------------------------

def test_a_lookup_answers_the_shaped_customer(khoros):
    answer = khoros.call("GET", "/api/v1/customer/1")
    assert answer.status_code == 200
    assert answer.json() == {"id": "1", "uri": "https://people.example/people/1",
                             "url": "https://people.example/people/1", "firstName": "Jane", "lastName": "Doe"}
    assert re.fullmatch(r"[0-9a-f]{16}", answer.headers["X-Trace-Id"])


def test_a_create_answers_201(khoros):
    answer = khoros.call("POST", "/api/v1/customer", body={"lastName": "New", "firstName": "Nia"})
    assert answer.status_code == 201
    assert answer.json()["id"] == "5"


def test_a_search_with_no_match_answers_an_empty_list(khoros):
    answer = khoros.call("POST", "/api/v1/customers", body={"email": "nobody@example.com"})
    assert (answer.status_code, answer.json()) == (200, [])


def test_the_agent_email_header_reaches_the_mapping(khoros, crm_state):
    khoros.call("GET", "/api/v1/customer/1", headers={"x-sf-user-email": "agent@example.com"})
    khoros.call("GET", "/api/v1/customer/1", headers={"x-sf-email": "other@example.com"})
    assert crm_state.agents[-2:] == ["agent@example.com", "other@example.com"]


# --- errors and the log --------------------------------------------------------------------------

def test_the_trace_id_of_an_error_is_in_the_header_the_message_and_the_log(khoros):
    answer = khoros.call("GET", "/api/v1/customer/404")
    trace = assert_khoros_error(answer, 404, "not_found")
    lines = [line for line in khoros.log().splitlines() if f"trace={trace}" in line]
    assert any("error=not_found status=404" in line for line in lines)
    assert any("GET /api/v1/customer/404 -> 404" in line for line in lines)


def test_each_request_gets_its_own_trace_id(khoros):
    first = khoros.call("GET", "/api/v1/customer/404")
    second = khoros.call("GET", "/api/v1/customer/404")
    assert trace_of(first) != trace_of(second)


def test_a_validation_failure_is_422_with_fields_that_carry_the_trace(khoros):
    answer = khoros.call("POST", "/api/v1/customer", body={"email": "not-an-email", "lastName": "X"})
    trace = assert_khoros_error(answer, 422, "validation_failed")
    assert answer.json()["fields"] == [{"name": "email", "errorMessage": f"is not an email address (trace {trace})"}]


def test_an_unknown_field_is_400_naming_it(khoros):
    answer = khoros.call("POST", "/api/v1/customer", body={"lastName": "X", "shoeSize": "9"})
    assert_khoros_error(answer, 400, "bad_request")
    assert "'shoeSize'" in answer.json()["message"]


def test_an_unsupported_operation_is_500_not_supported(khoros):
    answer = khoros.call("PATCH", "/api/v1/case/10", body={"title": "x"})
    assert_khoros_error(answer, 500, "not_supported")


def test_secrets_echoed_by_the_crm_never_reach_the_log_or_khoros(khoros):
    answer = khoros.call("GET", "/api/v1/customer/echo")
    trace = assert_khoros_error(answer, 500, "crm_error")
    assert API_KEY not in answer.text
    log = khoros.log()
    error_line = next(line for line in log.splitlines() if f"trace={trace} error=crm_error" in line)
    assert "invalid key *** for this account" in error_line
    assert API_KEY not in log


class BrokenEngine(Engine):
    """An engine with a bug: raises something that is not a Khoros error, mentioning a secret."""

    def run(self, name: str, body: Any, **kwargs: Any) -> tuple[int, Any]:
        raise RuntimeError(f"bug while holding {API_KEY}")


def test_an_unexpected_exception_is_a_generic_500_with_a_redacted_traceback(engine, capsys):
    broken = BrokenEngine(engine.mapping, engine.settings, engine.secrets, engine.client, engine.headers)
    with serve(create_app(broken, tokens=TOKENS)) as live:
        answer = requests.get(live.url + "/api/v1/customer/1", headers={"Authorization": TOKENS[0]}, timeout=10)
    trace = assert_khoros_error(answer, 500, "internal_error")
    assert "bug while holding" not in answer.text
    log = capsys.readouterr().err
    assert f"trace={trace} unexpected RuntimeError" in log
    assert "RuntimeError: bug while holding ***" in log
    assert API_KEY not in log


@pytest.mark.slow
def test_a_crm_that_hangs_gets_khoros_a_500_inside_8_seconds(khoros):
    started = time.monotonic()
    answer = khoros.call("GET", "/api/v1/customer/hang", timeout=20)
    elapsed = time.monotonic() - started
    assert_khoros_error(answer, 500, "crm_timeout")
    assert elapsed < 8


def test_a_request_that_waited_in_a_queue_past_the_budget_is_refused_before_the_crm(khoros, crm_state):
    before = len(crm_state.agents)
    queued = f"t={int((time.time() - 7.5) * 1000)}"  # a load balancer's stamp, in milliseconds
    answer = khoros.call("GET", "/api/v1/customer/1", headers={"X-Request-Start": queued})
    assert_khoros_error(answer, 500, "overloaded")
    assert "The server is overloaded" in answer.json()["message"]
    assert len(crm_state.agents) == before  # the CRM was never called
    fresh = khoros.call("GET", "/api/v1/customer/1", headers={"X-Request-Start": f"t={time.time():.3f}"})
    assert fresh.status_code == 200


@pytest.mark.parametrize("header", ["t={s:.3f}", "t={ms}", "{us}", "t={s:.0f}"])
def test_x_request_start_is_read_in_seconds_milliseconds_or_microseconds(header):
    wall = time.time() - 3
    text = header.format(s=wall, ms=int(wall * 1000), us=int(wall * 1_000_000))
    now = time.monotonic()
    assert now - arrival({"HTTP_X_REQUEST_START": text}, now) == pytest.approx(3, abs=1.1)


@pytest.mark.parametrize("header", ["t=soon", "", "t={in_a_minute:.3f}", "t=1000"])
def test_an_unreadable_future_or_ancient_x_request_start_is_ignored(header):
    text = header.format(in_a_minute=time.time() + 60)  # the clock read now, not at collection
    now = time.monotonic()
    assert arrival({"HTTP_X_REQUEST_START": text}, now) == now


def test_the_gunicorn_workers_arrival_counts_when_it_is_earlier():
    now = time.monotonic()
    assert arrival({ARRIVED_KEY: now - 2.0}, now) == now - 2.0
    assert arrival({ARRIVED_KEY: now - 2.0, "HTTP_X_REQUEST_START": f"t={time.time() - 5:.3f}"}, now) < now - 4
