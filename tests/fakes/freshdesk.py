"""An in-memory imitation of the Freshdesk API v2, served by Flask.

Built from Freshdesk's API reference (facts and sources in
``docs/vendors/freshdesk-api.md``): HTTP Basic with the API key as the user
name, bare JSON arrays for lists with ``page``/``per_page`` and a ``link``
header naming the next page, integer ticket statuses (2 Open, 3 Pending,
4 Resolved, 5 Closed) and priorities (1 Low .. 4 Urgent), notes and their
conversations, ticket fields with their choices, the ``{"description":
"Validation failed", "errors": [...]}`` envelope for 400 and 409, and 429
with ``Retry-After``. Where the reference is silent the fake says so and
refuses rather than guesses.

    FreshdeskState     the account: contacts, tickets, conversations, fields,
                       every request received, fault knobs
    create_app(state)  the Flask app serving /api/v2/...
"""

from __future__ import annotations

import hmac
import html
import re
from typing import Any, NoReturn
from urllib.parse import urlencode

from flask import Flask, Response, current_app, request

from tests.fakes.base import ApiError, FakeState, record_request, render

STATUSES = {2: ("Open", "Being Processed"), 3: ("Pending", "Awaiting your Reply"),
            4: ("Resolved", "This ticket has been Resolved"), 5: ("Closed", "This ticket has been Closed")}
PRIORITIES = {"Low": 1, "Medium": 2, "High": 3, "Urgent": 4}
SOURCES = {"Email": 1, "Portal": 2, "Phone": 3, "Chat": 7, "Feedback Widget": 9, "Outbound Email": 10}
TICKET_TYPES = ["Question", "Incident", "Problem", "Feature Request", "Refund"]
MAX_PER_PAGE = 100
DEFAULT_PER_PAGE = 30
RATE_LIMIT_TOTAL = 400  # per minute on the Growth plan (the plan decides; the header reports it)

_CONTACT_KEYS = frozenset({"name", "email", "phone", "mobile", "twitter_id", "unique_external_id",
                           "job_title", "description", "address", "language", "time_zone", "tags",
                           "company_id", "other_emails", "custom_fields"})
_TICKET_KEYS = frozenset({"subject", "description", "requester_id", "email", "phone", "status",
                          "priority", "source", "type", "tags", "custom_fields", "responder_id",
                          "group_id", "due_by", "fr_due_by", "cc_emails"})
_NOTE_KEYS = frozenset({"body", "private", "incoming", "notify_emails", "user_id"})
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class FreshdeskState(FakeState):
    """The fake help desk. Seed it directly; read ``requests`` to assert on the wire."""

    def __init__(self, *, api_key: str = "fd-test-key") -> None:
        super().__init__(first_id=5001)
        self.api_keys = [api_key]
        self.agent_id = self.next_id()
        self.contacts: dict[int, dict[str, Any]] = {}
        self.tickets: dict[int, dict[str, Any]] = {}
        self.conversations: dict[int, list[dict[str, Any]]] = {}
        self.ticket_fields = _seed_ticket_fields(self)

    def __repr__(self) -> str:
        return f"FreshdeskState(contacts={len(self.contacts)}, tickets={len(self.tickets)})"

    def rate_limit_next(self, retry_after: int = 1, *, times: int = 1) -> None:
        """Freshdesk's 429: ``Retry-After`` in seconds and the spent per-minute budget."""
        self.fail_next(429, {"message": "You have exceeded the limit of requests per minute"},
                       {"Retry-After": str(retry_after), "X-RateLimit-Total": str(RATE_LIMIT_TOTAL),
                        "X-RateLimit-Remaining": "0", "X-RateLimit-Used-CurrentRequest": "1"}, times=times)

    def add_ticket(self, *, requester_id: int, subject: str = "Seeded", status: int = 2,
                   **attrs: Any) -> dict[str, Any]:
        with self.lock:
            return _create_ticket(self, {"requester_id": requester_id, "subject": subject,
                                         "description": "Seeded", "status": status, **attrs})


