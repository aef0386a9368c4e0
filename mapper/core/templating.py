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

from jinja2 import (
    StrictUndefined,
    Template,
    TemplateAssertionError,
    TemplateError,
    Undefined,
    UndefinedError,
    meta,
    nodes,
)
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import Markup

from ..errors import MapperError, MappingRuntimeError, MissingValue
from .filters import FILTERS, urlencode_part
from .identity import DEFAULT_RULES, IdentityRules


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


def make_environment(finalize: Callable[[Any], Any] | None = None,
                     identity: IdentityRules = DEFAULT_RULES) -> ImmutableSandboxedEnvironment:
    """The sandbox with our filters. ``identity`` is the mapping's ``identity:`` section,
    read by the identity filters (``e164``, ``rank_matches``...) at no per-request cost."""
    env = _FixedGlobalsEnvironment(
        undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False,
        **({"finalize": finalize} if finalize else {}),
    )
    env.filters.update(FILTERS)
    env.globals.update({"omit": OMIT})
    env.identity = identity  # type: ignore[attr-defined]
    env.encodes_paths = finalize is _path_finalize  # type: ignore[attr-defined]
    return env


def environments(identity: IdentityRules = DEFAULT_RULES) -> tuple[ImmutableSandboxedEnvironment,
                                                                   ImmutableSandboxedEnvironment]:
    """The value and the URL-path environment of one mapping."""
    if identity == DEFAULT_RULES:
        return ENV, PATH_ENV
    return make_environment(identity=identity), make_environment(_path_finalize, identity)


ENV = make_environment()
PATH_ENV = make_environment(_path_finalize)

# Names every template may use without a step defining them.
GLOBAL_NAMES = frozenset({"omit", "range", "dict", "lipsum", "cycler", "joiner", "namespace"})


# --- fast paths for the common shapes ---------------------------------------------------
#
# Most leaves of a mapping are a plain path with perhaps ``default`` or ``string``:
# ``{{ record.first_name }}``, ``{{ record.id | string }}``, ``{{ body.email | default(omit) }}``,
# ``"{{ settings.base_url }}/customers/{{ record.id }}"``. Jinja builds a render context for
# each, which costs more than the lookup itself. A *plan* does the same lookups directly on
# the plain dicts and lists that JSON and our scopes are made of, with exactly the sandbox's
# semantics; whenever it meets anything else (an object, a name from the globals, a missing
# value Jinja would complain about) it answers UNKNOWN and the template runs through Jinja,
# so results and error messages never differ.

class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


UNKNOWN = _Marker("UNKNOWN")  # the plan cannot decide: run the template through Jinja
UNDEFINED = _Marker("UNDEFINED")  # Jinja would see an Undefined here (``default`` replaces it)

Plan = Callable[[dict[str, Any]], Any]


def _lookup_attr(obj: Any, name: str) -> Any:
    """``obj.name`` as the sandbox reads it: attribute first, then item."""
    if type(obj) is dict:
        if hasattr(dict, name):  # dict.items, dict.get...: Jinja returns the method
            return UNKNOWN
        return obj.get(name, UNDEFINED)
    if obj is None and not hasattr(None, name):
        return UNDEFINED
    return UNKNOWN


def _lookup_item(obj: Any, key: Any) -> Any:
    """``obj[key]`` as the sandbox reads it: item first, then attribute."""
    if type(obj) is dict:
        if key in obj:
            return obj[key]
        return UNKNOWN if isinstance(key, str) and hasattr(dict, key) else UNDEFINED
    if type(obj) is list and type(key) is int and -len(obj) <= key < len(obj):
        return obj[key]
    return UNKNOWN


