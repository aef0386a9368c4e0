"""The engine: a compiled mapping bound to its environment, answering Khoros operations.

No web framework here: :meth:`Engine.run` takes plain data (the operation
name, the body, the path id, the tenancy headers, a trace id) and returns a
status and a JSON-ready payload, or raises a :class:`~mapper.errors.KhorosError`.
Everything expensive (parsing YAML, compiling templates and JSONPaths,
reading the environment, opening the connection pool) happens once in
:meth:`Engine.load`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from ..errors import (
    BadRequest,
    ConfigError,
    FieldError,
    KhorosError,
    MappingRuntimeError,
    NotFound,
    Problem,
    ServerError,
    Unsupported,
)
from .auth import SIGNERS, OAuth2
from .budget import Deadline
from .compiler import CompiledMapping, CompiledOperation, Setting, compile_document
from .khoros import META_BUDGET, META_TYPES, OPERATION_BUDGET, OPERATIONS_BY_NAME, Operation
from .model import (
    FIELD_TYPES,
    IDENTITY_FIELDS,
    Field,
    ObjectModel,
    check_bestmatch,
    check_customer_id,
    check_interactions,
)
from .pipeline import Run, Trace
from .shaping import Shaper
from .source import load_source
from .upstream import Client, Signer

log = logging.getLogger("mapper.engine")

# The live data model gets less than the full /meta budget so that a stale
# answer can still be served in time when the CRM hangs.
LIVE_MODEL_BUDGET = 10.0


@dataclass
class Tenancy:
    """The ``x-sf-*`` headers Khoros sends with every call (all optional)."""

    user_email: str | None = None
    initiative: str | None = None
    company_id: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        return {"user_email": self.user_email, "initiative": self.initiative, "company_id": self.company_id}


def utc_now() -> str:
    """The ``now`` every template sees: the current UTC time, to the second."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _resolve(settings: list[Setting], environ: Mapping[str, str], mapping: CompiledMapping, section: str,
             lines: dict[str, int]) -> tuple[dict[str, Any], list[Problem]]:
    values: dict[str, Any] = {}
    problems = []
    for setting in settings:
        if setting.env and environ.get(setting.env, "") != "":
            values[setting.name] = environ[setting.env]
        elif setting.has_default:
            values[setting.name] = setting.default
        else:
            problems.append(Problem(mapping.file, lines.get(setting.name, 0), f"{section}.{setting.name}",
                                    f"the environment variable '{setting.env}' is not set; set it before "
                                    "starting the server"))
    return values, problems


