"""Expand a mapping's ``define:`` section before anything else reads the mapping.

A mapping often says the same thing in several operations: the same lookup
step, the same error rules, the same best-match filter. ``define:`` names
each such piece once, and ``{$use: name}`` puts it where it is needed:

* as a value, the definition replaces the ``{$use: name}`` map;
* as an item of a list whose definition is itself a list (a list of steps),
  its items are spliced in where the ``$use`` stood;
* other keys next to ``$use`` are laid over a definition that is a map, so
  ``{$use: lookup, when: "{{ ... }}"}`` reuses a step with its own condition.

Expansion happens once, when the mapping is loaded, so a used definition costs
nothing per request and every later check (schema, templates, names) sees the
expanded mapping. Lines are kept: whatever came from a definition reports the
definition's line, so an error inside it points where it must be fixed. An
unknown name, a definition that uses itself, and a definition nobody uses are
problems reported like any other, as ``file:line: key: message``.
"""

from __future__ import annotations

import difflib
from typing import Any

from ..errors import Problem
from .source import Path, SourceDocument

USE = "$use"


class _Expander:
    def __init__(self, doc: SourceDocument, definitions: dict[str, Any]) -> None:
        self.doc = doc
        self.definitions = definitions
        self.lines: dict[Path, int] = {}
        self.problems: list[Problem] = []

    def _line(self, source: Path, target: Path) -> None:
        if source in self.doc.lines:
            self.lines[target] = self.doc.lines[source]

    def _resolve(self, use: dict[str, Any], source: Path, stack: tuple[str, ...]) -> tuple[bool, Any, Path]:
        """The definition a ``$use`` names: (found, its raw value, its source path)."""
        name = use[USE]
        if not isinstance(name, str) or name not in self.definitions:
            close = difflib.get_close_matches(str(name), sorted(self.definitions), n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else \
                (" (declare it under define:)" if not self.definitions else "")
            self.problems.append(self.doc.problem(source + (USE,), f"no definition named '{name}'{hint}"))
            return False, None, source
        if name in stack:
            chain = " -> ".join(stack + (name,))
            self.problems.append(self.doc.problem(source + (USE,), f"definition '{name}' uses itself ({chain})"))
            return False, None, source
        return True, self.definitions[name], ("define", name)

    def expand(self, value: Any, source: Path, target: Path, stack: tuple[str, ...]) -> Any:
        self._line(source, target)
        if isinstance(value, dict) and USE in value:
            found, definition, where = self._resolve(value, source, stack)
            if not found:
                return None
            name = value[USE]
            expanded = self.expand(definition, where, target, stack + (name,))
            extra = {k: v for k, v in value.items() if k != USE}
            if not extra:
                return expanded
            if not isinstance(expanded, dict):
                self.problems.append(self.doc.problem(
                    source + (USE,), f"'{name}' is not a map, so no keys can be given next to '$use'"))
                return expanded
            for key, item in extra.items():
                self._line(source + (key,), target + (key,))
                expanded[key] = self.expand(item, source + (key,), target + (key,), stack)
            return expanded
        if isinstance(value, dict):
            out: dict[str, Any] = {}
            for key, item in value.items():
                out[key] = self.expand(item, source + (key,), target + (key,), stack)
            return out
        if isinstance(value, list):
            items: list[Any] = []
            for index, item in enumerate(value):
                if isinstance(item, dict) and set(item) == {USE}:
                    found, definition, where = self._resolve(item, source + (index,), stack)
                    if found and isinstance(definition, list):
                        for inner, part in enumerate(definition):
                            items.append(self.expand(part, where + (inner,), target + (len(items),),
                                                     stack + (item[USE],)))
                        continue
                    if not found:
                        continue
                items.append(self.expand(item, source + (index,), target + (len(items),), stack))
            return items
        return value


def _uses(value: Any) -> list[str]:
    """Every name a ``$use`` anywhere in ``value`` refers to (definitions included)."""
    if isinstance(value, dict):
        found = [value[USE]] if isinstance(value.get(USE), str) else []
        return found + [name for item in value.values() for name in _uses(item)]
    if isinstance(value, list):
        return [name for item in value for name in _uses(item)]
    return []


def expand_definitions(doc: SourceDocument) -> tuple[SourceDocument, list[Problem]]:
    """The document with every ``$use`` replaced by its definition, and the problems found."""
    data = doc.data
    if not isinstance(data, dict):
        return doc, []
    definitions = data.get("define")
    if not isinstance(definitions, dict):
        definitions = {}
    expander = _Expander(doc, definitions)
    expanded: dict[str, Any] = {}
    expander._line((), ())
    for key, value in data.items():
        expander._line((key,), (key,))
        if key == "define":
            expanded[key] = value  # kept as written, for the schema; used only through $use
            for path, line in doc.lines.items():
                if path[:1] == ("define",):
                    expander.lines[path] = line
            continue
        expanded[key] = expander.expand(value, (key,), (key,), ())
    referenced = set(_uses(data))
    for name in definitions:
        if name not in referenced:
            expander.problems.append(doc.problem(
                ("define", name), f"'{name}' is defined but never used; use it with {{$use: {name}}} or remove it"))
    return SourceDocument(doc.file, expanded, expander.lines), expander.problems
