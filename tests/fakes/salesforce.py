"""An in-memory, stateful fake of the Salesforce REST API and its OAuth token endpoint.

Why a fake: ``mappings/salesforce.yaml`` must be tested against something that
answers like Salesforce does -- same paths, status codes, error bodies, 18-character
ids and SOQL rules -- without an org, credentials or a network. Every behaviour
here follows Salesforce's reference documentation; the sources, and what could
not be confirmed, are listed in ``docs/vendors/salesforce-api.md``. Where the
documentation is silent the fake takes the *stricter* reading, so that a mapping
mistake fails here rather than in a customer's org.

Public API::

    state = SalesforceState(client_id=..., client_secret=..., refresh_token=...)
    app = create_app(state)                 # a Flask app; serve it on loopback
    state.seed("Contact", LastName="Doe")   # put records in place, returns the id
    state.issue_token()["access_token"]     # a live token without the HTTP dance
    state.expire_tokens()                   # next API call -> 401 INVALID_SESSION_ID
    state.fail_next(503, body, headers)     # the next API answer is this, verbatim
    state.slow_seconds = 9.0                # every answer is delayed
    state.requests                          # list[RecordedRequest], oldest first
    state.token_requests                    # calls to the token endpoint

Routes::

    POST  /services/oauth2/token                        client_credentials | refresh_token
    GET   /services/data/                               versions (no authentication)
    POST  /services/data/vXX.X/sobjects/{Object}/       create -> 201 {id, success, errors}
    GET   /services/data/vXX.X/sobjects/{Object}/{id}   read, optional ?fields=
    PATCH /services/data/vXX.X/sobjects/{Object}/{id}   update -> 204, no body
    GET   /services/data/vXX.X/sobjects/{Object}/describe
    GET   /services/data/vXX.X/query?q=SOQL             and /query/{locator} for more

Objects: Contact, Case, CaseComment, FeedItem. The SOQL dialect understood is
``SELECT f, ... FROM Object [WHERE cond] [ORDER BY f [ASC|DESC] [NULLS FIRST|LAST], ...]
[LIMIT n] [OFFSET n]`` where ``cond`` combines ``=, !=, <>, <, <=, >, >=, LIKE, IN,
NOT IN`` with ``AND``, ``OR``, ``NOT`` and parentheses -- mixing AND with OR
without parentheses is refused, as Salesforce refuses it. String literals follow
the documented backslash escapes; anything else is a 400 ``MALFORMED_QUERY``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any
from urllib.parse import parse_qs

from flask import Flask, Response, g, request
from werkzeug.exceptions import MethodNotAllowed, NotFound

JSON = dict[str, Any]
TOKEN_PATH = "/services/oauth2/token"
_API_PATH = re.compile(r"^/services/data/(v\d+\.\d)(?:/.*)?$")


# --------------------------------------------------------------------------- errors


class SalesforceError(Exception):
    """A refused API call, rendered the way Salesforce renders one.

    The body is always a JSON *array* of ``{"message", "errorCode"[, "fields"]}``;
    ``fields`` appears only for field-level errors, as in Salesforce's answers.
    """

    def __init__(self, status: int, code: str, message: str, fields: list[str] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.status, self.code, self.message, self.fields = status, code, message, fields

    def body(self) -> list[JSON]:
        return error_body(self.code, self.message, self.fields)


def error_body(code: str, message: str, fields: list[str] | None = None) -> list[JSON]:
    """One Salesforce error array; handy for ``fail_next`` (e.g. REQUEST_LIMIT_EXCEEDED)."""
    error: JSON = {"message": message, "errorCode": code}
    if fields is not None:
        error["fields"] = fields
    return [error]


def _not_found() -> SalesforceError:
    return SalesforceError(404, "NOT_FOUND", "The requested resource does not exist")


# --------------------------------------------------------------------------- ids

_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_SUFFIX = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
_ID_RE = re.compile(r"[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?")
# Key prefixes of the objects this fake knows or points at (Salesforce help 000385203).
PREFIXES = {"Account": "001", "Contact": "003", "User": "005", "Case": "500",
            "CaseComment": "00a", "FeedItem": "0D5"}


def id18(id15: str) -> str:
    """Append the 3-character case-safety suffix Salesforce adds to a 15-character id."""
    suffix = ""
    for start in (0, 5, 10):
        bits = sum(1 << i for i, ch in enumerate(id15[start:start + 5]) if "A" <= ch <= "Z")
        suffix += _SUFFIX[bits]
    return id15 + suffix


def _make_id(prefix: str, number: int) -> str:
    digits = ""
    while number:
        number, rest = divmod(number, 62)
        digits = _BASE62[rest] + digits
    return id18(prefix + "5g0000" + digits.rjust(6, "0"))


def _id15(value: str) -> str:
    """Ids compare on their first 15 characters: a 15- and an 18-character id are equal."""
    return value[:15] if _ID_RE.fullmatch(value) else value


# --------------------------------------------------------------------------- schema


@dataclass(frozen=True)
class FieldSpec:
    """One field as ``describe`` reports it; drives validation, SOQL and describe alike."""

    name: str
    label: str
    type: str  # describe type: id, reference, string, textarea, picklist, boolean, ...
    length: int = 0
    create: bool = True
    update: bool = True
    nillable: bool = True
    defaulted: bool = False
    filterable: bool = True
    sortable: bool = True
    picklist: tuple[str, ...] = ()
    default: Any = None  # the defaulted-on-create value (picklist default, False, ...)
    reference_to: tuple[str, ...] = ()
    auto_number: bool = False
    name_field: bool = False


@dataclass(frozen=True)
class ObjectSpec:
    name: str
    label: str
    plural: str
    fields: tuple[FieldSpec, ...]
    feed_enabled: bool = False

    @property
    def prefix(self) -> str:
        return PREFIXES[self.name]

    @cached_property
    def _by_name(self) -> dict[str, FieldSpec]:
        return {spec.name.lower(): spec for spec in self.fields}

    def field(self, name: str) -> FieldSpec | None:
        """Field names are case-insensitive in SOQL, bodies and ``?fields=``."""
        return self._by_name.get(name.lower())


AUDIT_FIELDS = ("CreatedDate", "CreatedById", "LastModifiedDate", "LastModifiedById")
_STRINGY = {"string", "textarea", "picklist", "email", "phone", "url", "id", "reference"}


def _ro(name: str, label: str, type_: str, length: int = 0, **kw: Any) -> FieldSpec:
    """A read-only, system-maintained field."""
    return FieldSpec(name, label, type_, length, create=False, update=False, **kw)


def _picklist(name: str, label: str, values: tuple[str, ...], default: str | None = None) -> FieldSpec:
    return FieldSpec(name, label, "picklist", 255, picklist=values, default=default,
                     defaulted=default is not None)


def _system(label: str, owner: bool) -> tuple[FieldSpec, ...]:
    user = ("User",)
    fields = [
        _ro("Id", f"{label} ID", "id", 18, nillable=False, defaulted=True),
        _ro("IsDeleted", "Deleted", "boolean", nillable=False, defaulted=True, default=False),
    ]
    if owner:
        fields.append(FieldSpec("OwnerId", "Owner ID", "reference", 18, nillable=False,
                                defaulted=True, reference_to=user))
    for name, lbl, type_ in (("CreatedDate", "Created Date", "datetime"),
                             ("CreatedById", "Created By ID", "reference"),
                             ("LastModifiedDate", "Last Modified Date", "datetime"),
                             ("LastModifiedById", "Last Modified By ID", "reference"),
                             ("SystemModstamp", "System Modstamp", "datetime")):
        fields.append(_ro(name, lbl, type_, 18 if type_ == "reference" else 0, nillable=False,
                          defaulted=True, reference_to=user if type_ == "reference" else ()))
    return tuple(fields)


# Case picklist values are the usual defaults of a new org; orgs change them, and
# the documentation does not list them -- see docs/vendors/salesforce-api.md.
CASE_STATUSES = ("New", "Working", "Escalated", "Closed")
CASE_PRIORITIES = ("High", "Medium", "Low")
CASE_ORIGINS = ("Phone", "Email", "Web")

OBJECTS: dict[str, ObjectSpec] = {spec.name.lower(): spec for spec in (
    ObjectSpec("Contact", "Contact", "Contacts", _system("Contact", owner=True) + (
        FieldSpec("AccountId", "Account ID", "reference", 18, reference_to=("Account",)),
        FieldSpec("LastName", "Last Name", "string", 80, nillable=False),
        FieldSpec("FirstName", "First Name", "string", 40),
        _picklist("Salutation", "Salutation", ("Mr.", "Ms.", "Mrs.", "Dr.", "Prof.")),
        _ro("Name", "Full Name", "string", 121, nillable=False, name_field=True),
        FieldSpec("Title", "Title", "string", 128),
        FieldSpec("Email", "Email", "email", 80),
        FieldSpec("Phone", "Business Phone", "phone", 40),
        FieldSpec("MobilePhone", "Mobile Phone", "phone", 40),
        FieldSpec("MailingStreet", "Mailing Street", "textarea", 255),
        FieldSpec("MailingCity", "Mailing City", "string", 40),
        FieldSpec("MailingState", "Mailing State/Province", "string", 80),
        FieldSpec("MailingPostalCode", "Mailing Zip/Postal Code", "string", 20),
        FieldSpec("MailingCountry", "Mailing Country", "string", 80),
        FieldSpec("Description", "Contact Description", "textarea", 32000,
                  filterable=False, sortable=False),
        FieldSpec("HasOptedOutOfEmail", "Email Opt Out", "boolean", nillable=False,
                  defaulted=True, default=False),
    ), feed_enabled=True),
    ObjectSpec("Case", "Case", "Cases", _system("Case", owner=True) + (
        _ro("CaseNumber", "Case Number", "string", 30, nillable=False, defaulted=True,
            auto_number=True, name_field=True),
        FieldSpec("ContactId", "Contact ID", "reference", 18, reference_to=("Contact",)),
        FieldSpec("AccountId", "Account ID", "reference", 18, reference_to=("Account",)),
        FieldSpec("SuppliedName", "Name", "string", 80),
        FieldSpec("SuppliedEmail", "Email Address", "email", 80),
        FieldSpec("SuppliedPhone", "Phone", "string", 40),
        _picklist("Status", "Status", CASE_STATUSES, "New"),
        _picklist("Priority", "Priority", CASE_PRIORITIES, "Medium"),
        _picklist("Origin", "Case Origin", CASE_ORIGINS),
        FieldSpec("Subject", "Subject", "string", 255),
        FieldSpec("Description", "Description", "textarea", 32000,
                  filterable=False, sortable=False),
        _ro("IsClosed", "Closed", "boolean", nillable=False, defaulted=True, default=False),
        _ro("ClosedDate", "Closed Date", "datetime"),
        FieldSpec("IsEscalated", "Escalated", "boolean", nillable=False, defaulted=True,
                  default=False),
    ), feed_enabled=True),
    ObjectSpec("CaseComment", "Case Comment", "Case Comments", _system("Case Comment", owner=False) + (
        FieldSpec("ParentId", "Parent ID", "reference", 18, update=False, nillable=False,
                  reference_to=("Case",)),
        FieldSpec("CommentBody", "Body", "textarea", 4000),
        FieldSpec("IsPublished", "Published", "boolean", nillable=False, defaulted=True,
                  default=False),
    )),
    ObjectSpec("FeedItem", "Feed Item", "Feed Items", _system("Feed Item", owner=False) + (
        FieldSpec("ParentId", "Parent ID", "reference", 18, update=False, nillable=False,
                  reference_to=("Case", "Contact", "Account", "User")),
        FieldSpec("Type", "Feed Item Type", "picklist", 40, update=False, defaulted=True,
                  picklist=("TextPost", "LinkPost", "ContentPost")),
        FieldSpec("Body", "Body", "textarea", 10000),
        FieldSpec("Title", "Title", "string", 255),
        FieldSpec("LinkUrl", "Link URL", "url", 1000),
        FieldSpec("IsRichText", "Is Rich Text", "boolean", nillable=False, defaulted=True,
                  default=False),
        _ro("InsertedById", "InsertedBy ID", "reference", 18, reference_to=("User",)),
        _ro("CommentCount", "Comment Count", "int", nillable=False, defaulted=True, default=0),
        _ro("LikeCount", "Like Count", "int", nillable=False, defaulted=True, default=0),
    )),
)}


def object_spec(name: str) -> ObjectSpec | None:
    """sObject names are case-insensitive in paths and in SOQL."""
    return OBJECTS.get(name.lower())


# --------------------------------------------------------------------------- SOQL


class SoqlError(Exception):
    """A query Salesforce refuses; ``pos`` is the 0-based offset the caret points at."""

    def __init__(self, pos: int, detail: str, code: str = "MALFORMED_QUERY") -> None:
        super().__init__(detail)
        self.pos, self.detail, self.code = pos, detail, code

    def to_api_error(self, text: str) -> SalesforceError:
        """Salesforce quotes the query, draws a caret and names row and column."""
        message = (f"\n{text}\n{' ' * self.pos}^\n"
                   f"ERROR at Row:1:Column:{self.pos + 1}\n{self.detail}")
        return SalesforceError(400, self.code, message)


@dataclass(frozen=True)
class Literal:
    """A value in a WHERE clause. ``like`` is the regex a LIKE pattern compiles to."""

    kind: str  # string, number, boolean, null, date, datetime
    value: Any
    pos: int
    like: str | None = None
    like_escapes: bool = False  # a \\% or \\_ was used: legal in LIKE only


@dataclass(frozen=True)
class Comparison:
    field: str
    op: str  # =, !=, <, <=, >, >=, LIKE, IN, NOT IN
    value: Literal | tuple[Literal, ...]
    pos: int


@dataclass(frozen=True)
class Logical:
    op: str  # AND | OR
    parts: tuple[Condition, ...]


@dataclass(frozen=True)
class Not:
    part: Condition


Condition = Comparison | Logical | Not


@dataclass(frozen=True)
class FieldRef:
    name: str
    pos: int


@dataclass(frozen=True)
class OrderItem:
    field: FieldRef
    descending: bool = False
    nulls_last: bool = False


@dataclass(frozen=True)
class SoqlQuery:
    """A parsed query; recorded on the request so tests can see what was asked."""

    text: str
    fields: tuple[FieldRef, ...]
    sobject: FieldRef
    where: Condition | None
    order_by: tuple[OrderItem, ...]
    limit: int | None
    offset: int | None

    @property
    def field_names(self) -> list[str]:
        return [ref.name for ref in self.fields]


@dataclass(frozen=True)
class _Token:
    kind: str  # word, literal, op, punct, eof
    text: str
    pos: int
    literal: Literal | None = None


# Quoted-string escapes (SOQL and SOSL Reference, "Quoted String Escape Sequences").
_ESCAPES = {"n": "\n", "N": "\n", "r": "\r", "R": "\r", "t": "\t", "T": "\t",
            "b": "\b", "B": "\b", "f": "\f", "F": "\f", '"': '"', "'": "'", "\\": "\\"}
_DATETIME_RE = re.compile(
    r"\d{4}-\d{2}-\d{2}(?:T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2}))?")
_NUMBER_RE = re.compile(r"[+-]?\d+(?:\.\d+)?")
_WORD_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_OPERATORS = ("<=", ">=", "!=", "<>", "=", "<", ">")
_RESERVED = {"SELECT", "FROM", "WHERE", "AND", "OR", "NOT", "LIKE", "IN", "ORDER", "BY",
             "LIMIT", "OFFSET", "NULL", "TRUE", "FALSE", "ASC", "DESC", "NULLS"}
_UNSUPPORTED = {"GROUP", "HAVING", "WITH", "FOR", "TYPEOF", "USING", "INCLUDES", "EXCLUDES"}


def _lex_string(text: str, start: int) -> tuple[_Token, int]:
    """Read one single-quoted literal, decoding escapes and building its LIKE regex."""
    value: list[str] = []
    pattern: list[str] = []
    like_escapes = False
    i = start + 1
    while i < len(text):
        ch = text[i]
        if ch == "'":
            literal = Literal("string", "".join(value), start, "".join(pattern), like_escapes)
            return _Token("literal", text[start:i + 1], start, literal), i + 1
        if ch == "\\":
            nxt = text[i + 1:i + 2]
            hex4 = text[i + 2:i + 6]
            if nxt in _ESCAPES:
                decoded, i = _ESCAPES[nxt], i + 2
            elif nxt in ("%", "_"):
                decoded, i, like_escapes = nxt, i + 2, True
            elif nxt == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", hex4):
                decoded, i = chr(int(hex4, 16)), i + 6
            else:
                raise SoqlError(i, f"Invalid string literal: illegal escape sequence '\\{nxt}'")
            value.append(decoded)
            pattern.append(re.escape(decoded))
            continue
        value.append(ch)
        pattern.append(".*" if ch == "%" else "." if ch == "_" else re.escape(ch))
        i += 1
    raise SoqlError(start, "Invalid string literal: missing closing quote")


def _lex(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch.isspace():
            i += 1
            continue
        if ch == "'":
            token, i = _lex_string(text, i)
            tokens.append(token)
            continue
        if match := _DATETIME_RE.match(text, i):
            kind = "datetime" if "T" in match.group() else "date"
            literal = Literal(kind, datetime.fromisoformat(match.group()), i)
            tokens.append(_Token("literal", match.group(), i, literal))
        elif match := _NUMBER_RE.match(text, i):
            literal = Literal("number", float(match.group()), i)
            tokens.append(_Token("literal", match.group(), i, literal))
        elif match := _WORD_RE.match(text, i):
            tokens.append(_Token("word", match.group(), i))
        elif op := next((op for op in _OPERATORS if text.startswith(op, i)), None):
            tokens.append(_Token("op", op, i))
            i += len(op)
            continue
        elif ch in "(),":
            tokens.append(_Token("punct", ch, i))
            i += 1
            continue
        else:
            raise SoqlError(i, f"unexpected token: '{ch}'")
        i = match.end()
    tokens.append(_Token("eof", "", len(text)))
    return tokens


class _Parser:
    """Recursive descent over the subset of SOQL the mappings use."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _lex(text)
        self.i = 0

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def take(self) -> _Token:
        token = self.tokens[self.i]
        self.i += 1
        return token

    def at(self, *words: str) -> bool:
        token = self.peek()
        return token.kind == "word" and token.text.upper() in words

    def at_punct(self, ch: str) -> bool:
        return self.peek().kind == "punct" and self.peek().text == ch

    def unexpected(self) -> SoqlError:
        token = self.peek()
        if token.kind == "word" and token.text.upper() in _UNSUPPORTED:
            return SoqlError(token.pos, f"{token.text.upper()} is valid SOQL but this fake "
                                        "does not support it; extend tests/fakes/salesforce.py")
        shown = "<EOF>" if token.kind == "eof" else token.text
        return SoqlError(token.pos, f"unexpected token: '{shown}'")

    def expect(self, word: str) -> None:
        if not self.at(word):
            raise self.unexpected()
        self.take()

    def name(self) -> FieldRef:
        token = self.peek()
        if token.kind != "word" or token.text.upper() in _RESERVED | _UNSUPPORTED:
            raise self.unexpected()
        self.take()
        if self.at_punct("("):
            raise SoqlError(token.pos, f"function {token.text}() is valid SOQL but this fake "
                                       "does not support it")
        return FieldRef(token.text, token.pos)

    def parse(self) -> SoqlQuery:
        self.expect("SELECT")
        fields = [self.name()]
        while self.at_punct(","):
            self.take()
            fields.append(self.name())
        self.expect("FROM")
        sobject = self.name()
        where = None
        if self.at("WHERE"):
            self.take()
            where = self.condition()
        order: list[OrderItem] = []
        if self.at("ORDER"):
            self.take()
            self.expect("BY")
            order.append(self.order_item())
            while self.at_punct(","):
                self.take()
                order.append(self.order_item())
        limit = self.count("LIMIT")
        offset = self.count("OFFSET")
        if self.peek().kind != "eof":
            raise self.unexpected()
        return SoqlQuery(self.text, tuple(fields), sobject, where, tuple(order), limit, offset)

    def count(self, word: str) -> int | None:
        if not self.at(word):
            return None
        self.take()
        token = self.peek()
        if token.literal is None or token.literal.kind != "number" or not token.text.isdigit():
            raise self.unexpected()
        self.take()
        return int(token.text)

    def order_item(self) -> OrderItem:
        ref = self.name()
        descending = False
        if self.at("ASC", "DESC"):
            descending = self.take().text.upper() == "DESC"
        nulls_last = False
        if self.at("NULLS"):
            self.take()
            if not self.at("FIRST", "LAST"):
                raise self.unexpected()
            nulls_last = self.take().text.upper() == "LAST"
        return OrderItem(ref, descending, nulls_last)

    def condition(self) -> Condition:
        """``a AND b AND c`` or ``a OR b``; mixing needs parentheses (Logical Operators)."""
        parts = [self.unary()]
        op: str | None = None
        while self.at("AND", "OR"):
            word = self.peek().text.upper()
            if op is not None and word != op:
                raise self.unexpected()
            op = word
            self.take()
            parts.append(self.unary())
        return parts[0] if op is None else Logical(op, tuple(parts))

    def unary(self) -> Condition:
        if self.at("NOT"):
            self.take()
            return Not(self.unary())
        if self.at_punct("("):
            self.take()
            inner = self.condition()
            if not self.at_punct(")"):
                raise self.unexpected()
            self.take()
            return inner
        return self.comparison()

    def comparison(self) -> Comparison:
        ref = self.name()
        token = self.peek()
        if self.at("NOT"):
            self.take()
            self.expect("IN")
            op = "NOT IN"
        elif self.at("LIKE", "IN"):
            op = self.take().text.upper()
        elif token.kind == "op":
            op = "!=" if token.text == "<>" else token.text
            self.take()
        else:
            raise self.unexpected()
        value: Literal | tuple[Literal, ...]
        if op in ("IN", "NOT IN"):
            if not self.at_punct("("):
                raise self.unexpected()
            self.take()
            items = [self.literal()]
            while self.at_punct(","):
                self.take()
                items.append(self.literal())
            if not self.at_punct(")"):
                raise self.unexpected()
            self.take()
            value = tuple(items)
        else:
            value = self.literal()
        for item in value if isinstance(value, tuple) else (value,):
            if item.like_escapes and op != "LIKE":
                raise SoqlError(item.pos, "Invalid string literal: \\% and \\_ are escapes "
                                          "for LIKE expressions only")
        return Comparison(ref.name, op, value, ref.pos)

    def literal(self) -> Literal:
        token = self.peek()
        if token.literal is not None:
            self.take()
            return token.literal
        if self.at("NULL"):
            return Literal("null", None, self.take().pos)
        if self.at("TRUE", "FALSE"):
            word = self.take()
            return Literal("boolean", word.text.upper() == "TRUE", word.pos)
        raise self.unexpected()


