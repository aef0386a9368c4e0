"""How much the mapping engine costs per Khoros call, next to hand-written code.

Run from the repository root::

    python -m benchmarks.engine_overhead [--requests N] [--profile] [--log-level LEVEL]

Why a script and not a test: timings depend on the machine and its load, so
a timed assertion would fail at random on a busy CI runner and teach people
to ignore failures. This prints figures for a person to read and compare
between commits; performance targets live here, never in unit tests.

What it does, all on loopback and in this one process, and stops by itself:

1. starts the bundled demo CRM on a temporary SQLite file and seeds it
   through its own API (customers, cases, notes on every case);
2. checks that the three implementations answer the same Khoros JSON;
3. times four Khoros operations, each through
   (a) :class:`~benchmarks.handwritten.HandWrittenDemo`, hand-written Python
   with one pooled ``requests.Session``,
   (b) ``Engine.run`` for ``mappings/demo.yaml``, in-process, and
   (c) our Flask app served on a loopback port and called over HTTP, as
   Khoros would;
4. prints median and p95 milliseconds per call, the engine's overhead
   (b minus a), the client thread's CPU time per call for (a) and (b), and
   how long ``Engine.load`` (parse, check, compile) takes;
5. with ``--profile``, profiles the engine path with cProfile and prints the
   top 15 functions by cumulative time, then the top 15 of the engine's own
   code (``mapper/``, Jinja, JSONPath) by own time, where hot spots show.

The three implementations take turns call by call (the order rotates), so a
slow moment of the machine or the CRM's SQLite file hits all three alike
instead of one whole column.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import logging
import os
import platform
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import requests

from benchmarks.handwritten import HandWrittenDemo
from democrm.launcher import start_demo_crm
from mapper.core.engine import Engine, Tenancy
from mapper.core.khoros import OPERATIONS_BY_NAME
from mapper.service.app import API_PREFIX, create_app
from mapper.service.logs import configure
from tests.support.live_server import LiveServer

MAPPING = str(Path(__file__).resolve().parent.parent / "mappings" / "demo.yaml")
# Made up for this run; the server it guards listens on loopback only and stops with the script.
KHOROS_TOKEN = "benchmark-khoros-token-0001"  # noqa: S105
TENANCY = Tenancy(user_email="agent@example.com", initiative="7", company_id="42")
TENANCY_HEADERS = {"x-sf-user-email": "agent@example.com", "x-sf-initiative": "7", "x-sf-company-id": "42"}

SEED_CUSTOMERS = 300
SEED_CASES = 300
NOTES_PER_CASE = 3
WARMUP = 20  # calls per operation and implementation, not counted: pools fill, caches warm
LOAD_REPEATS = 5  # Engine.load is timed this many times; the median is printed
PROFILE_TOP = 15
# The code the hand-written handler does not run: the engine and the libraries it interprets mappings with.
ENGINE_CODE = r"[/\\](mapper|jinja2|jsonpath_ng)[/\\]"

HAND, ENGINE, HTTP = "hand-written", "engine", "engine over HTTP"
IMPLEMENTATIONS = (HAND, ENGINE, HTTP)


# --- the workload --------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One Khoros call, in a form each implementation can take."""

    operation: str  # the name in mapper.khoros.OPERATIONS and in the mapping
    body: dict[str, Any] | None = None
    id: str | None = None


@dataclass(frozen=True)
class Workload:
    """One row of the table: an operation and how to make its i-th call."""

    label: str
    make: Callable[[int, str], Call]  # (call number, implementation) -> the call
    crm_calls: int  # upstream calls per Khoros call in mappings/demo.yaml: overhead grows with them
    # Keys left out when comparing answers: a create answers a new record each time.
    varying: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Seeded:
    """What the seeding put into the demo CRM, for picking call arguments."""

    customers: list[tuple[str, str]]  # (id, email)
    cases: list[str]


