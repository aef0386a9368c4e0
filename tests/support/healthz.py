"""Waiting for a server process the test started to answer ``/healthz``."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

import pytest
import requests


def wait_for_health(url: str, process: subprocess.Popen, name: str, seconds: float = 30,
                    output: Callable[[], str] = lambda: "") -> None:
    """Return once ``url``/healthz answers 200; fail the test, with the process's output, if
    the process exits first or ``seconds`` pass. A refused connection means still booting."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{name} exited with {process.returncode}: {output()}")
        try:
            if requests.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            time.sleep(0.2)
    pytest.fail(f"{name} did not answer /healthz within {seconds:g} s: {output()}")