def parse_soql(text: str) -> SoqlQuery:
    """Parse one query or raise :class:`SoqlError` (400 MALFORMED_QUERY)."""
    return _Parser(text).parse()


def _query_field(spec: ObjectSpec, ref: FieldRef) -> FieldSpec:
    if "." in ref.name:
        raise SoqlError(ref.pos, f"relationship path '{ref.name}' is valid SOQL but this "
                                 "fake does not support it", "INVALID_FIELD")
    found = spec.field(ref.name)
    if found is None:
        raise SoqlError(ref.pos, f"No such column '{ref.name}' on entity '{spec.name}'. If you "
                                 "are attempting to use a custom field, be sure to append the "
                                 "'__c' after the custom field name. Please reference your WSDL "
                                 "or the describe call for the appropriate names.",
                        "INVALID_FIELD")
    return found


def _check_condition(spec: ObjectSpec, cond: Condition) -> None:
    """Refuse filters Salesforce refuses: unknown or unfilterable fields, mistyped values."""
    if isinstance(cond, Logical):
        for part in cond.parts:
            _check_condition(spec, part)
        return
    if isinstance(cond, Not):
        _check_condition(spec, cond.part)
        return
    found = _query_field(spec, FieldRef(cond.field, cond.pos))
    if not found.filterable:
        raise SoqlError(cond.pos, f"field '{found.name}' can not be filtered in a query call",
                        "INVALID_FIELD")
    if cond.op == "LIKE" and found.type not in _STRINGY - {"id", "reference"}:
        raise SoqlError(cond.pos, f"invalid operator on {found.type} field",
                        "INVALID_QUERY_FILTER_OPERATOR")
    wanted = {"boolean": ("boolean",), "datetime": ("datetime",), "int": ("number",),
              "double": ("number",)}.get(found.type, ("string",))
    for item in cond.value if isinstance(cond.value, tuple) else (cond.value,):
        if item.kind != "null" and item.kind not in wanted:
            quoted = "be enclosed" if wanted == ("string",) else "not be enclosed"
            raise SoqlError(item.pos, f"value of filter criterion for field '{found.name}' must "
                                      f"be of type {found.type} and should {quoted} in quotes",
                            "INVALID_QUERY_FILTER_OPERATOR")
        if found.type in ("id", "reference") and item.kind == "string" \
                and not _ID_RE.fullmatch(item.value):
            raise SoqlError(item.pos, f"invalid ID field: {item.value}",
                            "INVALID_QUERY_FILTER_OPERATOR")


