"""Reload without downtime, in one process: a broken file never replaces a good one,
a request in flight finishes on the files it started with, and both outcomes show
in ``/readyz`` and ``/metrics``. (The same under gunicorn: ``test_service_gunicorn``.)
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from mapper.service.app import create_app
from mapper.service.reload import Runtime, install_sighup
from tests.support.live_server import LiveServer
from tests.support.tenants import (
    ADMIN_TOKEN,
    GLOBEX_TOKEN,
    Crm,
    headers,
    server_environ,
    traced_mapping,
    write_server_file,
)

pytestmark = pytest.mark.usefixtures("restore_logging")  # create_app configures the mapper log

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def served(tmp_path: Path, crms: tuple[Crm, Crm]) -> Iterator[tuple[str, Runtime, Path]]:
    app = create_app(config_path=str(write_server_file(tmp_path)), environ=server_environ(*crms))
    live = LiveServer(app).start()
    runtime: Runtime = app.config["RUNTIME"]
    yield live.url, runtime, tmp_path
    live.stop()
    runtime.current.close()


def globex_uri(url: str, customer: str = "1") -> str:
    answer = requests.get(f"{url}/api/v1/customer/{customer}", headers=headers(GLOBEX_TOKEN, company="77"),
                          timeout=30)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["uri"])


def metric(url: str, name: str, **labels: str) -> float:
    text = requests.get(url + "/metrics", headers=ADMIN, timeout=5).text
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and _labels(line) == wanted:
            return float(line.rsplit(" ", 1)[1])
        if not labels and line.startswith(f"{name} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _labels(line: str) -> str:
    inside = line[line.index("{") + 1:line.index("}")]
    return ",".join(sorted(inside.split(","))) if inside else ""


def test_a_good_change_is_served_after_reload(served: tuple[str, Runtime, Path]) -> None:
    url, runtime, folder = served
    assert globex_uri(url).startswith("https://people.example/")
    ok_before = metric(url, "mapper_config_reloads_total", result="ok")
    traced_mapping(folder, site="https://people-v2.example")
    result = runtime.reload()
    assert result.ok and result.generation == 1
    assert globex_uri(url).startswith("https://people-v2.example/")
    ready = requests.get(url + "/readyz", timeout=5).json()
    assert ready["generation"] == 1
    assert ready["last_reload"]["ok"] is True
    assert metric(url, "mapper_config_reloads_total", result="ok") == ok_before + 1
    assert metric(url, "mapper_config_last_reload_ok") == 1.0


def test_a_broken_file_never_replaces_a_good_one(served: tuple[str, Runtime, Path]) -> None:
    url, runtime, folder = served
    failed_before = metric(url, "mapper_config_reloads_total", result="failed")
    traced = folder / "traced.yaml"
    traced.write_text(traced.read_text().replace("  timeout: 10\n", "  timeout: 10\n  retry_429: many\n"))
    result = runtime.reload()
    assert not result.ok
    line = traced.read_text().splitlines().index("  retry_429: many") + 1
    assert any(p.startswith(f"{traced}:{line}: connection.retry_429:") for p in result.problems), result.problems
    assert globex_uri(url).startswith("https://people.example/")  # still the old, good mapping
    public = requests.get(url + "/readyz", timeout=5).json()
    assert public["status"] == "ready"
    assert public["generation"] == 0
    assert public["last_reload"]["ok"] is False
    assert "problems" not in public["last_reload"]  # file paths and messages only for the operator
    detail = requests.get(url + "/readyz", headers=ADMIN, timeout=5).json()
    assert any(f"{traced}:{line}" in p for p in detail["last_reload"]["problems"])
    assert metric(url, "mapper_config_reloads_total", result="failed") == failed_before + 1
    assert metric(url, "mapper_config_last_reload_ok") == 0.0


def test_a_missing_secret_after_reload_is_refused_too(served: tuple[str, Runtime, Path]) -> None:
    url, runtime, folder = served
    server_file = folder / "server.yaml"
    server_file.write_text(server_file.read_text().replace("GLOBEX_KHOROS_TOKENS", "GLOBEX_NEW_TOKENS"))
    result = runtime.reload()
    assert not result.ok
    assert any("GLOBEX_NEW_TOKENS" in p for p in result.problems)
    assert globex_uri(url).startswith("https://people.example/")


def test_a_request_in_flight_finishes_on_the_files_it_started_with(served: tuple[str, Runtime, Path],
                                                                   crms: tuple[Crm, Crm]) -> None:
    url, runtime, folder = served
    _, globex = crms
    globex.release.clear()
    globex.seen.clear()
    answers: list[str] = []
    waiting = threading.Thread(target=lambda: answers.append(globex_uri(url, "slow")))
    waiting.start()
    deadline = time.monotonic() + 10
    while not globex.seen and time.monotonic() < deadline:
        time.sleep(0.02)  # until the CRM holds the request
    old = runtime.current
    traced_mapping(folder, site="https://people-v2.example")
    assert runtime.reload().ok
    assert globex_uri(url).startswith("https://people-v2.example/")  # new requests: new mapping
    globex.release.set()
    waiting.join(timeout=20)
    assert answers == ["https://people.example/people/slow"]  # the old one, and no error
    assert old._retired and old._in_flight == 0


def test_sighup_reloads_in_the_background(served: tuple[str, Runtime, Path]) -> None:
    url, runtime, folder = served
    previous = signal.getsignal(signal.SIGHUP)
    done = threading.Event()
    install_sighup(runtime, on_done=lambda result: done.set())
    try:
        traced_mapping(folder, site="https://people-hup.example")
        os.kill(os.getpid(), signal.SIGHUP)
        assert done.wait(10)
        assert globex_uri(url).startswith("https://people-hup.example/")
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_mapper_reload_reports_the_outcome_of_mapper_serve(tmp_path: Path, crms: tuple[Crm, Crm]) -> None:
    """``mapper serve --config`` (gunicorn, the app built before its workers fork) reloads on
    SIGHUP; ``mapper reload --url`` says whether it took."""
    import subprocess
    import sys

    from tests.support.live_server import free_port
    from tests.targets.registry import ROOT

    port = free_port()
    env = {**os.environ, **server_environ(*crms)}
    server_file = write_server_file(tmp_path)
    process = subprocess.Popen([sys.executable, "-m", "mapper.workbench.cli", "serve", "--config", str(server_file),
                                "--port", str(port)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert process.poll() is None, "mapper serve exited (is the port taken?)"
            try:
                if requests.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.1)
        assert process.poll() is None, "mapper serve exited (is the port taken?)"
        traced = tmp_path / "traced.yaml"
        traced.write_text(traced.read_text().replace("  timeout: 10\n", "  timeout: 10\n  retry_429: many\n"))

        def reload() -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "mapper.workbench.cli", "reload", "--pid", str(process.pid),
                                   "--url", url], cwd=ROOT, env=env, capture_output=True, text=True, timeout=90)

        refused = reload()
        assert refused.returncode == 1
        assert "Refused: the server keeps generation" in refused.stderr
        assert f"{traced}:" in refused.stderr and "connection.retry_429" in refused.stderr
        assert globex_uri(url).startswith("https://people.example/")
        traced_mapping(tmp_path, site="https://people-v3.example")
        accepted = reload()
        assert accepted.returncode == 0, accepted.stderr
        assert "Reloaded: generation" in accepted.stdout
        assert globex_uri(url).startswith("https://people-v3.example/")
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_a_worker_forked_after_a_reload_reads_the_files_again(served: tuple[str, Runtime, Path]) -> None:
    """gunicorn with the app built before the fork: a worker started later must not serve
    the files as they were when the parent loaded them."""
    from mapper.service.reload import after_fork

    _, runtime, folder = served
    traced_mapping(folder, site="https://people-forked.example")
    import warnings

    read, write = os.pipe()
    with warnings.catch_warnings():  # 3.12+: "multi-threaded, fork() may deadlock"; the child only reads files
        warnings.simplefilter("ignore", DeprecationWarning)
        child = os.fork()
    if child == 0:  # the worker
        try:
            after_fork(runtime)
            site = runtime.current.tenants["globex"].engine.settings["site"]
            os.write(write, f"{runtime.current.generation} {site}".encode())
        finally:
            os._exit(0)
    os.close(write)
    answer = os.read(read, 1000).decode()
    os.waitpid(child, 0)
    os.close(read)
    assert answer == "1 https://people-forked.example"
    assert runtime.current.generation == 0  # the parent itself did not reload


def test_a_worker_forked_with_the_files_unchanged_serves_the_inherited_copy(
        served: tuple[str, Runtime, Path]) -> None:
    """Nothing changed since the parent loaded the files: the worker does not compile them
    again (it would double every start-up), and serves the very engines it inherited."""
    from mapper.service.reload import after_fork

    _, runtime, _ = served
    inherited = runtime.current
    import warnings

    read, write = os.pipe()
    with warnings.catch_warnings():  # 3.12+: "multi-threaded, fork() may deadlock"; the child only reads files
        warnings.simplefilter("ignore", DeprecationWarning)
        child = os.fork()
    if child == 0:  # the worker
        try:
            after_fork(runtime)
            os.write(write, f"{runtime.current.generation} {runtime.current is inherited}".encode())
        finally:
            os._exit(0)
    os.close(write)
    answer = os.read(read, 1000).decode()
    os.waitpid(child, 0)
    os.close(read)
    assert answer == "0 True"
