"""An in-memory imitation of the Dataverse Web API (Dynamics 365 Customer Service).

Built from Microsoft's Dataverse Web API reference (facts and sources in
``docs/vendors/dynamics-api.md``): OAuth 2.0 client credentials from
Microsoft Entra ID with the ``<org>/.default`` scope, ``/api/data/v9.2``
entity sets (``contacts``, ``incidents``, ``annotations``), creates answered
``204 No Content`` with the new address only in ``OData-EntityId`` (unless
``Prefer: return=representation``), PATCH that creates a record unless
``If-Match: *`` is sent, ``$filter`` with OData string literals (a ``'``
doubled), ``@odata.nextLink`` paging under ``Prefer: odata.maxpagesize``,
option sets with integer values and labels from ``EntityDefinitions``,
``statecode``/``statuscode`` and the ``CloseIncident`` action, the
``{"error": {"code", "message"}}`` envelope, and 429 with ``Retry-After``.

    DynamicsState      the organisation: records, tokens, parsed filters, faults
    parse_filter       the $filter parser (a documented subset)
    create_app(state)  the Flask app (token endpoint included)
"""

from __future__ import annotations

import hmac
import re
import secrets
import uuid
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import urlencode

from flask import Flask, Response, current_app, request

from tests.fakes.base import ApiError, FakeState, record_request, render

API = "/api/data/v9.2"
GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
LANG = 1033

# Option sets, as the metadata gives them: value -> label (statuscode options also carry their state).
PRIORITY = {1: "High", 2: "Normal", 3: "Low"}
ORIGIN = {1: "Phone", 2: "Email", 3: "Web", 2483: "Facebook", 3986: "Twitter"}
STATE = {0: "Active", 1: "Resolved", 2: "Cancelled"}
STATUS = {1: ("In Progress", 0), 2: ("On Hold", 0), 3: ("Waiting for Details", 0), 4: ("Researching", 0),
          5: ("Problem Solved", 1), 1000: ("Information Provided", 1), 6: ("Cancelled", 2), 2000: ("Merged", 2)}

# Entity sets: logical name, primary key, writable columns, lookups (navigation property -> (column, target set)).
ENTITIES: dict[str, dict[str, Any]] = {
    "contacts": {"name": "contact", "key": "contactid",
                 "columns": {"firstname", "lastname", "emailaddress1", "telephone1", "mobilephone", "jobtitle",
                             "description"},
                 "lookups": {}},
    "incidents": {"name": "incident", "key": "incidentid",
                  "columns": {"title", "description", "prioritycode", "caseorigincode", "statecode", "statuscode"},
                  "lookups": {"customerid_contact": ("_customerid_value", "contacts")}},
    "annotations": {"name": "annotation", "key": "annotationid",
                    "columns": {"subject", "notetext", "isdocument"},
                    "lookups": {"objectid_incident": ("_objectid_value", "incidents")}},
}
_OPTION_SETS = {("incidents", "prioritycode"): PRIORITY, ("incidents", "caseorigincode"): ORIGIN,
                ("incidents", "statecode"): STATE,
                ("incidents", "statuscode"): {k: v[0] for k, v in STATUS.items()}}


# ---------------------------------------------------------------- $filter


@dataclass(frozen=True)
class Comparison:
    prop: str
    op: str
    value: Any


class FilterError(ValueError):
    def __init__(self, message: str, position: int) -> None:
        super().__init__(f"Syntax error at position {position} in '$filter': {message}")


