"""CRM calls over real loopback HTTP: answers, failures and the Khoros budget.

A small Flask CRM serves every behaviour the client must handle: JSON and
text answers, a hang, a refused port, an oversized body, a slow drip and
rate limiting. Waits for ``Retry-After`` go through an injected sleep so the
tests can see them without spending the time.
"""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from flask import Flask, Response, jsonify, request

from mapper.core.budget import Deadline
from mapper.core.upstream import Client, Outbound
from mapper.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable
from tests.support.live_server import LiveServer, free_port, serve


@dataclass
class CrmState:
    hits: list[str] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    rate_limited: int = 0
    flaky: int = 0  # how many answers /flaky still spoils


def crm_app(state: CrmState) -> Flask:
    app = Flask("fake-crm")

    @app.before_request
    def count() -> None:
        state.hits.append(request.path)

    @app.get("/json")
    def as_json() -> Response:
        return jsonify({"id": 478, "name": "Jane"})

    @app.get("/text")
    def as_text() -> Response:
        return Response("<html>Service Unavailable</html>", status=503, mimetype="text/html")

    @app.get("/empty")
    def empty() -> Response:
        return Response(status=204)

    @app.route("/echo", methods=["GET", "POST", "PATCH"])
    def echo() -> Response:
        return jsonify({"method": request.method, "args": request.args.to_dict(flat=False),
                        "json": request.get_json(silent=True), "form": request.form.to_dict(),
                        "headers": {k: v for k, v in request.headers.items()}})

    @app.route("/flaky/<kind>", methods=["GET", "POST"])
    def flaky(kind: str) -> Response:
        if state.flaky > 0:
            state.flaky -= 1
            if kind == "html":
                return Response("<!DOCTYPE html><html>Bad gateway</html>", status=200, mimetype="text/html")
            return Response("Service Unavailable", status=503, mimetype="text/plain")
        return jsonify({"ok": True})

    @app.get("/plain-json")
    def plain_json() -> Response:  # JSON labelled text/plain, no charset: UTF-8 is the only sane reading
        response = Response('{"name": "josé"}'.encode())
        response.headers["Content-Type"] = "text/plain"
        return response

    @app.get("/bomb")
    def bomb() -> Response:
        return Response(gzip.compress(b"0" * 20_000_000), mimetype="application/json",
                        headers={"Content-Encoding": "gzip"})

    @app.route("/hang", methods=["GET", "POST"])
    def hang() -> Response:
        state.release.wait(10)  # a CRM that sleeps 10 s (released early when the test ends)
        return jsonify({"late": True})

    @app.get("/big")
    def big() -> Response:
        return Response("x" * 10_000, mimetype="text/plain")

    @app.get("/drip")
    def drip() -> Response:
        def slowly() -> Iterator[bytes]:
            for _ in range(40):
                if state.release.wait(0.1):
                    return
                yield b" "
        return Response(slowly(), mimetype="text/plain")

    @app.get("/drip-sized")
    def drip_sized() -> Response:
        def slowly() -> Iterator[bytes]:
            for _ in range(40):
                if state.release.wait(0.1):
                    return
                yield b" "
        return Response(slowly(), mimetype="text/plain", headers={"Content-Length": "40"})

    @app.get("/stall")
    def stall() -> Response:
        def then_nothing() -> Iterator[bytes]:
            yield b'{"partial": '
            state.release.wait(10)
        return Response(then_nothing(), mimetype="application/json", headers={"Content-Length": "100"})

    @app.get("/gzip")
    def gzipped() -> Response:
        body = gzip.compress(json.dumps({"zipped": True}).encode())
        return Response(body, mimetype="application/json", headers={"Content-Encoding": "gzip"})

    @app.get("/limited")
    def limited() -> Response:
        if state.rate_limited > 0:
            state.rate_limited -= 1
            return Response("slow down", status=429, headers={"Retry-After": "1"})
        return jsonify({"ok": True})

    @app.get("/limited-silently")
    def limited_silently() -> Response:
        if state.rate_limited > 0:
            state.rate_limited -= 1
            return Response("slow down", status=429)  # no Retry-After, as some CRMs do
        return jsonify({"ok": True})

    @app.get("/redirect")
    def redirect() -> Response:
        return Response(status=302, headers={"Location": "/json"})

    return app


