"""Bounds on what a Khoros request may carry, and the checks that hold a body to them.

Khoros sends small documents: a few fields, a handful of phone numbers, the
interactions an agent picked. Anything far bigger is a mistake or an attack,
and without a bound it costs CRM calls (one per phone number), memory, or a
record the CRM can no longer return. Each limit below has a default sized
well above what Khoros sends and an environment variable to change it; every
refusal names the limit and that variable, so an operator who meets one
knows what to raise.

Two kinds of check live here, both free of any web framework:

* :func:`parse_body` turns the raw bytes into JSON and checks its structure:
  nesting depth, string length, text that cannot be encoded (a lone UTF-16
  surrogate such as ``"\\ud800"``, which JSON allows but UTF-8 cannot carry),
  and numbers JSON does not have (``NaN``). All are 400s.
* :func:`check_payload` checks the counts that cost CRM calls: interactions
  on a case write (422, naming the field, as other field problems) and the
  items of each best-match list (400, as other best-match shape problems).

The body's byte size is enforced while it is read, by the HTTP layer
(a 413, see :mod:`mapper.service.http_errors`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from ..errors import BadRequest, ConfigError, FieldError, NotFound, Problem, ValidationFailed
from .khoros import Operation

# Unknown keys named in one error message; the rest are counted, not listed.
MAX_LISTED_KEYS = 5


@dataclass(frozen=True)
class Limits:
    """The bounds one server applies to every Khoros request (see the module docstring)."""

    body_bytes: int = 4 * 1024 * 1024   # a request body, in bytes
    json_depth: int = 16                # nesting of objects and arrays (Khoros uses 4)
    string_chars: int = 100_000         # any one string, key or value, in characters
    interactions: int = 100             # interactions on one case create or update
    list_items: int = 20                # items in each best-match list (phoneNumbers, addresses...)
    id_chars: int = 256                 # a customer or case id in the path (CRM ids are far shorter)


# Which environment variable sets which limit; the README lists the same names.
ENVIRONMENT: dict[str, str] = {
    "body_bytes": "MAPPER_MAX_BODY_BYTES",
    "json_depth": "MAPPER_MAX_JSON_DEPTH",
    "string_chars": "MAPPER_MAX_STRING_CHARS",
    "interactions": "MAPPER_MAX_INTERACTIONS",
    "list_items": "MAPPER_MAX_LIST_ITEMS",
    "id_chars": "MAPPER_MAX_ID_CHARS",
}

DEFAULT_LIMITS = Limits()


def limits_from_environ(environ: Mapping[str, str]) -> Limits:
    """The limits the environment sets, the defaults for the rest; a value that is not a
    whole number of at least 1 is a configuration error naming its variable."""
    values: dict[str, int] = {}
    problems = []
    for item in fields(Limits):
        name = ENVIRONMENT[item.name]
        raw = environ.get(name, "").strip()
        if not raw:
            continue
        if not raw.isdigit() or int(raw) < 1:
            problems.append(Problem("environment", 0, name, f"must be a whole number of at least 1, not {raw!r}"))
        else:
            values[item.name] = int(raw)
    if problems:
        raise ConfigError(problems)
    return Limits(**values)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


# One decoder for every body (json.loads with an option builds a new one per call).
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


def parse_body(raw: bytes, limits: Limits = DEFAULT_LIMITS) -> Any:
    """The JSON value in ``raw``, checked by :func:`check_structure`; a 400 otherwise."""
    if not raw.strip():
        raise BadRequest("The request body is empty; send a JSON object.")
    try:
        # What json.loads does with bytes: UTF-8, -16 or -32, told apart by the first bytes.
        value = _DECODER.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))
    except RecursionError as exc:  # the decoder recurses per level: far deeper than any limit
        raise BadRequest(_depth_message(limits)) from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"The request body is not valid JSON ({type(exc).__name__}).") from exc
    check_structure(value, limits)
    return value


def _depth_message(limits: Limits) -> str:
    return (f"The request body is nested more than {limits.json_depth} levels deep, the limit set by "
            f"{ENVIRONMENT['json_depth']}.")


def check_structure(value: Any, limits: Limits = DEFAULT_LIMITS) -> None:
    """Depth, string length and encodable text, for every key and value of ``value``.

    Walks with a stack, not recursion, so no body can exhaust the interpreter's stack.
    The walk of every request keeps no paths (a few microseconds for a Khoros body); only
    when it finds a problem does a second walk find where, to name it as a path
    (``interactions[0].body``), never its value."""
    if _has_problem(value, limits):
        _explain(value, limits)
        raise BadRequest("The request body breaks a limit on its structure.")  # _explain names it first


def _unencodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _has_problem(value: Any, limits: Limits) -> bool:
    """Whether anything in ``value`` breaks a bound; written for speed (strings are checked
    where they are met, only containers go on the stack), since every body goes through it."""
    longest, deepest = limits.string_chars, limits.json_depth
    if type(value) is str:
        return len(value) > longest or (not value.isascii() and _unencodable(value))
    if type(value) is not dict and type(value) is not list:
        return False  # a number, true, false or null
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > deepest:
            return True
        children = item.values() if type(item) is dict else item
        if type(item) is dict:
            for key in item:
                if len(key) > longest or (not key.isascii() and _unencodable(key)):
                    return True
        for child in children:
            kind = type(child)
            if kind is str:
                if len(child) > longest or (not child.isascii() and _unencodable(child)):
                    return True
            elif kind is dict or kind is list:
                stack.append((child, depth + 1))
    return False


def _explain(value: Any, limits: Limits) -> None:
    """Raise the 400 for the problem :func:`_has_problem` found, naming where it is."""
    stack: list[tuple[Any, int, _Where | None]] = [(value, 1, None)]
    while stack:
        item, depth, where = stack.pop()
        if isinstance(item, str):
            _check_text(item, where, limits)
        elif isinstance(item, dict):
            if depth > limits.json_depth:
                raise BadRequest(_depth_message(limits))
            for key, child in item.items():
                place = _Where(where, key)
                _check_text(key, place, limits, is_key=True)
                stack.append((child, depth + 1, place))
        elif isinstance(item, list):
            if depth > limits.json_depth:
                raise BadRequest(_depth_message(limits))
            stack.extend((child, depth + 1, _Where(where, index)) for index, child in enumerate(item))


class _Where:
    """A path into the body, built only when a message needs it (a linked list of steps)."""

    __slots__ = ("parent", "step")

    def __init__(self, parent: _Where | None, step: str | int) -> None:
        self.parent = parent
        self.step = step

    def __str__(self) -> str:
        steps: list[str | int] = []
        node: _Where | None = self
        while node is not None:
            steps.append(node.step)
            node = node.parent
        out = ""
        for step in reversed(steps):
            out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else str(step))
        return out


def _check_text(text: str, where: _Where | None, limits: Limits, is_key: bool = False) -> None:
    what = "A key" if is_key else "The value"
    place = f" at '{_printable(str(where))}'" if where is not None else ""
    if len(text) > limits.string_chars:
        raise BadRequest(f"{what}{place} is {len(text)} characters long; at most {limits.string_chars} are "
                         f"accepted, the limit set by {ENVIRONMENT['string_chars']}.")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise BadRequest(f"{what}{place} holds a lone UTF-16 surrogate (an escape between \\ud800 and "
                             "\\udfff without its pair), which is not text; send valid Unicode.") from exc


def _printable(text: str, most: int = 80) -> str:
    """A path for a message: surrogates replaced, cut short (keys are the sender's text)."""
    safe = text.encode("utf-8", "replace").decode("utf-8")
    return safe if len(safe) <= most else safe[:most] + "..."


def check_payload(op: Operation, body: Any, limits: Limits = DEFAULT_LIMITS) -> None:
    """The counts that cost CRM calls: best-match lists, and interactions on a case write."""
    if not isinstance(body, dict):
        return
    if op.input == "bestmatch":
        for name, items in body.items():
            if isinstance(items, list) and len(items) > limits.list_items:
                raise BadRequest(f"Best-match field '{_printable(name)}' has {len(items)} items; at most "
                                 f"{limits.list_items} are accepted, the limit set by {ENVIRONMENT['list_items']}.")
    elif op.object_kind == "case" and op.input in ("create", "update"):
        interactions = body.get("interactions")
        if isinstance(interactions, list) and len(interactions) > limits.interactions:
            message = (f"has {len(interactions)} interactions; at most {limits.interactions} are accepted per "
                       f"request, the limit set by {ENVIRONMENT['interactions']}")
            raise ValidationFailed(f"The case was not saved: interactions {message}.",
                                   [FieldError("interactions", message)])


def unknown_keys_phrase(unknown: list[str]) -> str:
    """``'a', 'b', 'c'``, or the first few and how many more: an error message stays short
    however many keys a body has."""
    listed = ", ".join(f"'{_printable(k, 40)}'" for k in unknown[:MAX_LISTED_KEYS])
    rest = len(unknown) - MAX_LISTED_KEYS
    return listed + (f" and {rest} more" if rest > 0 else "")


def check_id(id: str | None, kind: str, limits: Limits = DEFAULT_LIMITS) -> None:
    """A path id of ``.`` or ``..`` names no record: URL rules would resolve it to another
    path, so it can never reach the CRM; it is a 404 like any id the CRM does not have.
    An id longer than the limit is a 400 (and keeps URLs under every server's line limit)."""
    if id in (".", ".."):
        raise NotFound(f"No {kind} {id} was found in the CRM.")
    if id is not None and len(id) > limits.id_chars:
        raise BadRequest(f"The {kind} id is {len(id)} characters long; at most {limits.id_chars} are accepted, "
                         f"the limit set by {ENVIRONMENT['id_chars']}.")
