"""The baseline: the demo CRM served to Khoros by hand-written Python, no engine.

Why it exists: the roadmap asks that the engine cost about what hand-written
code costs. To measure that we need the hand-written code, written the way a
careful developer would for this one CRM: one pooled ``requests.Session``,
the same upstream calls as ``mappings/demo.yaml`` (same paths, query
parameters, headers and bodies), a light check of what Khoros sends, and the
Khoros JSON built with dict literals. It must answer exactly what the engine
answers, or the comparison is meaningless; ``engine_overhead`` checks that
before timing anything.

Its case create is safe to retry as the demo mapping's is: it looks the case
up by the request's key before writing and stores the key on the case.

What it deliberately does not do, because a typical hand-written handler
would not either: per-call deadlines taken from the Khoros budget, streamed
bodies with a size cap, error-rule tables, logging, a store of answers that
sends a retried create's answer again without calling the CRM (the engine
keeps one, in memory by default; the CRM look-up above is this handler's
only guard). Those are part of what the engine's overhead pays for.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import requests
from requests.adapters import HTTPAdapter

# The demo mapping's customer model, as a hand-written handler would hard-code it.
CUSTOMER_FIELDS: dict[str, type] = {
    "firstName": str, "lastName": str, "email": str, "phone": str, "twitter": str,
    "tier": str, "vip": bool, "notes": str,
}
SEARCHABLE = ("email", "phone", "twitter", "firstName", "lastName")
TIERS = ("gold", "silver", "bronze")
# Keys Khoros may echo back in a write; they can never be written (docs/decisions.md).
IGNORED_ON_WRITE = frozenset({"id", "uri", "url"})
CRM_NAMES = {"firstName": "first_name", "lastName": "last_name"}
# The demo CRM's query parameter for each searchable Khoros field, in the mapping's order.
SEARCH_PARAMS = (("email", "email"), ("phone", "phone"), ("twitter", "twitter"),
                 ("firstName", "first_name"), ("lastName", "last_name"))
CASE_FIELDS = frozenset({"title", "description", "status", "priority"})
CASE_IGNORED = frozenset({"id", "number", "linkUrl", "url", "created", "lastUpdated"})
CASE_LISTS = {"status": ("open", "closed"), "priority": ("low", "normal", "high")}
INTERACTION_KEYS = ("created", "body", "linkUrl", "serviceId", "service", "contentType")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class Invalid(ValueError):
    """Khoros sent a body this handler refuses (the engine answers 400 or 422)."""


class Missing(LookupError):
    """The CRM has no such record (the engine answers 404)."""


def _populated(value: Any) -> bool:
    """Khoros gets "every populated field": empty values are left out, as the engine does."""
    return value is not None and value != "" and value != [] and value != {}


def _isodate(value: str | None) -> str | None:
    """The demo CRM's millisecond UTC stamps, as Khoros shows dates (seconds, ``Z``)."""
    if not value:
        return None
    return datetime.fromisoformat(value).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class HandWrittenDemo:
    """The four benchmarked Khoros operations for the demo CRM, written out by hand."""

    def __init__(self, base_url: str, api_key: str = "", timeout: float = 5.0, pool_size: int = 10) -> None:
        self.base_url = base_url
        self.timeout = timeout
        self.session = requests.Session()
        # One kept-alive CRM connection per server thread, as the engine has (requests' default is 10).
        adapter = HTTPAdapter(pool_maxsize=pool_size)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        # The same headers the engine sends: connection.headers plus the header auth.
        self.session.headers.update({"Accept": "application/json", "X-Api-Key": api_key})

    def close(self) -> None:
        self.session.close()

    # -- operations ------------------------------------------------------

    def search_customers(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        """``POST /customers``: exact search on the fields Khoros sent."""
        if not isinstance(body, dict):
            raise Invalid("The request body must be a JSON object.")
        unknown = set(body) - set(CUSTOMER_FIELDS) - IGNORED_ON_WRITE
        if unknown:
            raise Invalid(f"Unknown customer fields: {', '.join(sorted(unknown))}.")
        clean = {k: v for k, v in body.items() if v not in (None, "") and k not in IGNORED_ON_WRITE}
        for name, value in clean.items():
            if not isinstance(value, CUSTOMER_FIELDS[name]):
                raise Invalid(f"Search field '{name}' has the wrong type.")
        if not clean:
            return []
        params = [(crm, clean[khoros]) for khoros, crm in SEARCH_PARAMS if khoros in clean]
        params.append(("limit", "50"))
        answer = self._get("/customers", params)
        return [self._customer(record) for record in answer["items"]]

    def get_customer(self, customer_id: str) -> dict[str, Any]:
        """``GET /customer/<id>``."""
        return self._customer(self._get(f"/customers/{_segment(customer_id)}"))

    def create_customer(self, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /customer``: check the fields, rename two, create, answer the new customer."""
        if not isinstance(body, dict):
            raise Invalid("The request body must be a JSON object.")
        unknown = set(body) - set(CUSTOMER_FIELDS) - IGNORED_ON_WRITE
        if unknown:
            raise Invalid(f"Unknown customer fields: {', '.join(sorted(unknown))}.")
        record: dict[str, Any] = {}
        for name, value in body.items():
            if name in IGNORED_ON_WRITE or value is None or value == "":
                continue
            if not isinstance(value, CUSTOMER_FIELDS[name]):
                raise Invalid(f"{name} has the wrong type.")
            bad_tier = name == "tier" and value not in TIERS
            bad_email = name == "email" and isinstance(value, str) and not _EMAIL.match(value)
            if bad_tier or bad_email:
                raise Invalid(f"{name} is not valid.")
            record[CRM_NAMES.get(name, name)] = value
        response = self.session.post(self.base_url + "/customers", json=record, timeout=self.timeout)
        response.raise_for_status()
        return self._customer(response.json())

    def create_case(self, body: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        """``POST /case``, safe to retry: look the case up by its request key first (a Khoros
        retry of a create that got through finds it and adds only the missing notes), else
        create it with that key; then one note per interaction, then read its notes back (as
        the demo mapping does); answer the case with them."""
        if not isinstance(body, dict):
            raise Invalid("The request body must be a JSON object.")
        unknown = set(body) - CASE_FIELDS - {"customerId", "interactions"} - CASE_IGNORED
        if unknown:
            raise Invalid(f"Unknown case fields: {', '.join(sorted(unknown))}.")
        if not body.get("customerId") or not isinstance(body["customerId"], (str, int)):
            raise Invalid("customerId is required.")
        if not isinstance(body.get("title"), str) or not body["title"]:
            raise Invalid("title is required.")
        for name in ("status", "priority"):
            if body.get(name) not in (None, "") and body[name] not in CASE_LISTS[name]:
                raise Invalid(f"{name} is not valid.")
        interactions = body.get("interactions") or []
        if not isinstance(interactions, list) or not all(
                isinstance(i, dict) and all(isinstance(i.get(k), str) for k in INTERACTION_KEYS)
                for i in interactions):
            raise Invalid("interactions are incomplete.")
        key = _request_key("create_case", body, idempotency_key)
        earlier = self._get("/cases", [("external_id", key)])["items"]
        if earlier:
            case = earlier[0]
            path = f"/cases/{_segment(str(case['id']))}/notes"
            known = {note["external_id"] for note in self._get(path)["items"]}
        else:
            record: dict[str, Any] = {"customer_id": str(body["customerId"]), "subject": body["title"]}
            for name in ("description", "status", "priority"):
                if name in body:
                    record[name] = body[name]
            record["external_id"] = key
            case = self._post("/cases", record)
            path = f"/cases/{_segment(str(case['id']))}/notes"
            known = set()
        for post in interactions:
            if post["serviceId"] in known:
                continue
            author = post.get("author")
            note: dict[str, Any] = {
                "posted_at": post["created"], "body": post["body"], "link": post["linkUrl"],
                "channel": post["service"], "external_id": post["serviceId"], "content_type": post["contentType"]}
            if author is not None:
                note.update(author_name=author.get("name"), author_handle=author.get("handle"),
                            author_id=author.get("serviceId"), brand_owned=author.get("brandOwned"))
            else:
                note["brand_owned"] = False
            self._post(path, note)
        notes = self._get(path)["items"]
        return self._case(case, notes)

    def get_case(self, case_id: str) -> dict[str, Any]:
        """``GET /case/<id>``: the case and its notes, the notes as Khoros interactions."""
        case = self._get(f"/cases/{_segment(case_id)}")
        notes = self._get(f"/cases/{_segment(case_id)}/notes")["items"]
        return self._case(case, notes)

    # -- plumbing --------------------------------------------------------

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        response = self.session.post(self.base_url + path, json=body, timeout=self.timeout)
        response.raise_for_status()
        return response.json()

    def _get(self, path: str, params: list[tuple[str, str]] | None = None) -> Any:
        response = self.session.get(self.base_url + path, params=params, timeout=self.timeout)
        if response.status_code == 404:
            raise Missing(path)
        response.raise_for_status()
        return response.json()

    def _customer(self, record: dict[str, Any]) -> dict[str, Any]:
        obj = {
            "id": str(record["id"]),
            "uri": f"{self.base_url}/customers/{record['id']}",
            "firstName": record["first_name"],
            "lastName": record["last_name"],
            "email": record["email"],
            "phone": record["phone"],
            "twitter": record["twitter"],
            "tier": record["tier"],
            "vip": record["vip"],
            "notes": record["notes"],
        }
        obj = {key: value for key, value in obj.items() if _populated(value)}
        obj["url"] = obj["uri"]
        return obj

    def _case(self, case: dict[str, Any], notes: list[dict[str, Any]]) -> dict[str, Any]:
        obj = {
            "id": str(case["id"]),
            "number": f"DEMO-{case['id']}",
            "customerId": str(case["customer_id"]),
            "title": case["subject"],
            "description": case["description"],
            "linkUrl": f"{self.base_url}/cases/{case['id']}",
            "created": _isodate(case["created_at"]),
            "lastUpdated": _isodate(case["updated_at"]),
            "status": "closed" if case["status"] == "closed" else "open",
            "priority": case["priority"],
        }
        obj = {key: value for key, value in obj.items() if _populated(value)}
        obj["interactions"] = [_interaction(note) for note in notes]
        obj["url"] = obj["linkUrl"]
        return obj


def _interaction(note: dict[str, Any]) -> dict[str, Any]:
    out = {
        "created": _isodate(note["posted_at"]),
        "body": note["body"],
        "linkUrl": note["link"],
        "serviceId": note["external_id"],
        "service": note["channel"],
        "contentType": note["content_type"],
    }
    if note["author_id"] or note["author_handle"] or note["author_name"]:
        out["author"] = {"service": note["channel"], "serviceId": note["author_id"],
                         "handle": note["author_handle"], "name": note["author_name"],
                         "brandOwned": note["brand_owned"]}
    return out


def _request_key(operation: str, body: dict[str, Any], supplied: str | None) -> str:
    """The create's key, kept on the case so that a retry finds it: the caller's
    ``Idempotency-Key`` if sent, else a hash of the body in one canonical spelling (sorted
    keys, no spaces), so a retry sent byte for byte, or re-serialised, gets the same key.
    The same text is hashed as the engine hashes, so both sides send the canned CRM the same
    calls (the benchmark compares them)."""
    if supplied:
        material = f"header\x00{operation}\x00{supplied}"
    else:
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        material = f"body\x00{operation}\x00{canonical}"
    return hashlib.sha256(material.encode("utf-8")).hexdigest()[:32]


def _segment(value: str) -> str:
    """Ids go into URL paths; a hand-written handler must encode them too (the engine does)."""
    return quote(value, safe="")


def create_app() -> Any:
    """The hand-written handler as a Flask app, for gunicorn: the benchmarked Khoros routes.

    ``gunicorn 'benchmarks.handwritten:create_app()'`` with ``DEMO_CRM_URL`` and
    ``HANDWRITTEN_TOKEN`` set (and ``HANDWRITTEN_THREADS``, gunicorn's threads, to size the
    CRM connection pool). Checks the Authorization header as our server does."""
    import hmac
    import os

    from flask import Flask, Response, request

    handler = HandWrittenDemo(os.environ["DEMO_CRM_URL"], pool_size=int(os.environ.get("HANDWRITTEN_THREADS", "10")))
    token = os.environ["HANDWRITTEN_TOKEN"].encode()
    app = Flask("handwritten")

    def answer(payload: Any, status: int = 200) -> Response:
        return Response(json.dumps(payload), status=status, mimetype="application/json")

    @app.before_request
    def check_token() -> Response | None:
        if not hmac.compare_digest(request.headers.get("Authorization", "").encode(), token):
            return answer({"error": "unauthorized", "message": "Wrong Authorization."}, 401)
        return None

    @app.errorhandler(Invalid)
    def invalid(exc: Invalid) -> Response:
        return answer({"error": "bad_request", "message": str(exc)}, 400)

    @app.errorhandler(Missing)
    def missing(exc: Missing) -> Response:
        return answer({"error": "not_found", "message": "No such record."}, 404)

    @app.get("/api/v1/customer/<customer_id>")
    def get_customer(customer_id: str) -> Response:
        return answer(handler.get_customer(customer_id))

    @app.post("/api/v1/customers")
    def search_customers() -> Response:
        return answer(handler.search_customers(json.loads(request.get_data())))

    @app.post("/api/v1/case")
    def create_case() -> Response:
        return answer(handler.create_case(json.loads(request.get_data()), request.headers.get("Idempotency-Key")), 201)

    return app
