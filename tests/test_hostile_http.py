"""Hostile HTTP input, over real sockets, under both servers we ship.

The demo mapping is served twice, by Werkzeug's development server (what
``mapper serve --workers 0`` and the tests use) and by gunicorn with our
configuration (production), with small limits set through the environment.
Each request here is something Khoros never sends: a body too large, too
deep or not text, too many interactions or phone numbers, ids that URL rules
would resolve, methods no route takes, doubled slashes, a body cut short,
tokens with spaces or non-ASCII bytes. Each must get a Khoros error JSON with
the status the contract gives it, never a 500, an HTML page or a redirect.
Requests that ``requests`` would normalise are written to the socket by hand.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests

from mapper.service.app import create_app
from tests.support.healthz import wait_for_health
from tests.support.live_server import free_port, serve
from tests.targets.registry import ROOT

TOKEN = "hostile-http-token-0123456789"
UNICODE_TOKEN = "jeton-clé-ünïcode-ß-0123"
LIMITS = {"MAPPER_MAX_BODY_BYTES": "2000", "MAPPER_MAX_INTERACTIONS": "3", "MAPPER_MAX_LIST_ITEMS": "4",
          "MAPPER_MAX_STRING_CHARS": "300", "MAPPER_MAX_JSON_DEPTH": "8"}
DEMO = os.path.join(ROOT, "mappings", "demo.yaml")


@dataclass
class Raw:
    """An answer read off the socket."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