@pytest.fixture
def state() -> CrmState:
    return CrmState()


@pytest.fixture
def crm(state: CrmState) -> Iterator[LiveServer]:
    with serve(crm_app(state)) as live:
        try:
            yield live
        finally:
            state.release.set()


@dataclass
class Sleeps:
    """An injected sleep that records the wait instead of spending it."""

    waits: list[float] = field(default_factory=list)

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def client(sleeps: Sleeps) -> Iterator[Client]:
    client = Client(call_timeout=5.0, max_body_bytes=4096, sleep=sleeps)
    yield client
    client.close()


def get(crm: LiveServer, path: str, **kwargs: Any) -> Outbound:
    return Outbound("GET", crm.url + path, **kwargs)


# --- answers ------------------------------------------------------------------------------

def test_a_json_answer_is_parsed(client, crm):
    answer = client.send(get(crm, "/json"), Deadline(8))
    assert (answer.status, answer.body, answer.ok) == (200, {"id": 478, "name": "Jane"}, True)
    assert answer.headers["Content-Type"] == "application/json"


def test_a_text_answer_stays_text(client, crm):
    answer = client.send(get(crm, "/text"), Deadline(8))
    assert answer.status == 503
    assert not answer.ok
    assert answer.body == "<html>Service Unavailable</html>"
    assert answer.text == answer.body


def test_an_empty_answer_has_no_body(client, crm):
    answer = client.send(get(crm, "/empty"), Deadline(8))
    assert (answer.status, answer.body) == (204, None)


def test_query_headers_json_and_form_reach_the_crm(client, crm):
    answer = client.send(Outbound("POST", crm.url + "/echo", params=[("tag", "a"), ("tag", "b")],
                                  headers={"X-Api": "v2"}, json_body={"name": "Jane", "n": 1},
                                  has_json_body=True), Deadline(8))
    assert answer.body["args"] == {"tag": ["a", "b"]}
    assert answer.body["json"] == {"name": "Jane", "n": 1}
    assert answer.body["headers"]["X-Api"] == "v2"
    form = client.send(Outbound("POST", crm.url + "/echo", form={"grant_type": "x"}), Deadline(8))
    assert form.body["form"] == {"grant_type": "x"}


def test_an_empty_json_body_is_still_sent_as_json(client, crm):
    answer = client.send(Outbound("PATCH", crm.url + "/echo", json_body=[], has_json_body=True), Deadline(8))
    assert answer.body["json"] == []


def test_redirects_are_answers_not_followed(client, crm, state):
    answer = client.send(get(crm, "/redirect"), Deadline(8))
    assert answer.status == 302
    assert state.hits == ["/redirect"]


def test_describe_shows_method_and_path_but_no_host_or_query():
    outbound = Outbound("GET", "https://user:pw@crm.example/api/contacts/?api_key=s3cret")
    assert outbound.describe() == "GET /api/contacts/"


# --- failures -----------------------------------------------------------------------------

def test_a_crm_that_hangs_is_a_timeout_inside_the_deadline(crm):
    client = Client(call_timeout=20.0, max_body_bytes=4096)
    deadline = Deadline(1.5)
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout) as caught:
        client.send(get(crm, "/hang"), deadline)
    client.close()
    assert time.monotonic() - started < 1.5
    assert caught.value.code == "crm_timeout"
    assert "GET /hang" in caught.value.message
    assert caught.value.status == 500