_TOKEN = re.compile(r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<guid>[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                    r"[0-9a-fA-F]{4}-[0-9a-fA-F]{12})|(?P<num>-?\d+(?:\.\d+)?)|(?P<word>[A-Za-z_][A-Za-z0-9_/]*)"
                    r"|(?P<punct>[(),]))")


def _tokens(text: str) -> list[tuple[str, Any, int]]:
    out, i = [], 0
    while i < len(text):
        if text[i:].strip() == "":
            break
        match = _TOKEN.match(text, i)
        if match is None:
            raise FilterError(f"unexpected character {text[i:].lstrip()[:1]!r}", i)
        kind = match.lastgroup or ""
        raw = match.group(kind)
        value: Any = raw
        if kind == "str":
            if raw.count("'") % 2:  # an odd number of quotes: one was not doubled
                raise FilterError("unterminated string literal", match.start(kind))
            value = raw[1:-1].replace("''", "'")
        elif kind == "num":
            value = float(raw) if "." in raw else int(raw)
        out.append((kind, value, match.start(kind)))
        i = match.end()
    return out


def parse_filter(text: str) -> Any:
    """``a eq 'x' and (b eq 1 or c ne null)`` and ``contains(a,'x')`` -> a tree of
    ("and"|"or", left, right), ``Comparison`` and ("contains", prop, value)."""
    tokens = _tokens(text)
    pos = 0

    def peek() -> tuple[str, Any, int] | None:
        return tokens[pos] if pos < len(tokens) else None

    def take() -> tuple[str, Any, int]:
        nonlocal pos
        if pos >= len(tokens):
            raise FilterError("unexpected end", len(text))
        pos += 1
        return tokens[pos - 1]

    def literal() -> Any:
        kind, value, where = take()
        if kind in ("str", "num", "guid"):
            return value
        if kind == "word" and value in ("null", "true", "false"):
            return {"null": None, "true": True, "false": False}[value]
        raise FilterError(f"expected a literal, found {value!r}", where)

    def factor() -> Any:
        kind, value, where = take()
        if (kind, value) == ("punct", "("):
            inner = expr()
            if take()[1] != ")":
                raise FilterError("expected ')'", where)
            return inner
        if kind == "word" and value in ("contains", "startswith"):
            if take()[1] != "(":
                raise FilterError("expected '('", where)
            prop = take()
            if take()[1] != ",":
                raise FilterError("expected ','", where)
            arg = literal()
            if take()[1] != ")":
                raise FilterError("expected ')'", where)
            return (value, prop[1], arg)
        if kind != "word":
            raise FilterError(f"expected a property, found {value!r}", where)
        op = take()
        if op[1] not in ("eq", "ne", "gt", "ge", "lt", "le"):
            raise FilterError(f"unknown operator {op[1]!r}", op[2])
        return Comparison(value, op[1], literal())

    def term() -> Any:
        left = factor()
        while (nxt := peek()) is not None and nxt[1] == "and":
            take()
            left = ("and", left, factor())
        return left

    def expr() -> Any:
        left = term()
        while (nxt := peek()) is not None and nxt[1] == "or":
            take()
            left = ("or", left, term())
        return left

    tree = expr()
    if pos != len(tokens):
        raise FilterError(f"unexpected {tokens[pos][1]!r}", tokens[pos][2])
    return tree


def comparisons(tree: Any) -> list[Any]:
    """The leaves of a parsed filter, left to right."""
    if isinstance(tree, tuple) and tree[0] in ("and", "or"):
        return comparisons(tree[1]) + comparisons(tree[2])
    return [tree]


def _holds(tree: Any, record: dict[str, Any]) -> bool:
    if isinstance(tree, tuple) and tree[0] == "and":
        return _holds(tree[1], record) and _holds(tree[2], record)
    if isinstance(tree, tuple) and tree[0] == "or":
        return _holds(tree[1], record) or _holds(tree[2], record)
    if isinstance(tree, tuple):
        stored = str(record.get(tree[1]) or "").lower()
        return stored.startswith(str(tree[2]).lower()) if tree[0] == "startswith" else str(tree[2]).lower() in stored
    stored, wanted = record.get(tree.prop), tree.value
    if isinstance(stored, str) and isinstance(wanted, str):  # Dataverse compares text without regard to case
        stored, wanted = stored.lower(), wanted.lower()
    if tree.op == "eq":
        return bool(stored == wanted)
    if tree.op == "ne":
        return bool(stored != wanted)
    raise FilterError(f"the fake does not implement {tree.op!r}", 0)


# ---------------------------------------------------------------- state


class DynamicsState(FakeState):
    """The fake organisation. ``tokens`` are the access tokens still valid; ``expire_tokens()``
    ends them all, as an hour passing would."""

    def __init__(self, *, tenant: str = "contoso-tenant", client_id: str = "dyn-client",
                 client_secret: str = "dyn-secret") -> None:
        super().__init__()
        self.tenant, self.client_id, self.client_secret = tenant, client_id, client_secret
        self.tokens: set[str] = set()
        self.token_requests: list[dict[str, str]] = []
        self.records: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in ENTITIES}
        self.filters: list[tuple[str, str, Any]] = []
        self.max_page_size = 5000
        self.labels: dict[tuple[str, str], dict[int, str]] = {k: dict(v) for k, v in _OPTION_SETS.items()}

    def expire_tokens(self) -> None:
        with self.lock:
            self.tokens.clear()

    def rate_limit_next(self, retry_after: int = 1, *, times: int = 1) -> None:
        """A service protection limit: 429 with ``Retry-After`` in seconds."""
        self.fail_next(429, {"error": {"code": "0x80072322", "message": "Number of requests exceeded the limit "
                                       "of 6000 over time window of 300 seconds."}},
                       {"Retry-After": str(retry_after)}, times=times)

    def insert(self, entity_set: str, values: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            spec = ENTITIES[entity_set]
            stamp = self.now()
            record: dict[str, Any] = {spec["key"]: str(uuid.uuid4()), "createdon": stamp, "modifiedon": stamp,
                                      "versionnumber": self.next_id()}
            for column in spec["columns"]:
                record[column] = None
            for column, _target in spec["lookups"].values():
                record[column] = None
            if entity_set == "incidents":
                record.update({"statecode": 0, "statuscode": 1, "prioritycode": 2, "caseorigincode": None,
                               "ticketnumber": f"CAS-{self.next_id():05d}-{secrets.token_hex(3).upper()}"})
            if entity_set == "contacts":
                record.update({"statecode": 0, "statuscode": 1})
            if entity_set == "annotations":
                record.update({"objecttypecode": "incident", "isdocument": False})
            record.update(values)
            if entity_set == "contacts":
                record["fullname"] = " ".join(p for p in (record["firstname"], record["lastname"]) if p)
            self.records[entity_set][record[spec["key"]]] = record
            return record

    def notes_of(self, incident_id: str) -> list[dict[str, Any]]:
        return [n for n in self.records["annotations"].values() if n["_objectid_value"] == incident_id]


# ---------------------------------------------------------------- helpers


def _state() -> DynamicsState:
    state: DynamicsState = current_app.extensions["dynamics_fake"]
    return state


def _error(status: int, code: str, message: str) -> NoReturn:
    raise ApiError(status, {"error": {"code": code, "message": message}})


def _missing(entity_set: str, key: str) -> NoReturn:
    _error(404, "0x80040217", f"{ENTITIES[entity_set]['name']} With Id = {key} Does Not Exist")


def _odata_url(path: str) -> str:
    return f"{request.host_url.rstrip('/')}{API}/{path}"


def _shape(entity_set: str, record: dict[str, Any]) -> dict[str, Any]:
    """A record as returned: ``$select`` honoured, etag and formatted values added."""
    select = request.args.get("$select")
    names = [n.strip() for n in select.split(",")] if select else list(record)
    unknown = [n for n in names if n not in record]
    if unknown:
        _error(400, "0x80060888", f"Could not find a property named '{unknown[0]}' on type "
                                  f"'Microsoft.Dynamics.CRM.{ENTITIES[entity_set]['name']}'.")
    out: dict[str, Any] = {"@odata.etag": f'W/"{record["versionnumber"]}"'}
    state = _state()
    for name in names:
        out[name] = record[name]
        labels = state.labels.get((entity_set, name))
        if labels is not None and record[name] is not None:
            out[f"{name}@OData.Community.Display.V1.FormattedValue"] = labels.get(record[name], str(record[name]))
    return out


def _body(entity_set: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The columns and the lookups (``nav@odata.bind``) of a create or update body."""
    payload = request.get_json(silent=True)
    if not isinstance(payload, dict):
        _error(400, "0x80048d19", "Error identified in Payload provided by the user for Entity :''")
    spec = ENTITIES[entity_set]
    columns, lookups = {}, {}
    for name, value in payload.items():
        if name.endswith("@odata.bind"):
            nav = name.removesuffix("@odata.bind")
            if nav not in spec["lookups"]:
                _error(400, "0x80060888", f"An undeclared property '{nav}' which only has property annotations "
                                          "in the payload but no property value was found in the payload.")
            column, target = spec["lookups"][nav]
            match = re.fullmatch(rf"/?{target}\(([0-9a-fA-F-]{{36}})\)", str(value))
            if match is None:
                _error(400, "0x80048d19", f"Error identified in Payload: the reference {value!r} is not "
                                          f"'/{target}(<guid>)'")
            if match.group(1) not in _state().records[target]:
                _missing(target, match.group(1))
            lookups[column] = match.group(1)
        elif name in spec["columns"]:
            columns[name] = value
        else:
            _error(400, "0x80060888", f"The property '{name}' does not exist on type "
                                      f"'Microsoft.Dynamics.CRM.{spec['name']}'. Make sure to only use property "
                                      "names that are defined by the type.")
    _check_options(entity_set, columns)
    return columns, lookups


def _check_options(entity_set: str, columns: dict[str, Any]) -> None:
    state = _state()
    for name, value in columns.items():
        labels = state.labels.get((entity_set, name))
        if labels is not None and value is not None and value not in labels:
            _error(400, "0x8004431a", f"A validation error occurred. The value {value} of '{name}' on record of "
                                      f"type '{ENTITIES[entity_set]['name']}' is outside the valid range. "
                                      f"Accepted Values: {','.join(str(v) for v in labels)}")


def _key(entity_set: str, key: str) -> str:
    if not GUID.match(key):
        _error(400, "0x80060888", f"Bad Request - Error in query syntax: '{key}' is not a valid key")
    return key.lower()


# ---------------------------------------------------------------- views


def token(tenant: str) -> Response:
    state = _state()
    form = request.form.to_dict()
    state.token_requests.append({k: v for k, v in form.items() if k != "client_secret"})
    if tenant != state.tenant:
        return render(400, {"error": "invalid_request", "error_description":
                            f"AADSTS90002: Tenant '{tenant}' not found."})
    if form.get("grant_type") != "client_credentials":
        return render(400, {"error": "unsupported_grant_type", "error_description": "AADSTS70003"})
    if form.get("client_id") != state.client_id or not hmac.compare_digest(
            form.get("client_secret", "").encode(), state.client_secret.encode()):
        return render(401, {"error": "invalid_client", "error_description":
                            "AADSTS7000215: Invalid client secret provided."})
    if form.get("scope") != f"{request.host_url.rstrip('/')}/.default":
        return render(400, {"error": "invalid_scope", "error_description":
                            f"AADSTS70011: The provided value for the input parameter 'scope' is not valid. "
                            f"The scope {form.get('scope')} is not valid."})
    issued = secrets.token_urlsafe(24)
    with state.lock:
        state.tokens.add(issued)
    return render(200, {"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599,
                        "access_token": issued})


def collection(entity_set: str) -> Response:
    state = _state()
    if entity_set not in ENTITIES:
        _error(404, "0x8006088a", f"Resource not found for the segment '{entity_set}'.")
    if request.method == "POST":
        columns, lookups = _body(entity_set)
        if entity_set == "contacts" and not columns.get("lastname"):
            _error(400, "0x80040203", "A validation error occurred. 'lastname' is required for contact.")
        record = state.insert(entity_set, {**columns, **lookups})
        location = _odata_url(f"{entity_set}({record[ENTITIES[entity_set]['key']]})")
        if "return=representation" in (request.headers.get("Prefer") or ""):
            return render(201, {"@odata.context": f"{_odata_url('$metadata')}#{entity_set}/$entity",
                                **_shape(entity_set, record)}, {"OData-EntityId": location})
        return render(204, None, {"OData-EntityId": location})
    text = request.args.get("$filter")
    try:
        tree = parse_filter(text) if text else None
    except FilterError as exc:
        _error(400, "0x80060888", str(exc))
    with state.lock:
        state.filters.append((entity_set, text or "", tree))
        found = [r for r in state.records[entity_set].values() if tree is None or _holds(tree, r)]
        order = request.args.get("$orderby")
        if order:
            name, _, direction = order.partition(" ")
            found.sort(key=lambda r: (str(r.get(name) or ""), r["versionnumber"]), reverse=direction == "desc")
        top = int(request.args.get("$top", len(found) or 1))
        found = found[:top]
        size = state.max_page_size
        prefer = re.search(r"odata\.maxpagesize=(\d+)", request.headers.get("Prefer") or "")
        if prefer:
            size = min(size, int(prefer.group(1)))
        skip = int(request.args.get("$skiptoken", "0"))
        page = found[skip:skip + size]
        body: dict[str, Any] = {"@odata.context": f"{_odata_url('$metadata')}#{entity_set}",
                                "value": [_shape(entity_set, r) for r in page]}
        if skip + size < len(found):
            args = {k: v for k, v in request.args.items() if k != "$skiptoken"}
            body["@odata.nextLink"] = f"{request.base_url}?{urlencode({**args, '$skiptoken': skip + size})}"
        return render(200, body)


def entity(entity_set: str, key: str) -> Response:
    state = _state()
    if entity_set not in ENTITIES:
        _error(404, "0x8006088a", f"Resource not found for the segment '{entity_set}'.")
    key = _key(entity_set, key)
    with state.lock:
        record = state.records[entity_set].get(key)
        if request.method == "GET":
            if record is None:
                _missing(entity_set, key)
            return render(200, {"@odata.context": f"{_odata_url('$metadata')}#{entity_set}/$entity",
                                **_shape(entity_set, record)})
        columns, lookups = _body(entity_set)
        if record is None:
            if request.headers.get("If-Match") == "*":
                _missing(entity_set, key)
            # Without If-Match, PATCH is an upsert: an unknown key creates the record.
            record = state.insert(entity_set, {ENTITIES[entity_set]["key"]: key, **columns, **lookups})
            return render(204, None, {"OData-EntityId": _odata_url(f"{entity_set}({key})")})
        if entity_set == "incidents" and columns.get("statecode") in (1,):
            _error(400, "0x80040203", "This message can not be used to set the state of incident to Resolved. "
                                      "In order to set state of incident to Resolved, use the CloseIncidentRequest "
                                      "message instead.")
        if entity_set == "incidents" and "statuscode" in columns:
            wanted = STATUS.get(columns["statuscode"])
            if wanted is not None and wanted[1] != columns.get("statecode", record["statecode"]):
                _error(400, "0x8004431a", f"{columns['statuscode']} is not a valid status code for state code "
                                          f"incident.StateCode {columns.get('statecode', record['statecode'])}")
        record.update(columns)
        record.update(lookups)
        if entity_set == "contacts":
            record["fullname"] = " ".join(p for p in (record["firstname"], record["lastname"]) if p)
        record["modifiedon"], record["versionnumber"] = state.now(), state.next_id()
        return render(204, None, {"OData-EntityId": _odata_url(f"{entity_set}({key})")})


def close_incident() -> Response:
    state = _state()
    payload = request.get_json(silent=True) or {}
    resolution = payload.get("IncidentResolution")
    status = payload.get("Status")
    if not isinstance(resolution, dict) or not isinstance(status, int):
        _error(400, "0x80040203", "IncidentResolution and Status are required.")
    bound = str(resolution.get("incidentid@odata.bind", ""))
    match = re.fullmatch(r"/?incidents\(([0-9a-fA-F-]{36})\)", bound)
    if match is None:
        _error(400, "0x80040203", "IncidentResolution.incidentid@odata.bind must be '/incidents(<guid>)'.")
    with state.lock:
        record = state.records["incidents"].get(match.group(1))
        if record is None:
            _missing("incidents", match.group(1))
        if STATUS.get(status, ("", -1))[1] != 1:
            _error(400, "0x8004431a", f"{status} is not a valid status code for state code incident.StateCode 1")
        if record["statecode"] != 0:
            _error(400, "0x80040203", "The incident is already resolved or cancelled.")
        record.update({"statecode": 1, "statuscode": status, "modifiedon": state.now(),
                       "versionnumber": state.next_id()})
        state.records.setdefault("incidentresolutions", {})[str(uuid.uuid4())] = {
            "subject": resolution.get("subject"), "incidentid": match.group(1)}
    return render(204, None)


def option_metadata(entity: str, kind: str) -> Response:
    """``EntityDefinitions(LogicalName='incident')/Attributes/Microsoft.Dynamics.CRM.<kind>``
    with ``$expand=OptionSet``: every attribute of that kind with its options and labels."""
    state = _state()
    entity_set = next((s for s, spec in ENTITIES.items() if spec["name"] == entity), None)
    if entity_set is None:
        _error(404, "0x80040217", f"Could not find entity with name '{entity}'.")
    wanted = {"PicklistAttributeMetadata": ("prioritycode", "caseorigincode"),
              "StateAttributeMetadata": ("statecode",), "StatusAttributeMetadata": ("statuscode",)}.get(kind)
    if wanted is None:
        _error(400, "0x80060888", f"Unknown type 'Microsoft.Dynamics.CRM.{kind}'.")
    if "OptionSet" not in (request.args.get("$expand") or ""):
        _error(400, "0x80060888", "This fake answers option sets only with $expand=OptionSet.")
    display = {"prioritycode": "Priority", "caseorigincode": "Origin", "statecode": "Status",
               "statuscode": "Status Reason"}
    value = []
    for name in wanted if entity_set == "incidents" else ():
        options = []
        for number, label in state.labels[(entity_set, name)].items():
            option: dict[str, Any] = {"Value": number, "Label": {
                "LocalizedLabels": [{"Label": label, "LanguageCode": LANG}],
                "UserLocalizedLabel": {"Label": label, "LanguageCode": LANG}}}
            if name == "statuscode":
                option["State"] = STATUS.get(number, ("", 0))[1]
            options.append(option)
        value.append({"LogicalName": name, "MetadataId": str(uuid.uuid5(uuid.NAMESPACE_URL, name)),
                      "DisplayName": {"UserLocalizedLabel": {"Label": display[name], "LanguageCode": LANG}},
                      "OptionSet": {"Options": options}})
    return render(200, {"@odata.context": f"{_odata_url('$metadata')}#EntityDefinitions('{entity}')/Attributes/"
                                          f"Microsoft.Dynamics.CRM.{kind}", "value": value})


def _before_request() -> Response | None:
    state = _state()
    record_request(state)
    if request.path.endswith("/oauth2/v2.0/token"):
        return None
    fault = state.take_fault()
    if fault is not None:
        return render(fault.status, fault.body, fault.headers)
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer ") or header[7:] not in state.tokens:
        return render(401, None, {"WWW-Authenticate": f'Bearer error="invalid_token", authorization_uri='
                                                      f'"https://login.microsoftonline.com/{state.tenant}/'
                                                      'oauth2/authorize"'})
    if request.method in ("POST", "PATCH") and not request.is_json:
        return render(415, {"error": {"code": "0x80040203", "message": "Content-Type must be application/json"}})
    return None


def create_app(state: DynamicsState | None = None) -> Flask:
    app = Flask(__name__)
    app.extensions["dynamics_fake"] = state if state is not None else DynamicsState()
    app.add_url_rule("/<tenant>/oauth2/v2.0/token", "token", token, methods=["POST"])
    app.add_url_rule(f"{API}/CloseIncident", "close", close_incident, methods=["POST"])
    app.add_url_rule(f"{API}/EntityDefinitions(LogicalName='<entity>')/Attributes/Microsoft.Dynamics.CRM.<kind>",
                     "options", option_metadata, methods=["GET"])
    app.add_url_rule(f"{API}/<entity_set>(<key>)", "entity", entity, methods=["GET", "PATCH"])
    app.add_url_rule(f"{API}/<entity_set>", "collection", collection, methods=["GET", "POST"])
    app.before_request(_before_request)
    app.register_error_handler(ApiError, lambda e: render(e.status, e.body, e.headers))
    app.register_error_handler(404, lambda e: render(404, {"error": {"code": "0x8006088a",
                                                                     "message": "Resource not found."}}))
    return app
