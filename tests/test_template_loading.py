"""Loading templates cheaply keeps every load-time check.

Start-up no longer runs Jinja's code generator and Python's compiler over
every leaf (see ``_checked_names`` in :mod:`mapper.core.templating`): the
names a template reads come from a walk of its syntax tree, unknown filters
and tests are refused by that walk, and Jinja's code is made at the first
value no fast path renders. These tests hold the walk to Jinja's own answer
over every template of every shipped mapping.
"""

from __future__ import annotations

import glob
import os

import pytest
from jinja2 import meta

from mapper.core.compiler import compile_file
from mapper.core.templating import Expression, TemplateCompileError, Text, compile_string, iter_templates
from tests.targets.registry import ROOT

SHIPPED = sorted(glob.glob(os.path.join(ROOT, "mappings", "*.yaml")))


def templates_of(path: str) -> list[Expression | Text]:
    found: list[Expression | Text] = []
    pending: list[object] = [compile_file(path)]
    seen: set[int] = set()
    while pending:  # every Compiled reachable from the mapping's dataclasses, lists and dicts
        item = pending.pop()
        if id(item) in seen or item is None or isinstance(item, (str, int, float, bool)):
            continue
        seen.add(id(item))
        if isinstance(item, (Expression, Text)):
            found.extend(iter_templates(item))
        elif isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, (list, tuple)):
            pending.extend(item)
        elif hasattr(item, "__dict__") and type(item).__module__.startswith("mapper."):
            pending.extend(vars(item).values())
    return found


@pytest.mark.parametrize("path", SHIPPED, ids=os.path.basename)
def test_names_read_are_the_ones_jinja_finds(path: str) -> None:
    templates = templates_of(path)
    assert len(templates) > 20  # the walk reached the mapping's templates
    for template in templates:
        assert template.names() == set(meta.find_undeclared_variables(template.ast)), template.source


@pytest.mark.parametrize("source, message", [
    ("{{ body.email | lowr }}", "No filter named 'lowr'"),
    ("Hello {{ body.name | uper }}!", "No filter named 'uper'"),
    ("{{ body.email if body.email is definedd else none }}", "No test named 'definedd'"),
])
def test_an_unknown_filter_or_test_is_refused_at_load(source: str, message: str) -> None:
    with pytest.raises(TemplateCompileError) as refused:
        compile_string(source, "m.yaml:1 x")
    assert message in refused.value.message
    assert "did you mean" in refused.value.message


@pytest.mark.parametrize("source, expected", [
    ("{{ body.posts | map(attribute='n') | join(',') }}", "a,b"),  # no fast path: Jinja renders it
    ("{{ body.posts | length }}", 2),
    ("n={{ body.posts | length }}", "n=2"),
])
def test_templates_without_a_fast_path_compile_at_first_use_and_render(source: str, expected: object) -> None:
    compiled = compile_string(source, "m.yaml:1 x")
    context = {"body": {"posts": [{"n": "a"}, {"n": "b"}]}}
    assert compiled.evaluate(context) == expected
    assert compiled.evaluate(context) == expected  # the second time from the code made the first time
