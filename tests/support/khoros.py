"""A small Khoros stand-in: calls our server exactly as Khoros Marketing would.

Every scenario test goes through real HTTP with the registered secret in the
``Authorization`` header and the ``x-sf-*`` tenancy headers, so the tests
exercise routing, auth, JSON parsing and error serialisation together.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import requests


@dataclass
class Answer:
    status: int
    body: Any
    headers: dict[str, str]
    seconds: float


class KhorosClient:
    """Sends the ten Custom CRM API calls to one server under ``/api/v1``."""

    def __init__(self, base_url: str, token: str | None) -> None:
        self.base = base_url.rstrip("/") + "/api/v1"
        self.token = token
        self.session = requests.Session()

    def call(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
             token: str | None = "default", timeout: float = 30) -> Answer:
        headers = {"x-sf-user-email": "agent@example.com", "x-sf-initiative": "7", "x-sf-company-id": "42"}
        use = self.token if token == "default" else token
        if use is not None:
            headers["Authorization"] = use
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
        if data is not None:
            headers["Content-Type"] = "application/json"
        response = self.session.request(method, self.base + path, data=data, headers=headers, timeout=timeout)
        parsed = response.json() if response.content else None
        return Answer(response.status_code, parsed, dict(response.headers), response.elapsed.total_seconds())

    def meta(self, kind: str) -> Answer:
        return self.call("GET", f"/meta/object/{kind}")

    def search(self, body: dict[str, Any]) -> Answer:
        return self.call("POST", "/customers", body)

    def best_match(self, body: dict[str, Any]) -> Answer:
        return self.call("POST", "/customer/bestmatch", body)

    def get_customer(self, customer_id: str) -> Answer:
        return self.call("GET", f"/customer/{customer_id}")

    def customer_cases(self, customer_id: str) -> Answer:
        return self.call("GET", f"/customer/{customer_id}/cases")

    def create_customer(self, body: dict[str, Any]) -> Answer:
        return self.call("POST", "/customer", body)

    def update_customer(self, customer_id: str, body: dict[str, Any]) -> Answer:
        return self.call("PATCH", f"/customer/{customer_id}", body)

    def create_case(self, body: dict[str, Any]) -> Answer:
        return self.call("POST", "/case", body)

    def get_case(self, case_id: str) -> Answer:
        return self.call("GET", f"/case/{case_id}")

    def update_case(self, case_id: str, body: dict[str, Any]) -> Answer:
        return self.call("PATCH", f"/case/{case_id}", body)
