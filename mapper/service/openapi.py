"""``GET /openapi.json``: the Khoros-facing API as this deployment serves it, in OpenAPI 3.1.

Nothing here is written by hand per CRM: the paths, methods and success
statuses come from the operation table (:mod:`mapper.core.khoros`), the
request and answer bodies from the mapping's own data model (its field
names, Khoros types, list values, required, read-only, length, pattern and
format), the best-match and interaction shapes from the Khoros request
schemas in ``schemas/khoros/``, and the bounds from the server's
:class:`~mapper.core.limits.Limits`. So the document says exactly what the
checks in :mod:`mapper.core.model` accept, and a tool that fuzzes the server
against it (the tests run schemathesis) holds the two together.

Error answers are listed per operation with the statuses this server can
give (the Khoros set, plus 413 for a body over the size limit); every one is
the Khoros error JSON. The document describes the data model the mapping
declares; a mapping with a live model (``model.<kind>.live``) may accept
more fields, as ``/meta/object/<kind>`` then shows.
"""

from __future__ import annotations

import copy
from typing import Any

from .. import __version__
from ..core.compiler import CompiledMapping
from ..core.khoros import CASE_STATUSES, META_TYPES, OPERATIONS, Operation
from ..core.limits import Limits
from ..core.model import (
    BESTMATCH_SCHEMA,
    IDENTITY_FIELDS,
    IGNORED_ON_WRITE,
    INTERACTIONS_SCHEMA,
    Field,
    ObjectModel,
)

PATH = "/openapi.json"
SERVER_PATH = "/api/v1"
SECURITY_SCHEME = "khorosSecret"
# Longest x-sf-* value described: Khoros sends emails and numeric ids; servers cut lines at ~8 kB.
TENANCY_HEADER_CHARS = 320

# Why each error status can leave an operation (every answer is the Khoros error JSON).
ERROR_STATUSES: dict[int, str] = {
    400: "Malformed JSON, an unknown field, a wrong shape or a bound exceeded (the message names it).",
    401: "Missing or wrong Authorization value, or no CRM configured for the x-sf-* headers.",
    404: "No such customer or case in the CRM, or no such path.",
    413: "The request body is larger than the server's limit (MAPPER_MAX_BODY_BYTES).",
    422: "Field values fail the data model or the CRM's own validation; `fields` names each.",
    500: "The CRM failed, timed out or answered something unusable, or the operation is not supported "
         "by this CRM; the message carries the trace id.",
}

TENANCY_HEADERS = (
    ("x-sf-user-email", "Email of the agent acting (create and update may send x-sf-email instead)."),
    ("x-sf-email", "Email of the agent acting, as some create and update calls name it."),
    ("x-sf-initiative", "Id of the agent's active initiative; with several tenants it selects the CRM."),
    ("x-sf-company-id", "Id of the Khoros company; with several tenants it selects the CRM."),
)


def document(mapping: CompiledMapping, limits: Limits) -> dict[str, Any]:
    """The OpenAPI 3.1 document for one compiled mapping (one tenant's) under ``limits``."""
    models = mapping.models
    paths: dict[str, dict[str, Any]] = {}
    meta_path = "/meta/object/{type}"
    paths[meta_path] = {"get": _meta_operation()}
    for op in OPERATIONS:
        path = op.rule.replace("<id>", "{id}")
        paths.setdefault(path, {})[op.method.lower()] = _operation(op, mapping.operations[op.name].unsupported,
                                                                    limits)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": f"{mapping.name}: Khoros Custom CRM API (crm-mapper)",
            "version": __version__,
            "description": "The Khoros Marketing Custom CRM API as this crm-mapper deployment serves it for "
                           f"the mapping '{mapping.name}'. Generated from the operation table and the "
                           "mapping's data model; every error is "
                           '`{"error": "...", "message": "... (trace <id>)"}`.',
        },
        "servers": [{"url": SERVER_PATH}],
        "security": [{SECURITY_SCHEME: []}],
        "paths": paths,
        "components": {
            "securitySchemes": {SECURITY_SCHEME: {
                "type": "apiKey", "in": "header", "name": "Authorization",
                "description": "The secret registered with Khoros (`authHeaderValue`), alone or after "
                               "`Bearer `; one of MAPPER_AUTH_TOKENS or the tenant's tokens."}},
            "schemas": {
                "Error": _error_schema(),
                "Meta": _meta_schema(),
                "Customer": _object_schema("customer", models["customer"]),
                "Case": _object_schema("case", models["case"]),
                "Interaction": _bounded(copy.deepcopy(INTERACTIONS_SCHEMA["items"]), limits),
                "CustomerSearch": _write_schema("customer", models["customer"], limits, mode="search"),
                "BestMatch": _bestmatch_schema(limits),
                "CustomerCreate": _write_schema("customer", models["customer"], limits, mode="create"),
                "CustomerUpdate": _write_schema("customer", models["customer"], limits, mode="update"),
                "CaseCreate": _write_schema("case", models["case"], limits, mode="create"),
                "CaseUpdate": _write_schema("case", models["case"], limits, mode="update"),
            },
        },
    }