class Engine:
    """Serves every Khoros operation for one mapping."""

    def __init__(self, mapping: CompiledMapping, settings: dict[str, Any], secrets: dict[str, Any],
                 client: Client, headers: dict[str, str] | None = None) -> None:
        self.mapping = mapping
        self.headers = headers or {}  # connection.headers, rendered once at start-up
        self.settings = settings
        self.secrets = secrets
        self.client = client
        self.shapers = {kind: Shaper(kind, mapping.shapes[kind], mapping.shape_where[kind])
                        for kind in ("customer", "case")}
        # What ``now`` reads; ``mapper test`` fixes it to the recorded moment to replay a run.
        self.clock: Callable[[], str] = utc_now
        self._live_cache: dict[str, tuple[float, dict[str, Any]]] = {}
        self._live_lock = threading.Lock()
        self._merged_models: dict[str, tuple[dict[str, Any], ObjectModel]] = {}
        # Rendered once unless it depends on the OAuth answer (auth.<name>).
        self._static_base_url: str | None = None
        if "auth" not in mapping.base_url.names():
            self._static_base_url = str(mapping.base_url.evaluate({"settings": settings, "secrets": secrets}))

    # -- construction ----------------------------------------------------

    @classmethod
    def load(cls, path: str, environ: Mapping[str, str] | None = None) -> Engine:
        """Compile ``path`` and bind it to the environment; raise ConfigError listing every problem."""
        environ = os.environ if environ is None else environ
        doc = load_source(path)  # kept: environment problems name their lines too
        mapping = compile_document(doc)
        setting_lines = {s.name: doc.line_of(("settings", s.name)) for s in mapping.settings}
        secret_lines = {s.name: doc.line_of(("secrets", s.name)) for s in mapping.secrets}
        settings, problems = _resolve(mapping.settings, environ, mapping, "settings", setting_lines)
        secrets, secret_problems = _resolve(mapping.secrets, environ, mapping, "secrets", secret_lines)
        if problems or secret_problems:
            raise ConfigError(problems + secret_problems)
        static = {"settings": settings, "secrets": secrets}
        auth_values = {key: value.evaluate(static) for key, value in mapping.auth_values.items()}
        signer_class, _ = SIGNERS[mapping.auth_kind]
        signer: Signer
        if signer_class is OAuth2:
            signer = OAuth2(auth_values, **mapping.auth_paths)
        else:
            signer = signer_class(auth_values)  # type: ignore[call-arg]
        client = Client(call_timeout=mapping.timeout, max_body_bytes=mapping.max_response_bytes,
                        max_429_retries=mapping.retry_429, default_429_wait=mapping.retry_429_wait,
                        signer=signer)
        headers = {name: str(value.evaluate(static)) for name, value in mapping.headers.items()}
        return cls(mapping, settings, secrets, client, headers)

    @property
    def secret_values(self) -> list[str]:
        """Every secret value in use, so logging can redact them."""
        values = [str(v) for v in self.secrets.values() if v]
        signer = self.client.signer
        token = getattr(signer, "_token", None)
        if token:
            values.append(str(token))
        return values

    def close(self) -> None:
        self.client.close()

    # -- operations ------------------------------------------------------

    def run(self, name: str, body: Any, *, id: str | None = None, tenancy: Tenancy | None = None,
            trace_id: str = "-", trace: Trace | None = None) -> tuple[int, Any]:
        """Answer one Khoros operation: (HTTP status, JSON payload).

        ``trace`` (``mapper run``) is told of every step, request and answer."""
        op = OPERATIONS_BY_NAME[name]
        compiled = self.mapping.operations[name]
        if compiled.unsupported:
            raise Unsupported(f"This CRM does not support '{op.summary.rstrip('.')}': {compiled.unsupported}")
        clean = self._check_input(op, body, trace_id)
        deadline = Deadline(OPERATION_BUDGET)
        run = self._new_run(deadline, trace_id)
        run.trace = trace
        scope = self._scope(clean, id, tenancy or Tenancy(), trace_id)
        run.run_steps(compiled.steps, scope)
        return op.success, self._shape(op, compiled, scope)

    def _check_input(self, op: Operation, body: Any, trace_id: str = "-") -> dict[str, Any]:
        if op.input == "none":
            return {}
        if not isinstance(body, dict):
            raise BadRequest("The request body must be a JSON object.")
        model = self._model_for(op.object_kind, trace_id)
        if op.input == "search":
            return model.check_search(body)
        if op.input == "bestmatch":
            return check_bestmatch(body)
        creating = op.input == "create"
        extra: dict[str, Callable[[Any], list[FieldError]]] = {}
        if op.object_kind == "case":
            extra = {"interactions": check_interactions,
                     "customerId": check_customer_id if creating else _check_optional_customer_id}
        clean = model.check_write(body, creating=creating, extra=extra)
        if "customerId" in clean and isinstance(clean["customerId"], int):
            clean["customerId"] = str(clean["customerId"])
        return clean

    def _new_run(self, deadline: Deadline, trace_id: str) -> Run:
        signer = self.client.signer
        if isinstance(signer, OAuth2):
            signer.ensure(self.client, deadline)  # base_url may need values from the token answer
        base_url = self._static_base_url
        if base_url is None:  # it reads values from the OAuth token answer, which can change
            base_url = str(self.mapping.base_url.evaluate(
                {"settings": self.settings, "secrets": self.secrets, "auth": getattr(signer, "values", {})}))
        return Run(self.client, deadline, trace_id, base_url.rstrip("/"), self.headers,
                   self.mapping.errors)

    def _scope(self, body: dict[str, Any], id: str | None, tenancy: Tenancy, trace_id: str) -> dict[str, Any]:
        return {"body": body, "id": id, "khoros": tenancy.as_dict(), "settings": self.settings,
                "secrets": self.secrets, "auth": getattr(self.client.signer, "values", {}),
                "now": self.clock(), "trace_id": trace_id}

    def _shape(self, op: Operation, compiled: CompiledOperation, scope: dict[str, Any]) -> Any:
        assert compiled.result is not None
        records = compiled.result.evaluate(scope)
        shaper = self.shapers[op.object_kind]
        if op.many:
            return shaper.many(records, scope)
        if records is None:
            noun = "customer" if op.object_kind == "customer" else "case"
            raise NotFound(f"No {noun} {scope.get('id') or ''} was found in the CRM.".replace("  ", " "))
        return shaper.one(records, scope)

    # -- data model ------------------------------------------------------

    def _model_for(self, kind: str, trace_id: str) -> ObjectModel:
        """The model inbound bodies are checked against: the declared fields, updated by the
        CRM's live metadata when the mapping has it, since that is what Khoros's forms show
        (a picklist value added in the CRM must be accepted, a new custom field known)."""
        declared = self.mapping.models[kind]
        if kind not in self.mapping.live_models:
            return declared
        try:
            answer = self.meta(kind, trace_id)
        except KhorosError:
            return declared  # the CRM is down and nothing is cached: the declared model still holds
        cached = self._merged_models.get(kind)
        if cached is not None and cached[0] is answer:
            return cached[1]
        merged = {f.name: f for f in declared.fields}
        identity = {f["name"] for f in IDENTITY_FIELDS[kind]} - set(merged)
        for live in answer["fields"]:
            if live["name"] in identity:
                continue
            base = merged.get(live["name"])
            values = tuple((v["name"], v["value"]) for v in live.get("listValues", []))
            if base is not None:
                merged[live["name"]] = replace(base, type=live["type"], list_values=values or base.list_values)
            else:
                merged[live["name"]] = Field(name=live["name"], label=live["label"], type=live["type"],
                                             searchable=live["searchable"], list_values=values)
        model = ObjectModel(kind, list(merged.values()))
        self._merged_models[kind] = (answer, model)
        return model

    def meta(self, kind: str, trace_id: str = "-") -> dict[str, Any]:
        """The ``/meta/object/{kind}`` answer: declared fields, or the CRM's own (cached)."""
        if kind not in META_TYPES:
            raise NotFound(f"Meta type '{kind}' is not supported; use one of: {', '.join(META_TYPES)}.")
        live = self.mapping.live_models.get(kind)
        if live is None:
            return self.mapping.models[kind].meta()
        with self._live_lock:
            cached = self._live_cache.get(kind)
            if cached and time.monotonic() - cached[0] < live.cache_seconds:
                return cached[1]
            try:
                answer = self._fetch_live(kind, trace_id)
            except KhorosError as exc:
                if cached:
                    log.warning("trace=%s live %s model failed (%s); serving the last good answer",
                                trace_id, kind, exc.message)
                    return cached[1]
                raise
            self._live_cache[kind] = (time.monotonic(), answer)
            return answer

    def _fetch_live(self, kind: str, trace_id: str) -> dict[str, Any]:
        live = self.mapping.live_models[kind]
        deadline = Deadline(min(META_BUDGET, LIVE_MODEL_BUDGET))
        run = self._new_run(deadline, trace_id)
        scope = self._scope({}, None, Tenancy(), trace_id)
        run.run_steps(live.steps, scope)
        fields = live.fields.evaluate(scope)
        checked = [_live_field(f, live.where) for f in (fields or [])]
        declared = self.mapping.models[kind].meta()["fields"]
        names = {f["name"] for f in checked}
        return {"name": kind, "fields": [f for f in declared if f["name"] not in names] + checked}


def _check_optional_customer_id(value: Any) -> list[FieldError]:
    from .model import is_missing
    if is_missing(value):
        return []
    return check_customer_id(value)


def _live_field(raw: Any, where: Any) -> dict[str, Any]:
    """Hold one field from the CRM's metadata to the Khoros meta format."""
    if not isinstance(raw, dict) or not raw.get("name") or raw.get("type") not in FIELD_TYPES:
        raise MappingRuntimeError(f"The live data model ({where}) built a field without a name or with a "
                                  "type other than text, textarea, single_sel_list or checkbox.")
    out = {"name": str(raw["name"]), "label": str(raw.get("label") or raw["name"]), "type": raw["type"],
           "searchable": bool(raw.get("searchable", False))}
    if raw["type"] == "single_sel_list":
        values = raw.get("listValues") or []
        out["listValues"] = [{"name": str(v.get("name")), "value": str(v.get("value"))} for v in values]
    return out


__all__ = ["Engine", "ServerError", "Tenancy"]
