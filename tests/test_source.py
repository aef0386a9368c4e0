"""Reading a mapping file: plain data plus the line of every key.

Every later error message says ``file:line: key: message``, so the line table
built here is part of the contract: nested keys, list items and keys inside
list items all know their line, and YAML that is wrong names its line too.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from mapper.core.source import dotted, load_source
from mapper.errors import ConfigError, Problem

NESTED = textwrap.dedent("""\
    name: demo
    connection:
      base_url: http://crm
      headers:
        Accept: application/json
    steps:
      - request: {method: GET}
      - set:
          found: yes
      - name: third
        fail:
          error: not_found
    """)


def load(text: str, file: str = "m.yaml"):
    return load_source(file, textwrap.dedent(text))


@pytest.mark.parametrize(("path", "line"), [
    (("name",), 1),
    (("connection",), 2),
    (("connection", "base_url"), 3),
    (("connection", "headers", "Accept"), 5),
    (("steps",), 6),
    (("steps", 0), 7),
    (("steps", 0, "request", "method"), 7),
    (("steps", 1), 8),
    (("steps", 1, "set", "found"), 9),
    (("steps", 2), 10),
    (("steps", 2, "fail"), 11),
    (("steps", 2, "fail", "error"), 12),
])
def test_every_key_and_list_item_knows_its_line(path, line):
    assert load(NESTED).line_of(path) == line


def test_a_path_without_a_line_reports_its_nearest_ancestor():
    doc = load(NESTED)
    assert doc.line_of(("steps", 2, "fail", "error", "deeper", 3)) == 12
    assert doc.line_of(("steps", 9)) == 6


def test_data_is_plain_python_and_scalars_keep_their_yaml_types():
    doc = load("""\
        quoted: "478"
        number: 478
        flag: true
        nothing: null
        items: [a, {b: 1}]
        """)
    assert doc.data == {"quoted": "478", "number": 478, "flag": True, "nothing": None,
                        "items": ["a", {"b": 1}]}
    assert type(doc.data) is dict


def test_problems_render_as_file_line_dotted_key_message():
    doc = load(NESTED, file="mappings/x.yaml")
    problem = doc.problem(("steps", 2, "fail", "error"), "unknown error code")
    assert problem == Problem("mappings/x.yaml", 12, "steps[2].fail.error", "unknown error code")
    assert str(problem) == "mappings/x.yaml:12: steps[2].fail.error: unknown error code"


def test_dotted_paths_show_list_indexes_in_brackets():
    assert dotted(("operations", "get_case", "steps", 0, "request", "path")) == \
        "operations.get_case.steps[0].request.path"
    assert dotted(()) == ""


def test_a_duplicate_key_is_a_problem_at_the_second_occurrence():
    with pytest.raises(ConfigError) as caught:
        load("""\
            name: one
            connection:
              base_url: a
              timeout: 3
              base_url: b
            """)
    assert [str(p) for p in caught.value.problems] == [
        "m.yaml:5: connection.base_url: this key is given twice"]


def test_every_duplicate_key_is_reported_at_once():
    with pytest.raises(ConfigError) as caught:
        load("""\
            a: 1
            a: 2
            b:
              c: 1
              c: 2
            """)
    assert [(p.line, p.key) for p in caught.value.problems] == [(2, "a"), (5, "b.c")]


def test_bad_yaml_names_the_line_it_breaks_on():
    with pytest.raises(ConfigError) as caught:
        load("""\
            name: demo
            connection:
              base_url: [unclosed
              timeout: 3
            """)
    [problem] = caught.value.problems
    assert problem.file == "m.yaml"
    assert problem.line == 4
    assert "not valid YAML" in problem.message


def test_tabs_used_for_indentation_are_bad_yaml_with_a_line():
    with pytest.raises(ConfigError) as caught:
        load_source("m.yaml", "name: demo\nconnection:\n\tbase_url: x\n")
    assert caught.value.problems[0].line == 3


def test_merge_keys_are_refused_so_every_key_is_written_out():
    with pytest.raises(ConfigError) as caught:
        load("""\
            base: &base {a: 1}
            copy:
              <<: *base
              b: 2
            """)
    [problem] = caught.value.problems
    assert (problem.line, problem.key) == (3, "copy")
    assert "merge keys" in problem.message


def test_an_empty_file_is_a_problem():
    with pytest.raises(ConfigError, match="the file is empty"):
        load_source("empty.yaml", "# only a comment\n")


def test_a_missing_file_is_a_problem_naming_the_file(tmp_path: Path):
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError) as caught:
        load_source(missing)
    [problem] = caught.value.problems
    assert problem.file == missing
    assert "cannot read the file" in problem.message


def test_a_file_on_disk_is_read_with_its_lines(tmp_path: Path):
    path = tmp_path / "m.yaml"
    path.write_text(NESTED, encoding="utf-8")
    doc = load_source(str(path))
    assert doc.file == str(path)
    assert doc.line_of(("steps", 1, "set", "found")) == 9


def test_an_unknown_yaml_tag_is_a_problem_with_its_line():
    with pytest.raises(ConfigError) as caught:
        load("""\
            name: demo
            secret: !vault abc
            """)
    [problem] = caught.value.problems
    assert (problem.line, problem.key) == (2, "secret")
    assert "!vault" in problem.message
