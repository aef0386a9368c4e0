"""The filters a mapping's templates may use beyond Jinja's own.

Each one answers a need real CRMs showed (exact matches out of substring
searches, quoting values inside query languages, JSON kept in text fields,
dates in every format); each is generic, names no CRM, and is listed in
:data:`FILTERS`, the table the template environment is built from. Filters
never raise on ``none`` where a CRM commonly leaves a field empty.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from jinja2 import Undefined, pass_environment
from jinja2.environment import Environment

from . import identity


def _merge(left: Any, *others: Any) -> dict[str, Any]:
    """``a | merge(b)``: a new dict with b's keys over a's (inputs untouched)."""
    result = dict(left or {})
    for other in others:
        result.update(other or {})
    return result


def _without(mapping: Any, *keys: str) -> dict[str, Any]:
    """``body | without('interactions')``: a copy of a dict without some keys."""
    return {k: v for k, v in (mapping or {}).items() if k not in keys}


def _only(mapping: Any, *keys: str) -> dict[str, Any]:
    """``body | only('email', 'phone')``: a copy of a dict with just these keys (those present)."""
    return {k: v for k, v in (mapping or {}).items() if k in keys}


def _rename_keys(mapping: Any, names: dict[str, str]) -> dict[str, Any]:
    """``body | rename_keys({'firstName': 'first_name'})``: a copy with keys renamed
    (keys not listed are kept as they are)."""
    return {names.get(k, k): v for k, v in (mapping or {}).items()}


def _match_all(items: Any, criteria: Any, ignore_case: bool = False) -> list[Any]:
    """``results | match_all({'email': body.email})``: keep the records whose value for
    every key of ``criteria`` equals the criterion. CRMs whose search is a substring
    or fuzzy match use this to keep exact matches only. Keys may be dotted paths
    (``'contact.email'``); with ``ignore_case`` strings compare case-insensitively."""

    def value_at(record: Any, dotted: str) -> Any:
        for part in dotted.split("."):
            if not isinstance(record, dict):
                return None
            record = record.get(part)
        return record

    def same(left: Any, right: Any) -> bool:
        if ignore_case and isinstance(left, str) and isinstance(right, str):
            return left.casefold() == right.casefold()
        return bool(left == right)

    wanted = dict(criteria or {})
    return [item for item in (items or []) if all(same(value_at(item, k), v) for k, v in wanted.items())]


def _re_sub(value: Any, pattern: str, replacement: str = "") -> str:
    """``name | re_sub(' · [0-9a-f]{8}$', '')``: regular-expression replace, for
    taking apart values a CRM stores combined (a title plus a uniqueness suffix)."""
    return re.sub(pattern, replacement, "" if value is None else str(value))


def _digits(value: Any) -> str:
    """Only the digits of a value: compare phone numbers whatever their punctuation."""
    return "".join(ch for ch in str(value or "") if ch.isdigit())


def _isodate(value: Any) -> Any:
    """Normalise a timestamp to ``YYYY-MM-DDTHH:MM:SSZ`` (UTC), as Khoros shows dates.

    Accepts ISO-8601 strings (with ``Z``, an offset, or naive meaning UTC) and
    epoch numbers (seconds, or milliseconds when larger than 10^11). ``none``
    and empty strings pass through as ``none``.
    """
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = value / 1000 if value > 1e11 else value
        moment = datetime.fromtimestamp(seconds, tz=UTC)
    else:
        text = str(value).strip()
        if text.isdigit():
            return _isodate(int(text))
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError as exc:
            raise ValueError(f"not an ISO-8601 date: {text[:40]!r}") from exc
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _fromjson(value: Any, *default: Any) -> Any:
    """Parse JSON kept in a text field (for CRMs that only store strings).

    ``x | fromjson`` fails on text that is not JSON; ``x | fromjson({})`` gives
    the default instead, for text a person may have edited in the CRM."""
    if value is None or value == "":
        return default[0] if default else None
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        if default:
            return default[0]
        raise


def _backslash_escape(value: Any, chars: str = "\\'\"") -> str:
    """Put a backslash before every character of ``chars`` (the backslash itself included
    if listed): the escaping most query languages use inside quoted literals."""
    text = "" if value is None else str(value)
    return "".join("\\" + ch if ch in chars else ch for ch in text)


def _quote_literal(value: Any, quote_char: str = '"', escape: str = "\\") -> str:
    """Wrap a value in quotes, escaping the quote and the escape character, so a
    query language reads it as one literal whatever it contains."""
    text = "" if value is None else str(value)
    if escape != quote_char:  # SQL-style doubling ('') escapes the quote only once
        text = text.replace(escape, escape + escape)
    text = text.replace(quote_char, escape + quote_char)
    return f"{quote_char}{text}{quote_char}"


def _odata_string(value: Any) -> str:
    """``x | odata_string``: an OData v4 string literal, ``'O''Brien'``: wrapped in single
    quotes with every quote doubled (OData ABNF ``string``, ``SQUOTE-in-string``). The HTTP
    client percent-encodes the whole ``$filter`` afterwards."""
    text = "" if value is None else str(value)
    return "'" + text.replace("'", "''") + "'"


def _encoded_query_value(value: Any) -> str:
    """``x | encoded_query_value``: a value for a caret-separated encoded query
    (``field=value^field2=value2``), with every ``^`` doubled so that it cannot end the
    condition or start ``^OR``/``^NQ``. ``=`` needs nothing: the first operator after the
    field name is the operator, the rest of the condition is the value."""
    return ("" if value is None else str(value)).replace("^", "^^")


def _without_surrogates(text: str) -> str:
    """Drop lone UTF-16 surrogates: they cannot be encoded, so no CRM could receive them."""
    return text.encode("utf-8", "ignore").decode("utf-8") if any("\ud800" <= ch <= "\udfff" for ch in text) else text


# Characters a search phrase cannot carry when the grammar has no escape inside quotes.
_PHRASE_BREAKERS = re.compile(r'["\\\s\x00-\x1f\x7f]+')


def _search_phrase(value: Any) -> str:
    """``name | search_phrase``: a double-quoted phrase for a search syntax that has
    **no escape inside quotes** (a ``"`` always ends the phrase, a ``\\`` is not special).

    Such a grammar cannot carry ``"`` or ``\\`` at all, so each run of them (and of
    whitespace and control characters) becomes one space: the words still match, and no
    value can close the phrase and add a term. The result is always exactly one phrase;
    a value with nothing left gives ``""``, which a mapping should not search for. Since
    the phrase is looser than the value, the mapping must re-check results for exact
    matches (``match_all`` or a ``$where``)."""
    text = _without_surrogates("" if value is None else str(value))
    return '"' + _PHRASE_BREAKERS.sub(" ", text).strip() + '"'


# SOQL's quoted-string escapes (SOQL and SOSL Reference, "Quoted String Escape Sequences").
_SOQL_ESCAPES = {"\\": "\\\\", "'": "\\'", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t",
                 "\b": "\\b", "\f": "\\f"}


def _soql_string(value: Any) -> str:
    """``email | soql_string``: a single-quoted SOQL string literal for ``=``, ``!=`` and ``IN``.

    Uses only the documented escapes (``\\\\ \\' \\" \\n \\r \\t \\b \\f``); other
    control characters have no documented escape, so they are removed. ``%`` and ``_``
    are left as they are: they are wildcards only in ``LIKE``, and ``\\%`` outside a LIKE
    is an error."""
    text = _without_surrogates("" if value is None else str(value))
    out = []
    for ch in text:
        if ch in _SOQL_ESCAPES:
            out.append(_SOQL_ESCAPES[ch])
        elif ch < " " or ch == "\x7f":
            continue
        else:
            out.append(ch)
    return "'" + "".join(out) + "'"


def urlencode_part(value: Any) -> str:
    """Percent-encode a value for use as one URL path segment."""
    return quote("" if value is None else str(value), safe="")


def _as_list(value: Any) -> list[Any]:
    """``x | as_list``: none -> [], a list stays, anything else -> [x]."""
    if value is None:
        return []
    if isinstance(value, list):
        return value
    return [value]


def _explode(items: Any, key: str) -> list[Any]:
    """``errors | explode('fields')``: one copy of each record per element of its list at
    ``key``, with ``key`` holding that one element. Records where ``key`` is missing, null
    or an empty list give nothing; a value that is not a list counts as a list of one.
    For answers that group several names under one item (one error naming three fields)
    when each name needs an entry of its own. Anything but a list of dicts gives []."""
    if not isinstance(items, list):
        return []
    out: list[Any] = []
    for item in items:
        if not isinstance(item, dict) or item.get(key) in (None, []):
            continue
        values = item[key] if isinstance(item[key], list) else [item[key]]
        out.extend({**item, key: value} for value in values)
    return out


def _dig(value: Any, *keys: Any, default: Any = None) -> Any:
    """``response | dig('errors', 0, 'extensions', 'code')``: the value at this path of keys
    and list positions, or ``default`` (none) as soon as any part is missing or of another
    type, where a chain of ``is defined and ...`` guards would be needed otherwise."""
    for key in keys:
        in_dict = isinstance(value, dict) and key in value
        in_list = isinstance(value, list) and type(key) is int and -len(value) <= key < len(value)
        if not (in_dict or in_list):
            return default
        value = value[key]
    return default if value is None or isinstance(value, Undefined) else value


def _rules(env: Environment) -> identity.IdentityRules:
    """The mapping's ``identity:`` section, which the compiler puts on its environment."""
    rules = getattr(env, "identity", None)
    return rules if isinstance(rules, identity.IdentityRules) else identity.DEFAULT_RULES


@pass_environment
def _e164(env: Environment, value: Any, region: str | None = None) -> str | None:
    """``'(555) 146-9907' | e164`` -> ``'+15551469907'`` (none when not a phone number)."""
    return identity.e164(value, region or _rules(env).region)


@pass_environment
def _phone_forms(env: Environment, value: Any, region: str | None = None) -> list[str]:
    """``number | phone_forms``: the spellings to search an exact-match CRM with."""
    return identity.phone_forms(value, region or _rules(env).region)


@pass_environment
def _phone_key(env: Environment, value: Any, region: str | None = None) -> str | None:
    """``a | phone_key == b | phone_key``: phone numbers compared in E.164."""
    return identity.phone_key(value, region or _rules(env).region)


@pass_environment
def _rank_matches(env: Environment, candidates: Any, body: Any) -> list[Any]:
    """``found | rank_matches(body)``: best-match candidates ranked, without duplicates."""
    return identity.rank_matches(candidates, body, _rules(env))


FILTERS: dict[str, Callable[..., Any]] = {
    "dig": _dig,
    "e164": _e164,
    "phone_forms": _phone_forms,
    "phone_key": _phone_key,
    "email_key": identity.email_key,
    "handle_key": identity.handle_key,
    "name_key": identity.name_key,
    "rank_matches": _rank_matches,
    "merge": _merge,
    "re_sub": _re_sub,
    "match_all": _match_all,
    "without": _without,
    "only": _only,
    "rename_keys": _rename_keys,
    "digits": _digits,
    "isodate": _isodate,
    "fromjson": _fromjson,
    "backslash_escape": _backslash_escape,
    "quote_literal": _quote_literal,
    "odata_string": _odata_string,
    "encoded_query_value": _encoded_query_value,
    "search_phrase": _search_phrase,
    "soql_string": _soql_string,
    "urlencode_part": urlencode_part,
    "as_list": _as_list,
    "explode": _explode,
}