def _path_plan(node: nodes.Node) -> Plan | None:
    """A plan for ``name``, ``name.attr...``, ``name['key']``, ``name[0]`` (None if another shape)."""
    steps: list[tuple[bool, Any]] = []
    while isinstance(node, (nodes.Getattr, nodes.Getitem)):
        if isinstance(node, nodes.Getattr):
            steps.append((True, node.attr))
        elif isinstance(node.arg, nodes.Const) and type(node.arg.value) in (str, int):
            steps.append((False, node.arg.value))
        else:
            return None
        node = node.node
    if not isinstance(node, nodes.Name) or node.ctx != "load":
        return None
    root = node.name
    steps.reverse()

    def plan(context: dict[str, Any]) -> Any:
        if root not in context:
            return UNKNOWN  # a global such as 'omit', or a name Jinja reports as undefined
        value = context[root]
        for is_attr, key in steps:
            if value is UNDEFINED:
                return UNKNOWN  # an attribute of an Undefined: Jinja raises, with its message
            value = _lookup_attr(value, key) if is_attr else _lookup_item(value, key)
            if value is UNKNOWN:
                return UNKNOWN
        return value

    return plan


def _value_plan(node: nodes.Node) -> Plan | None:
    """A path, constant or list/dict literal, with ``default``, ``string`` and our own filters
    (:data:`~mapper.core.filters.FILTERS`, plain functions of plain values) applied."""
    filters: list[nodes.Filter] = []
    while isinstance(node, nodes.Filter):
        filters.append(node)
        node = node.node  # type: ignore[assignment]  # the filtered expression, never None here
    if isinstance(node, nodes.Const):
        constant = node.value
        inner: Plan | None = lambda context: constant  # noqa: E731
    elif isinstance(node, (nodes.List, nodes.Dict)):
        inner = _literal_plan(node)
    else:
        inner = _path_plan(node)
    if inner is None:
        return None
    plan: Plan = inner
    for flt in reversed(filters):
        if flt.dyn_args or flt.dyn_kwargs:
            return None
        if flt.name == "string" and not flt.args and not flt.kwargs:
            plan = _string(plan)
        elif flt.name == "default" and len(flt.args) == 1 and not flt.kwargs:
            arg = flt.args[0]
            if isinstance(arg, nodes.Name) and arg.name == "omit":
                plan = _default(plan, lambda context: OMIT, "omit")
            else:
                fallback = _value_plan(arg) if isinstance(arg, (nodes.Const, nodes.List, nodes.Dict)) else None
                if fallback is None:
                    return None
                plan = _default(plan, fallback, None)
        elif flt.name in FILTERS and not hasattr(FILTERS[flt.name], "jinja_pass_arg"):
            # (a filter marked pass_environment, such as e164, reads the mapping's identity
            # rules from its environment, which only Jinja hands it)
            args = [_any_value_plan(arg) for arg in flt.args]
            kwargs = {keyword.key: _any_value_plan(keyword.value) for keyword in flt.kwargs}
            if any(a is None for a in args) or any(k is None for k in kwargs.values()):
                return None
            plan = _filter(plan, FILTERS[flt.name], args, kwargs)  # type: ignore[arg-type]
        else:
            return None
    return plan


def _literal_plan(node: nodes.List | nodes.Dict) -> Plan | None:
    """``[a, b]`` or ``{'key': a}`` of plain values: built anew at each call, as Jinja does."""
    if isinstance(node, nodes.List):
        items = [_any_value_plan(item) for item in node.items]
        if any(item is None for item in items):
            return None

        def as_list(context: dict[str, Any]) -> Any:
            out = [item(context) for item in items]  # type: ignore[misc]
            return UNKNOWN if any(v is UNKNOWN or v is UNDEFINED for v in out) else out

        return as_list
    pairs: list[tuple[str, Plan]] = []
    for pair in node.items:
        value = _any_value_plan(pair.value)
        if not isinstance(pair.key, nodes.Const) or type(pair.key.value) is not str or value is None:
            return None
        pairs.append((pair.key.value, value))

    def as_dict(context: dict[str, Any]) -> Any:
        out = {key: value(context) for key, value in pairs}
        return UNKNOWN if any(v is UNKNOWN or v is UNDEFINED for v in out.values()) else out

    return as_dict


