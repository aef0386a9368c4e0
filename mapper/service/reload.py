"""Reload without downtime: new requests get the new configuration only if all of it is good.

:class:`Runtime` holds the current :class:`~mapper.service.tenants.TenantSet`.
Each request takes a lease on the set that was current when it started and
keeps it to the end, so a reload never changes the mapping under a request
in flight. :meth:`Runtime.reload` re-reads the tenant file and every mapping,
checks everything (schema, compilation, environment); only if all of it
passes does it swap the new set in. The old set's connection pools are
closed when its last request ends. A broken file never replaces a good one:
the problems (``file:line: key: message``) are logged, kept for ``/readyz``
and counted in ``mapper_config_reloads_total{result="failed"}``.

Triggers: SIGHUP (:func:`install_sighup`, for ``mapper serve`` and each
gunicorn worker; see :mod:`mapper.service.gunicorn_hooks` for the master).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType

from ..errors import ConfigError
from . import metrics
from .tenants import TenantSet

log = logging.getLogger("mapper.reload")


def iso_time(moment: float) -> str:
    """UTC with milliseconds: ``mapper reload`` tells this reload's answer from an earlier one."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(moment)) + f".{int(moment % 1 * 1000):03d}Z"


@dataclass(frozen=True)
class ReloadResult:
    ok: bool
    generation: int  # the generation serving after this attempt
    at: float = field(default_factory=time.time)
    problems: tuple[str, ...] = ()

    def as_dict(self, detail: bool) -> dict[str, object]:
        out: dict[str, object] = {"ok": self.ok, "generation": self.generation, "at": iso_time(self.at)}
        if not self.ok:
            out["problem_count"] = len(self.problems)
            if detail:
                out["problems"] = list(self.problems)
        return out


class Runtime:
    """The configuration being served, swapped atomically by :meth:`reload`."""

    def __init__(self, tenants: TenantSet, loader: Callable[[], TenantSet] | None = None,
                 on_swap: Callable[[TenantSet], None] | None = None) -> None:
        self._current = tenants
        self._loader = loader
        self._on_swap = on_swap
        self._reload_lock = threading.Lock()
        self.last_reload: ReloadResult | None = None
        self.pid = os.getpid()  # a worker forked from the process that built it must re-read the files
        metrics.config_state(True)
        global _latest
        _latest = self

    def started_on_last_good(self, error: ConfigError) -> None:
        """The files on disk were broken at start; the last good copy is served instead."""
        problems = tuple(str(p) for p in error.problems)
        for problem in problems:
            log.error("the files on disk are broken, serving the last good copy: %s", problem)
        self.last_reload = ReloadResult(False, self._current.generation, problems=problems)
        metrics.config_state(False)

    @property
    def current(self) -> TenantSet:
        return self._current

    def acquire(self) -> TenantSet:
        """The set to serve one request with; it stays open until ``leave()`` is called."""
        while True:
            tenants = self._current
            if tenants.enter():  # else a reload retired it between the two lines: take the new one
                return tenants

    @contextmanager
    def lease(self) -> Iterator[TenantSet]:
        """:meth:`acquire` and ``leave()`` around a block."""
        tenants = self.acquire()
        try:
            yield tenants
        finally:
            tenants.leave()

    def reload(self) -> ReloadResult:
        """Re-read and check everything; swap only if all of it is good."""
        with self._reload_lock:  # two HUPs in a row: one reload after the other
            old = self._current
            if self._loader is None:
                result = ReloadResult(False, old.generation, problems=(
                    "this server was given a ready-made engine; there is no file to reload",))
            else:
                try:
                    new = self._loader()
                except ConfigError as exc:
                    problems = tuple(str(p) for p in exc.problems)
                    for problem in problems:
                        log.error("reload failed, still serving generation %d: %s", old.generation, problem)
                    result = ReloadResult(False, old.generation, problems=problems)
                except Exception as exc:  # a bug in loading must not take the server down
                    log.exception("reload failed unexpectedly, still serving generation %d", old.generation)
                    result = ReloadResult(False, old.generation, problems=(f"unexpected {type(exc).__name__}",))
                else:
                    new.generation = old.generation + 1
                    if self._on_swap is not None:
                        self._on_swap(new)  # e.g. teach the log redactor the new secrets first
                    self._current = new
                    old.retire()
                    log.info("reloaded %s: generation %d, tenants %s", new.source, new.generation,
                             ", ".join(new.tenants))
                    result = ReloadResult(True, new.generation)
            self.last_reload = result
            metrics.reload_done(result.ok)
            return result


_latest: Runtime | None = None


def latest() -> Runtime | None:
    """The runtime the last app built in this process (or before the fork) serves."""
    return _latest


def after_fork(runtime: Runtime) -> None:
    """In a worker forked from the process that loaded the files (gunicorn with the app
    built before the fork): load them again if they changed since (other workers may have
    reloaded them); as they were, the inherited copy is served, and the worker answers at
    once instead of paying the start-up's compilation twice. A broken file keeps the copy
    inherited from the parent, reported as a refused reload."""
    if runtime.pid != os.getpid():
        runtime.pid = os.getpid()
        if not runtime.current.same_on_disk():
            runtime.reload()


def install_sighup(runtime: Runtime, on_done: Callable[[ReloadResult], None] | None = None) -> None:
    """Reload on SIGHUP, in a thread: the signal handler itself returns at once, so the
    thread that accepts connections never waits for a reload. Main thread only."""

    def run() -> None:
        result = runtime.reload()
        if on_done is not None:
            on_done(result)

    def handler(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=run, name="mapper-reload", daemon=True).start()

    signal.signal(signal.SIGHUP, handler)
