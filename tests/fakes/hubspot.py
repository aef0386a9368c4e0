"""An in-memory, stateful fake of HubSpot's CRM API (v3 objects, v4 associations).

Why a fake: ``mappings/hubspot.yaml`` must be tested against something that
answers like HubSpot does -- same paths, envelopes, string ids, error bodies
and quirks -- without a network or an account. Every behaviour here comes
from HubSpot's documentation or from captured real responses; the sources,
and what could not be confirmed, are in ``docs/vendors/hubspot-api.md``.
Where the docs are silent the fake is *stricter* than HubSpot is known to be,
so that a mapping mistake fails here rather than in production.

Public API::

    state = HubSpotState(token="pat-...")     # the account; every knob lives here
    app = create_app(state)                   # a Flask app; serve it on loopback
    state.create("contacts", {...})           # seed records directly
    state.associate("tickets", t, "contacts", c)
    state.fail_next(429, headers={"Retry-After": "1"})   # next answer is a failure
    state.slow_seconds = 2.0                  # every answer is delayed
    state.requests                            # list[RecordedRequest], oldest first

Routes::

    POST   /crm/v3/objects/{type}                   create (inline "associations")
    GET    /crm/v3/objects/{type}/{id}              ?properties ?associations ?idProperty
    PATCH  /crm/v3/objects/{type}/{id}              update
    POST   /crm/v3/objects/{type}/search            filterGroups, sorts, properties, limit, after
    POST   /crm/v3/objects/{type}/batch/read        inputs, properties
    GET    /crm/v4/objects/{type}/{id}/associations/{toType}
    PUT    /crm/v4/objects/{type}/{id}/associations/default/{toType}/{toId}
    GET    /crm/v3/pipelines/{type}[/{pipelineId}[/stages]]
    GET    /crm/v3/properties/{type}[/{name}]

Object types: contacts, tickets, notes (plural, singular or ``0-1``-style ids).
"""

from __future__ import annotations

import hmac
import json
import re
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from tests.fakes.base import FakeState, record_request

JSON = dict[str, Any]

DEFAULT_TOKEN = "pat-na1-00000000-0000-0000-0000-000000000000"
AUTH_MESSAGE = (
    "Authentication credentials not found. This API supports OAuth 2.0 authentication and you "
    "can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview"
)
NOT_FOUND_MESSAGE = "Object not found.  objectId are usually numeric."  # two spaces, as HubSpot
SEARCH_MAX_GROUPS, SEARCH_MAX_FILTERS_PER_GROUP, SEARCH_MAX_FILTERS = 5, 10, 25
SEARCH_MAX_LIMIT, SEARCH_MAX_RESULTS, SEARCH_DEFAULT_LIMIT = 200, 10_000, 10
V4_DEFAULT_LIMIT = 500

# plural name, singular name, object type id
_TYPES = (("contacts", "contact", "0-1"), ("tickets", "ticket", "0-5"), ("notes", "note", "0-46"))
_SINGULAR = {plural: singular for plural, singular, _ in _TYPES}
_ALIASES = {alias: row[0] for row in _TYPES for alias in row}

# Unlabelled HUBSPOT_DEFINED association type ids, one per direction.
ASSOCIATION_TYPE_IDS: dict[tuple[str, str], int] = {
    ("contacts", "tickets"): 15,
    ("tickets", "contacts"): 16,
    ("contacts", "notes"): 201,
    ("notes", "contacts"): 202,
    ("tickets", "notes"): 227,
    ("notes", "tickets"): 228,
}
_PAIR_BY_TYPE_ID = {type_id: pair for pair, type_id in ASSOCIATION_TYPE_IDS.items()}


@dataclass(frozen=True)
class ObjectSchema:
    """Where an object type keeps its timestamps and what it returns by default."""

    created: str
    modified: str
    defaults: tuple[str, ...]


SCHEMAS = {
    "contacts": ObjectSchema("createdate", "lastmodifieddate", ("firstname", "lastname", "email")),
    "tickets": ObjectSchema(
        "createdate",
        "hs_lastmodifieddate",
        ("subject", "content", "hs_pipeline", "hs_pipeline_stage", "hs_ticket_category",
         "hs_ticket_priority"),
    ),
    "notes": ObjectSchema("hs_createdate", "hs_lastmodifieddate", ()),
}


@dataclass(frozen=True)
class PropertyDef:
    """One CRM property as ``GET /crm/v3/properties/{type}`` describes it."""

    name: str
    label: str
    type: str  # string | enumeration | bool | number | date | datetime
    field_type: str  # text | textarea | html | phonenumber | select | radio | checkbox | ...
    options: tuple[tuple[str, str], ...] = ()  # (label, value)
    read_only: bool = False
    group: str = "information"

    def to_json(self, order: int) -> JSON:
        return {
            "name": self.name, "label": self.label, "type": self.type,
            "fieldType": self.field_type, "description": "", "groupName": self.group,
            "options": [{"label": label, "value": value, "displayOrder": i, "hidden": False}
                        for i, (label, value) in enumerate(self.options)],
            "displayOrder": order, "hidden": False, "hasUniqueValue": False, "formField": True,
            "calculated": False, "externalOptions": False,
            "modificationMetadata": {"archivable": not self.read_only, "readOnlyDefinition": True,
                                     "readOnlyValue": self.read_only},
        }


