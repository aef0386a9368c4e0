"""What every newer vendor fake shares: recording requests, queued faults, ids.

The Zendesk, HubSpot, Freshdesk, ServiceNow and Dynamics fakes use this one
module so that each fake file holds only what its vendor documents (routes,
envelopes, statuses, paging and error bodies). The Salesforce fake keeps its
own request record: it carries what Salesforce makes of a request (the parsed
SOQL, an OAuth form body), and its faults are aimed at the token endpoint or
the API.

    RecordedRequest   one request as received (raw query string kept)
    Fault             a canned answer for the next request
    FakeState         the lock, the id counter, the request log, the fault queue
    record_request    call first in a fake's ``before_request``
    render            a JSON / text / empty answer
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

from flask import Response, jsonify, request


@dataclass(frozen=True)
class RecordedRequest:
    """One request exactly as the fake received it.

    ``query_string`` is the raw, still percent-encoded string, so a test can
    prove what went over the wire; ``query`` is the decoded form. Headers and
    body stay out of ``repr`` because the headers carry credentials.
    """

    method: str
    path: str
    query_string: str
    query: dict[str, list[str]]
    headers: dict[str, str] = field(repr=False)
    body: bytes = field(repr=False)
    json: Any = field(repr=False)

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == wanted), None)

    def arg(self, name: str) -> str | None:
        """The decoded value of one query parameter (the first, if repeated)."""
        values = self.query.get(name)
        return values[0] if values else None


@dataclass(frozen=True)
class Fault:
    """A canned answer for the next request: JSON (dict/list), text, or empty."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


class FakeState:
    """The shared knobs: ``requests`` (what arrived), ``fail_next`` (what to answer next)."""

    def __init__(self, first_id: int = 1001) -> None:
        self.lock = threading.RLock()
        self.requests: list[RecordedRequest] = []
        self._faults: deque[Fault] = deque()
        self._ids = itertools.count(first_id)

    def next_id(self) -> int:
        with self.lock:
            return next(self._ids)

    @staticmethod
    def now() -> str:
        return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def fail_next(self, status: int, body: Any = None, headers: dict[str, str] | None = None,
                  *, times: int = 1) -> None:
        with self.lock:
            for _ in range(times):
                self._faults.append(Fault(status, body, dict(headers or {})))

    def take_fault(self) -> Fault | None:
        with self.lock:
            return self._faults.popleft() if self._faults else None

    def requests_to(self, method: str, path: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == method.upper() and r.path == path]


def record_request(state: FakeState) -> None:
    """Append the current request to ``state.requests``."""
    raw_query = request.query_string.decode("latin-1")
    body = request.get_data(cache=True)
    with state.lock:
        state.requests.append(RecordedRequest(
            method=request.method, path=request.path, query_string=raw_query,
            query=parse_qs(raw_query, keep_blank_values=True), headers=dict(request.headers),
            body=body, json=request.get_json(silent=True) if body else None))


def render(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    """JSON for a dict or list, text for a string, an empty body for ``None``."""
    if isinstance(body, (dict, list)):
        response = jsonify(body)
        response.status_code = status
    else:
        response = Response(b"" if body is None else str(body), status,
                            mimetype=None if body is None else "text/plain")
    response.headers.update(headers or {})
    return response


class ApiError(Exception):
    """Raised by a fake's views; rendered by the fake's error handler."""

    def __init__(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.status, self.body, self.headers = status, body, dict(headers or {})