def _sortable(spec: FieldSpec, value: Any) -> Any:
    if spec.type == "datetime":
        return datetime.fromisoformat(value)
    return value.casefold() if isinstance(value, str) else value


def _equal(spec: FieldSpec, actual: Any, literal: Literal) -> bool:
    if literal.kind == "null" or actual is None:
        return literal.kind == "null" and actual is None
    if spec.type in ("id", "reference"):
        return _id15(actual) == _id15(literal.value)
    if spec.type == "datetime":
        return datetime.fromisoformat(actual) == literal.value
    if isinstance(actual, str):
        return actual.casefold() == literal.value.casefold()  # case-insensitive (docs)
    return actual == literal.value


def _matches(spec: ObjectSpec, cond: Condition, record: JSON) -> bool:
    if isinstance(cond, Logical):
        results = (_matches(spec, part, record) for part in cond.parts)
        return all(results) if cond.op == "AND" else any(results)
    if isinstance(cond, Not):
        return not _matches(spec, cond.part, record)
    found = spec.field(cond.field)
    assert found is not None  # checked before evaluation
    actual = record.get(found.name)
    if cond.op in ("IN", "NOT IN"):
        hit = any(_equal(found, actual, item) for item in cond.value)  # type: ignore[union-attr]
        return hit if cond.op == "IN" else not hit
    literal = cond.value
    assert isinstance(literal, Literal)
    if cond.op == "=":
        return _equal(found, actual, literal)
    if cond.op == "!=":
        return not _equal(found, actual, literal)
    if actual is None or literal.value is None:
        return False
    if cond.op == "LIKE":
        return re.fullmatch(literal.like or "", str(actual), re.IGNORECASE | re.DOTALL) is not None
    left, right = _sortable(found, actual), literal.value
    right = right.casefold() if isinstance(right, str) else right
    return {"<": left < right, "<=": left <= right, ">": left > right, ">=": left >= right}[cond.op]


