"""Check a mapping file completely and compile it into ready-to-run objects.

Everything that can be known before a request arrives is checked here, and
every problem is reported at once as ``file:line: dotted.key: message``:
the JSON Schema (shape and unknown keys, with did-you-mean), templates that
do not compile or reach for private attributes, JSONPaths that do not parse,
names a template reads that no earlier step defines, ``body.<field>`` names
that are not in the operation's inbound fields, and steps that mix kinds.
The result is a :class:`CompiledMapping` that the engine interprets without
parsing anything again.
"""

from __future__ import annotations

import difflib
import functools
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import jsonschema
from jinja2 import nodes
from jsonpath_ng import JSONPath
from jsonpath_ng.exceptions import JsonPathLexerError, JsonPathParserError
from jsonpath_ng.ext.parser import ExtendedJsonPathParser

from ..errors import ConfigError, Problem
from . import SCHEMA_DIR
from .auth import SIGNERS
from .definitions import expand_definitions
from .identity import IdentityRules, known_region
from .khoros import BESTMATCH_FIELDS, CASE_WRITE_EXTRA, OPERATIONS, Operation
from .model import Field, ObjectModel
from .pipeline import (
    Branch,
    ErrorRule,
    Extraction,
    FailStep,
    FirstStep,
    ForEachStep,
    Pagination,
    RequestSpec,
    RequestStep,
    SetStep,
    Step,
    Where,
)
from .resume import Find
from .source import SourceDocument, dotted, load_source
from .templating import (
    ENV,
    GLOBAL_NAMES,
    PATH_ENV,
    Compiled,
    Expression,
    Literal,
    TemplateCompileError,
    Text,
    compile_value,
    environments,
    iter_templates,
)
from .upstream import is_safe

SCHEMA_PATH = os.path.join(SCHEMA_DIR, "mapping.schema.json")
with open(SCHEMA_PATH, encoding="utf-8") as _handle:
    MAPPING_SCHEMA = json.load(_handle)
_VALIDATOR = jsonschema.Draft202012Validator(MAPPING_SCHEMA)

# Names every request-time template may read.
BASE_NAMES = frozenset({"body", "id", "khoros", "settings", "secrets", "auth", "now", "trace_id",
                        "idempotency_key"}) | GLOBAL_NAMES
ANSWER_NAMES = frozenset({"response", "status", "headers"})
STEP_KINDS = ("request", "set", "for_each", "first", "fail")
STEP_MODIFIERS = {"accept": "request", "errors": "request", "extract": "request", "paginate": "request",
                  "find": "request",
                  "as": "for_each", "steps": "for_each", "collect": "for_each", "until": "first"}
DEFAULT_TIMEOUT = 5.0
DEFAULT_MAX_BYTES = 5 * 1024 * 1024


@dataclass
class Setting:
    name: str
    env: str | None
    default: Any
    has_default: bool


@dataclass
class LiveModel:
    steps: list[Step]
    fields: Compiled
    cache_seconds: float
    where: Where


@dataclass
class CompiledOperation:
    op: Operation
    steps: list[Step]
    result: Compiled | None
    unsupported: str | None
    where: Where


@dataclass
class CompiledMapping:
    """A mapping that passed every check, with templates and JSONPaths compiled."""

    file: str
    name: str
    settings: list[Setting]
    secrets: list[Setting]
    base_url: Compiled
    headers: dict[str, Compiled]
    auth_kind: str
    auth_values: dict[str, Compiled]
    auth_paths: dict[str, Any]
    timeout: float
    max_response_bytes: int
    retry_429: int
    retry_429_wait: float | None
    errors: list[ErrorRule]
    models: dict[str, ObjectModel]
    live_models: dict[str, LiveModel]
    shapes: dict[str, Compiled]
    shape_where: dict[str, Where]
    operations: dict[str, CompiledOperation] = field(default_factory=dict)
    # Things that work but are probably not meant (``mapper validate`` prints them).
    warnings: list[Problem] = field(default_factory=list)
    traceparent: bool = False


# jsonpath-ng's parse() builds a new parser (its grammar tables) on every call, about
# 0.05 s each; one parser, reused, parses a path in about 2 ms. Used at load time only.
_JSONPATH_PARSER = ExtendedJsonPathParser()


@functools.lru_cache(maxsize=512)
def parse_jsonpath(text: str) -> JSONPath:
    """Parse a JSONPath once per process; mappings repeat the same few paths many times."""
    return _JSONPATH_PARSER.parse(text)


