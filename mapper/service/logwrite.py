"""Writing log lines from many threads without making them queue for each other.

``logging.StreamHandler`` formats and writes each record while holding the
handler's lock, and the write (plus the flush after every line) is a system
call during which Python lets other threads run. Under gunicorn's threads,
with one line per Khoros request, that turns into a queue: the thread
holding the lock waits for the interpreter to come back to it while the
other threads pile up on the lock, each one a sleep and a wake-up. Measured
with ``benchmarks/throughput.py`` (py-spy), a quarter of the worker's
threads' samples were waits for that lock.

:class:`LineHandler` formats outside the lock and, when the stream is a real
file or pipe, writes each line with one ``os.write`` and no Python lock:
the kernel keeps a write of up to ``PIPE_BUF`` bytes whole (and any write to
a regular file opened for appending), so lines never interleave. Longer
lines, and streams without a file descriptor (tests' ``StringIO``), go
through the lock as before.
"""

from __future__ import annotations

import io
import logging
import os
import select
from typing import Any

# What POSIX promises to write in one piece to a pipe (Linux: 4096).
ATOMIC_BYTES = getattr(select, "PIPE_BUF", 512)


class LineHandler(logging.StreamHandler):
    """A stream handler writing each formatted line in one system call, without its lock."""

    def __init__(self, stream: Any = None) -> None:
        super().__init__(stream)
        self._learn(self.stream)

    def _learn(self, stream: Any) -> None:
        """The stream's file descriptor (None if it has none) and how it encodes text."""
        try:
            self._fd: int | None = stream.fileno()
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            self._fd = None
        self._encoding = getattr(stream, "encoding", None) or "utf-8"
        self._errors = getattr(stream, "errors", None) or "backslashreplace"

    def setStream(self, stream: Any) -> Any:
        old = super().setStream(stream)
        self._learn(self.stream)
        return old

    def handle(self, record: logging.LogRecord) -> Any:
        kept = self.filter(record)
        if not kept:
            return kept
        if isinstance(kept, logging.LogRecord):  # Python 3.12: a filter may hand back another record
            record = kept
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return kept
        data = line.encode(self._encoding, self._errors) if self._fd is not None else b""
        if self._fd is None or len(data) > ATOMIC_BYTES:
            with self.lock:  # type: ignore[union-attr]  # made by Handler.__init__
                try:
                    self.stream.write(line)
                    self.stream.flush()
                except Exception:
                    self.handleError(record)
            return kept
        try:
            self.stream.flush()  # whatever other code left in the stream's buffer goes first
            while data:
                data = data[os.write(self._fd, data):]
        except Exception:
            self.handleError(record)
        return kept
