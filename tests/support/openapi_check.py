"""Check the requests a fake received against an OpenAPI 3.1 description.

Used for vendors that publish no machine-readable description (Freshdesk,
ServiceNow's Table API): a minimal one is written from their reference pages
(``tests/specs/<vendor>.yaml``, its sources in its header), and every request
the mapping makes the fake receive is held to it. Each problem is one line,
``METHOD /path: what is wrong``.

What is checked: the path and method are declared; every query parameter is
declared, required ones are present, and each value parses as the declared
schema (integers and booleans from their text); a JSON body is sent where one
is declared and validates against its schema (JSON Schema 2020-12, as
OpenAPI 3.1 uses). Headers and answers are not checked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator

from tests.fakes.base import RecordedRequest

_METHODS = ("get", "post", "put", "patch", "delete")


@dataclass(frozen=True)
class _Operation:
    method: str
    template: str
    pattern: re.Pattern[str]
    spec: dict[str, Any]
    path_params: list[dict[str, Any]]


class OpenApiCheck:
    """A loaded description; :meth:`problems` judges one recorded request."""

    def __init__(self, path: str | Path) -> None:
        self.document: dict[str, Any] = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        assert str(self.document.get("openapi", "")).startswith("3.1"), "write the description as OpenAPI 3.1"
        self.prefix = self.document.get("x-path-prefix", "")
        self.operations: list[_Operation] = []
        for template, item in self.document["paths"].items():
            shared = item.get("parameters", [])
            regex = re.sub(r"\\\{([^}]+)\\\}", r"(?P<\1>[^/]+)", re.escape(self.prefix + template))
            for method in _METHODS:
                if method in item:
                    spec = self._resolve(item[method])
                    params = [self._resolve(p) for p in shared + spec.get("parameters", [])]
                    self.operations.append(_Operation(method.upper(), template, re.compile(f"^{regex}$"),
                                                      {**spec, "parameters": params},
                                                      [p for p in params if p["in"] == "path"]))

    def _resolve(self, node: Any) -> Any:
        if isinstance(node, dict) and "$ref" in node:
            target: Any = self.document
            for part in node["$ref"].lstrip("#/").split("/"):
                target = target[part]
            return self._resolve(target)
        return node

    def _validator(self, schema: dict[str, Any]) -> Draft202012Validator:
        # Local $refs (#/components/schemas/...) resolve against the whole document.
        return Draft202012Validator({**schema, "$defs": {}, "components": self.document.get("components", {})})

    def problems(self, request: RecordedRequest) -> list[str]:
        where = f"{request.method} {request.path}"
        candidates = [op for op in self.operations if op.pattern.match(request.path)]
        if not candidates:
            return [f"{where}: path not in the description"]
        # A literal segment wins over a template (/contacts/autocomplete over /contacts/{id}).
        candidates.sort(key=lambda op: op.template.count("{"))
        operation = next((op for op in candidates if op.method == request.method), None)
        if operation is None:
            return [f"{where}: method not declared for {candidates[0].template}"]
        found: list[str] = []
        match = operation.pattern.match(request.path)
        assert match is not None
        for param in operation.path_params:
            found += self._value_problems(where, f"path parameter {param['name']}",
                                          match.group(param["name"]), param.get("schema", {}))
        declared = {p["name"]: p for p in operation.spec["parameters"] if p["in"] == "query"}
        for name, values in request.query.items():
            if name not in declared:
                found.append(f"{where}: query parameter {name!r} is not declared")
                continue
            for value in values:
                found += self._value_problems(where, f"query parameter {name}", value,
                                              declared[name].get("schema", {}))
        for name, param in declared.items():
            if param.get("required") and name not in request.query:
                found.append(f"{where}: required query parameter {name!r} is missing")
        body_spec = operation.spec.get("requestBody")
        if body_spec is not None:
            schema = self._resolve(body_spec)["content"]["application/json"]["schema"]
            if request.json is None:
                if self._resolve(body_spec).get("required"):
                    found.append(f"{where}: a JSON body is required")
            else:
                for error in self._validator(self._resolve(schema)).iter_errors(request.json):
                    path = "/".join(str(p) for p in error.absolute_path) or "(body)"
                    found.append(f"{where}: body {path}: {error.message}")
        elif request.body:
            found.append(f"{where}: a body was sent where none is declared")
        return found

    def _value_problems(self, where: str, what: str, text: str, schema: dict[str, Any]) -> list[str]:
        schema = self._resolve(schema)
        kind = schema.get("type", "string")
        value: Any = text
        if kind == "integer":
            if not re.fullmatch(r"-?\d+", text):
                return [f"{where}: {what} {text!r} is not an integer"]
            value = int(text)
        elif kind == "boolean":
            if text not in ("true", "false"):
                return [f"{where}: {what} {text!r} is not true/false"]
            value = text == "true"
        return [f"{where}: {what}: {e.message}" for e in self._validator(schema).iter_errors(value)]