def _opts(*values: str) -> tuple[tuple[str, str], ...]:
    return tuple((v.replace("_", " ").title(), v) for v in values)


_LIFECYCLE = (("Subscriber", "subscriber"), ("Lead", "lead"),
              ("Marketing Qualified Lead", "marketingqualifiedlead"),
              ("Sales Qualified Lead", "salesqualifiedlead"), ("Opportunity", "opportunity"),
              ("Customer", "customer"), ("Evangelist", "evangelist"), ("Other", "other"))
_TIMESTAMPS = {
    "contacts": (("createdate", "Create Date"), ("lastmodifieddate", "Last Modified Date")),
    "tickets": (("createdate", "Create date"), ("hs_lastmodifieddate", "Last modified date")),
    "notes": (("hs_createdate", "Created at"), ("hs_lastmodifieddate", "Last modified date")),
}
_PROPERTIES: dict[str, tuple[PropertyDef, ...]] = {
    "contacts": (
        PropertyDef("email", "Email", "string", "text"),
        PropertyDef("firstname", "First Name", "string", "text"),
        PropertyDef("lastname", "Last Name", "string", "text"),
        PropertyDef("phone", "Phone Number", "string", "phonenumber"),
        PropertyDef("company", "Company Name", "string", "text"),
        PropertyDef("jobtitle", "Job Title", "string", "text"),
        PropertyDef("address", "Street Address", "string", "text"),
        PropertyDef("city", "City", "string", "text"),
        PropertyDef("zip", "Postal Code", "string", "text"),
        PropertyDef("country", "Country/Region", "string", "text"),
        PropertyDef("twitterhandle", "Twitter Username", "string", "text"),
        PropertyDef("message", "Message", "string", "textarea"),
        PropertyDef("lifecyclestage", "Lifecycle Stage", "enumeration", "radio", _LIFECYCLE),
        PropertyDef("hs_lead_status", "Lead Status", "enumeration", "radio", _opts(
            "NEW", "OPEN", "IN_PROGRESS", "OPEN_DEAL", "UNQUALIFIED", "ATTEMPTED_TO_CONTACT",
            "CONNECTED", "BAD_TIMING")),
        # A custom property, so that a bool/booleancheckbox field exists to map.
        PropertyDef("vip_customer", "VIP customer", "bool", "booleancheckbox",
                    (("Yes", "true"), ("No", "false"))),
    ),
    "tickets": (
        PropertyDef("subject", "Ticket name", "string", "text"),
        PropertyDef("content", "Ticket description", "string", "textarea"),
        PropertyDef("hs_ticket_priority", "Priority", "enumeration", "select",
                    (("Low", "LOW"), ("Medium", "MEDIUM"), ("High", "HIGH"))),
        PropertyDef("hs_ticket_category", "Category", "enumeration", "checkbox", _opts(
            "PRODUCT_ISSUE", "BILLING_ISSUE", "FEATURE_REQUEST", "GENERAL_INQUIRY")),
        PropertyDef("source_type", "Source", "enumeration", "select",
                    _opts("CHAT", "EMAIL", "FORM", "PHONE")),
        PropertyDef("closed_date", "Close date", "datetime", "date", read_only=True),
    ),
    "notes": (
        PropertyDef("hs_note_body", "Note body", "string", "html"),
        PropertyDef("hs_timestamp", "Activity date", "datetime", "date"),
    ),
}


@dataclass(frozen=True)
class Stage:
    id: str
    label: str
    ticket_state: str  # OPEN | CLOSED


TICKET_PIPELINE_ID = "0"
TICKET_STAGES = (Stage("1", "New", "OPEN"), Stage("2", "Waiting on contact", "OPEN"),
                 Stage("3", "Waiting on us", "OPEN"), Stage("4", "Closed", "CLOSED"))


class HubSpotError(Exception):
    """An answer other than success; rendered as HubSpot's JSON error envelope."""

    def __init__(self, status: int, body: JSON, headers: dict[str, str] | None = None) -> None:
        super().__init__(body.get("message", ""))
        self.status, self.body, self.headers = status, body, headers or {}


def error_body(message: str, category: str | None = None, **extra: Any) -> JSON:
    """HubSpot's error envelope: ``status``, ``message``, ``correlationId``, ``category``."""
    body: JSON = {"status": "error", "message": message, "correlationId": str(uuid.uuid4())}
    if category:
        body["category"] = category
    return body | extra


