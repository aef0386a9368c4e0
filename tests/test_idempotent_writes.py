"""Khoros retries never write twice, and a retry finishes a half-written case.

Parametrised over every shipped mapping and its CRM (the demo, json-server,
BottleCRM, the vendor fakes). Each target is reached through a
:class:`~tests.support.failing_proxy.FailingProxy`, so a test can make one
chosen CRM call fail; the CRM's state is then read back through Khoros
calls (search, the customer's cases, the case with its interactions).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from mapper.core.engine import Engine
from mapper.service.app import create_app
from tests.support.failing_proxy import FailingProxy
from tests.support.khoros import Answer, KhorosClient
from tests.support.live_server import LiveServer
from tests.targets.registry import TARGETS, Target, load_scenario

TOKEN = "khoros-idempotency-secret-0123"

# The CRM call that writes one interaction, per target: (method, path pattern).
INTERACTION_WRITES: dict[str, tuple[str, str]] = {
    "demo": ("POST", r"/cases/\d+/notes"),
    "json-server": ("POST", r"/interactions"),
    "bottlecrm": ("POST", r"/api/interactions/"),
    "zendesk": ("PUT", r"/api/v2/tickets/\d+\.json"),
    "salesforce": ("POST", r".*/sobjects/FeedItem/"),
    "hubspot": ("POST", r"/crm/v3/objects/notes"),
    "freshdesk": ("POST", r"/api/v2/tickets/\d+/notes"),
    "servicenow": ("PATCH", r"/api/now/table/sn_customerservice_case/\w+"),
    "dynamics": ("POST", r".*/annotations"),
}


@dataclass
class Bridge:
    """Our server for one target, with the CRM behind failing proxies."""

    khoros: KhorosClient
    proxies: list[FailingProxy]
    data: dict[str, Any]

    def fail(self, method: str, path: str, nth: int = 1, how: str = "refuse") -> None:
        for proxy in self.proxies:
            proxy.fail(method, path, nth, how)

    def heal(self) -> None:
        for proxy in self.proxies:
            proxy.heal()

    @property
    def failed(self) -> list[str]:
        return [line for proxy in self.proxies for line in proxy.failed]


def start_bridge(target: Target, environ: dict[str, str], server_environ: dict[str, str]) \
        -> tuple[Bridge, Callable[[], None]]:
    """Our app for ``target`` with every CRM URL of its environment behind a failing proxy."""
    proxies: dict[str, FailingProxy] = {}
    proxied = dict(environ)
    for name, value in environ.items():
        if value.startswith("http://127.0.0.1"):
            proxy = proxies.get(value) or FailingProxy(value).start()
            proxies[value] = proxy
            proxied[name] = proxy.url
    engine = Engine.load(target.mapping, proxied)
    server = LiveServer(create_app(engine, tokens=[TOKEN], environ=server_environ)).start()

    def stop() -> None:
        server.stop()
        engine.close()
        for proxy in proxies.values():
            proxy.stop()

    return Bridge(KhorosClient(server.url, TOKEN), list(proxies.values()), load_scenario(target.name)), stop


@pytest.fixture(scope="module", params=[pytest.param(t.name, marks=t.marks) for t in TARGETS])
def target(request: pytest.FixtureRequest) -> Target:
    return next(t for t in TARGETS if t.name == request.param)


@pytest.fixture(scope="module")
def served(target: Target, request: pytest.FixtureRequest) -> Iterator[Bridge]:
    """The default store: in memory, 10 minutes."""
    running, stop = start_bridge(target, request.getfixturevalue(target.env_fixture), {})
    yield running
    stop()


@pytest.fixture(scope="module")
def storeless(target: Target, request: pytest.FixtureRequest) -> Iterator[Bridge]:
    """No idempotency store (window 0): only the mapping's find: keeps retries from writing twice."""
    running, stop = start_bridge(target, request.getfixturevalue(target.env_fixture),
                                 {"MAPPER_IDEMPOTENCY_WINDOW": "0"})
    yield running
    stop()