def _seed_ticket_fields(state: FreshdeskState) -> list[dict[str, Any]]:
    def make(name: str, label: str, kind: str, choices: Any, default: bool = True) -> dict[str, Any]:
        return {"id": state.next_id(), "name": name, "label": label, "description": label,
                "position": state.next_id() % 100, "required_for_closure": False, "required_for_agents": False,
                "type": kind, "default": default, "customers_can_edit": False, "label_for_customers": label,
                "required_for_customers": False, "displayed_to_customers": False,
                "created_at": state.now(), "updated_at": state.now(), "choices": choices}

    return [
        make("requester", "Search a requester", "default_requester", []),
        make("subject", "Subject", "default_subject", []),
        make("ticket_type", "Type", "default_ticket_type", list(TICKET_TYPES)),
        make("source", "Source", "default_source", dict(SOURCES)),
        make("status", "Status", "default_status", {str(k): list(v) for k, v in STATUSES.items()}),
        make("priority", "Priority", "default_priority", dict(PRIORITIES)),
        make("cf_product", "Product", "custom_dropdown", ["Widget Pro", "Widget Lite", "Gadget"], default=False),
    ]


# ---------------------------------------------------------------- errors


def _invalid(errors: list[dict[str, Any]], status: int = 400) -> NoReturn:
    raise ApiError(status, {"description": "Validation failed", "errors": errors})


def _not_found() -> NoReturn:
    # The reference lists 404 "Requested Resource not Found" without a body; the fake sends none.
    raise ApiError(404)


def _error(field: str, message: str, code: str = "invalid_value") -> dict[str, Any]:
    return {"field": field, "message": message, "code": code}


# ---------------------------------------------------------------- records


def _state() -> FreshdeskState:
    state: FreshdeskState = current_app.extensions["freshdesk_fake"]
    return state


def _payload(allowed: frozenset[str]) -> dict[str, Any]:
    payload = request.get_json(silent=True)
    if not isinstance(payload, dict):
        _invalid([_error("body", "It should be a JSON object", "datatype_mismatch")])
    unknown = sorted(set(payload) - allowed)
    if unknown:  # Freshdesk refuses unknown keys rather than dropping them
        _invalid([_error(k, "Unexpected/invalid field in request", "invalid_field") for k in unknown])
    return payload


def _check_contact(state: FreshdeskState, attrs: dict[str, Any], current: dict[str, Any] | None) -> None:
    errors = []
    if current is None and not attrs.get("name"):
        errors.append(_error("name", "It should be a/an String", "missing_field"))
    email = attrs.get("email")
    if email is not None and not _EMAIL.match(str(email)):
        errors.append(_error("email", "It should be in the 'valid email address' format"))
    merged = {**(current or {}), **attrs}
    if not any(merged.get(k) for k in ("email", "phone", "mobile", "twitter_id", "unique_external_id")):
        errors.append(_error("requester_id", "Please fill at least 1 of email, mobile, phone, twitter_id, "
                                             "unique_external_id fields", "missing_field"))
    if errors:
        _invalid(errors)
    if email:
        other = next((c for c in state.contacts.values()
                      if (c["email"] or "").lower() == str(email).lower() and c is not current), None)
        if other is not None:
            raise ApiError(409, {"description": "Validation failed", "errors": [{
                "field": "email", "additional_info": {"user_id": other["id"]},
                "message": "It should be a unique value", "code": "duplicate_value"}]})


def _new_contact(state: FreshdeskState, attrs: dict[str, Any]) -> dict[str, Any]:
    stamp = state.now()
    contact = {"id": state.next_id(), "active": False, "address": None, "company_id": None,
               "description": None, "email": None, "job_title": None, "language": "en", "mobile": None,
               "name": None, "phone": None, "time_zone": "Eastern Time (US & Canada)", "twitter_id": None,
               "unique_external_id": None, "other_emails": [], "tags": [], "custom_fields": {},
               "created_at": stamp, "updated_at": stamp}
    contact.update(attrs)
    return contact


