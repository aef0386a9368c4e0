"""A reverse proxy in front of a real CRM that makes one chosen request fail.

Tests of retried writes need a CRM call to fail at an exact point (the
second interaction write of a case create, say) against the real CRM behind
it. The proxy forwards everything, keeping the ``Host`` header it was sent so
that links a CRM builds from it point back at the proxy, and a rule picks the
N-th request matching a method and path pattern:

* ``refuse``: not forwarded; the CRM is "unavailable" (503). The write did not land.
* ``lose``: forwarded (the CRM applies it), but the answer is replaced by a 502.
* ``outage``: not forwarded, and neither is any request after it (503) until
  :meth:`FailingProxy.heal`: the whole Khoros request fails and only the
  agent's retry can finish the work.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

import requests
from flask import Flask, Response, request

from tests.support.live_server import LiveServer

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-encoding", "content-length", "te",
              "trailer", "upgrade", "proxy-authenticate", "proxy-authorization"}
UNAVAILABLE = "<html><body><h1>503 Service Unavailable</h1></body></html>"


@dataclass
class Rule:
    method: str
    path: re.Pattern[str]
    nth: int
    how: str
    matched: int = 0
    fired: bool = False


class FailingProxy:
    """``url`` is the proxy's base URL; requests to it go to ``target``."""

    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.rule: Rule | None = None
        self.down = False
        self.failed: list[str] = []  # "METHOD /path" of each request made to fail
        self.seen: list[str] = []  # "METHOD /path" of every request, failed or not
        self._lock = threading.Lock()
        self._session = requests.Session()
        self._server = LiveServer(self._app())
        self.url = self._server.url

    def start(self) -> FailingProxy:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()
        self._session.close()

    def fail(self, method: str, path: str, nth: int = 1, how: str = "refuse") -> None:
        """Make the ``nth`` request (counted from now) whose path matches ``path`` fail once."""
        assert how in ("refuse", "lose", "outage")
        with self._lock:
            self.rule = Rule(method.upper(), re.compile(path), nth, how)
            self.down = False

    def heal(self) -> None:
        with self._lock:
            self.rule = None
            self.down = False

    def _decide(self, method: str, path: str) -> str | None:
        with self._lock:
            self.seen.append(f"{method} {path}")
            if self.down:
                self.failed.append(f"{method} {path}")
                return "refuse"
            rule = self.rule
            if rule is None or rule.fired or rule.method != method or not rule.path.fullmatch(path):
                return None
            rule.matched += 1
            if rule.matched < rule.nth:
                return None
            rule.fired = True
            self.failed.append(f"{method} {path}")
            if rule.how == "outage":
                self.down = True
                return "refuse"
            return rule.how

    def _app(self) -> Flask:
        app = Flask("failing-proxy")
        methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]

        @app.route("/", defaults={"path": ""}, methods=methods)
        @app.route("/<path:path>", methods=methods)
        def forward(path: str) -> Response:
            decision = self._decide(request.method, request.path)
            if decision == "refuse":
                return Response(UNAVAILABLE, status=503, mimetype="text/html")
            headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
            raw_uri = request.environ.get("RAW_URI") or request.full_path.rstrip("?")  # as sent, still encoded
            answer = self._session.request(request.method, self.target + raw_uri,
                                           data=request.get_data(), headers=headers, allow_redirects=False,
                                           timeout=30)
            if decision == "lose":
                return Response("<html><body>502 Bad Gateway</body></html>", status=502, mimetype="text/html")
            kept = [(k, v) for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP]
            return Response(answer.content, status=answer.status_code, headers=kept)

        return app
