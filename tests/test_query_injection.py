"""No value from Khoros can change the structure of a CRM query, on any shipped mapping.

Each hostile value of the corpus goes through customer search and best match.
The test then reads what the CRM received, reduces each query to its
structure (Zendesk search terms, the parsed SOQL tree, HubSpot's filter
groups, the names of plain query parameters) with the values left out, and
checks that every structure also occurs for a harmless value sent the same
way. A value may lose a query (nothing searchable left in it), never add or
reshape one. The vendor fakes parse what they receive by each vendor's
documented grammar; the other mappings send plain query parameters, seen here
through a recording CRM.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from mapper.core.engine import Engine
from tests.conftest import Fake
from tests.fakes.salesforce import Comparison, Literal, Logical, Not
from tests.support.khoros import KhorosClient
from tests.support.live_server import LiveServer
from tests.support.recording_crm import RecordingCrm
from tests.targets.registry import ROOT

CORPUS = [
    '"', "\\", "'", '\\"', 'qqq" name:"Ann', "OR", "a OR b", "*", "%", "_", ")", "(", "x) OR (Name != null",
    "line\nbreak", "cr\r\nlf", "tab\there", "ünïcødé 名前 😀", "' OR Name LIKE '%", "x\\' OR Name LIKE \\'%",
    "x\\", '"a" OR type:ticket', "type:ticket status:open", "-role:admin", "name:*", "&query=type:ticket",
    "#frag", "%22%20OR", "nul\x00byte", '{"$ne": null}', "{{ secrets }}", "a" * 300,
]

Atom = Any  # one query's structure, hashable


@dataclass
class Target:
    """A mapping served by our bridge, and how to read the structures of the queries it sent."""

    khoros: KhorosClient
    engine_model: Any
    mark: Callable[[], int]
    atoms: Callable[[int], list[Atom]]  # the structures of the queries received since a mark


# --- reading structures -----------------------------------------------------------------

def _zendesk_atoms(state: Any, mark: int) -> list[Atom]:
    return [(log.endpoint, tuple((t.field, t.quoted, t.value if t.field == "type" else None) for t in log.terms))
            for log in state.searches[mark:]]


def _soql_shape(cond: Any) -> Atom:
    if isinstance(cond, Comparison):
        values = cond.value if isinstance(cond.value, tuple) else (cond.value,)
        return ("cmp", cond.field, cond.op, tuple(v.kind for v in values))
    if isinstance(cond, Logical):
        return (cond.op, tuple(_soql_shape(part) for part in cond.parts))
    if isinstance(cond, Not):
        return ("not", _soql_shape(cond.part))
    return None


def _salesforce_atoms(state: Any, mark: int) -> list[Atom]:
    return [(q.sobject.name, tuple(q.field_names), _soql_shape(q.where), q.limit)
            for q in (r.soql for r in state.requests[mark:]) if q is not None]


def _soql_strings(cond: Any) -> list[str]:
    if isinstance(cond, Comparison):
        values = cond.value if isinstance(cond.value, tuple) else (cond.value,)
        return [v.value for v in values if isinstance(v, Literal) and v.kind == "string"]
    if isinstance(cond, Logical):
        return [s for part in cond.parts for s in _soql_strings(part)]
    if isinstance(cond, Not):
        return _soql_strings(cond.part)
    return []


def _hubspot_atoms(state: Any, mark: int) -> list[Atom]:
    atoms: list[Atom] = []
    for r in state.requests[mark:]:
        if r.method != "POST" or not r.path.endswith("/search"):
            continue
        body = r.json
        atoms.append(("keys", r.path, tuple(sorted(body))))
        for group in body["filterGroups"]:
            atoms.append(("group", tuple((f["propertyName"], f["operator"], "value" in f,
                                          len(f.get("values", [])), all(isinstance(v, str) for v in
                                                                        f.get("values", [f.get("value")])))
                                         for f in group["filters"])))
    return atoms


def _freshdesk_atoms(state: Any, mark: int) -> list[Atom]:
    return [(r.method, r.path, tuple(sorted(r.query))) for r in state.requests[mark:] if r.method == "GET"]


def _servicenow_atoms(state: Any, mark: int) -> list[Atom]:
    return [(table, tuple((c.field, c.operator, c.joined_by) for c in parsed.conditions), parsed.order_by)
            for table, _, parsed in state.queries[mark:]]


def _odata_shape(tree: Any) -> Atom:
    from tests.fakes.dynamics import Comparison as ODataComparison

    if isinstance(tree, ODataComparison):
        return (tree.prop, tree.op, type(tree.value).__name__)
    if isinstance(tree, tuple) and tree[0] in ("and", "or"):
        return (tree[0], _odata_shape(tree[1]), _odata_shape(tree[2]))
    return (tree[0], tree[1], type(tree[2]).__name__)


def _dynamics_atoms(state: Any, mark: int) -> list[Atom]:
    from tests.fakes.dynamics import parse_filter

    return [(r.path, _odata_shape(parse_filter(r.arg("$filter")))) for r in state.requests[mark:]
            if r.arg("$filter") is not None]


def _length_of(state: Any, log: str) -> int:
    return len(getattr(state, log))


def _recorded_atoms(crm: RecordingCrm, mark: int) -> list[Atom]:
    return [(s.method, s.path, tuple(name for name, _ in s.query)) for s in crm.seen[mark:]]


# --- the six shipped mappings -------------------------------------------------------------

RECORDED = {  # mapping -> (its base-URL variable, extra environment, an empty answer in its format)
    "demo": ("DEMO_CRM_URL", {}, {"items": [], "total": 0}),
    "json-server": ("JSON_SERVER_URL", {}, []),
    "bottlecrm": ("BOTTLECRM_URL", {"BOTTLECRM_TOKEN": "bcrm_pat_recording"}, {"count": 0, "results": []}),
}
READERS = {"zendesk": _zendesk_atoms, "salesforce": _salesforce_atoms, "hubspot": _hubspot_atoms,
           "freshdesk": _freshdesk_atoms, "servicenow": _servicenow_atoms, "dynamics": _dynamics_atoms}
MAPPINGS = [*READERS, *RECORDED]


@pytest.fixture(scope="module")
def recorders() -> Iterator[dict[str, tuple[RecordingCrm, str]]]:
    servers: dict[str, tuple[RecordingCrm, str]] = {}
    running = []
    for name, (_, _, empty) in RECORDED.items():
        crm = RecordingCrm(lambda seen, empty=empty: (200, empty, {}))
        server = LiveServer(crm.app()).start()
        running.append(server)
        servers[name] = (crm, server.url)
    yield servers
    for server in running:
        server.stop()


@pytest.fixture(scope="module")
def targets(request: pytest.FixtureRequest, bridge: Callable[[str, dict[str, str]], KhorosClient],
            recorders: dict[str, tuple[RecordingCrm, str]]) -> dict[str, Callable[[], Target]]:
    def make(name: str) -> Target:
        path = f"{ROOT}/mappings/{name}.yaml"
        if name in RECORDED:
            variable, extra, _ = RECORDED[name]
            crm, url = recorders[name]
            env = {variable: url, **extra}
            mark, atoms = (lambda: len(crm.seen)), (lambda m: _recorded_atoms(crm, m))
        else:
            fake: Fake = request.getfixturevalue(f"{name}_fake")
            env = request.getfixturevalue(f"{name}_env")
            state = fake.state
            reader = READERS[name]
            log = {"zendesk": "searches", "servicenow": "queries"}.get(name, "requests")
            mark = functools.partial(_length_of, state, log)
            atoms = functools.partial(reader, state)
        model = Engine.load(path, env).mapping.models["customer"]
        return Target(bridge(path, env), model, mark, atoms)

    cache: dict[str, Target] = {}

    def get(name: str) -> Target:
        if name not in cache:
            cache[name] = make(name)
        return cache[name]

    return {name: (lambda name=name: get(name)) for name in MAPPINGS}


def _search_body(model: Any, value: str) -> dict[str, str]:
    """Every searchable text field the value can legally fill (an email field gets it as the local part)."""
    body = {}
    for f in model.fields:
        if not f.searchable or f.type not in ("text", "textarea"):
            continue
        for candidate in (value, f"{value}@example.com"):
            if f.problem_with(candidate) is None:
                body[f.name] = candidate
                break
    return body


def _benign_for(model: Any, keys: list[str], tag: str) -> dict[str, str]:
    out = {}
    for f in model.fields:
        if f.name in keys:
            out[f.name] = next(c for c in (f"benign{tag}", f"benign{tag}@example.com", f"+1 555 {tag[:7]}")
                               if f.problem_with(c) is None)
    return out


def _atoms_of(target: Target, call: Callable[[], Any]) -> tuple[Any, list[Atom]]:
    mark = target.mark()
    answer = call()
    return answer, target.atoms(mark)


@pytest.mark.vendor
@pytest.mark.parametrize("mapping", MAPPINGS)
def test_no_hostile_value_changes_a_search_query(targets: dict[str, Callable[[], Target]], mapping: str) -> None:
    target = targets[mapping]()
    changed = []
    for value in CORPUS:
        hostile = _search_body(target.engine_model, value)
        if not hostile:
            continue
        tag = str(uuid.uuid4().int)[:10]
        benign = _benign_for(target.engine_model, list(hostile), tag)
        answer, baseline = _atoms_of(target, lambda b=benign: target.khoros.search(b))
        assert answer.status == 200, (mapping, benign, answer.body)
        answer, seen = _atoms_of(target, lambda h=hostile: target.khoros.search(h))
        assert answer.status == 200, (mapping, value, answer.body)
        assert answer.body == [], (mapping, value)
        if any(ch.isalnum() for ch in value):
            assert seen, f"{mapping}: {value!r} was never searched for"
        changed += [(value, atom) for atom in seen if atom not in baseline]
    assert changed == []


@pytest.mark.vendor
@pytest.mark.parametrize("mapping", MAPPINGS)
def test_no_hostile_value_changes_a_best_match_query(targets: dict[str, Callable[[], Target]],
                                                     mapping: str) -> None:
    target = targets[mapping]()
    changed = []
    for value in CORPUS:
        tag = str(uuid.uuid4().int)[:10]
        benign = {"email": f"benign{tag}@example.com", "phoneNumbers": [f"+1 555 {tag[:7]}"],
                  "displayName": f"Benign Person{tag}", "screenName": f"benign{tag}"}
        answer, baseline = _atoms_of(target, lambda b=benign: target.khoros.best_match(b))
        assert answer.status == 200 and answer.body == [], (mapping, answer.body)
        hostile = {"email": value, "phoneNumbers": [value, f"{value} 555 0100"], "displayName": f"{value} {value}",
                   "screenName": value}
        benign["phoneNumbers"] = [f"+1 555 {tag[:7]}", f"+1 555 {tag[3:10]}"]
        answer, baseline2 = _atoms_of(target, lambda b=benign: target.khoros.best_match(b))
        # A phone number is searched in each spelling it has (phone_forms), text that is no number
        # as it is: compare with benign values of both shapes ('" 555 0100' is a local number).
        benign["phoneNumbers"] = [f"benign{tag}", f"benign{tag} 555 0100"]
        answer, baseline3 = _atoms_of(target, lambda b=benign: target.khoros.best_match(b))
        benign["phoneNumbers"] = [f"benign{tag}", "555 0100"]
        answer, baseline4 = _atoms_of(target, lambda b=benign: target.khoros.best_match(b))
        baseline3 += baseline4
        answer, seen = _atoms_of(target, lambda h=hostile: target.khoros.best_match(h))
        assert answer.status == 200, (mapping, value, answer.body)
        assert answer.body == [], (mapping, value)
        assert seen, f"{mapping}: best match sent nothing for {value!r}"
        changed += [(value, atom) for atom in seen if atom not in baseline + baseline2 + baseline3]
    assert changed == []


@pytest.mark.vendor
@pytest.mark.parametrize("value", CORPUS)
def test_a_soql_literal_carries_the_value_itself(targets: dict[str, Callable[[], Target]], salesforce_fake: Fake,
                                                 value: str) -> None:
    target = targets["salesforce"]()
    mark = len(salesforce_fake.state.requests)
    answer = target.khoros.best_match({"email": value, "displayName": value, "phoneNumbers": [value]})
    assert answer.status == 200, answer.body
    strings = [s for r in salesforce_fake.state.requests[mark:] if r.soql is not None
               for s in _soql_strings(r.soql.where)]
    # Control characters SOQL has no escape for are dropped; everything else arrives as sent.
    expected = "".join(ch for ch in value if ch >= " " or ch in "\n\r\t\b\f")
    assert strings and set(strings) == {expected}
