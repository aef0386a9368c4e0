"""``mapper init``: a starting mapping from a CRM's OpenAPI description.

The integrator names three resources of the CRM by their collection path:
the one Khoros calls customers (``/persons``), the one it calls cases
(``/deals``) and, optionally, the one that keeps a case's interactions as
notes (``/notes``). The description may come in several files (a CRM may
keep notes in its v1 description and persons in v2); paths are joined to
their file's server URL, and the mapping's base URL is the origin they share.

From each resource's schemas this writes the data model (the properties a
create accepts: strings, numbers, enums, booleans, and lists of
``{value: ...}`` such as a list of ``emails``), the CRUD requests, the
shapes, and the links between resources it can recognise (a case's
``person_id``, a note's ``deal_id``). Whatever it cannot know is a string
starting with ``TODO``: ``mapper validate`` refuses a mapping that still has
one and names its line, so the integrator fills them one by one.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import yaml

from ..core.source import YAML_LOADER

CREATED_NAMES = ("add_time", "created_at", "createdAt", "created", "create_time", "creation_date", "created_time")
UPDATED_NAMES = ("update_time", "updated_at", "updatedAt", "updated", "last_modified", "modified_at")


class ScaffoldError(Exception):
    """The description does not have what ``mapper init`` needs; the message says what."""


@dataclass
class Spec:
    """One OpenAPI file: its paths and how to resolve ``$ref``."""

    file: str
    data: dict[str, Any]
    origin: str
    prefix: str

    @classmethod
    def load(cls, path: str) -> Spec:
        with open(path, encoding="utf-8") as handle:
            data = yaml.load(handle, Loader=YAML_LOADER)  # noqa: S506 (a safe loader: libyaml's or PyYAML's)
        if not isinstance(data, dict) or "paths" not in data:
            raise ScaffoldError(f"{path} is not an OpenAPI description (it has no 'paths').")
        server = ((data.get("servers") or [{}])[0] or {}).get("url", "")
        parts = urlsplit(server)
        origin = f"{parts.scheme}://{parts.netloc}" if parts.netloc else ""
        return cls(path, data, origin, parts.path.rstrip("/"))

    def resolve(self, schema: Any, depth: int = 0) -> dict[str, Any]:
        """The schema with ``$ref`` followed and ``allOf`` merged (properties and required)."""
        if not isinstance(schema, dict) or depth > 20:
            return {}
        if "$ref" in schema:
            node: Any = self.data
            for part in schema["$ref"].lstrip("#/").split("/"):
                node = node.get(part, {}) if isinstance(node, dict) else {}
            return self.resolve(node, depth + 1)
        if "allOf" in schema:
            merged: dict[str, Any] = {"type": "object", "properties": {}, "required": []}
            for part in schema["allOf"]:
                sub = self.resolve(part, depth + 1)
                merged["properties"].update(sub.get("properties", {}))
                merged["required"] += sub.get("required", [])
            return merged
        return schema

    def properties(self, schema: Any) -> dict[str, dict[str, Any]]:
        resolved = self.resolve(schema)
        return {name: self.resolve(prop) for name, prop in (resolved.get("properties") or {}).items()}


@dataclass
class Resource:
    """One CRM resource (a collection and its items) as the description shows it."""

    role: str
    spec: Spec
    collection: str
    item: str | None
    id_param: str
    create: dict[str, dict[str, Any]] = field(default_factory=dict)
    required: list[str] = field(default_factory=list)
    record: dict[str, dict[str, Any]] = field(default_factory=dict)
    envelope: str = "$"  # JSONPath of one record in an item answer
    list_envelope: str = "$[*]"
    list_params: list[str] = field(default_factory=list)
    update_method: str | None = None
    search: str | None = None
    search_items: str = "$[*]"

    @property
    def singular(self) -> str:
        name = self.collection.rstrip("/").rsplit("/", 1)[-1]
        return name[:-1] if name.endswith("s") else name

    def path(self, suffix: str = "") -> str:
        return self.spec.prefix + self.collection + suffix


def _operation(spec: Spec, path: str, method: str) -> dict[str, Any] | None:
    item = spec.data["paths"].get(path) or {}
    op = item.get(method)
    return op if isinstance(op, dict) else None


def _json_schema(spec: Spec, holder: Any) -> dict[str, Any]:
    content = (holder or {}).get("content") or {}
    for kind, media in content.items():
        if "json" in kind:
            return spec.resolve((media or {}).get("schema"))
    return {}


def _success(spec: Spec, op: dict[str, Any] | None) -> dict[str, Any]:
    if not op:
        return {}
    for status in ("200", "201", 200, 201):
        answer = (op.get("responses") or {}).get(status)
        if answer:
            return _json_schema(spec, spec.resolve(answer))
    return {}


def _unwrap(spec: Spec, schema: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The record schema inside an answer, and its JSONPath: ``{"data": {...}}`` is common."""
    props = spec.properties(schema)
    if "id" not in props:
        for key in ("data", "result", "record", "item"):
            inner = props.get(key)
            if inner and (inner.get("type") == "object" or "properties" in inner):
                return spec.resolve(inner), f"$.{key}"
    return schema, "$"


