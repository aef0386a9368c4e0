"""Prometheus metrics: what Khoros asked, what the CRMs answered, how much time was left.

Every series carries the tenant. Under gunicorn with several workers, set
``PROMETHEUS_MULTIPROC_DIR`` to an empty directory writable by the server
(before it starts): each worker then writes its samples there and
``GET /metrics`` adds up every worker's (``prometheus_client`` multiprocess
mode; :mod:`mapper.service.gunicorn_hooks` removes the files of dead
workers' gauges). Without it, the process's own registry is served.

The engine reports through :class:`mapper.core.context.Observer`; this module
installs the observer that turns those reports into samples.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess

from ..core import context

# Seconds; Khoros gives up after 8 s (20 s for /meta).
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 6.0, 8.0, 12.0, 20.0)
BUDGET_BUCKETS = (0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 7.5, 8.0, 12.0, 16.0, 20.0)

KHOROS_REQUESTS = Counter("mapper_khoros_requests_total", "Khoros requests answered",
                          ["tenant", "operation", "status"])
KHOROS_SECONDS = Histogram("mapper_khoros_request_seconds", "Time to answer a Khoros request",
                           ["tenant", "operation"], buckets=LATENCY_BUCKETS)
BUDGET_LEFT = Histogram("mapper_budget_left_seconds",
                        "Seconds of the Khoros time limit left when the answer left (0: too late)",
                        ["tenant", "operation"], buckets=BUDGET_BUCKETS)
CRM_CALLS = Counter("mapper_crm_calls_total", "HTTP calls to the CRM, by Khoros operation, mapping step (its "
                    "name, or the one made from its request) and status (HTTP status, or the error code when "
                    "there was no answer)",
                    ["tenant", "operation", "step", "status"])
CRM_SECONDS = Histogram("mapper_crm_call_seconds", "Time of one CRM call", ["tenant", "operation", "step"],
                        buckets=LATENCY_BUCKETS)
CRM_RETRIES = Counter("mapper_crm_retries_total", "CRM calls sent again", ["tenant", "reason"])
RATE_LIMIT_WAITS = Counter("mapper_crm_rate_limit_waits_total", "429 answers waited out", ["tenant"])
RATE_LIMIT_SECONDS = Counter("mapper_crm_rate_limit_wait_seconds_total", "Seconds spent waiting out 429s",
                             ["tenant"])
TOKEN_REFRESHES = Counter("mapper_crm_token_refreshes_total", "OAuth tokens fetched from the CRM",
                          ["tenant", "outcome"])
IDEMPOTENT_REPLAYS = Counter("mapper_idempotent_replays_total",
                             "Repeated Khoros writes answered from the idempotency store", ["tenant"])
RELOADS = Counter("mapper_config_reloads_total", "Configuration reloads (counted in every worker)", ["result"])
_config_ok: Gauge | None = None  # made on first use: a process that serves nothing must not report 0


class Children:
    """The labelled series of one metric, found again by their label values.

    ``metric.labels(...)`` checks its arguments, turns each into ``str`` and takes the
    metric's lock on every call; a Khoros request records five samples and makes the
    same label sets again and again, so each set's series is kept here after its first
    use (the label sets are few: tenants x operations x steps x statuses). Values must
    already be strings, as Prometheus stores them."""

    def __init__(self, metric: Any) -> None:
        self.metric = metric
        self._series: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        series = self._series.get(values)
        if series is None:  # two threads may both get here: labels() hands both the same series
            series = self._series[values] = self.metric.labels(*values)
        return series


_KHOROS_REQUESTS = Children(KHOROS_REQUESTS)
_KHOROS_SECONDS = Children(KHOROS_SECONDS)
_BUDGET_LEFT = Children(BUDGET_LEFT)
_CRM_CALLS = Children(CRM_CALLS)
_CRM_SECONDS = Children(CRM_SECONDS)


class PrometheusObserver(context.Observer):
    """Engine events -> samples, labelled with the tenant of the current request."""

    def crm_call(self, step: str, status: str, seconds: float) -> None:
        ctx = context.current()
        tenant, operation = (ctx.tenant, ctx.operation) if ctx else ("-", "-")
        _CRM_CALLS(tenant, operation, step, str(status)).inc()
        _CRM_SECONDS(tenant, operation, step).observe(seconds)

    def rate_limit_wait(self, seconds: float) -> None:
        RATE_LIMIT_WAITS.labels(context.tenant()).inc()
        RATE_LIMIT_SECONDS.labels(context.tenant()).inc(seconds)

    def token_refresh(self, outcome: str) -> None:
        TOKEN_REFRESHES.labels(context.tenant(), outcome).inc()

    def retry(self, reason: str) -> None:
        CRM_RETRIES.labels(context.tenant(), reason).inc()

    def idempotent_replay(self) -> None:
        IDEMPOTENT_REPLAYS.labels(context.tenant()).inc()


def install() -> None:
    context.install(PrometheusObserver())


def khoros_request(tenant: str, operation: str, status: int, seconds: float, budget_left: float | None) -> None:
    """One answer: ``seconds`` to serve it, ``budget_left`` of the Khoros limit when it left."""
    _KHOROS_REQUESTS(tenant, operation, str(status)).inc()
    _KHOROS_SECONDS(tenant, operation).observe(seconds)
    if budget_left is not None:
        _BUDGET_LEFT(tenant, operation).observe(max(budget_left, 0.0))


def reload_done(ok: bool) -> None:
    RELOADS.labels("ok" if ok else "failed").inc()
    config_state(ok)


def config_state(ok: bool) -> None:
    global _config_ok
    if _config_ok is None:
        _config_ok = Gauge("mapper_config_last_reload_ok", "1 when the last reload (or the start) loaded every "
                           "file; 0 when a broken file was refused", multiprocess_mode="livemin")
    _config_ok.set(1 if ok else 0)


def exposition() -> tuple[bytes, str]:
    """The text to answer ``GET /metrics`` with, and its content type."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
