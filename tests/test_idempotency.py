"""The idempotency store and guard (mapper/service/idempotency.py), on both stores.

Every behaviour is checked against the in-memory store, the SQLite file a
server's workers share, and a real ``redis-server``; the last tests run two
server processes sharing Redis or one SQLite file, as two gunicorn workers
or replicas would, and send the retry to the other one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import requests

from mapper.core.request_key import request_key
from mapper.errors import ConfigError, KhorosError
from mapper.service import idempotency
from mapper.service.idempotency import Guard, MemoryStore, RedisStore, Settings, SqliteStore, settings_from
from mapper.service.server import share_idempotency_store
from mapper.service.tenants import load_server
from tests.support.healthz import wait_for_health
from tests.support.khoros import KhorosClient
from tests.support.live_server import free_port
from tests.support.redis_server import redis_url  # noqa: F401  (fixture)
from tests.targets.registry import ROOT

TOKEN = "two-process-khoros-token-0123"


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[idempotency.Store]:
    if request.param == "memory":
        yield MemoryStore()
        return
    if request.param == "sqlite":
        local = SqliteStore(str(tmp_path / "idempotency.sqlite3"))
        yield local
        local.close()
        return
    url = request.getfixturevalue("redis_url")
    redis.Redis.from_url(url).flushdb()
    shared = RedisStore(url)
    yield shared
    shared.close()


class Counter:
    """A create that counts its runs and answers 201 with a new id each time."""

    def __init__(self, seconds: float = 0.0, fail: int = 0) -> None:
        self.runs = 0
        self.seconds = seconds
        self.fail = fail
        self._lock = threading.Lock()

    def __call__(self) -> tuple[int, Any]:
        with self._lock:
            self.runs += 1
            run = self.runs
        time.sleep(self.seconds)
        if run <= self.fail:
            raise KhorosError("the CRM failed", code="crm_error")
        return 201, {"id": str(run)}


def test_the_same_key_runs_once_and_answers_the_same(store: idempotency.Store) -> None:
    guard, create = Guard(store, 600), Counter()
    first = guard.once("acme", "create_case", "k1", create, time.monotonic())
    second = guard.once("acme", "create_case", "k1", create, time.monotonic())
    assert first == second == (201, {"id": "1"})
    assert create.runs == 1


def test_other_keys_tenants_and_unguarded_operations_run_each_time(store: idempotency.Store) -> None:
    guard, create = Guard(store, 600), Counter()
    answers = [guard.once("acme", "create_case", "k1", create, time.monotonic()),
               guard.once("acme", "create_case", "k2", create, time.monotonic()),
               guard.once("globex", "create_case", "k1", create, time.monotonic()),
               guard.once("acme", "create_customer", "k1", create, time.monotonic()),
               guard.once("acme", "update_case", "k1", create, time.monotonic()),
               guard.once("acme", "update_case", "k1", create, time.monotonic())]
    assert [a[1]["id"] for a in answers] == ["1", "2", "3", "4", "5", "6"]


def test_a_retry_while_the_first_runs_waits_for_its_answer(store: idempotency.Store) -> None:
    guard, create = Guard(store, 600), Counter(seconds=0.5)
    answers: list[tuple[int, Any]] = []
    threads = [threading.Thread(target=lambda: answers.append(
        guard.once("acme", "create_case", "k", create, time.monotonic()))) for _ in range(3)]
    for thread in threads:
        thread.start()
        time.sleep(0.05)
    for thread in threads:
        thread.join()
    assert answers == [(201, {"id": "1"})] * 3
    assert create.runs == 1


def test_a_failed_attempt_is_not_kept_and_the_retry_does_the_work(store: idempotency.Store) -> None:
    guard, create = Guard(store, 600), Counter(fail=1)
    with pytest.raises(KhorosError):
        guard.once("acme", "create_case", "k", create, time.monotonic())
    assert guard.once("acme", "create_case", "k", create, time.monotonic()) == (201, {"id": "2"})
    assert guard.once("acme", "create_case", "k", create, time.monotonic()) == (201, {"id": "2"})


def test_an_error_answer_is_not_kept_either(store: idempotency.Store) -> None:
    guard = Guard(store, 600)
    answers = iter([(422, {"error": "validation_failed"}), (201, {"id": "9"})])
    assert guard.once("acme", "create_case", "k", lambda: next(answers), time.monotonic())[0] == 422
    assert guard.once("acme", "create_case", "k", lambda: next(answers), time.monotonic()) == (201, {"id": "9"})


def test_a_waiting_retry_takes_over_when_the_first_attempt_fails(store: idempotency.Store) -> None:
    guard, create = Guard(store, 600), Counter(seconds=0.3, fail=1)
    outcome: dict[str, Any] = {}

    def first() -> None:
        try:
            guard.once("acme", "create_case", "k", create, time.monotonic())
        except KhorosError as exc:
            outcome["first"] = exc.code

    thread = threading.Thread(target=first)
    thread.start()
    time.sleep(0.1)
    outcome["second"] = guard.once("acme", "create_case", "k", create, time.monotonic())
    thread.join()
    assert outcome == {"first": "crm_error", "second": (201, {"id": "2"})}


def test_a_retry_that_cannot_wait_any_longer_says_the_first_is_still_running(store: idempotency.Store) -> None:
    guard, create = Guard(store, 600), Counter(seconds=1.0)
    thread = threading.Thread(target=lambda: guard.once("acme", "create_case", "k", create, time.monotonic()))
    thread.start()
    time.sleep(0.1)
    arrived_long_ago = time.monotonic() - 7.3  # 0.2 s of its Khoros budget left
    with pytest.raises(KhorosError) as caught:
        guard.once("acme", "create_case", "k", create, arrived_long_ago)
    thread.join()
    assert caught.value.status == 500
    assert caught.value.code == "in_progress"
    assert create.runs == 1


def test_the_answer_is_forgotten_after_the_window(store: idempotency.Store) -> None:
    guard, create = Guard(store, 0.3), Counter()
    assert guard.once("acme", "create_case", "k", create, time.monotonic())[1]["id"] == "1"
    assert guard.once("acme", "create_case", "k", create, time.monotonic())[1]["id"] == "1"
    time.sleep(0.4)
    assert guard.once("acme", "create_case", "k", create, time.monotonic())[1]["id"] == "2"


def test_two_sqlite_stores_on_one_file_share_claims_and_answers(tmp_path: Any) -> None:
    # As two worker processes do: neither may run a create the other has claimed or answered.
    path = str(tmp_path / "shared.sqlite3")
    first, second = SqliteStore(path), SqliteStore(path)
    claim = first.claim("k", 10)
    assert claim.token is not None
    assert second.claim("k", 10) == idempotency.Claim()  # running elsewhere: wait
    first.finish("k", claim.token, (201, {"id": "7"}), 600)
    assert second.claim("k", 10) == idempotency.Claim(answer=(201, {"id": "7"}))
    taken = second.claim("other", 10)
    first.release("other", "not-the-token")  # a late release by someone else keeps the claim
    assert first.claim("other", 10) == idempotency.Claim()
    assert taken.token is not None
    second.release("other", taken.token)
    assert first.claim("other", 10).token is not None


def test_an_unwritable_sqlite_file_serves_the_create_without_the_store(tmp_path: Any,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    guard, create = Guard(SqliteStore(str(tmp_path / "no-such-folder" / "x.sqlite3")), 600), Counter()
    assert guard.once("acme", "create_case", "k", create, time.monotonic()) == (201, {"id": "1"})
    assert "idempotency store unavailable" in caplog.text


def test_serve_gives_several_workers_one_sqlite_file_and_one_worker_none() -> None:
    environ: dict[str, str] = {}
    assert share_idempotency_store(1, environ) is None and environ == {}
    path = share_idempotency_store(2, environ)
    assert path is not None and environ["MAPPER_IDEMPOTENCY_PATH"] == path
    assert os.path.isdir(os.path.dirname(path))
    assert settings_from(environ) == Settings("sqlite", None, 600.0, path)
    assert settings_from({**environ, "MAPPER_IDEMPOTENCY_STORE": "memory"}).store == "memory"  # named wins
    assert share_idempotency_store(4, {"MAPPER_IDEMPOTENCY_PATH": "/srv/x.sqlite3"}) is None


def test_an_unreachable_redis_serves_the_create_without_the_store(caplog: pytest.LogCaptureFixture) -> None:
    guard, create = Guard(RedisStore(f"redis://127.0.0.1:{free_port()}/0"), 600), Counter()
    assert guard.once("acme", "create_case", "k", create, time.monotonic()) == (201, {"id": "1"})
    assert "idempotency store unavailable" in caplog.text


def test_the_key_is_the_canonical_body_or_the_header() -> None:
    one = request_key("create_case", {"title": "x", "customerId": "1"})
    assert one == request_key("create_case", {"customerId": "1", "title": "x"})
    assert one != request_key("create_customer", {"title": "x", "customerId": "1"})
    assert one != request_key("create_case", {"title": "y", "customerId": "1"})
    assert request_key("create_case", {"a": 1}, "abc") == request_key("create_case", {"a": 2}, "abc")


class TestSettings:
    def test_the_default_is_memory_for_ten_minutes(self) -> None:
        assert settings_from({}) == Settings("memory", None, 600.0)

    def test_the_environment_overrides_the_server_file(self) -> None:
        block = {"store": "redis", "redis_url_env": "SHARED_REDIS", "window_seconds": 120}
        assert settings_from({"SHARED_REDIS": "redis://r:6379/1"}, block) == Settings("redis", "redis://r:6379/1", 120)
        assert settings_from({"MAPPER_IDEMPOTENCY_STORE": "memory", "MAPPER_IDEMPOTENCY_WINDOW": "30"}, block) \
            == Settings("memory", None, 30.0)

    @pytest.mark.parametrize(("environ", "named"), [
        ({"MAPPER_IDEMPOTENCY_STORE": "memcached"}, "MAPPER_IDEMPOTENCY_STORE"),
        ({"MAPPER_IDEMPOTENCY_WINDOW": "ten"}, "MAPPER_IDEMPOTENCY_WINDOW"),
        ({"MAPPER_IDEMPOTENCY_WINDOW": "-1"}, "MAPPER_IDEMPOTENCY_WINDOW"),
        ({"MAPPER_IDEMPOTENCY_STORE": "redis"}, "MAPPER_REDIS_URL"),
    ])
    def test_a_wrong_value_names_the_variable(self, environ: dict[str, str], named: str) -> None:
        with pytest.raises(ConfigError) as caught:
            settings_from(environ)
        assert [p.key for p in caught.value.problems] == [named]

    def test_the_server_file_block_is_read_and_checked(self, tmp_path: Any) -> None:
        from tests.support.tenants import PEOPLE_YAML
        server = tmp_path / "server.yaml"
        server.write_text(f"tenants:\n  acme:\n    mapping: {PEOPLE_YAML}\n    khoros_tokens_env: ACME_TOKENS\n"
                          "default_tenant: acme\nidempotency:\n  store: redis\n  window_seconds: 60\n")
        environ = {"ACME_TOKENS": "t-0123456789", "PEOPLE_CRM_URL": "http://127.0.0.1:9", "PEOPLE_API_KEY": "k"}
        with pytest.raises(ConfigError) as caught:
            load_server(str(server), environ)
        assert [(p.file, p.line, p.key) for p in caught.value.problems] == [(str(server), 6, "MAPPER_REDIS_URL")]
        tenants = load_server(str(server), {**environ, "MAPPER_REDIS_URL": "redis://127.0.0.1:1/0"})
        assert tenants.idempotency == Settings("redis", "redis://127.0.0.1:1/0", 60.0)
        tenants.close()


@pytest.fixture(scope="module")
def khoros(demo_env: dict[str, str]) -> Iterator[KhorosClient]:
    """Our app in front of the demo CRM, with the default store."""
    from mapper.core.engine import Engine
    from mapper.service.app import create_app
    from tests.support.live_server import LiveServer

    engine = Engine.load(os.path.join(ROOT, "mappings", "demo.yaml"), demo_env)
    server = LiveServer(create_app(engine, tokens=[TOKEN], environ={})).start()
    yield KhorosClient(server.url, TOKEN)
    server.stop()
    engine.close()


class TestOverHttp:

    def post(self, khoros: KhorosClient, path: str, body: Any, key: str | None) -> requests.Response:
        headers = {"Authorization": TOKEN, "Content-Type": "application/json"}
        if key is not None:
            headers["Idempotency-Key"] = key
        return requests.post(khoros.base + path, json=body, headers=headers, timeout=10)

    def test_an_idempotency_key_header_makes_two_bodies_one_create(self, khoros: KhorosClient) -> None:
        tag = os.urandom(4).hex()
        first = self.post(khoros, "/customer", {"lastName": f"Key{tag}", "email": f"a{tag}@example.com"}, tag)
        again = self.post(khoros, "/customer", {"lastName": f"Key{tag}", "email": f"b{tag}@example.com"}, tag)
        assert first.status_code == again.status_code == 201
        assert again.json() == first.json()

    def test_the_same_body_with_different_keys_is_two_creates(self, khoros: KhorosClient) -> None:
        tag = os.urandom(4).hex()
        body = {"lastName": f"Twice{tag}"}
        first = self.post(khoros, "/customer", body, f"{tag}-1")
        second = self.post(khoros, "/customer", body, f"{tag}-2")
        assert first.status_code == second.status_code == 201
        assert first.json()["id"] != second.json()["id"]

    @pytest.mark.parametrize("key", ["", "x" * 256, "caf\u00e9"])
    def test_a_malformed_key_is_refused(self, khoros: KhorosClient, key: str) -> None:
        answer = self.post(khoros, "/customer", {"lastName": "Nobody"}, key)
        assert answer.status_code == 400
        assert answer.json()["error"] == "bad_request"
        assert "(trace " in answer.json()["message"]


# -- two server processes sharing Redis ---------------------------------------------------

def serve(port: int, environ: dict[str, str], args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "serve.py", "--mapping", "mappings/demo.yaml", "--port", str(port),
         "--workers", "1", "--threads", "8", *args],
        cwd=ROOT, env={**os.environ, **environ, "MAPPER_AUTH_TOKENS": TOKEN},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)


def two_servers(environ: dict[str, str], args: list[str]) -> Iterator[tuple[KhorosClient, KhorosClient]]:
    ports = [free_port(), free_port()]
    processes = [serve(port, environ, args) for port in ports]
    try:
        for port, process in zip(ports, processes, strict=True):
            wait_for_health(f"http://127.0.0.1:{port}", process, "serve.py")
        yield KhorosClient(f"http://127.0.0.1:{ports[0]}", TOKEN), KhorosClient(f"http://127.0.0.1:{ports[1]}", TOKEN)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=20)


@pytest.fixture(scope="module", params=["redis", "sqlite"])
def shared(request: pytest.FixtureRequest, demo_env: dict[str, str],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KhorosClient, KhorosClient]]:
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        yield from two_servers({**demo_env, "MAPPER_REDIS_URL": url}, ["--idempotency-store", "redis"])
        return
    path = str(tmp_path_factory.mktemp("shared") / "idempotency.sqlite3")  # as serve.py's workers share one
    yield from two_servers({**demo_env, "MAPPER_IDEMPOTENCY_PATH": path}, ["--idempotency-store", "sqlite"])


@pytest.fixture(scope="module")
def separate(demo_env: dict[str, str]) -> Iterator[tuple[KhorosClient, KhorosClient]]:
    yield from two_servers({**demo_env, "MAPPER_IDEMPOTENCY_STORE": "memory"}, [])


def customer_body() -> dict[str, Any]:
    tag = os.urandom(4).hex()
    return {"firstName": "Jane", "lastName": f"Doe{tag}", "email": f"jane.{tag}@example.com"}


def test_shared_a_customer_retried_on_the_other_process_is_created_once(shared) -> None:
    a, b = shared
    body = customer_body()
    first, retry = a.create_customer(body), b.create_customer(body)
    assert (first.status, retry.status) == (201, 201), (first.body, retry.body)
    assert retry.body["id"] == first.body["id"]
    assert [c["id"] for c in a.search({"email": body["email"]}).body] == [first.body["id"]]


def test_shared_the_same_case_on_both_processes_at_once_is_created_once(shared) -> None:
    a, b = shared
    customer = a.create_customer(customer_body()).body
    tag = os.urandom(4).hex()
    body = {"customerId": customer["id"], "title": f"Charger {tag}", "interactions": [
        {"created": "2017-08-01T14:09:01Z", "body": f"Post {n}", "linkUrl": f"https://x.example/{tag}{n}",
         "serviceId": f"{tag}{n}", "service": "twitter", "contentType": "post"} for n in (1, 2)]}
    barrier = threading.Barrier(2)
    answers: dict[str, Any] = {}

    def send(name: str, client: KhorosClient) -> None:
        barrier.wait()
        answers[name] = client.create_case(body)

    threads = [threading.Thread(target=send, args=item) for item in (("a", a), ("b", b))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (answers["a"].status, answers["b"].status) == (201, 201)
    assert answers["a"].body["id"] == answers["b"].body["id"]
    cases = [c for c in a.customer_cases(customer["id"]).body if c["title"] == body["title"]]
    assert len(cases) == 1
    stored = a.get_case(answers["a"].body["id"]).body
    assert sorted(i["serviceId"] for i in stored["interactions"]) == [f"{tag}1", f"{tag}2"]


def test_without_redis_the_other_process_does_not_know_the_first_create(separate) -> None:
    """The control: each process's memory store is its own, so the retry on the other process
    creates again (the demo CRM refuses the second customer with the same email)."""
    a, b = separate
    body = customer_body()
    first, retry = a.create_customer(body), b.create_customer(body)
    assert first.status == 201
    assert retry.status != 201 or retry.body["id"] != first.body["id"]


def test_serve_with_two_workers_catches_a_retry_whichever_worker_gets_it(demo_env: dict[str, str]) -> None:
    """The default production shape (more than one worker, no store named): the retries of one
    customer create, each on a new connection so that both workers get some, make one customer."""
    port = free_port()
    environ = {key: value for key, value in os.environ.items() if not key.startswith("MAPPER_IDEMPOTENCY")}
    process = subprocess.Popen(
        [sys.executable, "serve.py", "--mapping", "mappings/demo.yaml", "--port", str(port),
         "--workers", "2", "--threads", "4"],
        cwd=ROOT, env={**environ, **demo_env, "MAPPER_AUTH_TOKENS": TOKEN},
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        wait_for_health(f"http://127.0.0.1:{port}", process, "serve.py")
        body = customer_body()
        del body["email"]  # the demo CRM refuses a second customer with one email: nothing else would
        barrier = threading.Barrier(8)
        answers: list[requests.Response] = []

        def send() -> None:
            barrier.wait()
            answers.append(requests.post(f"http://127.0.0.1:{port}/api/v1/customer", json=body, timeout=10,
                                         headers={"Authorization": TOKEN, "Connection": "close"}))

        threads = [threading.Thread(target=send) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [a.status_code for a in answers] == [201] * 8, [a.text for a in answers]
        assert len({a.json()["id"] for a in answers}) == 1
        found = KhorosClient(f"http://127.0.0.1:{port}", TOKEN).search({"lastName": body["lastName"]}).body
        assert [c["id"] for c in found] == [answers[0].json()["id"]]
    finally:
        process.terminate()
        out, _ = process.communicate(timeout=20)
    shared = [line for line in out.splitlines() if line.startswith("Repeated creates are caught across")]
    assert len(shared) == 1, out
    assert not os.path.exists(os.path.dirname(shared[0].rsplit(" in ", 1)[1]))  # removed with the server