def test_a_reused_connection_blocks_and_its_watch_still_cuts_a_hang():
    # Once connected, a call's socket has no timeout of its own (one would cost a poll before
    # every send and receive): the watchdog alone ends a call on a reused connection.
    listener = socket.create_server(("127.0.0.1", 0))
    requests_seen: list[bytes] = []
    done = threading.Event()

    def keep_alive_then_hang() -> None:  # one connection: answers the first request, not the second
        conn, _ = listener.accept()
        with conn:
            while len(requests_seen) < 2:
                data = conn.recv(65536)
                if not data:
                    return
                requests_seen.append(data)
                if len(requests_seen) == 1:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: 2\r\n\r\n{}")
            done.wait(10)

    server = threading.Thread(target=keep_alive_then_hang, daemon=True)
    server.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    client = Client(call_timeout=20.0, max_body_bytes=4096)
    try:
        assert client.send(Outbound("GET", url + "/first"), Deadline(8)).body == {}
        pools = client.session.get_adapter(url).poolmanager.pools  # urllib3 forbids iterating it
        [pooled] = [c for key in pools.keys() for c in list(pools[key].pool.queue)  # noqa: SIM118
                    if c is not None and c.sock]
        assert pooled.sock.gettimeout() is None  # blocking: no poll before each send and receive
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout):
            client.send(Outbound("GET", url + "/second"), Deadline(1.5))
        assert time.monotonic() - started < 1.5
        assert [r.split(b" ")[1] for r in requests_seen] == [b"/first", b"/second"]  # one connection
    finally:
        done.set()
        client.close()
        listener.close()


def test_a_tls_handshake_that_never_ends_says_nothing_was_sent():
    # The CRM's port accepts connections but never answers the TLS hello: urllib3 calls that a
    # read timeout, yet no request was written, and the message must not say it was sent.
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True).start()
    client = Client(call_timeout=20.0, max_body_bytes=4096)
    try:
        with pytest.raises(UpstreamTimeout) as caught:
            client.send(Outbound("POST", f"https://127.0.0.1:{listener.getsockname()[1]}/cases"), Deadline(1.5))
        assert "nothing was sent" in caught.value.message
        assert "may have been applied" not in caught.value.message
    finally:
        client.close()
        for sock in accepted:
            sock.close()
        listener.close()


def test_a_timeout_on_a_write_may_have_applied_it_but_not_on_a_read_sent_as_post(crm):
    client = Client(call_timeout=0.5, max_body_bytes=4096)
    with pytest.raises(UpstreamTimeout) as write:
        client.send(Outbound("POST", crm.url + "/hang", json_body={}, has_json_body=True), Deadline(8))
    with pytest.raises(UpstreamTimeout) as search:  # a search some CRMs take as POST: request.safe
        client.send(Outbound("POST", crm.url + "/hang", json_body={}, has_json_body=True), Deadline(1.2), safe=True)
    client.close()
    assert "(it may have been applied)" in write.value.message
    assert "was sent POST /hang" in search.value.message
    assert "applied" not in search.value.message


def test_the_call_timeout_caps_a_call_even_when_the_budget_is_larger(crm):
    client = Client(call_timeout=0.3, max_body_bytes=4096)
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        client.send(get(crm, "/hang"), Deadline(8))
    client.close()
    assert time.monotonic() - started < 2.0


def test_a_crm_that_drips_its_body_cannot_hold_us_past_the_deadline(crm):
    client = Client(call_timeout=5.0, max_body_bytes=4096)
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        client.send(get(crm, "/drip"), Deadline(1.5))
    client.close()
    assert time.monotonic() - started < 2.5


def test_a_crm_that_drips_a_sized_body_cannot_hold_us_past_the_deadline(crm):
    client = Client(call_timeout=5.0, max_body_bytes=4096)
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        client.send(get(crm, "/drip-sized"), Deadline(1.5))
    client.close()
    assert time.monotonic() - started < 2.5


