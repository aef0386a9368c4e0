"""The fault matrix: every CRM fault, on every CRM call of lookup, search and case create.

The shipped json-server mapping runs against the programmable fault CRM
(:mod:`tests.fakes.fault_crm`) through our real server. Each cell plays one
fault on one CRM call of one operation and asserts what Khoros must see:
the right status, the Khoros error JSON with the trace id of the answer,
an answer inside the budget, never a search ``[]`` or a lookup 404 made of a
broken answer, and, for case creates, what the CRM holds afterwards: a write
whose answer was lost is found by the mapping's ``find`` and not made twice,
and one that answered a 5xx (not applied) is sent again, three sends in all.

The engine's budget is shortened to 3 s (Khoros's is 8 s) so that a CRM
that hangs costs a cell 2.5 seconds; the cells run in parallel, once per
module, and each test below checks one cell's outcome. The time limit
allows generous slack for a loaded machine, but far less than what any
fault would cost without the hard deadline (a drip lasts 8 s, a hang 30 s).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mapper.core.engine import Engine
from mapper.core.request_key import request_key
from mapper.service.app import create_app
from tests.conftest import KHOROS_TOKEN
from tests.fakes.fault_crm import FAULTS, NOT_APPLIED, FaultCrm, Program, gzip_bomb
from tests.support.khoros import Answer, KhorosClient
from tests.support.live_server import LiveServer, free_port
from tests.targets.registry import ROOT

MAPPING = f"{ROOT}/mappings/json-server.yaml"
TRACE = re.compile(r"\(trace ([0-9a-f]{16})\)")
BUDGET = 3.0  # seconds; the engine keeps 0.5 s of it to answer
SLACK = 2.0  # for a loaded machine: the server's own deadline is what is tested
# The CRM calls of each operation, in order (json-server mapping).
CALLS = {"lookup": ["GET /customers/{id}"], "search": ["GET /customers?email="],
         "create_case": ["GET /customers/{id}", "GET /cases?requestKey=", "POST /cases", "POST /interactions",
                         "GET /interactions"]}
TIMEOUTS = {"hang", "slow_headers", "drip", "drip_chunked"}
# Faults a read gets over by trying again (the fault is played once only).
TRANSIENT = ("status_502", "status_503", "html_200", "html_500", "reset_mid_body", "rate_limit_short", "delay")
# Faults that apply a write and then spoil or cut its answer fast enough for the step's find
# to look: it finds what the write made, and the create goes on as if the answer had come.
ANSWER_LOST = ("reset_mid_body", "html_200", "invalid_json", "empty_200", "big_body", "gzip_bomb")
# Faults a write step that reads nothing from the answer never notices (the interaction POST).
UNREAD = ("invalid_json", "empty_200", "wrong_shape")
CASE_WRITE, INTERACTION_WRITE = 3, 4  # in CALLS["create_case"]


@dataclass(frozen=True)
class Cell:
    operation: str
    fault: str
    call: int  # 1-based index into CALLS[operation]
    once: bool = False

    @property
    def name(self) -> str:
        return f"{self.operation}-{self.fault}-call{self.call}{'-once' if self.once else ''}"

    @property
    def fails(self) -> bool:
        """Whether Khoros must get an error."""
        if self.fault == "delay" or self.once:
            return False
        if self.operation == "create_case" and self.call == CASE_WRITE:
            return self.fault not in ANSWER_LOST
        if self.operation == "create_case" and self.call == INTERACTION_WRITE:
            return self.fault not in ANSWER_LOST + UNREAD
        return True

    @property
    def code(self) -> str:
        if self.fault in TIMEOUTS:
            return "crm_timeout"
        if self.fault in ("reset_mid_body", "refuse"):
            return "crm_unavailable"
        return "crm_error"


CELLS = [Cell(op, fault, call) for op, calls in CALLS.items() for call in range(1, len(calls) + 1)
         for fault in FAULTS]
CELLS += [Cell(op, fault, 1, once=True) for op in ("lookup", "search") for fault in TRANSIENT]
CELLS += [Cell(op, "refuse", 1) for op in CALLS]  # nothing listens: only the first call can meet it


@dataclass
class Outcome:
    answer: Answer | None
    seconds: float
    error: BaseException | None = None


def _case(customer: str) -> dict[str, Any]:
    return {"customerId": customer, "title": f"Broken {customer}",
            "interactions": [{"created": "2024-05-01T10:00:00Z", "body": "It broke",
                              "linkUrl": f"https://x.com/jane/status/{customer}",
                              "serviceId": f"post-{customer}", "service": "twitter", "contentType": "post"}]}


def _call(khoros: KhorosClient, cell: Cell, customer: str) -> Answer:
    if cell.operation == "lookup":
        return khoros.get_customer(customer)
    if cell.operation == "search":
        return khoros.search({"email": f"{customer}@example.com"})
    return khoros.create_case(_case(customer))


def _serve(url: str) -> tuple[LiveServer, Engine]:
    engine = Engine.load(MAPPING, {"JSON_SERVER_URL": url})
    engine.operation_budget = BUDGET
    return LiveServer(create_app(engine, tokens=[KHOROS_TOKEN])).start(), engine


@pytest.fixture(scope="module")
def crm() -> Iterator[FaultCrm]:
    gzip_bomb()  # built once, before any cell's clock runs
    fault_crm = FaultCrm()
    yield fault_crm
    fault_crm.stop()


@pytest.fixture(scope="module")
def outcomes(crm: FaultCrm) -> Iterator[dict[Cell, Outcome]]:
    server, engine = _serve(crm.url)
    dead_server, dead_engine = _serve(f"http://127.0.0.1:{free_port()}")
    for cell in CELLS:
        # The key the server gives the create (no Idempotency-Key header: the body's), so that the
        # CRM can tell which cell a case lookup by requestKey belongs to.
        key = request_key("create_case", _case(cell.name)) if cell.operation == "create_case" else None
        crm.add_cell(cell.name, Program(cell.fault, cell.call, times=1 if cell.once else 1_000_000), key)

    def run(cell: Cell) -> Outcome:
        khoros = KhorosClient((dead_server if cell.fault == "refuse" else server).url, KHOROS_TOKEN)
        started = time.monotonic()
        try:
            answer = _call(khoros, cell, cell.name)
        except Exception as exc:  # reported by the cell's own test
            return Outcome(None, time.monotonic() - started, exc)
        return Outcome(answer, time.monotonic() - started)

    with ThreadPoolExecutor(max_workers=24) as pool:
        results = dict(zip(CELLS, pool.map(run, CELLS), strict=True))
    yield results
    for live, eng in ((server, engine), (dead_server, dead_engine)):
        live.stop()
        eng.close()


@pytest.mark.parametrize("cell", CELLS, ids=lambda cell: cell.name)
def test_each_fault_gets_khoros_the_right_answer_in_time(cell: Cell, outcomes: dict[Cell, Outcome],
                                                         crm: FaultCrm) -> None:
    outcome = outcomes[cell]
    assert outcome.error is None, f"Khoros got no answer: {outcome.error!r}"
    answer = outcome.answer
    assert answer is not None
    assert outcome.seconds < BUDGET + SLACK, f"answered after {outcome.seconds:.1f} s"
    if cell.fails:
        assert answer.status == 500, answer.body  # never a lookup 404, never a search 200 []
        assert answer.body["error"] == cell.code, answer.body
        match = TRACE.search(answer.body["message"])
        assert match and answer.headers["X-Trace-Id"] == match.group(1)
    elif cell.operation == "lookup":
        assert answer.status == 200, answer.body
        assert answer.body["id"] == cell.name
    elif cell.operation == "search":
        assert answer.status == 200, answer.body
        assert [c["id"] for c in answer.body] == [cell.name]
    else:
        assert answer.status == 201, answer.body
        assert [i["serviceId"] for i in answer.body["interactions"]] == [f"post-{cell.name}"]


@pytest.mark.parametrize("cell", [c for c in CELLS if c.operation == "create_case"], ids=lambda cell: cell.name)
def test_what_the_crm_holds_after_a_faulted_case_create(cell: Cell, outcomes: dict[Cell, Outcome],
                                                        crm: FaultCrm) -> None:
    """A write is sent again only when nothing was sent or its find says it did not land, so the
    CRM's state follows from the fault: no case when a read before the case write failed or the
    write was never applied (each send met the fault), else exactly one, never two."""
    assert outcomes[cell].answer is not None
    created = not cell.fails or not (cell.call < CASE_WRITE or cell.fault == "refuse"
                                     or (cell.call == CASE_WRITE and cell.fault in NOT_APPLIED))
    cases = crm.cases_of(cell.name)
    assert len(cases) == (1 if created else 0)
    if created:
        stored = not cell.fails or cell.call > INTERACTION_WRITE or (
            cell.call == INTERACTION_WRITE and cell.fault not in NOT_APPLIED)
        assert len(crm.interactions_of(cases[0]["id"])) == (1 if stored else 0)
    if cell.operation == "create_case" and cell.call in (CASE_WRITE, INTERACTION_WRITE):
        sends = crm.programs[cell.name].played  # each send of the faulted write met the fault
        if cell.fault in ANSWER_LOST or cell.fault in TIMEOUTS:
            assert sends == 1  # it may have landed: found, or no time left to look
        elif cell.fault in NOT_APPLIED and cell.fault.startswith(("status_5", "html_5")):
            assert sends == 3  # its find saw nothing: sent again, at most three times


def test_a_long_retry_after_is_answered_at_once_with_the_rate_limit(outcomes: dict[Cell, Outcome]) -> None:
    outcome = outcomes[Cell("search", "rate_limit_long", 1)]
    assert outcome.answer is not None and outcome.answer.status == 500
    assert "rate-limiting" in outcome.answer.body["message"]
    assert outcome.seconds < BUDGET  # no doomed wait: Retry-After 30 s does not fit


def _body(answer: Answer | None) -> Any:
    return None if answer is None else answer.body


def test_messages_say_whether_the_request_was_sent(outcomes: dict[Cell, Outcome]) -> None:
    refused = _body(outcomes[Cell("create_case", "refuse", 1)].answer)["message"]
    assert "Could not connect" in refused and "nothing was sent" in refused
    hung_write = _body(outcomes[Cell("create_case", "hang", CASE_WRITE)].answer)["message"]
    assert "it may have been applied" in hung_write and "Could not connect" not in hung_write


def test_the_documented_broken_answer_message_is_what_khoros_gets(outcomes: dict[Cell, Outcome]) -> None:
    doc = Path(ROOT, "docs", "mapping-language.md").read_text(encoding="utf-8")
    documented = doc.split("**A 2xx the step cannot read is an error**", 1)[1].split("```\n", 1)[1]
    documented = documented.split("\n", 1)[0].strip()
    answer = outcomes[Cell("search", "html_200", 1)].answer
    assert answer is not None
    message = TRACE.sub("", answer.body["message"]).strip().replace(f"{ROOT}/", "")
    assert message == documented
