"""A CRM stand-in that records every request and answers what a test tells it to.

The vendor fakes imitate one CRM each; this one imitates none. Tests use it
where they need to see exactly what the engine sent (query parameters as the
CRM decoded them, headers, body) for a mapping whose real target cannot
report that, or where the answer itself is the hostile part (a CRM that
echoes credentials back in every error shape).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, Response, request


@dataclass(frozen=True)
class Seen:
    """One request as the CRM received it. Headers stay out of ``repr``: they hold credentials."""

    method: str
    path: str
    query: tuple[tuple[str, str], ...]
    headers: dict[str, str] = field(repr=False)
    body: bytes = field(repr=False)

    @property
    def json(self) -> Any:
        try:
            return json.loads(self.body) if self.body else None
        except ValueError:
            return None


Reply = tuple[int, Any, dict[str, str]]  # status, body (str is sent as is, anything else as JSON), headers


class RecordingCrm:
    """``answer(seen)`` decides every reply; ``seen`` lists the requests, oldest first."""

    def __init__(self, answer: Callable[[Seen], Reply]) -> None:
        self.answer = answer
        self.seen: list[Seen] = []
        self._lock = threading.Lock()

    def app(self) -> Flask:
        app = Flask(__name__)

        @app.route("/", defaults={"path": ""}, methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
        @app.route("/<path:path>", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
        def any_path(path: str) -> Response:
            seen = Seen(request.method, request.path, tuple(request.args.items(multi=True)),
                        dict(request.headers), request.get_data())
            with self._lock:
                self.seen.append(seen)
            status, body, headers = self.answer(seen)
            if isinstance(body, str):
                return Response(body, status=status, headers=headers,
                                mimetype=headers.get("Content-Type", "text/html"))
            return Response(json.dumps(body), status=status, headers=headers, mimetype="application/json")

        return app
