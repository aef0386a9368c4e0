"""Compile and evaluate the templated values of a mapping.

A *value tree* is any YAML value in a mapping that builds data at request
time: a request body, a query, a shape, an extraction. Its leaves are
templates and its structure is kept, so types survive:

* a string that is exactly one ``{{ expression }}`` evaluates to the
  expression's own value (a list stays a list, the string ``"478"`` stays a
  string, ``none`` stays null);
* any other string containing ``{{`` or ``{%`` renders as text;
* numbers, booleans, null and plain strings are literals;
* a dict or list is evaluated item by item; an item whose value is ``omit``
  is dropped, so optional keys are written ``"{{ body.email | default(omit) }}"``;
* a dict with the key ``$map`` turns a list into another list:
  ``{$map: "{{ items }}", $as: item, $where: "{{ ... }}", $to: <value tree>}``.

Everything runs in Jinja's ``ImmutableSandboxedEnvironment`` with
``StrictUndefined``: a template can neither reach Python internals nor
silently read a missing value. Templates are compiled once, when the mapping
is loaded; values from Khoros or the CRM are only ever data in the context,
never compiled.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any

from jinja2 import StrictUndefined, TemplateError, Undefined, meta, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..errors import MappingRuntimeError
from .filters import FILTERS, urlencode_part


class _Omit:
    """The ``omit`` sentinel: a value that removes its key or list item."""

    _instance: _Omit | None = None

    def __new__(cls) -> _Omit:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "omit"

    def __bool__(self) -> bool:
        return False


OMIT = _Omit()



def _single_expression(source: str, env: ImmutableSandboxedEnvironment) -> str | None:
    """The expression inside ``source`` if it is exactly one ``{{ ... }}`` (whitespace
    around allowed), else None. Uses Jinja's own lexer so that braces inside the
    expression, as in ``{{ x | merge({'a': {}}) }}``, are read correctly."""
    tokens = list(env.lex(source))
    inner = [t for t in tokens if not (t[1] == "data" and not t[2].strip())]
    if len(inner) < 2 or inner[0][1] != "variable_begin" or inner[-1][1] != "variable_end":
        return None
    if any(t[1] in ("variable_begin", "variable_end", "block_begin", "data") for t in inner[1:-1]):
        return None
    start = source.index("{{") + 2
    end = source.rindex("}}")
    expr = source[start:end]
    if expr[:1] in "-+":  # whitespace control: {{- x -}}
        expr = expr[1:]
    if expr[-1:] == "-":
        expr = expr[:-1]
    return expr


def _path_finalize(value: Any) -> Any:
    """Every value printed into a URL path is percent-encoded, so ``../`` or ``?``
    from Khoros or the CRM can never change which URL is called."""
    encoded = urlencode_part(value)
    if encoded in ("", ".", ".."):
        # '.' and '..' are moves, not names (requests sends '%2E' as '.'), and an empty
        # segment is dropped by URL joining: each would call a different URL than intended.
        raise ValueError(f"a value printed into a URL path cannot be {repr(encoded) if encoded else 'empty'}")
    return encoded


class _FixedGlobalsEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox, with each template's globals flattened into one dict.

    Jinja keeps them as a ``ChainMap`` over the environment's globals so that
    later changes show through, and copies that map key by key into every new
    render context: about two thirds of the cost of evaluating one value. Our
    globals are fixed once the environment is built, so a plain dict is enough.
    """

    def make_globals(self, d: MutableMapping[str, Any] | None) -> MutableMapping[str, Any]:
        return {**self.globals, **(d or {})}


def make_environment(finalize: Callable[[Any], Any] | None = None) -> ImmutableSandboxedEnvironment:
    env = _FixedGlobalsEnvironment(
        undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False,
        **({"finalize": finalize} if finalize else {}),
    )
    env.filters.update(FILTERS)
    env.globals.update({"omit": OMIT})
    return env


ENV = make_environment()
PATH_ENV = make_environment(_path_finalize)

# Names every template may use without a step defining them.
GLOBAL_NAMES = frozenset({"omit", "range", "dict", "lipsum", "cycler", "joiner", "namespace"})