def rate_limit_body(policy: str = "SECONDLY") -> JSON:
    """The documented 429 body; ``policy`` is SECONDLY, TEN_SECONDLY_ROLLING or DAILY."""
    return {"status": "error", "message": f"You have reached your {policy.lower()} limit.",
            "errorType": "RATE_LIMIT", "correlationId": str(uuid.uuid4()), "policyName": policy}


@dataclass(frozen=True)
class Issue:
    """One property that failed validation, in the shape HubSpot embeds in its message."""

    name: str
    error: str
    message: str


def validation_error(issues: list[Issue]) -> HubSpotError:
    detail = [{"isValid": False, "message": i.message, "error": i.error, "name": i.name}
              for i in issues]
    return HubSpotError(400, error_body(
        "Property values were not valid: " + json.dumps(detail, separators=(",", ":")),
        "VALIDATION_ERROR",
        errors=[{"message": i.message, "code": i.error, "context": {"propertyName": [i.name]}}
                for i in issues]))


def bad_request(message: str) -> HubSpotError:
    return HubSpotError(400, error_body(message, "VALIDATION_ERROR"))


def not_found(object_id: str) -> HubSpotError:
    return HubSpotError(404, error_body(NOT_FOUND_MESSAGE, "OBJECT_NOT_FOUND",
                                        context={"id": [object_id]}))


