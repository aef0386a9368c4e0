"""Record a mapping's exchanges with a CRM, and replay them offline against golden answers.

A *recording* is a directory: ``session.yaml`` names the mapping and the
environment it was loaded with, and each Khoros call made while recording
is one *case* file, numbered in the order the calls were made::

    # session.yaml
    mapping: ../../../mappings/acme.yaml           # relative to this directory
    environment: {ACME_URL: "http://crm.invalid"}

    # 004-get_customer.yaml
    operation: get_customer           # or 'meta', with the type in 'id'
    id: "12"
    body: null
    now: "2026-12-02T20:31:07Z"       # what templates saw as 'now'
    trace_id: 5f0c2a9e1b7d4c3a        # and as 'trace_id'
    exchanges:                        # every HTTP call, in order
      - request: {method: GET, path: /customers/12, query: {}, body: null}
        response: {status: 200, headers: {Content-Type: application/json}, json: {id: 12}}
    answer:                           # the golden answer Khoros got
      status: 200
      body: {id: "12", uri: "http://crm.invalid/customers/12"}

Recording happens at the HTTP transport (a ``requests`` adapter mounted on
the engine's session), so OAuth token calls, 429 retries and pages are all
captured. Before a case is written, every secret value is replaced by a
placeholder (``redacted-<ENV_NAME>``) that the replay then uses as the
secret itself, and every loopback origin the environment names is replaced
by ``http://crm.invalid`` so that re-recording does not change every URL.

Replay loads the mapping with the recorded environment, answers each HTTP
call with the next recorded exchange of the same case, and compares the
Khoros answer with the golden one. A request that differs from the
recording (method, path, query or body), a call the recording does not
have, or a recorded call never made, fails the case with a readable diff
instead of reaching any network.
"""

from __future__ import annotations

import copy
import difflib
import glob
import io
import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import requests
import urllib3
import yaml
from requests.adapters import HTTPAdapter

from ..core.engine import Engine, Tenancy
from ..core.source import YAML_LOADER
from ..errors import KhorosError

SESSION_FILE = "session.yaml"
# libyaml when PyYAML was built with it: recordings are big, the pure-Python parser slow.
_DUMPER: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
PLACEHOLDER_ORIGIN = "http://crm.invalid"
# Response headers that change on every run and that no mapping reads.
NOISY_HEADERS = frozenset({"date", "server", "connection", "keep-alive", "transfer-encoding", "content-length",
                           "content-encoding", "set-cookie", "etag", "x-powered-by", "vary", "cache-control",
                           "pragma", "expires", "access-control-allow-credentials", "x-content-type-options",
                           "referrer-policy", "cross-origin-opener-policy", "x-frame-options", "allow"})


class ReplayMismatch(Exception):
    """Raised inside a replay when the mapping sends a request the recording does not have.
    Not a ``requests`` exception, so the engine does not turn it into a CRM error."""


# --- the form of a recorded request -------------------------------------------------------

def describe_request(request: requests.PreparedRequest) -> dict[str, Any]:
    """Method, path, query and body of a request, as data that compares and diffs well."""
    parts = urlsplit(request.url or "")
    query: dict[str, Any] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in query:
            query[key] = (query[key] if isinstance(query[key], list) else [query[key]]) + [value]
        else:
            query[key] = value
    raw = request.body
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    body: Any = None
    kind = (request.headers.get("Content-Type") or "").split(";")[0].strip()
    if text:
        if kind == "application/x-www-form-urlencoded":
            body = {"form": dict(parse_qsl(text, keep_blank_values=True))}
        else:
            try:
                body = json.loads(text)
            except ValueError:
                body = {"text": text}
    return {"method": request.method, "path": parts.path, "query": query, "body": body}


def _comparable(request: dict[str, Any]) -> Any:
    query = request.get("query") or {}
    pairs = sorted((k, str(x)) for k, v in query.items() for x in (v if isinstance(v, list) else [v]))
    return {"method": request.get("method"), "path": request.get("path"), "query": pairs,
            "body": request.get("body")}


