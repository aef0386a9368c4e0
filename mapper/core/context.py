"""The request being served, visible to code that knows no web framework.

The HTTP layer opens a :class:`RequestContext` when a Khoros request starts
(trace id, tenant) and closes it when the answer leaves; the engine, the
upstream client and logging read it from a :mod:`contextvars` variable, so a
log line written deep in :mod:`mapper.core.upstream` still carries the trace
id, and a counter knows which tenant to charge. Each thread (and each
greenlet under gevent) sees its own request.

:class:`Observer` is where the engine reports what it does (CRM calls, 429
waits, token refreshes, retries, idempotent replays). The default observer
does nothing; the service installs one that feeds Prometheus
(:mod:`mapper.service.metrics`). Callers use the module functions
(``context.crm_call(...)``), never an observer directly.
"""

from __future__ import annotations

import contextvars
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class RequestContext:
    """What is known about the Khoros request being served."""

    trace_id: str
    tenant: str = "-"
    operation: str = "-"
    crm_calls: int = 0


_current: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar("mapper_request", default=None)


def current() -> RequestContext | None:
    """The request being served in this thread or greenlet, or None outside a request."""
    return _current.get()


def begin(trace_id: str, tenant: str = "-", operation: str = "-") -> contextvars.Token[RequestContext | None]:
    """Open the context of a new request; pass the token to :func:`end`."""
    return _current.set(RequestContext(trace_id, tenant, operation))


def end(token: contextvars.Token[RequestContext | None]) -> None:
    _current.reset(token)


@contextmanager
def request(trace_id: str, tenant: str = "-", operation: str = "-") -> Iterator[RequestContext]:
    """``with context.request(trace):`` for code that serves a request outside Flask."""
    token = begin(trace_id, tenant, operation)
    try:
        ctx = _current.get()
        assert ctx is not None
        yield ctx
    finally:
        end(token)


def trace_id() -> str:
    ctx = _current.get()
    return ctx.trace_id if ctx else "-"


def tenant() -> str:
    ctx = _current.get()
    return ctx.tenant if ctx else "-"


def traceparent(trace: str) -> str | None:
    """A W3C ``traceparent`` value carrying ``trace`` (hex), with a new span id per call.

    W3C trace ids are 32 hex digits; ours are 16 (the id Khoros shows), so they
    are left-padded with zeros, as systems with 64-bit trace ids do: the CRM's
    log then holds our id verbatim at the end. None when ``trace`` is not hex.
    """
    if not trace or len(trace) > 32 or any(c not in "0123456789abcdef" for c in trace) or not trace.strip("0"):
        return None
    return f"00-{trace.rjust(32, '0')}-{secrets.token_hex(8)}-01"


class Observer:
    """Receives what the engine does; this base does nothing. Labels other than
    the tenant are passed in; the tenant comes from :func:`current`."""

    def crm_call(self, step: str, status: str, seconds: float) -> None:
        """One HTTP exchange with the CRM finished (``status``: HTTP status or error code)."""

    def rate_limit_wait(self, seconds: float) -> None:
        """The CRM answered 429 and we are waiting ``seconds`` before trying again."""

    def token_refresh(self, outcome: str) -> None:
        """An OAuth token was fetched (``outcome``: ``ok`` or ``failed``)."""

    def retry(self, reason: str) -> None:
        """A CRM call is being sent again (``reason``: why, e.g. ``expired_credentials``)."""

    def idempotent_replay(self) -> None:
        """A repeated Khoros write was answered from the idempotency store."""


_observer: Observer = Observer()


def install(observer: Observer) -> None:
    """Route engine events to ``observer`` (process-wide)."""
    global _observer
    _observer = observer


def crm_call(step: str, status: str, seconds: float) -> None:
    ctx = _current.get()
    if ctx is not None:
        ctx.crm_calls += 1
    _observer.crm_call(step, status, seconds)


def rate_limit_wait(seconds: float) -> None:
    _observer.rate_limit_wait(seconds)


def token_refresh(outcome: str) -> None:
    _observer.token_refresh(outcome)


def retry(reason: str) -> None:
    _observer.retry(reason)


def idempotent_replay() -> None:
    _observer.idempotent_replay()
