"""Steps at run time, against a small stateful CRM on loopback.

Each test writes the steps it is about in YAML, the way a mapping author
would, compiles them into the ``update_customer`` operation (it has both
an ``id`` and a ``body``) of an otherwise
minimal mapping, and runs them with :class:`mapper.pipeline.Run`. The CRM
counts every request, so "the later strategies were not called" is checked,
not assumed.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from flask import Flask, Response, jsonify, request

from mapper.core.budget import Deadline
from mapper.core.compiler import compile_document
from mapper.core.pipeline import Run
from mapper.core.source import load_source
from mapper.core.upstream import Client
from mapper.errors import BadRequest, MappingRuntimeError, NotFound, UpstreamError, ValidationFailed
from tests.support.live_server import LiveServer, serve

PEOPLE = {
    "1": {"id": 1, "email": "jane@example.com", "phone": "555-0101", "handle": "jane", "name": "Jane Doe"},
    "2": {"id": 2, "email": "joe@example.com", "phone": "555-0102", "handle": "joe", "name": "Joe Bloggs"},
    "3": {"id": 3, "email": "ann@example.com", "phone": "555-0103", "handle": "ann", "name": "Ann Other"},
}


@dataclass
class CrmState:
    requests: list[str] = field(default_factory=list)
    raw_uris: list[str] = field(default_factory=list)
    bodies: list[Any] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)


def crm_app(state: CrmState) -> Flask:
    app = Flask("people-crm")

    @app.before_request
    def record() -> None:
        state.requests.append(f"{request.method} {request.full_path.rstrip('?')}")
        state.raw_uris.append(request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI", ""))
        state.bodies.append(request.get_json(silent=True) if request.is_json else request.form.to_dict() or None)
        state.headers.append(dict(request.headers))

    @app.get("/people")
    def search() -> Response:
        found = [p for p in PEOPLE.values()
                 if all(str(p.get(key)) == value for key, value in request.args.items())]
        return jsonify(found)

    @app.get("/people/<pid>")
    def one(pid: str) -> Response:
        if pid not in PEOPLE:
            return Response('{"message": "person not found", "code": "missing"}', status=404,
                            mimetype="application/json")
        return jsonify({"data": PEOPLE[pid]})

    @app.post("/people")
    def create() -> Response:
        body = request.get_json()
        if "@" not in body.get("email_address", ""):
            return jsonify({"errors": {"email_address": ["is invalid"], "given_name": ["is too short"]}}), 422
        return jsonify({"id": 99, **body}), 201

    @app.get("/pages")
    def pages() -> Response:
        number = int(request.args.get("cursor", "0"))
        items = [{"n": number * 2}, {"n": number * 2 + 1}]
        return jsonify({"items": items, "next": number + 1 if number < 4 else None})

    @app.get("/status/<int:code>")
    def status(code: int) -> Response:
        return Response(f'{{"status": {code}, "kind": "{request.args.get("kind", "plain")}"}}', status=code,
                        mimetype="application/json")

    @app.post("/entities")
    def entity() -> Response:  # OData's create answer: 204, the new address only in a header
        response = Response(status=204)
        new = "00000000-0000-0000-0000-00000000002a"
        response.headers["OData-EntityId"] = f"{request.host_url}api/data/v9.2/entities({new})"
        return response

    @app.get("/odd/<kind>")
    def odd(kind: str) -> Response:  # 2xx answers a step cannot read
        bodies = {"html": ("<!DOCTYPE html><html><body>Sign in</body></html>", "text/html"),
                  "text": ("Service is starting", "text/plain"), "empty": ("", "application/json"),
                  "object": ('{"items": {"n": 1}}', "application/json")}
        text, mimetype = bodies[kind]
        return Response(text, status=200, mimetype=mimetype)

    @app.get("/echo-shape")
    def echo_shape() -> Response:  # results as a list or (wrongly) as an object
        results: Any = [{"id": 1}] if request.args.get("results") == "list" else {"id": 1}
        return jsonify({"results": results, "attributes": {"x": "a", "y": "b"}})

    @app.get("/stuck-pages")
    def stuck_pages() -> Response:  # a CRM whose cursor never moves on
        return jsonify({"items": [{"n": 1}], "next": "abc"})

    @app.route("/form", methods=["POST"])
    def form() -> Response:
        return jsonify({"got": request.form.to_dict()})

    return app


@pytest.fixture
def state() -> CrmState:
    return CrmState()


@pytest.fixture
def crm(state: CrmState) -> Iterator[LiveServer]:
    with serve(crm_app(state)) as live:
        yield live


@pytest.fixture
def client() -> Iterator[Client]:
    client = Client(call_timeout=5.0, max_body_bytes=1 << 20)
    yield client
    client.close()


MAPPING = """\
name: pipeline test
connection:
  base_url: "http://crm.invalid"
  headers: {{Accept: application/json, X-Client: crm-mapper}}
