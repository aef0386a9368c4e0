"""Serve a WSGI app on a loopback port in a background thread.

Tests talk to real HTTP servers, not to mocks: the vendor fakes, the demo CRM
and our own Khoros-facing app are all served through this one helper so that
every test exercises sockets, headers and status lines as Khoros or a CRM
would see them.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from werkzeug.serving import make_server


def free_port() -> int:
    """Ask the kernel for a free loopback port (racy, but fine for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiveServer:
    """A running server: ``url`` is its base URL, ``stop()`` ends it."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = make_server(host, port, app, threaded=True)
        self.port = self._server.server_port
        self.url = f"http://{host}:{self.port}"
        # A short poll interval makes stop() quick; tests start and stop many servers.
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def start(self) -> LiveServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@contextmanager
def serve(app, host: str = "127.0.0.1", port: int = 0) -> Iterator[LiveServer]:
    """Context manager form of :class:`LiveServer`."""
    server = LiveServer(app, host, port).start()
    try:
        yield server
    finally:
        server.stop()