def workloads(seeded: Seeded) -> list[Workload]:
    """The four benchmarked operations; lookups cycle through the seeded records."""
    customers, cases = seeded.customers, seeded.cases

    def search(i: int, _impl: str) -> Call:
        return Call("search_customers", body={"email": customers[i % len(customers)][1]})

    def get_customer(i: int, _impl: str) -> Call:
        return Call("get_customer", id=customers[i % len(customers)][0])

    def get_case(i: int, _impl: str) -> Call:
        return Call("get_case", id=cases[i % len(cases)])

    def create_customer(i: int, impl: str) -> Call:
        # Emails are unique in the demo CRM: each implementation and call gets its own.
        tag = impl.replace(" ", "-")
        return Call("create_customer", body={
            "firstName": "Bench", "lastName": f"Customer {i}", "email": f"new-{tag}-{i}@example.com",
            "phone": f"+1 555 {i:04d}", "tier": "silver", "vip": False})

    return [
        Workload("search customer by email", search, crm_calls=1),
        Workload("get customer", get_customer, crm_calls=1),
        Workload(f"get case ({NOTES_PER_CASE} notes)", get_case, crm_calls=2),
        Workload("create customer", create_customer, crm_calls=1, varying=frozenset({"id", "uri", "url", "email"})),
    ]


def seed(crm_url: str) -> Seeded:
    """Fill the demo CRM through its API, as the mapping will later read it."""
    tiers = ("gold", "silver", "bronze", None)
    customers: list[tuple[str, str]] = []
    cases: list[str] = []
    with requests.Session() as session:
        def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
            response = session.post(crm_url + path, json=body, timeout=10)
            response.raise_for_status()
            created: dict[str, Any] = response.json()
            return created

        for n in range(SEED_CUSTOMERS):
            email = f"customer{n}@example.com"
            record = post("/customers", {
                "first_name": f"First{n}", "last_name": f"Last{n}", "email": email, "phone": f"+1 555 {n:04d}",
                "twitter": f"handle{n}" if n % 2 else None, "tier": tiers[n % len(tiers)], "vip": n % 5 == 0,
                "notes": "Prefers email." if n % 3 == 0 else None})
            customers.append((record["id"], email))
        for n in range(SEED_CASES):
            case = post("/cases", {"customer_id": customers[n % len(customers)][0], "subject": f"Order #{n} late",
                                   "description": "Where is my parcel?", "priority": "normal"})
            cases.append(case["id"])
            for k in range(NOTES_PER_CASE):
                post(f"/cases/{case['id']}/notes", {
                    "posted_at": f"2024-05-01T09:{k:02d}:00Z", "channel": "twitter", "content_type": "post",
                    "body": f"@acme order #{n}, message {k}", "link": f"https://twitter.com/x/status/{n}{k}",
                    "external_id": f"{n}{k}", "author_name": f"First{n} Last{n}",
                    "author_handle": f"handle{n}", "author_id": f"9{n}", "brand_owned": k == 1})
    return Seeded(customers, cases)


# --- the three implementations --------------------------------------------

Implementation = Callable[[Call], Any]


def hand_written(handler: HandWrittenDemo) -> Implementation:
    def call(c: Call) -> Any:
        method = getattr(handler, c.operation)
        return method(c.id) if c.id is not None else method(c.body)

    return call


def in_process(engine: Engine) -> Implementation:
    def call(c: Call) -> Any:
        _status, payload = engine.run(c.operation, c.body, id=c.id, tenancy=TENANCY, trace_id="benchmark")
        return payload

    return call


def over_http(session: requests.Session, server_url: str) -> Implementation:
    """Calls our server as Khoros does: the registered secret, the x-sf-* headers, JSON."""
    session.headers.update({"Authorization": KHOROS_TOKEN, **TENANCY_HEADERS})

    def call(c: Call) -> Any:
        op = OPERATIONS_BY_NAME[c.operation]
        url = server_url + API_PREFIX + op.rule.replace("<id>", c.id or "")
        response = session.request(op.method, url, json=c.body, timeout=10)
        if response.status_code != op.success:
            raise RuntimeError(f"{op.method} {op.rule} answered {response.status_code}: {response.text[:300]}")
        return response.json()

    return call


# --- measuring ---------------------------------------------------------------


@dataclass
class Samples:
    """Per-call wall-clock and client-thread CPU times, in nanoseconds."""

    wall: list[int]
    cpu: list[int]


