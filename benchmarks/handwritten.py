"""The baseline: the demo CRM served to Khoros by hand-written Python, no engine.

Why it exists: the roadmap asks that the engine cost about what hand-written
code costs. To measure that we need the hand-written code, written the way a
careful developer would for this one CRM: one pooled ``requests.Session``,
the same upstream calls as ``mappings/demo.yaml`` (same paths, query
parameters, headers and bodies), a light check of what Khoros sends, and the
Khoros JSON built with dict literals. It must answer exactly what the engine
answers, or the comparison is meaningless; ``engine_overhead`` checks that
before timing anything.

What it deliberately does not do, because a typical hand-written handler
would not either: per-call deadlines taken from the Khoros budget, streamed
bodies with a size cap, error-rule tables, logging. Those are part of what
the engine's overhead pays for.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import requests

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

    def __init__(self, base_url: str, api_key: str = "", timeout: float = 5.0) -> None:
        self.base_url = base_url
        self.timeout = timeout
        self.session = requests.Session()
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

    def get_case(self, case_id: str) -> dict[str, Any]:
        """``GET /case/<id>``: the case and its notes, the notes as Khoros interactions."""
        case = self._get(f"/cases/{_segment(case_id)}")
        notes = self._get(f"/cases/{_segment(case_id)}/notes")["items"]
        return self._case(case, notes)

    # -- plumbing --------------------------------------------------------

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


def _segment(value: str) -> str:
    """Ids go into URL paths; a hand-written handler must encode them too (the engine does)."""
    return quote(value, safe="")
