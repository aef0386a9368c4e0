"""256 Khoros requests in flight against a CRM that takes 300 ms per call, through the production command.

Run from the repository root (needs ``wrk``: ``apt-get install wrk``)::

    python -m benchmarks.concurrency [--connections 256] [--seconds 60] [--delay 0.3] [-- SERVE OPTIONS]

It starts :mod:`benchmarks.upstream` answering every call after ``--delay``
seconds, then the README's production command,
``python serve.py --mapping mappings/demo.yaml`` (gunicorn, 2 processes x 128
threads by default; anything after ``--`` is passed to it, e.g.
``-- --workers 4 --threads 8`` to compare), and holds ``--connections``
requests in flight with wrk for ``--seconds``: 70 % customer lookups, 20 %
searches, 10 % case creates with one interaction (4 CRM calls, each create
a new one: see :mod:`benchmarks.throughput`). It prints
req/s, p50, p99 and the worst latency, and every error (socket errors,
timeouts past 10 s, answers other than 2xx). Loopback only; it stops by itself.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from benchmarks.harness import TOKEN, free_port, lua_headers, process, upstream, wrk, wrk_available
from benchmarks.throughput import OPERATIONS, crm_seen, unique_lua

MIX = ((70, OPERATIONS[0]), (20, OPERATIONS[1]), (10, OPERATIONS[2]))


def mixed_script() -> str:
    """wrk Lua: each request picks lookup, search or create by the weights above; each
    create is a new one (see :data:`benchmarks.throughput.UNIQUE_LUA`)."""
    lines = [lua_headers(), unique_lua(), "local requests = {}"]
    for index, (_, op) in enumerate(MIX, 1):
        made = f'wrk.format("{op.method}", "{op.path}", nil, {op.lua_body()})'
        if op.unique is not None:
            lines.append(f"requests[{index}] = function() return {made} end")
        else:
            lines.append(f"local request_{index} = {made}")
            lines.append(f"requests[{index}] = function() return request_{index} end")
    lines.append("request = function()\n  local pick = math.random(100)")
    bound = 0
    for index, (weight, _) in enumerate(MIX, 1):
        bound += weight
        lines.append(f"  if pick <= {bound} then return requests[{index}]() end")
    lines.append(f"  return requests[{len(MIX)}]()\nend")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    serve_options: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, serve_options = argv[:cut], argv[cut + 1:]
    parser = argparse.ArgumentParser(prog="python -m benchmarks.concurrency",
                                     description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=256, help="requests in flight (default 256)")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long (default 60)")
    parser.add_argument("--delay", type=float, default=0.3, help="the CRM's seconds per call (default 0.3)")
    args = parser.parse_args(argv)
    if not wrk_available():
        print("wrk is not installed: apt-get install wrk", file=sys.stderr)
        return 2
    with ExitStack() as stack:
        folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="crm-mapper-bench-"))
        crm_log = stack.enter_context(open(os.path.join(folder, "upstream.log"), "wb"))
        server_log = stack.enter_context(open(os.path.join(folder, "server.log"), "wb"))
        crm_port, port = free_port(), free_port()
        crm_url = f"http://127.0.0.1:{crm_port}"
        stack.enter_context(process("upstream", upstream(crm_port, args.delay), {}, crm_port, crm_log, "/"))
        command = ["serve.py", "--mapping", "mappings/demo.yaml", "--port", str(port), *serve_options]
        env = {"DEMO_CRM_URL": crm_url, "MAPPER_AUTH_TOKENS": TOKEN}
        server = stack.enter_context(process("server", [sys.executable, *command], env, port, server_log))
        print(f"Holding {args.connections} requests in flight for {args.seconds:g} s...", file=sys.stderr, flush=True)
        cpu_before, calls_before = server.cpu_seconds(), crm_seen(crm_url)[0]
        result = wrk(server.url, mixed_script(), connections=args.connections, seconds=args.seconds,
                     threads=2, timeout=10)
        cpu, calls = server.cpu_seconds() - cpu_before, crm_seen(crm_url)[0] - calls_before
        server_log.flush()
        logged = Path(server_log.name).read_text(encoding="utf-8", errors="replace")
    print()
    shown = " ".join(["serve.py", "--mapping", "mappings/demo.yaml", *serve_options])
    print(f"Concurrency: python {shown} (the production command) against a CRM "
          f"answering every call after {args.delay * 1000:.0f} ms; wrk, {args.connections} connections for "
          f"{args.seconds:g} s; 70% lookup, 20% search, 10% case create + 1 interaction")
    print(f"Python {platform.python_version()} on {platform.system()} {platform.machine()}, {os.cpu_count()} CPUs "
          f"(load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())})")
    print()
    print(f"{'in flight':>9} {'requests':>9} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} "
          f"{'errors':>6} {'server CPU ms/req':>17}")
    print(f"{args.connections:9d} {result.requests:9d} {result.rps:7.0f} {result.p50_ms:7.0f} {result.p99_ms:7.0f} "
          f"{result.max_ms:7.0f} {result.errors:6d} {1000 * cpu / max(result.requests, 1):17.2f}")
    if result.errors:
        print(f"errors: {result.error_text}")
    overloaded = logged.count("error=overloaded")
    crm_errors = logged.count("error=crm_")
    print(f"server log: {overloaded} refused as overloaded, {crm_errors} CRM errors")
    expected = sum(weight * op.crm_calls for weight, op in MIX) / 100
    print(f"CRM calls per answered request: {calls / max(result.requests, 1):.2f} "
          f"(the mix makes {expected:.2f}; more from requests in flight when wrk stopped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
