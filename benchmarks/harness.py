"""What the HTTP benchmarks share: starting servers as separate processes, wrk, CPU time.

Every server here is a real process on a loopback port, started the way it
is started in production, and stopped when the benchmark ends. Load comes
from wrk (Debian's ``wrk`` package: ``apt-get install wrk``), which costs
far less CPU per request than a Python client would, on a machine where the
client, the CRM and the server share the same cores.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import requests

ROOT = Path(__file__).resolve().parent.parent
# Made up for the run; every server listens on loopback only and stops with the script.
TOKEN = "benchmark-khoros-token-0001"  # noqa: S105


def free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    name: str
    url: str
    process: subprocess.Popen[bytes]

    def cpu_seconds(self) -> float:
        """User + system CPU of the process and its children (gunicorn's workers), so far."""
        return sum(cpu_of(pid) for pid in [self.process.pid, *children(self.process.pid)])


def cpu_of(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return out


@contextmanager
def process(name: str, argv: list[str], env: dict[str, str], port: int, log: IO[bytes] | int,
            ready_path: str = "/healthz", wait: float = 30.0) -> Iterator[Server]:
    """Start ``argv`` and wait until it answers HTTP on ``port`` (any status); stop it afterwards."""
    proc = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + wait
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}: {' '.join(argv)}")
            try:
                requests.get(url + ready_path, timeout=1)
                break
            except requests.RequestException:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not answer within {wait:g} s") from None
                time.sleep(0.05)
        yield Server(name, url, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def upstream(port: int, delay: float = 0.0) -> list[str]:
    return [sys.executable, "-m", "benchmarks.upstream", "--port", str(port), "--delay", str(delay)]


@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    errors: int  # socket errors (connect, read, write, timeout) plus non-2xx answers
    error_text: str


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not match:
        raise ValueError(text)
    return float(match.group(1)) * _UNITS[match.group(2)]


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def wrk(url: str, script: str, *, connections: int, seconds: float, threads: int = 2,
        timeout: float = 10.0) -> WrkResult:
    """Run wrk with a Lua ``script`` and read its summary."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script)
        path = handle.name
    try:
        run = subprocess.run(
            ["wrk", "--latency", "-t", str(min(threads, connections)), "-c", str(connections),
             "-d", f"{seconds:g}s", "--timeout", f"{timeout:g}s", "-s", path, url],
            capture_output=True, text=True, check=True)
        out = run.stdout + run.stderr
    finally:
        os.unlink(path)
    done = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    if not done or "99" not in dict(re.findall(r"^\s+(\d+)%\s+(\S+)\s*$", out, re.MULTILINE)):
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    took = _ms(done.group(2) + done.group(3)) / 1000
    percentiles = dict(re.findall(r"^\s+(\d+)%\s+(\S+)\s*$", out, re.MULTILINE))
    maximum = re.search(r"Latency\s+\S+\s+\S+\s+(\S+)", out)
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = (sum(int(n) for n in socket.groups()) if socket else 0) + (int(non2xx.group(1)) if non2xx else 0)
    error_text = ", ".join(filter(None, [socket.group(0) if socket else "", non2xx.group(0) if non2xx else ""]))
    count = int(done.group(1))
    return WrkResult(count, took, count / took if took else 0.0, _ms(percentiles["50"]), _ms(percentiles["99"]),
                     _ms(maximum.group(1)) if maximum else 0.0, errors, error_text)


def lua_headers() -> str:
    return (f'wrk.headers["Authorization"] = "{TOKEN}"\n'
            'wrk.headers["Content-Type"] = "application/json"\n'
            'wrk.headers["x-sf-user-email"] = "agent@example.com"\n')
