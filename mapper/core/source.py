"""Read a mapping file into plain data while remembering where every key stood.

Config errors must name the file, the line and the key. PyYAML's composer
knows the line of every node; we walk the node tree once, build ordinary
dicts and lists, and keep a table from each key path to its line so that any
later stage (schema check, compiler) can point at the right line.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import yaml

from ..errors import ConfigError, Problem

# libyaml's loader when PyYAML was built with it: the same nodes and line marks, in a fifth of
# the time of the pure-Python one (which was a quarter of a mapping's start-up).
YAML_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

Path = tuple[Any, ...]


def dotted(path: Iterable[Any]) -> str:
    """Render a key path the way error messages show it: ``a.b[0].c``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


@dataclass
class SourceDocument:
    """A loaded mapping: its data and the line of every key path."""

    file: str
    data: Any
    lines: dict[Path, int] = field(default_factory=dict)

    def line_of(self, path: Iterable[Any]) -> int:
        """The line of ``path``, or of its nearest ancestor that has one."""
        parts = tuple(path)
        while parts:
            if parts in self.lines:
                return self.lines[parts]
            parts = parts[:-1]
        return self.lines.get((), 1)

    def problem(self, path: Iterable[Any], message: str) -> Problem:
        parts = tuple(path)
        return Problem(self.file, self.line_of(parts), dotted(parts), message)


class _Builder:
    """Turn a composed YAML node tree into data plus a line table."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.lines: dict[Path, int] = {}
        self.problems: list[Problem] = []
        self._scalar_loader = yaml.SafeLoader("")

    def build(self, node: yaml.Node, path: Path) -> Any:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            result: dict[str, Any] = {}
            for key_node, value_node in node.value:
                # Checked on the tag: SafeLoader cannot construct a bare '<<' key on its own.
                if key_node.tag == "tag:yaml.org,2002:merge":
                    self.problems.append(Problem(self.file, key_node.start_mark.line + 1, dotted(path),
                                                 "YAML merge keys ('<<') are not supported; write the keys out"))
                    continue
                key = self.build(key_node, path + ("<key>",))
                if not isinstance(key, (str, int)):
                    self.problems.append(Problem(self.file, key_node.start_mark.line + 1, dotted(path),
                                                 "keys must be strings"))
                    continue
                if key in result:
                    self.problems.append(Problem(self.file, key_node.start_mark.line + 1,
                                                 dotted(path + (key,)), "this key is given twice"))
                self.lines[path + (key,)] = key_node.start_mark.line + 1
                result[key] = self.build(value_node, path + (key,))
            self.lines.pop(path + ("<key>",), None)
            return result
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, path + (i,)) for i, item in enumerate(node.value)]
        try:
            return self._scalar_loader.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError as exc:  # an unknown tag such as '!foo'
            self.problems.append(Problem(self.file, node.start_mark.line + 1, dotted(path),
                                         f"not valid YAML: {exc.problem}"))
            return None


def load_source(file: str, text: str | None = None) -> SourceDocument:
    """Parse a mapping file; raise :class:`ConfigError` naming the line on bad YAML."""
    if text is None:
        try:
            with open(file, encoding="utf-8") as handle:
                text = handle.read()
        except OSError as exc:
            raise ConfigError([Problem(file, 0, "", f"cannot read the file: {exc.strerror}")]) from exc
    try:
        node = yaml.compose(text, Loader=YAML_LOADER)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else 0
        raise ConfigError([Problem(file, line, "", f"not valid YAML: {exc.problem}")]) from exc
    if node is None:
        raise ConfigError([Problem(file, 1, "", "the file is empty")])
    builder = _Builder(file)
    data = builder.build(node, ())
    if builder.problems:
        raise ConfigError(builder.problems)
    return SourceDocument(file, data, builder.lines)
