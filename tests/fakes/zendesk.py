"""An in-memory, stateful imitation of the Zendesk Support API, served by Flask.

Why a fake rather than mocks: ``mappings/zendesk.yaml`` must be exercised
through real sockets, status lines, headers and Zendesk's own JSON envelopes,
exactly as the engine will meet them in production. Every behaviour below is
taken from Zendesk's reference documentation or from response bodies quoted in
public bug reports; ``docs/vendors/zendesk-api.md`` lists each fact with its
source. Where the documentation is silent the fake says so in a comment and
prefers the stricter reading (refuse rather than guess), so a mapping that
passes here does not lean on a leniency Zendesk may not have.

Public surface::

    ZendeskState         the account: users, tickets, comments, fields, every
                         request received, and the fault knobs
    create_app(state)    a Flask app serving /api/v2/... from that state
    parse_search_query   the small search-query parser (Zendesk syntax subset)

Order of work for every request: record it, sleep ``slow_seconds``, answer an
injected fault if one is queued, check HTTP Basic credentials, then route.
"""

from __future__ import annotations

import hmac
import html
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn
from urllib.parse import urlencode

from flask import Flask, Response, current_app, has_request_context, jsonify, request

from tests.fakes.base import ApiError, FakeState, RecordedRequest, record_request, render

TICKET_STATUSES = ("new", "open", "pending", "hold", "solved", "closed")
TICKET_PRIORITIES = ("low", "normal", "high", "urgent")
TICKET_TYPES = ("problem", "incident", "question", "task")
USER_ROLES = ("end-user", "agent", "admin")
MAX_PER_PAGE = 100
# Test credentials only: the fake never sees a real Zendesk token.
DEFAULT_AGENT_EMAIL = "agent@example.com"
DEFAULT_API_TOKEN = "fake-api-token"
# The exact text/plain body of a real 429 (50 bytes, as the report shows).
RATE_LIMIT_BODY = "Number of allowed API requests per minute exceeded"

_WRITABLE_USER_KEYS = frozenset({
    "name", "email", "phone", "external_id", "role", "notes", "details",
    "tags", "alias", "organization_id", "verified", "user_fields",
    "time_zone", "locale",
})
_WRITABLE_TICKET_KEYS = frozenset({
    "subject", "comment", "description", "requester_id", "requester",
    "submitter_id", "assignee_id", "status", "priority", "type", "tags",
    "external_id", "custom_fields", "due_at", "group_id", "organization_id",
})


# --------------------------------------------------------------------- state


@dataclass(frozen=True)
class SearchTerm:
    """One term of a search query: ``field:value``, or free text if no field."""

    field: str | None
    value: str
    quoted: bool


@dataclass(frozen=True)
class SearchLog:
    """What a search endpoint understood, so tests can assert on the parse."""

    endpoint: str
    raw_query: str
    terms: tuple[SearchTerm, ...]