def test_a_crm_that_stalls_mid_body_is_a_timeout_not_a_refusal(crm):
    client = Client(call_timeout=0.5, max_body_bytes=4096)
    with pytest.raises(UpstreamTimeout):
        client.send(get(crm, "/stall"), Deadline(8))
    client.close()


def test_a_compressed_answer_is_decoded(client, crm):
    assert client.send(get(crm, "/gzip"), Deadline(8)).body == {"zipped": True}


def test_a_spent_budget_does_not_start_a_call(client, crm, state):
    with pytest.raises(UpstreamTimeout, match="was not started"):
        client.send(get(crm, "/json"), Deadline(0.3))
    assert state.hits == []


def test_a_refused_port_is_unavailable_naming_the_host_not_the_query(client):
    port = free_port()
    outbound = Outbound("GET", f"http://127.0.0.1:{port}/api/contacts?api_key=s3cret-key",
                        params=[("token", "other-s3cret")])
    with pytest.raises(UpstreamUnavailable) as caught:
        client.send(outbound, Deadline(8))
    message = caught.value.message
    assert f"127.0.0.1:{port}" in message
    assert "GET /api/contacts" in message
    assert "s3cret" not in message
    assert caught.value.code == "crm_unavailable"


def test_credentials_in_the_base_url_are_not_named_in_messages(client):
    port = free_port()
    with pytest.raises(UpstreamUnavailable) as caught:
        client.send(Outbound("GET", f"http://admin:pa55word@127.0.0.1:{port}/x"), Deadline(8))
    assert "pa55word" not in caught.value.message
    assert f"127.0.0.1:{port}" in caught.value.message


def test_a_body_larger_than_the_limit_is_an_upstream_error(client, crm):
    with pytest.raises(UpstreamError) as caught:
        client.send(get(crm, "/big"), Deadline(8))
    assert type(caught.value) is UpstreamError
    assert "more than 4096 bytes" in caught.value.message
    assert "max_response_bytes" in caught.value.message


# --- 429 ------------------------------------------------------------------------------------

def test_a_429_is_retried_after_retry_after_when_it_fits_the_budget(client, crm, state, sleeps):
    state.rate_limited = 1
    answer = client.send(get(crm, "/limited"), Deadline(8))
    assert answer.status == 200
    assert sleeps.waits == [1.0]
    assert state.hits == ["/limited", "/limited"]


def test_a_429_is_answered_as_is_when_the_wait_does_not_fit_the_budget(client, crm, state, sleeps):
    state.rate_limited = 1
    answer = client.send(get(crm, "/limited"), Deadline(1.2))
    assert answer.status == 429
    assert sleeps.waits == []
    assert state.hits == ["/limited"]


def test_429_retries_stop_after_the_configured_number(crm, state, sleeps):
    client = Client(call_timeout=5.0, max_body_bytes=4096, max_429_retries=2, sleep=sleeps)
    state.rate_limited = 10
    answer = client.send(get(crm, "/limited"), Deadline(8))
    client.close()
    assert answer.status == 429
    assert sleeps.waits == [1.0, 1.0]
    assert len(state.hits) == 3


def test_a_429_without_retry_after_is_not_retried_by_default(client, crm, state, sleeps):
    state.rate_limited = 1
    answer = client.send(get(crm, "/limited-silently"), Deadline(8))
    assert answer.status == 429
    assert sleeps.waits == []


def test_a_429_without_retry_after_waits_the_mapping_s_default(crm, state, sleeps):
    client = Client(call_timeout=5.0, max_body_bytes=4096, default_429_wait=0.5, sleep=sleeps)
    state.rate_limited = 1
    answer = client.send(get(crm, "/limited-silently"), Deadline(8))
    client.close()
    assert answer.status == 200
    assert sleeps.waits == [0.5]


