"""A real ``redis-server`` on a free loopback port, for the shared idempotency store.

Debian's ``redis-server`` (installed by ``.ci/run``) is started with no
persistence and no config file; the fixture yields its URL and stops it
(SIGTERM, then SIGKILL if it lingers) at the end of the session.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest
import redis

from tests.support.live_server import free_port


def start_redis(attempts: int = 5) -> tuple[subprocess.Popen[bytes], str]:
    """Start redis-server; retry on another port if the one picked was taken meanwhile."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (Debian package redis-server; .ci/run installs it)")
    for _ in range(attempts):
        port = free_port()
        process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                    "--appendonly", "no", "--protected-mode", "yes"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 10
        try:
            while time.monotonic() < deadline and process.poll() is None:
                try:
                    if client.ping():
                        return process, url
                except redis.ConnectionError:
                    time.sleep(0.05)
        finally:
            client.close()
        stop_redis(process)
    pytest.fail("redis-server did not start")


def stop_redis(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    process, url = start_redis()
    try:
        yield url
    finally:
        stop_redis(process)