def iso_ms(moment: datetime) -> str:
    """ISO-8601 in UTC with milliseconds and ``Z``, as every HubSpot timestamp."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_instant(value: str) -> datetime | None:
    """An epoch-milliseconds string or an ISO-8601 date/datetime, else None."""
    if re.fullmatch(r"-?\d{1,15}", value):
        return datetime.fromtimestamp(int(value) / 1000, tz=UTC)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass
class Record:
    """One CRM object; property values are strings, as HubSpot returns them."""

    id: str
    object_type: str
    properties: dict[str, str]
    created_at: str
    updated_at: str
    archived: bool = False


class HubSpotState(FakeState):
    """One HubSpot account: records, associations, seeded metadata, request log and knobs.

    Thread-safe: the loopback server is threaded, so every read or write of the
    account happens under ``lock``.
    """

    def __init__(self, token: str = DEFAULT_TOKEN, *, first_id: int = 1001,
                 clock: Callable[[], datetime] | None = None) -> None:
        super().__init__(first_id)
        self.token = token
        self.records: dict[str, dict[str, Record]] = {t: {} for t in SCHEMAS}
        self.associations: set[tuple[str, str, str, str]] = set()  # stored both ways
        self.slow_seconds = 0.0
        self._clock = clock or (lambda: datetime.now(UTC))
        seeded = self.now()
        self.pipelines: dict[str, list[JSON]] = {"tickets": [_pipeline_json(seeded)]}
        self.properties: dict[str, dict[str, PropertyDef]] = {
            t: {p.name: p for p in self._seed_properties(t)} for t in SCHEMAS}

    # -- knobs ------------------------------------------------------------------
    def fail_next(self, status: int, body: JSON | str | None = None,
                  headers: dict[str, str] | None = None, *, times: int = 1) -> None:
        """Answer the next ``times`` requests with ``status``; a str body is sent raw (HTML)."""
        if body is None:
            body = rate_limit_body() if status == 429 else error_body("internal error")
        super().fail_next(status, body, headers, times=times)

    # -- records ----------------------------------------------------------------
    def now(self) -> str:  # the account's clock (a test may set it), in HubSpot's format
        return iso_ms(self._clock())

    def create(self, object_type: str, properties: JSON,
               associations: Iterable[JSON] = ()) -> Record:
        """Create a record as ``POST /crm/v3/objects/{type}`` would (validation included)."""
        with self.lock:
            values = self._validate(object_type, properties, None)
            links = [self._resolve_inline(object_type, a) for a in associations]
            record_id = str(self.next_id())
            stamp = self.now()
            schema = SCHEMAS[object_type]
            values |= {"hs_object_id": record_id, schema.created: stamp, schema.modified: stamp}
            record = Record(record_id, object_type, values, stamp, stamp)
            self._apply_ticket_state(record)
            self.records[object_type][record_id] = record
            for to_type, to_id in links:
                self.associate(object_type, record_id, to_type, to_id)
            return record

    def update(self, record: Record, properties: JSON) -> Record:
        with self.lock:
            values = self._validate(record.object_type, properties, record)
            for name, value in values.items():
                if value == "":
                    record.properties.pop(name, None)
                else:
                    record.properties[name] = value
            record.updated_at = self.now()
            record.properties[SCHEMAS[record.object_type].modified] = record.updated_at
            self._apply_ticket_state(record)
            return record

    def find(self, object_type: str, key: str, id_property: str | None = None) -> Record | None:
        """A live record by id, or by a unique property (``idProperty``); email ignores case."""
        fold = (lambda v: v.lower()) if id_property == "email" else (lambda v: v)
        with self.lock:
            for record in self.records[object_type].values():
                if id_property in (None, "hs_object_id"):
                    value: str | None = record.id
                else:
                    value = record.properties.get(id_property)
                if not record.archived and value is not None and fold(value) == fold(key):
                    return record
            return None

    def get(self, object_type: str, object_id: str) -> Record:
        record = self.find(object_type, object_id)
        if record is None:
            raise not_found(object_id)
        return record

    # -- associations -------------------------------------------------------------
    def associate(self, a_type: str, a_id: str, b_type: str, b_id: str) -> None:
        """Link two records; HubSpot associations are visible from both sides."""
        with self.lock:
            self.associations.add((a_type, a_id, b_type, b_id))
            self.associations.add((b_type, b_id, a_type, a_id))

    def associated_ids(self, from_type: str, from_id: str, to_type: str) -> list[str]:
        with self.lock:
            ids = [b for (ft, fid, tt, b) in self.associations
                   if (ft, fid, tt) == (from_type, from_id, to_type)
                   and self.find(to_type, b) is not None]
            return sorted(ids, key=int)

    # -- internals --------------------------------------------------------------
    def _seed_properties(self, object_type: str) -> list[PropertyDef]:
        stamps = [PropertyDef(n, label, "datetime", "date", read_only=True)
                  for n, label in _TIMESTAMPS[object_type]]
        base = [PropertyDef("hs_object_id", "Record ID", "number", "number", read_only=True)]
        if object_type == "tickets":
            pipeline = PropertyDef("hs_pipeline", "Pipeline", "enumeration", "select",
                                   tuple((p["label"], p["id"]) for p in self.pipelines["tickets"]))
            stages = PropertyDef("hs_pipeline_stage", "Ticket status", "enumeration", "select",
                                 tuple((s.label, s.id) for s in TICKET_STAGES))
            base += [pipeline, stages]
        return [*_PROPERTIES[object_type], *base, *stamps]

    def _validate(self, object_type: str, properties: Any, existing: Record | None) -> JSON:
        """Normalise values to HubSpot's strings; raise one 400 naming every bad property."""
        if not isinstance(properties, dict):
            raise bad_request("Invalid input JSON: 'properties' must be an object")
        defs, values, issues = self.properties[object_type], {}, []
        for name, raw in properties.items():
            prop = defs.get(name)
            if prop is None:
                issues.append(Issue(name, "PROPERTY_DOESNT_EXIST",
                                    f'Property "{name}" does not exist'))
            elif prop.read_only:
                issues.append(Issue(name, "READ_ONLY_VALUE",
                                    f'"{name}" is a read only property; its value cannot be set.'))
            else:
                value, problem = _normalise(prop, raw)
                if problem:
                    issues.append(problem)
                else:
                    values[name] = value
        if object_type == "contacts" and values.get("email"):
            self._check_unique_email(values["email"], existing)
        if object_type == "tickets":
            issues += self._check_ticket(values, existing)
        if object_type == "notes" and existing is None and not values.get("hs_timestamp"):
            issues.append(Issue("hs_timestamp", "REQUIRED", "hs_timestamp is required"))
        if issues:
            raise validation_error(issues)
        return values

    def _check_unique_email(self, email: str, existing: Record | None) -> None:
        other = self.find("contacts", email, "email")
        if other is not None and other is not existing:
            raise HubSpotError(409, error_body(f"Contact already exists. Existing ID: {other.id}",
                                               "CONFLICT"))

    def _check_ticket(self, values: JSON, existing: Record | None) -> list[Issue]:
        current = existing.properties if existing else {}
        if existing is None:
            values.setdefault("hs_pipeline", TICKET_PIPELINE_ID)
        stage = values.get("hs_pipeline_stage", current.get("hs_pipeline_stage"))
        pipeline = values.get("hs_pipeline", current.get("hs_pipeline", TICKET_PIPELINE_ID))
        valid = [s["id"] for p in self.pipelines["tickets"] if p["id"] == pipeline
                 for s in p["stages"]]
        if not stage:
            return [Issue("hs_pipeline_stage", "REQUIRED", "hs_pipeline_stage is required")]
        if stage not in valid:
            return [Issue("hs_pipeline_stage", "INVALID_OPTION",
                          f"{stage} is not a valid pipeline stage ID. Valid options are: "
                          f"pipelineId={pipeline} : [{', '.join(valid)}]")]
        return []

    def _apply_ticket_state(self, record: Record) -> None:
        """Closing a ticket (a CLOSED stage) stamps ``closed_date``; reopening clears it."""
        if record.object_type != "tickets":
            return
        if ticket_state(self, record) == "CLOSED":
            record.properties.setdefault("closed_date", self.now())
        else:
            record.properties.pop("closed_date", None)

    def _resolve_inline(self, from_type: str, association: Any) -> tuple[str, str]:
        """Check one ``associations[]`` item of a create body; return its target."""
        try:
            to_id = str(association["to"]["id"])
            types = association["types"]
            pairs = {_PAIR_BY_TYPE_ID.get(t.get("associationTypeId")) for t in types}
        except (KeyError, TypeError, AttributeError):
            raise bad_request(
                "Invalid input JSON: each association needs 'to.id' and 'types'") from None
        pair = next(iter(pairs)) if len(pairs) == 1 else None
        if pair is None or pair[0] != from_type:
            raise bad_request(f"invalid association type for {from_type}: "
                              f"{[t.get('associationTypeId') for t in types]}")
        if self.find(pair[1], to_id) is None:
            raise bad_request(f"One or more associations are invalid: "
                              f"no {_SINGULAR[pair[1]]} with id {to_id}")
        return pair[1], to_id