# -- operations -------------------------------------------------------------------------------------

_BODY_SCHEMAS = {("search", "customer"): "CustomerSearch", ("bestmatch", "customer"): "BestMatch",
                 ("create", "customer"): "CustomerCreate", ("update", "customer"): "CustomerUpdate",
                 ("create", "case"): "CaseCreate", ("update", "case"): "CaseUpdate"}


def _operation(op: Operation, unsupported: str | None, limits: Limits) -> dict[str, Any]:
    answer: dict[str, Any] = {"$ref": f"#/components/schemas/{op.object_kind.capitalize()}"}
    if op.many:
        answer = {"type": "array", "items": answer}
    out: dict[str, Any] = {
        "operationId": op.name,
        "summary": op.summary,
        "parameters": _parameters(op, limits),
        "responses": {str(op.success): {"description": "Success.", "content": {"application/json": {
            "schema": answer}}}},
    }
    if unsupported:
        out["description"] = f"Not supported by this CRM ({unsupported}): always answers 500 not_supported."
    statuses = [400, 401, 404, 422, 500]
    if op.input != "none":
        out["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{_BODY_SCHEMAS[(op.input, op.object_kind)]}"}}}}
        statuses.append(413)
    out["responses"].update(_errors(sorted(statuses)))
    return out


def _meta_operation() -> dict[str, Any]:
    return {
        "operationId": "meta",
        "summary": "The fields of a customer or case, for Khoros's configuration page and forms.",
        "parameters": [{"name": "type", "in": "path", "required": True,
                        "schema": {"type": "string", "enum": list(META_TYPES)}},
                       *_tenancy_parameters()],
        "responses": {"200": {"description": "The data model.", "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/Meta"}}}},
            **_errors([400, 401, 404, 422, 500])},
    }


def _parameters(op: Operation, limits: Limits) -> list[dict[str, Any]]:
    out = []
    if op.has_id:
        out.append({"name": "id", "in": "path", "required": True, "description": f"The CRM's {op.id_kind} id.",
                    "schema": {"type": "string", "minLength": 1, "maxLength": limits.id_chars}})
    return out + _tenancy_parameters()


def _tenancy_parameters() -> list[dict[str, Any]]:
    return [{"name": name, "in": "header", "required": False, "description": text,
             "schema": {"type": "string", "maxLength": TENANCY_HEADER_CHARS}} for name, text in TENANCY_HEADERS]


def _errors(statuses: list[int]) -> dict[str, Any]:
    return {str(s): {"description": ERROR_STATUSES[s], "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/Error"}}}} for s in statuses}


# -- schemas ----------------------------------------------------------------------------------------

def _error_schema() -> dict[str, Any]:
    return {"type": "object", "required": ["error", "message"], "properties": {
        "error": {"type": "string", "description": "A Khoros error code such as not_found."},
        "message": {"type": "string", "description": "For the agent; ends with (trace <id>)."},
        "fields": {"type": "array", "items": {"type": "object", "required": ["name", "errorMessage"],
                                              "properties": {"name": {"type": "string"},
                                                             "errorMessage": {"type": "string"}}}}}}


def _meta_schema() -> dict[str, Any]:
    field = {"type": "object", "required": ["name", "label", "type", "searchable"], "properties": {
        "name": {"type": "string"}, "label": {"type": "string"},
        "type": {"enum": ["text", "textarea", "single_sel_list", "checkbox"]},
        "searchable": {"type": "boolean"},
        "listValues": {"type": "array", "items": {"type": "object", "required": ["name", "value"],
                                                  "properties": {"name": {"type": "string"},
                                                                 "value": {"type": "string"}}}}}}
    return {"type": "object", "required": ["name", "fields"],
            "properties": {"name": {"enum": list(META_TYPES)}, "fields": {"type": "array", "items": field}}}


