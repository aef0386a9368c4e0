"""``serve.py --mapping ...`` is the production server: gunicorn, threaded workers, many requests at once.

Bounded stand-in for benchmarks/concurrency.py (256 in flight for 60 s): 32
Khoros requests at once against a CRM that takes 300 ms per call, all of
which must be answered correctly, through the real command.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from flask import Flask, Response, jsonify

from mapper.service.server import settings
from tests.support.healthz import wait_for_health
from tests.support.live_server import LiveServer, free_port, serve
from tests.targets.registry import ROOT

TOKEN = "serve-test-token-0123456789"
IN_FLIGHT = 32
CRM_SECONDS = 0.3


def slow_crm() -> Flask:
    """The demo CRM's customer lookup, answering after 300 ms like a real CRM."""
    app = Flask("slow-crm")

    @app.get("/customers/<cid>")
    def customer(cid: str) -> Response:
        time.sleep(CRM_SECONDS)
        return jsonify({"id": int(cid), "first_name": "Jane", "last_name": f"Doe {cid}",
                        "email": f"jane{cid}@example.com", "phone": None, "twitter": None, "tier": "gold",
                        "vip": False, "notes": None})

    return app


@pytest.fixture(scope="module")
def crm() -> Iterator[LiveServer]:
    with serve(slow_crm()) as live:
        yield live


@pytest.fixture(scope="module")
def production(crm: LiveServer) -> Iterator[tuple[str, list[str]]]:
    """``serve.py --mapping mappings/demo.yaml`` with 2 processes of 16 threads; its output lines."""
    port = free_port()
    env = {**os.environ, "DEMO_CRM_URL": crm.url, "MAPPER_AUTH_TOKENS": TOKEN}
    process = subprocess.Popen(
        [sys.executable, "serve.py", "--mapping", "mappings/demo.yaml", "--port", str(port),
         "--workers", "2", "--threads", "16"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    lines: list[str] = []
    assert process.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(process.stdout or ()), daemon=True)
    reader.start()
    try:
        wait_for_health(url, process, "serve.py", output=lambda: "".join(lines))
        yield url, lines
    finally:
        process.terminate()
        process.wait(timeout=20)
        reader.join(timeout=5)
        process.stdout.close()


def test_serve_holds_32_requests_in_flight_against_a_slow_crm(production):
    url, _ = production

    def lookup(n: int) -> tuple[int, str | None, str]:
        answer = requests.get(f"{url}/api/v1/customer/{n}", headers={"Authorization": TOKEN}, timeout=30)
        return answer.status_code, answer.json().get("lastName"), answer.headers.get("Server", "")

    with ThreadPoolExecutor(IN_FLIGHT) as pool:
        answers = list(pool.map(lookup, range(1, IN_FLIGHT + 1)))
    assert [(status, name) for status, name, _ in answers] == [(200, f"Doe {n}") for n in range(1, IN_FLIGHT + 1)]
    assert all(server.startswith("gunicorn") for _, _, server in answers)


def test_serve_is_gunicorn_with_the_arrival_noting_worker_not_a_development_server(production):
    url, lines = production
    assert requests.get(url + "/healthz", timeout=5).headers["Server"].startswith("gunicorn")
    text = "".join(lines)
    assert "Using worker: mapper.service.server.ArrivalWorker" in text
    assert "development server" not in text.lower()
    assert "2 processes x 16 threads" in text


def test_the_command_line_overrides_the_config_module_and_leaves_the_rest():
    values = settings({"workers": 3, "threads": None})
    assert values["workers"] == 3
    assert values["threads"] == 128  # gunicorn_conf's default: the production figure
    assert values["worker_class"] == "mapper.service.server.ArrivalWorker"


def test_the_worker_hands_the_arrival_it_noted_to_the_app_through_the_environ():
    from mapper.service import server as module
    from mapper.service.app import ARRIVED_KEY

    seen: dict[str, object] = {}

    def app(environ: dict[str, object], start_response: object) -> list[bytes]:
        seen.update(environ)
        return []

    wrapped = module.with_arrival(app)
    module._current.arrived = 123.5  # what ArrivalWorker.handle sets for the request it runs
    try:
        wrapped({}, lambda *a: None)
    finally:
        module._current.arrived = None
    assert seen[ARRIVED_KEY] == 123.5
    seen.clear()
    wrapped({}, lambda *a: None)
    assert ARRIVED_KEY not in seen  # not under our worker: the app takes "now"
