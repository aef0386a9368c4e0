"""The engine's events reach Prometheus, labelled with the tenant of the request.

Real HTTP on loopback: a small CRM that rate-limits, refuses expired tokens and
hands out OAuth tokens; the engine's client and OAuth signer call it inside a
request context, as they do under the Flask app.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask, Response, jsonify, request
from jsonpath_ng.ext import parse
from prometheus_client import REGISTRY

from mapper.core import context
from mapper.core.auth import OAuth2
from mapper.core.budget import Deadline
from mapper.core.upstream import Client, Outbound
from mapper.service import metrics
from tests.support.live_server import LiveServer, serve


def crm_app() -> Flask:
    app = Flask("metrics-crm")
    state = {"limited": 0, "tokens": 0}

    @app.get("/limited")
    def limited() -> Response | tuple[Response, int, dict[str, str]]:
        state["limited"] += 1
        if state["limited"] % 2:
            return jsonify({"error": "slow down"}), 429, {"Retry-After": "0"}
        return jsonify({"ok": True})

    @app.post("/oauth/token")
    def token() -> Response:
        state["tokens"] += 1
        return jsonify({"access_token": f"token-{state['tokens']}", "expires_in": 3600})

    @app.get("/private")
    def private() -> Response | tuple[Response, int]:
        if request.headers.get("Authorization") == "Bearer token-1":
            return jsonify({"error": "expired"}), 401
        return jsonify({"ok": True})

    return app


@pytest.fixture(scope="module")
def crm() -> Iterator[LiveServer]:
    metrics.install()
    with serve(crm_app()) as live:
        yield live


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_429_waits_are_counted_for_the_tenant(crm: LiveServer) -> None:
    before = value("mapper_crm_rate_limit_waits_total", tenant="metrics-a")
    client = Client(call_timeout=5, max_body_bytes=10_000, sleep=lambda seconds: None)
    with context.request("t1", tenant="metrics-a"):
        answer = client.send(Outbound("GET", crm.url + "/limited"), Deadline(8))
    assert answer.status == 200
    assert value("mapper_crm_rate_limit_waits_total", tenant="metrics-a") == before + 1
    client.close()


def test_token_fetches_and_the_retry_after_an_expired_token_are_counted(crm: LiveServer) -> None:
    signer = OAuth2({"token_url": crm.url + "/oauth/token", "client_id": "cid", "client_secret": "secret"},
                    parse("$.access_token"), parse("$.expires_in"), {}, None)
    client = Client(call_timeout=5, max_body_bytes=10_000, signer=signer)
    with context.request("t2", tenant="metrics-b"):
        answer = client.send(Outbound("GET", crm.url + "/private"), Deadline(8))
    assert answer.status == 200
    assert value("mapper_crm_token_refreshes_total", tenant="metrics-b", outcome="ok") == 2
    assert value("mapper_crm_retries_total", tenant="metrics-b", reason="expired_credentials") == 1
    client.close()


def test_replays_and_calls_without_an_answer_are_counted() -> None:
    metrics.install()
    with context.request("t3", tenant="metrics-c", operation="create_case") as ctx:
        context.idempotent_replay()
        context.crm_call("create", "crm_timeout", 7.5)
        assert ctx.crm_calls == 1
    assert value("mapper_idempotent_replays_total", tenant="metrics-c") == 1
    assert value("mapper_crm_calls_total", tenant="metrics-c", operation="create_case", step="create",
                 status="crm_timeout") == 1
    assert value("mapper_crm_call_seconds_count", tenant="metrics-c", operation="create_case", step="create") == 1
