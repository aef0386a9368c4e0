"""Turn CRM records into the Khoros objects the contract promises.

The mapping's ``shapes`` say how one CRM record becomes a Khoros customer or
case. This module runs that shape and then holds the result to the contract,
so a mapping mistake shows up as a clear 500 naming the mapping line instead
of an answer Khoros silently misreads: ids are non-empty strings, ``url``
mirrors ``uri``/``linkUrl``, dates are real ISO-8601 dates, case status is
open or closed, and fields with no value are left out ("every populated field").

Links are shown to agents as links, so only ``http``/``https`` ones leave.
An object's own link (``uri``, ``linkUrl``) is built by the mapping from its
settings, so any other scheme is a mapping error. An interaction's link often
comes from text anyone can edit in the CRM, so a ``javascript:`` or ``data:``
link there is blanked (and logged) rather than failing the whole case.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from ..errors import MappingRuntimeError, MissingValue
from .khoros import CASE_STATUSES
from .pipeline import Where, describe_keys
from .templating import Compiled

log = logging.getLogger("mapper.shaping")

_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})$")

# Per object kind: the key that must be a link, and keys that must be present.
LINK_KEY = {"customer": "uri", "case": "linkUrl"}
REQUIRED = {"customer": ("id", "uri"), "case": ("id", "linkUrl", "created", "status")}
DATE_KEYS = ("created", "lastUpdated")
INTERACTION_REQUIRED = ("created", "body", "linkUrl", "serviceId", "service", "contentType")


def _populated(value: Any) -> bool:
    return value is not None and value != "" and value != [] and value != {}


def is_web_link(value: Any) -> bool:
    """An absolute ``http``/``https`` URL with a host and no control characters."""
    if not isinstance(value, str) or any(ch < " " or ch == "\x7f" for ch in value):
        return False
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.hostname)


def is_date(value: Any) -> bool:
    """``YYYY-MM-DDTHH:MM[:SS[.f]]`` with ``Z`` or an offset, and a date and time that exist."""
    if not isinstance(value, str) or not _ISO.match(value):
        return False
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


class Shaper:
    """Applies the mapping's shape for one object kind and checks the result."""

    def __init__(self, kind: str, shape: Compiled, where: Where) -> None:
        self.kind = kind
        self.shape = shape
        self.where = where

    def one(self, record: Any, scope: dict[str, Any]) -> dict[str, Any]:
        try:
            raw = self.shape.evaluate({**scope, "record": record})
        except MappingRuntimeError as exc:
            # A record that is not an object at all (a list, an envelope's text) is the CRM's
            # broken answer, whatever the shape tripped over: crm_error, like a missing key.
            kind = type(exc) if isinstance(record, dict) else MissingValue
            raise kind(f"{exc.message.rstrip('.')}; {describe_keys('record', record)}.",
                       internal=exc.internal) from exc
        if not isinstance(raw, dict):
            raise self._fail(f"gave {type(raw).__name__}, not an object")
        obj = {key: value for key, value in raw.items() if _populated(value) or key == "interactions"}
        for key in REQUIRED[self.kind]:
            if not _populated(obj.get(key)):
                raise self._fail(f"gave no '{key}' for a record from the CRM")
        if not isinstance(obj["id"], str):
            raise self._fail(f"gave an 'id' of type {type(obj['id']).__name__}; Khoros ids are strings "
                             "(add '| string')")
        if not is_web_link(obj[LINK_KEY[self.kind]]):
            raise self._fail(f"gave a '{LINK_KEY[self.kind]}' that is not an http(s) link")
        obj["url"] = obj[LINK_KEY[self.kind]]
        for key in DATE_KEYS:
            if key in obj and not is_date(obj[key]):
                raise self._fail(f"gave '{key}' that is not an ISO-8601 date of a real day and time (use '| isodate')")
        if self.kind == "case":
            self._check_case(obj)
        return obj

    def many(self, records: Any, scope: dict[str, Any]) -> list[dict[str, Any]]:
        if records is None:
            return []
        if not isinstance(records, list):
            raise self._fail(f"expected a list of records but the result is {type(records).__name__}")
        return [self.one(record, scope) for record in records]

    def _check_case(self, obj: dict[str, Any]) -> None:
        if obj["status"] not in CASE_STATUSES:
            raise self._fail("gave a status other than 'open' or 'closed'")
        if "customerId" in obj and not isinstance(obj["customerId"], str):
            obj["customerId"] = str(obj["customerId"])
        interactions = obj.get("interactions")
        if interactions is None:
            obj.pop("interactions", None)
            return
        if not isinstance(interactions, list):
            raise self._fail("gave 'interactions' that is not a list")
        checked = []
        for item in interactions:
            missing = [k for k in INTERACTION_REQUIRED if not isinstance(item, dict) or item.get(k) is None]
            if missing:
                raise self._fail(f"gave an interaction without {', '.join(missing)}")
            if not is_date(item["created"]):
                raise self._fail("gave an interaction whose 'created' is not an ISO-8601 date of a real day "
                                 "and time (use '| isodate')")
            if item["linkUrl"] != "" and not is_web_link(item["linkUrl"]):
                log.warning("case %s: an interaction's link is not http(s); it is sent empty", obj["id"])
                item = {**item, "linkUrl": ""}
            checked.append(item)
        obj["interactions"] = checked

    def _fail(self, what: str) -> MappingRuntimeError:
        return MappingRuntimeError(f"The mapping's {self.kind} shape ({self.where}) {what}.")