def test_a_cookie_the_crm_sets_is_never_sent_back() -> None:
    # The session is shared by every Khoros request (and, with tenants, every company):
    # a cookie set for one must not travel with the next.
    from tests.support.recording_crm import RecordingCrm

    crm = RecordingCrm(lambda seen: (200, {}, {"Set-Cookie": "session=for-company-a; Path=/"}))
    with serve(crm.app()) as server:
        client = Client(call_timeout=5, max_body_bytes=1_000_000)
        try:
            for _ in range(2):
                client.send(Outbound("GET", f"{server.url}/contacts"), Deadline(8))
        finally:
            client.close()
    assert [s.headers.get("Cookie") for s in crm.seen] == [None, None]
    assert len(client.session.cookies) == 0


# --- retries and what the messages say (#6) ---------------------------------------------------

@pytest.mark.parametrize("kind", ["503", "html"])
def test_a_read_is_retried_after_a_transient_failure(client, crm, state, kind):
    state.flaky = 2
    answer = client.send(get(crm, f"/flaky/{kind}"), Deadline(8))
    assert (answer.status, answer.body) == (200, {"ok": True})
    assert state.hits == [f"/flaky/{kind}"] * 3


def test_a_read_gives_up_after_two_retries_with_the_crms_answer(client, crm, state):
    state.flaky = 5
    answer = client.send(get(crm, "/flaky/503"), Deadline(8))
    assert answer.status == 503
    assert len(state.hits) == 3


def test_a_write_is_not_retried_after_a_503(client, crm, state):
    state.flaky = 1
    answer = client.send(Outbound("POST", crm.url + "/flaky/503", json_body={}, has_json_body=True), Deadline(8))
    assert answer.status == 503
    assert state.hits == ["/flaky/503"]


def test_a_post_the_mapping_marks_safe_is_retried(client, crm, state):
    state.flaky = 1
    answer = client.send(Outbound("POST", crm.url + "/flaky/503", json_body={}, has_json_body=True),
                         Deadline(8), safe=True)
    assert answer.status == 200
    assert len(state.hits) == 2


def test_no_retry_is_started_when_the_budget_cannot_cover_it(client, crm, state):
    state.flaky = 5
    answer = client.send(get(crm, "/flaky/503"), Deadline(1.2))  # 0.7 s left: less than a useful call
    assert answer.status == 503
    assert state.hits == ["/flaky/503"]


def test_a_refused_write_says_nothing_was_sent(client):
    with pytest.raises(UpstreamUnavailable) as caught:
        client.send(Outbound("POST", f"http://127.0.0.1:{free_port()}/cases", json_body={}, has_json_body=True),
                    Deadline(8))
    assert "Could not connect" in caught.value.message and "nothing was sent" in caught.value.message
    assert caught.value.nothing_sent and caught.value.retry_allowed(safe=False)


def test_a_write_with_no_answer_says_it_may_have_been_applied(crm):
    client = Client(call_timeout=1.0, max_body_bytes=4096)
    with pytest.raises(UpstreamTimeout) as caught:
        client.send(Outbound("POST", crm.url + "/hang", json_body={}, has_json_body=True), Deadline(8))
    client.close()
    assert "it may have been applied" in caught.value.message
    assert "Could not connect" not in caught.value.message
    assert not caught.value.retry_allowed(safe=False)


def test_a_retry_after_that_leaves_no_time_for_the_retry_is_not_waited(client, crm, state, sleeps):
    state.rate_limited = 1
    answer = client.send(get(crm, "/limited"), Deadline(2.4))  # 1.9 s left: 1 s wait + 1 s call do not fit
    assert answer.status == 429
    assert sleeps.waits == []


def test_json_labelled_text_plain_without_charset_is_read_as_utf8(client, crm):
    answer = client.send(get(crm, "/plain-json"), Deadline(8))
    assert answer.body == {"name": "josé"}


def test_a_gzip_bomb_is_stopped_at_the_size_limit(client, crm):
    with pytest.raises(UpstreamError, match="more than 4096 bytes"):
        client.send(get(crm, "/bomb"), Deadline(8))
