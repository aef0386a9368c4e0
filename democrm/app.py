"""The demo CRM: a small, strict REST service over one SQLite file.

Why strict: it is the CRM our mapping engine is first tried against, so a
mapping mistake must surface as an error, never be silently ignored. Unknown
or read-only body fields, wrong JSON types, unknown or repeated query
parameters and out-of-range paging all answer 400 naming every offending
field at once. Every answer, errors included, is JSON.

Routes (ids are strings of digits, in paths and bodies alike)::

    GET   /                      service name and this route list
    GET   /customers             ?email= ?phone= ?first_name= ?last_name=
                                 ?twitter= ?q= ?limit= ?offset=
    POST  /customers             -> 201 customer
    GET   /customers/<id>        -> 200 customer
    PATCH /customers/<id>        -> 200 customer
    GET   /cases                 ?customer_id= ?status= ?external_id= ?limit= ?offset=
    POST  /cases                 -> 201 case
    GET   /cases/<id>            -> 200 case
    PATCH /cases/<id>            -> 200 case
    GET   /cases/<id>/notes      -> 200 {"items": [note...]}, oldest first
    POST  /cases/<id>/notes      -> 201 note

Lists answer ``{"total": N, "items": [...]}`` ordered by id. Errors:
400 ``{"error": "invalid", "fields": {name: message}}`` or
``{"error": "malformed", "detail": ...}``; 401 ``{"error": "unauthorized"}``;
404 ``{"error": "not found", "detail": ...}``; 409 ``{"error": "conflict",
"fields": {"email": "already used by customer 3"}}``.

Each request opens its own SQLite connection (so no connection is shared
between the server's threads); writes run in ``BEGIN IMMEDIATE``
transactions so that check-then-insert (unique email, existing customer) is
race-free.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Flask, current_app, g, request
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)

MAX_LIMIT = 200
DEFAULT_LIMIT = 50
_DIGITS = re.compile(r"[0-9]{1,18}")  # 18 digits always fit SQLite's int64
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


class ApiError(Exception):
    """Any non-success answer; the one error handler turns it into JSON."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body.get("detail") or body.get("error"))
        self.status = status
        self.body = body


def invalid(fields: dict[str, str]) -> ApiError:
    return ApiError(400, {"error": "invalid", "fields": fields})


def not_found(what: str, ident: str) -> ApiError:
    return ApiError(404, {"error": "not found", "detail": f"no {what} has id {ident}"})


# --- Field parsers: JSON value in, database value out, or Invalid ----------


class Invalid(ValueError):
    """A field value was rejected; the message completes "<field> ...": it
    never repeats the submitted value, which may be personal data."""


Parser = Callable[[Any], Any]


def text(max_len: int, *, nullable: bool = True) -> Parser:
    def parse(value: Any) -> Any:
        if value is None and nullable:
            return None
        if not isinstance(value, str):
            raise Invalid("must be a string" + (" or null" if nullable else ""))
        if not nullable and not value.strip():
            raise Invalid("must not be empty")
        if len(value) > max_len:
            raise Invalid(f"must be at most {max_len} characters")
        return value

    return parse


def choice(*options: str, nullable: bool = False) -> Parser:
    allowed = ", ".join(options) + (" or null" if nullable else "")

    def parse(value: Any) -> Any:
        if (value is None and nullable) or value in options:
            return value
        raise Invalid(f"must be one of {allowed}")

    return parse


def boolean(value: Any) -> Any:
    if not isinstance(value, bool):
        raise Invalid("must be true or false")
    return int(value)


def email(value: Any) -> Any:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 254 or not _EMAIL.fullmatch(value):
        raise Invalid("not an email address")
    return value


def record_id(value: Any) -> Any:
    if not isinstance(value, str) or not _DIGITS.fullmatch(value):
        raise Invalid('must be an id given as a string of digits, e.g. "3"')
    return int(value)


def timestamp(value: Any) -> Any:
    """ISO-8601 with a timezone, stored as UTC with a Z so that text order is
    time order (notes are listed oldest first)."""
    try:
        moment = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise Invalid("must be an ISO-8601 time with a timezone, e.g. 2024-05-01T12:00:00Z")
    return iso_utc(moment)