def ticket_state(state: HubSpotState, record: Record) -> str | None:
    """OPEN or CLOSED, read from the ticket's stage metadata -- as a mapping must do it."""
    stage = record.properties.get("hs_pipeline_stage")
    pipeline = record.properties.get("hs_pipeline", TICKET_PIPELINE_ID)
    stages = [s for p in state.pipelines["tickets"] if p["id"] == pipeline for s in p["stages"]]
    return next((s["metadata"]["ticketState"] for s in stages if s["id"] == stage), None)


def _pipeline_json(stamp: str) -> JSON:
    common = {"createdAt": stamp, "updatedAt": stamp, "archived": False}
    stages = [{"id": s.id, "label": s.label, "displayOrder": i,
               "metadata": {"ticketState": s.ticket_state}} | common
              for i, s in enumerate(TICKET_STAGES)]
    return {"id": TICKET_PIPELINE_ID, "label": "Support Pipeline", "displayOrder": 0,
            "stages": stages} | common


_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


def _normalise(prop: PropertyDef, raw: Any) -> tuple[str, Issue | None]:
    """Turn one submitted value into HubSpot's stored string, or explain why not."""
    if raw is None or raw == "":
        return "", None  # an empty value clears the property
    value = str(raw).lower() if isinstance(raw, bool) else str(raw)
    if prop.name == "email":
        value = value.strip().lower()  # HubSpot stores email addresses lower-cased
        if not _EMAIL.fullmatch(value):
            return "", Issue(prop.name, "INVALID_EMAIL", f"Email address {raw} is invalid")
    elif prop.type == "bool":
        value = value.lower()
        if value not in ("true", "false"):
            return "", Issue(prop.name, "INVALID_BOOLEAN", f"{raw} is not a valid boolean")
    elif prop.type == "enumeration":
        allowed = [v for _, v in prop.options]
        chosen = value.split(";") if prop.field_type == "checkbox" else [value]
        if any(c not in allowed for c in chosen):
            return "", Issue(prop.name, "INVALID_OPTION",
                             f"{raw} was not one of the allowed options: [{', '.join(allowed)}]")
    elif prop.type in ("date", "datetime"):
        moment = parse_instant(value)
        if moment is None:
            return "", Issue(prop.name, "INVALID_DATE", f"{raw} is not a valid date")
        value = iso_ms(moment)
    return value, None


# -- serialisation -------------------------------------------------------------------
def object_json(state: HubSpotState, record: Record, requested: list[str] | None = None,
                everything: bool = False, associations: list[str] | None = None) -> JSON:
    """``{"id", "properties", "createdAt", "updatedAt", "archived"}`` as HubSpot answers.

    Requested properties that exist but have no value come back as null; names
    that are not properties are left out; the id and timestamps always come.
    """
    schema = SCHEMAS[record.object_type]
    if everything:
        names = list(record.properties)
    else:
        wanted = requested if requested is not None else list(schema.defaults)
        names = [n for n in wanted if n in state.properties[record.object_type]]
    names += [n for n in (schema.created, schema.modified, "hs_object_id") if n not in names]
    body: JSON = {"id": record.id,
                  "properties": {n: record.properties.get(n) for n in sorted(names)},
                  "createdAt": record.created_at, "updatedAt": record.updated_at,
                  "archived": record.archived}
    linked = {}
    for to_type in filter(None, (canonical_type(a) for a in associations or ())):
        name = f"{_SINGULAR[record.object_type]}_to_{_SINGULAR[to_type]}"
        ids = state.associated_ids(record.object_type, record.id, to_type)
        if ids:
            linked[to_type] = {"results": [{"id": i, "type": name} for i in ids]}
    if linked:
        body["associations"] = linked
    return body


def canonical_type(name: str) -> str | None:
    return _ALIASES.get(name.lower())


