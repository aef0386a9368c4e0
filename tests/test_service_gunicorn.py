"""The service in production shape: gunicorn with several workers, two tenants, metrics
shared across workers, JSON logs, and SIGHUP reloads under load.

Started exactly as the README says (``gunicorn -c python:mapper.service.gunicorn_conf``
with ``MAPPER_CONFIG`` and ``PROMETHEUS_MULTIPROC_DIR``), against two CRMs on loopback.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.support.live_server import free_port
from tests.support.tenants import (
    ACME_TOKEN,
    ADMIN_TOKEN,
    GLOBEX_TOKEN,
    Crm,
    headers,
    server_environ,
    traced_mapping,
    write_server_file,
)
from tests.targets.registry import ROOT

pytestmark = pytest.mark.slow
WORKERS = 3
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@dataclass
class Service:
    url: str
    folder: Path
    pid_file: Path
    log_file: Path
    acme: Crm
    globex: Crm

    def master_pid(self) -> int:
        return int(self.pid_file.read_text().strip())


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    folder = tmp_path_factory.mktemp("service")
    acme, globex = Crm("acme").start(), Crm("globex").start()
    metrics_dir = folder / "metrics"
    metrics_dir.mkdir()
    port = free_port()
    env = {**os.environ, **server_environ(acme, globex),
           "MAPPER_CONFIG": str(write_server_file(folder)), "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
           "MAPPER_LOG_FORMAT": "json", "MAPPER_BIND": f"127.0.0.1:{port}", "MAPPER_WORKERS": str(WORKERS)}
    pid_file, log_file = folder / "gunicorn.pid", folder / "server.log"
    with open(log_file, "w", encoding="utf-8") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "python:mapper.service.gunicorn_conf", "--pid", str(pid_file)],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"gunicorn exited: {log_file.read_text()}")
            try:
                if requests.get(url + "/readyz", timeout=1).status_code == 200 and pid_file.exists():
                    break
            except requests.RequestException:
                pass
            time.sleep(0.2)
        else:
            pytest.fail(f"gunicorn did not answer /readyz within 60 s: {log_file.read_text()}")
        yield Service(url, folder, pid_file, log_file, acme, globex)
    finally:
        process.terminate()
        process.wait(timeout=30)
        acme.stop()
        globex.stop()


def customer(service: Service, token: str, company: str, cid: str = "1") -> requests.Response:
    with requests.Session() as session:  # a new connection: spread over the workers
        return session.get(f"{service.url}/api/v1/customer/{cid}", headers=headers(token, company=company),
                           timeout=30)


def scrape(service: Service) -> dict[str, float]:
    text = requests.get(service.url + "/metrics", headers=ADMIN, timeout=10).text
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[_canonical(name)] = float(value)
    return samples


def _canonical(name: str) -> str:
    if "{" not in name:
        return name
    base, labels = name[:-1].split("{", 1)
    return base + "{" + ",".join(sorted(re.findall(r'\w+="[^"]*"', labels))) + "}"


def sample(samples: dict[str, float], name: str, **labels: str) -> float:
    key = name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else name
    return samples.get(key, 0.0)


def in_parallel(count: int, call) -> list:
    results: list = [None] * count

    def run(i: int) -> None:
        results[i] = call(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def test_each_company_reaches_only_its_crm_across_workers(service: Service) -> None:
    service.acme.seen.clear()
    service.globex.seen.clear()
    answers = in_parallel(24, lambda i: customer(service, *((ACME_TOKEN, "42") if i % 2 else (GLOBEX_TOKEN, "77"))))
    assert {(a.status_code, a.json()["firstName"]) for a in answers} == {(200, "acme"), (200, "globex")}
    refused = in_parallel(12, lambda i: customer(service, *((ACME_TOKEN, "77") if i % 2 else (GLOBEX_TOKEN, "42"))))
    assert {a.status_code for a in refused} == {401}
    assert len(service.acme.seen) == len(service.globex.seen) == 12  # the refused ones reached no CRM


def test_metrics_add_up_every_worker_after_known_traffic(service: Service) -> None:
    before = scrape(service)
    in_parallel(12, lambda i: customer(service, ACME_TOKEN, "42"))
    in_parallel(5, lambda i: customer(service, ACME_TOKEN, "77"))
    in_parallel(3, lambda i: customer(service, GLOBEX_TOKEN, "77", "missing"))
    after = scrape(service)

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    def steps(name: str, **labels: str) -> dict[str, float]:
        """Per step label (the step's name comes from the mapping): the change in ``name``."""
        wanted = {f'{k}="{v}"' for k, v in labels.items()}
        out: dict[str, float] = {}
        for key, value in after.items():
            if key.startswith(name + "{"):
                parts = set(re.findall(r'\w+="[^"]*"', key))
                if wanted <= parts:
                    step = next(p for p in parts if p.startswith("step="))
                    out[step] = value - before.get(key, 0.0)
        return {step: change for step, change in out.items() if change}

    assert delta("mapper_khoros_requests_total", tenant="acme", operation="get_customer", status="200") == 12
    assert delta("mapper_khoros_requests_total", tenant="globex", operation="get_customer", status="401") == 5
    assert delta("mapper_khoros_requests_total", tenant="globex", operation="get_customer", status="404") == 3
    assert delta("mapper_khoros_request_seconds_count", tenant="acme", operation="get_customer") == 12
    assert delta("mapper_budget_left_seconds_count", tenant="acme", operation="get_customer") == 12
    # Every answer left with time to spare: nothing in the "no time left" bucket.
    assert delta("mapper_budget_left_seconds_bucket", tenant="acme", operation="get_customer", le="0.0") == 0
    # get_customer is one request step in the people mapping: every call counted on it.
    assert list(steps("mapper_crm_calls_total", tenant="acme", operation="get_customer", status="200").values()) \
        == [12]
    assert list(steps("mapper_crm_calls_total", tenant="globex", operation="get_customer", status="404").values()) \
        == [3]
    assert list(steps("mapper_crm_call_seconds_count", tenant="globex", operation="get_customer").values()) == [3]


@dataclass
class Load:
    failures: list[str]
    uris: list[tuple[float, str]]
    stop: threading.Event


@pytest.fixture
def load(service: Service) -> Iterator[Load]:
    """Four clients calling both tenants without pause while the test reloads."""
    state = Load([], [], threading.Event())

    def client(i: int) -> None:
        token, company = (ACME_TOKEN, "42") if i % 2 else (GLOBEX_TOKEN, "77")
        while not state.stop.is_set():
            try:
                answer = customer(service, token, company)
            except requests.RequestException as exc:
                state.failures.append(type(exc).__name__)
                continue
            if answer.status_code != 200:
                state.failures.append(f"{answer.status_code} {answer.text[:200]}")
            elif company == "77":
                state.uris.append((time.monotonic(), answer.json()["uri"]))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    yield state
    state.stop.set()
    for thread in threads:
        thread.join(timeout=60)


def workers(service: Service) -> list[int]:
    master = service.master_pid()
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return [int(pid) for pid in children]


def wait_for(predicate, seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def readyz_everywhere(service: Service, ok: bool, generation: int) -> bool:
    """Ten fresh connections in a row (so every worker is asked) agree."""
    for _ in range(10):
        last = requests.get(service.url + "/readyz", headers=ADMIN, timeout=10).json()
        if not last["last_reload"] or last["last_reload"]["ok"] is not ok or last["generation"] != generation:
            return False
    return True


def test_sighup_under_load_refuses_a_broken_mapping_and_serves_a_good_one(service: Service, load: Load) -> None:
    traced = service.folder / "traced.yaml"
    before = scrape(service)
    time.sleep(0.5)  # some traffic first
    good = traced.read_text()
    traced.write_text(good.replace("  timeout: 10\n", "  timeout: 10\n  retry_429: many\n"))
    os.kill(service.master_pid(), signal.SIGHUP)
    assert wait_for(lambda: readyz_everywhere(service, ok=False, generation=0)), "the refusal never showed"
    detail = requests.get(service.url + "/readyz", headers=ADMIN, timeout=10).json()
    assert any(f"{traced}:" in p and "connection.retry_429" in p for p in detail["last_reload"]["problems"])
    # Each worker reloads (and counts) for itself; a busy one may still be at it.
    assert wait_for(lambda: sample(scrape(service), "mapper_config_reloads_total", result="failed")
                    - sample(before, "mapper_config_reloads_total", result="failed") == WORKERS)
    assert scrape(service)["mapper_config_last_reload_ok"] == 0.0
    time.sleep(0.5)  # still serving the old mapping, under load

    # A worker that starts now (one was recycled or died) must not fail on the broken file
    # (gunicorn would stop the whole server): it serves the last good copy.
    old_workers = workers(service)
    os.kill(old_workers[0], signal.SIGTERM)
    assert wait_for(lambda: len(workers(service)) == WORKERS and old_workers[0] not in workers(service))
    assert wait_for(lambda: "the files on disk are broken, serving the last good copy" in service.log_file.read_text(),
                    seconds=60)
    assert wait_for(lambda: readyz_everywhere(service, ok=False, generation=0))
    assert {customer(service, GLOBEX_TOKEN, "77").status_code for _ in range(10)} == {200}

    traced_mapping(service.folder, site="https://people-v2.example")
    command = subprocess.run([sys.executable, "-m", "mapper.workbench.cli", "reload", "--pid-file",
                              str(service.pid_file), str(traced), str(service.folder / "server.yaml")],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert command.returncode == 0, command.stderr
    sent = time.monotonic()
    assert wait_for(lambda: readyz_everywhere(service, ok=True, generation=1)), "the good change never showed"
    time.sleep(0.5)
    load.stop.set()
    time.sleep(0.2)
    assert load.failures == []
    new = [t for t, uri in load.uris if uri.startswith("https://people-v2.example/")]
    old_after = [t for t, uri in load.uris if t > sent + 0.01 and not uri.startswith("https://people-v2.example/")]
    assert new, "no answer from the new mapping"
    served_within = max([min(new) - sent] + [t - sent for t in old_after])
    print(f"\nreload: last old answer / first new answer {served_within:.3f} s after `mapper reload` returned; "
          f"{len(load.uris)} globex answers, 0 failures")
    assert served_within < 5.0  # the issue asks for one second; generous here for a loaded CI machine
    assert wait_for(lambda: scrape(service)["mapper_config_last_reload_ok"] == 1.0)


def test_json_log_lines_parse_and_carry_trace_ids(service: Service) -> None:
    answer = customer(service, GLOBEX_TOKEN, "77", "missing")
    trace = answer.headers["X-Trace-Id"]
    assert trace in answer.json()["message"]
    assert wait_for(lambda: trace in service.log_file.read_text())
    ours = [json.loads(line) for line in service.log_file.read_text().splitlines() if line.startswith("{")]
    assert ours, "no JSON line"
    mine = [line for line in ours if line["trace_id"] == trace]
    assert any(line.get("status") == 404 and line["tenant"] == "globex" for line in mine), mine
    assert all(line["tenant"] == "globex" and line["operation"] == "get_customer" for line in mine)
