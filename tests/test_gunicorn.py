"""Gunicorn run by hand: the same app factory and our gunicorn config module, configured by environment.

README documents ``MAPPER_MAPPING=... gunicorn -c python:mapper.service.gunicorn_conf
'mapper.service.app:create_app()'`` next to ``serve.py`` (tests/test_server.py);
this starts exactly that against the demo CRM and calls it as Khoros would.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.support.healthz import wait_for_health
from tests.support.khoros import KhorosClient
from tests.support.live_server import free_port
from tests.targets.registry import ROOT

TOKEN = "gunicorn-test-token-0123456789"


@pytest.fixture(scope="module")
def gunicorn_server(demo_env: dict[str, str]) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, **demo_env, "MAPPER_MAPPING": os.path.join(ROOT, "mappings", "demo.yaml"),
           "MAPPER_AUTH_TOKENS": f"old-token-being-rotated,{TOKEN}", "MAPPER_BIND": f"127.0.0.1:{port}",
           "MAPPER_WORKERS": "2", "MAPPER_THREADS": "4"}
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "python:mapper.service.gunicorn_conf",
         "mapper.service.app:create_app()"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(url, process, "gunicorn", output=lambda: process.stdout.read() if process.stdout else "")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stdout:
            process.stdout.close()


def test_gunicorn_serves_the_khoros_api_with_rotated_tokens(gunicorn_server: str) -> None:
    for token in (TOKEN, "old-token-being-rotated"):
        khoros = KhorosClient(gunicorn_server, token)
        answer = khoros.meta("customer")
        assert answer.status == 200
        assert {"id", "uri"} <= {f["name"] for f in answer.body["fields"]}
    found = KhorosClient(gunicorn_server, TOKEN).search({"email": "jane@example.com"})
    assert found.status == 200
    assert [c["email"] for c in found.body] == ["jane@example.com"]


def test_gunicorn_refuses_a_wrong_token(gunicorn_server: str) -> None:
    answer = KhorosClient(gunicorn_server, "nope").meta("customer")
    assert answer.status == 401
