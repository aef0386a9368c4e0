"""Run the demo CRM in a background thread of the current process.

Why in-process: ``python serve.py`` must work with nothing else running, so
our server starts the demo CRM beside itself rather than asking the newcomer
to open a second terminal. Werkzeug's threaded server is enough for a demo
and for tests; it is not meant for production traffic.
"""

from __future__ import annotations

import functools
import os
import tempfile
import threading
from collections.abc import Callable

from werkzeug.serving import make_server

from democrm.app import create_app


def start_demo_crm(
    db_path: str,
    host: str = "127.0.0.1",
    port: int = 0,
    api_key: str | None = None,
) -> tuple[str, Callable[[], None]]:
    """Serve the demo CRM over ``db_path`` and return ``(base_url, stop)``.

    ``port=0`` lets the kernel pick a free port; the returned URL carries the
    real one. ``stop()`` shuts the server down, releases the port and may be
    called more than once.
    """
    app = create_app(db_path, api_key=api_key)
    server = make_server(host, port, app, threaded=True)
    # A short poll interval makes stop() return in ~0.1 s instead of 0.5 s.
    serve = functools.partial(server.serve_forever, poll_interval=0.1)
    thread = threading.Thread(target=serve, name="democrm", daemon=True)
    thread.start()
    lock = threading.Lock()
    stopped = False

    def stop() -> None:
        nonlocal stopped
        with lock:
            if stopped:
                return
            stopped = True
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return f"http://{url_host(host)}:{server.server_port}", stop


def url_host(host: str) -> str:
    """The host part of a URL that reaches a server bound to ``host``."""
    if host in ("", "0.0.0.0"):  # a wildcard bind is reached via loopback
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def prepare_demo() -> str:
    """Start the demo CRM for ``mapper serve`` without ``--mapping``; return the mapping to serve.

    Registered as the ``crm_mapper.demo`` entry point (setup.cfg), so the
    engine's CLI finds the demo without naming it. The data lives in
    ``$DEMO_CRM_DATA`` (default: a folder in the system's temp directory) and
    survives restarts; ``DEMO_CRM_URL`` tells ``mappings/demo.yaml`` where it runs.
    """
    data_dir = os.environ.get("DEMO_CRM_DATA") or os.path.join(tempfile.gettempdir(), "crm-mapper-demo")
    os.makedirs(data_dir, exist_ok=True)
    url, _stop = start_demo_crm(os.path.join(data_dir, "democrm.sqlite3"))
    os.environ["DEMO_CRM_URL"] = url
    print(f"Demo CRM running at {url} (data in {data_dir})")
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "mappings", "demo.yaml")