def diff(expected: Any, actual: Any, expected_name: str = "recorded", actual_name: str = "now") -> str:
    """A unified diff of two JSON values, keys sorted, one value per line."""
    left = json.dumps(expected, indent=2, sort_keys=True, ensure_ascii=False, default=str).splitlines()
    right = json.dumps(actual, indent=2, sort_keys=True, ensure_ascii=False, default=str).splitlines()
    return "\n".join(difflib.unified_diff(left, right, expected_name, actual_name, lineterm=""))


def _fake_response(adapter: HTTPAdapter, request: requests.PreparedRequest, status: int,
                   headers: dict[str, str], data: bytes) -> requests.Response:
    raw = urllib3.HTTPResponse(body=io.BytesIO(data), headers={**headers, "Content-Length": str(len(data))},
                               status=status, preload_content=False, decode_content=False)
    return adapter.build_response(request, raw)


# --- recording ---------------------------------------------------------------------------

class RecordingAdapter(HTTPAdapter):
    """Sends for real, and keeps each exchange (the body read whole, then handed on)."""

    def __init__(self) -> None:
        super().__init__(max_retries=0)
        self.exchanges: list[dict[str, Any]] = []

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        response = super().send(request, *args, **kwargs)
        data = response.raw.read(decode_content=True)
        response.close()
        headers = {k: v for k, v in response.headers.items()
                   if k.lower() not in ("content-encoding", "transfer-encoding", "content-length")}
        kept = {k: v for k, v in headers.items() if k.lower() not in NOISY_HEADERS}
        text = data.decode(response.encoding or "utf-8", errors="replace")
        answer: dict[str, Any] = {"status": response.status_code, "headers": kept}
        try:
            answer["json"] = json.loads(text) if text.strip() else None
        except ValueError:
            answer["text"] = text
        self.exchanges.append({"request": describe_request(request), "response": answer})
        return _fake_response(self, request, response.status_code, headers, data)


