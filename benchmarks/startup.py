"""Process start to first Khoros answer, for every shipped mapping: must stay under 1 s.

Run from the repository root::

    python -m benchmarks.startup [--repeat 3]

For each ``mappings/*.yaml`` it runs the production command,
``python serve.py --mapping <file> --workers 1 --threads 4``, against a CRM
on loopback that answers what the mapping's recordings
(``tests/recordings/<name>/``) say the CRM answered, OAuth token calls
included. From the moment the process is started, it sends the first
recorded customer lookup (``GET /api/v1/customer/<id>``, with the recorded
``x-sf-*`` headers) until one is answered: that answer needs Python started,
the mapping read, checked and compiled, gunicorn's worker forked, the CRM
called and the answer shaped. The answer must be the recorded one (it
refuses to print a time for a wrong answer). Modules are compiled to bytecode
by one uncounted start first, as installing the package does (an editable
checkout under ``PYTHONDONTWRITEBYTECODE`` would compile them at every
start). Printed per mapping: the median
and the worst of ``--repeat`` starts, and the CPU time the server's
processes used until the answer (what a start costs on an idle machine).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import requests
import yaml

from benchmarks.harness import ROOT, TOKEN, children, cpu_of, free_port

LIMIT = 1.0
RECORDINGS = ROOT / "tests" / "recordings"
# The origin recordings write instead of the CRM's loopback address (mapper/workbench/recording.py).
PLACEHOLDER = "http://crm.invalid"


def _query(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in parse_qsl(text, keep_blank_values=True):  # as mapper/workbench/recording.py records it
        if key in out:
            out[key] = (out[key] if isinstance(out[key], list) else [out[key]]) + [value]
        else:
            out[key] = value
    return out


class RecordedCrm:
    """The CRM as recorded: every exchange of every case, answered by method, path and query."""

    def __init__(self, folder: Path) -> None:
        self.answers: dict[tuple[str, str], list[tuple[dict[str, Any], dict[str, Any]]]] = {}
        self.cases: list[dict[str, Any]] = []
        for path in sorted(folder.glob("*.yaml")):
            if path.name == "session.yaml":
                continue
            case = yaml.safe_load(path.read_text(encoding="utf-8"))
            self.cases.append(case)
            for exchange in case.get("exchanges") or []:
                request = exchange["request"]
                key = (request["method"], request["path"])
                self.answers.setdefault(key, []).append((request.get("query") or {}, exchange["response"]))
        session = yaml.safe_load((folder / "session.yaml").read_text(encoding="utf-8"))
        self.environment: dict[str, str] = {k: str(v) for k, v in (session.get("environment") or {}).items()}

    def answer(self, method: str, target: str) -> dict[str, Any] | None:
        parts = urlsplit(target)
        candidates = self.answers.get((method, parts.path), [])
        query = _query(parts.query)
        for recorded_query, response in candidates:
            if recorded_query == query:
                return response
        return candidates[0][1] if candidates else None

    def first_lookup(self) -> dict[str, Any]:
        for case in self.cases:
            if case["operation"] == "get_customer" and case["answer"]["status"] == 200:
                return case
        raise SystemExit("no recorded customer lookup")

    @contextmanager
    def serve(self) -> Iterator[str]:
        crm = self
        url_box: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                response = crm.answer(self.command, self.path)
                status = response["status"] if response else 404
                if response is None:
                    body = b'{"error": "not recorded"}'
                elif "json" in response:
                    body = json.dumps(response["json"]).replace(PLACEHOLDER, url_box[0]).encode()
                else:
                    body = str(response.get("text", "")).replace(PLACEHOLDER, url_box[0]).encode()
                self.send_response(status)
                for name, value in ((response or {}).get("headers") or {}).items():
                    self.send_header(name, str(value).replace(PLACEHOLDER, url_box[0]))
                if not response or "headers" not in response:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _any

            def log_message(self, format: str, *args: Any) -> None:
                return None

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        url_box.append(f"http://127.0.0.1:{server.server_port}")
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        try:
            yield url_box[0]
        finally:
            server.shutdown()
            server.server_close()


def bytecode_environment(folder: str) -> dict[str, str]:
    """An installed server has its modules compiled to bytecode (pip does it at install time);
    an editable checkout run with PYTHONDONTWRITEBYTECODE would compile every module of the
    package at every start. The servers started here keep their bytecode in ``folder``."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = folder
    return env


