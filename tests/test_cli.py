"""The ``mapper`` command as a person at a terminal meets it.

``mapper validate`` prints one ok line per good file and every problem of a
bad file as ``file:line: key: message`` on stderr, exiting 1 if any file
has a problem. ``mapper serve`` refuses to start, with the same kind of
lines, when the mapping or the environment is wrong.
"""

from __future__ import annotations

import glob
import os
import re

import pytest
from click.testing import CliRunner

from mapper.workbench.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOOD = os.path.join(ROOT, "tests", "mappings", "good")
BAD = os.path.join(ROOT, "tests", "mappings", "bad")
MINIMAL = os.path.join(GOOD, "minimal.yaml")
PEOPLE = os.path.join(GOOD, "people.yaml")
THREE_PROBLEMS = os.path.join(BAD, "three-problems.yaml")
PROBLEM_LINE = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+): (?P<key>\S+): (?P<message>.+)$")


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_validate_says_ok_for_a_good_mapping(runner):
    result = runner.invoke(main, ["validate", MINIMAL])
    assert result.exit_code == 0
    assert result.stdout == f"{MINIMAL}: ok (minimal, 1 of 9 operations mapped)\n"
    assert result.stderr == ""


def test_validate_accepts_several_good_mappings_at_once(runner):
    paths = sorted(glob.glob(os.path.join(GOOD, "*.yaml")))
    result = runner.invoke(main, ["validate", *paths])
    assert result.exit_code == 0, result.stderr
    assert [line.split(": ok (")[0] for line in result.stdout.splitlines()] == paths


def test_validate_prints_every_problem_as_file_line_key_message(runner):
    result = runner.invoke(main, ["validate", THREE_PROBLEMS])
    assert result.exit_code == 1
    assert result.stdout == ""
    *problems, summary = result.stderr.splitlines()
    assert len(problems) == 3
    for line in problems:
        match = PROBLEM_LINE.match(line)
        assert match, line
        assert match["file"] == THREE_PROBLEMS
        assert match["key"].startswith(("shapes.", "operations."))
    assert summary == "1 of 1 mapping file(s) have problems."


def test_validate_names_the_line_and_suggests_a_fix(runner):
    path = os.path.join(BAD, "unknown-step-key.yaml")
    result = runner.invoke(main, ["validate", path])
    assert result.exit_code == 1
    assert (f"{path}:32: operations.get_customer.steps[0].extrct: unknown key 'extrct' "
            "(did you mean 'extract'?)") in result.stderr.splitlines()


def test_validate_checks_every_file_and_fails_if_any_is_bad(runner):
    result = runner.invoke(main, ["validate", MINIMAL, THREE_PROBLEMS, PEOPLE])
    assert result.exit_code == 1
    assert [line.split(":")[0] for line in result.stdout.splitlines()] == [MINIMAL, PEOPLE]
    assert result.stderr.splitlines()[-1] == "1 of 3 mapping file(s) have problems."


def test_validate_reports_a_missing_file_as_a_problem(runner, tmp_path):
    missing = str(tmp_path / "nope.yaml")
    result = runner.invoke(main, ["validate", missing])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"{missing}: (top): cannot read the file")


def test_validate_needs_at_least_one_path(runner):
    result = runner.invoke(main, ["validate"])
    assert result.exit_code == 2
    assert "Missing argument" in result.stderr


def test_serve_refuses_a_bad_mapping_with_its_problems(runner):
    result = runner.invoke(main, ["serve", "--mapping", THREE_PROBLEMS])
    assert result.exit_code == 1
    assert len([line for line in result.stderr.splitlines() if PROBLEM_LINE.match(line)]) == 3


def test_serve_refuses_to_start_without_the_environment_the_mapping_needs(runner):
    result = runner.invoke(main, ["serve", "--mapping", PEOPLE], env={"PEOPLE_CRM_URL": None, "PEOPLE_API_KEY": None,
                                                                       "MAPPER_AUTH_TOKENS": "t0ken-value"})
    assert result.exit_code == 1
    assert f"{PEOPLE}:9: settings.base_url: the environment variable 'PEOPLE_CRM_URL' is not set" in result.stderr


def test_serve_refuses_to_start_without_khoros_tokens(runner):
    result = runner.invoke(main, ["serve", "--mapping", PEOPLE],
                           env={"PEOPLE_CRM_URL": "http://127.0.0.1:9", "PEOPLE_API_KEY": "k-123456",
                                "MAPPER_AUTH_TOKENS": ""})
    assert result.exit_code == 1
    assert "MAPPER_AUTH_TOKENS" in result.stderr


def test_validate_prints_warnings_without_failing(runner, tmp_path):
    with open(MINIMAL, encoding="utf-8") as handle:
        text = handle.read()
    text = text.replace("      - {name: email, label: Email, type: text, searchable: true, format: email}\n",
                        "      - {name: email, label: Email, type: text}\n"
                        "      - {name: phone, label: Phone, type: text}\n")
    text = text.replace('  create_customer: {unsupported: "read-only"}\n', "") + (
        "  create_customer:\n    steps:\n"
        "      - request: {method: POST, path: /people, body: {email: \"{{ body.email }}\"}}\n"
        "        extract: {customer: \"$\"}\n"
        "    result: \"{{ customer }}\"\n")
    path = tmp_path / "phone-never-written.yaml"
    path.write_text(text)
    result = runner.invoke(main, ["validate", str(path)])
    assert result.exit_code == 0
    assert result.stdout == f"{path}: ok (minimal, 2 of 9 operations mapped)\n"
    assert result.stderr == (f"{path}:14: model.customer.fields[1]: no create or update of a customer writes "
                             "'phone' (no step reads body.phone), so what an agent enters there is dropped; "
                             "write it in a request, or mark it readonly: true (warning)\n")


def test_validate_refuses_a_name_set_only_under_when(runner):
    path = os.path.join(BAD, "set-only-under-when.yaml")
    result = runner.invoke(main, ["validate", path])
    assert result.exit_code == 1
    assert f"{path}:36: operations.get_customer.result: 'customer' is set only when the step at line 30 runs" \
        in result.stderr


def test_mapper_reload_sends_the_admin_token_the_server_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--url`` shows the problems of a refused reload only with an admin token: the first of
    MAPPER_ADMIN_TOKENS, else of the deprecated MAPPER_CONSOLE_TOKEN, as the server reads them."""
    from mapper.workbench.cli import _admin_headers

    monkeypatch.delenv("MAPPER_ADMIN_TOKENS", raising=False)
    monkeypatch.delenv("MAPPER_CONSOLE_TOKEN", raising=False)
    assert _admin_headers() == {}
    monkeypatch.setenv("MAPPER_CONSOLE_TOKEN", " old-admin , older ")
    assert _admin_headers() == {"Authorization": "Bearer old-admin"}
    monkeypatch.setenv("MAPPER_ADMIN_TOKENS", "new-admin,next-admin")
    assert _admin_headers() == {"Authorization": "Bearer new-admin"}
