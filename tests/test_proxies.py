"""CRM calls go through the proxy the environment names, though it is read once, not per call.

The CRM's host does not exist (``.invalid``): the only way the call can be
answered is through the loopback HTTP proxy served here, which records the
absolute URL a proxied request carries.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from flask import Flask, Response, jsonify, request

from mapper.core.budget import Deadline
from mapper.core.upstream import Client, Outbound
from mapper.errors import UpstreamUnavailable
from tests.support.live_server import LiveServer, serve

CRM = "http://crm.example.invalid"


@pytest.fixture
def proxy() -> Iterator[tuple[LiveServer, list[str]]]:
    seen: list[str] = []
    app = Flask("proxy")

    @app.route("/<path:rest>")
    def forward(rest: str) -> Response:
        seen.append(f"{request.host}/{rest}")  # a proxied request names the CRM's host
        return jsonify({"via": "proxy", "path": "/" + rest,
                        "credentials": "Authorization" in request.headers})

    with serve(app) as server:
        yield server, seen


def client() -> Client:
    return Client(call_timeout=2.0, max_body_bytes=10_000)


def test_calls_go_through_the_environment_proxy(proxy: tuple[LiveServer, list[str]],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    server, seen = proxy
    monkeypatch.setenv("HTTP_PROXY", server.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    crm = client()
    for path in ("/contacts/1", "/contacts/2"):
        answer = crm.send(Outbound("GET", CRM + path), Deadline(5.0))
        assert answer.body == {"via": "proxy", "path": path, "credentials": False}
    assert seen == ["crm.example.invalid/contacts/1", "crm.example.invalid/contacts/2"]


def test_no_proxy_hosts_are_called_directly(proxy: tuple[LiveServer, list[str]],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    server, seen = proxy
    monkeypatch.setenv("HTTP_PROXY", server.url)
    monkeypatch.setenv("NO_PROXY", "crm.example.invalid")
    with pytest.raises(UpstreamUnavailable):  # direct: the .invalid host cannot be resolved
        client().send(Outbound("GET", CRM + "/contacts/1"), Deadline(5.0))
    assert seen == []


def test_the_environment_is_read_once_per_host(proxy: tuple[LiveServer, list[str]],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    server, seen = proxy
    monkeypatch.setenv("HTTP_PROXY", server.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    crm = client()
    crm.send(Outbound("GET", CRM + "/first"), Deadline(5.0))
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # changed while serving: takes a restart
    assert crm.send(Outbound("GET", CRM + "/second"), Deadline(5.0)).body["via"] == "proxy"
    assert seen == ["crm.example.invalid/first", "crm.example.invalid/second"]


def test_netrc_is_not_read(proxy: tuple[LiveServer, list[str]], monkeypatch: pytest.MonkeyPatch,
                           tmp_path: Path) -> None:
    """A CRM's credentials come from the mapping only, never from a file in the home folder."""
    server, _ = proxy
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password netrc-password-0001\n")
    monkeypatch.setenv("NETRC", str(netrc))
    answer = client().send(Outbound("GET", server.url + "/echo"), Deadline(5.0))
    assert answer.body["credentials"] is False
    plain = requests.get(server.url + "/echo", timeout=5)  # what a session trusting the environment does
    assert plain.json()["credentials"] is True