def _check_ticket(state: FreshdeskState, attrs: dict[str, Any], creating: bool) -> None:
    errors = []
    if creating:
        for key in ("subject", "description"):
            if not attrs.get(key):
                errors.append(_error(key, "It should be a/an String", "missing_field"))
        if "requester_id" not in attrs and "email" not in attrs:
            errors.append(_error("requester_id", "Please fill at least 1 of requester_id, phone, email, "
                                                 "twitter_id, facebook_id, unique_external_id fields",
                                 "missing_field"))
    if "requester_id" in attrs and attrs["requester_id"] not in state.contacts:
        errors.append(_error("requester_id", "There is no contact matching the given requester_id"))
    if "status" in attrs and attrs["status"] not in STATUSES:
        errors.append(_error("status", "It should be one of these values: '2,3,4,5'"))
    if "priority" in attrs and attrs["priority"] not in PRIORITIES.values():
        errors.append(_error("priority", "It should be one of these values: '1,2,3,4'"))
    if "type" in attrs and attrs["type"] is not None and attrs["type"] not in TICKET_TYPES:
        errors.append(_error("type", "It should be one of these values: '" + ",".join(TICKET_TYPES) + "'"))
    for key, value in (attrs.get("custom_fields") or {}).items():
        known = next((f for f in state.ticket_fields if f["name"] == key and not f["default"]), None)
        if known is None:
            errors.append(_error(key, "Unexpected/invalid field in request", "invalid_field"))
        elif value is not None and value not in known["choices"]:
            errors.append(_error(key, "It should be one of these values: '" + ",".join(known["choices"]) + "'"))
    if errors:
        _invalid(errors)


def _create_ticket(state: FreshdeskState, attrs: dict[str, Any]) -> dict[str, Any]:
    _check_ticket(state, attrs, creating=True)
    stamp = state.now()
    ticket = {"id": state.next_id(), "subject": attrs["subject"], "description": attrs["description"],
              "description_text": _text(attrs["description"]), "status": attrs.get("status", 2),
              "priority": attrs.get("priority", 1), "source": attrs.get("source", 2), "type": attrs.get("type"),
              "requester_id": attrs["requester_id"], "responder_id": None, "group_id": None,
              "tags": list(attrs.get("tags") or []), "custom_fields": {
                  f["name"]: None for f in state.ticket_fields if not f["default"]},
              "is_escalated": False, "spam": False, "fr_escalated": False, "cc_emails": [], "fwd_emails": [],
              "due_by": stamp, "fr_due_by": stamp, "created_at": stamp, "updated_at": stamp}
    ticket["custom_fields"].update(attrs.get("custom_fields") or {})
    state.tickets[ticket["id"]] = ticket
    state.conversations[ticket["id"]] = []
    return ticket


def _text(body: str) -> str:
    """``body_text``: the HTML body as plain text (line breaks for <br> and block ends)."""
    text = re.sub(r"<br\s*/?>|</(p|div)>", "\n", body, flags=re.IGNORECASE)
    return html.unescape(re.sub(r"<[^>]+>", "", text)).strip("\n")


# ---------------------------------------------------------------- paging