def _value_schema(field: Field, limits: Limits | None) -> dict[str, Any]:
    """What a value of this field may be; with ``limits``, as a request may send it."""
    schema: dict[str, Any]
    if field.type == "checkbox":
        schema = {"type": "boolean"}
    elif field.type == "single_sel_list":
        schema = {"type": "string", "enum": [value for _, value in field.list_values]}
    else:
        schema = {"type": "string"}
        if limits is not None:
            longest = min(field.max_length or limits.string_chars, limits.string_chars)
            schema["maxLength"] = longest
            if field.format:
                schema["format"] = field.format
            if field.pattern is not None:
                schema["pattern"] = field.pattern.pattern
    schema["title"] = field.label
    return schema


def _object_schema(kind: str, model: ObjectModel) -> dict[str, Any]:
    """An answer object: the identity fields Khoros requires, the case's fixed ones, the model's."""
    properties: dict[str, Any] = {f["name"]: {"type": "string"} for f in IDENTITY_FIELDS[kind]}
    properties["url"] = {"type": "string", "description": "The same link as "
                         f"{'uri' if kind == 'customer' else 'linkUrl'}."}
    if kind == "case":
        properties.update({"number": {"type": "string"}, "customerId": {"type": "string"},
                           "lastUpdated": {"type": "string"}, "status": {"enum": list(CASE_STATUSES)},
                           "interactions": {"type": "array", "items": {"$ref": "#/components/schemas/Interaction"}}})
    for field in model.fields:
        if field.name not in properties:
            properties[field.name] = _value_schema(field, None)
    return {"type": "object", "required": [f["name"] for f in IDENTITY_FIELDS[kind]], "properties": properties}


def _write_schema(kind: str, model: ObjectModel, limits: Limits, mode: str) -> dict[str, Any]:
    """A search, create or update body, as :class:`~mapper.core.model.ObjectModel` checks it:
    the model's fields (empty values skip a field, or clear it on update), keys Khoros may
    echo back (ignored), and on a case the customer id and interactions."""
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name in sorted(IGNORED_ON_WRITE[kind] - set(model.by_name)):
        properties[name] = {"description": "Ignored: Khoros may echo it back, it is never written."}
    for field in model.fields:
        value = _value_schema(field, limits)
        if field.readonly:
            value["readOnly"] = True
        if field.required and mode == "create":
            required.append(field.name)
            if value.get("type") == "string" and "enum" not in value:
                value["minLength"] = 1
            properties[field.name] = value
        elif field.required and mode == "update":
            properties[field.name] = {**value, "minLength": 1} if value.get("type") == "string" else value
        else:  # empty: skipped on search and create, cleared on update
            properties[field.name] = {"anyOf": [value, {"const": ""}, {"type": "null"}]}
    if kind == "case" and mode != "search":
        customer_id: dict[str, Any] = {"anyOf": [{"type": "string", "minLength": 1, "maxLength": limits.string_chars},
                                                 {"type": "integer"}],
                                       "description": "The id of the customer the case belongs to."}
        if mode == "create":
            required.append("customerId")
        else:
            customer_id = {"anyOf": [customer_id, {"const": ""}, {"type": "null"}]}
        properties["customerId"] = customer_id
        properties["interactions"] = {"type": ["array", "null"], "maxItems": limits.interactions,
                                      "items": {"$ref": "#/components/schemas/Interaction"}}
    schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = required
    return schema


def _bestmatch_schema(limits: Limits) -> dict[str, Any]:
    schema = _bounded(copy.deepcopy(BESTMATCH_SCHEMA), limits)
    for key in ("$schema", "$id"):
        schema.pop(key, None)
    return schema


def _bounded(schema: dict[str, Any], limits: Limits) -> dict[str, Any]:
    """Add the server's bounds to a Khoros request schema: string length, list items."""
    kinds = schema.get("type")
    kinds = kinds if isinstance(kinds, list) else [kinds]
    if "string" in kinds:
        schema.setdefault("maxLength", limits.string_chars)
    if "array" in kinds:
        schema.setdefault("maxItems", limits.list_items)
    for child in (schema.get("properties") or {}).values():
        _bounded(child, limits)
    if isinstance(schema.get("items"), dict):
        _bounded(schema["items"], limits)
    return schema
