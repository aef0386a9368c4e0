"""Plain JSONPaths read without jsonpath-ng give exactly what jsonpath-ng gives.

:func:`mapper.core.paths.direct` answers the everyday chains itself and hands
anything unusual back (None); wherever it answers, the answer must be
jsonpath-ng's, for any JSON a CRM may send."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from mapper.core.compiler import parse_jsonpath
from mapper.core.paths import direct

PATHS = ["$", "$.id", "$.items", "$.items[*]", "$.items[*].id", "$.data.items[*]", "$.results[0]",
         "$.results[0].id", "$.results[-1].id", "$.results[3]", "$['id']", "$.items[*].tags[*]", "$.a.b.c", "$.*",
         "$[*].id"]
NAMES = st.sampled_from(["id", "items", "data", "results", "tags", "a", "b", "c", "other"])
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(NAMES, inner, max_size=4),
    max_leaves=20)


def jsonpath_ng_says(text: str, data: Any) -> list[Any]:
    return [m.value for m in parse_jsonpath(text).find(data)]


def test_the_everyday_paths_are_read_directly():
    for text in PATHS:
        assert direct(parse_jsonpath(text)) is not None, text


def test_other_paths_are_left_to_jsonpath_ng():
    for text in ("$.items[1:3]", "$..id", "$.items[?(@.id > 1)]", "$.items[0,1]", "$.a.`parent`"):
        assert direct(parse_jsonpath(text)) is None, text


def test_a_typical_answer():
    answer = {"items": [{"id": 1, "tags": ["x"]}, {"id": 2, "tags": []}, {"name": "no id"}], "total": 3}
    assert direct(parse_jsonpath("$.items[*].id"))(answer) == [1, 2]
    assert direct(parse_jsonpath("$.items[*]"))(answer) == answer["items"]
    assert direct(parse_jsonpath("$.missing"))(answer) == []
    assert direct(parse_jsonpath("$.items.id"))(answer) is None  # a name asked of a list: jsonpath-ng decides


@settings(max_examples=300, deadline=None)
@given(data=JSON, text=st.sampled_from(PATHS))
def test_wherever_it_answers_it_answers_as_jsonpath_ng(data, text):
    found = direct(parse_jsonpath(text))(data)
    if found is not None:
        assert found == jsonpath_ng_says(text, data)
        assert all(a is b for a, b in zip(found, jsonpath_ng_says(text, data), strict=True))  # the same objects
