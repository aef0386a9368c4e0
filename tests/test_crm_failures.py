"""A CRM that is down or hangs still gets the agent a Khoros error in time.

Khoros gives up after 8 s; the agent should instead see our 500 with a
trace id, sooner. These run the shipped json-server mapping against a port
nobody listens on and against a real server that takes 10 s to answer.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator

import pytest
from flask import Flask

from tests.support.khoros import KhorosClient
from tests.support.live_server import LiveServer, free_port
from tests.targets.registry import ROOT

MAPPING = f"{ROOT}/mappings/json-server.yaml"
TRACE = re.compile(r"\(trace ([0-9a-f]{16})\)")


@pytest.fixture(scope="module")
def slow_crm() -> Iterator[str]:
    """A CRM that accepts the connection and answers only after 10 seconds."""
    app = Flask("slow")
    release = threading.Event()

    @app.route("/<path:anything>", methods=["GET", "POST", "PATCH"])
    def hang(anything: str) -> tuple[str, int]:
        release.wait(10)
        return "[]", 200

    server = LiveServer(app).start()
    yield server.url
    release.set()
    server.stop()


def test_refused_connection_is_a_500_with_a_trace_id_well_inside_8_seconds(bridge) -> None:
    khoros: KhorosClient = bridge(MAPPING, {"JSON_SERVER_URL": f"http://127.0.0.1:{free_port()}"})
    started = time.monotonic()
    answer = khoros.search({"email": "jane@example.com"})
    elapsed = time.monotonic() - started
    assert answer.status == 500
    assert answer.body["error"] == "crm_unavailable"
    assert "Could not connect to the CRM" in answer.body["message"]
    match = TRACE.search(answer.body["message"])
    assert match and answer.headers["X-Trace-Id"] == match.group(1)
    assert elapsed < 8


@pytest.mark.parametrize("operation", ["search", "get_case", "create_customer"])
def test_a_crm_that_answers_after_10_seconds_is_cut_off_before_khoros_gives_up(bridge, slow_crm: str,
                                                                               operation: str) -> None:
    khoros: KhorosClient = bridge(MAPPING, {"JSON_SERVER_URL": slow_crm})
    calls = {"search": lambda: khoros.search({"email": "jane@example.com"}),
             "get_case": lambda: khoros.get_case("1"),
             "create_customer": lambda: khoros.create_customer({"lastName": "Doe"})}
    started = time.monotonic()
    answer = calls[operation]()
    elapsed = time.monotonic() - started
    assert answer.status == 500
    assert answer.body["error"] == "crm_timeout"
    assert TRACE.search(answer.body["message"])
    assert elapsed < 8
