"""The ``explode`` filter: one record per element of a list-valued key.

Answers often group several names under one item (one error that names three
fields); a Khoros 422 needs one entry per field, each keeping the item's other
keys (its message, its code). ``explode`` makes that a plain ``$map``.
"""

from __future__ import annotations

from typing import Any

import pytest

from mapper.core.templating import compile_value

WHERE = "m.yaml:9 errors[0].fields"


def ev(value: Any, **context: Any) -> Any:
    return compile_value(value, WHERE).evaluate(context)


def test_each_element_of_the_list_becomes_a_record_that_keeps_the_other_keys():
    errors = [{"code": "MISSING", "message": "Required: [A, B]", "fields": ["A", "B"]},
              {"code": "TOO_LONG", "message": "C is too long", "fields": ["C"]}]
    assert ev("{{ e | explode('fields') }}", e=errors) == [
        {"code": "MISSING", "message": "Required: [A, B]", "fields": "A"},
        {"code": "MISSING", "message": "Required: [A, B]", "fields": "B"},
        {"code": "TOO_LONG", "message": "C is too long", "fields": "C"},
    ]
    assert errors[0]["fields"] == ["A", "B"]  # the input is not changed


def test_records_without_elements_give_nothing_and_a_single_value_counts_once():
    items = [{"fields": []}, {"fields": None}, {"other": 1}, {"fields": "D"}, "not a record"]
    assert ev("{{ e | explode('fields') }}", e=items) == [{"fields": "D"}]


@pytest.mark.parametrize("answer", [None, "<html>Bad Gateway</html>", {"fields": ["A"]}, 42])
def test_anything_but_a_list_gives_an_empty_list(answer):
    assert ev("{{ e | explode('fields') }}", e=answer) == []


def test_it_feeds_a_map_that_names_one_field_per_entry():
    tree = {"$map": "{{ response | explode('fields') }}", "$as": "p",
            "$to": {"name": "{{ p.fields }}", "errorMessage": "{{ p.message }}"}}
    response = [{"message": "is required", "fields": ["LastName", "Email"]}]
    assert ev(tree, response=response) == [{"name": "LastName", "errorMessage": "is required"},
                                           {"name": "Email", "errorMessage": "is required"}]