# --- compiled values -----------------------------------------------------

class Compiled:
    """A compiled value tree: call :meth:`evaluate` with a context dict."""

    def evaluate(self, context: dict[str, Any]) -> Any:
        raise NotImplementedError

    def names(self) -> set[str]:
        """Top-level context names this value reads (for load-time checks)."""
        return set()


@dataclass
class Literal(Compiled):
    value: Any

    def evaluate(self, context: dict[str, Any]) -> Any:
        return self.value


class Expression(Compiled):
    """``"{{ expr }}"`` alone: evaluates to the expression's own value."""

    def __init__(self, source: str, expr: str, where: str, env: ImmutableSandboxedEnvironment = ENV) -> None:
        self.source = source
        self.where = where
        self._fn = env.compile_expression(expr, undefined_to_none=False)
        self._ast = env.parse("{{" + expr + "}}")

    def evaluate(self, context: dict[str, Any]) -> Any:
        try:
            value = self._fn(**context)
        except (TemplateError, ArithmeticError, LookupError, TypeError, ValueError) as exc:
            raise _runtime_error(self.where, exc) from exc
        if isinstance(value, Undefined):
            try:
                value._fail_with_undefined_error()
            except TemplateError as exc:
                raise _runtime_error(self.where, exc) from exc
        return value

    def names(self) -> set[str]:
        return set(meta.find_undeclared_variables(self._ast))

    @property
    def ast(self) -> nodes.Template:
        return self._ast


class Text(Compiled):
    """A string with templates inside: renders to text."""

    def __init__(self, source: str, where: str, env: ImmutableSandboxedEnvironment = ENV) -> None:
        self.source = source
        self.where = where
        self._template = env.from_string(source)
        self._ast = env.parse(source)

    def evaluate(self, context: dict[str, Any]) -> Any:
        try:
            return self._template.render(context)
        except (TemplateError, ArithmeticError, LookupError, TypeError, ValueError) as exc:
            raise _runtime_error(self.where, exc) from exc

    def names(self) -> set[str]:
        return set(meta.find_undeclared_variables(self._ast))

    @property
    def ast(self) -> nodes.Template:
        return self._ast


@dataclass
class DictValue(Compiled):
    items: dict[str, Compiled]

    def evaluate(self, context: dict[str, Any]) -> Any:
        result = {}
        for key, value in self.items.items():
            evaluated = value.evaluate(context)
            if evaluated is not OMIT:
                result[key] = evaluated
        return result

    def names(self) -> set[str]:
        return set().union(*(v.names() for v in self.items.values())) if self.items else set()


@dataclass
class ListValue(Compiled):
    items: list[Compiled]

    def evaluate(self, context: dict[str, Any]) -> Any:
        return [v for v in (item.evaluate(context) for item in self.items) if v is not OMIT]

    def names(self) -> set[str]:
        return set().union(*(v.names() for v in self.items)) if self.items else set()


@dataclass
class MapValue(Compiled):
    """``$map``: evaluate ``to`` once per item of ``over`` (kept where ``where`` holds)."""

    over: Compiled
    item_name: str
    to: Compiled
    where_clause: Compiled | None
    where: str

    def evaluate(self, context: dict[str, Any]) -> Any:
        items = self.over.evaluate(context)
        if items is OMIT:
            return OMIT  # "$map: '{{ x | default(omit) }}'" drops the key when there is nothing to map
        if items is None:
            return []
        if isinstance(items, dict):
            items = [{"key": k, "value": v} for k, v in items.items()]
        if not isinstance(items, (list, tuple)):
            raise MappingRuntimeError(
                f"The mapping expected a list at {self.where} but got {type(items).__name__}.")
        result = []
        for index, item in enumerate(items):
            scope = {**context, self.item_name: item, "index": index}
            if self.where_clause is not None and not self.where_clause.evaluate(scope):
                continue
            value = self.to.evaluate(scope)
            if value is not OMIT:
                result.append(value)
        return result

    def names(self) -> set[str]:
        inner = self.to.names() | (self.where_clause.names() if self.where_clause else set())
        return self.over.names() | (inner - {self.item_name, "index"})