def check_same_answers(rows: list[Workload], impls: dict[str, Implementation]) -> None:
    """Refuse to time implementations that answer differently: the figures would compare apples and pears."""
    for row in rows:
        answers = {name: impl(row.make(0, f"check-{name}")) for name, impl in impls.items()}
        comparable = {name: _without_keys(answer, row.varying) for name, answer in answers.items()}
        if len({repr(_canonical(a)) for a in comparable.values()}) != 1:
            detail = "\n".join(f"  {name}: {answer!r}" for name, answer in comparable.items())
            raise SystemExit(f"'{row.label}' answers differently, so timing it would mean nothing:\n{detail}")


def _without_keys(answer: Any, keys: frozenset[str]) -> Any:
    if isinstance(answer, dict):
        return {k: v for k, v in answer.items() if k not in keys}
    return answer


def _canonical(value: Any) -> Any:
    """Key order does not matter in JSON objects."""
    if isinstance(value, dict):
        return sorted((k, _canonical(v)) for k, v in value.items())
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


def measure(rows: list[Workload], impls: dict[str, Implementation], count: int,
            progress: TextIO) -> dict[tuple[str, str], Samples]:
    """Time ``count`` calls per row and implementation, after WARMUP uncounted ones."""
    results = {(row.label, name): Samples([], []) for row in rows for name in impls}
    names = list(impls)
    for row in rows:
        print(f"  timing {row.label}...", file=progress, flush=True)
        for i in range(WARMUP + count):
            shift = i % len(names)
            for name in names[shift:] + names[:shift]:  # rotate who goes first
                call = row.make(i, name)
                cpu_start = time.thread_time_ns()
                start = time.perf_counter_ns()
                impls[name](call)
                wall = time.perf_counter_ns() - start
                cpu = time.thread_time_ns() - cpu_start
                if i >= WARMUP:
                    results[(row.label, name)].wall.append(wall)
                    results[(row.label, name)].cpu.append(cpu)
    return results


def time_load(environ: dict[str, str]) -> list[float]:
    """Seconds per ``Engine.load`` (read YAML, check, compile, open the pool)."""
    seconds = []
    for _ in range(LOAD_REPEATS):
        start = time.perf_counter()
        engine = Engine.load(MAPPING, environ)
        seconds.append(time.perf_counter() - start)
        engine.close()
    return seconds


def profile_engine(engine_call: Implementation, rows: list[Workload], count: int) -> str:
    """cProfile of the engine path only: call arguments are built outside the profiler."""
    profiler = cProfile.Profile()
    for row in rows:
        for i in range(count):
            call = row.make(i, "profile")
            profiler.enable()
            engine_call(call)
            profiler.disable()
    out = io.StringIO()
    print(f"Engine path, top {PROFILE_TOP} functions by cumulative time ({count} calls of each operation):",
          file=out)
    pstats.Stats(profiler, stream=out).strip_dirs().sort_stats("cumulative").print_stats(PROFILE_TOP)
    # The cumulative list is topped by the CRM round trip, which hand-written code pays as well; the
    # engine's own cost shows where time is spent inside mapper/, Jinja and JSONPath themselves.
    print(f"Where the overhead is: top {PROFILE_TOP} functions of mapper/, jinja2/ and jsonpath_ng/ by own "
          "time (tottime), which the CRM round trip in requests and sockets does not swell:", file=out)
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(ENGINE_CODE, PROFILE_TOP)
    return out.getvalue()


# --- reporting -----------------------------------------------------------------


def _ms(ns: float) -> float:
    return ns / 1e6


def _p95(values: list[int]) -> float:
    if len(values) < 2:
        return float(values[0])
    return statistics.quantiles(values, n=100, method="inclusive")[94]


