"""The Khoros data model a mapping declares, and the checks it implies.

Khoros reads the fields of each object from ``/meta/object/{customer,case}``
and the admin builds agents' forms from them; the same field list therefore
decides what we accept from Khoros. This module holds that list, renders the
meta answer, and checks inbound bodies against it: an unknown field or a
wrong shape is a 400, a field value that breaks the model is a 422 naming the
field.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from ..errors import BadRequest, FieldError, ValidationFailed
from . import SCHEMA_DIR
from .limits import unknown_keys_phrase

# The Khoros field types and the JSON type each carries on the wire.
FIELD_TYPES: dict[str, tuple[type, str]] = {
    "text": (str, "text"),
    "textarea": (str, "text"),
    "single_sel_list": (str, "one of the listed values"),
    "checkbox": (bool, "true or false"),
}

# Fields Khoros requires in every meta answer; added when a mapping leaves them out.
IDENTITY_FIELDS: dict[str, list[dict[str, Any]]] = {
    "customer": [
        {"name": "id", "label": "Id", "type": "text", "searchable": False},
        {"name": "uri", "label": "Link", "type": "text", "searchable": False},
    ],
    "case": [
        {"name": "id", "label": "Id", "type": "text", "searchable": False},
        {"name": "linkUrl", "label": "Link", "type": "text", "searchable": False},
        {"name": "created", "label": "Created", "type": "text", "searchable": False},
    ],
}

# Keys that identify or describe a stored object; Khoros may echo them back in
# a write, and they can never be written, so writes ignore them.
IGNORED_ON_WRITE: dict[str, frozenset[str]] = {
    "customer": frozenset({"id", "uri", "url"}),
    "case": frozenset({"id", "number", "linkUrl", "url", "created", "lastUpdated"}),
}

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
FORMATS: dict[str, tuple[Callable[[str], bool], str]] = {
    "email": (lambda v: bool(_EMAIL.match(v)), "is not an email address"),
}



def _load_schema(name: str) -> dict[str, Any]:
    with open(os.path.join(SCHEMA_DIR, "khoros", name), encoding="utf-8") as handle:
        schema: dict[str, Any] = json.load(handle)
    return schema


@dataclass(frozen=True)
class Field:
    """One field of a Khoros object as the mapping declares it."""

    name: str
    label: str
    type: str
    searchable: bool = False
    required: bool = False
    readonly: bool = False
    list_values: tuple[tuple[str, str], ...] = ()
    max_length: int | None = None
    pattern: re.Pattern[str] | None = None
    format: str | None = None

    def to_meta(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "label": self.label, "type": self.type,
                               "searchable": self.searchable}
        if self.type == "single_sel_list":
            out["listValues"] = [{"name": n, "value": v} for n, v in self.list_values]
        return out

    def problem_with(self, value: Any) -> str | None:
        """What is wrong with ``value`` for this field, or None. Never echoes the value."""
        python_type, wording = FIELD_TYPES[self.type]
        if not isinstance(value, python_type):
            return f"must be {wording}"
        if self.type == "single_sel_list":
            allowed = [v for _, v in self.list_values]
            if value not in allowed:
                return "must be one of: " + ", ".join(allowed)
        if isinstance(value, str):
            if self.max_length is not None and len(value) > self.max_length:
                return f"must be at most {self.max_length} characters (got {len(value)})"
            if self.format and not FORMATS[self.format][0](value):
                return FORMATS[self.format][1]
            if self.pattern is not None and not self.pattern.search(value):
                return "is not in the expected format"
        return None


@dataclass
class ObjectModel:
    """The fields of one Khoros object (customer or case)."""

    kind: str
    fields: list[Field]
    by_name: dict[str, Field] = field(init=False)

    def __post_init__(self) -> None:
        self.by_name = {f.name: f for f in self.fields}

    def meta(self) -> dict[str, Any]:
        declared = [f.to_meta() for f in self.fields]
        names = {f["name"] for f in declared}
        missing = [dict(f) for f in IDENTITY_FIELDS[self.kind] if f["name"] not in names]
        return {"name": self.kind, "fields": missing + declared}

    # -- inbound checks ---------------------------------------------------

    def _reject_unknown(self, body: dict[str, Any], allowed: set[str]) -> None:
        unknown = sorted(k for k in body if k not in allowed)
        if unknown:
            listed = unknown_keys_phrase(unknown)
            raise BadRequest(
                f"Unknown {self.kind} field{'s' if len(unknown) > 1 else ''} {listed}: "
                f"this CRM's {self.kind} fields are listed at /meta/object/{self.kind}.")

    def check_search(self, body: dict[str, Any]) -> dict[str, Any]:
        """A search body: known fields of the right type. Empty values are dropped."""
        self._reject_unknown(body, set(self.by_name) | IGNORED_ON_WRITE[self.kind])
        clean = {}
        for name, value in body.items():
            if value is None or value == "" or name in IGNORED_ON_WRITE[self.kind]:
                continue
            problem = self.by_name[name].problem_with(value)
            if problem:
                raise BadRequest(f"Search field '{name}' {problem}.")
            clean[name] = value
        return clean

    def check_write(self, body: dict[str, Any], creating: bool,
                    extra: dict[str, Callable[[Any], list[FieldError]]] | None = None) -> dict[str, Any]:
        """A create or update body; ``extra`` checks non-model keys (customerId, interactions)."""
        extra = extra or {}
        ignored = IGNORED_ON_WRITE[self.kind] - set(self.by_name)
        self._reject_unknown(body, set(self.by_name) | set(extra) | ignored)
        errors: list[FieldError] = []
        clean: dict[str, Any] = {}
        for name, value in body.items():
            if name in ignored:
                continue
            if name in extra:
                errors.extend(extra[name](value))
                clean[name] = value
                continue
            model_field = self.by_name[name]
            if model_field.readonly:
                errors.append(FieldError(name, "is read-only in this CRM"))
                continue
            if value is None or value == "":
                if creating:
                    continue  # absent on create
                if model_field.required:
                    errors.append(FieldError(name, "is required and cannot be emptied"))
                    continue
                clean[name] = None  # an update that clears the field
                continue
            problem = model_field.problem_with(value)
            if problem:
                errors.append(FieldError(name, problem))
            else:
                clean[name] = value
        if creating:
            for model_field in self.fields:
                if model_field.required and model_field.name not in clean:
                    errors.append(FieldError(model_field.name, "is required"))
            for name, checker in extra.items():
                if name not in body:
                    errors.extend(checker(_MISSING))
        if errors:
            names = ", ".join(dict.fromkeys(e.name for e in errors))
            raise ValidationFailed(f"The {self.kind} was not saved: check {names}.", errors)
        return clean


class _Missing:
    """Marks a key that was not in the body at all (for ``extra`` checkers)."""


_MISSING = _Missing()


def is_missing(value: Any) -> bool:
    return isinstance(value, _Missing)


def _schema_errors(validator: jsonschema.Draft202012Validator, value: Any, prefix: str) -> list[FieldError]:
    if validator.is_valid(value):  # the common case, and much cheaper than collecting errors
        return []
    out = []
    for error in sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path)):
        where = prefix + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
        if error.validator == "required":
            missing = error.message.split("'")[1] if "'" in error.message else ""
            out.append(FieldError(f"{where}.{missing}" if missing else where, "is required"))
        elif error.validator == "additionalProperties":
            unknown = sorted(set(error.instance) - set(error.schema.get("properties", {})))
            out.append(FieldError(where, "has a key Khoros does not define: " + unknown_keys_phrase(unknown)))
        elif error.validator == "type":
            out.append(FieldError(where, f"must be of type {error.validator_value}"))
        else:
            out.append(FieldError(where, "is not valid here"))
    return out


INTERACTIONS_SCHEMA = _load_schema("interactions.schema.json")
BESTMATCH_SCHEMA = _load_schema("bestmatch.schema.json")
# Built once: a validator compiles its schema's references and keywords when it is made.
_INTERACTIONS = jsonschema.Draft202012Validator(INTERACTIONS_SCHEMA)
_BESTMATCH = jsonschema.Draft202012Validator(BESTMATCH_SCHEMA)


_INTERACTION_TEXT = {"created": 1, "body": 0, "linkUrl": 0, "serviceId": 0, "service": 1, "contentType": 0}
_AUTHOR_TYPES = {"service": str, "serviceId": str, "handle": str, "name": str, "brandOwned": bool}


def _interactions_valid(value: Any) -> bool:
    """What the interactions schema accepts, checked directly: True only if it is valid.
    (jsonschema takes about a tenth of a millisecond per interaction; this a microsecond.)"""
    if type(value) is not list:
        return False
    for item in value:
        if type(item) is not dict or len(item) < len(_INTERACTION_TEXT):
            return False
        for key, shortest in _INTERACTION_TEXT.items():
            text = item.get(key)
            if type(text) is not str or len(text) < shortest:
                return False
        author = item.get("author", _MISSING)
        if len(item) != len(_INTERACTION_TEXT) + (author is not _MISSING):
            return False  # a key the schema does not allow
        if author is not _MISSING:
            if type(author) is not dict:
                return False
            for key, kind in author.items():
                if _AUTHOR_TYPES.get(key) is not type(kind):
                    return False
    return True


def check_interactions(value: Any) -> list[FieldError]:
    """Khoros interactions on a case write: every one must be complete, or nothing is saved."""
    if is_missing(value) or value is None or _interactions_valid(value):
        return []
    return _schema_errors(_INTERACTIONS, value, "interactions")


def check_customer_id(value: Any) -> list[FieldError]:
    if is_missing(value) or value is None or value == "":
        return [FieldError("customerId", "is required: the case must belong to a customer")]
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        return [FieldError("customerId", "must be the customer's id as a string")]
    return []


def check_bestmatch(body: dict[str, Any]) -> dict[str, Any]:
    """The best-match body has a fixed Khoros shape; anything else is a 400."""
    errors = _schema_errors(_BESTMATCH, body, "")
    if errors:
        first = errors[0]
        raise BadRequest(f"Best-match field '{first.name.lstrip('.') or 'body'}' {first.error_message}.")
    return {k: v for k, v in body.items() if v not in (None, "", [])}
