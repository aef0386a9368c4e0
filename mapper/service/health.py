"""Operator endpoints: ``/healthz`` (alive), ``/readyz`` (configuration loaded, last
reload, CRM reachability) and ``/metrics`` (Prometheus).

``/healthz`` and ``/readyz`` answer anyone, but say little: whether the server
serves, its configuration generation and whether the last reload passed.
With an admin token (``Authorization: Bearer <token>``, tokens from
``$MAPPER_ADMIN_TOKENS`` or the server file's ``admin_tokens_env``) ``/readyz``
adds the tenants, the files read and the problems of a refused reload, and
``?crm=1`` checks that each tenant's CRM answers HTTP at all. ``/metrics``
needs the admin token: the series name tenants and mapping steps.
"""

from __future__ import annotations

import json
from typing import Any

import requests
from flask import Flask, Response, request

from ..errors import Unauthorized
from . import metrics
from .reload import Runtime
from .tenants import Tenant, TenantSet

# Probes and scrapes: not logged per request, not counted as Khoros requests.
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
CRM_PROBE_SECONDS = 2.0


def _json(payload: Any, status: int = 200) -> Response:
    return Response(json.dumps(payload), status=status, mimetype="application/json")


def is_admin(tenants: TenantSet) -> bool:
    return tenants.admin is not None and tenants.admin.allows(request.headers.get("Authorization"))


def require_admin(tenants: TenantSet) -> None:
    if tenants.admin is None:
        raise Unauthorized("No admin token is configured on this server; set MAPPER_ADMIN_TOKENS (or the "
                           "variable the server file's admin_tokens_env names) to read this.")
    if not is_admin(tenants):
        raise Unauthorized("Missing or wrong admin token: send 'Authorization: Bearer <admin token>'.")


def crm_reachable(tenant: Tenant) -> dict[str, Any]:
    """Any HTTP answer from the CRM's base URL counts: this checks the network, not credentials."""
    base_url = getattr(tenant.engine, "_static_base_url", None)
    if not base_url:
        return {"reachable": None, "why": "the base URL depends on the OAuth answer"}
    try:
        answer = tenant.engine.client.session.head(base_url, timeout=CRM_PROBE_SECONDS, allow_redirects=False)
    except requests.RequestException as exc:
        return {"reachable": False, "why": type(exc).__name__}
    return {"reachable": True, "status": answer.status_code}


def add_routes(app: Flask, runtime: Runtime) -> None:
    @app.get("/healthz")
    def healthz() -> Response:
        tenants = runtime.current
        if len(tenants.tenants) == 1 and tenants.default is not None:  # the single-mapping server
            return _json({"status": "ok", "mapping": tenants.default.engine.mapping.name})
        return _json({"status": "ok"})

    @app.get("/readyz")
    def readyz() -> Response:
        tenants = runtime.current
        detail = is_admin(tenants)
        last = runtime.last_reload
        body: dict[str, Any] = {"status": "ready", "generation": tenants.generation,
                                "last_reload": last.as_dict(detail) if last else None}
        if detail:
            body["source"] = tenants.source
            body["files"] = tenants.files
            body["tenants"] = {
                name: {"mapping": t.mapping_file, "crm": t.engine.mapping.name,
                       "default": t is tenants.default,
                       "company_ids": sorted(t.company_ids), "initiatives": sorted(t.initiatives)}
                for name, t in tenants.tenants.items()}
            if request.args.get("crm"):
                for name, t in tenants.tenants.items():
                    body["tenants"][name]["crm_check"] = crm_reachable(t)
        return _json(body)

    @app.get("/metrics")
    def metrics_text() -> Response:
        require_admin(runtime.current)
        text, content_type = metrics.exposition()
        return Response(text, status=200, headers={"Content-Type": content_type})
