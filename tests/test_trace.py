"""``mapper run``: one Khoros operation against a real CRM (the demo), every step printed.

Each operation of the demo mapping is run through the command; the trace
must show the steps with their mapping lines, the rendered requests, the
CRM's statuses and bodies, the values set, the strategy a ``first`` settled
on, and the Khoros answer or error, and must never show a secret.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from mapper.workbench.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "mappings", "demo.yaml")
API_KEY = "demo-api-key-5f3c9a1e"
SECRET = "demo-secret-value-7d21b0"
STEP = re.compile(r"^\s*- step '.+' \(\S+demo\.yaml:\d+\)$", re.M)


@pytest.fixture(scope="module")
def demo_crm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from democrm.launcher import start_demo_crm

    url, stop = start_demo_crm(os.path.join(tmp_path_factory.mktemp("democrm"), "demo.sqlite3"), api_key=API_KEY)
    yield url
    stop()


@pytest.fixture(scope="module")
def mapper_run(demo_crm: str):
    env = {"DEMO_CRM_URL": demo_crm, "DEMO_CRM_API_KEY": API_KEY}

    def run(*args: str, mapping: str = DEMO, extra_env: dict[str, str] | None = None):
        result = CliRunner().invoke(main, ["run", mapping, *args], env={**env, **(extra_env or {})})
        assert API_KEY not in result.output and SECRET not in result.output
        return result
    return run


def _answer(output: str) -> object:
    return json.loads(output.split("\nanswer ", 1)[1].split("\n", 1)[1])


def test_every_operation_of_the_demo_prints_a_full_trace(mapper_run) -> None:
    created = mapper_run("create_customer", "--body", json.dumps(
        {"firstName": "Ada", "lastName": "Trace", "email": "ada.trace@example.com", "phone": "+15551469907"}))
    assert created.exit_code == 0, created.output
    customer = _answer(created.output)
    assert isinstance(customer, dict)
    lines = created.output
    assert lines.startswith(f"create_customer ({DEMO}:")
    assert STEP.search(lines)
    assert "  > POST http://127.0.0.1:" in lines and '> body {"first_name": "Ada"' in lines
    assert re.search(r"  < 201 in \d+ ms: \{", lines)
    assert "  customer = {" in lines
    assert "answer 201:" in lines

    case_body = {"customerId": customer["id"], "title": "Trace me", "interactions": [{
        "created": "2017-08-01T14:09:01Z", "body": "hello", "linkUrl": "https://t.example/1", "serviceId": "1",
        "service": "twitter", "contentType": "post"}]}
    case = mapper_run("create_case", "--body", json.dumps(case_body))
    assert case.exit_code == 0, case.output
    case_id = _answer(case.output)["id"]  # type: ignore[index]
    runs = {
        "search_customers": ["--body", json.dumps({"email": "ada.trace@example.com"})],
        "best_match": ["--body", json.dumps({"displayName": "Ada Trace", "phoneNumbers": ["+15551469907"]})],
        "get_customer": ["--id", customer["id"]],
        "customer_cases": ["--id", customer["id"]],
        "update_customer": ["--id", customer["id"], "--body", json.dumps({"firstName": "Augusta"})],
        "get_case": ["--id", case_id],
        "update_case": ["--id", case_id, "--body", json.dumps({"status": "closed"})],
    }
    for operation, args in runs.items():
        result = mapper_run(operation, *args)
        assert result.exit_code == 0, result.output
        assert STEP.search(result.output), operation
        assert re.search(r"  < 20\d in \d+ ms: ", result.output), operation
        assert re.search(r"^answer 20[01]:$", result.output, re.M), operation
    best = mapper_run(*["best_match"], *runs["best_match"]).output
    assert re.search(r"^\s*- step 'by email' \(\S+demo\.yaml:\d+\) skipped: its 'when' is false$", best, re.M)
    assert "/customers?phone=+15551469907" in best  # the number in each spelling the CRM may hold
    assert "/customers?phone=(555) 146-9907" in best


FALLBACK = """  best_match:
    steps:
      - set: {matches: []}
      - name: best match
        first:
          - name: by email
            when: "{{ body.email is defined }}"
            steps:
              - request: {method: GET, path: /customers, query: {email: "{{ body.email }}"}}
                extract: {matches: {path: "$.items[*]", many: true}}
          - name: by phone
            steps:
              - request: {method: GET, path: /customers, query: {phone: "{{ body.phoneNumbers[0] | e164 }}"}}
                extract: {matches: {path: "$.items[*]", many: true}}
        until: "{{ matches | length > 0 }}"
    result: "{{ matches }}"

