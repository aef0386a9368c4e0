"""Tell whether a CRM record is the person Khoros asks about.

Khoros's best match sends what a social network knows about someone: an email,
phone numbers in whatever format the person typed, a handle, a display name.
CRMs store the same facts in their own spelling. Comparing them as text finds
nobody (``(555) 146-9907`` is not ``+15551469907``), so each kind of identifier
is compared through a *key* that ignores what does not tell people apart:

* phone numbers in E.164 (``+15551469907``), parsed with Google's libphonenumber
  port ``phonenumbers``; a number without a country code is read in the region
  the mapping sets (``identity.region``);
* emails and handles case-folded (and a handle without its leading ``@``);
* names case-folded, without accents, with runs of spaces made one.

:func:`rank_matches` orders the candidates a mapping's searches found by the
strongest identifier they share with the request (email, then phone, then
handle, then name), drops candidates that share none, and lists each record
once. The mapping says where its records keep each identifier in its
``identity:`` section, read into :class:`IdentityRules`; the filters reach the
rules through the template environment, so nothing is looked up per request.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import phonenumbers
from jinja2 import Undefined

# How a record matched, strongest first; the index is the rank.
MATCH_KINDS = ("email", "phone", "handle", "name")


@dataclass(frozen=True)
class IdentityRules:
    """Where a CRM record keeps each identifier (dotted paths), and the phone region.

    ``email``, ``phone`` and ``handle`` list alternatives (any may hold it);
    ``name`` lists the parts of one full name, joined with a space."""

    region: str | None = None
    id: str = "id"
    email: tuple[str, ...] = ("email",)
    phone: tuple[str, ...] = ("phone",)
    handle: tuple[str, ...] = ()
    name: tuple[str, ...] = ("name",)


DEFAULT_RULES = IdentityRules()


def known_region(region: str) -> bool:
    """Whether ``region`` is a two-letter region libphonenumber has numbering rules for."""
    return region.upper() in phonenumbers.SUPPORTED_REGIONS


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, (Undefined, bool)):
        return None
    text = str(value).strip()
    return text or None


def e164(value: Any, region: str | None = None) -> str | None:
    """The number in E.164 (``+15551469907``), or ``None`` when it is not a possible
    phone number. ``region`` (``US``, ``GB``...) reads numbers written without a
    country code. Text with letters is refused: it is not a number a CRM stores
    (and libphonenumber would read letters as a keypad spells them)."""
    text = _text(value)
    if text is None or any(ch.isalpha() for ch in text):
        return None
    try:
        number = phonenumbers.parse(text, region.upper() if region else None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def phone_forms(value: Any, region: str | None = None) -> list[str]:
    """The spellings to search an exact-match CRM with: the value as given, then E.164,
    the international and the national format (each once). A value that is not a
    possible number gives only itself."""
    text = _text(value)
    if text is None:
        return []
    forms = [text]
    normal = e164(text, region)
    if normal is not None:
        number = phonenumbers.parse(normal)
        forms += [normal,
                  phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.INTERNATIONAL),
                  phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL)]
    return list(dict.fromkeys(forms))


def phone_key(value: Any, region: str | None = None) -> str | None:
    """What two phone numbers are compared by: E.164 when the value is a possible number,
    else its letters and digits case-folded (so a value that is not a number still
    equals itself, however it is punctuated)."""
    normal = e164(value, region)
    if normal is not None:
        return normal
    text = _text(value)
    kept = "".join(ch for ch in text if ch.isalnum()).casefold() if text else ""
    return kept or None


def email_key(value: Any) -> str | None:
    """``Jane@Example.COM `` and ``jane@example.com`` are one address."""
    text = _text(value)
    return text.casefold() if text else None


def handle_key(value: Any) -> str | None:
    """``@Jane`` and ``jane`` are one handle."""
    text = _text(value)
    text = text.lstrip("@").strip().casefold() if text else None
    return text or None


_SPACES = re.compile(r"\s+")


def name_key(value: Any) -> str | None:
    """``  Zoë  O'Brien`` and ``zoe o'brien`` are one name: accents dropped (NFKD,
    without combining marks), case-folded, runs of white space made one space."""
    text = _text(value)
    if text is None:
        return None
    bare = "".join(ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch))
    return _SPACES.sub(" ", bare).strip().casefold() or None


def _at(record: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(record, dict):
            return None
        record = record.get(part)
    return record


def _values(record: Any, paths: Iterable[str]) -> list[Any]:
    """The values at ``paths``; a list found at a path counts item by item."""
    out: list[Any] = []
    for path in paths:
        value = _at(record, path)
        out.extend(value if isinstance(value, list) else [value])
    return out


def _keys(kind: str, values: Iterable[Any], rules: IdentityRules) -> set[str]:
    if kind == "phone":
        found = {phone_key(v, rules.region) for v in values}
    elif kind == "email":
        found = {email_key(v) for v in values}
    elif kind == "handle":
        found = {handle_key(v) for v in values}
    else:
        found = {name_key(v) for v in values}
    found.discard(None)
    return {key for key in found if key is not None}


def _wanted(body: Any, rules: IdentityRules) -> dict[str, set[str]]:
    """The keys of what Khoros knows about the person, per kind."""
    body = body if isinstance(body, dict) else {}
    numbers = body.get("phoneNumbers")
    return {
        "email": _keys("email", [body.get("email")], rules),
        "phone": _keys("phone", numbers if isinstance(numbers, list) else [numbers], rules),
        "handle": _keys("handle", [body.get("screenName")], rules),
        "name": _keys("name", [body.get("displayName")], rules),
    }


def _record_keys(kind: str, record: Any, rules: IdentityRules) -> set[str]:
    if kind == "name":
        parts = [_text(v) for v in _values(record, rules.name)]
        return _keys("name", [" ".join(p for p in parts if p)], rules)
    return _keys(kind, _values(record, getattr(rules, kind)), rules)


def match_rank(record: Any, wanted: dict[str, set[str]], rules: IdentityRules) -> int | None:
    """0 when the record shares the email, 1 a phone number, 2 the handle, 3 the name;
    None when it shares nothing."""
    for rank, kind in enumerate(MATCH_KINDS):
        if wanted[kind] and wanted[kind] & _record_keys(kind, record, rules):
            return rank
    return None


def _identity(record: Any, rules: IdentityRules) -> str:
    key = _at(record, rules.id)
    if key is not None:
        return "id:" + str(key)
    return "record:" + json.dumps(record, sort_keys=True, default=str)


def rank_matches(candidates: Any, body: Any, rules: IdentityRules = DEFAULT_RULES) -> list[Any]:
    """The candidates that share an identifier with the best-match ``body``, best first
    (email, phone, handle, name; the CRM's order within one kind), each record once."""
    wanted = _wanted(body, rules)
    ranked: dict[str, tuple[int, int, Any]] = {}
    for position, record in enumerate(candidates if isinstance(candidates, list) else []):
        rank = match_rank(record, wanted, rules)
        if rank is None:
            continue
        key = _identity(record, rules)
        if key not in ranked or rank < ranked[key][0]:
            ranked[key] = (rank, ranked.get(key, (rank, position))[1], record)
    return [record for _, _, record in sorted(ranked.values(), key=lambda item: (item[0], item[1]))]