class ZendeskState(FakeState):
    """The fake account. Mutate it directly to seed data; read it to assert.

    Knobs: ``fail_next`` / ``rate_limit_next`` queue faults, ``slow_seconds``
    delays every answer, ``api_tokens`` may hold several tokens because
    Zendesk allows more than one active token (rotation). Ids come from one
    sequence, so they never collide by type.
    """

    def __init__(
        self,
        *,
        agent_email: str = DEFAULT_AGENT_EMAIL,
        api_token: str = DEFAULT_API_TOKEN,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        super().__init__(first_id=10001)
        self.agent_email = agent_email
        self.api_tokens: list[str] = [api_token]
        self.clock = clock or (lambda: datetime.now(UTC))
        self.slow_seconds = 0.0
        self.searches: list[SearchLog] = []
        self.users: dict[int, dict[str, Any]] = {}
        self.tickets: dict[int, dict[str, Any]] = {}
        self.comments: dict[int, list[dict[str, Any]]] = {}
        self.audits: dict[int, list[dict[str, Any]]] = {}
        # Zendesk keeps the primary email on update and adds a secondary one.
        self.secondary_emails: dict[int, list[str]] = {}
        self._comment_public: dict[int, bool] = {}
        self.ticket_fields = _seed_ticket_fields(self)
        self.user_fields = _seed_user_fields(self)
        self.agent = self.add_user(name="Fake Agent", email=agent_email, role="admin")

    def __repr__(self) -> str:
        return (f"ZendeskState(users={len(self.users)}, tickets={len(self.tickets)}, "
                f"requests={len(self.requests)})")

    # -- knobs -------------------------------------------------------------

    @property
    def basic_username(self) -> str:
        """The Basic-auth user name Zendesk expects for API tokens."""
        return f"{self.agent_email}/token"

    def rate_limit_next(self, retry_after: int = 1, *, times: int = 1) -> None:
        """Queue Zendesk's documented 429: text body plus ``Retry-After``."""
        self.fail_next(429, RATE_LIMIT_BODY, {"Retry-After": str(retry_after)}, times=times)

    # -- seeding and lookups -------------------------------------------------

    def now(self) -> str:  # the account's clock (a test may set it), not the base's wall clock
        """A UTC ISO 8601 timestamp with ``Z``, the format Zendesk renders."""
        return self.clock().astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def add_user(self, *, name: str, email: str | None = None, role: str = "end-user",
                 **attrs: Any) -> dict[str, Any]:
        """Seed a user without going through HTTP (nothing is recorded)."""
        with self.lock:
            user = _new_user(self, {"name": name, "email": email, "role": role, **attrs})
            self.users[user["id"]] = user
            return user

    def add_ticket(self, *, requester_id: int, body: str, **attrs: Any) -> dict[str, Any]:
        """Seed a ticket with its first comment without going through HTTP."""
        with self.lock:
            ticket, _ = _create_ticket(
                self, {"requester_id": requester_id, "comment": {"body": body}, **attrs})
            return ticket

    def user_by_email(self, email: str) -> dict[str, Any] | None:
        wanted = email.lower()
        return next((u for u in self.users.values()
                     if (u.get("email") or "").lower() == wanted), None)

    def ticket_field_id(self, title: str) -> int:
        """The id of a ticket field by title, to build ``custom_fields`` in tests."""
        return int(next(f["id"] for f in self.ticket_fields if f["title"] == title))

    def requests_to(self, method: str, path: str) -> list[RecordedRequest]:
        """Recorded requests for one method and path (``.json`` suffix ignored)."""
        norm = path.removesuffix(".json")
        return [r for r in self.requests
                if r.method == method.upper() and r.path.removesuffix(".json") == norm]


def _seed_ticket_fields(state: ZendeskState) -> list[dict[str, Any]]:
    """System fields a mapping reads plus one custom dropdown ("tagger")."""
    stamp = state.now()

    def make(kind: str, title: str, position: int, **extra: Any) -> dict[str, Any]:
        return {"id": state.next_id(), "type": kind, "title": title, "raw_title": title,
                "description": "", "position": position, "active": True,
                "required": kind == "subject", "removable": kind == "tagger",
                "created_at": stamp, "updated_at": stamp, **extra}

    options = [("Widget Pro", "widget_pro"), ("Widget Lite", "widget_lite"),
               ("Gadget", "gadget")]
    return [
        make("subject", "Subject", 1),
        make("description", "Description", 2),
        make("status", "Status", 3, system_field_options=[
            {"name": s.title(), "value": s} for s in TICKET_STATUSES]),
        make("priority", "Priority", 4, system_field_options=[
            {"name": p.title(), "value": p} for p in TICKET_PRIORITIES]),
        make("tagger", "Product", 5, custom_field_options=[
            {"id": state.next_id(), "name": n, "raw_name": n, "value": v, "default": False}
            for n, v in options]),
    ]


def _seed_user_fields(state: ZendeskState) -> list[dict[str, Any]]:
    """One custom user dropdown; users carry it in ``user_fields`` by key."""
    stamp = state.now()
    options = [("Gold", "gold"), ("Silver", "silver"), ("Bronze", "bronze")]
    return [{
        "id": state.next_id(), "key": "tier", "type": "dropdown", "title": "Tier",
        "raw_title": "Tier", "description": "", "position": 0, "active": True,
        "system": False, "created_at": stamp, "updated_at": stamp,
        "custom_field_options": [
            {"id": state.next_id(), "name": n, "raw_name": n, "value": v}
            for n, v in options],
    }]


# ---------------------------------------------------------------- errors


def _not_found() -> NoReturn:
    raise ApiError(404, {"error": "RecordNotFound", "description": "Not found"})


def _invalid(details: dict[str, list[dict[str, Any]]]) -> NoReturn:
    raise ApiError(422, {"error": "RecordInvalid",
                         "description": "Record validation errors", "details": details})


def _bad_request(description: str) -> NoReturn:
    # Zendesk's exact 400 wording is not documented; the envelope is its usual one.
    raise ApiError(400, {"error": "InvalidParameter", "description": description})


# ---------------------------------------------------------------- search


class UnsupportedQuery(ValueError):
    """The query uses syntax this fake does not implement; fail loudly."""


def parse_search_query(query: str) -> list[SearchTerm]:
    """Split a Zendesk search string into terms.

    Supported: ``word``, ``"a phrase"``, ``field:value``, ``field:"a phrase"``.
    Zendesk documents no escape inside quotes, so the fake reads the docs
    literally: every ``"`` ends the phrase and a backslash is an ordinary
    character. An unterminated phrase runs to the end. ``<``, ``>``, a leading ``-`` and an
    unquoted ``*`` are real Zendesk operators the fake does not model: they
    raise ``UnsupportedQuery`` rather than being silently misread.
    """
    terms: list[SearchTerm] = []
    i, n = 0, len(query)
    while i < n:
        if query[i].isspace():
            i += 1
            continue
        if query[i] == '"':
            value, i = _read_phrase(query, i)
            terms.append(SearchTerm(None, value, True))
            continue
        start = i
        while i < n and not query[i].isspace():
            if query[i] == ":" and i + 1 < n and query[i + 1] == '"':
                name = query[start:i].lower()
                value, i = _read_phrase(query, i + 1)
                terms.append(SearchTerm(name, value, True))
                break
            i += 1
        else:
            terms.append(_bare_term(query[start:i]))
    return terms


def _read_phrase(query: str, i: int) -> tuple[str, int]:
    """Read a quoted phrase starting at the quote at ``i``; return text, end."""
    out: list[str] = []
    i += 1
    while i < len(query):
        char = query[i]
        if char == '"':
            return "".join(out), i + 1
        else:
            out.append(char)
            i += 1
    return "".join(out), i


def _bare_term(token: str) -> SearchTerm:
    if token.startswith("-") or "*" in token or "<" in token or ">" in token:
        raise UnsupportedQuery(
            f"the fake does not implement the search operator in {token!r}; "
            "add it to tests/fakes/zendesk.py if a mapping needs it")
    name, sep, value = token.partition(":")
    if sep and name:
        return SearchTerm(name.lower(), value, False)
    return SearchTerm(None, token, False)


# Search keywords per record type, mapped to record keys.
_USER_KEYWORDS = {k: k for k in ("name", "email", "phone", "external_id", "role",
                                 "notes", "details", "tags")}
_TICKET_KEYWORDS = {"status": "status", "priority": "priority", "subject": "subject",
                    "description": "description", "external_id": "external_id",
                    "ticket_type": "type", "tags": "tags"}
_USER_TEXT = ("name", "email", "phone", "notes", "details", "external_id")
_TICKET_TEXT = ("subject", "description")


def _phrase_in(text: Any, phrase: str) -> bool:
    """Zendesk matches a word, a word within a phrase, or a word's prefix."""
    if not phrase or not isinstance(text, str):
        return False
    return re.search(r"(?<!\w)" + re.escape(phrase.lower()), text.lower()) is not None


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def _equals(stored: Any, wanted: str) -> bool:
    """A field term matches its value ignoring case; a quoted one also matches the same
    words with other punctuation (Zendesk indexes words, so ``O Brien`` finds ``O"Brien``)."""
    def same(value: Any) -> bool:
        text = str(value)
        return text.lower() == wanted.lower() or (bool(_words(wanted)) and _words(text) == _words(wanted))

    if isinstance(stored, list):
        return any(same(v) for v in stored)
    return stored is not None and same(stored)


def _user_matches(state: ZendeskState, user: dict[str, Any], term: SearchTerm) -> bool:
    if term.field is None:
        return any(_phrase_in(user.get(k), term.value) for k in _USER_TEXT)
    if term.field in _USER_KEYWORDS:
        return _equals(user.get(_USER_KEYWORDS[term.field]), term.value)
    if term.field in user["user_fields"]:
        return _equals(user["user_fields"][term.field], term.value)
    return False


def _ticket_matches(state: ZendeskState, ticket: dict[str, Any], term: SearchTerm) -> bool:
    if term.field is None:
        return any(_phrase_in(ticket.get(k), term.value) for k in _TICKET_TEXT)
    if term.field == "requester":
        requester = state.users.get(ticket["requester_id"], {})
        return _equals(ticket["requester_id"], term.value) or _equals(
            requester.get("email"), term.value)
    if term.field in _TICKET_KEYWORDS:
        return _equals(ticket.get(_TICKET_KEYWORDS[term.field]), term.value)
    return False


def _search(state: ZendeskState, terms: Iterable[SearchTerm],
            only: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    """Run terms with AND semantics; ``type:`` terms narrow the record types."""
    terms = list(terms)
    types = {t.value.lower() for t in terms if t.field == "type"}
    if only:
        types.add(only)
    if len(types) > 1:
        return []  # e.g. type:user AND type:ticket can match nothing
    kinds = types or {"user", "ticket"}
    rest = [t for t in terms if t.field != "type"]
    found: list[tuple[str, dict[str, Any]]] = []
    if "user" in kinds:
        found += [("user", u) for u in state.users.values()
                  if all(_user_matches(state, u, t) for t in rest)]
    if "ticket" in kinds:
        found += [("ticket", t) for t in state.tickets.values()
                  if all(_ticket_matches(state, t, term) for term in rest)]
    return found


# ---------------------------------------------------------------- records


def _new_user(state: ZendeskState, attrs: dict[str, Any]) -> dict[str, Any]:
    stamp = state.now()
    user: dict[str, Any] = {
        "id": state.next_id(), "name": None, "email": None, "phone": None,
        "external_id": None, "role": "end-user", "active": True, "verified": False,
        "alias": "", "notes": "", "details": "", "tags": [], "organization_id": None,
        "time_zone": "UTC", "iana_time_zone": "Etc/UTC", "locale": "en-US",
        "locale_id": 1, "shared": False, "suspended": False, "last_login_at": None,
        "user_fields": {f["key"]: None for f in state.user_fields},
        "created_at": stamp, "updated_at": stamp,
    }
    _apply_user(user, attrs)
    return user


def _apply_user(user: dict[str, Any], attrs: dict[str, Any]) -> None:
    for key, value in attrs.items():
        if key == "user_fields":
            # Unknown keys are dropped: only defined user fields exist on a user.
            user["user_fields"].update(
                {k: v for k, v in value.items() if k in user["user_fields"]})
        else:
            user[key] = value


def _check_user(state: ZendeskState, attrs: dict[str, Any],
                existing: dict[str, Any] | None) -> None:
    """Validate like Zendesk; quoted messages come from real 422 bodies."""
    details: dict[str, list[dict[str, Any]]] = {}
    if (existing is None or "name" in attrs) and not str(attrs.get("name") or "").strip():
        details["name"] = [{"description": "Name: is too short (minimum is 1 characters)"}]
    email = attrs.get("email")
    if existing is None and email:
        if not isinstance(email, str) or "@" not in email:
            # Wording chosen by the fake; Zendesk's text was not confirmed.
            details["email"] = [{"description": f"Email: {email} is not properly formatted",
                                 "error": "InvalidFormat"}]
        elif state.user_by_email(email):
            details["email"] = [{"description":
                                 f"Email: {email} is already being used by another user",
                                 "error": "DuplicateValue"}]
    if "role" in attrs and attrs["role"] not in USER_ROLES:
        details["role"] = [{"description": f"Role: {attrs['role']} is not valid",
                            "error": "InvalidValue"}]
    if "user_fields" in attrs and not isinstance(attrs["user_fields"], dict):
        details["user_fields"] = [{"description": "User fields: must be an object",
                                   "error": "InvalidValue"}]
    if details:
        _invalid(details)


def _comment_html(body: str) -> str:
    paragraphs = "".join(f"<p>{html.escape(p).replace(chr(10), '<br>')}</p>"
                         for p in body.split("\n\n"))
    return f'<div class="zd-comment" dir="auto">{paragraphs}</div>'


def _plain_from_html(markup: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", markup)).strip()


def _new_comment(state: ZendeskState, ticket_id: int, spec: dict[str, Any],
                 author_id: int, public: bool, audit_id: int) -> dict[str, Any]:
    if spec.get("html_body"):
        html_body, body = spec["html_body"], _plain_from_html(spec["html_body"])
    else:
        body = spec["body"]
        html_body = _comment_html(body)
    comment = {
        "id": state.next_id(), "type": "Comment", "author_id": author_id,
        "body": body, "html_body": html_body, "plain_body": body, "public": public,
        "attachments": [], "audit_id": audit_id,
        "via": {"channel": "api", "source": {"from": {}, "to": {}, "rel": None}},
        "metadata": {"system": _request_metadata(), "custom": {}},
        "created_at": state.now(),
    }
    state.comments.setdefault(ticket_id, []).append(comment)
    return comment


def _request_metadata() -> dict[str, Any]:
    """Zendesk records the client and IP of the request that wrote a comment."""
    if not has_request_context():
        return {}  # seeded through ZendeskState.add_ticket, not over HTTP
    return {"client": request.user_agent.string, "ip_address": request.remote_addr}


def _require_user(state: ZendeskState, user_id: Any, key: str) -> int:
    if not isinstance(user_id, int) or user_id not in state.users:
        # RecordInvalid envelope is documented; this wording is the fake's.
        _invalid({key: [{"description": f"{key}: {user_id!r} is not a valid user",
                         "error": "InvalidValue"}]})
    return user_id


def _check_ticket_values(attrs: dict[str, Any]) -> None:
    """Reject values outside Zendesk's enumerations (wording is the fake's)."""
    details: dict[str, list[dict[str, Any]]] = {}
    for key, allowed in (("status", TICKET_STATUSES), ("priority", TICKET_PRIORITIES),
                         ("type", TICKET_TYPES)):
        value = attrs.get(key)
        if value is not None and value not in allowed:
            details[key] = [{"description": f"{key.title()}: {value!r} is not one of "
                             f"{', '.join(allowed)}", "error": "InvalidValue"}]
    fields = attrs.get("custom_fields")
    if fields is not None and not (isinstance(fields, list) and all(
            isinstance(f, dict) and isinstance(f.get("id"), int) for f in fields)):
        details["custom_fields"] = [{"description":
                                     "Custom fields: must be a list of {id, value}",
                                     "error": "InvalidValue"}]
    if details:
        _invalid(details)


def _set_custom_fields(ticket: dict[str, Any], fields: list[dict[str, Any]]) -> None:
    # Unknown field ids are dropped: only defined fields appear on a ticket.
    values = {f["id"]: f.get("value") for f in fields}
    for entry in ticket["custom_fields"]:
        if entry["id"] in values:
            entry["value"] = values[entry["id"]]
    ticket["fields"] = [dict(e) for e in ticket["custom_fields"]]


def _new_audit(state: ZendeskState, ticket_id: int, author_id: int) -> dict[str, Any]:
    audit = {"id": state.next_id(), "ticket_id": ticket_id, "created_at": state.now(),
             "author_id": author_id, "metadata": {"system": {}, "custom": {}},
             "via": {"channel": "api", "source": {"from": {}, "to": {}, "rel": None}},
             "events": []}
    state.audits.setdefault(ticket_id, []).append(audit)
    return audit


def _resolve_requester(state: ZendeskState, attrs: dict[str, Any]) -> int | None:
    """``requester_id``, or a ``requester`` object found or created by email."""
    if "requester" in attrs:
        spec = attrs["requester"]
        if not isinstance(spec, dict) or not spec.get("email"):
            _invalid({"requester": [{"description": "Requester: needs an email",
                                     "error": "InvalidValue"}]})
        user = state.user_by_email(spec["email"])
        if user is None:
            user = state.add_user(name=spec.get("name") or spec["email"], email=spec["email"])
        return int(user["id"])
    if "requester_id" in attrs:
        return _require_user(state, attrs["requester_id"], "requester_id")
    return None


def _create_ticket(state: ZendeskState,
                   attrs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Create a ticket and its first comment; return (ticket, audit)."""
    _check_ticket_values(attrs)
    spec = attrs.get("comment") or {}
    if not isinstance(spec, dict):
        spec = {}
    if not (spec.get("body") or spec.get("html_body")) and attrs.get("description"):
        spec = {**spec, "body": attrs["description"]}
    if not (spec.get("body") or spec.get("html_body")):
        _invalid({"base": [{"description": "Description: cannot be blank",
                            "error": "BlankValue"}]})
    submitter = (_require_user(state, attrs["submitter_id"], "submitter_id")
                 if "submitter_id" in attrs else None)
    requester = _resolve_requester(state, attrs) or submitter or state.agent["id"]
    # Docs: by default the requester is the submitter and the first comment's
    # author is the submitter.
    submitter = submitter or requester
    author = (_require_user(state, spec["author_id"], "author_id")
              if "author_id" in spec else submitter)
    public = bool(spec.get("public", True))
    ticket_id, stamp = state.next_id(), state.now()
    ticket: dict[str, Any] = {
        "id": ticket_id, "external_id": attrs.get("external_id"), "type": attrs.get("type"),
        "subject": attrs.get("subject"), "raw_subject": attrs.get("subject"),
        "description": None, "priority": attrs.get("priority"),
        "status": attrs.get("status") or "new", "recipient": None,
        "requester_id": requester, "submitter_id": submitter,
        "assignee_id": attrs.get("assignee_id"), "organization_id": attrs.get("organization_id"),
        "group_id": attrs.get("group_id"), "collaborator_ids": [], "follower_ids": [],
        "email_cc_ids": [], "forum_topic_id": None, "problem_id": None,
        "has_incidents": False, "is_public": public, "due_at": attrs.get("due_at"),
        "tags": list(attrs.get("tags") or []),
        "custom_fields": [{"id": f["id"], "value": None} for f in state.ticket_fields
                          if "custom_field_options" in f],
        "satisfaction_rating": None, "sharing_agreement_ids": [], "followup_ids": [],
        "ticket_form_id": None, "brand_id": None, "allow_channelback": False,
        "allow_attachments": True, "from_messaging_channel": False,
        "via": {"channel": "api", "source": {"from": {}, "to": {}, "rel": None}},
        "created_at": stamp, "updated_at": stamp,
    }
    _set_custom_fields(ticket, attrs.get("custom_fields") or [])
    audit = _new_audit(state, ticket_id, author)
    comment = _new_comment(state, ticket_id, spec, author, public, audit["id"])
    ticket["description"] = comment["plain_body"]
    state.tickets[ticket_id] = ticket
    state._comment_public[ticket_id] = public
    audit["events"].append({**comment, "type": "Comment"})
    for key in ("status", "subject", "priority", "type", "requester_id"):
        if ticket[key] is not None:
            audit["events"].append({"id": state.next_id(), "type": "Create",
                                    "field_name": key, "value": ticket[key]})
    return ticket, audit


def _update_ticket(state: ZendeskState, ticket: dict[str, Any],
                   attrs: dict[str, Any]) -> dict[str, Any]:
    """Apply an update; a ``comment`` adds a comment (comments are never edited)."""
    if ticket["status"] == "closed":
        _invalid({"status": [{"description": "Status closed prevents ticket update"}]})
    _check_ticket_values(attrs)
    if "requester_id" in attrs or "requester" in attrs:
        attrs = {**attrs, "requester_id": _resolve_requester(state, attrs)}
    spec = attrs.get("comment") if isinstance(attrs.get("comment"), dict) else None
    author = (_require_user(state, spec["author_id"], "author_id")
              if spec and "author_id" in spec else state.agent["id"])
    audit = _new_audit(state, ticket["id"], author)
    if spec and (spec.get("body") or spec.get("html_body")):
        # Docs: the public value set at creation persists unless changed.
        public = bool(spec.get("public", state._comment_public[ticket["id"]]))
        state._comment_public[ticket["id"]] = public
        comment = _new_comment(state, ticket["id"], spec, author, public, audit["id"])
        audit["events"].append({**comment, "type": "Comment"})
        ticket["is_public"] = ticket["is_public"] or public
    for key in ("subject", "status", "priority", "type", "requester_id", "assignee_id",
                "external_id", "tags", "due_at", "group_id", "organization_id"):
        if key in attrs and attrs[key] != ticket[key]:
            audit["events"].append({"id": state.next_id(), "type": "Change",
                                    "field_name": key, "value": attrs[key],
                                    "previous_value": ticket[key]})
            ticket[key] = attrs[key]
            if key == "subject":
                ticket["raw_subject"] = attrs[key]
    if "custom_fields" in attrs:
        _set_custom_fields(ticket, attrs["custom_fields"])
    ticket["updated_at"] = state.now()
    return audit


# ---------------------------------------------------------------- rendering


def _state() -> ZendeskState:
    state: ZendeskState = current_app.extensions["zendesk_fake"]
    return state


def _url(kind: str, record_id: int) -> str:
    return f"{request.host_url}api/v2/{kind}/{record_id}.json"


def _user_json(user: dict[str, Any]) -> dict[str, Any]:
    return {**user, "url": _url("users", user["id"]),
            "user_fields": dict(user["user_fields"]), "tags": list(user["tags"])}


def _ticket_json(ticket: dict[str, Any]) -> dict[str, Any]:
    return {**ticket, "url": _url("tickets", ticket["id"]),
            "custom_fields": [dict(f) for f in ticket["custom_fields"]],
            "fields": [dict(f) for f in ticket["fields"]], "tags": list(ticket["tags"])}


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    response = jsonify(body)
    response.status_code = status
    response.headers.update(headers or {})
    return response


def _int_arg(name: str, default: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or int(raw) < 1:
        _bad_request(f"{name} must be a positive integer, got {raw!r}")
    return int(raw)


def _paginate(items: list[Any]) -> tuple[list[Any], dict[str, Any]]:
    """Offset pagination: ``page``/``per_page`` in, absolute page URLs out."""
    page, per_page = _int_arg("page", 1), min(_int_arg("per_page", MAX_PER_PAGE), MAX_PER_PAGE)
    start = (page - 1) * per_page

    def link(number: int) -> str:
        args = request.args.to_dict(flat=False)
        args["page"] = [str(number)]
        return f"{request.base_url}?{urlencode(args, doseq=True)}"

    return items[start:start + per_page], {
        "next_page": link(page + 1) if start + per_page < len(items) else None,
        "previous_page": link(page - 1) if page > 1 else None,
        "count": len(items),
    }


def _root(key: str) -> tuple[dict[str, Any], list[str]]:
    """The wrapped object (``{"user": {...}}``) and the keys Zendesk would drop."""
    payload = request.get_json(silent=True)
    if not isinstance(payload, dict) or not isinstance(payload.get(key), dict):
        _bad_request(f"the request body must be a JSON object with a {key!r} object")
    allowed = _WRITABLE_USER_KEYS if key == "user" else _WRITABLE_TICKET_KEYS
    obj = payload[key]
    return {k: v for k, v in obj.items() if k in allowed}, sorted(set(obj) - allowed)


def _warn_headers(key: str, dropped: list[str]) -> dict[str, str]:
    """Zendesk names the parameters it ignored in ``X-Zendesk-API-Warn``."""
    if not dropped:
        return {}
    names = ", ".join(f'"{key}.{d}"' for d in dropped)
    return {"X-Zendesk-API-Warn":
            f"Removed restricted keys [{names}] from parameters according to whitelist"}


# ---------------------------------------------------------------- views


def show_user(user_id: int) -> Response:
    state = _state()
    with state.lock:
        user = state.users.get(user_id) or _not_found()
        return _json({"user": _user_json(user)})


def create_user() -> Response:
    attrs, dropped = _root("user")
    state = _state()
    with state.lock:
        _check_user(state, attrs, None)
        user = _new_user(state, attrs)
        state.users[user["id"]] = user
        headers = {"Location": _url("users", user["id"]), **_warn_headers("user", dropped)}
        return _json({"user": _user_json(user)}, 201, headers)


def update_user(user_id: int) -> Response:
    attrs, dropped = _root("user")
    state = _state()
    with state.lock:
        user = state.users.get(user_id) or _not_found()
        _check_user(state, attrs, user)
        email = attrs.pop("email", None)
        if email and email != user["email"]:
            # Docs: email is writable on create only; an update adds a secondary.
            state.secondary_emails.setdefault(user_id, []).append(email)
        _apply_user(user, attrs)
        user["updated_at"] = state.now()
        return _json({"user": _user_json(user)}, 200, _warn_headers("user", dropped))


def search_users() -> Response:
    state = _state()
    query, external_id = request.args.get("query"), request.args.get("external_id")
    with state.lock:
        if external_id is not None:
            # Docs: external_id takes ids only, no search syntax; case-insensitive.
            found = [u for u in state.users.values()
                     if (u["external_id"] or "").lower() == external_id.lower()]
        elif query is not None:
            terms = _parse_or_400(query)
            state.searches.append(SearchLog("users/search", query, tuple(terms)))
            found = [u for _, u in _search(state, terms, only="user")]
        else:
            _bad_request("query or external_id is required")
        page, envelope = _paginate(found)
        return _json({"users": [_user_json(u) for u in page], **envelope})


def search() -> Response:
    state = _state()
    query = request.args.get("query")
    if not query:
        _bad_request("query is required")
    with state.lock:
        terms = _parse_or_400(query)
        state.searches.append(SearchLog("search", query, tuple(terms)))
        found = _search(state, terms)
        page, envelope = _paginate(found)
        results = [{**(_user_json(r) if kind == "user" else _ticket_json(r)),
                    "result_type": kind} for kind, r in page]
        return _json({"results": results, "facets": None, **envelope})


def _parse_or_400(query: str) -> list[SearchTerm]:
    try:
        return parse_search_query(query)
    except UnsupportedQuery as exc:
        raise ApiError(400, {"error": "invalid", "description": str(exc)}) from exc


def requested_tickets(user_id: int) -> Response:
    state = _state()
    with state.lock:
        if user_id not in state.users:
            _not_found()
        mine = [t for t in state.tickets.values() if t["requester_id"] == user_id]
        page, envelope = _paginate(mine)
        return _json({"tickets": [_ticket_json(t) for t in page], **envelope})


def list_tickets() -> Response:
    state = _state()
    external_id = request.args.get("external_id")
    with state.lock:
        found = [t for t in state.tickets.values()
                 if external_id is None or t["external_id"] == external_id]
        page, envelope = _paginate(found)
        return _json({"tickets": [_ticket_json(t) for t in page], **envelope})


def create_ticket() -> Response:
    attrs, dropped = _root("ticket")
    state = _state()
    with state.lock:
        ticket, audit = _create_ticket(state, attrs)
        headers = {"Location": _url("tickets", ticket["id"]),
                   **_warn_headers("ticket", dropped)}
        return _json({"ticket": _ticket_json(ticket), "audit": audit}, 201, headers)


def show_ticket(ticket_id: int) -> Response:
    state = _state()
    with state.lock:
        ticket = state.tickets.get(ticket_id) or _not_found()
        return _json({"ticket": _ticket_json(ticket)})


def update_ticket(ticket_id: int) -> Response:
    attrs, dropped = _root("ticket")
    if attrs.pop("description", None) is not None:
        dropped = sorted({*dropped, "description"})  # read-only after creation
    state = _state()
    with state.lock:
        ticket = state.tickets.get(ticket_id) or _not_found()
        audit = _update_ticket(state, ticket, attrs)
        return _json({"ticket": _ticket_json(ticket), "audit": audit}, 200,
                     _warn_headers("ticket", dropped))


def list_comments(ticket_id: int) -> Response:
    state = _state()
    order = request.args.get("sort_order", "asc")
    if order not in ("asc", "desc"):
        _bad_request(f"sort_order must be asc or desc, got {order!r}")
    with state.lock:
        if ticket_id not in state.tickets:
            _not_found()
        comments = list(state.comments.get(ticket_id, []))
        if order == "desc":
            comments.reverse()
        page, envelope = _paginate(comments)
        return _json({"comments": page, **envelope})


def list_ticket_fields() -> Response:
    state = _state()
    return _json({"ticket_fields": [{**f, "url": _url("ticket_fields", f["id"])}
                                    for f in state.ticket_fields]})


def show_ticket_field(field_id: int) -> Response:
    state = _state()
    found = next((f for f in state.ticket_fields if f["id"] == field_id), None)
    if found is None:
        _not_found()
    return _json({"ticket_field": {**found, "url": _url("ticket_fields", field_id)}})


def list_user_fields() -> Response:
    state = _state()
    fields = [{**f, "url": _url("user_fields", f["id"])} for f in state.user_fields]
    return _json({"user_fields": fields, "next_page": None, "previous_page": None,
                  "count": len(fields)})


# Every route answers with and without the ``.json`` suffix, as Zendesk does.
_ROUTES: tuple[tuple[str, str, Callable[..., Response]], ...] = (
    ("/api/v2/users/<int:user_id>", "GET", show_user),
    ("/api/v2/users/<int:user_id>", "PUT", update_user),
    ("/api/v2/users", "POST", create_user),
    ("/api/v2/users/search", "GET", search_users),
    ("/api/v2/users/<int:user_id>/tickets/requested", "GET", requested_tickets),
    ("/api/v2/search", "GET", search),
    ("/api/v2/tickets", "GET", list_tickets),
    ("/api/v2/tickets", "POST", create_ticket),
    ("/api/v2/tickets/<int:ticket_id>", "GET", show_ticket),
    ("/api/v2/tickets/<int:ticket_id>", "PUT", update_ticket),
    ("/api/v2/tickets/<int:ticket_id>/comments", "GET", list_comments),
    ("/api/v2/ticket_fields", "GET", list_ticket_fields),
    ("/api/v2/ticket_fields/<int:field_id>", "GET", show_ticket_field),
    ("/api/v2/user_fields", "GET", list_user_fields),
)


# ---------------------------------------------------------------- app


def _before_request() -> Response | None:
    """Record, delay, inject faults, authenticate, check the body's type."""
    state = _state()
    record_request(state)
    if state.slow_seconds:
        time.sleep(state.slow_seconds)
    fault = state.take_fault()
    if fault is not None:
        headers = dict(fault.headers)
        if fault.status == 429:  # a real 429 reports the budget as spent
            headers.setdefault("X-Rate-Limit-Remaining", "0")
        return render(fault.status, fault.body, headers)
    if not _authenticated(state):
        return _json({"error": "Couldn't authenticate you"}, 401,
                     {"WWW-Authenticate": 'Basic realm="Web Password"'})
    if request.method in ("POST", "PUT") and not request.is_json:
        # Docs require Content-Type: application/json; Zendesk's answer to its
        # absence is not documented, so the fake refuses loudly (text/plain).
        return render(400, "Content-Type must be application/json", {})
    return None


def _authenticated(state: ZendeskState) -> bool:
    """HTTP Basic ``{email}/token:{api_token}``, compared in constant time."""
    auth = request.authorization
    if auth is None or auth.type != "basic":
        return False
    user_ok = hmac.compare_digest((auth.username or "").encode(),
                                  state.basic_username.encode())
    token_ok = any(hmac.compare_digest((auth.password or "").encode(), t.encode())
                   for t in state.api_tokens)
    return user_ok and token_ok


def _after_request(response: Response) -> Response:
    # Documented on every answer: the account's per-minute budget.
    response.headers.setdefault("X-Rate-Limit", "700")
    response.headers.setdefault("X-Rate-Limit-Remaining", "699")
    return response


def create_app(state: ZendeskState | None = None) -> Flask:
    """A Flask app imitating Zendesk's ``/api/v2`` over ``state``."""
    app = Flask(__name__)
    app.extensions["zendesk_fake"] = state if state is not None else ZendeskState()
    for rule, method, view in _ROUTES:
        for suffix in ("", ".json"):
            app.add_url_rule(rule + suffix, endpoint=f"{view.__name__}{suffix}",
                             view_func=view, methods=[method])
    app.before_request(_before_request)
    app.after_request(_after_request)
    app.register_error_handler(ApiError, lambda e: render(e.status, e.body, e.headers))
    # Unknown API paths: Zendesk's JSON for these was not confirmed.
    app.register_error_handler(
        404, lambda e: _json({"error": "InvalidEndpoint", "description": "Not found"}, 404))
    return app
