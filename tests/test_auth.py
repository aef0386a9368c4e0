"""Signers put the CRM credential where the CRM looks for it.

Checked on a real loopback CRM that records every request. The OAuth tests
pin the sharing contract: one token for many calls (and threads), exactly
one re-fetch when the CRM says it expired, values from the token answer
exposed to templates, and a refused token request as ``crm_auth_failed``.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
from flask import Flask, Response, jsonify, request
from jsonpath_ng.ext import parse

from mapper.core.auth import SIGNERS, BasicAuth, BearerAuth, HeaderAuth, NoAuth, OAuth2, QueryAuth
from mapper.core.budget import Deadline
from mapper.core.templating import compile_value
from mapper.core.upstream import Client, Outbound
from mapper.errors import UpstreamError, UpstreamTimeout
from tests.support.live_server import LiveServer, serve


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    args: dict[str, list[str]]
    form: dict[str, str]


@dataclass
class CrmState:
    seen: list[Seen] = field(default_factory=list)
    tokens_issued: int = 0
    valid_token: str | None = None
    token_status: int = 200
    expires_in: int | None = None
    always_401: bool = False
    token_delay: float = 0.0  # the token endpoint answers this late


def crm_app(state: CrmState) -> Flask:
    app = Flask("recording-crm")

    @app.before_request
    def record() -> None:
        state.seen.append(Seen(request.path, dict(request.headers), request.args.to_dict(flat=False),
                               request.form.to_dict()))

    @app.post("/oauth/token")
    def token() -> Response:
        if state.token_delay:
            time.sleep(state.token_delay)
        if state.token_status != 200:
            return Response('{"error": "invalid_client"}', status=state.token_status, mimetype="application/json")
        state.tokens_issued += 1
        state.valid_token = f"tok-{state.tokens_issued}"
        body: dict[str, Any] = {"access_token": state.valid_token, "token_type": "bearer",
                                "instance_url": "https://eu12.crm.example"}
        if state.expires_in is not None:
            body["expires_in"] = state.expires_in
        return jsonify(body)

    @app.get("/api/thing")
    def thing() -> Response:
        if state.always_401 or request.headers.get("Authorization") != f"Bearer {state.valid_token}":
            return Response('{"error": "expired"}', status=401, mimetype="application/json")
        return jsonify({"ok": True})

    @app.get("/open")
    def open_route() -> Response:
        return jsonify({"ok": True})

    return app


@pytest.fixture
def state() -> CrmState:
    return CrmState()


@pytest.fixture
def crm(state: CrmState) -> Iterator[LiveServer]:
    with serve(crm_app(state)) as live:
        yield live


def client_with(signer: Any) -> Client:
    return Client(call_timeout=5.0, max_body_bytes=65536, signer=signer)


def call(client: Client, crm: LiveServer, path: str = "/open") -> int:
    return client.send(Outbound("GET", crm.url + path), Deadline(8)).status


# --- static credentials ------------------------------------------------------------------

def test_the_signer_table_lists_what_each_kind_needs():
    assert SIGNERS["bearer"] == (BearerAuth, ("token",))
    assert SIGNERS["basic"] == (BasicAuth, ("username", "password"))
    assert SIGNERS["header"][1] == SIGNERS["query"][1] == ("name", "value")
    assert SIGNERS["oauth2"][0] is OAuth2
    assert SIGNERS["none"] == (NoAuth, ())


def test_bearer_sends_an_authorization_header(crm, state):
    client = client_with(BearerAuth({"token": "abc123"}))
    call(client, crm)
    client.close()
    assert state.seen[0].headers["Authorization"] == "Bearer abc123"


def test_basic_sends_base64_user_and_password(crm, state):
    client = client_with(BasicAuth({"username": "agent@example.com", "password": "p:w"}))
    call(client, crm)
    client.close()
    scheme, encoded = state.seen[0].headers["Authorization"].split(" ")
    assert scheme == "Basic"
    assert base64.b64decode(encoded).decode() == "agent@example.com:p:w"


def test_header_sends_the_named_header(crm, state):
    client = client_with(HeaderAuth({"name": "X-Api-Key", "value": "k-123"}))
    call(client, crm)
    client.close()
    assert state.seen[0].headers["X-Api-Key"] == "k-123"
    assert "Authorization" not in state.seen[0].headers


def test_query_adds_the_named_parameter_and_keeps_the_others(crm, state):
    client = client_with(QueryAuth({"name": "api_key", "value": "k-123"}))
    client.send(Outbound("GET", crm.url + "/open", params=[("q", "x")]), Deadline(8))
    client.close()
    assert state.seen[0].args == {"q": ["x"], "api_key": ["k-123"]}


def test_signing_does_not_change_the_request_it_was_given(crm):
    client = client_with(QueryAuth({"name": "api_key", "value": "k-123"}))
    outbound = Outbound("GET", crm.url + "/open")
    client.send(outbound, Deadline(8))
    client.send(outbound, Deadline(8))
    client.close()
    assert outbound.params == []


def test_no_auth_sends_no_credentials(crm, state):
    client = client_with(NoAuth({}))
    call(client, crm)
    client.close()
    assert "Authorization" not in state.seen[0].headers
    assert state.seen[0].args == {}


# --- OAuth 2.0 -------------------------------------------------------------------------------

def oauth(crm: LiveServer, *, extra: dict[str, str] | None = None, expires: bool = False,
          refresh_when: str | None = None, **values: Any) -> OAuth2:
    settings = {"token_url": crm.url + "/oauth/token", "client_id": "cid", "client_secret": "csecret", **values}
    return OAuth2(settings, parse("$.access_token"), parse("$.expires_in") if expires else None,
                  {name: parse(path) for name, path in (extra or {}).items()},
                  compile_value(refresh_when, "m.yaml:9 connection.auth.refresh_when") if refresh_when else None)


def test_oauth_fetches_one_token_for_many_calls(crm, state):
    signer = oauth(crm)
    client = client_with(signer)
    statuses = [call(client, crm, "/api/thing") for _ in range(5)]
    client.close()
    assert statuses == [200] * 5
    assert state.tokens_issued == 1
    assert signer.token_requests == 1
    token_request = next(s for s in state.seen if s.path == "/oauth/token")
    assert token_request.form == {"grant_type": "client_credentials", "client_id": "cid",
                                  "client_secret": "csecret"}


def test_oauth_shares_one_token_across_threads(crm, state):
    signer = oauth(crm)
    client = client_with(signer)
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(call(client, crm, "/api/thing"))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    client.close()
    assert results == [200] * 8
    assert state.tokens_issued == 1


def test_oauth_refetches_once_on_401_and_retries_the_call(crm, state):
    signer = oauth(crm)
    client = client_with(signer)
    assert call(client, crm, "/api/thing") == 200
    state.valid_token = "revoked-by-the-crm"
    assert call(client, crm, "/api/thing") == 200
    client.close()
    assert state.tokens_issued == 2
    assert [s.path for s in state.seen] == ["/oauth/token", "/api/thing", "/api/thing", "/oauth/token",
                                            "/api/thing"]


def test_oauth_refetches_only_once_when_the_crm_keeps_refusing(crm, state):
    signer = oauth(crm)
    client = client_with(signer)
    state.always_401 = True
    assert call(client, crm, "/api/thing") == 401
    client.close()
    assert state.tokens_issued == 2
    assert [s.path for s in state.seen].count("/api/thing") == 2


def test_refresh_when_decides_what_means_expired(crm, state):
    signer = oauth(crm, refresh_when="{{ status == 401 and response.error == 'expired' }}")
    client = client_with(signer)
    call(client, crm, "/api/thing")
    state.valid_token = "revoked"
    assert call(client, crm, "/api/thing") == 200
    client.close()
    assert state.tokens_issued == 2


def test_a_token_that_expires_is_fetched_again_and_one_that_lasts_is_not(crm, state):
    state.expires_in = 3600
    lasting = client_with(oauth(crm, expires=True))
    call(lasting, crm, "/api/thing")
    call(lasting, crm, "/api/thing")
    lasting.close()
    assert state.tokens_issued == 1
    state.expires_in = 10  # less than the 30 s renewal margin: stale at once
    short = client_with(oauth(crm, expires=True))
    call(short, crm, "/api/thing")
    call(short, crm, "/api/thing")
    short.close()
    assert state.tokens_issued == 3


def test_oauth_exposes_extra_values_from_the_token_answer(crm):
    signer = oauth(crm, extra={"instance_url": "$.instance_url", "missing": "$.nope"})
    client = client_with(signer)
    signer.ensure(client, Deadline(8))
    client.close()
    assert signer.values == {"instance_url": "https://eu12.crm.example", "missing": None}


def test_oauth_sends_refresh_token_and_scope_when_given(crm, state):
    signer = oauth(crm, grant="refresh_token", refresh_token="rt-1", scope="api")
    client = client_with(signer)
    signer.ensure(client, Deadline(8))
    client.close()
    assert state.seen[0].form == {"grant_type": "refresh_token", "client_id": "cid", "client_secret": "csecret",
                                  "refresh_token": "rt-1", "scope": "api"}


def test_a_refused_token_request_is_crm_auth_failed(crm, state):
    state.token_status = 400
    signer = oauth(crm)
    client = client_with(signer)
    with pytest.raises(UpstreamError) as caught:
        call(client, crm, "/api/thing")
    client.close()
    assert caught.value.code == "crm_auth_failed"
    assert "HTTP 400" in caught.value.message
    assert "csecret" not in caught.value.message
    assert [s.path for s in state.seen] == ["/oauth/token"]


def test_a_token_answer_without_a_token_is_crm_auth_failed(crm):
    signer = OAuth2({"token_url": crm.url + "/oauth/token", "client_id": "cid"}, parse("$.no_such_key"),
                    None, {}, None)
    client = client_with(signer)
    with pytest.raises(UpstreamError) as caught:
        signer.ensure(client, Deadline(8))
    client.close()
    assert caught.value.code == "crm_auth_failed"
    assert "without an access token" in caught.value.message


@pytest.mark.parametrize("status", [429, 503])
def test_a_busy_token_endpoint_is_not_reported_as_refused_credentials(crm, state, status):
    state.token_status = status
    client = client_with(oauth(crm))
    with pytest.raises(UpstreamError) as caught:
        call(client, crm, "/api/thing")
    client.close()
    assert caught.value.code == "crm_error"
    assert f"busy or failing (HTTP {status})" in caught.value.message
    assert "refused" not in caught.value.message


def test_after_a_failed_fetch_concurrent_calls_share_the_failure_instead_of_each_asking(crm, state):
    signer = oauth(crm)
    client = client_with(signer)
    assert call(client, crm, "/api/thing") == 200
    state.valid_token = "revoked-by-the-crm"
    state.token_status = 400

    def attempt(_: int) -> str:
        try:
            return str(call(client, crm, "/api/thing"))
        except UpstreamError as exc:
            return exc.code

    with ThreadPoolExecutor(max_workers=6) as pool:
        outcomes = list(pool.map(attempt, range(6)))
    client.close()
    assert outcomes == ["crm_auth_failed"] * 6
    assert [s.path for s in state.seen].count("/oauth/token") == 2  # the first token, and one failed refresh
    assert all(s.headers.get("Authorization") != "Bearer None" for s in state.seen)


def test_a_request_waits_for_another_requests_token_fetch_only_within_its_own_budget(crm, state):
    state.token_delay = 2.0
    signer = oauth(crm)
    client = client_with(signer)
    first_done = threading.Event()

    def slow_first() -> None:
        try:
            signer.ensure(client, Deadline(8))
        finally:
            first_done.set()

    first = threading.Thread(target=slow_first)
    first.start()
    while not any(s.path == "/oauth/token" for s in state.seen):  # the first holds the lock now
        time.sleep(0.01)
    with pytest.raises(UpstreamTimeout, match="Another request was still fetching an OAuth token"):
        signer.ensure(client, Deadline(1.0))
    assert not first_done.is_set()  # it gave up before the slow fetch ended
    first.join()
    client.close()