def raw_request(base: str, head: str, body: bytes = b"", *, half_close: bool = False,
                header_bytes: bytes = b"") -> Raw:
    """Write ``head`` (request line and headers, no blank line) and ``body`` as they are; read the answer.
    ``half_close`` stops sending after the body, as a client that hangs up half way does."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.encode("latin-1") + b"\r\n" + header_bytes + b"Connection: close\r\n\r\n" + body)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head_part, _, rest = data.partition(b"\r\n\r\n")
    lines = head_part.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    if headers.get("transfer-encoding") == "chunked":
        rest = _unchunk(rest)
    return Raw(int(lines[0].split()[1]), headers, rest)


def _unchunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out, data = out + data[:size], data[size + 2:]
    return out


@pytest.fixture(scope="module")
def environ(demo_env: dict[str, str]) -> dict[str, str]:
    return {**demo_env, **LIMITS, "MAPPER_AUTH_TOKENS": f"{TOKEN},{UNICODE_TOKEN}"}


@pytest.fixture(scope="module")
def werkzeug_server(environ: dict[str, str]) -> Iterator[str]:
    with serve(create_app(mapping_path=DEMO, environ=environ)) as live:
        yield live.url


@pytest.fixture(scope="module")
def gunicorn_server(environ: dict[str, str]) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, **environ, "MAPPER_MAPPING": DEMO, "MAPPER_BIND": f"127.0.0.1:{port}",
           "MAPPER_WORKERS": "1", "MAPPER_THREADS": "4"}
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "python:mapper.service.gunicorn_conf",
         "mapper.service.app:create_app()"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(url, process, "gunicorn")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(params=["werkzeug", "gunicorn"])
def server(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue(f"{request.param}_server")


def khoros_error(status: int, headers, body: bytes, expected_status: int, code: str) -> str:
    """The Khoros error contract; returns the message."""
    assert status == expected_status, body[:300]
    content_type = {k.lower(): v for k, v in headers.items()}["content-type"]
    assert content_type == "application/json"
    answer = json.loads(body)
    assert answer["error"] == code
    assert answer["message"].endswith(")") and "(trace " in answer["message"]
    return answer["message"]


def call(server: str, method: str, path: str, body: object = None, *, data: bytes | None = None,
         token: str | bytes = TOKEN) -> requests.Response:
    headers = {"Authorization": token, "Content-Type": "application/json"}
    if body is not None:
        data = json.dumps(body).encode()
    return requests.request(method, server + path, data=data, headers=headers, timeout=10, allow_redirects=False)


def check(answer: requests.Response, status: int, code: str) -> str:
    return khoros_error(answer.status_code, answer.headers, answer.content, status, code)


# --- size, depth, text ----------------------------------------------------------------------------

def test_a_body_over_the_size_limit_is_a_413_naming_the_limit(server: str) -> None:
    answer = call(server, "POST", "/api/v1/customer", {"notes": "x" * 100, "firstName": "y" * 2000})
    message = check(answer, 413, "payload_too_large")
    assert "2000 bytes" in message and "MAPPER_MAX_BODY_BYTES" in message


def test_a_chunked_body_over_the_size_limit_is_a_413(server: str) -> None:
    chunks = iter([b'{"notes": "', b"x" * 1500, b"x" * 1500, b'"}'])  # no Content-Length: sent chunked
    answer = requests.post(server + "/api/v1/customer", data=chunks, timeout=10,
                           headers={"Authorization": TOKEN, "Content-Type": "application/json"})
    check(answer, 413, "payload_too_large")


@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_of_exactly_the_limit_is_read(server: str, chunked: bool) -> None:
    body = b'{"email": "jane@example.com"}'
    for size, status in ((2000, 200), (2001, 413)):
        padded = body + b" " * (size - len(body))  # JSON allows trailing whitespace
        data = iter([padded[:1000], padded[1000:]]) if chunked else padded
        answer = requests.post(server + "/api/v1/customers", data=data, timeout=10,
                               headers={"Authorization": TOKEN, "Content-Type": "application/json"})
        assert answer.status_code == status, answer.text


def test_deep_nesting_is_a_400_naming_the_limit(server: str) -> None:
    # Just over the limit of 8, and 999 levels (what fits in 2,000 bytes; tests/test_limits.py
    # sends 100,000, past the interpreter's recursion limit).
    for body in (b'{"a":' * 9 + b"1" + b"}" * 9, b"[" * 999 + b"]" * 999):
        assert "MAPPER_MAX_JSON_DEPTH" in check(call(server, "POST", "/api/v1/customers", data=body), 400,
                                                "bad_request")


@pytest.mark.parametrize(("path", "body"), [
    ("/api/v1/customer/bestmatch", '{"displayName": "\\ud800"}'),
    ("/api/v1/customers", '{"firstName": "a\\udfffb"}'),
    ("/api/v1/customers", '{"\\ud83d": "x"}'),
    ("/api/v1/case", '{"customerId": "1", "title": "t", "interactions": [{"body": "\\udc00"}]}'),
])
def test_a_lone_surrogate_is_a_400(server: str, path: str, body: str) -> None:
    assert "surrogate" in check(call(server, "POST", path, data=body.encode()), 400, "bad_request")


def test_a_surrogate_pair_is_text(server: str) -> None:
    answer = call(server, "POST", "/api/v1/customers", data=b'{"firstName": "\\ud83d\\ude00"}')
    assert answer.status_code == 200


def test_a_long_string_is_a_400_naming_where_and_the_limit(server: str) -> None:
    message = check(call(server, "POST", "/api/v1/customers", {"notes": "n" * 301}), 400, "bad_request")
    assert "'notes'" in message and "MAPPER_MAX_STRING_CHARS" in message
    assert "nnnn" not in message  # the value itself is never echoed


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
def test_numbers_json_does_not_have_are_a_400(server: str, constant: bytes) -> None:
    check(call(server, "POST", "/api/v1/customers", data=b'{"vip": ' + constant + b"}"), 400, "bad_request")


# --- counts that cost CRM calls -------------------------------------------------------------------

def _interaction(n: int) -> dict:
    return {"created": "2024-01-02T03:04:05Z", "body": f"post {n}", "linkUrl": f"https://x.example/{n}",
            "serviceId": str(n), "service": "twitter", "contentType": "post"}


def test_too_many_interactions_is_a_422_on_the_field(server: str) -> None:
    answer = call(server, "POST", "/api/v1/case",
                  {"customerId": "1", "title": "Broken", "interactions": [_interaction(n) for n in range(4)]})
    check(answer, 422, "validation_failed")
    [field] = answer.json()["fields"]
    assert field["name"] == "interactions" and "MAPPER_MAX_INTERACTIONS" in field["errorMessage"]
    answer = call(server, "PATCH", "/api/v1/case/1", {"interactions": [_interaction(n) for n in range(4)]})
    check(answer, 422, "validation_failed")


def test_a_partial_author_is_saved_not_a_500(server: str) -> None:
    """Found by fuzzing: the interaction schema makes every author key optional, and the demo
    mapping read ``author.brandOwned`` unconditionally (a 500 mapping_error)."""
    created = call(server, "POST", "/api/v1/customer", {"firstName": "Partial", "lastName": "Author"})
    assert created.status_code == 201
    post = {**_interaction(1), "author": {"handle": "ann"}}
    answer = call(server, "POST", "/api/v1/case", {"customerId": created.json()["id"], "title": "Partial author",
                                                    "interactions": [post]})
    assert answer.status_code == 201, answer.text
    [back] = call(server, "GET", f"/api/v1/case/{answer.json()['id']}").json()["interactions"]
    assert back["author"]["handle"] == "ann" and back["author"]["brandOwned"] is False


def test_too_many_phone_numbers_is_a_400_naming_the_limit(server: str) -> None:
    answer = call(server, "POST", "/api/v1/customer/bestmatch", {"phoneNumbers": ["+1 555 0100"] * 5})
    message = check(answer, 400, "bad_request")
    assert "'phoneNumbers'" in message and "MAPPER_MAX_LIST_ITEMS" in message
    ok = call(server, "POST", "/api/v1/customer/bestmatch", {"phoneNumbers": ["+1 555 0100"] * 4})
    assert ok.status_code == 200


def test_many_unknown_keys_give_a_short_message(server: str) -> None:
    body = {f"k{i:03}": 1 for i in range(150)}
    message = check(call(server, "POST", "/api/v1/customers", body), 400, "bad_request")
    assert "'k000', 'k001', 'k002', 'k003', 'k004' and 145 more" in message
    assert len(message) < 300


# --- paths and methods ----------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/api/v1/customer/.", "/api/v1/customer/..", "/api/v1/customer/%2E",
                                  "/api/v1/customer/%2e%2E", "/api/v1/case/..", "/api/v1/customer/../cases",
                                  "/api/v1/customer/%2E%2E/cases", "/api/v1/case/%2e"])
def test_dot_ids_are_404(server: str, path: str) -> None:
    answer = raw_request(server, f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {TOKEN}")
    khoros_error(answer.status, answer.headers, answer.body, 404, "not_found")
    answer = raw_request(server, f"PATCH {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {TOKEN}\r\n"
                                 "Content-Type: application/json\r\nContent-Length: 2", b"{}")
    assert answer.status in (404, 405)  # /cases takes no PATCH
    assert answer.json()["error"] in ("not_found", "method_not_allowed")


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("OPTIONS", "/api/v1/customers", "POST"),
    ("PUT", "/api/v1/customers", "POST"),
    ("DELETE", "/api/v1/case/1", "GET, HEAD, PATCH"),
    ("OPTIONS", "/api/v1/meta/object/customer", "GET, HEAD"),
    ("POST", "/api/v1/customer/1/cases", "GET, HEAD"),
])
def test_other_methods_are_a_405_with_allow(server: str, method: str, path: str, allow: str) -> None:
    answer = call(server, method, path)
    check(answer, 405, "method_not_allowed")
    assert answer.headers["Allow"] == allow
    unauthenticated = requests.request(method, server + path, timeout=10)
    check(unauthenticated, 401, "unauthorized")  # the method is checked only for a caller we know


@pytest.mark.parametrize("path", ["/api//v1/customer/1", "/api/v1//customer/1", "/api/v1/customer//1",
                                  "/api", "/api/", "/api/v2/customer/1", "/api/v1/nothing"])
def test_every_path_under_api_is_authenticated_and_never_redirects(server: str, path: str) -> None:
    answer = raw_request(server, f"GET {path} HTTP/1.1\r\nHost: x")
    khoros_error(answer.status, answer.headers, answer.body, 401, "unauthorized")
    answer = raw_request(server, f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {TOKEN}")
    khoros_error(answer.status, answer.headers, answer.body, 404, "not_found")


# --- the Authorization header ----------------------------------------------------------------------

@pytest.mark.parametrize("value", [TOKEN + " ", " " + TOKEN, TOKEN + "\t", f"Bearer  {TOKEN} "])
def test_spaces_around_the_token_are_trimmed_under_every_server(server: str, value: str) -> None:
    answer = raw_request(server, "GET /api/v1/meta/object/customer HTTP/1.1\r\nHost: x",
                         header_bytes=b"Authorization: " + value.encode() + b"\r\n")
    assert answer.status == 200, answer.body


def test_a_non_ascii_token_matches_by_its_utf8_bytes(server: str) -> None:
    for value in (UNICODE_TOKEN, "Bearer " + UNICODE_TOKEN):
        answer = raw_request(server, "GET /api/v1/meta/object/customer HTTP/1.1\r\nHost: x",
                             header_bytes=b"Authorization: " + value.encode("utf-8") + b"\r\n")
        assert answer.status == 200, answer.body
    latin1 = raw_request(server, "GET /api/v1/meta/object/customer HTTP/1.1\r\nHost: x",
                         header_bytes=b"Authorization: " + UNICODE_TOKEN.encode("latin-1", "replace") + b"\r\n")
    khoros_error(latin1.status, latin1.headers, latin1.body, 401, "unauthorized")


# --- Werkzeug's and the server's own errors --------------------------------------------------------

def test_a_body_cut_short_is_a_400_not_a_500(server: str) -> None:
    answer = raw_request(server, f"POST /api/v1/customers HTTP/1.1\r\nHost: x\r\nAuthorization: {TOKEN}\r\n"
                                 "Content-Type: application/json\r\nContent-Length: 100", b'{"email": "a',
                         half_close=True)
    khoros_error(answer.status, answer.headers, answer.body, 400, "bad_request")


def test_broken_chunked_framing_is_a_400_not_a_500(server: str) -> None:
    answer = raw_request(server, f"POST /api/v1/customers HTTP/1.1\r\nHost: x\r\nAuthorization: {TOKEN}\r\n"
                                 "Content-Type: application/json\r\nTransfer-Encoding: chunked",
                         b"zz\r\n{}\r\n0\r\n\r\n", half_close=True)
    khoros_error(answer.status, answer.headers, answer.body, 400, "bad_request")


def test_werkzeug_errors_leave_no_traceback_in_the_log(werkzeug_server: str,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="mapper"):
        raw_request(werkzeug_server, f"POST /api/v1/customers HTTP/1.1\r\nHost: x\r\nAuthorization: {TOKEN}\r\n"
                                     "Content-Length: 100", b'{"email": "a', half_close=True)
        call(werkzeug_server, "POST", "/api/v1/customer", {"notes": "x" * 3000})
        call(werkzeug_server, "OPTIONS", "/api/v1/customers")
    mapper_records = [r for r in caplog.records if r.name.startswith("mapper")]
    assert {r.getMessage().split("error=")[1].split()[0] for r in mapper_records if "error=" in r.getMessage()} \
        == {"bad_request", "payload_too_large", "method_not_allowed"}
    assert all(r.levelno < logging.ERROR and r.exc_info is None for r in mapper_records)