def interactions(tag: str, count: int = 3) -> list[dict[str, Any]]:
    return [{"created": f"2017-08-0{n}T14:09:0{n}Z", "body": f"Post {n} of {tag}", "serviceId": f"{tag}{n}",
             "linkUrl": f"https://twitter.com/jane/status/{tag}{n}", "service": "twitter",
             "contentType": "post" if n == 1 else "reply",
             "author": {"service": "twitter", "serviceId": f"99{n}", "handle": "jane", "name": "Jane Doe",
                        "brandOwned": False}}
            for n in range(1, count + 1)]


_counter = iter(range(10**6))


def fresh_customer(bridge: Bridge) -> dict[str, Any]:
    """A new customer for one test (unique values, so searches see only this test's records)."""
    tag = f"{bridge.data['unique']}{next(_counter)}"
    body = load_scenario_customer(bridge, tag)
    answer = bridge.khoros.create_customer(body)
    assert answer.status == 201, answer.body
    return answer.body


def load_scenario_customer(bridge: Bridge, tag: str) -> dict[str, Any]:
    def fill(value: Any) -> Any:
        if isinstance(value, str):
            return value.replace(bridge.data["unique"], tag)
        return value
    return {key: fill(value) for key, value in bridge.data["customer"].items()}


def case_body(bridge: Bridge, customer: dict[str, Any], count: int = 3) -> dict[str, Any]:
    tag = f"k{bridge.data['unique']}{next(_counter)}"
    case = {**bridge.data["case"], "title": f"Charger {tag}"[:50]}
    return {**case, "customerId": customer["id"], "interactions": interactions(tag, count)}


def cases_titled(bridge: Bridge, customer: dict[str, Any], title: str) -> list[dict[str, Any]]:
    answer = bridge.khoros.customer_cases(customer["id"])
    assert answer.status == 200, answer.body
    return [case for case in answer.body if case["title"] == title]


def assert_one_complete_case(bridge: Bridge, customer: dict[str, Any], body: dict[str, Any],
                             answers: list[Answer]) -> None:
    """Every answer is 201 with the same case; the CRM holds that case once, each interaction once."""
    assert [a.status for a in answers] == [201] * len(answers), [a.body for a in answers]
    ids = {a.body["id"] for a in answers}
    assert len(ids) == 1, ids
    stored = cases_titled(bridge, customer, body["title"])
    assert [case["id"] for case in stored] == list(ids)
    case = bridge.khoros.get_case(ids.pop())
    assert case.status == 200, case.body
    got = sorted(item["serviceId"] for item in case.body.get("interactions", []))
    assert got == sorted(item["serviceId"] for item in body["interactions"])