class Recorder:
    """Records every Khoros call an engine answers into a recording directory.

    ``attach`` mounts the recording adapter on the engine's HTTP session and
    wraps its ``run`` and ``meta`` so each call becomes one case file. The
    directory is emptied of earlier cases first.
    """

    def __init__(self, engine: Engine, mapping_path: str, environ: dict[str, str], directory: str,
                 note: Callable[[], str | None] | None = None) -> None:
        self.engine = engine
        self.directory = directory
        self.adapter = RecordingAdapter()
        self.count = 0
        self.note = note or (lambda: None)
        self._now = ""
        secret_envs = {s.env for s in engine.mapping.secrets if s.env}
        self.secrets = {environ[name]: f"redacted-{name}" for name in sorted(secret_envs)
                        if len(environ.get(name, "")) >= 6}
        self.origins: dict[str, str] = {}
        for value in sorted(environ.values()):
            parts = urlsplit(value) if isinstance(value, str) else None
            if parts and parts.scheme in ("http", "https") and parts.hostname in ("127.0.0.1", "localhost"):
                origin = f"{parts.scheme}://{parts.netloc}"
                if origin not in self.origins:
                    suffix = "" if not self.origins else str(len(self.origins) + 1)
                    self.origins[origin] = PLACEHOLDER_ORIGIN.replace("crm", f"crm{suffix}")
        os.makedirs(directory, exist_ok=True)
        for old in glob.glob(os.path.join(directory, "*.yaml")):
            os.remove(old)
        session = {"mapping": os.path.relpath(os.path.abspath(mapping_path), os.path.abspath(directory)),
                   "environment": {k: self.scrub(v) for k, v in sorted(environ.items())
                                   if k in self._env_names()}}
        _write_yaml(os.path.join(directory, SESSION_FILE), session,
                    "# The mapping and environment these cases were recorded with (see mapper/workbench/"
                    "recording.py).\n")

    def _env_names(self) -> set[str]:
        mapping = self.engine.mapping
        return {s.env for s in [*mapping.settings, *mapping.secrets] if s.env}

    def scrub(self, value: Any) -> Any:
        """The value with secrets replaced by placeholders and loopback origins by crm.invalid."""
        if isinstance(value, str):
            for secret, placeholder in self.secrets.items():
                value = value.replace(secret, placeholder)
            for token in self.engine.secret_values:
                if len(token) >= 6 and token not in self.secrets:
                    value = value.replace(token, "redacted-token")
            for origin, placeholder in self.origins.items():
                value = value.replace(origin, placeholder)
            return value
        if isinstance(value, list):
            return [self.scrub(v) for v in value]
        if isinstance(value, dict):
            return {self.scrub(k): self.scrub(v) for k, v in value.items()}
        return value

    def attach(self) -> Recorder:
        engine = self.engine
        engine.client.session.mount("http://", self.adapter)
        engine.client.session.mount("https://", self.adapter)
        real_clock, real_run, real_meta = engine.clock, engine.run, engine.meta

        def clock() -> str:
            self._now = real_clock()
            return self._now

        def run(name: str, body: Any, *, id: str | None = None, tenancy: Tenancy | None = None,
                trace_id: str = "-", **kwargs: Any) -> tuple[int, Any]:
            sent = copy.deepcopy(body)
            start = len(self.adapter.exchanges)
            self._now = ""
            try:
                status, payload = real_run(name, body, id=id, tenancy=tenancy, trace_id=trace_id, **kwargs)
            except KhorosError as exc:
                self._save(name, id, sent, tenancy, trace_id, start, exc.status, exc.to_json(trace_id))
                raise
            self._save(name, id, sent, tenancy, trace_id, start, status, payload)
            return status, payload

        def meta(kind: str, trace_id: str = "-", arrived: float | None = None) -> dict[str, Any]:
            start = len(self.adapter.exchanges)
            try:
                answer = real_meta(kind, trace_id, arrived)
            except KhorosError as exc:
                self._save("meta", kind, None, None, trace_id, start, exc.status, exc.to_json(trace_id))
                raise
            self._save("meta", kind, None, None, trace_id, start, 200, answer)
            return answer

        engine.clock = clock
        engine.run = run  # type: ignore[method-assign]
        engine.meta = meta  # type: ignore[method-assign]
        return self

    def _save(self, operation: str, id: str | None, body: Any, tenancy: Tenancy | None, trace_id: str,
              start: int, status: int, payload: Any) -> None:
        self.count += 1
        case: dict[str, Any] = {"operation": operation, "id": id, "body": body}
        if tenancy is not None and any(tenancy.as_dict().values()):
            case["khoros"] = tenancy.as_dict()
        case.update({"now": self._now or None, "trace_id": trace_id,
                     "exchanges": self.adapter.exchanges[start:],
                     "answer": {"status": status, "body": payload}})
        note = self.note()
        header = f"# {note}\n" if note else ""
        path = os.path.join(self.directory, f"{self.count:03d}-{operation}.yaml")
        _write_yaml(path, self.scrub(case), header)


def _write_yaml(path: str, data: Any, header: str = "") -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(header)
        yaml.dump(data, handle, Dumper=_DUMPER, sort_keys=False, allow_unicode=True, width=110)


# --- replay ------------------------------------------------------------------------------

class ReplayAdapter(HTTPAdapter):
    """Answers each request with the next recorded exchange, or raises ReplayMismatch."""

    def __init__(self) -> None:
        super().__init__(max_retries=0)
        self.expected: list[dict[str, Any]] = []
        self.position = 0
        self.problem: str | None = None

    def load(self, exchanges: list[dict[str, Any]]) -> None:
        self.expected, self.position, self.problem = list(exchanges), 0, None

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        actual = describe_request(request)
        index = self.position
        if index >= len(self.expected):
            self.problem = (f"call {index + 1} is new: the mapping sent {actual['method']} {actual['path']}, "
                            f"and the recording has only {len(self.expected)} call(s):\n"
                            + diff(None, actual))
            raise ReplayMismatch(self.problem)
        recorded = self.expected[index]
        if _comparable(recorded["request"]) != _comparable(actual):
            self.problem = (f"call {index + 1} differs from the recording "
                            f"({recorded['request']['method']} {recorded['request']['path']} was recorded):\n"
                            + diff(_comparable(recorded["request"]), _comparable(actual)))
            raise ReplayMismatch(self.problem)
        self.position += 1
        answer = recorded["response"]
        if "text" in answer:
            data = str(answer["text"]).encode()
        elif answer.get("json") is None:
            data = b""
        else:
            data = json.dumps(answer["json"]).encode()
        return _fake_response(self, request, int(answer["status"]), dict(answer.get("headers") or {}), data)

    def leftover(self) -> list[dict[str, Any]]:
        return self.expected[self.position:]