def _filter(inner: Plan, function: Callable[..., Any], args: list[Plan], kwargs: dict[str, Plan]) -> Plan:
    def plan(context: dict[str, Any]) -> Any:
        value = inner(context)
        if value is UNKNOWN or value is UNDEFINED:
            return UNKNOWN  # Jinja decides what a filter of an Undefined gives
        given = [arg(context) for arg in args]
        named = {key: arg(context) for key, arg in kwargs.items()}
        if any(v is UNKNOWN or v is UNDEFINED for v in [*given, *named.values()]):
            return UNKNOWN
        try:
            return function(value, *given, **named)
        except Exception:  # Jinja runs it again and reports the error in its own words
            return UNKNOWN

    return plan


def _string(inner: Plan) -> Plan:
    def plan(context: dict[str, Any]) -> Any:
        value = inner(context)
        if value is UNKNOWN or value is UNDEFINED or isinstance(value, Markup):
            return UNKNOWN  # str() of a StrictUndefined raises; Markup stays Markup
        return str(value)

    return plan


def _default(inner: Plan, fallback: Plan, name: str | None) -> Plan:
    def plan(context: dict[str, Any]) -> Any:
        value = inner(context)
        if value is UNDEFINED:
            if name is not None and name in context:
                return UNKNOWN  # the scope shadows the global 'omit': let Jinja decide
            return fallback(context)
        return value

    return plan


def _test_plan(node: nodes.Node) -> Plan | None:
    """``path is defined`` / ``is not defined`` / ``is none`` (and ``not`` of them)."""
    negate = False
    if isinstance(node, nodes.Not):
        negate, node = True, node.node
    if not isinstance(node, nodes.Test) or node.args or node.kwargs or node.dyn_args or node.dyn_kwargs:
        return None
    if node.name not in ("defined", "undefined", "none"):
        return None
    inner = _path_plan(node.node)
    if inner is None:
        return None
    kind = node.name

    def plan(context: dict[str, Any]) -> Any:
        value = inner(context)
        if value is UNKNOWN:
            return UNKNOWN
        if kind == "none":
            if value is UNDEFINED:
                return UNKNOWN
            result = value is None
        else:
            result = (value is not UNDEFINED) == (kind == "defined")
        return result != negate

    return plan


_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {"eq": lambda a, b: a == b, "ne": lambda a, b: a != b}


def _compare_plan(node: nodes.Node) -> Plan | None:
    """``value == value`` or ``value != value``."""
    if not isinstance(node, nodes.Compare) or len(node.ops) != 1 or node.ops[0].op not in _COMPARISONS:
        return None
    left, right = _value_plan(node.expr), _value_plan(node.ops[0].expr)
    if left is None or right is None:
        return None
    compare = _COMPARISONS[node.ops[0].op]

    def plan(context: dict[str, Any]) -> Any:
        a, b = left(context), right(context)
        if a is UNKNOWN or b is UNKNOWN or a is UNDEFINED or b is UNDEFINED:
            return UNKNOWN
        return compare(a, b)

    return plan


def _condition_plan(node: nodes.Node) -> Plan | None:
    """What an ``if`` tests: ``is defined``/``is none``, a comparison, a plain value's truth,
    or ``and`` / ``or`` of those."""
    if isinstance(node, (nodes.And, nodes.Or)):
        return _both_plan(node)
    plan = _test_plan(node) or _compare_plan(node)
    if plan is not None:
        return plan
    value = _value_plan(node)
    if value is None:
        return None

    def truth(context: dict[str, Any]) -> Any:
        result = value(context)
        if result is UNKNOWN or result is UNDEFINED:
            return UNKNOWN  # the truth of a StrictUndefined is an error in Jinja
        return bool(result)

    return truth


def _both_plan(node: nodes.And | nodes.Or) -> Plan | None:
    left, right = _condition_plan(node.left), _condition_plan(node.right)
    if left is None or right is None:
        return None
    stop_on = not isinstance(node, nodes.And)  # 'or' stops at the first true, 'and' at the first false

    def plan(context: dict[str, Any]) -> Any:
        first = left(context)
        if first is UNKNOWN or first == stop_on:
            return first
        return right(context)

    return plan


