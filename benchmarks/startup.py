"""Process start to first answer, for every shipped mapping: must stay under 1 s.

Run from the repository root::

    python -m benchmarks.startup [--repeat 3]

For each ``mappings/*.yaml`` it runs the production command,
``python serve.py --mapping <file> --workers 1 --threads 4``, with made-up
values for the environment variables the mapping reads (nothing is called:
the first answer is ``/healthz``, which needs the mapping loaded, checked and
compiled and a gunicorn worker up), and times from starting the process to
that first answer. Then it stops the server. Printed: the median and the
worst of ``--repeat`` starts per mapping, and the CPU time the server's
processes used until then (what the start costs without other load).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import requests

from benchmarks.harness import ROOT, TOKEN, children, cpu_of, free_port
from mapper.core.compiler import compile_file

LIMIT = 1.0


def made_up_environment(path: Path) -> dict[str, str]:
    """A value for every variable the mapping needs (no default): a loopback URL where one is expected."""
    mapping = compile_file(str(path))
    env = {}
    for setting in [*mapping.settings, *mapping.secrets]:
        if setting.env and not setting.has_default:
            url = any(word in setting.env.upper() for word in ("URL", "HOST", "DOMAIN", "ENDPOINT"))
            env[setting.env] = "http://127.0.0.1:9" if url else "benchmark-value-0123456789"
    return env


def first_answer(path: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the server's processes) from start to the first answer."""
    port = free_port()
    env = {**os.environ, **made_up_environment(path), "MAPPER_AUTH_TOKENS": TOKEN}
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "serve.py", "--mapping", str(path.relative_to(ROOT)), "--port", str(port),
         "--workers", "1", "--threads", "4"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while True:
            if process.poll() is not None:
                raise SystemExit(f"{path.name}: the server exited: {process.stderr.read().decode()[-2000:]}"
                                 if process.stderr else f"{path.name}: the server exited")
            try:
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    wall = time.monotonic() - started
                    return wall, sum(cpu_of(pid) for pid in [process.pid, *children(process.pid)])
            except requests.RequestException:
                time.sleep(0.005)
            if time.monotonic() - started > 30:
                raise SystemExit(f"{path.name}: no answer within 30 s")
    finally:
        process.terminate()
        process.wait(timeout=15)
        if process.stderr:
            process.stderr.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.startup", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="starts per mapping (default 3)")
    args = parser.parse_args(argv)
    rows = []
    for path in sorted((ROOT / "mappings").glob("*.yaml")):
        print(f"starting {path.name}...", file=sys.stderr, flush=True)
        starts = [first_answer(path) for _ in range(args.repeat)]
        walls = [wall for wall, _ in starts]
        rows.append((path.name, statistics.median(walls), max(walls), statistics.median(cpu for _, cpu in starts)))
    print()
    print(f"Process start to first answer (serve.py, 1 process x 4 threads), {args.repeat} starts per mapping")
    print(f"Python {platform.python_version()} on {platform.system()} {platform.machine()}, {os.cpu_count()} CPUs "
          f"(load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())})")
    print()
    print(f"{'mapping':<20} {'median s':>8} {'worst s':>8} {'CPU s':>6}  under {LIMIT:g} s")
    for name, median, worst, cpu in rows:
        print(f"{name:<20} {median:8.2f} {worst:8.2f} {cpu:6.2f}  {'yes' if worst < LIMIT else 'NO'}")
    print()
    print("CPU s: user + system time of the server's processes until the first answer (median). On a busy\n"
          "machine the wall-clock time is longer than this; on an idle one it is close to it.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
