"""An in-memory imitation of a ServiceNow instance's Table API, served by Flask.

Built from ServiceNow's REST Table API reference and its encoded-query pages
(facts and sources in ``docs/vendors/servicenow-api.md``): ``/api/now/table/
<table>`` with ``{"result": ...}`` envelopes, every field value a string,
reference fields as ``{"link", "value"}`` unless
``sysparm_exclude_reference_link=true``, ``sysparm_query`` encoded queries
(``^`` AND, ``^OR``, ``^NQ``, ``ORDERBY``; ``^^`` a literal caret),
``sysparm_limit``/``sysparm_offset`` paging with ``X-Total-Count``, journal
fields (``comments``, ``work_notes``) that become ``sys_journal_field`` rows,
``sys_choice`` choice lists, and the ``{"error": {"message", "detail"},
"status": "failure"}`` error envelope. Where the reference is silent the fake
is stricter than an instance (an unknown field in a query is a 400, where an
instance may ignore it) so a mapping cannot lean on a leniency.

    ServiceNowState    the instance: tables, users, parsed queries, fault knobs
    parse_encoded_query  the encoded-query parser (a documented subset)
    create_app(state)  the Flask app
"""

from __future__ import annotations

import hmac
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn

from flask import Flask, Response, current_app, request

from tests.fakes.base import ApiError, FakeState, record_request, render

CASE_TABLE = "sn_customerservice_case"
CONTACT_TABLE = "customer_contact"
JOURNAL_FIELDS = ("comments", "work_notes")
# Case states (CSM): 1 New, 10 Open, 18 Awaiting Info, 6 Resolved, 3 Closed, 7 Cancelled.
CASE_STATES = [("1", "New", 100), ("10", "Open", 200), ("18", "Awaiting Info", 300), ("6", "Resolved", 400),
               ("3", "Closed", 500), ("7", "Cancelled", 600)]
CASE_PRIORITIES = [("1", "1 - Critical", 1), ("2", "2 - High", 2), ("3", "3 - Moderate", 3), ("4", "4 - Low", 4)]
MAX_LIMIT = 10000

# Columns per table (all values are strings on the wire); references name their table.
_COLUMNS: dict[str, dict[str, str | None]] = {
    CONTACT_TABLE: {"first_name": None, "last_name": None, "name": None, "email": None, "phone": None,
                    "mobile_phone": None, "title": None, "user_name": None, "account": "customer_account",
                    "active": None, "notification": None},
    CASE_TABLE: {"number": None, "short_description": None, "description": None, "contact": CONTACT_TABLE,
                 "account": "customer_account", "state": None, "priority": None, "active": None,
                 "correlation_id": None, "close_notes": None, "resolution_code": None, "opened_at": None,
                 "closed_at": None, "comments": None, "work_notes": None},
    "sys_journal_field": {"element_id": None, "element": None, "name": None, "value": None},
    "sys_choice": {"name": None, "element": None, "value": None, "label": None, "sequence": None,
                   "inactive": None, "language": None},
}
_SYSTEM = ("sys_id", "sys_created_on", "sys_created_by", "sys_updated_on", "sys_updated_by", "sys_mod_count")


# ---------------------------------------------------------------- encoded queries


@dataclass(frozen=True)
class Condition:
    """One condition of an encoded query, as the instance understood it."""

    field: str
    operator: str
    value: str
    joined_by: str  # "AND" or "OR" (to the condition before)


@dataclass(frozen=True)
class ParsedQuery:
    conditions: tuple[Condition, ...]
    order_by: tuple[tuple[str, bool], ...]  # (field, descending)


class QueryError(ValueError):
    pass


_OPERATORS = ("!=", ">=", "<=", "=", ">", "<", "ISNOTEMPTY", "ISEMPTY", "STARTSWITH", "ENDSWITH", "NOT LIKE",
              "LIKE", "NOT IN", "IN")


def _split_terms(query: str) -> list[str]:
    """Split on single carets; ``^^`` stays in the term as one literal caret."""
    terms, current, i = [], [], 0
    while i < len(query):
        if query[i] == "^":
            if query.startswith("^^", i):
                current.append("^")
                i += 2
                continue
            terms.append("".join(current))
            current = []
            i += 1
            continue
        current.append(query[i])
        i += 1
    terms.append("".join(current))
    return terms