def _conditional_plan(node: nodes.Node) -> Plan | None:
    """``a if condition else b`` (both branches plain values)."""
    if not isinstance(node, nodes.CondExpr) or node.expr2 is None:
        return None
    test, yes, no = _condition_plan(node.test), _any_value_plan(node.expr1), _any_value_plan(node.expr2)
    if test is None or yes is None or no is None:
        return None

    def plan(context: dict[str, Any]) -> Any:
        chosen = test(context)
        if chosen is UNKNOWN:
            return UNKNOWN
        return yes(context) if chosen else no(context)

    return plan


def _any_value_plan(node: nodes.Node) -> Plan | None:
    if isinstance(node, nodes.Name) and node.name == "omit":
        return lambda context: UNKNOWN if "omit" in context else OMIT
    # a ~ b inside a literal or an argument: one-expression shapes build their links so
    return _value_plan(node) or _concat_plan(node, None)


def expression_plan(template: nodes.Template) -> Plan | None:
    """A plan for a single-expression template's value, or None if it has another shape."""
    if len(template.body) != 1 or not isinstance(template.body[0], nodes.Output):
        return None
    output = template.body[0].nodes
    if len(output) != 1:
        return None
    node = output[0]
    return (_value_plan(node) or _test_plan(node) or _compare_plan(node) or _conditional_plan(node)
            or _concat_plan(node, None))


def _concat_plan(node: nodes.Node, finalize: Callable[[Any], Any] | None) -> Plan | None:
    """``a ~ b ~ ...`` of values: the text of each, joined (Jinja's ``~``)."""
    if not isinstance(node, nodes.Concat):
        return None
    parts = [_value_plan(n) for n in node.nodes]
    if any(p is None for p in parts):
        return None
    return _join([p for p in parts if p is not None], finalize)


def _join(parts: list[Plan | str], finalize: Callable[[Any], Any] | None) -> Plan:
    def plan(context: dict[str, Any]) -> Any:
        out = []
        for part in parts:
            if type(part) is str:
                out.append(part)
                continue
            value = part(context)  # type: ignore[operator]
            if value is UNKNOWN or value is UNDEFINED or isinstance(value, Markup):
                return UNKNOWN
            if finalize is not None:
                value = finalize(value)
            out.append(str(value))
        return "".join(out)

    return plan


def text_plan(template: nodes.Template, finalize: Callable[[Any], Any] | None) -> Plan | None:
    """A plan rendering text made of literal data and plain values, or None."""
    if len(template.body) != 1 or not isinstance(template.body[0], nodes.Output):
        return None
    parts: list[Plan | str] = []
    for node in template.body[0].nodes:
        if isinstance(node, nodes.TemplateData):
            parts.append(node.data)
            continue
        plan = _value_plan(node)
        if plan is None:
            return None
        parts.append(plan)
    return _join(parts, finalize)


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
        self._env = env
        self._expr = expr
        self._ast = env.parse("{{" + expr + "}}")
        self._names = _checked_names(self._ast, env)
        self._plan = expression_plan(self._ast)
        # Only a literal list or dict, or a value passed to a filter or call, can hide an
        # Undefined inside the result; checked at load time so that plain paths pay nothing.
        self._may_hold_undefined = any(True for _ in self._ast.find_all(
            (nodes.Dict, nodes.List, nodes.Tuple, nodes.Filter, nodes.Call)))
        self._fn: Callable[..., Any] | None = None  # Jinja's code, made at first use (see _checked_names)

    def _jinja(self) -> Callable[..., Any]:
        fn = self._fn
        if fn is None:  # two threads may both compile it once; both results are the same
            fn = self._fn = self._env.compile_expression(self._expr, undefined_to_none=False)
        return fn

    def evaluate(self, context: dict[str, Any]) -> Any:
        if self._plan is not None:
            value = self._plan(context)
            if value is not UNKNOWN and value is not UNDEFINED:  # Jinja raises for an Undefined
                return value
        try:
            value = self._jinja()(**context)
            if isinstance(value, Undefined):
                value._fail_with_undefined_error()
            if self._may_hold_undefined and isinstance(value, (dict, list)):
                _fail_on_undefined(value)  # {'a': record.missing} builds a dict holding an Undefined
        except MapperError:
            raise
        except Exception as exc:  # filters may raise anything (re.error, OSError...): name the place
            raise _runtime_error(self.where, exc) from exc
        return value

    def names(self) -> set[str]:
        return set(self._names)

    @property
    def ast(self) -> nodes.Template:
        return self._ast