def first_answer(mapping: Path, crm: RecordedCrm, crm_url: str, base_env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the server's processes) from start to the first Khoros answer."""
    case = crm.first_lookup()
    port = free_port()
    env = {**base_env, **{k: v.replace(PLACEHOLDER, crm_url) for k, v in crm.environment.items()},
           "MAPPER_AUTH_TOKENS": TOKEN}
    headers = {"Authorization": TOKEN, **{f"x-sf-{k.replace('_', '-')}": str(v)
                                          for k, v in (case.get("khoros") or {}).items() if v is not None}}
    url = f"http://127.0.0.1:{port}/api/v1/customer/{case['id']}"
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "serve.py", "--mapping", str(mapping.relative_to(ROOT)), "--port", str(port),
         "--workers", "1", "--threads", "4"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while True:
            if process.poll() is not None:
                error = process.stderr.read().decode()[-2000:] if process.stderr else ""
                raise SystemExit(f"{mapping.name}: the server exited: {error}")
            try:
                answer = requests.get(url, headers=headers, timeout=5)
            except requests.ConnectionError:
                if time.monotonic() - started > 30:
                    raise SystemExit(f"{mapping.name}: no answer within 30 s") from None
                time.sleep(0.002)
                continue
            wall = time.monotonic() - started
            cpu = sum(cpu_of(pid) for pid in [process.pid, *children(process.pid)])
            body = json.loads(answer.text.replace(crm_url, PLACEHOLDER))
            if answer.status_code != case["answer"]["status"] or body != case["answer"]["body"]:
                raise SystemExit(f"{mapping.name}: the first answer is not the recorded one: "
                                 f"{answer.status_code} {answer.text[:500]}")
            return wall, cpu
    finally:
        process.terminate()
        process.wait(timeout=15)
        if process.stderr:
            process.stderr.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.startup", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="starts per mapping (default 3)")
    parser.add_argument("mappings", nargs="*", help="mapping names (default: every mappings/*.yaml)")
    args = parser.parse_args(argv)
    rows = []
    paths = sorted(Path(p) for p in glob.glob(str(ROOT / "mappings" / "*.yaml")))
    if args.mappings:
        paths = [p for p in paths if p.stem in args.mappings]
    with tempfile.TemporaryDirectory(prefix="crm-mapper-bytecode-") as bytecode:
        base_env = bytecode_environment(bytecode)
        for number, path in enumerate(paths):
            print(f"starting {path.name}...", file=sys.stderr, flush=True)
            crm = RecordedCrm(RECORDINGS / path.stem)
            with crm.serve() as crm_url:
                if number == 0:  # not counted: compiles the modules to bytecode, as an install does
                    first_answer(path, crm, crm_url, base_env)
                starts = [first_answer(path, crm, crm_url, base_env) for _ in range(args.repeat)]
            walls = [wall for wall, _ in starts]
            rows.append((path.name, statistics.median(walls), max(walls),
                         statistics.median(cpu for _, cpu in starts)))
    print()
    print(f"Process start to first Khoros answer (serve.py, 1 process x 4 threads; a recorded customer lookup, "
          f"one CRM call or more), {args.repeat} starts per mapping")
    print(f"Python {platform.python_version()} on {platform.system()} {platform.machine()}, {os.cpu_count()} CPUs "
          f"(load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())})")
    print()
    print(f"{'mapping':<20} {'median s':>8} {'worst s':>8} {'CPU s':>6}  under {LIMIT:g} s")
    for name, median, worst, cpu in rows:
        print(f"{name:<20} {median:8.2f} {worst:8.2f} {cpu:6.2f}  {'yes' if worst < LIMIT else 'NO'}")
    print()
    print("CPU s: user + system time of the server's processes until the first answer (median). On a busy\n"
          "machine the wall-clock time is longer than this; on an idle one it is close to it. Modules are\n"
          "compiled to bytecode once, before the first timed start, as installing the package does.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
