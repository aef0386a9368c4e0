"""Gunicorn server hooks: reload in place on SIGHUP, and multiprocess metrics.

Gunicorn's own SIGHUP starts new workers and stops the old ones. That is
not safe for us: a worker that cannot load a broken mapping fails to boot,
and gunicorn then stops the whole server. So the master's SIGHUP handler is
replaced (:func:`when_ready`): it sends SIGHUP to every worker, and each
worker reloads in place (:mod:`mapper.service.reload`): it re-reads and
checks every file, swaps them in only if all are good, and requests in
flight finish on the files they started with. Nothing restarts; a broken
file is refused and reported in ``/readyz`` and ``/metrics``.

What SIGHUP no longer does: re-read gunicorn's own settings (workers,
bind...). Restart the service for those, or for new code.

Use through the configuration module (``gunicorn -c python:mapper.service.gunicorn_conf``)
or import these names into your own.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from typing import Any

# The master imports this module, but nothing of the app: a metric created in the master
# would be a live process in the multiprocess files (a gauge reading 0 forever).

_made_folder: str | None = None  # the temporary folder when_ready made, if it made one


def when_ready(server: Any) -> None:
    """Master, before the first workers start: give them a place for the last good copy of
    the files (see :func:`mapper.service.tenants.save_last_good`), and on SIGHUP ask every
    worker to reload in place instead of replacing it."""
    global _made_folder
    if not os.environ.get("MAPPER_LAST_GOOD"):
        _made_folder = tempfile.mkdtemp(prefix="crm-mapper-")  # 0700, removed by on_exit
        os.environ["MAPPER_LAST_GOOD"] = os.path.join(_made_folder, "last-good.json")

    def forward_hup() -> None:
        pids = list(server.WORKERS)
        server.log.info("SIGHUP: asking %d worker(s) to reload their mappings in place", len(pids))
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):  # exited since we listed it
                os.kill(pid, signal.SIGHUP)

    server.handle_hup = forward_hup


def post_worker_init(worker: Any) -> None:
    """Worker: reload on SIGHUP (gunicorn leaves SIGHUP at its default, which would end the worker)."""
    from .reload import after_fork, install_sighup, latest

    config = getattr(worker.wsgi, "config", None)  # the Flask app, unless a middleware wraps it
    runtime = config.get("RUNTIME") if config is not None else latest()
    if runtime is not None:
        after_fork(runtime)
        install_sighup(runtime)
    else:  # an app not built by create_app: ignore SIGHUP rather than die of it
        signal.signal(signal.SIGHUP, signal.SIG_IGN)


def child_exit(server: Any, worker: Any) -> None:
    """Master: a worker ended; drop its live gauges from the multiprocess metrics."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def on_exit(server: Any) -> None:
    """Master, stopping: remove the folder :func:`when_ready` made for the last good copy."""
    if _made_folder is not None:
        shutil.rmtree(_made_folder, ignore_errors=True)
