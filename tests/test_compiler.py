"""Load-time checks: a mapping either compiles or lists every problem with its line.

The examples drive the tests. Every shipped mapping (``mappings/*.yaml``) and
every file in ``tests/mappings/good/`` must compile. Every file in
``tests/mappings/bad/`` must fail, and says how in its own header comments:

    # expect: <a substring of one reported problem>     (one or more)
    # line: <the line the first expected problem names> (optional)
    # problems: <how many problems in all>              (optional)
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass

import jsonschema
import pytest

from mapper.core.compiler import DEFAULT_MAX_BYTES, DEFAULT_TIMEOUT, MAPPING_SCHEMA, compile_document, compile_file
from mapper.core.khoros import OPERATIONS
from mapper.core.source import load_source
from mapper.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = sorted(glob.glob(os.path.join(ROOT, "mappings", "*.yaml")))
GOOD = sorted(glob.glob(os.path.join(ROOT, "tests", "mappings", "good", "*.yaml")))
BAD = sorted(glob.glob(os.path.join(ROOT, "tests", "mappings", "bad", "*.yaml")))
MINIMAL = os.path.join(ROOT, "tests", "mappings", "good", "minimal.yaml")


@dataclass
class Expectation:
    substrings: list[str]
    line: int | None
    count: int | None


def expectation(path: str) -> Expectation:
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    line = re.search(r"^# line: (\d+)$", text, re.M)
    count = re.search(r"^# problems: (\d+)$", text, re.M)
    return Expectation(re.findall(r"^# expect: (.+)$", text, re.M),
                       int(line.group(1)) if line else None, int(count.group(1)) if count else None)


def name_of(path: str) -> str:
    return os.path.basename(path)


def test_there_are_example_files_on_both_sides():
    assert SHIPPED and GOOD
    assert len(BAD) >= 20
    for path in BAD:
        assert expectation(path).substrings, f"{path} has no '# expect:' line"


@pytest.mark.parametrize("path", SHIPPED + GOOD, ids=name_of)
def test_every_shipped_and_good_mapping_compiles(path):
    mapping = compile_file(path)
    assert set(mapping.operations) == {op.name for op in OPERATIONS}


@pytest.mark.parametrize("path", BAD, ids=name_of)
def test_every_bad_mapping_is_refused_with_the_expected_problems(path):
    wanted = expectation(path)
    with pytest.raises(ConfigError) as caught:
        compile_file(path)
    problems = caught.value.problems
    rendered = [str(p) for p in problems]
    for substring in wanted.substrings:
        assert any(substring in line for line in rendered), f"{substring!r} not in {rendered}"
    for problem in problems:
        assert problem.file == path
        assert str(problem).startswith(f"{path}:{problem.line}: ")
    if wanted.line is not None:
        first = next(p for p in problems if wanted.substrings[0] in str(p))
        assert first.line == wanted.line, rendered
    if wanted.count is not None:
        assert len(problems) == wanted.count, rendered


def test_a_config_error_prints_one_problem_per_line_in_line_order():
    path = os.path.join(ROOT, "tests", "mappings", "bad", "three-problems.yaml")
    with pytest.raises(ConfigError) as caught:
        compile_file(path)
    lines = str(caught.value).splitlines()
    assert len(lines) == 3
    numbers = [int(line.split(":")[1]) for line in lines]
    assert numbers == sorted(numbers)


# --- checks that need a little more than a substring -------------------------------------

def minimal_with(old: str, new: str) -> str:
    with open(MINIMAL, encoding="utf-8") as handle:
        text = handle.read()
    assert text.count(old) == 1, old
    return text.replace(old, new)


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        compile_document(load_source("m.yaml", text))
    return [str(p) for p in caught.value.problems]


def compiles(text: str):
    return compile_document(load_source("m.yaml", text))


def test_the_mapping_schema_is_itself_a_valid_json_schema():
    jsonschema.Draft202012Validator.check_schema(MAPPING_SCHEMA)


def test_defaults_are_the_documented_ones():
    mapping = compile_file(MINIMAL)
    assert mapping.timeout == DEFAULT_TIMEOUT
    assert mapping.max_response_bytes == DEFAULT_MAX_BYTES
    assert mapping.retry_429 == 2
    assert mapping.auth_kind == "none"


def test_unsupported_operations_keep_their_reason():
    mapping = compile_file(MINIMAL)
    assert mapping.operations["search_customers"].unsupported == "search is not offered by this CRM"
    assert mapping.operations["get_customer"].unsupported is None


def test_error_rules_read_exact_statuses_and_status_classes():
    mapping = compiles(minimal_with('{status: 404, error: not_found, message: "No customer {{ id }}"}',
                                    '{status: [404, 410, "5xx"], error: not_found, message: "No customer {{ id }}"}'))
    [rule] = mapping.operations["get_customer"].steps[0].errors
    assert rule.statuses == {404, 410}
    assert rule.status_classes == {5}


def test_a_value_defined_by_a_step_is_visible_to_later_steps_only():
    text = minimal_with('    result: "{{ customer }}"',
                        '      - set: {label: "{{ customer.name }}"}\n'
                        '    result: "{{ customer | merge({\'l\': label}) }}"')
    assert compiles(text).operations["get_customer"].result is not None


def test_for_each_item_names_stay_inside_the_loop():
    text = minimal_with('    result: "{{ customer }}"',
                        '      - for_each: "{{ customer.tags }}"\n'
                        '        as: tag\n'
                        '        steps:\n'
                        '          - set: {upper: "{{ tag | upper }}"}\n'
                        '        collect: {uppers: "{{ upper }}"}\n'
                        '    result: "{{ customer | merge({\'tags\': uppers, \'last\': tag}) }}"')
    assert problems_of(text) == ["m.yaml:39: operations.get_customer.result: unknown value 'tag'"]


def test_paginate_makes_page_visible_to_the_request_and_into_to_later_steps():
    text = minimal_with('''      - request: {method: GET, path: "/people/{{ id }}"}
        errors:
          - {status: 404, error: not_found, message: "No customer {{ id }}"}
        extract: {customer: "$"}
    result: "{{ customer }}"''', '''      - request: {method: GET, path: "/people", query: {after: "{{ page.cursor }}"}}
        paginate:
          items: "$.results[*]"
          into: everyone
          while: "{{ response.next is not none }}"
          cursor: "{{ response.next }}"
    result: "{{ everyone | first }}"''')
    step = compiles(text).operations["get_customer"].steps[0]
    assert step.paginate.into == "everyone"
    assert step.paginate.max_pages == 10


def test_answer_names_are_only_visible_where_there_is_an_answer():
    text = minimal_with('    result: "{{ customer }}"', '    result: "{{ response }}"')
    assert problems_of(text) == ["m.yaml:34: operations.get_customer.result: unknown value 'response'"]


def test_live_model_steps_and_fields_are_checked_like_operations():
    text = minimal_with('''  case:
    fields:''', '''  case:
    live:
      steps:
        - request: {method: GET, path: /ticket_fields}
          extract: {crm_fields: {path: "$.fields[*]", many: true}}
      fields: {$map: "{{ crm_field }}", $to: {name: "{{ item.key }}", label: "{{ item.title }}", type: text}}
    fields:''')
    assert problems_of(text) == [
        "m.yaml:19: model.case.live.fields.$map: unknown value 'crm_field' (did you mean 'crm_fields'?)"]


def test_a_header_extraction_needs_a_pattern_that_compiles_with_at_most_one_group():
    for pattern, problem in (("(([0-9a-f-]+)", "not a valid regular expression"),
                             ("(a)(b)", "use at most one capture group")):
        text = minimal_with('extract: {customer: "$"}',
                            f'extract: {{customer: "$", new_id: {{header: OData-EntityId, pattern: "{pattern}"}}}}')
        (found,) = [p for p in problems_of(text) if "pattern" in p]
        assert "operations.get_customer.steps[0].extract.new_id.pattern" in found and problem in found


def test_a_header_extraction_takes_no_jsonpath_keys():
    text = minimal_with('extract: {customer: "$"}', 'extract: {customer: "$", new_id: {header: Location, many: true}}')
    assert any("extract.new_id" in p for p in problems_of(text))
# --- flow: names a step sets only when it runs --------------------------------------------------

def _with_get_customer(steps: str, result: str = "{{ customer }}") -> str:
    """minimal.yaml with its get_customer operation replaced."""
    with open(MINIMAL, encoding="utf-8") as handle:
        text = handle.read()
    start = text.index("  get_customer:")
    end = text.index("  search_customers:")
    block = "  get_customer:\n    steps:\n" + "".join("      " + line + "\n" for line in steps.strip("\n").split("\n"))
    return text[:start] + block + f'    result: "{result}"\n' + text[end:]


def _problems(text: str) -> list[str]:
    try:
        compile_document(load_source("flow.yaml", text))
    except ConfigError as exc:
        return [p.message for p in exc.problems]
    return []


@pytest.mark.parametrize("steps, result", [
    # set before the conditional step
    ('- set: {customer: null}\n- when: "{{ id != \'0\' }}"\n  request: {method: GET, path: "/p/{{ id }}"}\n'
     '  extract: {customer: "$"}', "{{ customer }}"),
    # read through a guard
    ('- when: "{{ id != \'0\' }}"\n  request: {method: GET, path: "/p/{{ id }}"}\n  extract: {customer: "$"}',
     "{{ customer | default(none) }}"),
    # read under the same condition
    ('- when: "{{ id != \'0\' }}"\n  request: {method: GET, path: "/p/{{ id }}"}\n  extract: {customer: "$"}',
     "{{ customer if id != '0' else none }}"),
    # set under opposite conditions
    ('- when: "{{ id != \'0\' }}"\n  request: {method: GET, path: "/p/{{ id }}"}\n  extract: {customer: "$"}\n'
     '- when: "{{ not (id != \'0\') }}"\n  set: {customer: null}', "{{ customer }}"),
    # every strategy sets it and the last always runs
    ('- first:\n  - when: "{{ id | int > 0 }}"\n    steps: [{request: {method: GET, path: "/p/{{ id }}"}, '
     'extract: {customer: "$"}}]\n  - steps: [{set: {customer: null}}]', "{{ customer }}"),
], ids=["set-before", "default", "same-condition", "opposite-conditions", "every-strategy"])
def test_a_name_set_under_when_is_accepted_where_it_is_surely_set_or_guarded(steps: str, result: str) -> None:
    assert _problems(_with_get_customer(steps, result)) == []


def test_a_name_a_conditional_step_sets_is_refused_where_it_may_be_missing() -> None:
    problems = _problems(_with_get_customer(
        '- when: "{{ id != \'0\' }}"\n  request: {method: GET, path: "/p/{{ id }}"}\n  extract: {customer: "$"}\n'
        '- when: "{{ id == \'7\' }}"\n  set: {customer: null}'))
    assert len(problems) == 1 and problems[0].startswith("'customer' is set only when the step at line ")


# --- warnings: model fields no write passes on ----------------------------------------------------

WRITES = """
  create_customer:
    steps:
      - request: {method: POST, path: /people, body: {email: "{{ body.email }}"}}
        extract: {customer: "$"}
    result: "{{ customer }}"
  update_customer:
    steps:
      - request: {method: PATCH, path: "/people/{{ id }}", body: {mail: "{{ body.get('email') }}"}}
        extract: {customer: "$"}
    result: "{{ customer }}"
