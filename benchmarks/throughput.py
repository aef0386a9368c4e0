"""The engine against hand-written code under gunicorn: req/s, p50/p99 and server CPU per request.

Run from the repository root (needs ``wrk``: ``apt-get install wrk``)::

    python -m benchmarks.throughput [--rounds 3] [--seconds 5] [--connections 16] [--threads 16]

Two servers, each one gunicorn process with the same threaded worker, over
the same canned CRM (:mod:`benchmarks.upstream`, instant answers, kept-alive
connections):

* **engine**: ``serve.py --mapping mappings/demo.yaml --workers 1 --threads N``,
  the production command, at the default log level (INFO: one line per
  Khoros request, written to a file);
* **hand-written**: :func:`benchmarks.handwritten.create_app` under
  ``gunicorn -k gthread -w 1 --threads N``: the same CRM calls with one pooled
  ``requests.Session`` and dict literals, no logging.

Three Khoros operations: customer lookup (1 CRM call), customer search by
email (1 call), case create with one interaction (4 calls: the look-up of
the case by its request key, which finds nothing, the case, its note, the
case's notes read back). Every timed create has a title no other request
had (wrk's Lua adds a suffix), so each is a new create on both sides: the
engine's idempotency store (in memory by default) never answers one from
what it kept, which would skip the CRM calls. Before timing, both sides'
answers and the CRM calls they make (method, path, query, body, in order)
are compared; it refuses to time them if they differ. wrk then loads one
server with one operation for ``--seconds``; servers and operations take
turns (the order flips every round) so a busy moment of a shared machine
hits both sides alike. Printed per operation: the median over rounds of
req/s, p50 and p99 latency, the server's CPU milliseconds per request
(user + system, all of its processes) and the CRM calls per answered
request (the canned CRM counts them; a little above the operation's calls,
from requests still in flight when wrk stops), then engine / hand-written
for throughput with the range over rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import statistics
import sys
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import requests

from benchmarks.harness import TOKEN, Server, free_port, lua_headers, process, upstream, wrk, wrk_available
from mapper.service import gunicorn_conf

INTERACTION = {"created": "2024-05-01T09:00:00Z", "body": "@acme my charger sparks",
               "linkUrl": "https://twitter.com/janedoe/status/1", "serviceId": "1", "service": "twitter",
               "contentType": "post",
               "author": {"service": "twitter", "serviceId": "99", "handle": "janedoe", "name": "Jane Doe",
                          "brandOwned": False}}


# wrk Lua: unique() gives a text no other request of this wrk run has (this run's random
# nonce, the wrk thread's number, a counter), so no create repeats an earlier one, not even
# one of another run against the same server.
UNIQUE_LUA = """
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("thread_number", threads)
end
local sent = 0
function unique()
  sent = sent + 1
  return run_nonce .. "-" .. (thread_number or 0) .. "-" .. sent
end
"""
_MARK = "@@unique@@"


@dataclass(frozen=True)
class Operation:
    key: str  # the name --only takes
    label: str
    method: str
    path: str
    body: dict[str, object] | None
    crm_calls: int
    unique: str | None = None  # the body field that gets unique()'s text appended under wrk

    def lua_body(self) -> str:
        """This operation's body as a Lua expression (a new text per request when ``unique``)."""
        if self.body is None:
            return "nil"
        if self.unique is None:
            return f"[[{json.dumps(self.body)}]]"
        marked = {**self.body, self.unique: f"{self.body[self.unique]} {_MARK}"}
        head, tail = json.dumps(marked).split(_MARK)
        return f"[[{head}]] .. unique() .. [[{tail}]]"

    def lua(self) -> str:
        """A whole wrk script sending this operation only."""
        script = lua_headers() + f'wrk.method = "{self.method}"\nwrk.path = "{self.path}"\n'
        if self.unique is not None:
            return (script + unique_lua() +
                    f"request = function()\n  return wrk.format(nil, nil, nil, {self.lua_body()})\nend\n")
        if self.body is not None:
            script += f"wrk.body = {self.lua_body()}\n"
        return script


