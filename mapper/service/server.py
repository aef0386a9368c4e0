"""The production server: our Flask app under gunicorn, started from Python.

``mapper serve`` and ``serve.py`` build the app once (so a broken mapping or
a missing variable stops the start with ``file:line`` problems, before any
worker forks), then hand it to gunicorn with the settings of
:mod:`mapper.service.gunicorn_conf` overridden by the command line. There is
no development server anywhere in the path.

:class:`ArrivalWorker` is gunicorn's threaded worker plus one thing: it notes
when a request was handed to the thread pool, and the app takes Khoros's time
limit from then (see :func:`mapper.service.app.arrival`), so a request that
queued for a free thread is refused before it calls the CRM if it can no
longer answer in time.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.workers.gthread import ThreadWorker

from . import gunicorn_conf
from .app import ARRIVED_KEY

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

_current = threading.local()


class ArrivalWorker(ThreadWorker):
    """Gunicorn's threaded worker, noting when each request is queued for a thread."""

    def enqueue_req(self, conn: Any) -> None:
        # Called when a new connection is accepted, or a kept-alive one has a new request.
        conn.mapper_arrived = time.monotonic()
        super().enqueue_req(conn)

    def load_wsgi(self) -> None:
        super().load_wsgi()
        self.wsgi = with_arrival(self.wsgi)  # type: ignore[has-type]  # set by gunicorn

    def handle(self, conn: Any) -> Any:
        _current.arrived = getattr(conn, "mapper_arrived", None)
        try:
            return super().handle(conn)
        finally:
            _current.arrived = None


def with_arrival(app: WSGIApp) -> WSGIApp:
    """Put the arrival noted by :class:`ArrivalWorker` (same thread) into the WSGI environ."""

    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        arrived = getattr(_current, "arrived", None)
        if arrived is not None:
            environ[ARRIVED_KEY] = arrived
        return app(environ, start_response)

    return wsgi


def settings(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The gunicorn settings: :mod:`gunicorn_conf`, then ``overrides`` (None values skipped)."""
    values = {name: getattr(gunicorn_conf, name) for name in dir(gunicorn_conf)
              if not name.startswith("_") and name not in ("annotations", "os")}
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return values


class Server(BaseApplication):
    """Gunicorn running one already-built WSGI app with the given settings."""

    def __init__(self, app: WSGIApp, options: dict[str, Any]) -> None:
        self.application = app
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if key in self.cfg.settings:
                self.cfg.set(key, value)
        # The app is built before gunicorn starts (its problems are reported there), so every
        # worker inherits it; gunicorn never imports it again.
        self.cfg.set("preload_app", True)

    def load(self) -> WSGIApp:
        return self.application


def run(app: WSGIApp, options: dict[str, Any]) -> None:
    """Serve ``app`` until gunicorn is stopped (SIGTERM, SIGINT)."""
    Server(app, options).run()


IDEMPOTENCY_FILE = "idempotency.sqlite3"


def share_idempotency_store(workers: int, environ: MutableMapping[str, str]) -> str | None:
    """With more than one worker, give them one idempotency file (``MAPPER_IDEMPOTENCY_PATH``,
    which makes the sqlite store the default; a store named elsewhere still wins): a Khoros
    retry may reach another worker than the first attempt, and a memory store is one
    worker's alone. The file lives in a private folder, removed when the master exits.
    Returns the path, or None when one worker needs none or a path was set already."""
    if workers <= 1 or environ.get("MAPPER_IDEMPOTENCY_PATH"):
        return None
    folder = tempfile.mkdtemp(prefix="crm-mapper-")
    master = os.getpid()

    def remove() -> None:  # workers leave through sys.exit too: only the master removes it
        if os.getpid() == master:
            shutil.rmtree(folder, ignore_errors=True)

    atexit.register(remove)
    path = environ["MAPPER_IDEMPOTENCY_PATH"] = os.path.join(folder, IDEMPOTENCY_FILE)
    return path

