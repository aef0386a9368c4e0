"""``define:`` and ``$use``: pieces of a mapping written once, expanded when it loads."""

from __future__ import annotations

import textwrap

import pytest

from mapper.core.compiler import compile_document
from mapper.core.definitions import expand_definitions
from mapper.core.pipeline import RequestStep, SetStep
from mapper.core.source import load_source
from mapper.errors import ConfigError


def expand(text: str):
    return expand_definitions(load_source("m.yaml", textwrap.dedent(text)))


def test_a_list_of_steps_is_spliced_and_a_map_takes_the_keys_laid_over_it():
    doc, problems = expand("""
        define:
          lookup: {request: {method: GET, path: /x}, extract: {x: "$"}}
          both:
            - {$use: lookup}
            - set: {y: 1}
        operations:
          a:
            steps:
              - set: {z: 0}
              - {$use: both}
              - {$use: lookup, when: "{{ z }}", name: again}
        """)
    assert problems == []
    steps = doc.data["operations"]["a"]["steps"]
    assert steps == [{"set": {"z": 0}},
                     {"request": {"method": "GET", "path": "/x"}, "extract": {"x": "$"}},
                     {"set": {"y": 1}},
                     {"request": {"method": "GET", "path": "/x"}, "extract": {"x": "$"}, "when": "{{ z }}",
                      "name": "again"}]


def test_expanded_pieces_report_the_line_of_their_definition_and_extra_keys_their_own():
    doc, _ = expand("""
        define:
          lookup:
            request: {method: GET, path: /x}
        operations:
          a:
            steps:
              - {$use: lookup,
                 when: "{{ z }}"}
        """)
    assert doc.line_of(("operations", "a", "steps", 0, "request", "path")) == 4
    assert doc.line_of(("operations", "a", "steps", 0, "when")) == 9


def test_a_value_definition_replaces_the_use_and_unknown_names_are_reported_with_their_line():
    doc, problems = expand("""
        define:
          ranked: "{{ found | rank_matches(body) }}"
        operations:
          a: {result: {$use: ranked}}
          b: {result: {$use: rankd}}
        """)
    assert doc.data["operations"]["a"]["result"] == "{{ found | rank_matches(body) }}"
    assert [(p.line, p.key, p.message) for p in problems] == [
        (6, "operations.b.result.$use", "no definition named 'rankd' (did you mean 'ranked'?)")]


def test_keys_next_to_use_need_a_map_definition():
    _, problems = expand("""
        define:
          steps_list: [{set: {a: 1}}]
        x: {$use: steps_list, when: "{{ a }}"}
        """)
    assert "'steps_list' is not a map" in problems[0].message


MAPPING = """
name: defs
define:
  not_found:
    - {status: 404, error: not_found, message: "No record {{ id }}"}
  read:
    request: {method: GET, path: "/people/{{ id }}"}
    errors: {$use: not_found}
    extract: {person: "$"}
connection: {base_url: "http://127.0.0.1:9"}
model:
  customer: {fields: [{name: email, label: Email, type: text}]}
  case: {fields: [{name: title, label: Title, type: text}]}
shapes:
  customer: {id: "{{ record.id | string }}", uri: "http://h/{{ record.id }}"}
  case: {id: "{{ record.id | string }}", linkUrl: "http://h", created: "{{ now }}", status: open}
operations:
  get_customer: {steps: [{$use: read}], result: "{{ person }}"}
  get_case:
    steps: [{$use: read}, {set: {person: "{{ person | merge({'seen': true}) }}"}}]
    result: "{{ person }}"
  search_customers: {unsupported: "x"}
  best_match: {unsupported: "x"}
  customer_cases: {unsupported: "x"}
  create_customer: {unsupported: "x"}
  update_customer: {unsupported: "x"}
  create_case: {unsupported: "x"}
  update_case: {unsupported: "x"}
"""


def test_a_definition_compiles_into_each_operation_that_uses_it():
    mapping = compile_document(load_source("defs.yaml", MAPPING))
    get_customer, get_case = mapping.operations["get_customer"], mapping.operations["get_case"]
    assert isinstance(get_customer.steps[0], RequestStep) and isinstance(get_case.steps[0], RequestStep)
    assert get_customer.steps[0].errors[0].code == "not_found"
    assert get_customer.steps[0].where.line == 6  # the line of the definition
    assert isinstance(get_case.steps[1], SetStep)


def test_a_definition_nobody_uses_fails_validation():
    with pytest.raises(ConfigError) as caught:
        compile_document(load_source("defs.yaml", MAPPING.replace("  read:\n", "  spare: 1\n  read:\n")))
    assert [str(p) for p in caught.value.problems] == [
        "defs.yaml:6: define.spare: 'spare' is defined but never used; use it with {$use: spare} or remove it"]