def unique_lua() -> str:
    """:data:`UNIQUE_LUA` with a nonce of its own: call it once per wrk run."""
    return f'run_nonce = "{secrets.token_hex(8)}"\n' + UNIQUE_LUA


OPERATIONS = [
    Operation("lookup", "customer lookup", "GET", "/api/v1/customer/42", None, 1),
    Operation("search", "customer search", "POST", "/api/v1/customers", {"email": "jane@example.com"}, 1),
    Operation("create", "case create + 1 interaction", "POST", "/api/v1/case",
              {"customerId": "42", "title": "Broken charger", "description": "It sparks.", "priority": "normal",
               "interactions": [INTERACTION]}, 4, unique="title"),
]
ENGINE, HAND = "engine", "hand-written"


def crm_seen(crm_url: str) -> tuple[int, list[tuple[str, str, list[tuple[str, str]], Any]]]:
    """How many calls reached the canned CRM so far, and the ones since the last look
    (method, path, sorted query, parsed JSON body)."""
    seen = requests.get(crm_url + "/_calls", timeout=10).json()
    recent = []
    for method, target, body in seen["recent"]:
        parts = urlsplit(target)
        recent.append((method, parts.path, sorted(parse_qsl(parts.query)), json.loads(body) if body else None))
    return int(seen["count"]), recent