def report(rows: list[Workload], results: dict[tuple[str, str], Samples], count: int,
           load_seconds: list[float], log_level: str) -> str:
    lines = [
        f"Engine overhead: mappings/demo.yaml against the demo CRM on loopback, {count} calls per operation and "
        f"implementation (after {WARMUP} warm-up calls), mapper log level {log_level}",
        f"Python {platform.python_version()} on {platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
        "",
        "Wall-clock ms per Khoros call (median / p95)",
        f"{'operation':<26} {'CRM calls':>9} {'hand-written':>15} {'engine':>15} {'engine over HTTP':>18}   "
        f"{'engine overhead (median)':>24}",
    ]
    for row in rows:
        cells = []
        for name in IMPLEMENTATIONS:
            wall = results[(row.label, name)].wall
            cells.append(f"{_ms(statistics.median(wall)):6.2f} / {_ms(_p95(wall)):6.2f}")
        hand = statistics.median(results[(row.label, HAND)].wall)
        engine = statistics.median(results[(row.label, ENGINE)].wall)
        overhead = f"{_ms(engine - hand):+6.2f} ms {100 * (engine - hand) / hand:+6.0f} %"
        lines.append(f"{row.label:<26} {row.crm_calls:>9} {cells[0]:>15} {cells[1]:>15} {cells[2]:>18}   "
                     f"{overhead:>24}")
    lines += [
        "",
        "CPU ms of the calling thread per call (median): the work done in this process, without the CRM",
        f"{'operation':<26} {'hand-written':>12} {'engine':>8} {'difference':>11}",
    ]
    for row in rows:
        hand_cpu = statistics.median(results[(row.label, HAND)].cpu)
        engine_cpu = statistics.median(results[(row.label, ENGINE)].cpu)
        lines.append(f"{row.label:<26} {_ms(hand_cpu):12.2f} {_ms(engine_cpu):8.2f} "
                     f"{_ms(engine_cpu - hand_cpu):+11.2f}")
    load_ms = [s * 1000 for s in load_seconds]
    lines += [
        "",
        f"Start-up: Engine.load (read, check, compile mappings/demo.yaml) median {statistics.median(load_ms):.0f} ms "
        f"over {len(load_ms)} loads (min {min(load_ms):.0f}, max {max(load_ms):.0f})",
    ]
    return "\n".join(lines)


# --- running -----------------------------------------------------------------------


@contextmanager
def demo_crm() -> Iterator[str]:
    """The demo CRM on a loopback port over a temporary SQLite file, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="crm-mapper-bench-") as folder:
        url, stop = start_demo_crm(os.path.join(folder, "demo.sqlite3"))
        try:
            yield url
        finally:
            stop()


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("give a whole number of at least 1")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.engine_overhead",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--requests", type=positive, default=200, metavar="N",
                        help="timed calls per operation and implementation (default 200)")
    parser.add_argument("--profile", action="store_true",
                        help=f"also profile N engine calls per operation and print the top {PROFILE_TOP} "
                             "functions by cumulative time")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="the mapper loggers' level (default INFO, as the server runs); lines go to "
                             "/dev/null so that their cost is counted but not shown")
    args = parser.parse_args(argv)
    progress = sys.stderr
    # Werkzeug's access log would print a line per call of both loopback servers.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    with ExitStack() as stack:
        print("Starting the demo CRM and seeding it...", file=progress, flush=True)
        crm_url = stack.enter_context(demo_crm())
        seeded = seed(crm_url)
        environ = {"DEMO_CRM_URL": crm_url}

        print("Timing Engine.load...", file=progress, flush=True)
        load_seconds = time_load(environ)

        engine = Engine.load(MAPPING, environ)
        stack.callback(engine.close)
        handler = HandWrittenDemo(crm_url)
        stack.callback(handler.close)
        server = LiveServer(create_app(engine, tokens=[KHOROS_TOKEN])).start()
        stack.callback(server.stop)
        # create_app sends the mapper logs to stderr; keep their cost, lose their noise.
        devnull = stack.enter_context(open(os.devnull, "w", encoding="utf-8"))
        configure(args.log_level, engine.secret_values, stream=devnull)
        session = stack.enter_context(requests.Session())

        impls = {HAND: hand_written(handler), ENGINE: in_process(engine), HTTP: over_http(session, server.url)}
        rows = workloads(seeded)
        check_same_answers(rows, impls)
        print(f"Measuring ({args.requests} calls per operation and implementation)...", file=progress, flush=True)
        results = measure(rows, impls, args.requests, progress)
        print()
        print(report(rows, results, args.requests, load_seconds, args.log_level))

        if args.profile:
            print(f"Profiling the engine path ({args.requests} calls per operation)...", file=progress, flush=True)
            print()
            print(profile_engine(impls[ENGINE], rows, args.requests))
    return 0


if __name__ == "__main__":
    sys.exit(main())