def run_query(query: SoqlQuery, records: list[JSON]) -> tuple[ObjectSpec, list[JSON]]:
    """Check the query against the schema, then filter, order, skip and limit ``records``."""
    spec = object_spec(query.sobject.name)
    if spec is None:
        raise SoqlError(query.sobject.pos, f"sObject type '{query.sobject.name}' is not "
                        "supported. If you are attempting to use a custom object, be sure to "
                        "append the '__c' after the entity name. Please reference your WSDL or "
                        "the describe call for the appropriate names.", "INVALID_TYPE")
    for ref in query.fields:
        _query_field(spec, ref)
    if query.where is not None:
        _check_condition(spec, query.where)
    rows = [rec for rec in records if query.where is None or _matches(spec, query.where, rec)]
    for item in reversed(query.order_by):
        found = _query_field(spec, item.field)
        if not found.sortable:
            raise SoqlError(item.field.pos, f"field '{found.name}' can not be sorted in a query "
                                            "call", "INVALID_FIELD")
        # Nulls sort first by default (ORDER BY docs); the rank flips with DESC.
        null_rank = 1 if (not item.nulls_last) == item.descending else 0

        def key(rec: JSON, found: FieldSpec = found, null_rank: int = null_rank) -> tuple[int, Any]:
            value = rec.get(found.name)
            return (null_rank, 0) if value is None else (1 - null_rank, _sortable(found, value))

        rows.sort(key=key, reverse=item.descending)
    start = query.offset or 0
    end = None if query.limit is None else start + query.limit
    return spec, rows[start:end]