class Text(Compiled):
    """A string with templates inside: renders to text."""

    def __init__(self, source: str, where: str, env: ImmutableSandboxedEnvironment = ENV) -> None:
        self.source = source
        self.where = where
        self._env = env
        self._ast = env.parse(source)
        self._names = _checked_names(self._ast, env)
        self._plan = text_plan(self._ast, env.finalize)
        self._compiled: Template | None = None  # Jinja's code, made at first use (see _checked_names)

    def _jinja(self) -> Template:
        template = self._compiled
        if template is None:  # two threads may both compile it once; both results are the same
            template = self._compiled = self._env.from_string(self.source)
        return template

    def evaluate(self, context: dict[str, Any]) -> Any:
        if self._plan is not None:
            try:
                value = self._plan(context)
            except Exception:  # finalize refused a value: Jinja raises it with our message
                value = UNKNOWN
            if value is not UNKNOWN:
                return value
        try:
            return self._jinja().render(context)
        except MapperError:
            raise
        except Exception as exc:  # filters may raise anything (re.error, OSError...): name the place
            raise _runtime_error(self.where, exc) from exc

    def names(self) -> set[str]:
        return set(self._names)

    @property
    def ast(self) -> nodes.Template:
        return self._ast


def _checked_names(ast: nodes.Template, env: ImmutableSandboxedEnvironment) -> frozenset[str]:
    """The context names a template reads. Finding them runs Jinja's code generator over the
    template, which is also what refuses an unknown filter or test, so every template is
    checked at load time. Compiling the generated code into Python, which cost as much again
    and made start-up slow, waits for the first value no fast path renders: once per process
    and template, and for most leaves never."""
    if all(isinstance(node, nodes.Output) for node in ast.body):
        # Text and expressions only (nearly every leaf): nothing binds a name, so the names read
        # are the Name nodes, and the only check the code generator would make is the one here.
        for node in ast.find_all((nodes.Filter, nodes.Test)):
            kind, known = ("filter", env.filters) if isinstance(node, nodes.Filter) else ("test", env.tests)
            if node.name not in known:
                raise TemplateAssertionError(f"No {kind} named {node.name!r}.", node.lineno, None, None)
        return frozenset(node.name for node in ast.find_all(nodes.Name)
                         if node.ctx == "load" and node.name not in env.globals)  # as Jinja's meta does
    return frozenset(meta.find_undeclared_variables(ast))


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


def _fail_on_undefined(value: Any) -> None:
    """Raise Jinja's own error for the first Undefined inside a list or dict."""
    todo = [value]
    while todo:
        item = todo.pop()
        if isinstance(item, Undefined):
            item._fail_with_undefined_error()
        elif isinstance(item, dict):
            todo.extend(item.values())
        elif isinstance(item, (list, tuple)):
            todo.extend(item)


def _runtime_error(where: str, exc: Exception) -> MappingRuntimeError:
    # Jinja's messages name the variable or attribute, never the context's values.
    text = str(exc).rstrip(".")
    if isinstance(exc, UndefinedError) and (" has no attribute " in text or " has no element " in text):
        return MissingValue(
            f"The mapping could not build a value at {where} because a key it reads is missing (the CRM's "
            f"answer may lack it, or the mapping reads the wrong one): {text}.", internal=type(exc).__name__)
    if isinstance(exc, re.error):
        text = f"a regular expression in it is not valid ({text})"
    elif not isinstance(exc, (TemplateError, ArithmeticError, LookupError, TypeError, ValueError)):
        text = f"{type(exc).__name__}: {text}"
    return MappingRuntimeError(f"The mapping could not build a value at {where}: {text}.",
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
        expr = None if getattr(env, "encodes_paths", False) else _single_expression(source, env)
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
