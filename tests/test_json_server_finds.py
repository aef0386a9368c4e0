"""The json-server mapping's case ``find:`` checks what json-server gives back.

json-server 0.17.4 drops a query filter on a field that no record has, and
answers every record. On a database whose cases were all made before the
mapping stored request keys, ``GET /cases?requestKey=...`` answers them all:
a create that took the first for its own would answer an older case and
store nothing. Each test runs on its own json-server, seeded with such a case.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from mapper.core.engine import Engine
from tests.support.vendor_mapping import interaction
from tests.targets.json_server import running_json_server

pytestmark = pytest.mark.jsonserver

OLDER_CASE = {"id": 1, "customerId": 1, "title": "Older case", "description": "", "status": "open",
              "priority": "normal", "createdAt": "2026-01-05T10:00:00Z", "updatedAt": "2026-01-05T10:00:00Z"}


@pytest.fixture
def engine() -> Iterator[Engine]:
    seed = {"customers": [{"id": 1, "firstName": "Ann", "lastName": "Lee"}], "cases": [OLDER_CASE],
            "interactions": []}
    with running_json_server(seed) as server:
        engine = Engine.load("mappings/json-server.yaml", {"JSON_SERVER_URL": server.url})
        engine.url = server.url  # type: ignore[attr-defined]
        try:
            yield engine
        finally:
            engine.close()


def stored(engine: Engine, collection: str) -> list[dict[str, Any]]:
    answer = requests.get(f"{engine.url}/{collection}", timeout=10)  # type: ignore[attr-defined]
    answer.raise_for_status()
    return answer.json()


def test_the_first_keyed_create_makes_its_case_instead_of_finding_an_older_one(engine: Engine) -> None:
    status, case = engine.run("create_case", {"customerId": "1", "title": "New case",
                                              "interactions": [interaction("new", 1)]},
                              idempotency_key="key-of-the-new-case")
    assert status == 201
    assert case["title"] == "New case" and case["id"] != "1"
    assert [i["serviceId"] for i in case["interactions"]] == ["new1"]
    assert [c["title"] for c in stored(engine, "cases")] == ["Older case", "New case"]


def test_a_retried_create_still_finds_its_own_case(engine: Engine) -> None:
    body = {"customerId": "1", "title": "Retried case", "interactions": [interaction("retry", 1)]}
    first = engine.run("create_case", body, idempotency_key="key-of-the-retried-case")
    again = engine.run("create_case", body, idempotency_key="key-of-the-retried-case")
    assert first[0] == again[0] == 201
    assert again[1]["id"] == first[1]["id"]
    assert len(stored(engine, "cases")) == 2
    assert len([i for i in stored(engine, "interactions") if i.get("serviceId") == "retry1"]) == 1