# --------------------------------------------------------------------------- state


@dataclass
class RecordedRequest:
    """One request exactly as it arrived; ``soql`` is set for query calls that parsed."""

    method: str
    path: str
    query_string: str
    args: dict[str, list[str]]
    headers: dict[str, str]
    body: str
    soql: SoqlQuery | None = None

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), None)

    @property
    def json(self) -> Any:
        try:
            return json.loads(self.body) if self.body else None
        except ValueError:
            return None

    @property
    def form(self) -> dict[str, list[str]]:
        return parse_qs(self.body, keep_blank_values=True)


@dataclass
class _Failure:
    status: int
    body: Any
    headers: dict[str, str]
    target: str


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _sf_datetime(moment: datetime) -> str:
    """Salesforce writes datetimes in UTC as ``2024-01-15T10:30:00.000+0000``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000+0000")


@dataclass
class SalesforceState:
    """One org: its credentials, records, knobs, and everything it was asked."""

    client_id: str = "fake-consumer-key"
    client_secret: str = "fake-consumer-secret"
    refresh_token: str = "fake-refresh-token"
    instance_url: str | None = None  # None: the URL the fake is served on
    org_id: str = id18("00D5g0000000001")
    user_id: str = id18("0055g0000000001")
    client_credentials_enabled: bool = True  # False: "no client credentials user enabled"
    min_api_version: float = 31.0  # versions 21.0-30.0 are retired
    max_api_version: float = 67.0
    slow_seconds: float = 0.0
    api_limit: int | None = None  # calls allowed before 403 REQUEST_LIMIT_EXCEEDED
    query_batch_size: int = 2000
    restricted_picklists: bool = False
    # "Set Audit Fields upon Record Creation" / "Insert System Field Values for Chatter
    # Feeds": CreatedDate and CreatedById become createable
    audit_fields_createable: bool = False
    closed_statuses: frozenset[str] = frozenset({"Closed"})  # CaseStatus.IsClosed
    next_case_number: int = 1001
    now: Callable[[], datetime] = _utc_now
    requests: list[RecordedRequest] = field(default_factory=list)
    token_requests: int = 0
    api_calls: int = 0
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    _tokens: set[str] = field(default_factory=set, repr=False)
    _failures: list[_Failure] = field(default_factory=list, repr=False)
    _records: dict[str, dict[str, JSON]] = field(default_factory=dict, repr=False)
    _cursors: dict[str, tuple[list[JSON], int]] = field(default_factory=dict, repr=False)
    _serial: Iterator[int] = field(default_factory=lambda: itertools.count(1), repr=False)

    # -- knobs ---------------------------------------------------------------

    def expire_tokens(self) -> None:
        """Every token issued so far stops working, as when a session times out."""
        with self.lock:
            self._tokens.clear()

    def fail_next(self, status: int, body: Any = None, headers: dict[str, str] | None = None,
                  *, target: str = "api") -> None:
        """Answer the next request to ``target`` ("api", "token" or "any") with this.

        ``body`` is sent as JSON unless it is ``str``/``bytes`` (sent verbatim) or None
        (empty). Failures queue up and are used oldest first.
        """
        with self.lock:
            self._failures.append(_Failure(status, body, dict(headers or {}), target))

    def issue_token(self, instance_url: str | None = None, scope: str = "api") -> JSON:
        """A live token response, as the token endpoint would return it."""
        base = self.instance_url or instance_url or "https://fake.my.salesforce.com"
        identity = f"{base}/id/{self.org_id}/{self.user_id}"
        issued_at = str(int(self.now().timestamp() * 1000))
        # signature: HMAC-SHA256 of id + issued_at keyed with the consumer secret, base64
        digest = hmac.new(self.client_secret.encode(), (identity + issued_at).encode(),
                          hashlib.sha256).digest()
        token = f"{self.org_id[:15]}!AQ{secrets.token_urlsafe(48)}"
        with self.lock:
            self._tokens.add(token)
        return {"access_token": token, "signature": base64.b64encode(digest).decode(),
                "scope": scope, "instance_url": base, "id": identity, "token_type": "Bearer",
                "issued_at": issued_at}

    # -- records -------------------------------------------------------------

    def seed(self, sobject: str, **values: Any) -> str:
        """Insert a record directly, bypassing HTTP and write permissions (e.g. CreatedDate)."""
        spec = _require_object(sobject)
        with self.lock:
            fields = [(_require_field(spec, key), value) for key, value in values.items()]
            return _insert(self, spec, {f.name: _coerce(self, f, v) for f, v in fields})

    def records(self, sobject: str) -> list[JSON]:
        """Copies of every record of one object, oldest first."""
        spec = _require_object(sobject)
        with self.lock:
            return [dict(rec) for rec in self._records.get(spec.name, {}).values()]

    def get(self, sobject: str, record_id: str) -> JSON | None:
        spec = _require_object(sobject)
        with self.lock:
            found = _find(self, spec, record_id)
            return dict(found) if found is not None else None

    @property
    def api_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.startswith("/services/data/")]

    # -- internals -----------------------------------------------------------

    def _take_failure(self, target: str) -> _Failure | None:
        with self.lock:
            for i, failure in enumerate(self._failures):
                if failure.target in (target, "any"):
                    return self._failures.pop(i)
        return None


def _require_object(name: str) -> ObjectSpec:
    spec = object_spec(name)
    if spec is None:
        raise KeyError(f"the Salesforce fake has no sObject {name!r}; known: "
                       f"{', '.join(s.name for s in OBJECTS.values())}")
    return spec


def _require_field(spec: ObjectSpec, name: str) -> FieldSpec:
    found = spec.field(name)
    if found is None:
        raise KeyError(f"{spec.name} has no field {name!r} in the Salesforce fake")
    return found


def _find(state: SalesforceState, spec: ObjectSpec, record_id: str) -> JSON | None:
    table = state._records.get(spec.name, {})
    if len(record_id) == 18:
        return table.get(record_id)
    if len(record_id) == 15:
        return next((rec for rid, rec in table.items() if rid[:15] == record_id), None)
    return None


# --------------------------------------------------------------------------- writes


def _writable(state: SalesforceState, spec: FieldSpec, creating: bool) -> bool:
    if creating and state.audit_fields_createable and spec.name in AUDIT_FIELDS:
        return True
    return spec.create if creating else spec.update


def _type_error(spec: FieldSpec, value: Any) -> SalesforceError:
    kind = {bool: "VALUE_TRUE" if value else "VALUE_FALSE", str: "VALUE_STRING",
            int: "VALUE_NUMBER_INT", float: "VALUE_NUMBER_FLOAT", list: "START_ARRAY",
            dict: "START_OBJECT"}.get(type(value), "VALUE")
    return SalesforceError(400, "JSON_PARSER_ERROR", f"Cannot deserialize instance of "
                           f"{spec.type} from {kind} value {value!r} or request may be missing "
                           f"a required field ({spec.name})")


def _coerce(state: SalesforceState, spec: FieldSpec, value: Any) -> Any:
    """Validate one value for one field and return what Salesforce would store."""
    if value is None:
        return None
    if spec.type == "boolean":
        if not isinstance(value, bool):
            raise _type_error(spec, value)
        return value
    if spec.type == "datetime":
        if isinstance(value, datetime):
            return _sf_datetime(value)
        try:
            return _sf_datetime(datetime.fromisoformat(value))
        except (TypeError, ValueError):
            raise _type_error(spec, value) from None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _type_error(spec, value)
    text = str(value)
    if spec.type in ("id", "reference"):
        return _reference(state, spec, text)
    if spec.length and len(text) > spec.length:
        raise SalesforceError(400, "STRING_TOO_LONG", f"{spec.label}: data value too large: "
                              f"{text[:60]} (max length={spec.length})", [spec.name])
    if spec.type == "email" and not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", text):
        raise SalesforceError(400, "INVALID_EMAIL_ADDRESS",
                              f"{spec.label}: invalid email address: {text}", [spec.name])
    if spec.picklist and state.restricted_picklists and text not in spec.picklist:
        raise SalesforceError(400, "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                              f"{spec.label}: bad value for restricted picklist field: {text}",
                              [spec.name])
    return text


def _reference(state: SalesforceState, spec: FieldSpec, text: str) -> str:
    """A lookup must be a well-formed id, of a target type, that exists."""
    message = f"{spec.label}: id value of incorrect type: {text}"
    if not _ID_RE.fullmatch(text):
        raise SalesforceError(400, "MALFORMED_ID", message, [spec.name])
    targets = [t for t in spec.reference_to if PREFIXES.get(t) == text[:3]]
    if not targets:
        raise SalesforceError(400, "FIELD_INTEGRITY_EXCEPTION", message, [spec.name])
    full = text if len(text) == 18 else id18(text)
    target = object_spec(targets[0])
    if targets[0] == "User":
        exists = _id15(full) == _id15(state.user_id)
    elif target is None:  # objects the fake does not model (Account): trust the id
        exists = True
    else:
        exists = _find(state, target, full) is not None
    if not exists:
        raise SalesforceError(400, "INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id",
                              [spec.name])
    return full


def _validate(state: SalesforceState, spec: ObjectSpec, body: Any,
              existing: JSON | None) -> JSON:
    """Check a create (``existing`` None) or update body; return accepted canonical values."""
    if not isinstance(body, dict):
        kind = "START_ARRAY" if isinstance(body, list) else "VALUE"
        raise SalesforceError(400, "JSON_PARSER_ERROR",
                              f"Cannot deserialize instance of {spec.name} from {kind} value")
    creating = existing is None
    values: JSON = {}
    locked: list[str] = []
    for key, value in body.items():
        if key == "attributes":
            continue
        found = spec.field(key)
        if found is None:
            raise SalesforceError(400, "INVALID_FIELD",
                                  f"No such column '{key}' on sobject of type {spec.name}")
        if found.name == "Id":
            raise SalesforceError(400, "INVALID_FIELD",
                                  "The Id field should not be specified in the sobject data.")
        if not _writable(state, found, creating):
            locked.append(found.name)
            continue
        values[found.name] = _coerce(state, found, value)
    if locked:
        raise SalesforceError(400, "INVALID_FIELD_FOR_INSERT_UPDATE",
                              f"Unable to create/update fields: {', '.join(locked)}. Please check "
                              "the security settings of this field and verify that it is "
                              "read/write for your profile or permission set.", locked)
    merged = {**(existing or {}), **values}
    missing = [f.name for f in spec.fields if not f.nillable and not f.defaulted
               and _writable(state, f, creating) and merged.get(f.name) is None
               and (creating or f.name in values)]
    if spec.name == "FeedItem" and creating:
        post_type = merged.get("Type") or ("LinkPost" if merged.get("LinkUrl") else "TextPost")
        needed = {"TextPost": "Body", "LinkPost": "LinkUrl"}.get(post_type)
        if needed and not merged.get(needed):
            missing.append(needed)
    if missing:
        raise SalesforceError(400, "REQUIRED_FIELD_MISSING",
                              f"Required fields are missing: [{', '.join(missing)}]", missing)
    return values


def _derive(state: SalesforceState, spec: ObjectSpec, record: JSON, creating: bool) -> None:
    """Fields Salesforce computes: Contact.Name, Case number and closure, FeedItem type."""
    if spec.name == "Contact":
        record["Name"] = " ".join(p for p in (record.get("FirstName"), record.get("LastName")) if p)
    elif spec.name == "Case":
        if creating and record.get("CaseNumber") is None:
            record["CaseNumber"] = f"{state.next_case_number:08d}"
            state.next_case_number += 1
        record["IsClosed"] = record.get("Status") in state.closed_statuses
        if not record["IsClosed"]:
            record["ClosedDate"] = None
        elif record.get("ClosedDate") is None:
            record["ClosedDate"] = record["LastModifiedDate"]
    elif spec.name == "FeedItem" and creating:
        if record.get("Type") is None:
            record["Type"] = "LinkPost" if record.get("LinkUrl") else "TextPost"
        record["InsertedById"] = state.user_id


def _insert(state: SalesforceState, spec: ObjectSpec, values: JSON) -> str:
    record_id = _make_id(spec.prefix, next(state._serial))
    now = _sf_datetime(state.now())
    record: JSON = {f.name: f.default for f in spec.fields}
    record.update(Id=record_id, CreatedDate=now, CreatedById=state.user_id,
                  LastModifiedDate=now, LastModifiedById=state.user_id, SystemModstamp=now)
    if "OwnerId" in record:
        record["OwnerId"] = state.user_id
    record.update(values)
    _derive(state, spec, record, creating=True)
    state._records.setdefault(spec.name, {})[record_id] = record
    return record_id


def _update(state: SalesforceState, spec: ObjectSpec, record: JSON, values: JSON) -> None:
    record.update(values)
    now = _sf_datetime(state.now())
    record.update(LastModifiedDate=now, LastModifiedById=state.user_id, SystemModstamp=now)
    _derive(state, spec, record, creating=False)


# --------------------------------------------------------------------------- rendering


def _render(spec: ObjectSpec, record: JSON, version: str, names: list[str] | None = None) -> JSON:
    out: JSON = {"attributes": {"type": spec.name,
                                "url": f"/services/data/{version}/sobjects/{spec.name}/{record['Id']}"}}
    for name in names if names is not None else [f.name for f in spec.fields]:
        out[name] = record.get(name)
    return out


_SOAP_TYPES = {"id": "tns:ID", "reference": "tns:ID", "boolean": "xsd:boolean",
               "datetime": "xsd:dateTime", "int": "xsd:int", "double": "xsd:double"}


def describe(state: SalesforceState, spec: ObjectSpec, version: str) -> JSON:
    """The sObject Describe answer, reduced to the keys a mapping reads."""
    base = f"/services/data/{version}/sobjects/{spec.name}"
    fields = []
    for f in spec.fields:
        fields.append({
            "name": f.name, "label": f.label, "type": f.type,
            "soapType": _SOAP_TYPES.get(f.type, "xsd:string"), "length": f.length,
            "nillable": f.nillable, "createable": _writable(state, f, True),
            "updateable": f.update, "defaultedOnCreate": f.defaulted,
            "defaultValue": f.default if f.type == "boolean" else None,
            "autoNumber": f.auto_number, "calculated": False, "custom": False,
            "filterable": f.filterable, "sortable": f.sortable, "groupable": f.filterable,
            "idLookup": f.type == "id" or f.auto_number, "nameField": f.name_field,
            "unique": False, "externalId": False,
            "restrictedPicklist": bool(f.picklist) and state.restricted_picklists,
            "dependentPicklist": False,
            "picklistValues": [{"active": True, "defaultValue": value == f.default,
                                "label": value, "validFor": None, "value": value}
                               for value in f.picklist],
            "referenceTo": list(f.reference_to),
            "relationshipName": (f.name[:-2] if f.type == "reference" and f.name.endswith("Id")
                                 else None),
        })
    return {"name": spec.name, "label": spec.label, "labelPlural": spec.plural,
            "keyPrefix": spec.prefix, "custom": False, "createable": True, "updateable": True,
            "deletable": True, "queryable": True, "retrieveable": True, "searchable": True,
            "feedEnabled": spec.feed_enabled,
            "urls": {"sobject": base, "describe": f"{base}/describe", "rowTemplate": f"{base}/{{ID}}"},
            "fields": fields}


def _version_label(number: int) -> str:
    """v60.0 is Spring '24; three releases a year (Spring, Summer, Winter of the next year)."""
    step = number - 60
    return f"{('Spring', 'Summer', 'Winter')[step % 3]} '{24 + (step + 1) // 3}"


