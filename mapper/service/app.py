"""The Flask adapter: Khoros HTTP in, engine call, Khoros HTTP out.

All decisions live in the engine; this module only checks the Authorization
header, parses JSON, picks the trace id, calls :class:`~mapper.engine.Engine`
and serialises what comes back, including every error as the Khoros error
JSON. Routes are generated from the operation table in :mod:`mapper.khoros`.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import random
import time
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from ..core import context
from ..core.engine import DEFAULT_POOL_SIZE, Engine, Tenancy
from ..core.khoros import META_BUDGET, OPERATION_BUDGET, OPERATIONS, Operation
from ..core.limits import Limits, limits_from_environ, parse_body
from ..core.request_key import request_key
from ..errors import ConfigError, KhorosError, Problem, ServerError, Unauthorized
from . import health, http_errors, idempotency, metrics, openapi, routes
from .console import console_blueprint
from .logs import configure
from .reload import Runtime
from .tenants import (
    DEFAULT_ADMIN_ENV,
    DEPRECATED_CONSOLE_ENV,
    TenantSet,
    from_environment,
    last_good,
    save_last_good,
)

log = logging.getLogger("mapper.app")

API_PREFIX = "/api/v1"
# Only statuses Khoros knows may leave the server.
KHOROS_STATUSES = frozenset({200, 201, 204, 400, 401, 404, 422, 500})
# The WSGI environ key our gunicorn worker puts the request's arrival in (time.monotonic()).
ARRIVED_KEY = "mapper.arrived"
# An X-Request-Start older than this is a clock problem, not a queue: ignored.
MAX_QUEUE_AGE = 600.0
# What HTTP (RFC 9110 section 5.5) lets surround a header value: spaces and tabs.
HEADER_SPACE = " \t"
HEADER_SPACE_BYTES = HEADER_SPACE.encode()


def under_api(path: str) -> bool:
    """Every path under /api is a Khoros path: authenticated, whatever follows."""
    return path == "/api" or path.startswith("/api/")


def parse_tokens(raw: str | None) -> list[str]:
    """``MAPPER_AUTH_TOKENS`` holds one or more comma-separated values (for rotation)."""
    return [t.strip() for t in (raw or "").split(",") if t.strip()]


class TokenCheck:
    """Compares the Authorization header with every configured token in constant time."""

    def __init__(self, tokens: list[str]) -> None:
        tokens = [t.strip(HEADER_SPACE) for t in tokens if t.strip(HEADER_SPACE)]
        if not tokens:
            raise ConfigError([Problem("environment", 0, "MAPPER_AUTH_TOKENS",
                                       "no Khoros token is configured; set MAPPER_AUTH_TOKENS to the secret "
                                       "registered with Khoros (several, comma-separated, while rotating)")])
        self.tokens = tuple(tokens)
        self._tokens = [t.encode("utf-8") for t in tokens]

    def allows(self, header: str | None) -> bool:
        """Whether ``header`` is a configured token, alone or after ``Bearer``.

        The same under every server: the bytes Khoros sent (a WSGI server hands them over
        decoded as Latin-1) compared with the token's UTF-8 bytes, so a non-ASCII token can
        match; spaces and tabs around the value are dropped, as HTTP says and gunicorn
        does (Werkzeug's development server keeps them)."""
        if not header:
            return False
        try:
            raw = header.encode("latin-1")
        except UnicodeEncodeError:  # a str that never went through a WSGI server (a test client)
            raw = header.encode("utf-8", "replace")
        raw = raw.strip(HEADER_SPACE_BYTES)
        candidates = [raw]
        if raw[:7].lower() == b"bearer ":
            candidates.append(raw[7:].strip(HEADER_SPACE_BYTES))
        matched = False
        for token in self._tokens:  # no early exit: the time taken does not depend on which matched
            for candidate in candidates:
                matched |= hmac.compare_digest(candidate, token)
        return matched


def pool_size_from_environ() -> int:
    """``MAPPER_POOL_SIZE``, else ``MAPPER_THREADS`` (one connection per thread), else the default."""
    for name in ("MAPPER_POOL_SIZE", "MAPPER_THREADS"):
        raw = os.environ.get(name, "").strip()
        if raw:
            if not raw.isdigit() or int(raw) < 1:
                raise ConfigError([Problem("environment", 0, name, f"must be a whole number of at least 1, "
                                                                   f"not {raw!r}")])
            return int(raw)
    return DEFAULT_POOL_SIZE


def new_trace_id() -> str:
    """16 random hex digits, the id Khoros shows (as many as ``uuid4().hex[:16]`` kept).

    From :mod:`random` (seeded by the OS, and again in every forked worker), not from
    ``os.urandom``: a trace id is a label, not a secret, and a system call per request
    lets every other thread take the interpreter in between."""
    return f"{random.getrandbits(64):016x}"


def _json(payload: Any, status: int) -> Response:
    return Response(json.dumps(payload), status=status, mimetype="application/json")


def create_app(engine: Engine | None = None, *, mapping_path: str | None = None,
               tokens: list[str] | None = None, config_path: str | None = None,
               environ: dict[str, str] | None = None, admin_tokens: list[str] | None = None,
               console: bool | None = None, pool_size: int | None = None) -> Flask:
    """Build the Khoros-facing app.

    What it serves (see :func:`mapper.service.tenants.from_environment`): a ready
    ``engine``; or a server file listing tenants (``config_path``, default
    ``$MAPPER_CONFIG``); or one mapping (``mapping_path``, default
    ``$MAPPER_MAPPING``) with ``tokens`` (default ``$MAPPER_AUTH_TOKENS``).
    Everything is loaded here; :class:`~mapper.service.reload.Runtime` (in
    ``app.config["RUNTIME"]``) reloads it. ``pool_size`` (default from the
    environment, see :func:`pool_size_from_environ`) sizes each CRM connection pool.
    ``admin_tokens`` stands for ``$MAPPER_ADMIN_TOKENS``, the one admin token: it opens
    ``/metrics``, the detailed ``/readyz`` and the console's calls. The console
    (``/console``) is on only when asked, by ``console`` or ``$MAPPER_CONSOLE=on`` (or the
    deprecated ``$MAPPER_CONSOLE_TOKEN``): it can write to every CRM.
    """
    env = os.environ if environ is None else environ
    if admin_tokens is not None:
        env = {**env, DEFAULT_ADMIN_ENV: ",".join(admin_tokens)}
    if console is None:
        console = env.get("MAPPER_CONSOLE", "").strip().lower() in ("on", "1", "true", "yes") or bool(
            parse_tokens(env.get(DEPRECATED_CONSOLE_ENV)))
    if pool_size is None:  # connections to each CRM: one per thread that may call it
        pool_size = pool_size_from_environ() if engine is None else DEFAULT_POOL_SIZE
    broken: ConfigError | None = None
    try:
        tenants, loader = from_environment(engine, mapping_path=mapping_path, tokens=tokens,
                                           config_path=config_path, environ=env, pool_size=pool_size)
    except ConfigError as exc:
        copy = last_good(env)  # a worker started while the files on disk are broken
        if copy is None:
            raise
        tenants, loader = from_environment(engine, mapping_path=mapping_path, tokens=tokens,
                                           config_path=config_path, environ=env, texts=copy,
                                           pool_size=pool_size)
        broken = exc
    redactor = configure(env.get("MAPPER_LOG_LEVEL", "INFO"), tenants.secret_values,
                         fmt=env.get("MAPPER_LOG_FORMAT", "text"))

    def swapped(new: TenantSet) -> None:
        redactor.add(new.secret_values)
        save_last_good(new, env)

    guards = idempotency.Guards()
    runtime = Runtime(tenants, loader, on_swap=swapped)
    if broken is None:
        save_last_good(tenants, env)
    else:
        runtime.started_on_last_good(broken)
    metrics.install()

    limits = limits_from_environ(env)
    app = Flask("mapper")
    app.config["RUNTIME"] = runtime
    app.config["MAPPER_LIMITS"] = limits
    # Werkzeug stops reading a chunked body at this length without a word; one byte more
    # than the limit lets _read_body tell "exactly the limit" from "longer" (a 413 either way).
    app.config["MAX_CONTENT_LENGTH"] = limits.body_bytes + 1
    app.url_map.merge_slashes = False  # /api//v1/... is a 404 after auth, never a redirect before it
    app.url_map.converters[routes.CONVERTER] = routes.KhorosIdConverter

    @app.before_request
    def start() -> Response | None:
        # `request` and `g` are context-local proxies: each is looked up once per hook.
        req, state = request._get_current_object(), g._get_current_object()  # type: ignore[attr-defined]
        state.trace_id = trace_id = new_trace_id()
        state.started = started = time.monotonic()
        state.arrived = arrival(req.environ, started)
        state.context_token = context.begin(trace_id, operation=req.endpoint or "-")
        if under_api(req.path) or req.path == openapi.PATH:  # the document shows the data model
            state.tenants = runtime.acquire()  # this request keeps this generation to its end
            state.guard = guards.for_settings(state.tenants.idempotency)
            _select_tenant(state.tenants)
        return None

    @app.after_request
    def finish(response: Response) -> Response:
        req, state = request._get_current_object(), g._get_current_object()  # type: ignore[attr-defined]
        trace_id = state.get("trace_id", "-")
        path = req.path
        if path not in health.QUIET_PATHS:
            tenant = state.get("tenant")
            if tenant is not None:
                redactor.add(tenant.engine.secret_values)
            now = time.monotonic()
            started = state.get("started", now)
            seconds = now - started
            ctx = context.current()
            status, method = response.status_code, req.method
            log.info("trace=%s %s %s -> %s %.0fms", trace_id, method, path, status, seconds * 1000,
                     extra={"status": status, "duration_ms": round(seconds * 1000, 1),
                            "crm_calls": ctx.crm_calls if ctx else 0, "method": method, "path": path})
            if path.startswith(API_PREFIX):
                endpoint = req.endpoint
                operation = endpoint or "-"
                budget = META_BUDGET if operation == "meta" else OPERATION_BUDGET
                # The Khoros limit runs from arrival (queue time included), like the engine's budget.
                since_arrival = time.monotonic() - state.get("arrived", started)
                metrics.khoros_request(tenant.name if tenant else "-", operation, status, seconds,
                                       budget - since_arrival if endpoint else None)
        response.headers["X-Trace-Id"] = trace_id
        return response

    @app.teardown_request
    def release(exc: BaseException | None) -> None:
        tenants: TenantSet | None = g.pop("tenants", None)
        if tenants is not None:
            tenants.leave()
        token = g.pop("context_token", None)
        if token is not None:
            context.end(token)

    @app.errorhandler(KhorosError)
    def khoros_error(exc: KhorosError) -> Response:
        trace = g.get("trace_id", "-")
        level = logging.ERROR if exc.status >= 500 else logging.INFO
        log.log(level, "trace=%s error=%s status=%s message=%s%s", trace, exc.code, exc.status, exc.message,
                f" detail={exc.internal}" if exc.internal else "")
        response = _json(exc.to_json(trace), exc.status)
        response.headers.update(exc.headers())
        return response

    @app.errorhandler(HTTPException)
    def werkzeug_error(exc: HTTPException) -> Response:
        return khoros_error(http_errors.khoros_error_for(exc))

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        trace = g.get("trace_id", "-")
        log.exception("trace=%s unexpected %s", trace, type(exc).__name__)
        return _json(ServerError("Unexpected error in the CRM bridge; the trace id is in its log.").to_json(trace),
                     500)

    health.add_routes(app, runtime)

    @app.get(openapi.PATH, provide_automatic_options=False)
    def openapi_document() -> Response:
        return _json(openapi.document(g.tenant.engine.mapping, limits), 200)

    @app.get(f"{API_PREFIX}/meta/object/<kind>", provide_automatic_options=False)
    def meta(kind: str) -> Response:
        return _json(g.tenant.engine.meta(kind, g.trace_id, arrived=g.arrived), 200)

    if console:
        if tenants.admin is None:
            raise ConfigError([Problem("environment", 0, DEFAULT_ADMIN_ENV,
                                       "the console is on (MAPPER_CONSOLE) but no admin token is set; set "
                                       "MAPPER_ADMIN_TOKENS (or the server file's admin_tokens_env)")])

        def admin_allows(header: str | None) -> bool:  # the admin tokens of the generation in use
            check = runtime.current.admin
            return check is not None and check.allows(header)

        app.register_blueprint(console_blueprint(
            lambda: {name: tenant.engine for name, tenant in runtime.current.tenants.items()}, admin_allows))

    for op in OPERATIONS:
        app.add_url_rule(API_PREFIX + routes.url_rule(op.rule), endpoint=op.name, view_func=_view(op, limits),
                         methods=[op.method],
                         provide_automatic_options=False)  # OPTIONS is a 405 as Khoros JSON
    return app


def _select_tenant(tenants: TenantSet) -> None:
    """Pick the tenant the x-sf-* headers select, then check the Authorization value
    against that tenant's tokens only (another tenant's secret is a 401)."""
    headers = request.headers
    tenant = tenants.select(headers.get("x-sf-company-id"), headers.get("x-sf-initiative"))
    g.tenant = tenant
    ctx = context.current()
    if ctx is not None:
        ctx.tenant = tenant.name
    if not tenant.check.allows(headers.get("Authorization")):
        raise Unauthorized("Missing or wrong Authorization value: use the secret registered with Khoros "
                           "for this CRM.")


def _view(op: Operation, limits: Limits) -> Callable[..., Response]:
    def view(id: str | None = None) -> Response:
        engine: Engine = g.tenant.engine
        body = _read_body(limits) if op.method in ("POST", "PATCH", "PUT") else None
        headers = request.headers  # once: each access to `request` goes through a context-local proxy
        tenancy = Tenancy(
            user_email=headers.get("x-sf-user-email") or headers.get("x-sf-email"),
            initiative=headers.get("x-sf-initiative"),
            company_id=headers.get("x-sf-company-id"))
        key = request_key(op.name, body, idempotency.header_key(headers.get("Idempotency-Key")))

        def run() -> tuple[int, Any]:
            return engine.run(op.name, body, id=id, tenancy=tenancy, trace_id=g.trace_id, arrived=g.arrived,
                              limits=limits, idempotency_key=key)
        guard: idempotency.Guard = g.guard
        status, payload = guard.once(g.tenant.name, op.name, key, run, g.arrived)
        if status not in KHOROS_STATUSES:  # the operation table is ours; guard it anyway
            raise ServerError(f"Operation {op.name} produced HTTP {status}, which Khoros does not know.")
        return _json(payload, status)

    view.__name__ = op.name
    return view


def arrival(environ: dict[str, Any], now: float) -> float:
    """When the request reached us, on ``time.monotonic()``'s clock: Khoros's time limit runs
    from then, not from when a worker thread picked it up.

    Two sources, the earlier wins: :data:`ARRIVED_KEY`, set by our gunicorn worker when it
    accepted the request (see :mod:`mapper.service.server`), and a load balancer's
    ``X-Request-Start`` header (``t=<seconds, milliseconds or microseconds since the epoch>``,
    as nginx, Heroku and most proxies write it). A header from the future (clock skew) or
    one that cannot be read is ignored."""
    arrived = now
    queued = environ.get(ARRIVED_KEY)
    if isinstance(queued, float) and queued < arrived:
        arrived = queued
    header = environ.get("HTTP_X_REQUEST_START")
    if header:
        stamp = _epoch_seconds(header)
        if stamp is not None:
            age = time.time() - stamp
            if 0 < age < MAX_QUEUE_AGE:
                arrived = min(arrived, now - age)
    return arrived


def _epoch_seconds(header: str) -> float | None:
    text = header.strip()
    if text.startswith("t="):
        text = text[2:]
    try:
        value = float(text)
    except ValueError:
        return None
    if value > 1e14:  # microseconds
        return value / 1e6
    if value > 1e11:  # milliseconds
        return value / 1e3
    return value


def _read_body(limits: Limits) -> Any:
    try:
        raw = request.get_data(cache=False)
    except http_errors.BODY_READ_ERRORS as exc:  # the body ended early or its chunks are broken
        raise http_errors.body_read_failed(exc) from exc
    if len(raw) > limits.body_bytes:
        raise http_errors.too_large(limits)
    return parse_body(raw, limits)