@dataclass
class CaseResult:
    file: str
    operation: str
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


@dataclass
class ReplayResult:
    directory: str
    mapping: str
    cases: list[CaseResult] = field(default_factory=list)
    problem: str | None = None  # the recording could not be replayed at all

    @property
    def ok(self) -> bool:
        return self.problem is None and all(c.ok for c in self.cases)


def find_recordings(paths: Iterable[str]) -> list[str]:
    """Recording directories: each path is one (it has session.yaml) or holds several."""
    found = []
    for path in paths:
        if os.path.isfile(os.path.join(path, SESSION_FILE)):
            found.append(path)
        else:
            found.extend(sorted(os.path.dirname(p) for p in glob.glob(os.path.join(path, "*", SESSION_FILE))))
    return found


def _read_yaml(path: str) -> Any:
    with open(path, encoding="utf-8") as handle:
        return yaml.load(handle, Loader=YAML_LOADER)  # noqa: S506 (a safe loader: libyaml's or PyYAML's)


CASE_FILE = re.compile(r"^\d+-[a-z_]+\.yaml$")


def replay(directory: str) -> ReplayResult:
    """Replay every case of one recording, in order, through one engine."""
    session = _read_yaml(os.path.join(directory, SESSION_FILE))
    mapping = os.path.normpath(os.path.join(directory, session["mapping"]))
    result = ReplayResult(directory, mapping)
    engine = Engine.load(mapping, {str(k): str(v) for k, v in (session.get("environment") or {}).items()})
    adapter = ReplayAdapter()
    engine.client.session.mount("http://", adapter)
    engine.client.session.mount("https://", adapter)
    engine.client._sleep = lambda seconds: None  # a recorded 429 is answered at once
    try:
        for name in sorted(n for n in os.listdir(directory) if CASE_FILE.match(n)):
            path = os.path.join(directory, name)
            result.cases.append(_replay_case(engine, adapter, path, _read_yaml(path)))
    finally:
        engine.close()
    return result


def _replay_case(engine: Engine, adapter: ReplayAdapter, path: str, case: dict[str, Any]) -> CaseResult:
    operation = case["operation"]
    outcome = CaseResult(path, operation)
    adapter.load(case.get("exchanges") or [])
    now = case.get("now") or "1970-01-01T00:00:00Z"
    engine.clock = lambda: now
    trace_id = str(case.get("trace_id") or "-")
    try:
        if operation == "meta":
            status, payload = 200, engine.meta(str(case["id"]), trace_id)
        else:
            tenancy = Tenancy(**case["khoros"]) if case.get("khoros") else None
            status, payload = engine.run(operation, copy.deepcopy(case.get("body")), id=case.get("id"),
                                         tenancy=tenancy, trace_id=trace_id)
    except ReplayMismatch:
        status, payload = 0, None
    except KhorosError as exc:
        status, payload = exc.status, exc.to_json(trace_id)
    if adapter.problem is not None:
        outcome.problem = adapter.problem
        return outcome
    left = adapter.leftover()
    if left:
        calls = ", ".join(f"{x['request']['method']} {x['request']['path']}" for x in left)
        outcome.problem = f"the mapping made {len(left)} call(s) fewer than recorded; never made: {calls}"
        return outcome
    expected = case.get("answer") or {}
    actual = {"status": status, "body": payload}
    # Round-trip through JSON so that tuples and the like compare as Khoros would see them.
    actual = json.loads(json.dumps(actual, default=str))
    if actual != expected:
        outcome.problem = "the Khoros answer differs from the golden one:\n" + diff(expected, actual, "golden", "now")
    return outcome