# --------------------------------------------------------------------------- HTTP


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    response = Response(json.dumps(payload), status, mimetype="application/json")
    response.headers.update(headers or {})
    return response


def _canned(failure: _Failure) -> Response:
    if failure.body is None:
        response = Response(b"", failure.status)
    elif isinstance(failure.body, (str, bytes)):
        response = Response(failure.body, failure.status)
    else:
        return _json(failure.body, failure.status, failure.headers)
    response.headers.update(failure.headers)
    return response


def _oauth_error(error: str, description: str, status: int = 400) -> Response:
    return _json({"error": error, "error_description": description}, status)


def _request_body() -> Any:
    """Salesforce reads JSON bodies only; any other Content-Type is 415."""
    if request.mimetype != "application/json":
        raise SalesforceError(415, "UNSUPPORTED_MEDIA_TYPE", "Content-Type header specified in "
                              f"HTTP request is not supported: {request.mimetype or 'none'}")
    try:
        return json.loads(request.get_data(as_text=True) or "null")
    except ValueError as exc:
        raise SalesforceError(400, "JSON_PARSER_ERROR", f"Unexpected character: {exc}") from None


def _object_or_404(name: str) -> ObjectSpec:
    spec = object_spec(name)
    if spec is None:
        raise _not_found()
    return spec