def parse_encoded_query(query: str) -> ParsedQuery:
    """The documented subset: ``field<op>value`` joined by ``^`` and ``^OR``, ``ORDERBY<f>``,
    ``ORDERBYDESC<f>``. ``^NQ`` and related-list queries raise ``QueryError``."""
    conditions: list[Condition] = []
    order: list[tuple[str, bool]] = []
    for term in _split_terms(query):
        if not term:
            continue
        joined = "AND"
        if term.startswith("NQ") or term.startswith("RLQUERY") or term == "EQ":
            raise QueryError(f"the fake does not implement {term[:7]!r}")
        if term.startswith("ORDERBYDESC"):
            order.append((term[len("ORDERBYDESC"):], True))
            continue
        if term.startswith("ORDERBY"):
            order.append((term[len("ORDERBY"):], False))
            continue
        if term.startswith("OR"):  # field names are lower case, so "OR" can only be the operator
            if not conditions:
                raise QueryError("^OR with no condition before it")
            joined, term = "OR", term[2:]
        match = re.match(r"^([a-z_][a-z0-9_.]*)", term)
        if match is None:
            raise QueryError(f"no field name at the start of {term!r}")
        name, rest = match.group(1), term[match.end():]
        operator = next((op for op in _OPERATORS if rest.startswith(op)), None)
        if operator is None:
            raise QueryError(f"no operator after {name!r}")
        conditions.append(Condition(name, operator, rest[len(operator):], joined))
    return ParsedQuery(tuple(conditions), tuple(order))


def _matches(record: dict[str, Any], cond: Condition) -> bool:
    stored = str(record.get(cond.field) or "")
    value = cond.value
    if cond.operator == "=":
        return stored.lower() == value.lower()  # string comparison is case-insensitive on most instances
    if cond.operator == "!=":
        return stored.lower() != value.lower()
    if cond.operator == "ISEMPTY":
        return stored == ""
    if cond.operator == "ISNOTEMPTY":
        return stored != ""
    if cond.operator == "LIKE":
        return value.lower() in stored.lower()
    if cond.operator == "STARTSWITH":
        return stored.lower().startswith(value.lower())
    if cond.operator == "IN":
        return stored in value.split(",")
    raise QueryError(f"the fake does not implement the operator {cond.operator!r}")


def _select(records: list[dict[str, Any]], parsed: ParsedQuery) -> list[dict[str, Any]]:
    """``^OR`` binds tighter than ``^``: ``a^b^ORc`` is a AND (b OR c)."""
    groups: list[list[Condition]] = []
    for cond in parsed.conditions:
        if cond.joined_by == "OR":
            groups[-1].append(cond)
        else:
            groups.append([cond])
    found = [r for r in records if all(any(_matches(r, c) for c in group) for group in groups)]
    for name, descending in reversed(parsed.order_by):
        found.sort(key=lambda r, n=name: str(r.get(n) or ""), reverse=descending)
    return found


# ---------------------------------------------------------------- state


class ServiceNowState(FakeState):
    """The fake instance. Seed with :meth:`insert`; read ``tables`` and ``queries`` to assert."""

    def __init__(self, *, user: str = "khoros.bridge", password: str = "sn-password") -> None:
        super().__init__()
        self.users = {user: password}
        self.tables: dict[str, dict[str, dict[str, str]]] = {name: {} for name in _COLUMNS}
        self.queries: list[tuple[str, str, ParsedQuery]] = []
        self.mandatory: dict[str, dict[str, str]] = {CASE_TABLE: {"short_description": "Short description"}}
        self._case_number = 1000
        for element, choices in (("state", CASE_STATES), ("priority", CASE_PRIORITIES)):
            for value, label, sequence in choices:
                self.insert("sys_choice", {"name": CASE_TABLE, "element": element, "value": value, "label": label,
                                           "sequence": str(sequence), "inactive": "false", "language": "en"},
                            by="system")

    def __repr__(self) -> str:
        return f"ServiceNowState({ {k: len(v) for k, v in self.tables.items()} })"

    def rate_limit_next(self, retry_after: int = 1, *, times: int = 1) -> None:
        """An inbound REST rate-limit rule's 429: ``Retry-After`` plus the ``X-RateLimit-*`` headers."""
        reset = int(datetime.now(UTC).timestamp()) + retry_after
        self.fail_next(429, {"error": {"message": "Rate limit exceeded",
                                       "detail": "Rate limit of 1000 requests per hour exceeded"},
                             "status": "failure"},
                       {"Retry-After": str(retry_after), "X-RateLimit-Rule": "bridge",
                        "X-RateLimit-Limit": "1000", "X-RateLimit-Reset": str(reset)}, times=times)

    def stamp(self) -> str:
        return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")

    def insert(self, table: str, values: dict[str, Any], *, by: str = "khoros.bridge") -> dict[str, str]:
        with self.lock:
            stamp = self.stamp()
            record = {name: "" for name in _COLUMNS[table]}
            record.update({"sys_id": uuid.uuid4().hex, "sys_created_on": stamp, "sys_created_by": by,
                           "sys_updated_on": stamp, "sys_updated_by": by, "sys_mod_count": "0"})
            if table == CASE_TABLE:
                self._case_number += 1
                record.update({"number": f"CS{self._case_number:07d}", "state": "1", "priority": "4",
                               "active": "true", "opened_at": stamp})
            if table == CONTACT_TABLE:
                record["active"] = "true"
            self._write(table, record, values, by)
            self.tables[table][record["sys_id"]] = record
            return record

    def _write(self, table: str, record: dict[str, str], values: dict[str, Any], by: str) -> None:
        for name, value in values.items():
            text = "" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
            if name in JOURNAL_FIELDS and table == CASE_TABLE:
                if text:  # a journal field is write-only: each write adds an entry
                    self.insert("sys_journal_field", {"element_id": record["sys_id"], "element": name,
                                                      "name": table, "value": text}, by=by)
                continue
            record[name] = text
        if table == CONTACT_TABLE:
            record["name"] = " ".join(p for p in (record["first_name"], record["last_name"]) if p)
        if table == CASE_TABLE:
            closed = record["state"] in ("3", "6", "7")
            record["active"] = "false" if closed else "true"
            record["closed_at"] = record["closed_at"] or (self.stamp() if closed else "")

    def update(self, table: str, sys_id: str, values: dict[str, Any], *, by: str = "khoros.bridge") -> None:
        with self.lock:
            record = self.tables[table][sys_id]
            self._write(table, record, values, by)
            record["sys_updated_on"], record["sys_updated_by"] = self.stamp(), by
            record["sys_mod_count"] = str(int(record["sys_mod_count"]) + 1)

    def journal(self, case_sys_id: str) -> list[dict[str, str]]:
        return [j for j in self.tables["sys_journal_field"].values() if j["element_id"] == case_sys_id]