def iso_utc(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- Resources: one table each, read by the generic code below -------------


@dataclass(frozen=True)
class Field:
    parse: Parser
    required: bool = False
    default: Any = None  # a JSON value, parsed like a submitted one


@dataclass(frozen=True)
class Resource:
    name: str  # singular, for messages
    table: str
    fields: Mapping[str, Field]  # the writable columns
    read_only: tuple[str, ...]
    id_columns: tuple[str, ...]  # integers in SQLite, strings in JSON
    bool_columns: tuple[str, ...]

    def to_json(self, row: sqlite3.Row) -> dict[str, Any]:
        item = dict(row)
        for column in self.id_columns:
            item[column] = None if item[column] is None else str(item[column])
        for column in self.bool_columns:
            item[column] = bool(item[column])
        return item


CUSTOMERS = Resource(
    name="customer",
    table="customers",
    fields={
        "first_name": Field(text(100)),
        "last_name": Field(text(100)),
        "email": Field(email),
        "phone": Field(text(40)),
        "twitter": Field(text(40)),
        "tier": Field(choice("gold", "silver", "bronze", nullable=True)),
        "vip": Field(boolean, default=False),
        "notes": Field(text(10_000)),
    },
    read_only=("id", "created_at", "updated_at"),
    id_columns=("id",),
    bool_columns=("vip",),
)
CASES = Resource(
    name="case",
    table="cases",
    fields={
        "customer_id": Field(record_id, required=True),
        "subject": Field(text(200, nullable=False), required=True),
        "description": Field(text(10_000)),
        "status": Field(choice("open", "pending", "closed"), default="open"),
        "priority": Field(choice("low", "normal", "high"), default="normal"),
        "external_id": Field(text(200)),  # the caller's own key, to find a case it may have created
    },
    read_only=("id", "created_at", "updated_at"),
    id_columns=("id", "customer_id"),
    bool_columns=(),
)
NOTES = Resource(
    name="note",
    table="notes",
    fields={
        "posted_at": Field(timestamp, required=True),
        "body": Field(text(10_000, nullable=False), required=True),
        "link": Field(text(2_000)),
        "channel": Field(text(50)),
        "external_id": Field(text(200)),
        "content_type": Field(text(100)),
        "author_name": Field(text(200)),
        "author_handle": Field(text(200)),
        "author_id": Field(text(200)),
        "brand_owned": Field(boolean, default=False),
    },
    read_only=("id", "case_id", "created_at"),  # the case comes from the URL
    id_columns=("id", "case_id"),
    bool_columns=("brand_owned",),
)

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS customers (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        first_name TEXT, last_name TEXT,
        email TEXT COLLATE NOCASE UNIQUE,
        phone TEXT, twitter TEXT, tier TEXT,
        vip INTEGER NOT NULL DEFAULT 0, notes TEXT,
        created_at TEXT NOT NULL, updated_at TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS cases (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        customer_id INTEGER NOT NULL REFERENCES customers(id),
        subject TEXT NOT NULL, description TEXT,
        status TEXT NOT NULL, priority TEXT NOT NULL,
        created_at TEXT NOT NULL, updated_at TEXT NOT NULL, external_id TEXT)""",
    """CREATE TABLE IF NOT EXISTS notes (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        case_id INTEGER NOT NULL REFERENCES cases(id),
        posted_at TEXT NOT NULL, body TEXT NOT NULL, link TEXT, channel TEXT,
        external_id TEXT, content_type TEXT, author_name TEXT,
        author_handle TEXT, author_id TEXT,
        brand_owned INTEGER NOT NULL DEFAULT 0, created_at TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS cases_by_customer ON cases (customer_id)",
    "CREATE INDEX IF NOT EXISTS cases_by_external_id ON cases (external_id)",
    "CREATE INDEX IF NOT EXISTS notes_by_case ON notes (case_id, posted_at)",
)

SEED_CUSTOMERS = (
    {"first_name": "Jane", "last_name": "Doe", "email": "jane@example.com",
     "phone": "+1 555 0100", "twitter": "janedoe", "tier": "gold", "vip": True},
    {"first_name": "John", "last_name": "Smith", "email": "john.smith@example.com",
     "phone": "+1 555 0101", "tier": "silver"},
    {"first_name": "Ana", "last_name": "Lopez", "email": "ana.lopez@example.com",
     "twitter": "analopez", "tier": "bronze"},
)
SEED_CASE = {"subject": "Order #1001 arrived damaged", "priority": "high",
             "description": "The box was crushed; customer asks for a replacement."}
SEED_NOTE = {"posted_at": "2024-05-01T09:30:00Z", "channel": "twitter",
             "body": "@acme my order #1001 arrived damaged :(",
             "link": "https://twitter.com/janedoe/status/1785645123456789",
             "external_id": "1785645123456789", "content_type": "post",
             "author_name": "Jane Doe", "author_handle": "janedoe", "author_id": "99001"}


# --- Database access ---------------------------------------------------------


def connect(path: str) -> sqlite3.Connection:
    # isolation_level=None: we issue BEGIN ourselves (see write_txn).
    conn = sqlite3.connect(path, timeout=10, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


@contextmanager
def write_txn(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """Take the write lock up front so that checks and writes are atomic."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:  # SQLite may already have rolled back
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def now() -> str:
    return iso_utc(datetime.now(UTC))


# SQL text is built only from our own table and column names (the Resource
# tables, and body keys already checked against them); every value is bound
# as a parameter. Hence the S608 exemptions below.


def insert(conn: sqlite3.Connection, res: Resource, values: dict[str, Any]) -> dict[str, Any]:
    cols = ", ".join(values)
    marks = ", ".join("?" * len(values))
    sql = f"INSERT INTO {res.table} ({cols}) VALUES ({marks})"  # noqa: S608
    cur = conn.execute(sql, list(values.values()))
    return fetch(conn, res, str(cur.lastrowid))


def fetch(conn: sqlite3.Connection, res: Resource, ident: str) -> dict[str, Any]:
    if not _DIGITS.fullmatch(ident):
        raise ApiError(404, {"error": "not found",
                             "detail": f"no {res.name} has this id: ids are strings of digits"})
    row = conn.execute(f"SELECT * FROM {res.table} WHERE id = ?", (int(ident),)).fetchone()  # noqa: S608
    if row is None:
        raise not_found(res.name, ident)
    return res.to_json(row)


def init_db(path: str) -> None:
    """Create the tables if missing; seed demo data only on first creation."""
    conn = connect(path)
    try:
        with write_txn(conn):
            exists = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'customers'"
            fresh = conn.execute(exists).fetchone() is None
            for statement in SCHEMA[:3]:
                conn.execute(statement)
            columns = {row[1] for row in conn.execute("PRAGMA table_info(cases)")}
            if "external_id" not in columns:  # a database made before cases had it
                conn.execute("ALTER TABLE cases ADD COLUMN external_id TEXT")
            for statement in SCHEMA[3:]:
                conn.execute(statement)
            if fresh:
                seed(conn)
    finally:
        conn.close()


def seed(conn: sqlite3.Connection) -> None:
    stamp = now()
    ids = [insert(conn, CUSTOMERS, {**parse_write(CUSTOMERS, c, creating=True),
                                    "created_at": stamp, "updated_at": stamp})["id"]
           for c in SEED_CUSTOMERS]
    case = {**SEED_CASE, "customer_id": ids[0]}
    case_id = insert(conn, CASES, {**parse_write(CASES, case, creating=True),
                                   "created_at": stamp, "updated_at": stamp})["id"]
    insert(conn, NOTES, {**parse_write(NOTES, SEED_NOTE, creating=True),
                         "case_id": int(case_id), "created_at": stamp})


# --- Request helpers -------------------------------------------------------


def db() -> sqlite3.Connection:
    if "democrm_db" not in g:
        g.democrm_db = connect(current_app.config["DEMOCRM_DB"])
    conn: sqlite3.Connection = g.democrm_db
    return conn


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def json_body() -> dict[str, Any]:
    raw = request.get_data(cache=False)
    if not raw.strip():
        raise ApiError(400, {"error": "malformed", "detail": "the request body is empty; send a JSON object"})
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
    except ValueError as exc:  # includes JSONDecodeError and UnicodeDecodeError
        raise ApiError(400, {"error": "malformed", "detail": f"the request body is not valid JSON: {exc}"}) from None
    if not isinstance(body, dict):
        raise ApiError(400, {"error": "malformed", "detail": "the request body must be a JSON object"})
    return body


def parse_write(res: Resource, body: Mapping[str, Any], *, creating: bool) -> dict[str, Any]:
    """Check a POST/PATCH body against the resource table, collecting every
    error; on create, fill in written-down defaults for missing fields."""
    errors: dict[str, str] = {}
    for key in body:
        if key in res.read_only:
            errors[key] = "is read-only"
        elif key not in res.fields:
            errors[key] = "unknown field; writable fields are " + ", ".join(res.fields)
    values: dict[str, Any] = {}
    for name, field in res.fields.items():
        try:
            if name in body:
                values[name] = field.parse(body[name])
            elif creating and field.required:
                errors[name] = "is required"
            elif creating:
                values[name] = field.parse(field.default)
        except Invalid as exc:
            errors[name] = str(exc)
    if errors:
        raise invalid(errors)
    return values


def query(allowed: tuple[str, ...]) -> dict[str, str]:
    """The query parameters, each given at most once and all of them known."""
    errors = {}
    for key in request.args:
        if key not in allowed:
            known = ", ".join(allowed) or "none"
            errors[key] = f"unknown query parameter; this route takes: {known}"
        elif len(request.args.getlist(key)) > 1:
            errors[key] = "give this query parameter at most once"
    if errors:
        raise invalid(errors)
    return dict(request.args)


def paging(args: Mapping[str, str]) -> tuple[int, int]:
    errors = {}
    limit, offset = args.get("limit", str(DEFAULT_LIMIT)), args.get("offset", "0")
    if not _DIGITS.fullmatch(limit) or int(limit) > MAX_LIMIT:
        errors["limit"] = f"must be a whole number from 0 to {MAX_LIMIT}"
    if not _DIGITS.fullmatch(offset):
        errors["offset"] = "must be a whole number, 0 or more"
    if errors:
        raise invalid(errors)
    return int(limit), int(offset)


def page(res: Resource, where: list[str], params: list[Any], args: Mapping[str, str]) -> dict[str, Any]:
    limit, offset = paging(args)
    clause = " AND ".join(where) or "1"
    conn = db()
    total = conn.execute(f"SELECT COUNT(*) FROM {res.table} WHERE {clause}", params).fetchone()[0]  # noqa: S608
    listing = f"SELECT * FROM {res.table} WHERE {clause} ORDER BY id LIMIT ? OFFSET ?"  # noqa: S608
    rows = conn.execute(listing, [*params, limit, offset]).fetchall()
    return {"total": total, "items": [res.to_json(r) for r in rows]}


def check_email_free(conn: sqlite3.Connection, values: Mapping[str, Any], own_id: int = -1) -> None:
    if values.get("email") is None:
        return
    # The column is COLLATE NOCASE: uniqueness ignores (ASCII) case.
    row = conn.execute("SELECT id FROM customers WHERE email = ? AND id != ?",
                       (values["email"], own_id)).fetchone()
    if row is not None:
        raise ApiError(409, {"error": "conflict", "fields": {"email": f"already used by customer {row['id']}"}})


def check_customer_exists(conn: sqlite3.Connection, values: Mapping[str, Any]) -> None:
    if "customer_id" in values and conn.execute(
            "SELECT 1 FROM customers WHERE id = ?", (values["customer_id"],)).fetchone() is None:
        raise invalid({"customer_id": "no customer has this id"})


Check = Callable[[sqlite3.Connection, dict[str, Any], int], None]  # (conn, values, own id)


def update(res: Resource, ident: str, check: Check) -> dict[str, Any]:
    conn = db()
    with write_txn(conn):
        current = fetch(conn, res, ident)  # a missing record is 404 before any 400
        values = parse_write(res, json_body(), creating=False)
        if not values:
            return current
        check(conn, values, int(current["id"]))
        values["updated_at"] = now()
        assignments = ", ".join(f"{col} = ?" for col in values)
        sql = f"UPDATE {res.table} SET {assignments} WHERE id = ?"  # noqa: S608
        conn.execute(sql, [*values.values(), int(ident)])
        return fetch(conn, res, ident)


# --- Routes ----------------------------------------------------------------

api = Blueprint("democrm", __name__)
CUSTOMER_EXACT = ("email", "phone", "first_name", "last_name", "twitter")
CUSTOMER_SEARCHED = ("first_name", "last_name", "first_name || ' ' || last_name", "email", "phone", "twitter")


@api.get("/")
def index() -> Any:
    rules = sorted(current_app.url_map.iter_rules(), key=lambda r: r.rule)
    routes = [f"{m} {r.rule}" for r in rules if r.endpoint != "static"
              for m in sorted(r.methods or ()) if m not in ("HEAD", "OPTIONS")]
    return {"service": "democrm", "routes": routes}


@api.get("/customers")
def list_customers() -> Any:
    args = query((*CUSTOMER_EXACT, "q", "limit", "offset"))
    where, params = [], []
    for column in CUSTOMER_EXACT:
        if column in args:
            # email is declared COLLATE NOCASE, so only its match ignores case.
            where.append(f"{column} = ?")
            params.append(args[column])
    if args.get("q"):
        pattern = "%" + re.sub(r"([\\%_])", r"\\\1", args["q"]) + "%"
        where.append("(" + " OR ".join(f"{c} LIKE ? ESCAPE '\\'" for c in CUSTOMER_SEARCHED) + ")")
        params.extend([pattern] * len(CUSTOMER_SEARCHED))
    return page(CUSTOMERS, where, params, args)


@api.post("/customers")
def create_customer() -> Any:
    values = parse_write(CUSTOMERS, json_body(), creating=True)
    conn = db()
    with write_txn(conn):
        check_email_free(conn, values)
        stamp = now()
        return insert(conn, CUSTOMERS, {**values, "created_at": stamp, "updated_at": stamp}), 201


@api.get("/customers/<ident>")
def get_customer(ident: str) -> Any:
    return fetch(db(), CUSTOMERS, ident)


@api.patch("/customers/<ident>")
def patch_customer(ident: str) -> Any:
    return update(CUSTOMERS, ident, check_email_free)


@api.get("/cases")
def list_cases() -> Any:
    args = query(("customer_id", "status", "external_id", "limit", "offset"))
    where, params, errors = [], [], {}
    if "external_id" in args:
        where.append("external_id = ?")
        params.append(args["external_id"])
    for name, parse in (("customer_id", record_id), ("status", CASES.fields["status"].parse)):
        if name in args:
            try:
                params.append(parse(args[name]))
                where.append(f"{name} = ?")
            except Invalid as exc:
                errors[name] = str(exc)
    if errors:
        raise invalid(errors)
    return page(CASES, where, params, args)


@api.post("/cases")
def create_case() -> Any:
    values = parse_write(CASES, json_body(), creating=True)
    conn = db()
    with write_txn(conn):
        check_customer_exists(conn, values)
        stamp = now()
        return insert(conn, CASES, {**values, "created_at": stamp, "updated_at": stamp}), 201


@api.get("/cases/<ident>")
def get_case(ident: str) -> Any:
    return fetch(db(), CASES, ident)


@api.patch("/cases/<ident>")
def patch_case(ident: str) -> Any:
    return update(CASES, ident, lambda conn, values, _own: check_customer_exists(conn, values))


@api.get("/cases/<ident>/notes")
def list_notes(ident: str) -> Any:
    query(())
    case = fetch(db(), CASES, ident)
    rows = db().execute("SELECT * FROM notes WHERE case_id = ? ORDER BY posted_at, id",
                        (int(case["id"]),)).fetchall()
    return {"items": [NOTES.to_json(r) for r in rows]}


@api.post("/cases/<ident>/notes")
def create_note(ident: str) -> Any:
    conn = db()
    with write_txn(conn):
        case = fetch(conn, CASES, ident)
        values = parse_write(NOTES, json_body(), creating=True)
        return insert(conn, NOTES, {**values, "case_id": int(case["id"]), "created_at": now()}), 201


# --- Cross-cutting: auth, connection lifetime, errors as JSON ----------------


@api.before_app_request
def require_api_key() -> Any:
    expected = current_app.config["DEMOCRM_API_KEY"]
    given = request.headers.get("X-Api-Key", "")
    if expected is not None and not hmac.compare_digest(given.encode(), expected.encode()):
        raise ApiError(401, {"error": "unauthorized", "detail": "send the API key in the X-Api-Key header"})
    return None


@api.teardown_app_request
def close_db(_exc: BaseException | None) -> None:
    conn = g.pop("democrm_db", None)
    if conn is not None:
        conn.close()


@api.app_errorhandler(ApiError)
def api_error(exc: ApiError) -> Any:
    return exc.body, exc.status


@api.app_errorhandler(HTTPException)
def http_error(exc: HTTPException) -> Any:
    # Werkzeug would answer HTML; keep every answer JSON (unknown route, 405).
    detail = "no such route; GET / lists the routes" if exc.code == 404 else exc.description
    return {"error": (exc.name or "error").lower(), "detail": detail}, exc.code or 500


@api.app_errorhandler(Exception)
def unexpected_error(exc: Exception) -> Any:
    log.exception("democrm: unexpected error")
    return {"error": "internal", "detail": f"{type(exc).__name__}; see the server log"}, 500


def create_app(db_path: str, api_key: str | None = None) -> Flask:
    """Build the demo CRM over the SQLite file ``db_path`` (created, with demo
    data, if missing). With ``api_key`` set, every request must send it in
    the ``X-Api-Key`` header."""
    if db_path == ":memory:" or db_path.startswith("file:") or not db_path:
        raise ValueError(
            "democrm needs a path to a database file: each request opens its own "
            "connection, so an in-memory database would be empty on every request"
        )
    parent = os.path.dirname(os.path.abspath(db_path))
    os.makedirs(parent, exist_ok=True)
    init_db(db_path)
    app = Flask(__name__)
    app.config["DEMOCRM_DB"] = db_path
    app.config["DEMOCRM_API_KEY"] = api_key
    app.json.sort_keys = False  # type: ignore[attr-defined]  # keep column order
    app.register_blueprint(api)
    return app