def create_app(state: SalesforceState | None = None) -> Flask:
    """A Flask app imitating one org; the state is also at ``app.extensions["salesforce"]``."""
    state = state if state is not None else SalesforceState()
    app = Flask(__name__)
    app.extensions["salesforce"] = state

    @app.before_request
    def observe() -> Response | None:
        """Record, delay, inject failures, then authenticate API calls -- in that order."""
        recorded = RecordedRequest(
            request.method, request.path, request.query_string.decode("latin-1"),
            {k: request.args.getlist(k) for k in request.args},
            dict(request.headers), request.get_data(as_text=True))
        with state.lock:
            state.requests.append(recorded)
            if request.path == TOKEN_PATH:
                state.token_requests += 1
        g.recorded = recorded
        if state.slow_seconds:
            time.sleep(state.slow_seconds)
        failure = state._take_failure("token" if request.path == TOKEN_PATH else "api")
        if failure is not None:
            return _canned(failure)
        match = _API_PATH.match(request.path)
        if match:
            _authorize(state, match.group(1))
        return None

    @app.after_request
    def limit_info(response: Response) -> Response:
        if _API_PATH.match(request.path):
            response.headers["Sforce-Limit-Info"] = (
                f"api-usage={state.api_calls}/{state.api_limit or 15000}")
        return response

    @app.errorhandler(SalesforceError)
    def refused(error: SalesforceError) -> Response:
        return _json(error.body(), error.status)

    @app.errorhandler(NotFound)
    def no_route(_: NotFound) -> Response:
        return _json(_not_found().body(), 404)

    @app.errorhandler(MethodNotAllowed)
    def wrong_method(error: MethodNotAllowed) -> Response:
        allowed = ",".join(m for m in error.valid_methods or [] if m not in ("HEAD", "OPTIONS"))
        return _json(error_body("METHOD_NOT_ALLOWED", f"HTTP Method '{request.method}' not "
                                f"allowed. Allowed are {allowed}"), 405)

    @app.post(TOKEN_PATH)
    def token() -> Response:
        return _token(state)

    @app.get("/services/data/")
    def versions() -> Response:
        low, high = int(state.min_api_version), int(state.max_api_version)
        return _json([{"label": _version_label(n), "url": f"/services/data/v{n}.0",
                       "version": f"{n}.0"} for n in range(low, high + 1)])

    @app.get("/services/data/<version>/sobjects/<sobject>/describe", strict_slashes=False)
    def describe_object(version: str, sobject: str) -> Response:
        return _json(describe(state, _object_or_404(sobject), version))

    @app.post("/services/data/<version>/sobjects/<sobject>/", strict_slashes=False)
    def create(version: str, sobject: str) -> Response:
        spec = _object_or_404(sobject)
        body = _request_body()
        with state.lock:
            record_id = _insert(state, spec, _validate(state, spec, body, None))
        return _json({"id": record_id, "success": True, "errors": []}, 201)

    @app.route("/services/data/<version>/sobjects/<sobject>/<record_id>",
               methods=["GET", "PATCH"], strict_slashes=False)
    def row(version: str, sobject: str, record_id: str) -> Response:
        spec = _object_or_404(sobject)
        with state.lock:
            record = _find(state, spec, record_id)
            if record is None:
                if not _ID_RE.fullmatch(record_id):
                    raise SalesforceError(404, "NOT_FOUND", "Provided external ID field does "
                                          f"not exist or is not accessible: {record_id}")
                raise _not_found()
            if request.method == "PATCH":
                values = _validate(state, spec, _request_body(), record)
                _update(state, spec, record, values)
                return Response(status=204)
            names = None
            if "fields" in request.args:
                names = [_field_or_400(spec, n).name for n in request.args["fields"].split(",")]
            return _json(_render(spec, record, version, names))

    @app.get("/services/data/<version>/query", strict_slashes=False)
    def query(version: str) -> Response:
        text = request.args.get("q")
        if not text:
            raise SalesforceError(400, "MALFORMED_QUERY", "A query string has to be specified")
        try:
            parsed = parse_soql(text)
            g.recorded.soql = parsed
            with state.lock:
                spec = object_spec(parsed.sobject.name)
                table = state._records.get(spec.name, {}) if spec else {}
                spec, rows = run_query(parsed, list(table.values()))
                names = [_require_field(spec, name).name for name in parsed.field_names]
                rendered = [_render(spec, row, version, names) for row in rows]
                return _json(_page(state, rendered, len(rendered), version))
        except SoqlError as err:
            raise err.to_api_error(text) from None

    @app.get("/services/data/<version>/query/<locator>")
    def query_more(version: str, locator: str) -> Response:
        with state.lock:
            if locator not in state._cursors:
                raise SalesforceError(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
            rows, total = state._cursors.pop(locator)
            return _json(_page(state, rows, total, version))

    return app


def _field_or_400(spec: ObjectSpec, name: str) -> FieldSpec:
    found = spec.field(name.strip())
    if found is None:
        raise SalesforceError(400, "INVALID_FIELD",
                              f"No such column '{name.strip()}' on entity '{spec.name}'")
    return found


def _page(state: SalesforceState, rows: list[JSON], total: int, version: str) -> JSON:
    """One batch of a query result; the rest waits behind ``nextRecordsUrl``."""
    batch, rest = rows[:state.query_batch_size], rows[state.query_batch_size:]
    page: JSON = {"totalSize": total, "done": not rest}
    if rest:
        locator = f"01gFAKE{next(state._serial):08d}-{total - len(rest)}"
        state._cursors[locator] = (rest, total)
        page["nextRecordsUrl"] = f"/services/data/{version}/query/{locator}"
    page["records"] = batch
    return page


def _authorize(state: SalesforceState, version: str) -> None:
    """Bearer token first (401), then the version (404), then the daily limit (403)."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    with state.lock:
        live = scheme.lower() in ("bearer", "oauth") and token.strip() in state._tokens
    if not live:
        raise SalesforceError(401, "INVALID_SESSION_ID", "Session expired or invalid")
    if not state.min_api_version <= float(version[1:]) <= state.max_api_version:
        raise _not_found()
    with state.lock:
        state.api_calls += 1
        over = state.api_limit is not None and state.api_calls > state.api_limit
    if over:
        raise SalesforceError(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")


def _token(state: SalesforceState) -> Response:
    """The OAuth 2.0 token endpoint: form-encoded in, JSON out, errors as error/description."""
    form = request.form  # empty unless Content-Type is application/x-www-form-urlencoded
    client_id, client_secret = form.get("client_id"), form.get("client_secret")
    auth = request.authorization
    if auth is not None and auth.type == "basic":
        client_id, client_secret = auth.username, auth.password
    grant = form.get("grant_type")
    if grant not in ("client_credentials", "refresh_token"):
        return _oauth_error("unsupported_grant_type", "grant type not supported")
    if client_id != state.client_id:
        return _oauth_error("invalid_client_id", "client identifier invalid")
    if grant == "client_credentials":
        if client_secret != state.client_secret:
            return _oauth_error("invalid_client", "invalid client credentials")
        if not state.client_credentials_enabled:
            return _oauth_error("invalid_grant", "no client credentials user enabled")
    else:
        if client_secret is not None and client_secret != state.client_secret:
            return _oauth_error("invalid_client", "invalid client credentials")
        if form.get("refresh_token") != state.refresh_token:
            return _oauth_error("invalid_grant", "expired access/refresh token")
    return _json(state.issue_token(request.host_url.rstrip("/")))
