"""Recordings replayed offline: every shipped mapping against its golden answers, no CRM.

``tests/recordings/<target>/`` are recorded from the Khoros scenario
(``python -m pytest tests/test_khoros_scenario.py --record-exchanges``).
Here they are replayed through ``mapper test``: each must pass, cover every
operation its mapping maps (and the data model), include error answers, and
a changed golden answer or a changed mapping must fail with a diff, not a
crash.
"""

from __future__ import annotations

import glob
import os
import shutil

import pytest
import yaml
from click.testing import CliRunner

from mapper.core.compiler import compile_file
from mapper.workbench.cli import main
from mapper.workbench.recording import SESSION_FILE, find_recordings, replay

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORDINGS = os.path.join(ROOT, "tests", "recordings")
FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
MAPPINGS = sorted(glob.glob(os.path.join(ROOT, "mappings", "*.yaml")))


def _recording_of(mapping: str) -> str:
    for directory in find_recordings([RECORDINGS]):
        with open(os.path.join(directory, SESSION_FILE), encoding="utf-8") as handle:
            session = yaml.safe_load(handle)
        if os.path.normpath(os.path.join(directory, session["mapping"])) == os.path.normpath(mapping):
            return directory
    raise AssertionError(f"no recording in tests/recordings replays {mapping}")


def _cases(directory: str) -> list[dict]:
    out = []
    for path in sorted(glob.glob(os.path.join(directory, "[0-9]*.yaml"))):
        with open(path, encoding="utf-8") as handle:
            out.append(yaml.load(handle, Loader=FAST_LOADER))  # noqa: S506 (a safe loader)
    return out


@pytest.mark.parametrize("mapping", MAPPINGS, ids=os.path.basename)
def test_every_shipped_mapping_replays_its_recording_offline(mapping: str) -> None:
    result = replay(_recording_of(mapping))
    failures = [f"{c.file}: {c.problem}" for c in result.cases if not c.ok]
    assert not failures, "\n\n".join(failures)
    assert len(result.cases) >= 20


@pytest.mark.parametrize("mapping", MAPPINGS, ids=os.path.basename)
def test_recordings_cover_every_mapped_operation_and_error_answers(mapping: str) -> None:
    compiled = compile_file(mapping)
    cases = _cases(_recording_of(mapping))
    recorded = {c["operation"] for c in cases}
    mapped = {name for name, op in compiled.operations.items() if not op.unsupported}
    assert mapped | {"meta"} <= recorded
    statuses = {c["answer"]["status"] for c in cases}
    assert {404, 422} <= statuses
    assert any(c["exchanges"] and c["answer"]["status"] >= 400 for c in cases), "no CRM error path recorded"


def test_recordings_hold_no_secret_and_no_loopback_port() -> None:
    secrets = ["zd-test-token-123", "sf-client-secret-123", "hs-private-app-token-123", "khoros-test-secret"]
    for path in glob.glob(os.path.join(RECORDINGS, "*", "*.yaml")):
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        assert not any(secret in text for secret in secrets), path
        assert "http://127.0.0.1" not in text, path


@pytest.fixture
def copy_of_json_server(tmp_path) -> str:
    """A copy of the json-server recording whose session names the mapping by absolute path."""
    target = str(tmp_path / "json-server")
    shutil.copytree(_recording_of(os.path.join(ROOT, "mappings", "json-server.yaml")), target)
    _point_at(target, os.path.join(ROOT, "mappings", "json-server.yaml"))
    return target


def _point_at(directory: str, mapping: str) -> None:
    path = os.path.join(directory, SESSION_FILE)
    with open(path, encoding="utf-8") as handle:
        session = yaml.safe_load(handle)
    session["mapping"] = mapping
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(session, handle)


def test_mapper_test_passes_on_a_shipped_recording(copy_of_json_server: str) -> None:
    result = CliRunner().invoke(main, ["test", copy_of_json_server])
    assert result.exit_code == 0, result.output
    last = result.stdout.splitlines()[-1]
    assert last.startswith("All ") and last.endswith(" cases of 1 recording(s) pass.")


def test_a_changed_golden_answer_fails_with_a_diff(copy_of_json_server: str) -> None:
    path = sorted(glob.glob(os.path.join(copy_of_json_server, "*-get_customer.yaml")))[0]
    with open(path, encoding="utf-8") as handle:
        case = yaml.safe_load(handle)
    assert case["answer"]["status"] == 200
    case["answer"]["body"]["lastName"] = "Changed"
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(case, handle)
    result = CliRunner().invoke(main, ["test", copy_of_json_server])
    assert result.exit_code == 1
    assert f"FAIL {path} (get_customer): the Khoros answer differs from the golden one:" in result.stderr
    assert '-    "lastName": "Changed",' in result.stderr
    assert "1 case(s) failed." in result.stderr


def test_a_changed_mapping_fails_with_a_readable_diff_of_the_request(copy_of_json_server: str,
                                                                     tmp_path) -> None:
    with open(os.path.join(ROOT, "mappings", "json-server.yaml"), encoding="utf-8") as handle:
        text = handle.read()
    changed = str(tmp_path / "changed.yaml")
    with open(changed, "w", encoding="utf-8") as handle:
        handle.write(text.replace('path: "/customers/{{ id }}"}', 'path: "/clients/{{ id }}"}'))
    _point_at(copy_of_json_server, changed)
    result = CliRunner().invoke(main, ["test", copy_of_json_server])
    assert result.exit_code == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "call 1 differs from the recording (GET /customers/" in result.stderr
    assert '-  "path": "/customers/' in result.stderr and '+  "path": "/clients/' in result.stderr


def test_a_call_the_recording_lacks_and_one_never_made_are_named(copy_of_json_server: str) -> None:
    for path in sorted(glob.glob(os.path.join(copy_of_json_server, "*-customer_cases.yaml"))):
        with open(path, encoding="utf-8") as handle:
            case = yaml.safe_load(handle)
        if case["answer"]["status"] == 200:
            break
    extra = case["exchanges"][-1]
    case["exchanges"].append(extra)
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(case, handle)
    result = CliRunner().invoke(main, ["test", copy_of_json_server])
    assert result.exit_code == 1
    assert "the mapping made 1 call(s) fewer than recorded; never made: GET /cases" in result.stderr
    assert f"FAIL {path} (customer_cases)" in result.stderr