def _unwrap_list(spec: Spec, schema: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The item schema of a list answer and the JSONPath of its items."""
    if schema.get("type") == "array":
        return spec.resolve(schema.get("items")), "$[*]"
    for key, prop in spec.properties(schema).items():
        if prop.get("type") == "array":
            return spec.resolve(prop.get("items")), f"$.{key}[*]"
        if prop.get("type") == "object" or "properties" in prop:
            for inner_key, inner in spec.properties(prop).items():
                if inner.get("type") == "array":
                    items = spec.resolve(inner.get("items"))
                    item_props = spec.properties(items)
                    if "id" not in item_props and "item" in item_props:
                        return spec.resolve(item_props["item"]), f"$.{key}.{inner_key}[*].item"
                    return items, f"$.{key}.{inner_key}[*]"
    return {}, "$[*]"


def find_resource(specs: list[Spec], role: str, name: str) -> Resource:
    """The resource whose collection path is ``name`` (``/persons`` or ``persons``) in any file."""
    wanted = "/" + name.strip("/")
    for spec in specs:
        paths = spec.data["paths"]
        if wanted not in paths:
            continue
        item = next((p for p in paths if re.fullmatch(re.escape(wanted) + r"/\{[^/}]+\}", p)), None)
        resource = Resource(role, spec, wanted, item, item.rsplit("{", 1)[1].rstrip("}") if item else "id")
        create = _operation(spec, wanted, "post")
        if create:
            body = _json_schema(spec, spec.resolve(create.get("requestBody")))
            resource.create = spec.properties(body)
            resource.required = list(body.get("required") or [])
        lister = _operation(spec, wanted, "get")
        if lister:
            resource.list_params = [spec.resolve(p).get("name", "") for p in lister.get("parameters") or []]
            list_record, resource.list_envelope = _unwrap_list(spec, _success(spec, lister))
            resource.record = spec.properties(list_record)
        if item:
            record, resource.envelope = _unwrap(spec, _success(spec, _operation(spec, item, "get")))
            resource.record = spec.properties(record) or resource.record
            resource.update_method = "PATCH" if _operation(spec, item, "patch") else \
                "PUT" if _operation(spec, item, "put") else None
        searcher = _operation(spec, wanted + "/search", "get")
        if searcher:
            params = [spec.resolve(p).get("name") for p in searcher.get("parameters") or []]
            if "term" in params:
                resource.search = wanted + "/search"
                _, resource.search_items = _unwrap_list(spec, _success(spec, searcher))
        return resource
    known = sorted({p.split("/")[1] for s in specs for p in s.data["paths"] if p.count("/") == 1})
    raise ScaffoldError(f"No collection {wanted} for the {role} in the description; collections with a "
                        f"path of their own: {', '.join('/' + k for k in known[:40])}")


def collections(specs: list[Spec]) -> list[str]:
    """Collections that can be created and read one by one: candidates for the prompts."""
    found = []
    for spec in specs:
        paths = spec.data["paths"]
        for path, item in paths.items():
            if path.count("/") == 1 and isinstance(item, dict) and "post" in item and \
                    any(re.fullmatch(re.escape(path) + r"/\{[^/}]+\}", p) for p in paths):
                found.append(path)
    return sorted(set(found))


# --- writing the mapping --------------------------------------------------------------------

def camel(name: str) -> str:
    head, *rest = re.split(r"[_\W]+", name)
    return head + "".join(part[:1].upper() + part[1:] for part in rest if part)


@dataclass
class ModelField:
    khoros: str
    crm: str
    kind: str  # text | single_sel_list | checkbox | list-of-values
    label: str
    required: bool
    values: list[Any]
    integer: bool = False


def _fields(resource: Resource, skip: set[str]) -> tuple[list[ModelField], list[str]]:
    fields, skipped = [], []
    for name, prop in resource.create.items():
        if name in skip or name == "id" or name.endswith(("_id", "_ids", "Id", "Ids")) or name.startswith("is_") \
                or name in CREATED_NAMES + UPDATED_NAMES or name.endswith("_time") or prop.get("readOnly"):
            skipped.append(name)
            continue
        kind = prop.get("type")
        label = name.replace("_", " ").strip().capitalize()
        required = name in resource.required
        if prop.get("enum"):
            fields.append(ModelField(camel(name), name, "single_sel_list", label, required,
                                     [v for v in prop["enum"] if v is not None]))
        elif kind == "boolean":
            fields.append(ModelField(camel(name), name, "checkbox", label, required, []))
        elif kind in ("string", "integer", "number"):
            fields.append(ModelField(camel(name), name, "text", label, required, [], kind == "integer"))
        elif kind == "array" and "value" in resource.spec.properties(prop.get("items")):
            single = name[:-1] if name.endswith("s") else name
            fields.append(ModelField(camel(single), name, "list-of-values", single.capitalize(), required, []))
        else:
            skipped.append(name)
    return fields, skipped


def _model_entry(f: ModelField, searchable: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": f.khoros, "label": f.label,
                             "type": "text" if f.kind == "list-of-values" else f.kind}
    if searchable and entry["type"] == "text":
        entry["searchable"] = True
    if f.required:
        entry["required"] = True
    if f.kind == "single_sel_list":
        entry["listValues"] = [{"name": str(v).replace("_", " ").capitalize(), "value": str(v)} for v in f.values]
    return entry


def tpl(expression: str) -> str:
    """``{{ expression }}``, without doubling every brace in an f-string."""
    return "{{ " + expression + " }}"


def _write_value(f: ModelField) -> str:
    given = f"body.{f.khoros}"
    if f.kind == "list-of-values":
        return tpl(f"[{{'value': {given}, 'primary': true}}] if {given} is defined else omit")
    if f.integer:
        return tpl(f"{given} | int if {given} is defined else omit")
    return tpl(f"{given} | default(omit)")


def _read_value(f: ModelField) -> str:
    stored = f"record.get('{f.crm}')"
    if f.kind == "list-of-values":
        return tpl(f"(({stored} or [{{}}])[0] or {{}}).get('value')")
    if f.integer:
        return tpl(f"{stored} | string if {stored} is not none else none")
    return tpl(stored)


def _first_present(names: tuple[str, ...], props: dict[str, Any]) -> str | None:
    return next((n for n in names if n in props), None)


def _link(resource: Resource, other: Resource) -> str | None:
    """The property of ``resource`` that holds the id of an ``other`` (``person_id``)."""
    for name in (f"{other.singular}_id", f"{other.singular}Id", other.singular):
        if name in resource.create or name in resource.record or name in resource.list_params:
            return name
    return None


def build_mapping(specs: list[Spec], customer: Resource, case: Resource, note: Resource | None,
                  name: str) -> tuple[dict[str, Any], list[str]]:
    """The mapping as data, and the comments to print above it."""
    origins = {s.origin for s in specs if s.origin}
    origin = sorted(origins)[0] if origins else "TODO: the CRM's base URL, e.g. https://api.example.com"
    env = re.sub(r"\W+", "_", name).upper().strip("_") or "CRM"
    notes: list[str] = []

    customer_fields, customer_skipped = _fields(customer, set())
    case_link = _link(case, customer)
    case_fields, case_skipped = _fields(case, {case_link or "", "status"})
    if customer_skipped:
        notes.append(f"Left out of the customer model (ids, dates, nested objects): {', '.join(customer_skipped)}.")
    if case_skipped:
        notes.append(f"Left out of the case model: {', '.join(case_skipped)}.")

    sources = ", ".join(os.path.basename(s.file) for s in specs)
    mapping: dict[str, Any] = {"name": name, "description": f"Started by mapper init from {sources}."}
    mapping["settings"] = {"base_url": {"env": f"{env}_URL", "default": origin}}
    secrets, auth = _auth(specs, env)
    if secrets:
        mapping["secrets"] = secrets
    mapping["connection"] = {"base_url": "{{ settings.base_url }}", "headers": {"Accept": "application/json"},
                             "auth": auth, "timeout": 5}
    mapping["errors"] = [{"status": 404, "error": "not_found", "message": f"{name} has no such record"}]
    mapping["model"] = {
        "customer": {"fields": [_model_entry(f, True) for f in customer_fields]},
        "case": {"fields": [{"name": "status", "label": "Status", "type": "single_sel_list",
                             "listValues": [{"name": "Open", "value": "open"}, {"name": "Closed", "value": "closed"}]}]
                 + [_model_entry(f, False) for f in case_fields]},
    }
    if not any(f.khoros == "title" for f in case_fields):
        notes.append("The case model has no 'title'; Khoros shows one: add it if the CRM has a subject.")

    created = _first_present(CREATED_NAMES, case.record)
    updated = _first_present(UPDATED_NAMES, case.record)
    customer_shape: dict[str, Any] = {
        "id": "{{ record.id | string }}",
        "uri": f"TODO: the link to this customer in {name}'s web app, "
               "e.g. https://example.com/person/{{ record.id }}"}
    customer_shape.update({f.khoros: _read_value(f) for f in customer_fields})
    case_shape: dict[str, Any] = {
        "id": "{{ record.id | string }}",
        "customerId": tpl(f"record.get('{case_link}') | string") if case_link
        else "TODO: the customer id of this case, e.g. {{ record.customer_id | string }}",
        "linkUrl": f"TODO: the link to this case in {name}'s web app, "
                   "e.g. https://example.com/deal/{{ record.id }}",
        "created": tpl(f"record.{created} | isodate") if created
        else "TODO: when the case was created, e.g. {{ record.created_at | isodate }}",
        "lastUpdated": tpl(f"record.get('{updated}') | isodate") if updated else "{{ none }}",
        "status": "TODO: 'open' or 'closed' from the CRM's record, "
                  "e.g. {{ 'closed' if record.status in ['won', 'lost'] else 'open' }}",
    }
    case_shape.update({f.khoros: _read_value(f) for f in case_fields})
    mapping["shapes"] = {"customer": customer_shape, "case": case_shape}

    mapping["operations"] = _operations(name, customer, case, note, customer_fields, case_fields, case_link,
                                        case_shape, notes)
    return mapping, notes


def _auth(specs: list[Spec], env: str) -> tuple[dict[str, Any], dict[str, Any]]:
    schemes: dict[str, Any] = {}
    for spec in specs:
        schemes.update(((spec.data.get("components") or {}).get("securitySchemes")) or {})
    for scheme in schemes.values():
        if scheme.get("type") == "apiKey" and scheme.get("in") in ("header", "query"):
            return ({"api_token": {"env": f"{env}_API_TOKEN"}},
                    {"type": scheme["in"], "name": scheme["name"], "value": "{{ secrets.api_token }}"})
    for scheme in schemes.values():
        if scheme.get("type") == "http" and scheme.get("scheme") == "bearer":
            return {"api_token": {"env": f"{env}_API_TOKEN"}}, {"type": "bearer", "token": "{{ secrets.api_token }}"}
    for scheme in schemes.values():
        if scheme.get("type") == "http" and scheme.get("scheme") == "basic":
            return ({"username": {"env": f"{env}_USERNAME"}, "password": {"env": f"{env}_PASSWORD"}},
                    {"type": "basic", "username": "{{ secrets.username }}", "password": "{{ secrets.password }}"})
    return {}, {"type": "none"}


def _body(fields: list[ModelField], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    body = {f.crm: _write_value(f) for f in fields}
    body.update(extra or {})
    return body


def _operations(name: str, customer: Resource, case: Resource, note: Resource | None,
                customer_fields: list[ModelField], case_fields: list[ModelField], case_link: str | None,
                case_shape: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    ops: dict[str, Any] = {}
    not_found = [{"status": 404, "error": "not_found", "message": f"No customer {{{{ id }}}} in {name}"}]
    case_not_found = [{"status": 404, "error": "not_found", "message": f"No case {{{{ id }}}} in {name}"}]
    item = customer.path("/{{ id }}")
    ops["get_customer"] = {"steps": [{"name": "read the customer", "request": {"method": "GET", "path": item},
                                      "errors": not_found, "extract": {"customer": customer.envelope}}],
                           "result": "{{ customer }}"}
    if customer.search:
        ops["search_customers"] = {
            "description": "The CRM's search is fuzzy: the result keeps exact matches only.",
            "steps": [{"set": {"found": []}},
                      {"name": "search", "when": "{{ body }}",
                       "request": {"method": "GET", "path": customer.spec.prefix + customer.search,
                                   "query": {"term": "{{ body.values() | first }}", "limit": 50}},
                       "extract": {"found": {"path": customer.search_items, "many": True}}}],
            "result": "{{ found | match_all(body | rename_keys(%r)) if body else [] }}"
                      % {f.khoros: f.crm for f in customer_fields if f.khoros != f.crm and f.kind != "list-of-values"}}
        strategies = []
        email = next((f for f in customer_fields if f.khoros == "email"), None)
        if email is not None:
            strategies.append({"name": "by email", "when": "{{ body.email is defined }}", "steps": [
                {"request": {"method": "GET", "path": customer.spec.prefix + customer.search,
                             "query": {"term": "{{ body.email }}", "fields": "email", "exact_match": True}},
                 "extract": {"matches": {"path": customer.search_items, "many": True}}}]})
        strategies.append({"name": "by name", "when": "{{ body.displayName is defined }}", "steps": [
            {"request": {"method": "GET", "path": customer.spec.prefix + customer.search,
                         "query": {"term": "{{ body.displayName }}", "exact_match": True}},
             "extract": {"matches": {"path": customer.search_items, "many": True}}}]})
        ops["best_match"] = {"steps": [{"set": {"matches": []}},
                                       {"name": "best match", "first": strategies,
                                        "until": "{{ matches | length > 0 }}"}],
                             "result": "{{ matches }}"}
        notes.append("best_match tries email then name; add phone and handle strategies if the CRM keeps them.")
    else:
        ops["search_customers"] = {"unsupported": "TODO: map the CRM's search, or say why it has none"}
        ops["best_match"] = {"unsupported": "TODO: map best match (a 'first' with strategies), or say why not"}
    if case_link and case_link in case.list_params:
        ops["customer_cases"] = {"steps": [
            {"name": "the customer exists", "request": {"method": "GET", "path": item}, "errors": not_found},
            {"name": "the customer's cases", "request": {"method": "GET", "path": case.path(),
                                                         "query": {case_link: "{{ id }}"}},
             "extract": {"cases": {"path": case.list_envelope, "many": True}}}], "result": "{{ cases }}"}
    else:
        ops["customer_cases"] = {"unsupported": "TODO: list a customer's cases, or say why the CRM cannot"}
    ops["create_customer"] = {"steps": [{"name": "create the customer", "request": {
        "method": "POST", "path": customer.path(), "body": _body(customer_fields)},
        "extract": {"customer": customer.envelope}}], "result": "{{ customer }}"}
    if customer.update_method:
        ops["update_customer"] = {"steps": [{"name": "update the customer", "request": {
            "method": customer.update_method, "path": item, "body": _body(customer_fields)},
            "errors": not_found, "extract": {"customer": customer.envelope}}], "result": "{{ customer }}"}
    else:
        ops["update_customer"] = {"unsupported": "TODO: the description has no update of a customer"}

    case_item = case.path("/{{ id }}")
    status_value = "TODO: the CRM's status for Khoros's open or closed, e.g. {{ {'open': 'open', " \
                   "'closed': 'won'}[body.status] if body.status is defined else omit }}"
    link_value = {case_link: "{{ body.customerId | int }}" if (case.create.get(case_link or "") or {}).get("type")
                  == "integer" else "{{ body.customerId }}"} if case_link else \
        {"TODO_customer": "TODO: the property that links a case to its customer"}
    note_steps: list[dict[str, Any]] = []
    read_notes: list[dict[str, Any]] = []
    result = "{{ case }}"
    if note is not None:
        content = next((n for n in note.required if (note.create.get(n) or {}).get("type") == "string"), None) \
            or next((n for n in ("content", "body", "text", "note") if n in note.create), None)
        note_link = _link(note, case)
        if content and note_link:
            integer = (note.create.get(note_link) or {}).get("type") == "integer"
            note_steps = [{"name": "keep the interactions as notes",
                           "for_each": "{{ body.interactions | default([]) }}", "as": "interaction",
                           "steps": [{"request": {"method": "POST", "path": note.path(), "body": {
                               content: "{{ interaction.body }}",
                               note_link: "{{ case.id | int }}" if integer else "{{ case.id }}"}}}]}]
            read_notes = [{"name": "read the notes", "request": {
                "method": "GET", "path": note.path(), "query": {note_link: "{{ case.id }}"}},
                "extract": {"notes": {"path": note.list_envelope, "many": True}}}]
            result = "{{ case | merge({'notes': notes}) }}"
            note_created = _first_present(CREATED_NAMES, note.record) or "add_time"
            case_shape["interactions"] = {"$map": "{{ record.notes | default(omit) }}", "$as": "note", "$to": {
                "created": tpl(f"note.{note_created} | isodate"), "body": tpl(f"note.{content}"),
                "linkUrl": "TODO: a link for the interaction, e.g. https://example.com/note/{{ note.id }}",
                "serviceId": "{{ note.id | string }}", "service": "crm", "contentType": "note"}}
        else:
            notes.append(f"Could not tell how a note names its text or its case ({note.collection}); "
                         "interactions are not kept.")
    ops["create_case"] = {"steps": [
        {"name": "create the case", "request": {"method": "POST", "path": case.path(), "body": _body(
            case_fields, {**link_value, "status": status_value})}, "extract": {"case": case.envelope}},
        *note_steps, *read_notes], "result": result}
    ops["get_case"] = {"steps": [
        {"name": "read the case", "request": {"method": "GET", "path": case_item}, "errors": case_not_found,
         "extract": {"case": case.envelope}}, *read_notes], "result": result}
    if case.update_method:
        integer_link = (case.create.get(case_link or "") or {}).get("type") == "integer"
        update_link = {case_link: "{{ body.customerId | int if body.customerId is defined else omit }}"
                       if integer_link else "{{ body.customerId | default(omit) }}"} if case_link else {}
        ops["update_case"] = {"steps": [
            {"name": "update the case", "request": {"method": case.update_method, "path": case_item, "body": _body(
                case_fields, {**update_link, "status": status_value})}, "errors": case_not_found,
             "extract": {"case": case.envelope}}, *note_steps, *read_notes], "result": result}
    else:
        ops["update_case"] = {"unsupported": "TODO: the description has no update of a case"}
    return ops


class _NoAliases(yaml.SafeDumper):
    """Writes a value used twice (the same error rules) out twice, not as ``&id001`` / ``*id001``."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def count_todos(value: Any) -> int:
    if isinstance(value, str):
        return int(value.startswith("TODO"))
    if isinstance(value, dict):
        return sum(count_todos(v) + int(str(k).startswith("TODO")) for k, v in value.items())
    if isinstance(value, list):
        return sum(count_todos(v) for v in value)
    return 0


def render(mapping: dict[str, Any], notes: list[str], sources: list[str]) -> str:
    """The mapping as YAML, with a header saying where it came from and what is left to do."""
    header = [f"# Started by `mapper init` from {', '.join(sources)}.",
              "# Fill every value that starts with TODO (`mapper validate` lists each with its line),",
              "# then try each operation against the CRM with `mapper run`.",
              *(f"# Note: {n}" for n in notes), ""]
    text = yaml.dump(mapping, Dumper=_NoAliases, sort_keys=False, allow_unicode=True, width=110)
    return "\n".join(header) + text
