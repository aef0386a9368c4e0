"""The engine: a compiled mapping bound to its environment, answering Khoros operations.

No web framework here: :meth:`Engine.run` takes plain data (the operation
name, the body, the path id, the tenancy headers, a trace id) and returns a
status and a JSON-ready payload, or raises a :class:`~mapper.errors.KhorosError`.
Everything expensive (parsing YAML, compiling templates and JSONPaths,
reading the environment, opening the connection pool) happens once in
:meth:`Engine.load`.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from ..errors import (
    BadRequest,
    ConfigError,
    FieldError,
    KhorosError,
    MappingRuntimeError,
    NotFound,
    Overloaded,
    Problem,
    ServerError,
    Unsupported,
    UpstreamTimeout,
)
from .auth import SIGNERS, OAuth2
from .budget import ANSWER_RESERVE, Deadline
from .compiler import CompiledMapping, CompiledOperation, Setting, compile_document
from .khoros import META_BUDGET, META_TYPES, OPERATION_BUDGET, OPERATIONS_BY_NAME, Operation
from .limits import DEFAULT_LIMITS, Limits, check_id, check_payload
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
from .redaction import Redactor, clean_error
from .request_key import request_key
from .shaping import Shaper
from .source import load_source
from .upstream import Client, Signer

log = logging.getLogger("mapper.engine")

# The live data model gets less than the full /meta budget so that a stale
# answer can still be served in time when the CRM hangs.
LIVE_MODEL_BUDGET = 10.0
# Kept-alive connections to the CRM per process, unless the server says how many threads it runs.
DEFAULT_POOL_SIZE = 32
# After a failed live-model fetch, wait 1, 2, 4... seconds before the next, up to this much
# (or the model's cache time, if longer).
MAX_BACKOFF = 60.0
# An operation that has less than this left of its budget when a worker picks it up
# (it waited in a queue) is refused before any CRM call: it would answer after Khoros
# stopped waiting, and a write would be saved with Khoros believing it failed.
MIN_START_SECONDS = 1.0


@dataclass
class Tenancy:
    """The ``x-sf-*`` headers Khoros sends with every call (all optional)."""

    user_email: str | None = None
    initiative: str | None = None
    company_id: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        return {"user_email": self.user_email, "initiative": self.initiative, "company_id": self.company_id}


_last_now: tuple[int, str] = (-1, "")  # the last second utc_now() wrote, and its text


def utc_now() -> str:
    """The ``now`` every template sees: the current UTC time, to the second (the text is
    made once per second, not once per request)."""
    global _last_now
    second = int(time.time())
    last = _last_now
    if last[0] != second:
        last = _last_now = (second, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second)))
    return last[1]


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
        # Khoros's time limit for an operation; tests shorten it so that a CRM that hangs
        # costs them a second, not eight.
        self.operation_budget = OPERATION_BUDGET
        self._live = LiveModels({kind: live.cache_seconds for kind, live in mapping.live_models.items()})
        # Every form of every credential, including tokens fetched later, is removed from
        # errors leaving the engine and (through the service's logging) from every log line.
        self.redactor = Redactor(sources=[lambda: self.secret_values])
        self._merged_models: dict[str, tuple[dict[str, Any], ObjectModel]] = {}
        # Rendered once unless it depends on the OAuth answer (auth.<name>).
        self._static_base_url: str | None = None
        if "auth" not in mapping.base_url.names():
            self._static_base_url = str(mapping.base_url.evaluate({"settings": settings, "secrets": secrets}))

    # -- construction ----------------------------------------------------

    @classmethod
    def load(cls, path: str, environ: Mapping[str, str] | None = None, text: str | None = None, *,
             pool_size: int = DEFAULT_POOL_SIZE) -> Engine:
        """Compile ``path`` (or ``text``, read from it earlier) and bind it to the environment;
        raise ConfigError listing every problem.

        ``pool_size``: connections kept open to the CRM; give it the number of requests one
        process serves at once (its threads), or connections are opened and thrown away."""
        environ = os.environ if environ is None else environ
        doc = load_source(path, text)  # kept: environment problems name their lines too
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
                        signer=signer, pool_size=pool_size)
        headers = {name: str(value.evaluate(static)) for name, value in mapping.headers.items()}
        return cls(mapping, settings, secrets, client, headers)

    @property
    def secret_values(self) -> list[str]:
        """Every secret value in use: the mapping's ``secrets:``, and what the signer sends or
        received (a rendered Authorization header, an API key even when a mapping took it from
        ``settings:``, OAuth access and refresh tokens), so that none is ever shown."""
        values = [str(v) for v in self.secrets.values() if v]
        return values + _signer_credentials(self.client.signer)

    def close(self) -> None:
        self.client.close()

    # -- operations ------------------------------------------------------

    def run(self, name: str, body: Any, *, id: str | None = None, tenancy: Tenancy | None = None,
            trace_id: str = "-", trace: Trace | None = None, arrived: float | None = None,
            limits: Limits = DEFAULT_LIMITS, idempotency_key: str | None = None) -> tuple[int, Any]:
        """Answer one Khoros operation: (HTTP status, JSON payload).

        ``trace`` (``mapper run``) is told of every step, request and answer.
        ``arrived`` is when the request reached us (``time.monotonic()``): Khoros's clock
        started then, so time spent queued for a worker is taken from the budget, and a
        request that can no longer finish in time is refused before any CRM call.
        ``limits`` bound the counts that cost CRM calls (see :mod:`mapper.core.limits`).
        ``idempotency_key`` (templates: ``idempotency_key``) defaults to the key of the body."""
        key = idempotency_key or request_key(name, body)
        try:
            return self._run(name, body, id=id, tenancy=tenancy, trace_id=trace_id, trace=trace, arrived=arrived,
                             limits=limits, key=key)
        except KhorosError as exc:
            clean_error(exc, self.redactor)
            raise

    def _run(self, name: str, body: Any, *, id: str | None, tenancy: Tenancy | None,
             trace_id: str, trace: Trace | None, arrived: float | None,
             limits: Limits, key: str) -> tuple[int, Any]:
        op = OPERATIONS_BY_NAME[name]
        check_id(id, op.id_kind, limits)
        compiled = self.mapping.operations[name]
        if compiled.unsupported:
            raise Unsupported(f"This CRM does not support '{op.summary.rstrip('.')}': {compiled.unsupported}")
        deadline = Deadline(self.operation_budget, started=arrived)
        if deadline.remaining() < min(MIN_START_SECONDS, self.operation_budget / 4):
            raise Overloaded(
                f"The server is overloaded: this request waited {deadline.waited():.1f} s for a free worker, "
                f"too long to finish within Khoros's {self.operation_budget:g} s limit, so nothing was sent to "
                "the CRM. Add workers or threads (see the README's production section).")
        check_payload(op, body, limits)
        clean = self._check_input(op, body, trace_id, deadline)
        run = self._new_run(deadline, trace_id)
        run.trace = trace
        scope = self._scope(clean, id, tenancy or Tenancy(), trace_id, key)
        run.run_steps(compiled.steps, scope)
        return op.success, self._shape(op, compiled, scope)

    def _check_input(self, op: Operation, body: Any, trace_id: str = "-",
                     deadline: Deadline | None = None) -> dict[str, Any]:
        if op.input == "none":
            return {}
        if not isinstance(body, dict):
            raise BadRequest("The request body must be a JSON object.")
        if op.input == "bestmatch":  # a fixed Khoros shape: the data model plays no part
            return check_bestmatch(body)
        model = self._model_for(op.object_kind, trace_id, deadline)
        if op.input == "search":
            return model.check_search(body)
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
                   self.mapping.errors, redact=self.redactor.redact_value,
                   traceparent=self.mapping.traceparent)

    def _scope(self, body: dict[str, Any], id: str | None, tenancy: Tenancy, trace_id: str,
               key: str | None = None) -> dict[str, Any]:
        return {"body": body, "id": id, "khoros": tenancy.as_dict(), "settings": self.settings,
                "secrets": self.secrets, "auth": getattr(self.client.signer, "values", {}),
                "now": self.clock(), "trace_id": trace_id, "idempotency_key": key}

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

    def _model_for(self, kind: str, trace_id: str, deadline: Deadline | None = None) -> ObjectModel:
        """The model inbound bodies are checked against: the declared fields, updated by the
        CRM's live metadata when the mapping has it, since that is what Khoros's forms show
        (a picklist value added in the CRM must be accepted, a new custom field known).

        An operation never waits for another request's metadata call: a stale model is used
        while one refresh runs in the background, and with nothing cached yet only one
        request fetches (bounded by its own deadline) while the others use the declared model."""
        declared = self.mapping.models[kind]
        if kind not in self.mapping.live_models:
            return declared
        answer = self._live.cached(kind)
        if answer is None:
            if self._live.claim(kind):
                budget = LIVE_MODEL_BUDGET if deadline is None else min(LIVE_MODEL_BUDGET, deadline.remaining() / 2)
                answer = self._refresh(kind, trace_id, Deadline(budget + ANSWER_RESERVE))
            if answer is None:
                return declared  # the CRM is down, slow or busy being asked: the declared model still holds
        elif self._live.stale(kind) and self._live.claim(kind):
            threading.Thread(target=self._refresh, args=(kind, trace_id), name=f"live-{kind}-model",
                             daemon=True).start()
        return self._merged(kind, declared, answer)

    def _merged(self, kind: str, declared: ObjectModel, answer: dict[str, Any]) -> ObjectModel:
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
        self._merged_models[kind] = (answer, model)  # one assignment: safe to race, the loser's copy is equal
        return model

    def meta(self, kind: str, trace_id: str = "-", arrived: float | None = None) -> dict[str, Any]:
        """The ``/meta/object/{kind}`` answer: declared fields, or the CRM's own (cached).

        A stale or missing live answer is fetched by this request unless another request is
        already fetching it; then the last good answer is served, or, with none yet, this
        request waits for that fetch within its own budget."""
        try:
            return self._meta(kind, trace_id, arrived)
        except KhorosError as exc:
            clean_error(exc, self.redactor)
            raise

    def _meta(self, kind: str, trace_id: str, arrived: float | None) -> dict[str, Any]:
        if kind not in META_TYPES:
            raise NotFound(f"Meta type '{kind}' is not supported; use one of: {', '.join(META_TYPES)}.")
        live = self.mapping.live_models.get(kind)
        if live is None:
            return self.mapping.models[kind].meta()
        deadline = Deadline(META_BUDGET, started=arrived)
        answer = self._live.cached(kind)
        if answer is not None and not self._live.stale(kind):
            return answer
        if self._live.claim(kind):
            fetched = self._refresh(kind, trace_id, Deadline(min(deadline.remaining(), LIVE_MODEL_BUDGET)
                                                             + ANSWER_RESERVE))
            if fetched is not None:
                return fetched
        elif answer is None:
            self._live.wait(kind, deadline.remaining())
        answer = self._live.cached(kind)
        if answer is not None:
            return answer
        error = self._live.error(kind)
        if error is not None:
            raise copy.copy(error)  # the same instance raised in several threads would share a traceback
        raise UpstreamTimeout(
            f"The CRM's {kind} data model was not fetched in time; try again shortly.")

    def _refresh(self, kind: str, trace_id: str, deadline: Deadline | None = None) -> dict[str, Any] | None:
        """Fetch the live model (the caller has claimed the refresh); remember the answer or the
        failure. Returns the new answer, or None when the fetch failed."""
        try:
            answer = self._fetch_live(kind, trace_id, deadline or Deadline(LIVE_MODEL_BUDGET + ANSWER_RESERVE))
        except KhorosError as exc:
            wait = self._live.failed(kind, exc)
            log.warning("trace=%s live %s model failed (%s); %s, next try in %.0f s", trace_id, kind, exc.message,
                        "serving the last good answer" if self._live.cached(kind) is not None
                        else "using the declared model", wait)
            return None
        except Exception as exc:
            self._live.failed(kind, ServerError(f"The live {kind} data model failed: {type(exc).__name__}."))
            log.exception("trace=%s live %s model failed unexpectedly", trace_id, kind)
            return None
        self._live.store(kind, answer)
        return answer

    def _fetch_live(self, kind: str, trace_id: str, deadline: Deadline) -> dict[str, Any]:
        live = self.mapping.live_models[kind]
        run = self._new_run(deadline, trace_id)
        scope = self._scope({}, None, Tenancy(), trace_id)
        run.run_steps(live.steps, scope)
        fields = live.fields.evaluate(scope)
        checked = [_live_field(f, live.where) for f in (fields or [])]
        declared = self.mapping.models[kind].meta()["fields"]
        names = {f["name"] for f in checked}
        return {"name": kind, "fields": [f for f in declared if f["name"] not in names] + checked}


class LiveModels:
    """The CRM's live data models, cached per kind, with at most one fetch in flight per kind.

    The lock guards only this bookkeeping and is never held during a CRM call: a request
    *claims* the refresh, fetches without the lock, then stores the answer or the failure.
    A failure is remembered and backs off (1 s, 2 s, 4 s... up to the cache time, at least
    :data:`MAX_BACKOFF`), so a CRM that is down is not asked again by every request."""

    def __init__(self, cache_seconds: dict[str, float], clock: Callable[[], float] = time.monotonic) -> None:
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._answers: dict[str, tuple[float, dict[str, Any]]] = {}
        self._in_flight: dict[str, threading.Event] = {}
        self._retry_at: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        self._errors: dict[str, KhorosError] = {}

    def cached(self, kind: str) -> dict[str, Any] | None:
        entry = self._answers.get(kind)
        return entry[1] if entry else None

    def stale(self, kind: str) -> bool:
        entry = self._answers.get(kind)
        return entry is None or self._clock() - entry[0] >= self._cache_seconds[kind]

    def claim(self, kind: str) -> bool:
        """True if the caller may fetch now: no fetch in flight and not backing off after a failure."""
        with self._lock:
            if kind in self._in_flight or self._clock() < self._retry_at.get(kind, 0.0):
                return False
            self._in_flight[kind] = threading.Event()
            return True

    def wait(self, kind: str, seconds: float) -> None:
        event = self._in_flight.get(kind)
        if event is not None:
            event.wait(max(seconds, 0.0))

    def store(self, kind: str, answer: dict[str, Any]) -> None:
        with self._lock:
            self._answers[kind] = (self._clock(), answer)
            self._failures.pop(kind, None)
            self._errors.pop(kind, None)
            self._retry_at.pop(kind, None)
            self._release(kind)

    def failed(self, kind: str, error: KhorosError) -> float:
        """Remember a failed fetch; returns the seconds before the next try."""
        with self._lock:
            count = self._failures.get(kind, 0)
            self._failures[kind] = count + 1
            wait = min(float(2 ** count), max(self._cache_seconds[kind], MAX_BACKOFF))
            self._retry_at[kind] = self._clock() + wait
            self._errors[kind] = error
            self._release(kind)
            return wait

    def error(self, kind: str) -> KhorosError | None:
        return self._errors.get(kind)

    def _release(self, kind: str) -> None:
        event = self._in_flight.pop(kind, None)
        if event is not None:
            event.set()


def _signer_credentials(signer: Signer) -> list[str]:
    """What a signer from :mod:`mapper.core.auth` sends or was given: the rendered header or
    query value, the OAuth form's secrets and every token the CRM issued at run time."""
    found: list[str] = []
    for name in ("_header", "_value", "_token"):
        value = getattr(signer, name, None)
        if value:
            found.append(str(value))
            scheme, _, credential = str(value).partition(" ")
            if scheme.lower() in ("basic", "bearer") and credential:
                found.append(credential)  # a CRM may echo the credential without its scheme
    form = getattr(signer, "_form", None) or {}
    found += [str(form[k]) for k in ("client_secret", "refresh_token") if form.get(k)]
    found += [str(v) for v in getattr(signer, "issued", ()) if v]
    return found


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
        if not isinstance(values, list) or not all(isinstance(v, dict) and "value" in v for v in values):
            raise MappingRuntimeError(f"The live data model ({where}) built listValues for '{out['name']}' that "
                                      "are not a list of {name, value} objects (for example from a list of "
                                      "plain strings: map each one to {name: ..., value: ...}).")
        out["listValues"] = [{"name": str(v.get("name", v["value"])), "value": str(v["value"])} for v in values]
    return out


__all__ = ["Engine", "ServerError", "Tenancy"]
