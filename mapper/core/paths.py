"""JSONPaths of the everyday kind read with plain dict and list lookups.

Nearly every path a mapping extracts is a chain like ``$``, ``$.id``,
``$.data.items[*]`` or ``$.results[0].id``. jsonpath-ng answers them by
building a ``DatumInContext`` (value, path, parent) for every step of every
match, which costs tens of microseconds per path on each CRM answer. For
such chains :func:`direct` gives a function that walks the answer itself.

It answers only where the outcome is plain: a name looked up in an object,
an index or ``[*]`` in an array. Anything else it meets (a name asked of a
list, ``[*]`` over an object, a subclass of dict or list) makes it return
None, and the caller asks jsonpath-ng, so the result is always the one
jsonpath-ng gives (tests/test_paths.py compares the two).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jsonpath_ng import jsonpath

Direct = Callable[[Any], "list[Any] | None"]

_NAME, _INDEX, _ALL = 0, 1, 2


def direct(path: Any) -> Direct | None:
    """``data -> [values]`` reading ``path`` as jsonpath-ng's ``find`` does (None when
    the data is not plain enough to be sure), or None for a path this does not handle."""
    steps: list[tuple[int, Any]] = []
    node = path
    while type(node) is jsonpath.Child:
        right = node.right
        if type(right) is jsonpath.Fields and len(right.fields) == 1 and right.fields[0] != "*":
            steps.append((_NAME, right.fields[0]))
        elif type(right) is jsonpath.Index and len(right.indices) == 1:
            steps.append((_INDEX, right.indices[0]))
        elif type(right) is jsonpath.Wildcard:
            steps.append((_ALL, None))
        else:
            return None
        node = node.left
    if type(node) is not jsonpath.Root:
        return None
    steps.reverse()
    return _walker(tuple(steps))


def _walker(steps: tuple[tuple[int, Any], ...]) -> Direct:
    def find(data: Any) -> list[Any] | None:
        if jsonpath.auto_id_field is not None:  # jsonpath-ng invents `id` fields then
            return None
        values = [data]
        for kind, arg in steps:
            found: list[Any] = []
            for value in values:
                if kind == _NAME:
                    if type(value) is not dict:
                        return None
                    if arg in value:
                        found.append(value[arg])
                elif type(value) is not list:
                    return None
                elif kind == _ALL:
                    found.extend(value)
                elif -len(value) <= arg < len(value):
                    found.append(value[arg])
            values = found
        return values

    return find
