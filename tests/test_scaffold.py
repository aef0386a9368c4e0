"""``mapper init`` on a real CRM description: Pipedrive's, as Pipedrive publishes it.

The description is test data shared beside the checkout (``../shared/specs``
from the project root, as in CI). The mapping ``mapper init`` writes must be
refused by ``mapper validate`` only for its TODOs, each named with its line,
and accepted once exactly those are filled.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from mapper.workbench.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _shared_specs() -> str:
    """``shared/specs`` beside the checkout (CI), or beside a folder above it (a git worktree)."""
    folder = os.path.dirname(ROOT)
    while True:
        candidate = os.path.join(folder, "shared", "specs")
        if os.path.isdir(candidate) or os.path.dirname(folder) == folder:
            return candidate
        folder = os.path.dirname(folder)


PIPEDRIVE = os.path.join(_shared_specs(), "pipedrive")
SPECS = [os.path.join(PIPEDRIVE, "v2.yaml"), os.path.join(PIPEDRIVE, "v1.yaml")]

# What an integrator who knows Pipedrive writes in place of each TODO.
FILLS = {
    "shapes.customer.uri": "https://example.pipedrive.com/person/{{ record.id }}",
    "shapes.case.linkUrl": "https://example.pipedrive.com/deal/{{ record.id }}",
    "shapes.case.status": "{{ 'open' if record.status == 'open' else 'closed' }}",
    "shapes.case.interactions.$to.linkUrl": "https://example.pipedrive.com/deal/{{ record.id }}#note-{{ note.id }}",
    "operations.create_case.steps[0].request.body.status":
        "{{ {'open': 'open', 'closed': 'won'}[body.status] if body.status is defined else omit }}",
    "operations.update_case.steps[0].request.body.status":
        "{{ {'open': 'open', 'closed': 'won'}[body.status] if body.status is defined else omit }}",
}


def _fill(value: Any, path: str, filled: list[str]) -> Any:
    if isinstance(value, str) and value.startswith("TODO"):
        assert path in FILLS, f"an unexpected TODO at {path}: {value}"
        filled.append(path)
        return FILLS[path]
    if isinstance(value, dict):
        return {k: _fill(v, f"{path}.{k}" if path else k, filled) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, f"{path}[{i}]", filled) for i, v in enumerate(value)]
    return value


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = str(tmp_path_factory.mktemp("init") / "pipedrive.yaml")
    result = CliRunner().invoke(main, ["init", *SPECS, "--customer", "/persons", "--case", "/deals",
                                       "--note", "/notes", "--name", "pipedrive", "-o", out])
    assert result.exit_code == 0, result.output
    assert f"Wrote {out}: fill its {len(FILLS)} TODO(s), then: mapper validate {out}" in result.stderr
    return out


def test_validate_lists_only_the_todos_each_with_its_line(written: str) -> None:
    result = CliRunner().invoke(main, ["validate", written])
    assert result.exit_code == 1
    problems = result.stderr.splitlines()[:-1]
    assert len(problems) == len(FILLS)
    for line in problems:
        assert line.startswith(f"{written}:") and ": left to fill in: " in line
    assert sorted(line.split(": ")[1] for line in problems) == sorted(FILLS)


def test_the_mapping_is_accepted_once_its_todos_are_filled(written: str, tmp_path) -> None:
    with open(written, encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    filled: list[str] = []
    complete = tmp_path / "pipedrive-filled.yaml"
    complete.write_text(yaml.safe_dump(_fill(data, "", filled), sort_keys=False))
    assert sorted(filled) == sorted(FILLS)
    result = CliRunner().invoke(main, ["validate", str(complete)])
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"{complete}: ok (pipedrive, 9 of 9 operations mapped)\n"
    assert result.stderr == ""  # no warnings either: every model field is written


def test_the_model_and_requests_come_from_the_schemas(written: str) -> None:
    with open(written, encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    customer = {f["name"]: f for f in data["model"]["customer"]["fields"]}
    assert {"name", "email", "phone", "jobTitle"} <= set(customer)
    assert [v["value"] for v in customer["marketingStatus"]["listValues"]] == \
        ["no_consent", "unsubscribed", "subscribed", "archived"]
    assert data["model"]["case"]["fields"][1] == {"name": "title", "label": "Title", "type": "text", "required": True}
    assert data["connection"]["auth"] == {"type": "header", "name": "x-api-token", "value": "{{ secrets.api_token }}"}
    assert data["settings"]["base_url"]["default"] == "https://api.pipedrive.com"
    create = data["operations"]["create_customer"]["steps"][0]
    assert create["request"]["path"] == "/api/v2/persons" and create["extract"] == {"customer": "$.data"}
    assert create["request"]["body"]["emails"].startswith("{{ [{'value': body.email")
    cases = data["operations"]["customer_cases"]["steps"][1]["request"]
    assert cases == {"method": "GET", "path": "/api/v2/deals", "query": {"person_id": "{{ id }}"}}
    notes = data["operations"]["create_case"]["steps"][1]["steps"][0]["request"]
    assert notes["path"] == "/v1/notes" and set(notes["body"]) == {"content", "deal_id"}


def test_init_asks_for_the_collections_it_is_not_given(tmp_path) -> None:
    out = str(tmp_path / "asked.yaml")
    result = CliRunner().invoke(main, ["init", SPECS[0], "-o", out], input="persons\ndeals\n-\n")
    assert result.exit_code == 0, result.output
    assert "/persons" in result.stderr.splitlines()[0]  # the collections it offers
    with open(out, encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    assert "interactions" not in data["shapes"]["case"]


def test_an_unknown_collection_is_refused_with_what_there_is(tmp_path) -> None:
    result = CliRunner().invoke(main, ["init", SPECS[0], "--customer", "/people", "--case", "/deals",
                                       "--note", "-"])
    assert result.exit_code == 1
    assert "No collection /people for the customer in the description" in result.stderr
    assert "/persons" in result.stderr
