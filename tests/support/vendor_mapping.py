"""What the tests of the vendor mappings share (tests/test_mapping_*.py and the
contract they all keep, tests/test_mapping_contract.py).

    TRACE           the trace id at the end of every Khoros error message
    interaction     a Khoros interaction, numbered, with this test's unique ids
    named_customer, first_last_customer
                    a Khoros customer body for CRMs with one name field or two
    created         a customer made through the bridge (a 201, or the test fails)
    since           what a fake received after a mark
    checked_state   a fake's state for one test: afterwards every request is held
                    to the vendor's API description and no fault is left queued
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

from tests.support.openapi_check import OpenApiCheck

TRACE = re.compile(r"\(trace ([0-9a-f]{16})\)")


def interaction(unique: str, n: int, text: str = "my order never came", **extra: Any) -> dict[str, Any]:
    """Interaction ``n`` (1 is the post, others replies) of a customer on Twitter."""
    return {"created": f"2024-03-0{n}T10:1{n}:00Z", "body": f"Post {n} {unique}: {text}",
            "linkUrl": f"https://x.com/ann/status/{unique}{n}", "serviceId": f"{unique}{n}",
            "service": "twitter", "contentType": "post" if n == 1 else "reply",
            "author": {"service": "twitter", "serviceId": f"7{n}", "handle": "annlee", "name": "Ann Lee",
                       "brandOwned": False}, **extra}


def named_customer(unique: str, **fields: Any) -> dict[str, Any]:
    """A customer for CRMs with one name field (Zendesk, Freshdesk)."""
    return {"name": f"Ann Lee {unique}", "email": f"ann.{unique}@example.com", **fields}


def first_last_customer(unique: str, **fields: Any) -> dict[str, Any]:
    """A customer for CRMs with first and last names (ServiceNow, Dynamics)."""
    return {"firstName": "Ann", "lastName": f"Lee {unique}", "email": f"ann.{unique}@example.com", **fields}


def created(khoros: Any, body: dict[str, Any]) -> dict[str, Any]:
    """The customer the bridge made from ``body``."""
    answer = khoros.create_customer(body)
    assert answer.status == 201, answer.body
    return dict(answer.body)


def since(state: Any, mark: int) -> list[Any]:
    """The requests the fake received after ``mark`` (a length of ``state.requests``)."""
    return list(state.requests[mark:])


def checked_state(state: Any, spec: OpenApiCheck | None = None,
                  described: Callable[[Any], bool] = lambda request: True) -> Iterator[Any]:
    """Yield ``state`` to a test; then hold each request it caused that ``described`` picks
    to ``spec``, and fail if the test left a fault queued on the shared fake."""
    mark = len(state.requests)
    yield state
    if spec is not None:
        assert [p for r in since(state, mark) if described(r) for p in spec.problems(r)] == []
    leftover = 0
    while state.take_fault() is not None:
        leftover += 1
    assert leftover == 0, f"the test left {leftover} fault(s) queued on the shared fake"
