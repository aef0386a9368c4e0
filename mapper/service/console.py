"""The console: a page where an administrator tries one Khoros operation by hand.

Off by default: it is switched on with ``MAPPER_CONSOLE=on`` and opened with
the one admin token (``MAPPER_ADMIN_TOKENS``, several comma-separated while
rotating; the deprecated ``MAPPER_CONSOLE_TOKEN`` still works and switches it
on), which is never one of the Khoros tokens: the console can write to every
tenant's CRM.

The page itself (``console.html``) holds no data and no secret, so it is served
to anyone who can reach ``/console`` while the console is on; everything it
shows comes from two JSON calls that need the admin token in ``Authorization``:

- ``GET /console/api/setup``: the tenants, the operation table and each
  tenant's live data model, from which the page builds its forms;
- ``POST /console/api/run`` ``{tenant, operation, id, body}``: runs the
  operation through the tenant's engine, exactly as ``mapper run`` does, and
  answers ``{status, answer, trace, traceId}``. ``trace`` is the step-by-step
  text of :class:`~mapper.workbench.trace.TextTrace`, secrets redacted.

A run from the console bypasses only what belongs to Khoros's own calls (the
Khoros token and the idempotency store); it is a real call to the CRM, and a
create creates.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict
from importlib import resources
from typing import Any

from flask import Blueprint, Response, request

from ..core.engine import Engine, Tenancy
from ..core.khoros import BESTMATCH_FIELDS, META_TYPES, OPERATIONS, OPERATIONS_BY_NAME
from ..errors import BadRequest, KhorosError, NotFound, Unauthorized
from ..workbench.trace import Redactor, TextTrace

# The longest trace the page is sent; a run that pages through a whole CRM stays readable.
MAX_TRACE_LINES = 400


def _json(payload: Any, status: int = 200) -> Response:
    return Response(json.dumps(payload), status=status, mimetype="application/json")


def console_blueprint(engines: Callable[[], Mapping[str, Engine]],
                      admin_allows: Callable[[str | None], bool]) -> Blueprint:
    """The console's routes. ``engines`` is asked on every call, so a reload is seen at once;
    ``admin_allows`` judges the ``Authorization`` header against the admin tokens."""
    page = resources.files(__package__).joinpath("console.html").read_text(encoding="utf-8")
    console = Blueprint("console", __name__)

    @console.before_request
    def require_admin() -> None:
        if request.path.startswith("/console/api/") and not admin_allows(request.headers.get("Authorization")):
            raise Unauthorized("The console needs the admin token (MAPPER_ADMIN_TOKENS) in Authorization.")

    @console.get("/console")
    def show_page() -> Response:
        return Response(page, mimetype="text/html",
                        headers={"Content-Security-Policy": "default-src 'self'; script-src 'unsafe-inline'; "
                                                            "style-src 'unsafe-inline'",
                                 "Cache-Control": "no-store"})

    @console.get("/console/api/setup")
    def setup() -> Response:
        tenants = []
        for name, engine in engines().items():
            models = {kind: _model_or_problem(engine, kind) for kind in META_TYPES}
            tenants.append({"name": name, "mapping": engine.mapping.name, "models": models})
        operations = [{**asdict(op), "hasId": op.has_id} for op in OPERATIONS]
        return _json({"tenants": tenants, "operations": operations, "bestmatchFields": list(BESTMATCH_FIELDS)})

    @console.post("/console/api/run")
    def run() -> Response:
        order = request.get_json(silent=True)
        if not isinstance(order, dict):
            raise BadRequest("Send {tenant, operation, id, body} as a JSON object.")
        engine = engines().get(str(order.get("tenant")))
        if engine is None:
            raise NotFound(f"There is no tenant {str(order.get('tenant'))[:80]!r} on this server.")
        op = OPERATIONS_BY_NAME.get(str(order.get("operation")))
        if op is None:
            raise NotFound(f"There is no operation {str(order.get('operation'))[:80]!r}.")
        item_id = order.get("id") or None
        if op.has_id and not isinstance(item_id, str):
            raise BadRequest(f"{op.name} needs an id.")
        body = order.get("body") if op.method in ("POST", "PATCH") else None
        trace_id = uuid.uuid4().hex[:16]
        lines: list[str] = []
        trace = TextTrace(lines.append, Redactor(sources=[lambda: engine.secret_values]))
        try:
            status, answer = engine.run(op.name, body, id=item_id if op.has_id else None,
                                        tenancy=Tenancy(user_email="console"), trace_id=trace_id, trace=trace)
        except KhorosError as exc:
            status, answer = exc.status, exc.to_json(trace_id)
        if len(lines) > MAX_TRACE_LINES:
            lines = [*lines[:MAX_TRACE_LINES], f"... {len(lines) - MAX_TRACE_LINES} more lines"]
        return _json({"status": status, "answer": answer, "trace": lines, "traceId": trace_id})

    return console


def _model_or_problem(engine: Engine, kind: str) -> dict[str, Any]:
    """The tenant's data model for the forms; a CRM that is down still leaves the page usable."""
    try:
        return engine.meta(kind)
    except KhorosError as exc:
        return {"fields": [], "problem": exc.message}
