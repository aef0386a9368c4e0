"""Schemathesis fuzzes the running demo server against its own ``/openapi.json``.

The server is the README's first command (``python serve.py``: gunicorn,
the demo mapping, the bundled demo CRM), started on a free loopback port.
Schemathesis (pinned in constraints.txt) reads the document the server
serves and runs its phases (examples, coverage of boundaries and invalid
values, then Hypothesis-generated requests, valid and invalid) on all ten
operations, deterministically so that CI is repeatable (set FUZZ_SEED to a
number to explore other inputs: the run is then random from that seed).

Checked on every answer: no 5xx (nothing here makes the CRM fail, so a 500
can only be caused by the input); only statuses the document lists; JSON
content; answers that match their schema; 405 with a true ``Allow`` for
methods a path does not take; and (our own check) every non-2xx body is the
Khoros error JSON with the trace id of its ``X-Trace-Id``. After the run the
server's log must hold no ERROR line and no traceback.

The request count is printed and must reach MIN_REQUESTS over the ten
operations; raising MAX_EXAMPLES fuzzes longer (about 25 requests per extra
example).
"""

from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import schemathesis
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import StopReason, events

from mapper.core.khoros import OPERATIONS
from tests.support.healthz import wait_for_health
from tests.support.live_server import free_port
from tests.targets.registry import ROOT

TOKEN = "fuzzing-khoros-token-0123456789"
MAX_EXAMPLES = 90
MIN_REQUESTS = 2000
CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_schema_conformance", "unsupported_method", "allow_header_conformance", "khoros_error_body")

# Answers seen by khoros_error_body, per operation ("POST /case"); reset by the test.
SEEN: collections.Counter[str] = collections.Counter()
TRACE = re.compile(r"\(trace ([0-9a-f]{16})\)$")


@schemathesis.check
def khoros_error_body(ctx: schemathesis.CheckContext, response: schemathesis.Response,
                      case: schemathesis.Case) -> bool | None:
    """Every answer that is not a success is the Khoros error JSON, with the answer's trace id."""
    SEEN[case.operation.label] += 1
    if response.status_code < 300:
        return None
    try:
        body = response.json()
    except ValueError as exc:
        raise AssertionError(f"HTTP {response.status_code} with a body that is not JSON") from exc
    assert isinstance(body, dict) and set(body) <= {"error", "message", "fields"}, "not the Khoros error shape"
    assert isinstance(body.get("error"), str) and body["error"], "no error code"
    found = TRACE.search(body.get("message") or "")
    assert found, "the message does not end with its trace id"
    assert response.headers.get("x-trace-id") == [found.group(1)], "X-Trace-Id differs from the message's"
    return None


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """``python serve.py`` on a free port, one worker; yields its URL and its log file."""
    folder = tmp_path_factory.mktemp("fuzz")
    log = folder / "server.log"
    port = free_port()
    env = {**os.environ, "MAPPER_AUTH_TOKENS": TOKEN, "DEMO_CRM_DATA": str(folder / "democrm")}
    for name in ("MAPPER_CONFIG", "MAPPER_MAPPING", "DEMO_CRM_URL"):
        env.pop(name, None)
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "serve.py", "--port", str(port), "--workers", "1",
                                    "--threads", "8"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(url, process, "serve.py", 60, log.read_text)
        yield url, log
    finally:
        process.terminate()
        process.wait(timeout=20)


@pytest.mark.slow
def test_fuzzing_finds_no_500_no_undocumented_status_and_no_non_json_body(
        demo_server: tuple[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    url, log = demo_server
    served = requests.get(url + "/openapi.json", headers={"Authorization": TOKEN}, timeout=10)
    assert served.status_code == 200
    seed = os.environ.get("FUZZ_SEED", "").strip()
    config = SchemathesisConfig.from_dict({
        **({"seed": int(seed)} if seed else {}),
        "base-url": url + "/api/v1",
        "headers": {"Authorization": TOKEN},
        "generation": {"max-examples": MAX_EXAMPLES, "deterministic": not seed, "no-shrink": True,
                       "database": "none"},
        "phases": {"stateful": {"enabled": False}},
        "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
    })
    schema = schemathesis.openapi.from_dict(served.json(), config=config)
    SEEN.clear()
    failures: list[str] = []
    stop: StopReason | None = None
    started = time.monotonic()
    for event in schemathesis.engine.from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            for checks in event.recorder.checks.values():
                failures += [f"{event.label}: {check.name}: {check.failure_info.failure.title}"
                             for check in checks if check.failure_info is not None]
        elif isinstance(event, (events.NonFatalError, events.FatalError)):
            failures.append(f"{getattr(event, 'label', '-')}: {type(event.value).__name__}: {event.value}")
        elif isinstance(event, events.EngineFinished):
            stop = event.stop_reason
    seconds = time.monotonic() - started
    total = sum(SEEN.values())
    report = (f"schemathesis: {total} requests in {seconds:.1f} s over {len(SEEN)} operations: "
              + ", ".join(f"{label} {n}" for label, n in sorted(SEEN.items())))
    with capsys.disabled():  # shown in every run, CI included, not only on failure
        print(f"\n{report}")
    assert not failures, "\n".join(sorted(set(failures)))
    assert stop == StopReason.COMPLETED
    documented = {f"{op.method} {op.rule.replace('<id>', '{id}')}" for op in OPERATIONS} | {"GET /meta/object/{type}"}
    assert set(SEEN) == documented and len(documented) == 10
    assert total >= MIN_REQUESTS
    logged = log.read_text()
    assert "/api/v1/" in logged  # the log is the server's, and it saw the requests
    assert " ERROR " not in logged and "Traceback" not in logged