"""


def _writing_mapping(fields: str, writes: str = WRITES) -> str:
    with open(MINIMAL, encoding="utf-8") as handle:
        text = handle.read()
    text = text.replace("      - {name: email, label: Email, type: text, searchable: true, format: email}\n",
                        fields)
    text = text.replace('  create_customer: {unsupported: "read-only"}\n', "")
    text = text.replace('  update_customer: {unsupported: "read-only"}\n', "")
    return text + writes


def test_a_model_field_no_create_or_update_writes_is_a_warning_naming_it() -> None:
    mapping = compile_document(load_source("w.yaml", _writing_mapping(
        "      - {name: email, label: Email, type: text}\n"
        "      - {name: phone, label: Phone, type: text}\n"
        "      - {name: score, label: Score, type: text, readonly: true}\n")))
    assert [(w.line, w.key) for w in mapping.warnings] == [(14, "model.customer.fields[1]")]
    assert "no create or update of a customer writes 'phone'" in mapping.warnings[0].message


def test_passing_the_whole_body_on_writes_every_field() -> None:
    writes = WRITES.replace('body: {email: "{{ body.email }}"}', 'body: "{{ body | merge({}) }}"')
    mapping = compile_document(load_source("w.yaml", _writing_mapping(
        "      - {name: email, label: Email, type: text}\n      - {name: phone, label: Phone, type: text}\n",
        writes)))
    assert mapping.warnings == []


@pytest.mark.parametrize("path", SHIPPED, ids=name_of)
def test_shipped_mappings_write_every_field_they_show(path: str) -> None:
    assert [str(w) for w in compile_file(path).warnings] == []