# ---------------------------------------------------------------- rendering


def _state() -> ServiceNowState:
    state: ServiceNowState = current_app.extensions["servicenow_fake"]
    return state


def _fail(status: int, message: str, detail: str | None = None) -> NoReturn:
    raise ApiError(status, {"error": {"message": message, "detail": detail}, "status": "failure"})


def _flag(name: str) -> str:
    return (request.args.get(name) or "false").lower()


def _out(state: ServiceNowState, table: str, record: dict[str, str]) -> dict[str, Any]:
    """One record as the Table API renders it for the request's sysparm_* choices."""
    fields = request.args.get("sysparm_fields")
    names = [n.strip() for n in fields.split(",")] if fields else [*_SYSTEM, *_COLUMNS[table]]
    display = _flag("sysparm_display_value")
    exclude_links = _flag("sysparm_exclude_reference_link") == "true"
    out: dict[str, Any] = {}
    for name in names:
        if name not in record:
            continue  # an unknown name in sysparm_fields is left out, as the reference shows
        value = record[name]
        if name in JOURNAL_FIELDS:
            value = ""  # journal fields read back empty; entries live in sys_journal_field
        reference = _COLUMNS[table].get(name)
        label = _label(state, table, name, value)
        if display == "all":
            out[name] = {"display_value": label, "value": value}
            if reference and value and not exclude_links:
                out[name]["link"] = f"{request.host_url}api/now/table/{reference}/{value}"
        elif display == "true":
            out[name] = label
        elif reference and value and not exclude_links:
            out[name] = {"link": f"{request.host_url}api/now/table/{reference}/{value}", "value": value}
        else:
            out[name] = value
    return out


def _label(state: ServiceNowState, table: str, name: str, value: str) -> str:
    choice = next((c for c in state.tables["sys_choice"].values()
                   if c["name"] == table and c["element"] == name and c["value"] == value), None)
    return choice["label"] if choice else value


def _table(table: str) -> str:
    if table not in _COLUMNS:
        _fail(400, "Invalid table " + table, None)
    return table


def _body(table: str) -> dict[str, Any]:
    payload = request.get_json(silent=True)
    if not isinstance(payload, dict):
        _fail(400, "Exception while reading request", "The payload is not valid JSON.")
    # Unknown fields are ignored by the Table API; the fake refuses them so mappings stay exact.
    unknown = sorted(set(payload) - set(_COLUMNS[table]))
    if unknown:
        _fail(400, "Invalid field(s) " + ", ".join(unknown), "The fake refuses fields its table lacks")
    for name, value in payload.items():
        if value is not None and not isinstance(value, (str, int, float, bool)):
            _fail(400, "Exception while reading request", f"Field {name} must be a string")
    return payload


def _check_mandatory(state: ServiceNowState, table: str, merged: dict[str, Any]) -> None:
    """A data policy: mandatory fields, refused with the documented 403 'Operation Failed'."""
    missing = [label for name, label in state.mandatory.get(table, {}).items() if not merged.get(name)]
    if missing:
        _fail(403, "Operation Failed",
              "Data Policy Exception: \n" + "".join(f" {label} is mandatory\n" for label in missing))