def _csv(name: str) -> list[str] | None:
    """A query parameter given as ``a,b`` or repeated, as HubSpot accepts both."""
    values = [v for raw in request.args.getlist(name) for v in raw.split(",") if v]
    return values or None


# -- search --------------------------------------------------------------------------
def _comparable(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        moment = parse_instant(value)
        return moment.timestamp() * 1000 if moment else None


def _tokens(text: str) -> list[str]:
    return [text, *(t for t in re.split(r"[^\w@.+-]+", text) if t)]


def _contains_token(stored: str | None, f: JSON) -> bool:
    if stored is None:
        return False
    needle = str(f.get("value", "")).lower()
    pattern = re.compile(".*".join(re.escape(part) for part in needle.split("*")))
    return any(pattern.fullmatch(token) for token in _tokens(stored.lower()))


def _eq(stored: str | None, f: JSON) -> bool:
    return stored is not None and stored.lower() == str(f.get("value", "")).lower()


def _in(stored: str | None, f: JSON) -> bool:
    return stored is not None and stored.lower() in [str(v).lower() for v in f.get("values", [])]


def _compare(check: Callable[[float, float], bool]) -> Callable[[str | None, JSON], bool]:
    def test(stored: str | None, f: JSON) -> bool:
        left, right = _comparable(stored), _comparable(str(f.get("value", "")))
        return left is not None and right is not None and check(left, right)
    return test


def _between(stored: str | None, f: JSON) -> bool:
    value = _comparable(stored)
    low, high = _comparable(str(f.get("value", ""))), _comparable(str(f.get("highValue", "")))
    return value is not None and low is not None and high is not None and low <= value <= high


OPERATORS: dict[str, Callable[[str | None, JSON], bool]] = {
    "EQ": _eq,
    "NEQ": lambda s, f: not _eq(s, f),
    "IN": _in,
    "NOT_IN": lambda s, f: not _in(s, f),
    "CONTAINS_TOKEN": _contains_token,
    "NOT_CONTAINS_TOKEN": lambda s, f: not _contains_token(s, f),
    "HAS_PROPERTY": lambda s, f: s is not None,
    "NOT_HAS_PROPERTY": lambda s, f: s is None,
    "LT": _compare(lambda a, b: a < b),
    "LTE": _compare(lambda a, b: a <= b),
    "GT": _compare(lambda a, b: a > b),
    "GTE": _compare(lambda a, b: a >= b),
    "BETWEEN": _between,
}


def _matches(state: HubSpotState, record: Record, f: JSON) -> bool:
    op = OPERATORS[f["operator"]]
    prop = str(f.get("propertyName", ""))
    if prop.startswith("associations."):  # search through associations: any linked id
        to_type = canonical_type(prop.split(".", 1)[1])
        ids = state.associated_ids(record.object_type, record.id, to_type) if to_type else []
        return any(op(i, f) for i in ids) if ids else op(None, f)
    return op(record.properties.get(prop), f)


def _check_search(body: JSON) -> tuple[list[list[JSON]], int, int]:
    groups = body.get("filterGroups") or []
    if not isinstance(groups, list) or len(groups) > SEARCH_MAX_GROUPS:
        raise bad_request(f"A search may have at most {SEARCH_MAX_GROUPS} filterGroups")
    filters = [g.get("filters") or [] for g in groups]
    if any(len(fs) > SEARCH_MAX_FILTERS_PER_GROUP for fs in filters) or \
            sum(map(len, filters)) > SEARCH_MAX_FILTERS:
        raise bad_request(f"A search may have at most {SEARCH_MAX_FILTERS_PER_GROUP} filters "
                          f"per group and {SEARCH_MAX_FILTERS} in total")
    unknown = sorted({str(f.get("operator")) for fs in filters for f in fs} - set(OPERATORS))
    if unknown:
        raise bad_request(f"Unknown operator(s): {', '.join(unknown)}")
    limit = body.get("limit", SEARCH_DEFAULT_LIMIT)
    after = str(body.get("after") or 0)
    if not isinstance(limit, int) or not 0 < limit <= SEARCH_MAX_LIMIT or not after.isdigit():
        raise bad_request(f"limit must be 1..{SEARCH_MAX_LIMIT} and after a paging token")
    if int(after) >= SEARCH_MAX_RESULTS:
        raise bad_request(f"Search results are limited to {SEARCH_MAX_RESULTS} per query")
    return filters, limit, int(after)


def _sort_key(record: Record, sorts: list[Any]) -> tuple[Any, ...]:
    """Sort by each ``sorts`` entry (``"-name"`` or ``{propertyName, direction}``), then id.

    Numbers and dates sort as numbers, text case-insensitively; missing values last.
    """
    key: list[Any] = []
    for s in sorts:
        name = s.lstrip("-") if isinstance(s, str) else s.get("propertyName", "")
        down = s.startswith("-") if isinstance(s, str) else s.get("direction") == "DESCENDING"
        raw = record.properties.get(name)
        num = _comparable(raw)
        value = (0, num, "") if num is not None else (1, 0.0, (raw or "").lower())
        key.append((raw is None, _Desc(value) if down else value))
    return (*key, int(record.id))


@dataclass(frozen=True)
class _Desc:
    """Inverts ordering for a DESCENDING sort of mixed-type keys."""

    value: Any

    def __lt__(self, other: _Desc) -> bool:
        return bool(other.value < self.value)


def search(state: HubSpotState, object_type: str, body: JSON) -> JSON:
    """``POST /crm/v3/objects/{type}/search``: OR between groups, AND within one."""
    groups, limit, offset = _check_search(body)
    with state.lock:
        live = [r for r in state.records[object_type].values() if not r.archived]
        hits = [r for r in live
                if not groups or any(all(_matches(state, r, f) for f in fs) for fs in groups)]
        hits.sort(key=lambda r: _sort_key(r, body.get("sorts") or []))
        page = hits[offset:offset + limit]
        answer: JSON = {"total": len(hits), "results": [
            object_json(state, r, body.get("properties")) for r in page]}
    if offset + limit < len(hits):
        answer["paging"] = {"next": {"after": str(offset + limit)}}
    return answer


# -- the Flask app -------------------------------------------------------------------
def create_app(state: HubSpotState | None = None) -> Flask:
    """A Flask app answering like ``https://api.hubapi.com`` for ``state``'s account."""
    state = state or HubSpotState()
    app = Flask(__name__)
    app.config["HUBSPOT_STATE"] = state

    def reply(body: JSON | str | None, status: int = 200,
              headers: dict[str, str] | None = None) -> Response:
        if isinstance(body, str):
            return Response(body, status, headers, content_type="text/html;charset=utf-8")
        text = "" if body is None else json.dumps(body)
        return Response(text, status, headers, content_type="application/json;charset=utf-8")

    def json_body() -> Any:
        try:
            return json.loads(request.get_data(as_text=True) or "null")
        except ValueError as exc:
            raise bad_request(f"Invalid input JSON on line {getattr(exc, 'lineno', 1)}, "
                              f"column {getattr(exc, 'colno', 1)}: {exc}") from None

    def object_type_of(name: str) -> str:
        canonical = canonical_type(name)
        if canonical is None:
            raise bad_request(f"Unable to infer object type from: {name}")
        return canonical

    @app.before_request
    def record_then_gate() -> Response | None:
        record_request(state)
        if state.slow_seconds:
            time.sleep(state.slow_seconds)
        failure = state.take_fault()
        if failure is not None:
            return reply(failure.body, failure.status, failure.headers)
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(),
                                                                 state.token.encode()):
            return reply(error_body(AUTH_MESSAGE, "INVALID_AUTHENTICATION"), 401)
        return None

    @app.errorhandler(HubSpotError)
    def hubspot_error(exc: HubSpotError) -> Response:
        return reply(exc.body, exc.status, exc.headers)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        return reply(error_body("resource not found" if exc.code == 404 else str(exc.description)),
                     exc.code or 500)

    @app.post("/crm/v3/objects/<type_name>")
    def create_object(type_name: str) -> Response:
        object_type, body = object_type_of(type_name), json_body()
        if not isinstance(body, dict):
            raise bad_request("Invalid input JSON: expected an object with 'properties'")
        record = state.create(object_type, body.get("properties", {}),
                              body.get("associations") or [])
        return reply(object_json(state, record, everything=True), 201)

    @app.get("/crm/v3/objects/<type_name>/<object_id>")
    def read_object(type_name: str, object_id: str) -> Response:
        object_type = object_type_of(type_name)
        record = state.find(object_type, object_id, request.args.get("idProperty"))
        if record is None:
            raise not_found(object_id)
        return reply(object_json(state, record, _csv("properties"),
                                 associations=_csv("associations")))

    @app.patch("/crm/v3/objects/<type_name>/<object_id>")
    def update_object(type_name: str, object_id: str) -> Response:
        object_type, body = object_type_of(type_name), json_body()
        record = state.find(object_type, object_id, request.args.get("idProperty"))
        if record is None:
            raise not_found(object_id)
        if not isinstance(body, dict):
            raise bad_request("Invalid input JSON: expected an object with 'properties'")
        state.update(record, body.get("properties", {}))
        return reply(object_json(state, record, everything=True))

    @app.post("/crm/v3/objects/<type_name>/search")
    def search_objects(type_name: str) -> Response:
        body = json_body()
        if not isinstance(body, dict):
            raise bad_request("Invalid input JSON: expected a search request object")
        return reply(search(state, object_type_of(type_name), body))

    @app.post("/crm/v3/objects/<type_name>/batch/read")
    def batch_read(type_name: str) -> Response:
        object_type, body = object_type_of(type_name), json_body()
        try:
            ids = [str(item["id"]) for item in body["inputs"]]
        except (KeyError, TypeError):
            raise bad_request("Invalid input JSON: expected {'inputs': [{'id': ...}]}") from None
        started = state.now()
        found = [state.find(object_type, i, body.get("idProperty")) for i in ids]
        answer: JSON = {"status": "COMPLETE", "results": [
            object_json(state, r, body.get("properties")) for r in found if r is not None],
            "startedAt": started, "completedAt": state.now()}
        missing = [i for i, r in zip(ids, found, strict=True) if r is None]
        if not missing:
            return reply(answer)
        answer |= {"numErrors": 1, "errors": [{
            "status": "error", "category": "OBJECT_NOT_FOUND", "context": {"ids": missing},
            "message": f"Could not get some {_SINGULAR[object_type].upper()} objects, they may "
                       "be deleted or not exist. Check that ids are valid."}]}
        return reply(answer, 207)

    def linked_pair(from_name: str, from_id: str, to_name: str, to_id: str | None = None
                    ) -> tuple[str, str]:
        from_type, to_type = object_type_of(from_name), object_type_of(to_name)
        if (from_type, to_type) not in ASSOCIATION_TYPE_IDS:
            raise bad_request(f"{from_type} cannot be associated with {to_type}")
        for object_type, object_id in ((from_type, from_id), (to_type, to_id)):
            if object_id is not None and state.find(object_type, object_id) is None:
                raise not_found(object_id)
        return from_type, to_type

    @app.get("/crm/v4/objects/<from_name>/<from_id>/associations/<to_name>")
    def list_associations(from_name: str, from_id: str, to_name: str) -> Response:
        from_type, to_type = linked_pair(from_name, from_id, to_name)
        limit = request.args.get("limit", str(V4_DEFAULT_LIMIT))
        after = request.args.get("after", "0")
        if not (limit.isdigit() and after.isdigit()):
            raise bad_request("limit and after must be numbers")
        ids = [i for i in state.associated_ids(from_type, from_id, to_type) if int(i) > int(after)]
        page = ids[:int(limit)]
        spec = [{"category": "HUBSPOT_DEFINED", "typeId": ASSOCIATION_TYPE_IDS[from_type, to_type],
                 "label": None}]
        body: JSON = {"results": [{"toObjectId": int(i), "associationTypes": spec} for i in page]}
        if len(ids) > len(page):
            body["paging"] = {"next": {"after": page[-1]}}
        return reply(body)

    @app.put("/crm/v4/objects/<from_name>/<from_id>/associations/default/<to_name>/<to_id>")
    def associate_default(from_name: str, from_id: str, to_name: str, to_id: str) -> Response:
        from_type, to_type = linked_pair(from_name, from_id, to_name, to_id)
        started = state.now()
        state.associate(from_type, from_id, to_type, to_id)
        return reply({"status": "COMPLETE", "results": [{
            "from": {"id": from_id}, "to": {"id": to_id},
            "associationSpec": {"associationCategory": "HUBSPOT_DEFINED",
                                "associationTypeId": ASSOCIATION_TYPE_IDS[from_type, to_type]}}],
            "startedAt": started, "completedAt": state.now()})

    @app.get("/crm/v3/pipelines/<type_name>")
    def list_pipelines(type_name: str) -> Response:
        return reply({"results": state.pipelines.get(object_type_of(type_name), [])})

    def pipeline(type_name: str, pipeline_id: str) -> JSON:
        for p in state.pipelines.get(object_type_of(type_name), []):
            if p["id"] == pipeline_id:
                return p
        raise HubSpotError(404, error_body(f"Unable to find pipeline {pipeline_id}",
                                           "OBJECT_NOT_FOUND"))

    @app.get("/crm/v3/pipelines/<type_name>/<pipeline_id>")
    def read_pipeline(type_name: str, pipeline_id: str) -> Response:
        return reply(pipeline(type_name, pipeline_id))

    @app.get("/crm/v3/pipelines/<type_name>/<pipeline_id>/stages")
    def list_stages(type_name: str, pipeline_id: str) -> Response:
        return reply({"results": pipeline(type_name, pipeline_id)["stages"]})

    @app.get("/crm/v3/properties/<type_name>")
    def list_properties(type_name: str) -> Response:
        defs = state.properties[object_type_of(type_name)].values()
        return reply({"results": [p.to_json(i) for i, p in enumerate(defs)]})

    @app.get("/crm/v3/properties/<type_name>/<name>")
    def read_property(type_name: str, name: str) -> Response:
        defs = state.properties[object_type_of(type_name)]
        if name not in defs:
            raise HubSpotError(404, error_body(f"Property {name} does not exist",
                                               "OBJECT_NOT_FOUND"))
        return reply(defs[name].to_json(list(defs).index(name)))

    return app