errors:
{errors}
model:
  customer:
    fields:
      - {{name: email, label: Email, type: text, searchable: true}}
      - {{name: phone, label: Phone, type: text, searchable: true}}
      - {{name: handle, label: Handle, type: text, searchable: true}}
      - {{name: code, label: Code, type: text}}
      - {{name: tags, label: Tags, type: text}}
      - {{name: note, label: Note, type: textarea}}
  case:
    fields:
      - {{name: title, label: Title, type: text}}
shapes:
  customer: {{id: "{{{{ record.id | string }}}}", uri: "x"}}
  case: {{id: "x", linkUrl: "x", created: "x", status: "x"}}
operations:
  update_customer:
    steps:
{steps}
    result: "{{{{ none }}}}"
  get_customer: {{unsupported: "n/a"}}
  search_customers: {{unsupported: "n/a"}}
  best_match: {{unsupported: "n/a"}}
  customer_cases: {{unsupported: "n/a"}}
  create_customer: {{unsupported: "n/a"}}
  create_case: {{unsupported: "n/a"}}
  get_case: {{unsupported: "n/a"}}
  update_case: {{unsupported: "n/a"}}
"""

DEFAULT_ERRORS = '  - {status: 599, error: crm_error, message: "never"}'


def mapping_text(steps: str, errors: str = DEFAULT_ERRORS) -> str:
    return MAPPING.format(steps=textwrap.indent(textwrap.dedent(steps).strip("\n"), "      "), errors=errors)


@dataclass
class Runner:
    client: Client
    crm: LiveServer

    def __call__(self, steps: str, *, id: str = "1", body: dict[str, Any] | None = None,
                 errors: str = DEFAULT_ERRORS) -> dict[str, Any]:
        """Compile ``steps`` and run them; the scope they leave behind is the result."""
        mapping = compile_document(load_source("t.yaml", mapping_text(steps, errors)))
        headers = {name: str(value.evaluate({})) for name, value in mapping.headers.items()}
        run = Run(self.client, Deadline(8), "trace-1", self.crm.url, headers, mapping.errors)
        scope = {"body": body or {}, "id": id, "khoros": {}, "settings": {}, "secrets": {}, "auth": {},
                 "now": "2024-01-01T00:00:00Z", "trace_id": "trace-1"}
        run.run_steps(mapping.operations["update_customer"].steps, scope)
        return scope


@pytest.fixture
def run(client: Client, crm: LiveServer) -> Runner:
    return Runner(client, crm)


# --- request and extract -------------------------------------------------------------------

def test_extract_reads_json_paths_from_the_answer(run, state):
    scope = run("""
        - request: {method: GET, path: "/people/{{ id }}"}
          extract:
            person: "$.data"
            email: "$.data.email"
            phones: {path: "$.data.phone", many: true}
            nickname: {path: "$.data.nickname", default: "none given"}
            status_seen: "{{ status }}"
            typed: "{{ headers['Content-Type'] }}"
        """)
    assert scope["person"] == PEOPLE["1"]
    assert scope["email"] == "jane@example.com"
    assert scope["phones"] == ["555-0101"]
    assert scope["nickname"] == "none given"
    assert scope["status_seen"] == 200
    assert scope["typed"] == "application/json"
    assert state.requests == ["GET /people/1"]


def test_a_header_extraction_reads_an_id_from_a_header_whatever_its_case(run, state):
    scope = run("""
        - request: {method: POST, path: /entities, body: {name: x}}
          extract:
            new_id: {header: odata-entityid, pattern: "\\\\(([0-9a-fA-F-]{36})\\\\)$"}
            whole: {header: OData-EntityId}
            matched: {header: OData-EntityId, pattern: "entities\\\\([^)]*\\\\)"}
            location: {header: Location, default: "none sent"}
        """)
    assert scope["new_id"] == "00000000-0000-0000-0000-00000000002a"
    assert scope["whole"].endswith("/api/data/v9.2/entities(00000000-0000-0000-0000-00000000002a)")
    assert scope["matched"] == "entities(00000000-0000-0000-0000-00000000002a)"
    assert scope["location"] == "none sent"
    assert state.requests == ["POST /entities"]


def test_a_required_header_extraction_that_finds_nothing_names_the_header_and_the_line(run):
    with pytest.raises(UpstreamError) as caught:
        run("""
            - request: {method: POST, path: /entities, body: {name: x}}
              extract: {new_id: {header: OData-EntityId, pattern: "accounts\\\\((.*)\\\\)"}}
            """)
    message = caught.value.message
    assert "no OData-EntityId header matching accounts\\((.*)\\) for 'new_id'" in message
    assert "t.yaml:26 operations.update_customer.steps[0].extract.new_id" in message


def test_many_extractions_give_every_match_or_an_empty_list(run):
    scope = run("""
        - request: {method: GET, path: /people, query: {handle: "{{ id }}"}}
          extract: {found: {path: "$[*].id", many: true}}
        """, id="nobody")
    assert scope["found"] == []


def test_a_required_extraction_that_matches_nothing_names_the_path_and_the_line(run):
    with pytest.raises(UpstreamError) as caught:
        run("""
            - request: {method: GET, path: "/people/{{ id }}"}
              extract: {email: "$.data.mail"}
            """)
    message = caught.value.message
    assert "nothing at $.data.mail for 'email'" in message
    assert "t.yaml:26 operations.update_customer.steps[0].extract.email" in message
    assert "the answer has keys ['data']" in message


def test_an_extraction_expression_that_misses_shows_the_answer_keys(run):
    with pytest.raises(MappingRuntimeError) as caught:
        run("""
            - request: {method: GET, path: "/people/{{ id }}"}
              extract: {email: "{{ response.email }}"}
            """)
    assert caught.value.message.endswith("has no attribute 'email'; the answer has keys ['data'].")


def test_the_connection_headers_and_step_headers_are_sent(run, state):
    run("""
        - request: {method: GET, path: /people, headers: {X-Trace: "{{ trace_id }}"}}
        """)
    assert state.headers[0]["Accept"] == "application/json"
    assert state.headers[0]["X-Client"] == "crm-mapper"
    assert state.headers[0]["X-Trace"] == "trace-1"


def test_query_values_repeat_for_lists_and_none_or_omit_drop_out(run, state):
    run("""
        - request:
            method: GET
            path: /people
            query:
              tag: [a, b]
              vip: true
              missing: "{{ none }}"
              gone: "{{ body.note | default(omit) }}"
              n: 3
        """)
    assert state.requests == ["GET /people?tag=a&tag=b&vip=true&n=3"]


def test_a_json_body_is_built_as_data_and_keeps_types(run, state):
    run("""
        - request:
            method: POST
            path: /people
            body:
              email_address: "{{ body.email }}"
              given_name: "{{ body.code }}"
              tags: "{{ body.tags }}"
              note: "{{ body.note | default(omit) }}"
        """, body={"email": "new@example.com", "code": "478", "tags": ["a"]})
    assert state.bodies[0] == {"email_address": "new@example.com", "given_name": "478", "tags": ["a"]}


def test_a_form_body_is_form_encoded_without_none_values(run):
    scope = run("""
        - request: {method: POST, path: /form, form: {grant: "x y", empty: "{{ none }}"}}
          extract: {got: "$.got"}
        """)
    assert scope["got"] == {"grant": "x y"}


def test_path_values_are_percent_encoded_so_they_cannot_change_the_url(run, state):
    with pytest.raises(UpstreamError):
        run("""
            - request: {method: GET, path: "/people/{{ id }}"}
            """, id="../status/200?x=1")
    assert state.raw_uris == ["/people/..%2Fstatus%2F200%3Fx%3D1"]


@pytest.mark.parametrize(("value", "problem"), [("..", "cannot be '..'"), ("", "cannot be empty")])
def test_a_path_value_that_would_call_another_url_is_refused_before_the_call(run, state, value, problem):
    with pytest.raises(MappingRuntimeError) as caught:
        run("""
            - request: {method: GET, path: "/people/{{ id }}/x"}
            """, id=value)
    assert problem in caught.value.message
    assert state.requests == []


def test_a_step_whose_when_is_false_is_skipped(run, state):
    scope = run("""
        - when: "{{ body.email is defined }}"
          request: {method: GET, path: /people}
          extract: {found: "$"}
        - set: {done: true}
        """)
    assert state.requests == []
    assert "found" not in scope
    assert scope["done"] is True


def test_set_names_values_from_earlier_ones(run):
    scope = run("""
        - set: {first: "{{ id }}", both: ["{{ id }}", 2]}
        - set: {again: "{{ first ~ '!' }}"}
        """, id="7")
    assert (scope["first"], scope["both"], scope["again"]) == ("7", ["7", 2], "7!")


# --- accept and error rules ------------------------------------------------------------------

def test_an_unhandled_failure_is_an_upstream_error_naming_the_call_and_step(run):
    with pytest.raises(UpstreamError) as caught:
        run("""
            - name: load person
              request: {method: GET, path: "/people/{{ id }}"}
            """, id="404")
    assert re.fullmatch(r"The CRM answered HTTP 404 to GET /people/404 \(step 'load person' at "
                        r"\S+\.yaml:\d+\), which the mapping does not handle\.", caught.value.message)
    assert "person not found" in caught.value.internal


def test_accept_lets_a_failure_status_through_as_an_answer(run):
    scope = run("""
        - request: {method: GET, path: "/people/{{ id }}"}
          accept: [404]
          extract:
            person: {path: "$.data", default: null}
            code: "{{ status }}"
        """, id="404")
    assert scope["person"] is None
    assert scope["code"] == 404


@pytest.mark.parametrize(("status", "error"), [
    (404, NotFound), (410, NotFound), (400, BadRequest), (418, BadRequest), (500, UpstreamError),
])
def test_step_error_rules_match_status_lists_and_classes(run, status, error):
    with pytest.raises(error) as caught:
        run(f"""
            - request: {{method: GET, path: /status/{status}}}
              errors:
                - {{status: [404, 410], error: not_found, message: "gone"}}
                - {{status: "4xx", error: bad_request, message: "rejected with {{{{ status }}}}"}}
                - {{error: crm_down, message: "the CRM failed"}}
            """)
    if error is UpstreamError:
        assert caught.value.code == "crm_down"
        assert caught.value.message == "the CRM failed"
    elif error is BadRequest:
        assert caught.value.message == f"rejected with {status}"


def test_an_error_rule_when_reads_the_answer(run):
    rules = """
        - request: {method: GET, path: /status/409, query: {kind: "{{ id }}"}}
          errors:
            - {status: 409, when: "{{ response.kind == 'duplicate' }}", error: validation_failed,
               message: "Already exists"}
            - {status: 409, error: bad_request, message: "Conflict"}
        """
    with pytest.raises(ValidationFailed):
        run(rules, id="duplicate")
    with pytest.raises(BadRequest):
        run(rules, id="other")


def test_error_rules_never_match_a_success(run):
    scope = run("""
        - request: {method: GET, path: /status/200}
          errors:
            - {error: bad_request, message: "any failure"}
          extract: {code: "{{ status }}"}
        """)
    assert scope["code"] == 200


def test_mapping_error_rules_apply_after_the_steps_own(run):
    errors = '  - {status: "4xx", error: not_found, message: "mapping-wide rule"}'
    with pytest.raises(NotFound, match="mapping-wide rule"):
        run("""
            - request: {method: GET, path: /status/404}
            """, errors=errors)
    with pytest.raises(BadRequest, match="step rule"):
        run("""
            - request: {method: GET, path: /status/404}
              errors:
                - {status: 404, error: bad_request, message: "step rule"}
            """, errors=errors)


def test_mapping_error_rules_do_not_override_accept(run):
    errors = '  - {status: 404, error: not_found, message: "mapping-wide rule"}'
    scope = run("""
        - request: {method: GET, path: /status/404}
          accept: [404]
          extract: {code: "{{ status }}"}
        """, errors=errors)
    assert scope["code"] == 404


def test_validation_failed_fields_are_renamed_to_khoros_names(run):
    with pytest.raises(ValidationFailed) as caught:
        run("""
            - request:
                method: POST
                path: /people
                body: {email_address: "{{ body.email }}", given_name: "J"}
              errors:
                - status: 422
                  error: validation_failed
                  message: "The CRM refused the customer"
                  fields: "{{ response.errors }}"
                  rename: {email_address: email, given_name: firstName}
            """, body={"email": "nope"})
    fields = {f.name: f.error_message for f in caught.value.fields}
    assert fields == {"email": "is invalid", "firstName": "is too short"}
    assert caught.value.message == "The CRM refused the customer: email: is invalid; firstName: is too short."
    assert caught.value.status == 422


def test_validation_failed_fields_may_be_a_list_of_name_and_message(run):
    with pytest.raises(ValidationFailed) as caught:
        run("""
            - request: {method: GET, path: /status/422}
              errors:
                - status: 422
                  error: validation_failed
                  message: "Refused"
                  fields: [{name: tier, errorMessage: "not a tier"}, {name: vip}]
            """)
    assert [(f.name, f.error_message) for f in caught.value.fields] == [("tier", "not a tier"),
                                                                       ("vip", "is not valid")]


@pytest.mark.parametrize("status", [401, 403])
def test_a_credential_refusal_says_to_check_the_secrets(run, status):
    with pytest.raises(UpstreamError, match="refused our credentials") as caught:
        run(f"""
            - request: {{method: GET, path: /status/{status}}}
            """)
    assert caught.value.code == "crm_error"


# --- for_each ------------------------------------------------------------------------------------

def test_for_each_runs_its_steps_per_item_and_collects_values(run, state):
    scope = run("""
        - set: {ids: ["1", "404", "3"]}
        - for_each: "{{ ids }}"
          as: pid
          steps:
            - request: {method: GET, path: "/people/{{ pid }}"}
              accept: [404]
              extract: {person: {path: "$.data", default: null}}
          collect:
            emails: "{{ person.email if person else omit }}"
            positions: "{{ index }}"
        """)
    assert scope["emails"] == ["jane@example.com", "ann@example.com"]
    assert scope["positions"] == [0, 1, 2]
    assert state.requests == ["GET /people/1", "GET /people/404", "GET /people/3"]
    assert "pid" not in scope and "person" not in scope


def test_for_each_over_nothing_collects_empty_lists(run, state):
    scope = run("""
        - for_each: "{{ none }}"
          steps:
            - request: {method: GET, path: /people}
          collect: {seen: "{{ item }}"}
        """)
    assert scope["seen"] == []
    assert state.requests == []


def test_for_each_over_something_that_is_not_a_list_is_a_mapping_error(run):
    with pytest.raises(MappingRuntimeError, match="needs a list, got str"):
        run("""
            - for_each: "{{ id }}"
              steps: []
            """)


# --- first / until ------------------------------------------------------------------------------

FALLBACK = """
    - set: {matches: []}
    - first:
        - name: by email
          when: "{{ body.email is defined }}"
          steps:
            - request: {method: GET, path: /people, query: {email: "{{ body.email }}"}}
              extract: {matches: {path: "$[*]", many: true}}
        - name: by phone
          when: "{{ body.phone is defined }}"
          steps:
            - request: {method: GET, path: /people, query: {phone: "{{ body.phone }}"}}
              extract: {matches: {path: "$[*]", many: true}}
        - name: by handle
          steps:
            - request: {method: GET, path: /people, query: {handle: "{{ body.handle }}"}}
              extract: {matches: {path: "$[*]", many: true}}
      until: "{{ matches | length > 0 }}"
    """


def test_first_stops_at_the_first_strategy_that_finds_something(run, state):
    scope = run(FALLBACK, body={"email": "nobody@example.com", "phone": "555-0102", "handle": "ann"})
    assert [m["id"] for m in scope["matches"]] == [2]
    assert state.requests == ["GET /people?email=nobody%40example.com", "GET /people?phone=555-0102"]


def test_first_skips_strategies_whose_when_is_false(run, state):
    scope = run(FALLBACK, body={"handle": "ann"})
    assert [m["id"] for m in scope["matches"]] == [3]
    assert state.requests == ["GET /people?handle=ann"]


def test_first_tries_every_strategy_when_none_finds_anything(run, state):
    scope = run(FALLBACK, body={"email": "x@example.com", "phone": "0", "handle": "nobody"})
    assert scope["matches"] == []
    assert len(state.requests) == 3


def test_first_without_until_stops_after_the_first_strategy_that_runs(run, state):
    run("""
        - first:
            - when: "{{ false }}"
              steps: [{request: {method: GET, path: /status/200, query: {n: 1}}}]
            - steps: [{request: {method: GET, path: /status/200, query: {n: 2}}}]
            - steps: [{request: {method: GET, path: /status/200, query: {n: 3}}}]
        """)
    assert state.requests == ["GET /status/200?n=2"]


# --- paginate -------------------------------------------------------------------------------

def test_paginate_follows_the_cursor_while_there_are_more_pages(run, state):
    scope = run("""
        - request: {method: GET, path: /pages, query: {cursor: "{{ page.cursor | default(omit, true) }}"}}
          paginate:
            items: "$.items[*].n"
            into: numbers
            while: "{{ response.next is not none }}"
            cursor: "{{ response.next }}"
          extract: {last_next: {path: "$.next", default: "none"}}
        """)
    assert scope["numbers"] == list(range(10))
    assert state.requests == ["GET /pages", "GET /pages?cursor=1", "GET /pages?cursor=2", "GET /pages?cursor=3",
                              "GET /pages?cursor=4"]
    assert scope["last_next"] is None


def test_paginate_stops_at_max_pages(run, state):
    scope = run("""
        - request: {method: GET, path: /pages, query: {cursor: "{{ page.number }}"}}
          paginate:
            items: "$.items[*].n"
            into: numbers
            while: "{{ true }}"
            max_pages: 2
        """)
    assert scope["numbers"] == [0, 1, 2, 3]
    assert len(state.requests) == 2


def test_paginate_while_sees_what_was_collected_so_far(run, state):
    scope = run("""
        - request: {method: GET, path: /pages, query: {cursor: "{{ page.number }}"}}
          paginate:
            items: "$.items[*].n"
            into: numbers
            while: "{{ numbers | length < 5 }}"
        """)
    assert scope["numbers"] == [0, 1, 2, 3, 4, 5]
    assert len(state.requests) == 3


# --- fail -------------------------------------------------------------------------------------

def test_fail_stops_with_the_khoros_error_it_names(run, state):
    with pytest.raises(NotFound, match="No person 9 here"):
        run("""
            - fail: {error: not_found, message: "No person {{ id }} here"}
            - request: {method: GET, path: /people}
            """, id="9")
    assert state.requests == []


def test_fail_with_fields_is_a_validation_failure(run):
    with pytest.raises(ValidationFailed) as caught:
        run("""
            - when: "{{ body.email is not defined }}"
              fail:
                error: validation_failed
                message: "An email is needed"
                fields: {email: "is required by this CRM"}
            """)
    assert [(f.name, f.error_message) for f in caught.value.fields] == [("email", "is required by this CRM")]


# --- broken answers and other findings of the reliability review (#6) ----------------------

@pytest.mark.parametrize(("kind", "what"), [("html", "an HTML page"), ("text", "text that is not JSON"),
                                            ("empty", "an empty body")])
def test_a_2xx_the_step_cannot_read_is_a_crm_error_naming_the_step_and_line(run, kind: str, what: str):
    with pytest.raises(UpstreamError) as caught:
        steps = """
            - name: find people
              request: {method: GET, path: "/odd/KIND"}
              extract: {people: {path: "$[*]", many: true}}
            """
        run(steps.replace("KIND", kind))
    assert caught.value.code == "crm_error"
    assert f"HTTP 200 but {what}" in caught.value.message
    assert "step 'find people' at t.yaml:" in caught.value.message


def test_many_on_an_object_where_a_list_was_expected_is_an_error_not_its_values(run):
    with pytest.raises(UpstreamError, match=r"dict where \$\.items\[\*\] expects a list .*t\.yaml:\d+"):
        run("""
            - request: {method: GET, path: /odd/object}
              extract: {found: {path: "$.items[*]", many: true}}
            """)


def test_many_may_be_lenient_or_have_a_default_when_the_mapping_says_so(run):
    scope = run("""
        - request: {method: GET, path: /odd/object}
          extract:
            values: {path: "$.items[*]", many: true, lenient: true}
            missing: {path: "$.nothing[*]", many: true, default: []}
        """)
    assert scope["values"] == [1]
    assert scope["missing"] == []


def test_a_list_where_a_list_is_expected_still_gives_every_match(run):
    scope = run("""
        - request: {method: GET, path: /people}
          extract: {found: {path: "$[*]", many: true}}
        """)
    assert len(scope["found"]) == len(PEOPLE)


def test_an_error_rule_whose_template_fails_keeps_the_crms_error_and_logs_its_answer(run, caplog):
    with pytest.raises(UpstreamError) as caught:
        run("""
            - name: read a person
              request: {method: GET, path: "/status/400"}
              errors:
                - {status: 400, error: validation_failed, message: "{{ (response.kind | fromjson).detail }}"}
            """)
    assert caught.value.code == "crm_error"
    assert "The CRM answered HTTP 400" in caught.value.message
    assert any("error rule at t.yaml:" in r.getMessage() and '"kind": "plain"' in r.getMessage()
               for r in caplog.records)


def test_a_failing_for_each_item_is_named_with_what_was_already_done(run, state):
    with pytest.raises(NotFound) as caught:
        run("""
            - for_each: "{{ body.tags }}"
              as: pid
              steps:
                - request: {method: GET, path: "/people/{{ pid }}"}
                  errors:
                    - {status: 404, error: not_found, message: "No person {{ pid }}"}
            """, body={"tags": ["1", "2", "404", "3"]})
    assert "(item 2 of 4 of the for_each at t.yaml:" in caught.value.message
    assert "items 0-1 were done" in caught.value.message
    assert len(state.requests) == 3


def test_a_repeated_pagination_cursor_stops_the_pages(run, state):
    scope = run("""
        - request: {method: GET, path: /stuck-pages, query: {cursor: "{{ page.cursor | default(omit, true) }}"}}
          paginate:
            items: "$.items[*]"
            into: found
            while: "{{ response.next }}"
            cursor: "{{ response.next }}"
            max_pages: 10
        """)
    assert state.requests == ["GET /stuck-pages", "GET /stuck-pages?cursor=abc"]
    assert scope["found"] == [{"n": 1}, {"n": 1}]


def test_a_header_whose_value_is_none_is_not_sent(run, state):
    run("""
        - request:
            method: GET
            path: /people/1
            headers: {X-Tenant: "{{ none }}", X-Kept: "yes"}
        """)
    assert "X-Tenant" not in state.headers[0]
    assert state.headers[0]["X-Kept"] == "yes"


def test_a_header_value_http_cannot_carry_is_a_mapping_error_naming_the_header(run):
    expected = r"header 'X-Name' .*\(only Latin-1\).*step 'GET /people/1' at t\.yaml:"
    with pytest.raises(MappingRuntimeError, match=expected):
        run("""
            - request: {method: GET, path: /people/1, headers: {X-Name: "{{ body.note }}"}}
            """, body={"note": "Zoë ☃"})


def test_a_missing_key_deep_inside_a_built_value_is_a_crm_error_not_a_serialisation_crash(run):
    with pytest.raises(UpstreamError) as caught:
        run("""
            - request: {method: GET, path: "/people/{{ id }}"}
              extract: {person: "$.data"}
            - set:
                built: "{{ {'outer': {'inner': person.no_such_key}} }}"
            """)
    assert caught.value.code == "crm_error"
    assert "has no attribute 'no_such_key'" in caught.value.message
    assert re.search(r"t\.yaml:\d+", caught.value.message)


def _doc_block(after: str) -> str:
    from pathlib import Path

    from tests.targets.registry import ROOT

    doc = Path(ROOT, "docs", "mapping-language.md").read_text(encoding="utf-8")
    return doc.split(after, 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]


def test_the_documented_safe_search_compiles_to_a_safe_step():
    step = textwrap.dedent(_doc_block("<a id=\"retries\"></a>**Retries.**"))
    mapping = compile_document(load_source("t.yaml", mapping_text(step.replace("body.email", "body.handle"))))
    compiled = mapping.operations["update_customer"].steps[0]
    assert compiled.request.method == "POST"  # type: ignore[attr-defined]
    assert compiled.safe is True  # type: ignore[attr-defined]


def test_the_documented_many_extractions_behave_as_documented(run):
    extract = textwrap.indent(_doc_block("With `many`, the part of the path"), "    ")
    with pytest.raises(UpstreamError, match=r"dict where \$\.results\[\*\] expects a list"):
        run("- request: {method: GET, path: /echo-shape}\n  extract:\n" + extract.split("\n", 1)[1])
    scope = run("- request: {method: GET, path: /echo-shape, query: {results: list}}\n  extract:\n"
                + extract.split("\n", 1)[1])
    assert scope["found"] == [{"id": 1}]
    assert scope["tags"] == []  # missing: the default
    assert scope["values"] == ["a", "b"]  # an object's values, as lenient allows


def test_a_query_can_be_one_expression_giving_a_map(run, state):
    scope = run("""
        - request: {method: GET, path: /people, query: "{{ {'handle': 'joe'} | merge({'email': 'joe@example.com'}) }}"}
          extract: {found: {path: "$[*].id", many: true}}
        """)
    assert scope["found"] == [2]
    assert state.requests == ["GET /people?handle=joe&email=joe%40example.com"]


def test_a_query_expression_that_gives_no_map_names_the_step_and_its_line(run, state):
    with pytest.raises(MappingRuntimeError) as caught:
        run("""
            - name: search people
              request: {method: GET, path: /people, query: "{{ ['handle', 'joe'] }}"}
            """)
    assert "The query of step 'search people' (t.yaml:" in caught.value.message
    assert "gave list, not a map of parameters" in caught.value.message
    assert state.requests == []