def _check_references(state: ServiceNowState, table: str, values: dict[str, Any]) -> None:
    for name, value in values.items():
        target = _COLUMNS[table].get(name)
        if target in state.tables and value and str(value) not in state.tables[target]:
            # An instance stores a dangling reference silently; the fake refuses it loudly.
            _fail(400, "Invalid reference", f"{name}: no {target} record {value}")


# ---------------------------------------------------------------- views


def list_records(table: str) -> Response:
    state = _state()
    table = _table(table)
    query = request.args.get("sysparm_query", "")
    try:
        limit = int(request.args.get("sysparm_limit", MAX_LIMIT))
        offset = int(request.args.get("sysparm_offset", 0))
    except ValueError:
        _fail(400, "Invalid sysparm_limit or sysparm_offset", None)
    with state.lock:
        try:
            parsed = parse_encoded_query(query)
            unknown = [c.field for c in parsed.conditions if c.field not in _COLUMNS[table] and c.field not in _SYSTEM]
            if unknown:
                raise QueryError(f"unknown field(s) {', '.join(unknown)} in table {table}")
            found = _select(list(state.tables[table].values()), parsed)
        except QueryError as exc:
            _fail(400, "Invalid query", str(exc))
        state.queries.append((table, query, parsed))
        page = found[offset:offset + limit]
        headers = {"X-Total-Count": str(len(found))}
        if offset + limit < len(found):
            headers["Link"] = (f'<{request.base_url}?sysparm_offset={offset + limit}&sysparm_limit={limit}>;'
                               ' rel="next"')
        return render(200, {"result": [_out(state, table, r) for r in page]}, headers)


def get_record(table: str, sys_id: str) -> Response:
    state = _state()
    table = _table(table)
    with state.lock:
        record = state.tables[table].get(sys_id)
        if record is None:
            _fail(404, "No Record found", "Record doesn't exist or ACL restricts the record retrieval")
        return render(200, {"result": _out(state, table, record)})


def create_record(table: str) -> Response:
    state = _state()
    table = _table(table)
    values = _body(table)
    with state.lock:
        _check_references(state, table, values)
        _check_mandatory(state, table, values)
        record = state.insert(table, values)
        return render(201, {"result": _out(state, table, record)},
                      {"Location": f"{request.host_url}api/now/table/{table}/{record['sys_id']}"})


def update_record(table: str, sys_id: str) -> Response:
    state = _state()
    table = _table(table)
    values = _body(table)
    with state.lock:
        record = state.tables[table].get(sys_id)
        if record is None:
            _fail(404, "No Record found", "Record doesn't exist or ACL restricts the record retrieval")
        _check_references(state, table, values)
        _check_mandatory(state, table, {**record, **values})
        state.update(table, sys_id, values)
        return render(200, {"result": _out(state, table, record)})


def _before_request() -> Response | None:
    state = _state()
    record_request(state)
    fault = state.take_fault()
    if fault is not None:
        return render(fault.status, fault.body, fault.headers)
    auth = request.authorization
    password = state.users.get(auth.username or "") if auth is not None and auth.type == "basic" else None
    if auth is None or password is None or not hmac.compare_digest((auth.password or "").encode(), password.encode()):
        return render(401, {"error": {"message": "User Not Authenticated",
                                      "detail": "Required to provide Auth information"}, "status": "failure"},
                      {"WWW-Authenticate": 'BASIC realm="Service-now"'})
    if request.method in ("POST", "PUT", "PATCH") and not request.is_json:
        return render(415, {"error": {"message": "Unsupported Media Type", "detail": None}, "status": "failure"})
    return None


def create_app(state: ServiceNowState | None = None) -> Flask:
    app = Flask(__name__)
    app.extensions["servicenow_fake"] = state if state is not None else ServiceNowState()
    app.add_url_rule("/api/now/table/<table>", "list", list_records, methods=["GET"])
    app.add_url_rule("/api/now/table/<table>", "create", create_record, methods=["POST"])
    app.add_url_rule("/api/now/table/<table>/<sys_id>", "get", get_record, methods=["GET"])
    app.add_url_rule("/api/now/table/<table>/<sys_id>", "update", update_record, methods=["PATCH", "PUT"])
    app.before_request(_before_request)
    app.register_error_handler(ApiError, lambda e: render(e.status, e.body, e.headers))
    app.register_error_handler(404, lambda e: render(400, {"error": {"message": "Requested URI does not represent "
                                                                     "any resource", "detail": None},
                                                           "status": "failure"}))
    return app
