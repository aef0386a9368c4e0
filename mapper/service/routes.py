"""How the operation table's paths become Flask URL rules.

One thing needs care: ``/customer/bestmatch`` (POST) and ``/customer/<id>``
(GET, PATCH) overlap. Left to Werkzeug, ``GET /customer/bestmatch`` would be a
lookup of a customer whose id is "bestmatch", while OpenAPI (and so
``/openapi.json``) says a fixed path wins over a templated one for every
method. So a path id may not be a word the table uses as a fixed segment in
the same place: ``GET /customer/bestmatch`` is a 405 that allows POST, and
each URL belongs to exactly one path of the document.
"""

from __future__ import annotations

import re

from werkzeug.routing import BaseConverter

from ..core.khoros import OPERATIONS

CONVERTER = "khoros_id"


def reserved_ids() -> frozenset[str]:
    """Fixed last segments of table paths whose parent also takes an ``<id>`` there."""
    rules = {op.rule for op in OPERATIONS}
    return frozenset(rule.rsplit("/", 1)[1] for rule in rules
                     if "<" not in rule and rule.rsplit("/", 1)[0] + "/<id>" in rules)


class KhorosIdConverter(BaseConverter):
    """A path id: one segment, not one of :func:`reserved_ids`."""

    regex = "".join(f"(?!{re.escape(word)}$)" for word in sorted(reserved_ids())) + "[^/]+"


def url_rule(rule: str) -> str:
    """The Flask rule for a table rule: ``<id>`` through :class:`KhorosIdConverter`."""
    return rule.replace("<id>", f"<{CONVERTER}:id>")
