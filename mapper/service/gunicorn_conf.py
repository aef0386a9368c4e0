"""Gunicorn settings for serving crm-mapper in production.

``mapper serve`` (and ``serve.py``) runs gunicorn with these settings, after
applying its command-line options; the same module works as a gunicorn
config file for those who run gunicorn themselves::

    gunicorn -c python:mapper.service.gunicorn_conf 'mapper.service.app:create_app()'

(the app can be left out: ``wsgi_app`` below names it). SIGHUP to the master
reloads the mappings in every worker without restarting them, and the
multiprocess metrics follow the workers: see :mod:`mapper.service.gunicorn_hooks`.

Why threads (see docs/decisions.md, "Serving: gunicorn with many threads"):
a request spends nearly all its time waiting for the CRM (300 ms to 1 s per
call in real CRMs), so a process must hold many requests at once. Threads do
that without monkey-patching, and the GIL is released while waiting. Two
processes use both cores of a small machine for the CPU part.

Every value can be set by an environment variable, so a container can be
tuned without a new command line.
"""

from __future__ import annotations

import os

# Gunicorn reads its hooks as names of this module.
from mapper.service.gunicorn_hooks import child_exit, on_exit, post_worker_init, when_ready  # noqa: F401


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{name} must be a whole number of at least 1, not {raw!r}")
    return int(raw)


# The app, when the command line names none: configured by MAPPER_CONFIG (a server file),
# or MAPPER_MAPPING and MAPPER_AUTH_TOKENS.
wsgi_app = "mapper.service.app:create_app()"
# Where to listen. Behind a load balancer or proxy that terminates TLS (Khoros calls https://).
bind = [os.environ.get("MAPPER_BIND", "127.0.0.1:8080")]
# Processes: one per core is enough, the work is mostly waiting for the CRM.
workers = _int("MAPPER_WORKERS", 2)
# Requests each process serves at once. 2 x 128 holds 256 Khoros requests in flight against
# a CRM that takes 300 ms per call (benchmarks/concurrency.py). The CRM connection pool
# follows this number (mapper serve passes it to the engine).
threads = _int("MAPPER_THREADS", 128)
# Our worker: gunicorn's threaded worker, which also notes when each request arrived so
# that time spent waiting for a free thread counts against Khoros's 8 s limit.
worker_class = "mapper.service.server.ArrivalWorker"
# Open connections per process (keep-alive ones included) before it stops accepting more.
worker_connections = max(1000, 2 * threads)
# A process silent this long is killed and replaced (a request never legitimately runs
# longer than Khoros's 20 s limit for /meta).
timeout = _int("MAPPER_WORKER_TIMEOUT", 30)
# On stop or restart, requests in flight get this long to finish: Khoros waits 8 s at most.
graceful_timeout = _int("MAPPER_GRACEFUL_TIMEOUT", 10)
# Idle keep-alive connections from Khoros or the load balancer stay open this long.
keepalive = _int("MAPPER_KEEPALIVE", 5)
# Our app logs one line per Khoros request itself (mapper.app); gunicorn's access log would double it.
accesslog = None
errorlog = "-"
loglevel = os.environ.get("MAPPER_GUNICORN_LOG_LEVEL", "info")
# No runtime control socket: nothing should change a running server but its configuration.
control_socket_disable = True
