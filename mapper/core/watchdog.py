"""Close a CRM connection when its call runs out of time, whatever the CRM does.

Socket timeouts bound each single read, not a whole call: a CRM that sends
its headers just before the timeout and then drips one byte per second (or
one chunk of a chunked body per timeout) keeps a call alive far past the
Khoros deadline, and the connect and read timeouts add up. So every CRM call
is *watched*: one thread per process keeps the calls' end times in a heap and,
when one passes, shuts the call's socket down. A blocked read then returns at
once, and the client reports a timeout because the watch says it fired.

Connections learn which watch they belong to when a request is written on
them (:class:`WatchedConnectionMixin`), through a thread-local set by the
caller (:func:`watching`). A connection reused later by another call belongs
to that call's watch, so a late watch can never cut someone else's call.

The watch is the only bound once a call is connected: its socket blocks, with no
timeout (see :class:`WatchedConnectionMixin`), which spares two system calls and,
under load, two thread switches per send and receive.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

# While a connection is still being opened it has no socket to shut down; the
# connect timeout (never longer than the call's time) ends that phase, and the
# watch looks again this often until it has a socket or the call finished.
RECHECK_SECONDS = 0.02

_LOCK = threading.Lock()  # guards which watch owns which connection, and firing
_current = threading.local()


class Watch:
    """One CRM call's end time; ``fired`` once its connection was shut down for it."""

    __slots__ = ("connection", "done", "ends", "fired")

    def __init__(self, ends: float) -> None:
        self.ends = ends
        self.connection: Any = None
        self.fired = False
        self.done = False


class Watchdog:
    """One daemon thread that fires watches in order of their end times."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Watch]] = []
        self._order = itertools.count()
        self._wakeup = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None

    def arm(self, seconds: float) -> Watch:
        watch = Watch(time.monotonic() + max(seconds, 0.0))
        self._push(watch)
        return watch

    def disarm(self, watch: Watch) -> None:
        with _LOCK:
            watch.done = True  # left in the heap; dropped when it comes first

    def _push(self, watch: Watch) -> None:
        with self._wakeup:
            heap = self._heap
            # The thread sleeps until the first end time; only a new first one changes that.
            # Waking it for every call would cost a thread switch per CRM call.
            sooner = not heap or watch.ends < heap[0][0]
            heapq.heappush(heap, (watch.ends, next(self._order), watch))
            if self._thread is None or not self._thread.is_alive():  # also after a fork
                self._thread = threading.Thread(target=self._loop, name="crm-call-watchdog", daemon=True)
                self._thread.start()
            elif sooner:
                self._wakeup.notify()

    def _loop(self) -> None:
        while True:
            with self._wakeup:
                heap = self._heap
                while True:
                    while heap and heap[0][2].done:  # finished calls: nothing to wait for
                        heapq.heappop(heap)
                    if heap and heap[0][0] <= time.monotonic():
                        break
                    self._wakeup.wait(heap[0][0] - time.monotonic() if heap else None)
                _, _, watch = heapq.heappop(heap)
            if not _fire(watch):
                watch.ends = time.monotonic() + RECHECK_SECONDS
                self._push(watch)


def _fire(watch: Watch) -> bool:
    """Shut the watched call's socket down; False when it has none yet (still connecting)."""
    with _LOCK:
        if watch.done:
            return True
        connection = watch.connection
        if connection is None:
            # Nothing written yet: the call is still connecting (bounded by its connect
            # timeout). Marked, so that the request is not written when the connect succeeds.
            watch.fired = True
            return False
        if getattr(connection, "watch", None) is not watch:
            return True  # the connection moved on to another call: this one had finished
        # http.client lets go of the socket (sock = None) once the headers say the connection
        # closes after this answer, while the body is still read from it: keep our own handle.
        sock = getattr(connection, "sock", None) or getattr(connection, "opened_socket", None)
        watch.fired = True
        if sock is None:
            return False
        with contextlib.suppress(OSError):  # already closed by its reader
            sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked recv at once; close() alone would not
        return True


WATCHDOG = Watchdog()


def _after_fork_in_child() -> None:
    """A worker forked from a server that had made CRM calls starts with fresh state: the
    parent's thread does not exist in the child, and its locks may have been held at fork."""
    global _LOCK
    _LOCK = threading.Lock()
    WATCHDOG.__init__()  # type: ignore[misc]


os.register_at_fork(after_in_child=_after_fork_in_child)


@contextmanager
def watching(seconds: float) -> Iterator[Watch]:
    """Watch the CRM call made inside the block: its socket is shut down after ``seconds``."""
    watch = WATCHDOG.arm(seconds)
    _current.watch = watch
    try:
        yield watch
    finally:
        _current.watch = None
        WATCHDOG.disarm(watch)


class _SteadySocket(socket.socket):
    """A TCP socket that skips ``settimeout`` when the value does not change.

    urllib3 sets the timeout twice on every call (before writing, before reading), and
    each time is a system call that lets go of the GIL; with many threads that is a
    thread switch each. Watched calls keep one value (blocking), so both are skipped."""

    __slots__ = ()

    def settimeout(self, value: float | None) -> None:
        if value != self.gettimeout():
            super().settimeout(value)


class WatchedConnectionMixin:
    """Claims the current thread's watch when a request is written on this connection.

    Once connected, a watched call's socket blocks, with no timeout of its own: the
    watch bounds the whole exchange, and a socket with a timeout polls before every
    send and receive, two system calls (and two thread switches under load) where
    one does. The connect keeps its timeout: until there is a socket, the watch has
    nothing to shut down."""

    watch: Watch | None = None
    opened_socket: socket.socket | None = None

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        sock = self.sock  # type: ignore[attr-defined]
        if type(sock) is socket.socket:  # plain TCP; a TLS socket keeps its own class
            sock.__class__ = _SteadySocket
        self.opened_socket = sock

    def request(self, *args: Any, **kwargs: Any) -> Any:
        watch = getattr(_current, "watch", None)
        with _LOCK:
            self.watch = watch
            if watch is not None:
                watch.connection = self
                if watch.fired:  # the time ran out while connecting
                    raise TimeoutError("the call's time ran out before the request was written")
        connection: Any = self  # an urllib3 connection: this class is mixed into one
        if watch is not None and connection.sock is not None:
            connection.timeout = None  # reused: the watch bounds the write (urllib3 applies this)
        return super().request(*args, **kwargs)  # type: ignore[misc]


class WatchedHTTPConnection(WatchedConnectionMixin, HTTPConnection):
    pass


class WatchedHTTPSConnection(WatchedConnectionMixin, HTTPSConnection):
    pass


class WatchedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = WatchedHTTPConnection


class WatchedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = WatchedHTTPSConnection


POOL_CLASSES = {"http": WatchedHTTPConnectionPool, "https": WatchedHTTPSConnectionPool}
