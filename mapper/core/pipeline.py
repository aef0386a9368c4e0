"""The compiled steps of an operation, and how each one runs.

A mapping describes each Khoros operation as a list of steps. The compiler
(:mod:`mapper.compiler`) turns YAML into the dataclasses here once, at
start-up; at request time a :class:`Run` walks them with a context dict of
named values. Step kinds:

* ``request``   one HTTP call (optionally following pages), then ``extract``
* ``set``       name values computed from earlier ones
* ``for_each``  run sub-steps per item of a list, ``collect`` per-item values
* ``first``     try strategies in order until ``until`` holds (fallback chain)
* ``fail``      stop with a Khoros error

A :class:`Run` may carry a :class:`Trace` (``mapper run`` does): it is told of
every step, rendered request, answer, value set and strategy chosen. Serving
never sets one, and then the only cost is one ``is None`` check per step list
and per CRM call.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

from jsonpath_ng import JSONPath
from jsonpath_ng.jsonpath import Child, Slice, Wildcard
from requests.structures import CaseInsensitiveDict

from ..errors import FieldError, KhorosError, MappingRuntimeError, UpstreamError, error_for_code
from . import context, resume
from .budget import Deadline
from .paths import direct
from .resume import Find
from .templating import OMIT, Compiled
from .upstream import Client, Inbound, Outbound, is_html_page

log = logging.getLogger("mapper.pipeline")


def describe_keys(name: str, value: Any) -> str:
    """What a value holds, by its keys only (never values, which may be personal data):
    the usual shape mistake is a record wrapped in an envelope such as ``{"data": {...}}``."""
    if isinstance(value, dict):
        keys = sorted(map(str, value))
        shown = ", ".join(repr(k) for k in keys[:20]) + (", ..." if len(keys) > 20 else "")
        return f"the {name} has keys [{shown}]"
    if isinstance(value, list):
        return f"the {name} is a list of {len(value)} item(s), not an object"
    return f"the {name} is {type(value).__name__}, not an object"


@dataclass
class Where:
    """Where in the mapping a compiled piece came from, for runtime messages."""

    file: str
    line: int
    key: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line} {self.key}"

    @property
    def place(self) -> str:
        """``file:line``, for messages that already name the step."""
        return f"{self.file}:{self.line}"


@dataclass
class Extraction:
    name: str
    where: Where
    path: JSONPath | None = None
    path_text: str = ""
    many: bool = False
    has_default: bool = False
    default: Any = None
    expression: Compiled | None = None
    header: str | None = None  # an answer header, looked up whatever its case
    pattern: re.Pattern[str] | None = None  # applied to the header: its first group, else the whole match
    lenient: bool = False  # many: accept whatever [*] meets (an object's values) instead of requiring a list

    def __post_init__(self) -> None:
        # The path and what comes before its first [*], read without jsonpath-ng when plain
        # (see mapper/core/paths.py); None where jsonpath-ng must answer.
        self._find = direct(self.path) if self.path is not None else None
        container = _before_wildcard(self.path)
        self._container = container
        self._find_container = direct(container) if container is not None else None

    def _matches(self, data: Any) -> list[Any]:
        assert self.path is not None
        found = self._find(data) if self._find is not None else None
        return found if found is not None else [m.value for m in self.path.find(data)]

    def extract(self, scope: dict[str, Any]) -> Any:
        if self.expression is not None:
            try:
                return self.expression.evaluate(scope)
            except MappingRuntimeError as exc:
                raise type(exc)(
                    f"{exc.message.rstrip('.')}; {describe_keys('answer', scope['response'])}.",
                    internal=exc.internal) from exc
        if self.header is not None:
            return self._from_header(scope["headers"])
        assert self.path is not None
        if self.many and not self.lenient:
            problem = self._not_a_list(scope["response"])
            if problem is not None:
                if self.has_default and problem.startswith("nothing"):
                    return self.default
                raise UpstreamError(
                    f"The CRM's answer had {problem} for '{self.name}' ({self.where}); "
                    f"{describe_keys('answer', scope['response'])}. The CRM may have changed its API or "
                    "answered with an error; write 'lenient: true' if other shapes are expected.")
        matches = self._matches(scope["response"])
        if self.many:
            return matches
        if matches:
            return matches[0]
        if self.has_default:
            return self.default
        raise UpstreamError(
            f"The CRM's answer had nothing at {self.path_text} for '{self.name}' ({self.where}); "
            f"{describe_keys('answer', scope['response'])}. "
            "The CRM may have changed its API, or the mapping's path is wrong.")

    def _not_a_list(self, response: Any) -> str | None:
        """What is wrong when the path's first ``[*]`` meets something other than a list
        (JSONPath would read an object's values, or nothing, and an error would pass as
        "no matches"); None when all is well or the path has no ``[*]``."""
        container = self._container
        if container is None:
            return None
        found = self._find_container(response) if self._find_container is not None else None
        if found is None:
            found = [m.value for m in container.find(response)]
        if not found:
            return f"nothing at {container} (a list was expected at {self.path_text})"
        for value in found:
            if not isinstance(value, list):
                return f"{type(value).__name__} where {self.path_text} expects a list"
        return None

    def _from_header(self, headers: Any) -> Any:
        assert self.header is not None
        wanted = self.header.lower()
        value = next((str(v) for k, v in (headers or {}).items() if str(k).lower() == wanted), None)
        if value is not None and self.pattern is not None:
            match = self.pattern.search(value)
            value = None if match is None else match.group(1) if self.pattern.groups else match.group(0)
        if value is not None:
            return value
        if self.has_default:
            return self.default
        what = f"{self.header} header" + (f" matching {self.pattern.pattern}" if self.pattern else "")
        raise UpstreamError(
            f"The CRM's answer had no {what} for '{self.name}' ({self.where}). "
            "The CRM may have changed its API, or the mapping's header name or pattern is wrong.")


def _before_wildcard(path: JSONPath | None) -> JSONPath | None:
    """The part of ``$.a.b[*].c`` before its first ``[*]`` (``$.a.b``), or None."""
    chain: list[Child] = []
    node: Any = path
    while isinstance(node, Child):
        chain.append(node)
        node = node.left
    for child in reversed(chain):
        if isinstance(child.right, (Wildcard, Slice)):
            left: JSONPath = child.left
            return left
    return None


@dataclass
class ErrorRule:
    """Turns an upstream answer into a Khoros error."""

    where: Where
    code: str
    message: Compiled
    statuses: frozenset[int] = frozenset()
    status_classes: frozenset[int] = frozenset()
    condition: Compiled | None = None
    fields: Compiled | None = None
    rename: dict[str, str] = field(default_factory=dict)

    def matches(self, answer: Inbound, scope: dict[str, Any]) -> bool:
        if self.statuses or self.status_classes:
            if answer.status not in self.statuses and answer.status // 100 not in self.status_classes:
                return False
        elif answer.ok:
            return False
        return self.condition is None or bool(self.condition.evaluate(scope))

    def to_error(self, scope: dict[str, Any], internal: str) -> KhorosError:
        message = str(self.message.evaluate(scope)).strip()
        fields = self._fields(scope) if self.fields is not None else []
        if fields and self.code == "validation_failed":
            details = "; ".join(f"{f.name}: {f.error_message}" for f in fields)
            message = f"{message.rstrip('.')}: {details}."
        return error_for_code(self.code, message, fields, internal=internal)

    def _fields(self, scope: dict[str, Any]) -> list[FieldError]:
        assert self.fields is not None
        raw = self.fields.evaluate(scope)
        items: list[tuple[Any, Any]] = []
        if isinstance(raw, dict):
            items = list(raw.items())
        elif isinstance(raw, list):
            for entry in raw:
                if isinstance(entry, dict):
                    items.append((entry.get("name"), entry.get("errorMessage", entry.get("message"))))
        out = []
        for name, message in items:
            if isinstance(message, list):
                message = " ".join(m if isinstance(m, str) else str(m.get("description", m)) if isinstance(m, dict)
                                   else str(m) for m in message)
            name = self.rename.get(str(name), str(name))
            out.append(FieldError(name, str(message or "is not valid").strip()))
        return out


@dataclass
class RequestSpec:
    method: str
    path: Compiled | None
    query: Compiled | None = None
    headers: Compiled | None = None
    body: Compiled | None = None
    form: Compiled | None = None
    url: Compiled | None = None  # a link from the CRM, used verbatim but kept on the CRM's host


@dataclass
class Pagination:
    items: JSONPath
    into: str
    keep_going: Compiled
    cursor: Compiled | None
    max_pages: int


@dataclass
class Step:
    name: str
    where: Where
    when: Compiled | None

    def run(self, run: Run, scope: dict[str, Any]) -> None:
        raise NotImplementedError


@dataclass
class RequestStep(Step):
    request: RequestSpec = field(default=None)  # type: ignore[assignment]
    accept: frozenset[int] = frozenset()
    errors: list[ErrorRule] = field(default_factory=list)
    extract: list[Extraction] = field(default_factory=list)
    paginate: Pagination | None = None
    safe: bool | None = None  # request.safe: may be resent (default: GET and HEAD only)
    # A write (POST, PUT, PATCH, DELETE): a failure that may have landed goes to resume.write,
    # which retries it only when it provably did not land. False for a find's lookup.
    guarded: bool = False
    find: Find | None = None  # how to find what this write may already have written

    def run(self, run: Run, scope: dict[str, Any]) -> None:
        if self.guarded:
            resume.write(self, run, scope)
        else:
            self.call_and_extract(run, scope)

    def call_and_extract(self, run: Run, scope: dict[str, Any]) -> Inbound:
        """Send the request (following pages), check the answer, set the extracted names."""
        if self.paginate is None:
            answer = self._call(run, scope)
        else:
            answer = self._follow_pages(run, scope)
        answer_scope = {**scope, "response": answer.body, "status": answer.status, "headers": answer.headers}
        for extraction in self.extract:
            scope[extraction.name] = extraction.extract(answer_scope)
        return answer

    def _call(self, run: Run, scope: dict[str, Any]) -> Inbound:
        outbound = self._render(run, scope)
        started = time.monotonic()
        try:
            answer = run.client.send(outbound, run.deadline, safe=self.safe)
        except KhorosError as exc:  # no answer at all: timeout, refused connection...
            context.crm_call(self.name, exc.code, time.monotonic() - started)
            exc.add_context(f"step '{self.name}' at {self.where.place}")
            if self.guarded:
                raise resume.WriteFailed(outbound, error=exc) from exc
            raise
        context.crm_call(self.name, str(answer.status), answer.seconds)
        run.calls += 1
        if run.trace is not None:
            run.trace.exchange(self, outbound, answer)
        if log.isEnabledFor(logging.DEBUG):  # one INFO line per Khoros request is written by the app
            log.debug("trace=%s step=%s %s -> %s %.0fms", run.trace_id, self.name, outbound.describe(),
                      answer.status, answer.seconds * 1000)
        if self.guarded and answer.status >= 500 and answer.status not in self.accept:
            raise resume.WriteFailed(outbound, answer=answer)  # it may have landed: resume.write decides
        self._check(run, scope, answer, outbound)
        try:
            self._check_usable(run, answer, outbound)
        except UpstreamError as exc:
            if self.guarded:  # a write answered with a page it cannot read may have landed
                raise resume.WriteFailed(outbound, error=exc) from exc
            raise
        return answer

    def _check_usable(self, run: Run, answer: Inbound, outbound: Outbound) -> None:
        """A 2xx the step cannot read is the CRM failing, not "nothing found": an HTML page
        (a proxy or login page), or text or an empty body where the step reads JSON."""
        if not answer.ok:
            return
        reads = self.paginate is not None or any(e.header is None for e in self.extract)
        if is_html_page(answer):
            what = "an HTML page"
        elif not reads or isinstance(answer.body, (dict, list)) or answer.status == 204:
            return
        elif answer.body is None:
            if all(e.has_default or e.header is not None for e in self.extract) and self.paginate is None:
                return  # every value read from it may be missing
            what = "an empty body"
        else:
            what = "text that is not JSON" if isinstance(answer.body, str) else f"a JSON {type(answer.body).__name__}"
        raise UpstreamError(
            f"The CRM answered {outbound.describe()} (step '{self.name}' at {self.where.place}) with HTTP "
            f"{answer.status} but {what}, where the mapping reads JSON. The CRM or a proxy in front of it "
            "is failing.", internal=f"{outbound.describe()} -> {answer.status}: {run.redact(answer.text)[:300]}")

    def _follow_pages(self, run: Run, scope: dict[str, Any]) -> Inbound:
        assert self.paginate is not None
        pages = self.paginate
        collected: list[Any] = []
        page: dict[str, Any] = {"number": 0, "cursor": None}
        seen: list[Any] = []  # cursors may be dicts or lists: compared by value
        while True:
            answer = self._call(run, {**scope, "page": page})
            collected.extend(m.value for m in pages.items.find(answer.body))
            page_scope = {**scope, "page": page, "response": answer.body, "status": answer.status,
                          "headers": answer.headers, pages.into: collected}
            if page["number"] + 1 >= pages.max_pages:
                if pages.keep_going.evaluate(page_scope):
                    log.warning("trace=%s step=%s stopped after max_pages=%d; more pages exist",
                                run.trace_id, self.name, pages.max_pages)
                break
            if not pages.keep_going.evaluate(page_scope):
                break
            cursor = pages.cursor.evaluate(page_scope) if pages.cursor is not None else None
            if cursor is not None and cursor in seen:
                # The CRM sent a cursor it sent before: following it would fetch the same pages
                # again until max_pages, and the list would hold each record several times.
                log.warning("trace=%s step=%s the CRM repeated a pagination cursor; stopped after %d page(s)",
                            run.trace_id, self.name, page["number"] + 1)
                break
            if cursor is not None:
                seen.append(cursor)
            page = {"number": page["number"] + 1, "cursor": cursor}
        scope[pages.into] = collected
        return answer

    def _render(self, run: Run, scope: dict[str, Any]) -> Outbound:
        spec = self.request
        if spec.url is not None:
            url = _same_host_url(str(spec.url.evaluate(scope)), run.base_url, self.where)
        else:
            assert spec.path is not None
            path = str(spec.path.evaluate(scope))
            url = urljoin(run.base_url + "/", path.lstrip("/"))
        outbound = Outbound(spec.method, url, headers=dict(run.default_headers))
        if run.traceparent:
            value = context.traceparent(run.trace_id)
            if value:
                outbound.headers["traceparent"] = value
        if spec.headers is not None:
            outbound.headers.update({k: str(v) for k, v in spec.headers.evaluate(scope).items()
                                     if v is not None and v is not OMIT})  # none: no header, not "None"
        if spec.query is not None:
            query = spec.query.evaluate(scope)
            if not isinstance(query, dict):  # "{{ body | only(...) }}" must give a map
                raise MappingRuntimeError(f"The query of step '{self.name}' ({self.where}) gave "
                                          f"{type(query).__name__}, not a map of parameters.")
            for key, value in query.items():
                for item in value if isinstance(value, list) else [value]:
                    if item is None or item is OMIT:
                        continue
                    outbound.params.append((key, _query_text(item)))
        if spec.body is not None:
            outbound.json_body = spec.body.evaluate(scope)
            outbound.has_json_body = True
        elif spec.form is not None:
            outbound.form = {k: v for k, v in spec.form.evaluate(scope).items() if v is not None}
        return outbound

    def _check(self, run: Run, scope: dict[str, Any], answer: Inbound, outbound: Outbound) -> None:
        accepted = answer.ok or answer.status in self.accept
        if accepted and not self.errors:
            return  # the common case: nothing to judge, so no scope or message is built
        answer_scope = {**scope, "response": answer.body, "status": answer.status, "headers": answer.headers}
        # The CRM's text may echo our credentials: an error is built from a redacted copy of the
        # answer, and cut only after redaction (a cut could leave the start of a secret behind).
        internal = f"{outbound.describe()} -> {answer.status}: {run.redact(answer.text)[:300]}"
        rules = self.errors if accepted else [*self.errors, *run.mapping_errors]
        for rule in rules:
            try:
                if not rule.matches(answer, answer_scope):
                    continue
                shown = {**answer_scope, "response": run.redact(answer.body),
                         "headers": CaseInsensitiveDict(run.redact(dict(answer.headers)))}
                error = rule.to_error(shown, internal=internal)
            except MappingRuntimeError as exc:
                # The rule could not read this answer (fromjson on a body that is not JSON...):
                # the CRM's own failure stays what the agent sees, and its answer is logged.
                log.warning("trace=%s step=%s error rule at %s failed on the CRM's answer (%s): %s",
                            run.trace_id, self.name, rule.where.place, exc.message, internal)
                continue
            raise error
        if accepted:
            return
        if answer.status in (401, 403):
            message = (f"The CRM refused our credentials (HTTP {answer.status}) for {outbound.describe()}. "
                       "Check the secrets this mapping reads from the environment.")
        else:
            message = (f"The CRM answered HTTP {answer.status} to {outbound.describe()} "
                       f"(step '{self.name}' at {self.where.place}), which the mapping does not handle.")
            if answer.status == 429:
                message += " The CRM is rate-limiting us; it asked for a longer wait than Khoros allows."
        raise UpstreamError(message, code="crm_error", internal=internal)


def _origin(scheme: str, host: str | None, port: int | None) -> tuple[str, str, int | None]:
    return scheme.lower(), (host or "").lower(), port or {"http": 80, "https": 443}.get(scheme.lower())


def _same_host_url(link: str, base_url: str, where: Where) -> str:
    """A link from the CRM (``/next/page`` or ``https://crm/next``), refused unless it has
    the base URL's scheme, host and port: another host would get the CRM credentials, and
    ``http://`` for an ``https://`` base would send them in clear text."""
    base = urlsplit(base_url)
    if not urlsplit(link).scheme and link.startswith("/") and not link.startswith("//"):
        return f"{base.scheme}://{base.netloc}{link}"
    try:
        target = urlsplit(link)
        same = target.scheme.lower() in ("http", "https") and not target.username and not target.password \
            and _origin(target.scheme, target.hostname, target.port) == _origin(base.scheme, base.hostname, base.port)
    except ValueError:  # a port that is not a number
        same = False
    if same:
        return link
    raise MappingRuntimeError(
        f"The request URL built at {where} is not on the CRM's host; the engine only sends "
        "requests (and credentials) to the scheme, host and port of connection.base_url.")


def _query_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass
class SetStep(Step):
    values: dict[str, Compiled] = field(default_factory=dict)

    def run(self, run: Run, scope: dict[str, Any]) -> None:
        for name, value in self.values.items():
            scope[name] = value.evaluate(scope)


@dataclass
class ForEachStep(Step):
    over: Compiled = field(default=None)  # type: ignore[assignment]
    item_name: str = "item"
    steps: list[Step] = field(default_factory=list)
    collect: dict[str, Compiled] = field(default_factory=dict)

    def run(self, run: Run, scope: dict[str, Any]) -> None:
        items = self.over.evaluate(scope)
        if items is None:
            items = []
        if not isinstance(items, list):
            raise MappingRuntimeError(f"for_each at {self.where} needs a list, got {type(items).__name__}.")
        collected: dict[str, list[Any]] = {name: [] for name in self.collect}
        for index, item in enumerate(items):
            inner = {**scope, self.item_name: item, "index": index}
            calls = run.calls
            try:
                run.run_steps(self.steps, inner)
            except KhorosError as exc:
                done = (f"items 0-{index - 1} were done" if index > 1
                        else "item 0 was done" if index else "none was done")
                made = run.calls - calls
                partly = f", this item made {made} CRM call(s) before failing" if made else ""
                exc.add_context(f"item {index} of {len(items)} of the for_each at {self.where.place}; {done}{partly}")
                raise
            for name, value in self.collect.items():
                evaluated = value.evaluate(inner)
                if evaluated is not OMIT:
                    collected[name].append(evaluated)
        scope.update(collected)


@dataclass
class Branch:
    name: str
    when: Compiled | None
    steps: list[Step]


@dataclass
class FirstStep(Step):
    branches: list[Branch] = field(default_factory=list)
    until: Compiled | None = None

    def run(self, run: Run, scope: dict[str, Any]) -> None:
        for branch in self.branches:
            if branch.when is not None and not branch.when.evaluate(scope):
                if run.trace is not None:
                    run.trace.branch(self, branch.name, False)
                continue
            if run.trace is not None:
                run.trace.branch(self, branch.name, True)
            run.run_steps(branch.steps, scope)
            if self.until is None or self.until.evaluate(scope):
                log.info("trace=%s step=%s settled on strategy '%s'", run.trace_id, self.name, branch.name)
                if run.trace is not None:
                    run.trace.settled(self, branch.name)
                return
        if run.trace is not None:
            run.trace.settled(self, None)


@dataclass
class FailStep(Step):
    code: str = "crm_error"
    message: Compiled = field(default=None)  # type: ignore[assignment]
    fields: Compiled | None = None

    def run(self, run: Run, scope: dict[str, Any]) -> None:
        rule = ErrorRule(self.where, self.code, self.message, fields=self.fields)
        raise rule.to_error(scope, internal=f"fail step {self.name}")


class Trace:
    """Told of everything a :class:`Run` does, for ``mapper run``; the engine ignores it.

    Subclasses override what they need. ``values`` are the names a step set or
    changed; ``branch`` is None when no strategy of a ``first`` settled.
    """

    def started(self, step: Step) -> None:
        return None

    def skipped(self, step: Step) -> None:
        return None

    def exchange(self, step: Step, outbound: Outbound, answer: Inbound) -> None:
        return None

    def branch(self, step: Step, name: str, taken: bool) -> None:
        """A strategy of a ``first``: tried (its 'when' held, or it has none) or passed over."""
        return None

    def settled(self, step: Step, branch: str | None) -> None:
        return None

    def finished(self, step: Step, values: dict[str, Any]) -> None:
        return None

    def failed(self, step: Step, error: Exception) -> None:
        return None


@dataclass
class Run:
    """One execution of one operation: the budget, the client and the trace id."""

    client: Client
    deadline: Deadline
    trace_id: str
    base_url: str
    default_headers: dict[str, str] = field(repr=False)  # may hold an API key
    mapping_errors: list[ErrorRule] = field(repr=False)
    calls: int = 0
    trace: Trace | None = None
    # Removes credentials from CRM text before it can become an error message.
    redact: Callable[[Any], Any] = field(default=lambda value: value)
    traceparent: bool = False  # connection.traceparent: send the trace id to the CRM (W3C)

    def run_steps(self, steps: list[Step], scope: dict[str, Any]) -> None:
        if self.trace is not None:
            self._run_traced(self.trace, steps, scope)
            return
        for step in steps:
            if step.when is not None and not step.when.evaluate(scope):
                continue
            step.run(self, scope)

    def _run_traced(self, trace: Trace, steps: list[Step], scope: dict[str, Any]) -> None:
        for step in steps:
            if step.when is not None and not step.when.evaluate(scope):
                trace.skipped(step)
                continue
            before = dict(scope)
            trace.started(step)
            try:
                step.run(self, scope)
            except Exception as exc:
                trace.failed(step, exc)
                raise
            trace.finished(step, {name: value for name, value in scope.items()
                                  if name not in before or before[name] is not value})