"""


def test_the_trace_shows_the_strategy_a_first_settled_on(mapper_run, tmp_path) -> None:
    with open(DEMO, encoding="utf-8") as handle:
        text = handle.read()
    start, end = text.index("  best_match:\n"), text.index("  get_customer:\n")
    mapping = tmp_path / "demo-fallback.yaml"
    mapping.write_text(text[:start] + FALLBACK + text[end:])
    created = mapper_run("create_customer", "--body", json.dumps({"lastName": "First", "phone": "+15551469906"}))
    assert created.exit_code == 0, created.output
    best = mapper_run("best_match", "--body", json.dumps({"phoneNumbers": ["(555) 146-9906"]}), mapping=str(mapping))
    assert best.exit_code == 0, best.output
    assert "strategy 'by email' passed over: its 'when' is false" in best.output
    assert "= 'best match' settled on strategy 'by phone'" in best.output


def test_an_error_shows_the_step_the_crm_answer_and_the_khoros_error(mapper_run) -> None:
    result = mapper_run("get_customer", "--id", "424242")
    assert result.exit_code == 1
    assert re.search(r"< 404 in \d+ ms: \{\"error\":\"not found\"", result.output)
    assert re.search(r"! step 'GET /customers/\{\{ id \}\}' \(\S+demo\.yaml:\d+\) failed: No customer 424242",
                     result.output)
    assert "answer 404 not_found: No customer 424242 in the demo CRM" in result.output
    assert '"error": "not_found"' in result.output


def test_secrets_are_redacted_from_requests(mapper_run, tmp_path) -> None:
    with open(DEMO, encoding="utf-8") as handle:
        text = handle.read()
    assert "\nsecrets:\n" in text
    text = text.replace("\nsecrets:\n", "\nsecrets:\n  note: {env: DEMO_NOTE}\n")
    text = text.replace("  headers: {Accept: application/json}",
                        '  headers: {Accept: application/json, X-Note: "{{ secrets.note }}", '
                        'X-Api-Key: "{{ secrets.api_key or \'\' }}"}')
    mapping = tmp_path / "demo-with-secret.yaml"
    mapping.write_text(text)
    result = mapper_run("search_customers", "--body", json.dumps({"email": "nobody@example.com"}),
                        mapping=str(mapping), extra_env={"DEMO_NOTE": SECRET})
    assert result.exit_code == 0, result.output
    assert "> X-Note: ***" in result.output
    assert "> X-Api-Key: ***" in result.output


def test_record_then_replay_offline(mapper_run, tmp_path) -> None:
    recording = str(tmp_path / "rec")
    result = mapper_run("search_customers", "--body", json.dumps({"email": "nobody@example.com"}),
                        "--record", recording)
    assert result.exit_code == 0, result.output
    assert f"mapper test {recording}" in result.output
    replayed = CliRunner().invoke(main, ["test", recording])
    assert replayed.exit_code == 0, replayed.output
    assert "1 of 1 cases pass" in replayed.output


def test_an_unknown_operation_is_refused_with_the_list(mapper_run) -> None:
    result = mapper_run("get_customers")
    assert result.exit_code == 2
    assert "use one of: search_customers, best_match" in result.output