def suggest(name: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


class Compiler:
    """Compiles one source document; collects problems instead of stopping at the first."""

    def __init__(self, doc: SourceDocument) -> None:
        self.doc = doc
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []
        # Per operation: names only set by a step that may not run (name -> that step's line),
        # explicit step names (name -> line), and which body fields the steps read.
        self.maybe: dict[str, Maybe] = {}
        self.step_names: dict[str, int] = {}
        self.current_when: nodes.Expr | None = None  # the condition of the step being compiled
        self.body_reads: set[str] = set()
        self.body_whole = False
        self.setting_names: set[str] = set()
        self.secret_names: set[str] = set()
        self.auth_extra_names: set[str] = set()
        self.env, self.path_env = ENV, PATH_ENV  # per mapping once its identity: section is read

    # -- helpers ---------------------------------------------------------

    def problem(self, path: tuple[Any, ...], message: str) -> None:
        self.problems.append(self.doc.problem(path, message))

    def where(self, path: tuple[Any, ...]) -> Where:
        return Where(self.doc.file, self.doc.line_of(path), dotted(path))

    def value(self, raw: Any, path: tuple[Any, ...], scope: set[str] | frozenset[str],
              body_fields: set[str] | None = None, path_env: bool = False) -> Compiled:
        """Compile a value tree and check every name it reads."""
        try:
            compiled = compile_value(raw, f"{self.doc.file}:{self.doc.line_of(path)} {dotted(path)}",
                                     env=self.path_env if path_env else self.env)
        except TemplateCompileError as exc:
            self.problem(path + exc.path, exc.message)
            return Literal(None)
        self._check_names(compiled, path, set(scope), body_fields)
        return compiled

    def template(self, raw: Any, path: tuple[Any, ...], scope: set[str] | frozenset[str],
                 body_fields: set[str] | None = None) -> Compiled:
        """A condition or expression: must be a '{{ ... }}' template."""
        if not isinstance(raw, str) or "{{" not in raw:
            self.problem(path, "must be a template such as \"{{ body.email is defined }}\"")
            return Literal(None)
        return self.value(raw, path, scope, body_fields)

    def _check_names(self, compiled: Compiled, path: tuple[Any, ...], scope: set[str],
                     body_fields: set[str] | None) -> None:
        from .templating import MapValue
        if isinstance(compiled, MapValue):
            if compiled.item_name in BASE_NAMES | ANSWER_NAMES | {"record", "page", "index"}:
                self.problem(path + ("$as",), f"'{compiled.item_name}' is a reserved name; choose another")
            self._check_names(compiled.over, path + ("$map",), scope, body_fields)
            inner = scope | {compiled.item_name, "index"}
            self._check_names(compiled.to, path + ("$to",), inner, body_fields)
            if compiled.where_clause is not None:
                self._check_names(compiled.where_clause, path + ("$where",), inner, body_fields)
            return
        from .templating import DictValue, ListValue
        if isinstance(compiled, DictValue):
            for key, value in compiled.items.items():
                self._check_names(value, path + (key,), scope, body_fields)
            return
        if isinstance(compiled, ListValue):
            for index, value in enumerate(compiled.items):
                self._check_names(value, path + (index,), scope, body_fields)
            return
        for leaf in iter_templates(compiled):
            assert isinstance(leaf, (Expression, Text))
            read = leaf.names()
            for name in sorted(read - scope):
                self.problem(path, f"unknown value '{name}'{suggest(name, scope - GLOBAL_NAMES)}")
            for name in sorted(read & scope & set(self.maybe)):
                maybe = self.maybe[name]
                if not _guarded(leaf.ast, name, maybe.condition, self.current_when):
                    self.problem(path, f"'{name}' is set only when the step at line {maybe.line} runs, "
                                       f"and that step may not run (it has 'when', or is one strategy of a "
                                       f"'first'); set '{name}' before it (for example set: {{{name}: null}}), "
                                       f"or read it as '{name} | default(...)'")
            if "body" in read and not any(part in ("when", "until", "errors") for part in path):
                self._note_body_reads(leaf.ast)
            for node in leaf.ast.find_all(nodes.Getattr):
                if node.attr.startswith("_"):
                    self.problem(path, f"access to attribute '{node.attr}' is not allowed in templates")
                elif isinstance(node.node, nodes.Name):
                    self._check_attribute(node.node.name, node.attr, path, body_fields, scope)
            for used in leaf.ast.find_all(nodes.Filter):
                if used.name not in ENV.filters:
                    self.problem(path, f"unknown filter '{used.name}'{suggest(used.name, ENV.filters)}")
            for test in leaf.ast.find_all(nodes.Test):
                if test.name not in ENV.tests:
                    self.problem(path, f"unknown test '{test.name}'{suggest(test.name, ENV.tests)}")
            for item in leaf.ast.find_all(nodes.Getitem):
                if isinstance(item.arg, nodes.Const) and str(item.arg.value).startswith("_"):
                    self.problem(path, f"access to item '{item.arg.value}' is not allowed in templates")

    def _note_body_reads(self, ast: nodes.Template) -> None:
        """Which inbound fields a template passes on: ``body.x``, ``body['x']``, ``body.get('x')``;
        ``body`` handed on whole (``body | merge(...)``) passes on every field."""
        direct = sum(1 for node in ast.find_all(nodes.Name) if node.name == "body")
        fielded = 0
        for attr in ast.find_all(nodes.Getattr):
            if isinstance(attr.node, nodes.Name) and attr.node.name == "body":
                fielded += 1
                if attr.attr in ("items", "keys", "values"):
                    self.body_whole = True
                elif attr.attr != "get":
                    self.body_reads.add(attr.attr)
        for item in ast.find_all(nodes.Getitem):
            if isinstance(item.node, nodes.Name) and item.node.name == "body":
                fielded += 1
                if isinstance(item.arg, nodes.Const):
                    self.body_reads.add(str(item.arg.value))
                else:
                    self.body_whole = True
        for call in ast.find_all(nodes.Call):
            target = call.node
            if isinstance(target, nodes.Getattr) and target.attr == "get" and isinstance(target.node, nodes.Name) \
                    and target.node.name == "body" and call.args and isinstance(call.args[0], nodes.Const):
                self.body_reads.add(str(call.args[0].value))
        if direct > fielded:
            self.body_whole = True

    def _check_attribute(self, owner: str, attr: str, path: tuple[Any, ...], body_fields: set[str] | None,
                         scope: set[str]) -> None:
        known: dict[str, set[str] | None] = {
            "settings": self.setting_names, "secrets": self.secret_names,
            "khoros": {"user_email", "initiative", "company_id"}, "auth": self.auth_extra_names,
            "body": body_fields,
        }
        names = known.get(owner)
        if names is None or attr in names:
            return
        if owner == "body" and attr in {"get", "items", "keys", "values"}:
            return
        self.problem(path, f"'{owner}' has no '{attr}'{suggest(attr, names)}")

    def define(self, name: str, path: tuple[Any, ...], scope: set[str]) -> None:
        """A step names a value; it may not hide a name every template relies on."""
        if name in BASE_NAMES or name in ANSWER_NAMES or name in {"record", "page", "index"}:
            self.problem(path, f"'{name}' is a reserved name; choose another")
        scope.add(name)

    def jsonpath(self, text: Any, path: tuple[Any, ...]) -> JSONPath | None:
        try:
            return parse_jsonpath(text)
        except (JsonPathLexerError, JsonPathParserError, Exception) as exc:  # the parser raises bare Exceptions
            self.problem(path, f"JSONPath does not parse: {str(exc).splitlines()[0]}")
            return None

    # -- schema ----------------------------------------------------------

    def check_schema(self) -> bool:
        errors = sorted(_VALIDATOR.iter_errors(self.doc.data), key=lambda e: list(map(str, e.absolute_path)))
        for error in errors:
            self._schema_problem(error)
        return not errors

    def _schema_problem(self, error: jsonschema.ValidationError) -> None:
        path = tuple(error.absolute_path)
        schema: Any = error.schema  # the subschema that failed (typed loosely by jsonschema)
        validator_value: Any = error.validator_value
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            allowed = set(schema.get("properties", {}) if isinstance(schema, dict) else ())
            for key in sorted(set(error.instance) - allowed):
                self.problem(path + (key,), f"unknown key '{key}'{suggest(key, allowed)}")
            return
        if error.validator == "required":
            self.problem(path, error.message.replace("is a required property", "is required here"))
            return
        if error.validator == "oneOf" and error.context:
            # Report every problem of the alternative that came closest: the one that got
            # deepest, then the one declaring most of the keys given, then the one whose
            # type fits ('reslt' in an operation is a typo for 'result', not a missing 'unsupported').
            by_alternative: dict[Any, list[jsonschema.ValidationError]] = {}
            for sub in error.context:
                by_alternative.setdefault(sub.relative_schema_path[0], []).append(sub)

            def closeness(item: tuple[Any, list[jsonschema.ValidationError]]) -> tuple[int, int, int]:
                index, subs = item
                alternative = validator_value[index]
                declared = alternative.get("properties", {}) if isinstance(alternative, dict) else {}
                given = set(error.instance) if isinstance(error.instance, dict) else set()
                return (max(len(e.absolute_path) for e in subs), len(given & set(declared)),
                        -sum(e.validator == "type" for e in subs))

            for sub in max(by_alternative.items(), key=closeness)[1]:
                self._schema_problem(sub)
            return
        if error.validator == "propertyNames":
            self.problem(path, f"'{error.instance}' is not a valid name: use letters, digits and '_'")
            return
        if error.validator == "enum":
            self.problem(path, f"must be one of: {', '.join(map(str, validator_value))}")
            return
        message = error.message
        if len(message) > 200:
            message = message[:200] + "..."
        self.problem(path, message)

    # -- the mapping -----------------------------------------------------

    def check_todos(self, value: Any, path: tuple[Any, ...] = ()) -> None:
        """``mapper init`` leaves a string starting with TODO wherever it could not guess."""
        if isinstance(value, str) and value.startswith("TODO"):
            self.problem(path, f"left to fill in: {value[4:].lstrip(' :')}")
        elif isinstance(value, dict):
            for key, item in value.items():
                if isinstance(key, str) and key.startswith("TODO"):
                    self.problem(path + (key,), "left to fill in: " + str(item))
                self.check_todos(item, path + (key,))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                self.check_todos(item, path + (index,))

    def compile(self) -> CompiledMapping | None:
        self.doc, problems = expand_definitions(self.doc)
        self.problems += problems
        self.check_todos(self.doc.data)
        if problems or not self.check_schema():  # a missing definition would only add follow-on noise
            return None
        data = self.doc.data
        self.env, self.path_env = environments(self._identity(data.get("identity", {})))
        settings = [self._setting(name, spec) for name, spec in data.get("settings", {}).items()]
        secrets = [Setting(name, spec["env"], None, bool(spec.get("optional", False)))
                   for name, spec in data.get("secrets", {}).items()]
        self.setting_names = {s.name for s in settings}
        self.secret_names = {s.name for s in secrets}
        connection = data["connection"]
        auth = connection.get("auth", {"type": "none"})
        self.auth_extra_names = set(auth.get("extra", {}))
        static_scope = frozenset({"settings", "secrets"}) | GLOBAL_NAMES
        auth_values, auth_paths = self._auth(auth, static_scope)
        base_url = self.value(connection["base_url"], ("connection", "base_url"),
                              static_scope | {"auth"})
        models = {kind: self._model(kind, data["model"][kind]) for kind in ("customer", "case")}
        shape_scope = BASE_NAMES | {"record"}
        shapes = {kind: self.value(data["shapes"][kind], ("shapes", kind), shape_scope)
                  for kind in ("customer", "case")}
        mapping_errors = [self._error_rule(rule, ("errors", i), BASE_NAMES | ANSWER_NAMES)
                          for i, rule in enumerate(data.get("errors", []))]
        live_models = {}
        for kind in ("customer", "case"):
            live = data["model"][kind].get("live")
            if live:
                path = ("model", kind, "live")
                self.maybe, self.step_names = {}, {}
                scope = set(BASE_NAMES)
                steps = self._steps(live["steps"], path + ("steps",), scope, None)
                live_models[kind] = LiveModel(steps, self.value(live["fields"], path + ("fields",), scope),
                                              float(live.get("cache_seconds", 300)), self.where(path))
        compiled = CompiledMapping(
            file=self.doc.file, name=data["name"], settings=settings, secrets=secrets, base_url=base_url,
            headers={str(k): self.value(str(v), ("connection", "headers", k), static_scope)
                     for k, v in connection.get("headers", {}).items()},
            auth_kind=auth["type"], auth_values=auth_values, auth_paths=auth_paths,
            timeout=float(connection.get("timeout", DEFAULT_TIMEOUT)),
            max_response_bytes=int(connection.get("max_response_bytes", DEFAULT_MAX_BYTES)),
            retry_429=int(connection.get("retry_429", 2)),
            retry_429_wait=float(connection["retry_429_wait"]) if "retry_429_wait" in connection else None,
            traceparent=bool(connection.get("traceparent", False)),
            errors=mapping_errors, models=models, live_models=live_models, shapes=shapes,
            shape_where={k: self.where(("shapes", k)) for k in shapes},
        )
        writes: dict[str, tuple[set[str], bool]] = {}
        for op in OPERATIONS:
            self.body_reads, self.body_whole = set(), False
            compiled.operations[op.name] = self._operation(op, data["operations"][op.name], models)
            if op.input in ("create", "update") and not compiled.operations[op.name].unsupported:
                reads, whole = writes.get(op.object_kind, (set(), False))
                writes[op.object_kind] = (reads | self.body_reads, whole or self.body_whole)
        self._warn_unwritten_fields(models, writes)
        compiled.warnings = self.warnings
        return None if self.problems else compiled

    def _warn_unwritten_fields(self, models: dict[str, ObjectModel], writes: dict[str, tuple[set[str], bool]]) -> None:
        """A model field that no create or update passes on is shown to agents, who fill it,
        and then silently dropped: warn, naming it (it works, so it is not an error)."""
        for kind, model in models.items():
            if kind not in writes or writes[kind][1]:
                continue  # nothing is written at all, or the whole body is passed on
            reads = writes[kind][0]
            for index, field_ in enumerate(model.fields):
                if field_.readonly or field_.name in reads:
                    continue
                self.warnings.append(self.doc.problem(
                    ("model", kind, "fields", index),
                    f"no create or update of a {kind} writes '{field_.name}' (no step reads body.{field_.name}), "
                    "so what an agent enters there is dropped; write it in a request, or mark it readonly: true"))

    def _identity(self, spec: dict[str, Any]) -> IdentityRules:
        """The ``identity:`` section: the phone region and where records keep each identifier."""
        def paths(key: str, default: tuple[str, ...]) -> tuple[str, ...]:
            value = spec.get(key)
            if value is None:
                return default
            return tuple(value) if isinstance(value, list) else (value,)

        region = spec.get("region")
        if region is not None and not known_region(str(region)):
            self.problem(("identity", "region"), f"'{region}' is not a region phone numbers know; use a "
                                                 "two-letter country code such as US, GB or DE")
        defaults = IdentityRules()
        return IdentityRules(region=str(region).upper() if region else None, id=str(spec.get("id", defaults.id)),
                             email=paths("email", defaults.email), phone=paths("phone", defaults.phone),
                             handle=paths("handle", defaults.handle), name=paths("name", defaults.name))

    def _setting(self, name: str, spec: Any) -> Setting:
        if isinstance(spec, dict):
            return Setting(name, spec["env"], spec.get("default"), "default" in spec)
        return Setting(name, None, spec, True)

    def _auth(self, auth: dict[str, Any], scope: frozenset[str]) -> tuple[dict[str, Compiled], dict[str, Any]]:
        kind = auth["type"]
        _, required = SIGNERS[kind]
        for key in required:
            if key not in auth:
                self.problem(("connection", "auth"), f"auth type '{kind}' needs '{key}'")
        values = {}
        for key in ("token", "username", "password", "name", "value", "token_url", "grant", "client_id",
                    "client_secret", "refresh_token", "scope"):
            if key in auth:
                values[key] = self.value(auth[key], ("connection", "auth", key), scope)
        paths: dict[str, Any] = {}
        if kind == "oauth2":
            paths["token_path"] = self.jsonpath(auth.get("token_path", "$.access_token"),
                                                ("connection", "auth", "token_path"))
            paths["expires_path"] = (self.jsonpath(auth["expires_path"], ("connection", "auth", "expires_path"))
                                     if "expires_path" in auth else None)
            paths["extra"] = {name: self.jsonpath(text, ("connection", "auth", "extra", name))
                              for name, text in auth.get("extra", {}).items()}
            paths["refresh_when"] = (self.template(auth["refresh_when"], ("connection", "auth", "refresh_when"),
                                                   ANSWER_NAMES | GLOBAL_NAMES)
                                     if "refresh_when" in auth else None)
        return values, paths

    def _model(self, kind: str, spec: dict[str, Any]) -> ObjectModel:
        fields = []
        seen: set[str] = set()
        for i, raw in enumerate(spec["fields"]):
            path = ("model", kind, "fields", i)
            if raw["name"] in seen:
                self.problem(path + ("name",), f"field '{raw['name']}' is declared twice")
            seen.add(raw["name"])
            if raw["type"] == "single_sel_list" and not raw.get("listValues"):
                self.problem(path, "a single_sel_list field needs listValues")
            if raw["type"] != "single_sel_list" and raw.get("listValues"):
                self.problem(path + ("listValues",), "listValues are only allowed on single_sel_list fields")
            if kind == "case" and raw.get("searchable"):
                self.problem(path + ("searchable",), "case fields are never searched by Khoros")
            if kind == "case" and raw["name"] in CASE_WRITE_EXTRA:
                self.problem(path + ("name",), f"'{raw['name']}' is part of every case write; do not declare it")
            pattern = None
            if "pattern" in raw:
                try:
                    pattern = re.compile(raw["pattern"])
                except re.error as exc:
                    self.problem(path + ("pattern",), f"not a valid regular expression: {exc}")
            fields.append(Field(
                name=raw["name"], label=raw["label"], type=raw["type"],
                searchable=bool(raw.get("searchable", False)), required=bool(raw.get("required", False)),
                readonly=bool(raw.get("readonly", False)),
                list_values=tuple((v["name"], v["value"]) for v in raw.get("listValues", [])),
                max_length=raw.get("maxLength"), pattern=pattern, format=raw.get("format")))
        return ObjectModel(kind, fields)

    def _operation(self, op: Operation, spec: dict[str, Any], models: dict[str, ObjectModel]) -> CompiledOperation:
        path = ("operations", op.name)
        if "unsupported" in spec:
            return CompiledOperation(op, [], None, spec["unsupported"], self.where(path))
        body_fields = self._body_fields(op, models)
        self.maybe, self.step_names = {}, {}
        scope = set(BASE_NAMES)
        if not op.has_id:
            scope.discard("id")
        steps = self._steps(spec.get("steps", []), path + ("steps",), scope, body_fields)
        result = self.template(spec["result"], path + ("result",), scope, body_fields)
        return CompiledOperation(op, steps, result, None, self.where(path))

    def _body_fields(self, op: Operation, models: dict[str, ObjectModel]) -> set[str]:
        if op.input == "none":
            return set()
        if op.input == "bestmatch":
            return set(BESTMATCH_FIELDS)
        model = models[op.object_kind]
        names = set(model.by_name)
        if op.object_kind == "case" and op.input != "search":
            names |= set(CASE_WRITE_EXTRA)
        return names

    # -- steps -----------------------------------------------------------

    def _steps(self, raw_steps: list[dict[str, Any]], path: tuple[Any, ...], scope: set[str],
               body_fields: set[str] | None) -> list[Step]:
        steps = []
        for i, raw in enumerate(raw_steps):
            before_scope, before_maybe = set(scope), dict(self.maybe)
            step = self._step(raw, path + (i,), scope, body_fields)
            if step is not None:
                steps.append(step)
            if isinstance(raw, dict) and "when" in raw:
                # A step that may not run sets its names only maybe (unless they were set before),
                # but two steps under opposite conditions ('x' and 'not x') set them for sure.
                line = self.doc.line_of(path + (i,))
                condition = _condition(step.when) if step is not None else None
                for name in _names_set(raw):
                    if name in before_scope and name not in before_maybe:
                        continue
                    earlier = before_maybe.get(name)
                    if earlier is not None and _opposite(earlier.condition, condition):
                        self.maybe.pop(name, None)
                    else:
                        self.maybe[name] = earlier or Maybe(line, condition)
        return steps

    def _step(self, raw: dict[str, Any], path: tuple[Any, ...], scope: set[str],
              body_fields: set[str] | None) -> Step | None:
        kinds = [k for k in STEP_KINDS if k in raw]
        if len(kinds) != 1:
            self.problem(path, "a step needs exactly one of: " + ", ".join(STEP_KINDS) +
                         (f" (this one has {', '.join(kinds)})" if kinds else ""))
            return None
        kind = kinds[0]
        for key, owner in STEP_MODIFIERS.items():
            if key in raw and owner != kind:
                self.problem(path + (key,), f"'{key}' belongs to a '{owner}' step, not a '{kind}' step")
        name = raw.get("name") or _default_step_name(kind, raw)
        if "name" in raw:
            line = self.doc.line_of(path + ("name",))
            if name in self.step_names and self.step_names[name] != line:  # the same line: a YAML alias
                self.problem(path + ("name",), f"step name '{name}' is already used at line "
                                               f"{self.step_names[name]} in this operation; give each step its "
                                               "own name so that errors and traces point at one step")
            else:
                self.step_names[name] = line
        if kind != "first":
            for set_name in _names_set(raw):
                self.maybe.pop(set_name, None)  # set by this step whenever it runs
        when = self.template(raw["when"], path + ("when",), scope, body_fields) if "when" in raw else None
        where = self.where(path)
        outer_when, self.current_when = self.current_when, _condition(when)
        try:
            return self._step_body(raw, kind, name, when, where, path, scope, body_fields)
        finally:
            self.current_when = outer_when

    def _step_body(self, raw: dict[str, Any], kind: str, name: str, when: Compiled | None, where: Where,
                   path: tuple[Any, ...], scope: set[str], body_fields: set[str] | None) -> Step | None:
        if kind == "request":
            return self._request_step(raw, path, scope, body_fields, name, when, where)
        if kind == "set":
            values = {}
            for key, value in raw["set"].items():
                values[key] = self.value(value, path + ("set", key), scope, body_fields)
                self.define(key, path + ("set", key), scope)
            return SetStep(name, where, when, values)
        if kind == "for_each":
            over = self.template(raw["for_each"], path + ("for_each",), scope, body_fields)
            item = raw.get("as", "item")
            self.define(item, path + ("as",), set())  # only to refuse reserved names
            inner = scope | {item, "index"}
            sub = self._steps(raw.get("steps", []), path + ("steps",), inner, body_fields)
            collect = {k: self.value(v, path + ("collect", k), inner, body_fields)
                       for k, v in raw.get("collect", {}).items()}
            for key in collect:
                self.define(key, path + ("collect", key), scope)
            return ForEachStep(name, where, when, over=over, item_name=item, steps=sub, collect=collect)
        if kind == "first":
            branches = []
            before_scope, before_maybe = set(scope), dict(self.maybe)
            branch_names: list[set[str]] = []
            seen_branches: set[str] = set()
            for b, branch in enumerate(raw["first"]):
                bpath = path + ("first", b)
                bwhen = self.template(branch["when"], bpath + ("when",), scope, body_fields) \
                    if "when" in branch else None
                sub = self._steps(branch["steps"], bpath + ("steps",), scope, body_fields)
                branch_name = branch.get("name", f"strategy {b + 1}")
                if branch_name in seen_branches:
                    self.problem(bpath + ("name",), f"strategy name '{branch_name}' is used twice in this 'first'")
                seen_branches.add(branch_name)
                branches.append(Branch(branch_name, bwhen, sub))
                # What one strategy set, the next ones and the steps after see only maybe.
                names = _names_set_by(branch["steps"])
                branch_names.append(names)
                for set_name in names:
                    if set_name not in before_scope or set_name in before_maybe:
                        self.maybe[set_name] = before_maybe.get(set_name) or Maybe(self.doc.line_of(bpath), None)
            # Set for sure: what the first strategy sets when it always runs, and what every
            # strategy sets when the last one always runs (then one of them ran).
            definite: set[str] = set()
            first_branches = raw["first"]
            if first_branches and "when" not in first_branches[0]:
                definite |= branch_names[0]
            if first_branches and "when" not in first_branches[-1]:
                definite |= set.intersection(*branch_names)
            for set_name in definite:
                if set_name not in before_maybe or set_name not in before_scope:
                    self.maybe.pop(set_name, None)
            until = self.template(raw["until"], path + ("until",), scope, body_fields) if "until" in raw else None
            return FirstStep(name, where, when, branches=branches, until=until)
        fail = raw["fail"]
        message = self.value(fail["message"], path + ("fail", "message"), scope, body_fields)
        fields = self.value(fail["fields"], path + ("fail", "fields"), scope, body_fields) if "fields" in fail else None
        return FailStep(name, where, when, code=fail["error"], message=message, fields=fields)

    def _request_step(self, raw: dict[str, Any], path: tuple[Any, ...], scope: set[str],
                      body_fields: set[str] | None, name: str, when: Compiled | None, where: Where) -> Step:
        req = raw["request"]
        rpath = path + ("request",)
        paginate = raw.get("paginate")
        req_scope = scope | ({"page"} if paginate else set())
        spec = RequestSpec(
            method=req["method"],
            path=self.value(req["path"], rpath + ("path",), req_scope, body_fields, path_env=True)
            if "path" in req else None,
            url=self.value(req["url"], rpath + ("url",), req_scope, body_fields) if "url" in req else None,
            query=self.value(req["query"], rpath + ("query",), req_scope, body_fields) if "query" in req else None,
            headers=self.value(req["headers"], rpath + ("headers",), req_scope, body_fields)
            if "headers" in req else None,
            body=self.value(req["body"], rpath + ("body",), req_scope, body_fields) if "body" in req else None,
            form=self.value(req["form"], rpath + ("form",), req_scope, body_fields) if "form" in req else None,
        )
        if ("path" in req) == ("url" in req):
            self.problem(rpath, "give exactly one of 'path' (encoded) or 'url' (a link from the CRM, verbatim)")
        if "body" in req and "form" in req:
            self.problem(rpath, "give either 'body' (JSON) or 'form', not both")
        answer_scope = scope | ANSWER_NAMES
        pagination = None
        if paginate:
            ppath = path + ("paginate",)
            page_scope = answer_scope | {"page", paginate["into"]}
            items = self.jsonpath(paginate["items"], ppath + ("items",))
            if items is None:  # already reported; keep checking the rest of the step
                items = parse_jsonpath("$")
            pagination = Pagination(
                items=items,
                into=paginate["into"],
                keep_going=self.template(paginate["while"], ppath + ("while",), page_scope, body_fields),
                cursor=self.template(paginate["cursor"], ppath + ("cursor",), page_scope, body_fields)
                if "cursor" in paginate else None,
                max_pages=int(paginate.get("max_pages", 10)))
            self.define(paginate["into"], ppath + ("into",), scope)
        # Error rules judge each page as it arrives (they see 'page'); extractions run once
        # on the last answer, after the pages were collected (they see the 'into' list).
        rule_scope = answer_scope | ({"page"} if paginate else set())
        extract_scope = answer_scope | ({paginate["into"]} if paginate else set())
        errors = [self._error_rule(rule, path + ("errors", i), rule_scope, body_fields)
                  for i, rule in enumerate(raw.get("errors", []))]
        extractions = []
        for key, spec_raw in raw.get("extract", {}).items():
            extractions.append(self._extraction(key, spec_raw, path + ("extract", key), extract_scope, body_fields))
        find = self._find(raw, path, scope, body_fields, name) if "find" in raw else None
        for extraction in extractions:
            self.define(extraction.name, path + ("extract", extraction.name), scope)
        return RequestStep(name, where, when, request=spec, accept=frozenset(raw.get("accept", [])),
                           errors=errors, extract=extractions, paginate=pagination, safe=req.get("safe"),
                           guarded=_is_write(req), find=find)

    def _find(self, raw: dict[str, Any], path: tuple[Any, ...], scope: set[str], body_fields: set[str] | None,
              name: str) -> Find:
        """A write's ``find:``: a lookup compiled like a request step (a read: retried like a GET,
        whatever its method), whose extract must set every name the write's extract sets: when the
        lookup finds the record, the write is skipped and the steps after it still read those names."""
        spec = raw["find"]
        fpath = path + ("find",)
        if not _is_write(raw["request"]):
            self.problem(fpath, "'find' belongs to a write (POST, PUT, PATCH, DELETE not marked safe): it says "
                                "how to find what the write may already have written")
        if "paginate" in raw:
            self.problem(fpath, "a paginated request cannot have 'find'")
        if ("request" in spec) == ("steps" in spec):
            self.problem(fpath, "give 'find' exactly one of 'request' (one lookup) or 'steps' (several)")
            return Find(self.template("{{ false }}", fpath, scope, body_fields))
        sets = set(spec.get("extract", {})) if "request" in spec else _names_set_by(spec["steps"])
        missing = sorted(set(raw.get("extract", {})) - sets)
        if missing:
            self.problem(fpath + ("extract",), f"must also set {', '.join(repr(m) for m in missing)}: when the "
                                               "lookup finds the record the write is skipped, and the steps after "
                                               "it read what the write's extract would have set")
        when = self.template(spec["when"], fpath + ("when",), scope, body_fields) if "when" in spec else None
        if "steps" in spec:
            steps = self._steps(spec["steps"], fpath + ("steps",), scope, body_fields)
            return Find(self.template(spec["found"], fpath + ("found",), scope, body_fields), steps=steps, when=when)
        lookup = self._request_step(spec, fpath, scope, body_fields, f"{name} (find)", None, self.where(fpath))
        assert isinstance(lookup, RequestStep)
        lookup.guarded = False
        if lookup.safe is None:
            lookup.safe = True  # it only reads, even when sent as POST (a search)
        found = self.template(spec["found"], fpath + ("found",), scope | ANSWER_NAMES, body_fields)
        return Find(found, lookup=lookup, when=when)

    def _extraction(self, name: str, raw: Any, path: tuple[Any, ...], scope: set[str] | frozenset[str],
                    body_fields: set[str] | None) -> Extraction:
        where = self.where(path)
        if isinstance(raw, str) and raw.startswith("$"):
            return Extraction(name, where, path=self.jsonpath(raw, path), path_text=raw)
        if isinstance(raw, str):
            return Extraction(name, where, expression=self.template(raw, path, scope, body_fields))
        if "header" in raw:
            pattern = None
            if "pattern" in raw:
                try:
                    pattern = re.compile(raw["pattern"])
                except re.error as exc:
                    self.problem(path + ("pattern",), f"not a valid regular expression: {exc}")
                else:
                    if pattern.groups > 1:
                        self.problem(path + ("pattern",), "use at most one capture group (its text is the value)")
            return Extraction(name, where, header=str(raw["header"]), pattern=pattern,
                              has_default="default" in raw, default=raw.get("default"))
        return Extraction(name, where, path=self.jsonpath(raw["path"], path + ("path",)), path_text=raw["path"],
                          many=bool(raw.get("many", False)), has_default="default" in raw,
                          default=raw.get("default"), lenient=bool(raw.get("lenient", False)))

    def _error_rule(self, raw: dict[str, Any], path: tuple[Any, ...], scope: set[str] | frozenset[str],
                    body_fields: set[str] | None = None) -> ErrorRule:
        statuses: set[int] = set()
        classes: set[int] = set()
        status = raw.get("status")
        for item in status if isinstance(status, list) else ([status] if status is not None else []):
            if isinstance(item, int):
                statuses.add(item)
            else:
                classes.add(int(item[0]))
        if "fields" in raw and raw["error"] != "validation_failed":
            self.problem(path + ("fields",), "'fields' only goes with error: validation_failed")
        return ErrorRule(
            where=self.where(path), code=raw["error"],
            message=self.value(raw["message"], path + ("message",), scope, body_fields),
            statuses=frozenset(statuses), status_classes=frozenset(classes),
            condition=self.template(raw["when"], path + ("when",), scope, body_fields) if "when" in raw else None,
            fields=self.value(raw["fields"], path + ("fields",), scope, body_fields) if "fields" in raw else None,
            rename=dict(raw.get("rename", {})))


def _names_set(raw: Any) -> set[str]:
    """The names one step sets in its operation's scope when it runs."""
    if not isinstance(raw, dict):
        return set()
    names: set[str] = set()
    if isinstance(raw.get("set"), dict):
        names |= set(raw["set"])
    if isinstance(raw.get("extract"), dict):
        names |= set(raw["extract"])
    if isinstance(raw.get("find"), dict):
        names |= _names_set({"extract": raw["find"].get("extract")}) | _names_set_by(raw["find"].get("steps"))
    if isinstance(raw.get("paginate"), dict) and "into" in raw["paginate"]:
        names.add(raw["paginate"]["into"])
    if "for_each" in raw and isinstance(raw.get("collect"), dict):
        names |= set(raw["collect"])
    if isinstance(raw.get("first"), list):
        for branch in raw["first"]:
            if isinstance(branch, dict):
                names |= _names_set_by(branch.get("steps") or [])
    return names


def _names_set_by(steps: Any) -> set[str]:
    return set().union(*(_names_set(step) for step in steps)) if isinstance(steps, list) and steps else set()


@dataclass
class Maybe:
    """A name only some runs set: the line of the step that sets it, and that step's condition."""

    line: int
    condition: nodes.Expr | None


def _condition(when: Compiled | None) -> nodes.Expr | None:
    """The expression of a ``when: "{{ ... }}"``, for comparing conditions."""
    if not isinstance(when, Expression):
        return None
    body = when.ast.body
    if len(body) == 1 and isinstance(body[0], nodes.Output) and len(body[0].nodes) == 1:
        return body[0].nodes[0]
    return None


def _negation(node: nodes.Expr) -> nodes.Expr | None:
    return node.node if isinstance(node, nodes.Not) else None


def _opposite(left: nodes.Expr | None, right: nodes.Expr | None) -> bool:
    """``x`` and ``not x`` (also ``x is none`` and ``x is not none``)."""
    if left is None or right is None:
        return False
    return _negation(left) == right or _negation(right) == left


def _conjuncts(node: nodes.Expr | None) -> list[nodes.Expr]:
    if node is None:
        return []
    if isinstance(node, nodes.And):
        return _conjuncts(node.left) + _conjuncts(node.right)
    return [node]


def _reads(node: nodes.Node, name: str) -> bool:
    return any(n.name == name for n in node.find_all(nodes.Name)) or \
        (isinstance(node, nodes.Name) and node.name == name)


def _is_write(request: dict[str, Any]) -> bool:
    """Whether a request is a write: one that is not safe to send twice (GET and HEAD are,
    and any request the mapping marks ``safe: true``). Only its step may send it again."""
    return not is_safe(str(request.get("method", "")), request.get("safe"))


def _guarded(ast: nodes.Template, name: str, condition: nodes.Expr | None, step_when: nodes.Expr | None) -> bool:
    """True when a template reads a maybe-set ``name`` safely: through ``name is defined`` or
    ``name | default(...)``, or under the very condition of the step that sets it (the
    reading step's own ``when``, ``... if <condition> else ...``, ``<condition> and ...``)."""
    for test in ast.find_all(nodes.Test):
        if test.name in ("defined", "undefined") and isinstance(test.node, nodes.Name) and test.node.name == name:
            return True
    for used in ast.find_all(nodes.Filter):
        if used.name in ("default", "d") and isinstance(used.node, nodes.Name) and used.node.name == name:
            return True
    if condition is None:
        return False
    if condition in _conjuncts(step_when):
        return True
    for branch in ast.find_all(nodes.CondExpr):
        if condition in _conjuncts(branch.test) and _reads(branch.expr1, name):
            return True
        if branch.expr2 is not None and _negation(branch.test) == condition and _reads(branch.expr2, name):
            return True
    for both in ast.find_all(nodes.And):
        if isinstance(both.left, nodes.Expr) and condition in _conjuncts(both.left) and _reads(both.right, name):
            return True
    for block in ast.find_all(nodes.If):
        if isinstance(block.test, nodes.Expr) and condition in _conjuncts(block.test) \
                and any(_reads(n, name) for n in block.body):
            return True
    return False


def _default_step_name(kind: str, raw: dict[str, Any]) -> str:
    """A name for a step the mapping left unnamed, telling it apart from its neighbours in
    messages and traces: ``GET /customers/{{ id }}``, ``set matches``, ``for_each body.interactions``."""
    if kind == "request" and isinstance(raw.get("request"), dict):
        request = raw["request"]
        return f"{request.get('method', '?')} {request.get('path', request.get('url', '?'))}"
    if kind == "set" and isinstance(raw.get("set"), dict):
        return "set " + ", ".join(map(str, raw["set"]))
    if kind == "for_each":
        return "for_each " + str(raw["for_each"]).replace("{{", "").replace("}}", "").strip()
    if kind == "fail" and isinstance(raw.get("fail"), dict):
        return f"fail {raw['fail'].get('error', '')}".strip()
    return kind


def compile_document(doc: SourceDocument) -> CompiledMapping:
    """Compile a loaded document or raise :class:`ConfigError` listing every problem."""
    compiler = Compiler(doc)
    compiled = compiler.compile()
    if compiler.problems or compiled is None:
        raise ConfigError(sorted(compiler.problems, key=lambda p: (p.line, p.key)))
    return compiled


def compile_file(path: str) -> CompiledMapping:
    """Load, check and compile one mapping file."""
    return compile_document(load_source(path))


def schema_problems(doc: SourceDocument, validator: jsonschema.protocols.Validator) -> list[Problem]:
    """Every way ``doc`` breaks ``validator``'s schema, reported like a mapping's
    (``file:line: key: message``, did-you-mean on unknown keys); for the other
    YAML files the server reads, such as the tenant file."""
    compiler = Compiler(doc)
    for error in sorted(validator.iter_errors(doc.data), key=lambda e: list(map(str, e.absolute_path))):
        compiler._schema_problem(error)
    return compiler.problems