def twice_at_once(call: Callable[[], Answer]) -> list[Answer]:
    barrier = threading.Barrier(2)
    answers: list[Answer] = []

    def send() -> None:
        barrier.wait()
        answers.append(call())

    threads = [threading.Thread(target=send) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


class TestTheSameCreateTwice:
    def test_a_customer_sent_twice_is_created_once(self, served: Bridge) -> None:
        body = load_scenario_customer(served, f"{served.data['unique']}{next(_counter)}")
        answers = [served.khoros.create_customer(body), served.khoros.create_customer(body)]
        assert [a.status for a in answers] == [201, 201], [a.body for a in answers]
        assert answers[0].body["id"] == answers[1].body["id"]
        key = served.data["search_by"][0]
        found = served.khoros.search({key: body[key]})
        assert [c["id"] for c in found.body] == [answers[0].body["id"]]

    def test_a_customer_sent_twice_at_once_is_created_once(self, served: Bridge) -> None:
        body = load_scenario_customer(served, f"{served.data['unique']}{next(_counter)}")
        answers = twice_at_once(lambda: served.khoros.create_customer(body))
        assert [a.status for a in answers] == [201, 201], [a.body for a in answers]
        assert answers[0].body["id"] == answers[1].body["id"]
        key = served.data["search_by"][0]
        found = served.khoros.search({key: body[key]})
        assert [c["id"] for c in found.body] == [answers[0].body["id"]]

    def test_a_case_sent_twice_is_created_once(self, served: Bridge) -> None:
        customer = fresh_customer(served)
        body = case_body(served, customer)
        answers = [served.khoros.create_case(body), served.khoros.create_case(body)]
        assert_one_complete_case(served, customer, body, answers)

    def test_a_case_sent_twice_at_once_is_created_once(self, served: Bridge) -> None:
        customer = fresh_customer(served)
        body = case_body(served, customer)
        answers = twice_at_once(lambda: served.khoros.create_case(body))
        assert_one_complete_case(served, customer, body, answers)

    def test_without_the_store_the_mapping_finds_the_case_it_made(self, storeless: Bridge) -> None:
        customer = fresh_customer(storeless)
        body = case_body(storeless, customer)
        answers = [storeless.khoros.create_case(body), storeless.khoros.create_case(body)]
        assert_one_complete_case(storeless, customer, body, answers)


class TestAnInteractionWriteFails:
    """The second of three interaction writes fails once, in three ways."""

    def test_not_applied_it_is_sent_again_within_the_same_request(self, target: Target, served: Bridge) -> None:
        customer = fresh_customer(served)
        body = case_body(served, customer)
        served.fail(*INTERACTION_WRITES[target.name], nth=2, how="refuse")
        answer = served.khoros.create_case(body)
        served.heal()
        assert len(served.failed) >= 1
        assert_one_complete_case(served, customer, body, [answer])

    def test_applied_but_answer_lost_it_is_found_not_sent_again(self, target: Target, served: Bridge) -> None:
        customer = fresh_customer(served)
        body = case_body(served, customer)
        served.fail(*INTERACTION_WRITES[target.name], nth=2, how="lose")
        answer = served.khoros.create_case(body)
        served.heal()
        assert_one_complete_case(served, customer, body, [answer])

    def test_the_khoros_retry_finishes_the_case(self, target: Target, storeless: Bridge) -> None:
        """The CRM goes down at the second interaction: the create fails; the agent's retry
        finds the case and adds only the two missing interactions."""
        customer = fresh_customer(storeless)
        body = case_body(storeless, customer)
        storeless.fail(*INTERACTION_WRITES[target.name], nth=2, how="outage")
        first = storeless.khoros.create_case(body)
        storeless.heal()
        assert first.status == 500, first.body
        assert first.body["error"].startswith("crm_"), first.body
        retry = storeless.khoros.create_case(body)
        assert_one_complete_case(storeless, customer, body, [retry])

    def test_the_khoros_retry_is_not_answered_from_the_failed_attempt(self, target: Target, served: Bridge) -> None:
        customer = fresh_customer(served)
        body = case_body(served, customer)
        served.fail(*INTERACTION_WRITES[target.name], nth=2, how="outage")
        first = served.khoros.create_case(body)
        served.heal()
        assert first.status == 500, first.body
        retry = served.khoros.create_case(body)
        assert_one_complete_case(served, customer, body, [retry])


@pytest.mark.bottlecrm
@pytest.mark.slow
def test_eight_parallel_case_creates_against_bottlecrm_all_succeed(bottlecrm_env: dict[str, str]) -> None:
    """BottleCRM on SQLite answers 500 "database is locked" to some of 8 concurrent writes; each
    such write is found not to have landed and is sent again, so every create succeeds."""
    target = next(t for t in TARGETS if t.name == "bottlecrm")
    running, stop = start_bridge(target, bottlecrm_env, {})
    try:
        customer = fresh_customer(running)
        bodies = [case_body(running, customer, count=2) for _ in range(8)]
        # Besides any "database is locked" BottleCRM answers by itself, one case write is
        # certain to fail unapplied, so the retry path is taken in every run.
        running.fail("POST", r"/api/cases/", nth=3, how="refuse")
        barrier = threading.Barrier(len(bodies))
        answers: dict[int, Answer] = {}

        def create(index: int) -> None:
            barrier.wait()
            answers[index] = running.khoros.create_case(bodies[index])

        threads = [threading.Thread(target=create, args=(i,)) for i in range(len(bodies))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [answers[i].status for i in range(8)] == [201] * 8, [answers[i].body for i in range(8)]
        assert running.failed == ["POST /api/cases/"]
        assert len({answers[i].body["id"] for i in range(8)}) == 8
        for index, body in enumerate(bodies):
            assert_one_complete_case(running, customer, body, [answers[index]])
    finally:
        stop()