def _int_arg(name: str, default: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or int(raw) < 1:
        _invalid([_error(name, "It should be a/an Positive Integer", "datatype_mismatch")])
    return int(raw)


def _page(items: list[Any]) -> Response:
    """A bare JSON array; a ``link`` header names the next page while there is one."""
    page = _int_arg("page", 1)
    per_page = _int_arg("per_page", DEFAULT_PER_PAGE)
    if per_page > MAX_PER_PAGE:
        _invalid([_error("per_page", f"It should be a/an Positive Integer less than or equal to {MAX_PER_PAGE}",
                         "invalid_value")])
    start = (page - 1) * per_page
    headers = {}
    if start + per_page < len(items):
        args = request.args.to_dict(flat=False)
        args["page"] = [str(page + 1)]
        headers["link"] = f'<{request.base_url}?{urlencode(args, doseq=True)}>; rel="next"'
    return render(200, items[start:start + per_page], headers)


# ---------------------------------------------------------------- views


def list_contacts() -> Response:
    state = _state()
    filters = {k: request.args[k] for k in ("email", "phone", "mobile") if k in request.args}
    with state.lock:
        # Exact match per the reference's filters; email is compared case-insensitively.
        found = [c for c in state.contacts.values()
                 if all((str(c.get(k) or "").lower() if k == "email" else str(c.get(k) or ""))
                        == (v.lower() if k == "email" else v) for k, v in filters.items())]
        return _page(found)


def autocomplete_contacts() -> Response:
    state = _state()
    term = request.args.get("term")
    if not term:
        _invalid([_error("term", "It should be a/an String", "missing_field")])
    with state.lock:
        found = [{"id": c["id"], "name": c["name"]} for c in state.contacts.values()
                 if (c["name"] or "").lower().startswith(term.lower())]
        return render(200, found)


def create_contact() -> Response:
    attrs = _payload(_CONTACT_KEYS)
    state = _state()
    with state.lock:
        _check_contact(state, attrs, None)
        contact = _new_contact(state, attrs)
        state.contacts[contact["id"]] = contact
        return render(201, contact, {"Location": f"{request.host_url}api/v2/contacts/{contact['id']}"})


def show_contact(contact_id: int) -> Response:
    state = _state()
    with state.lock:
        return render(200, state.contacts.get(contact_id) or _not_found())


def update_contact(contact_id: int) -> Response:
    attrs = _payload(_CONTACT_KEYS)
    state = _state()
    with state.lock:
        contact = state.contacts.get(contact_id) or _not_found()
        _check_contact(state, attrs, contact)
        contact.update(attrs)
        contact["updated_at"] = state.now()
        return render(200, contact)


def list_tickets() -> Response:
    state = _state()
    requester = request.args.get("requester_id")
    since = request.args.get("updated_since")
    order_type = request.args.get("order_type", "desc")
    if order_type not in ("asc", "desc"):
        _invalid([_error("order_type", "It should be one of these values: 'asc,desc'")])
    with state.lock:
        if requester is not None and (not requester.isdigit() or int(requester) not in state.contacts):
            _invalid([_error("requester_id", "There is no contact matching the given requester_id")])
        found = [t for t in state.tickets.values()
                 if (requester is None or t["requester_id"] == int(requester))
                 # Without updated_since only tickets created in the last 30 days are listed;
                 # every ticket here is that young, so the filter only has to parse.
                 and (since is None or t["updated_at"] >= since)]
        found.sort(key=lambda t: (t["created_at"], t["id"]), reverse=order_type == "desc")
        return _page(found)


def create_ticket() -> Response:
    attrs = _payload(_TICKET_KEYS)
    state = _state()
    with state.lock:
        ticket = _create_ticket(state, attrs)
        return render(201, ticket, {"Location": f"{request.host_url}api/v2/tickets/{ticket['id']}"})


def show_ticket(ticket_id: int) -> Response:
    state = _state()
    with state.lock:
        return render(200, state.tickets.get(ticket_id) or _not_found())


def update_ticket(ticket_id: int) -> Response:
    attrs = _payload(_TICKET_KEYS)
    state = _state()
    with state.lock:
        ticket = state.tickets.get(ticket_id) or _not_found()
        _check_ticket(state, attrs, creating=False)
        custom = attrs.pop("custom_fields", None) or {}
        ticket.update(attrs)
        ticket["custom_fields"].update(custom)
        if "description" in attrs:
            ticket["description_text"] = _text(attrs["description"])
        ticket["updated_at"] = state.now()
        return render(200, ticket)


def create_note(ticket_id: int) -> Response:
    attrs = _payload(_NOTE_KEYS)
    state = _state()
    with state.lock:
        ticket = state.tickets.get(ticket_id) or _not_found()
        if not isinstance(attrs.get("body"), str) or not attrs["body"]:
            _invalid([_error("body", "It should be a/an String", "missing_field")])
        stamp = state.now()
        note = {"id": state.next_id(), "body": attrs["body"], "body_text": _text(attrs["body"]),
                "incoming": bool(attrs.get("incoming", False)), "private": bool(attrs.get("private", True)),
                "user_id": attrs.get("user_id", state.agent_id), "support_email": None, "source": 2,
                "category": 2, "ticket_id": ticket_id, "to_emails": [], "from_email": None, "cc_emails": [],
                "bcc_emails": None, "attachments": [], "created_at": stamp, "updated_at": stamp}
        state.conversations[ticket_id].append(note)
        ticket["updated_at"] = stamp
        return render(201, note)


def list_conversations(ticket_id: int) -> Response:
    state = _state()
    with state.lock:
        if ticket_id not in state.tickets:
            _not_found()
        return _page(list(state.conversations[ticket_id]))


def list_ticket_fields() -> Response:
    return render(200, _state().ticket_fields)


_ROUTES = (
    ("/api/v2/contacts", "GET", list_contacts),
    ("/api/v2/contacts", "POST", create_contact),
    ("/api/v2/contacts/autocomplete", "GET", autocomplete_contacts),
    ("/api/v2/contacts/<int:contact_id>", "GET", show_contact),
    ("/api/v2/contacts/<int:contact_id>", "PUT", update_contact),
    ("/api/v2/tickets", "GET", list_tickets),
    ("/api/v2/tickets", "POST", create_ticket),
    ("/api/v2/tickets/<int:ticket_id>", "GET", show_ticket),
    ("/api/v2/tickets/<int:ticket_id>", "PUT", update_ticket),
    ("/api/v2/tickets/<int:ticket_id>/notes", "POST", create_note),
    ("/api/v2/tickets/<int:ticket_id>/conversations", "GET", list_conversations),
    ("/api/v2/ticket_fields", "GET", list_ticket_fields),
)


def _before_request() -> Response | None:
    state = _state()
    record_request(state)
    fault = state.take_fault()
    if fault is not None:
        return render(fault.status, fault.body, fault.headers)
    auth = request.authorization
    if auth is None or auth.type != "basic" or not any(
            hmac.compare_digest((auth.username or "").encode(), key.encode()) for key in state.api_keys):
        return render(401, {"code": "invalid_credentials",
                            "message": "You have to be logged in to perform this action."})
    if request.method in ("POST", "PUT") and not request.is_json:
        return render(415, {"code": "invalid_content_type", "message": "Content-Type header is set to "
                            f"{request.content_type}. It should be set to application/json"})
    return None


def _after_request(response: Response) -> Response:
    response.headers.setdefault("X-RateLimit-Total", str(RATE_LIMIT_TOTAL))
    response.headers.setdefault("X-RateLimit-Remaining", str(RATE_LIMIT_TOTAL - 1))
    response.headers.setdefault("X-RateLimit-Used-CurrentRequest", "1")
    return response


def create_app(state: FreshdeskState | None = None) -> Flask:
    app = Flask(__name__)
    app.extensions["freshdesk_fake"] = state if state is not None else FreshdeskState()
    for rule, method, view in _ROUTES:
        app.add_url_rule(rule, endpoint=f"{view.__name__}", view_func=view, methods=[method])
    app.before_request(_before_request)
    app.after_request(_after_request)
    app.register_error_handler(ApiError, lambda e: render(e.status, e.body, e.headers))
    app.register_error_handler(404, lambda e: render(404, None))
    return app