def check_same_work(servers: dict[str, Server], crm_url: str, operations: list[Operation]) -> None:
    """Both sides must answer the same and make the same CRM calls, or timing them means nothing."""
    for op in operations:
        answers, calls = {}, {}
        for name, server in servers.items():
            crm_seen(crm_url)
            response = requests.request(op.method, server.url + op.path, json=op.body, timeout=10,
                                        headers={"Authorization": TOKEN})
            answers[name] = (response.status_code, response.json())
            calls[name] = crm_seen(crm_url)[1]
        if answers[ENGINE] != answers[HAND]:
            raise SystemExit(f"The two sides answer {op.label} differently; not timing them:\n"
                             f"{json.dumps(answers, indent=1, sort_keys=True)}")
        if calls[ENGINE] != calls[HAND] or len(calls[ENGINE]) != op.crm_calls:
            raise SystemExit(f"The two sides make different CRM calls for {op.label} (expected "
                             f"{op.crm_calls}); not timing them:\n{json.dumps(calls, indent=1)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.throughput",
                                     description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="turns per operation and side (default 3)")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of one wrk run (default 5)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (default 16)")
    parser.add_argument("--threads", type=int, default=16, help="gunicorn threads per server (default 16)")
    parser.add_argument("--log-level", default="INFO", help="MAPPER_LOG_LEVEL of the engine (default INFO)")
    parser.add_argument("--only", choices=[op.key for op in OPERATIONS], action="append",
                        help="time this operation only (repeat for several; default all three)")
    args = parser.parse_args(argv)
    if not wrk_available():
        print("wrk is not installed: apt-get install wrk", file=sys.stderr)
        return 2
    operations = [op for op in OPERATIONS if not args.only or op.key in args.only]
    progress = sys.stderr
    with ExitStack() as stack:
        folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="crm-mapper-bench-"))
        logs = {name: stack.enter_context(open(os.path.join(folder, f"{name}.log"), "wb"))
                for name in ("upstream", ENGINE, HAND)}
        crm_port, engine_port, hand_port = free_port(), free_port(), free_port()
        crm_url = f"http://127.0.0.1:{crm_port}"
        stack.enter_context(process("upstream", upstream(crm_port), {}, crm_port, logs["upstream"], "/"))
        env = {"DEMO_CRM_URL": crm_url, "MAPPER_AUTH_TOKENS": TOKEN, "HANDWRITTEN_TOKEN": TOKEN,
               "HANDWRITTEN_THREADS": str(args.threads), "MAPPER_LOG_LEVEL": args.log_level}
        # The same gunicorn settings on both sides where the engine's production ones differ
        # from gunicorn's defaults: keep-alive and worker timeout.
        same = ["--keep-alive", str(gunicorn_conf.keepalive), "--timeout", str(gunicorn_conf.timeout)]
        servers = {
            ENGINE: stack.enter_context(process(ENGINE, [
                sys.executable, "serve.py", "--mapping", "mappings/demo.yaml", "--port", str(engine_port),
                "--workers", "1", "--threads", str(args.threads)], env, engine_port, logs[ENGINE])),
            HAND: stack.enter_context(process(HAND, [
                sys.executable, "-m", "gunicorn", "-k", "gthread", "-w", "1", "--threads", str(args.threads),
                "-b", f"127.0.0.1:{hand_port}", "--no-control-socket", *same, "benchmarks.handwritten:create_app()"],
                env, hand_port, logs[HAND], "/")),
        }
        check_same_work(servers, crm_url, operations)
        results: dict[tuple[str, str], list[tuple[float, float, float, float, int, float]]] = {}
        for op in operations:  # warm-up: pools fill, first-call work happens, not counted
            for server in servers.values():
                wrk(server.url, op.lua(), connections=args.connections, seconds=1)
        for round_number in range(args.rounds):
            for op in operations:
                order = [ENGINE, HAND] if round_number % 2 == 0 else [HAND, ENGINE]
                for name in order:
                    server = servers[name]
                    print(f"round {round_number + 1}/{args.rounds}: {op.label}, {name}", file=progress, flush=True)
                    cpu_before, calls_before = server.cpu_seconds(), crm_seen(crm_url)[0]
                    result = wrk(server.url, op.lua(), connections=args.connections, seconds=args.seconds)
                    cpu, calls = server.cpu_seconds() - cpu_before, crm_seen(crm_url)[0] - calls_before
                    print(f"  {result.rps:.0f} req/s, {1000 * cpu / max(result.requests, 1):.2f} CPU ms per request",
                          file=progress)
                    if result.errors:
                        print(f"  {name}: {result.error_text}", file=progress)
                    per_request = calls / max(result.requests, 1)
                    if per_request < op.crm_calls * 0.99:
                        print(f"  {name}: only {per_request:.2f} CRM calls per request, not {op.crm_calls}: "
                              "some answers did not come from the CRM", file=progress)
                    results.setdefault((op.label, name), []).append(
                        (result.rps, result.p50_ms, result.p99_ms, 1000 * cpu / max(result.requests, 1),
                         result.errors, per_request))
    print()
    print(f"Throughput: engine (serve.py) against hand-written Flask, each 1 gunicorn process x {args.threads} "
          f"threads, over a canned CRM on loopback; wrk, {args.connections} connections, {args.rounds} rounds of "
          f"{args.seconds:g} s per operation and side, interleaved; engine log level {args.log_level}")
    print(f"Python {platform.python_version()} on {platform.system()} {platform.machine()}, {os.cpu_count()} CPUs "
          f"(load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())})")
    print()
    print(f"{'operation':<29} {'side':<13} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'CPU ms/req':>10} "
          f"{'errors':>6} {'CRM calls/req':>13}")
    for op in operations:
        for name in (HAND, ENGINE):
            rows = results[(op.label, name)]
            print(f"{op.label:<29} {name:<13} {statistics.median(r[0] for r in rows):7.0f} "
                  f"{statistics.median(r[1] for r in rows):7.2f} {statistics.median(r[2] for r in rows):7.2f} "
                  f"{statistics.median(r[3] for r in rows):10.2f} {sum(r[4] for r in rows):6d} "
                  f"{min(r[5] for r in rows):13.2f}")
    print()
    print(f"{'operation':<29} {'engine / hand-written req/s':>28} {'(rounds: min-max)':>18} "
          f"{'CPU per request':>16}")
    for op in operations:
        engine, hand = results[(op.label, ENGINE)], results[(op.label, HAND)]
        ratio = statistics.median(r[0] for r in engine) / statistics.median(r[0] for r in hand)
        per_round = [e[0] / h[0] for e, h in zip(engine, hand, strict=True)]
        cpu = statistics.median(r[3] for r in engine) / statistics.median(r[3] for r in hand)
        print(f"{op.label:<29} {ratio:28.2f} {f'{min(per_round):.2f}-{max(per_round):.2f}':>18} {cpu:15.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