def _runtime_error(where: str, exc: Exception) -> MappingRuntimeError:
    # Jinja's messages name the variable or attribute, never the context's values.
    return MappingRuntimeError(
        f"The mapping could not build a value at {where}: {str(exc).rstrip('.')}.",
        internal=type(exc).__name__)


class TemplateCompileError(Exception):
    """A template in the mapping does not compile; ``path`` is relative to the value."""

    def __init__(self, path: tuple[Any, ...], message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


MAP_KEYS = frozenset({"$map", "$as", "$where", "$to"})


def is_template(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


def compile_string(source: str, where: str, env: ImmutableSandboxedEnvironment = ENV) -> Compiled:
    """Compile one string leaf (literal, single expression, or text template)."""
    if not is_template(source):
        return Literal(source)
    try:
        # Path templates always render as text: their environment percent-encodes
        # every printed value, which a native expression would bypass.
        expr = None if env is PATH_ENV else _single_expression(source, env)
        if expr is not None:
            return Expression(source, expr, where, env)
        return Text(source, where, env)
    except TemplateError as exc:
        raise TemplateCompileError((), f"template does not compile: {exc}{_did_you_mean(str(exc), env)}") from exc


def _did_you_mean(message: str, env: ImmutableSandboxedEnvironment) -> str:
    """Jinja rejects an unknown filter or test at compile time; suggest the closest name."""
    match = re.search(r"No (filter|test) named '([^']+)'", message)
    if not match:
        return ""
    names = env.filters if match.group(1) == "filter" else env.tests
    close = difflib.get_close_matches(match.group(2), sorted(names), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _leaf_where(where: str, path: tuple[Any, ...]) -> str:
    """``file:line key`` of the tree's root, extended with the leaf's own path."""
    suffix = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)
    return where + suffix


def compile_value(value: Any, where: str, path: tuple[Any, ...] = (),
                  env: ImmutableSandboxedEnvironment = ENV) -> Compiled:
    """Compile a whole value tree; raise :class:`TemplateCompileError` with the inner path."""
    if isinstance(value, str):
        try:
            return compile_string(value, _leaf_where(where, path), env)
        except TemplateCompileError as exc:
            raise TemplateCompileError(path, exc.message) from exc
    if isinstance(value, dict):
        if "$map" in value:
            unknown = set(value) - MAP_KEYS
            if unknown:
                raise TemplateCompileError(path + (sorted(unknown)[0],),
                                           f"unknown key in $map (allowed: {', '.join(sorted(MAP_KEYS))})")
            item_name = value.get("$as", "item")
            if not isinstance(item_name, str) or not item_name.isidentifier():
                raise TemplateCompileError(path + ("$as",), "$as must be a plain name such as 'item'")
            where_clause = value.get("$where")
            return MapValue(
                over=compile_value(value["$map"], where, path + ("$map",), env),
                item_name=item_name,
                to=compile_value(value.get("$to", "{{ " + item_name + " }}"), where, path + ("$to",), env),
                where_clause=None if where_clause is None else compile_value(where_clause, where,
                                                                             path + ("$where",), env),
                where=where,
            )
        return DictValue({str(k): compile_value(v, where, path + (k,), env) for k, v in value.items()})
    if isinstance(value, list):
        return ListValue([compile_value(v, where, path + (i,), env) for i, v in enumerate(value)])
    return Literal(value)


def iter_templates(compiled: Compiled) -> Iterable[Expression | Text]:
    """Every template leaf of a compiled tree (for static checks)."""
    if isinstance(compiled, (Expression, Text)):
        yield compiled
    elif isinstance(compiled, DictValue):
        for value in compiled.items.values():
            yield from iter_templates(value)
    elif isinstance(compiled, ListValue):
        for value in compiled.items:
            yield from iter_templates(value)
    elif isinstance(compiled, MapValue):
        yield from iter_templates(compiled.over)
        yield from iter_templates(compiled.to)
        if compiled.where_clause is not None:
            yield from iter_templates(compiled.where_clause)
