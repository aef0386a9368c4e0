"""Writes that are never made twice: ``find:``, and retries only when a write provably did not land.

This is the one place a write is sent again (the HTTP client retries only
safe calls, :mod:`mapper.core.upstream`). A write (a call not marked safe:
POST, PUT, PATCH, DELETE) that failed without a clear answer (the connection
broke, the CRM did not answer in time, it answered 5xx, or a 2xx the step
cannot read) may have been applied or not; sending it again blindly could
create a second case. So a write step is sent again only when:

* the request was never sent (the connection was refused or could not be
  opened: the client's error says ``nothing_sent``), or
* its ``find:`` lookup, run after the failure, says the write did not land;

at most ``MAX_WRITES`` sends in all, and each only while the pause before it
and a useful call (the floor a read's retry keeps too) fit the budget.

``find:`` also runs *before* the write: a Khoros retry of a create that
already wrote the case (or some of its interactions) finds them, skips
those writes and uses what it found, so the retry only adds what is
missing. The lookup's ``extract`` sets the same names the write's would,
so the steps after it read the same values either way.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from ..errors import KhorosError, UpstreamError
from . import context
from .templating import Compiled
from .upstream import Inbound, Outbound

if TYPE_CHECKING:
    from .pipeline import RequestStep, Run, Step

log = logging.getLogger("mapper.resume")

# At most this many sends of one write per Khoros request.
MAX_WRITES = 3
# Pause before the 2nd and 3rd send (each x 0.5-1.5, so parallel retries spread out).
PAUSES = (0.1, 0.3)


class WriteFailed(Exception):
    """A write got no answer or one it cannot read (``error``), or a 5xx (``answer``): it may
    or may not have landed."""

    def __init__(self, outbound: Outbound, *, answer: Inbound | None = None,
                 error: KhorosError | None = None) -> None:
        super().__init__(outbound.describe())
        self.outbound = outbound
        self.answer = answer
        self.error = error

    @property
    def never_sent(self) -> bool:
        """True when the connection was never opened, so the CRM cannot have seen the request."""
        return isinstance(self.error, UpstreamError) and self.error.nothing_sent

    def what(self) -> str:
        if self.answer is not None:
            return f"HTTP {self.answer.status}"
        return self.error.code if self.error is not None else "failure"


@dataclass
class Find:
    """A write's ``find:``: one lookup (a request with errors and extract) or a list of
    ``steps`` for a CRM that needs several calls, and the ``found`` test."""

    found: Compiled
    lookup: RequestStep | None = None
    steps: list[Step] | None = None
    when: Compiled | None = None

    def look(self, run: Run, scope: dict[str, Any]) -> bool:
        """Run the lookup (setting its names) and tell whether the write landed."""
        if self.steps is not None:
            run.run_steps(self.steps, scope)
            return bool(self.found.evaluate(scope))
        assert self.lookup is not None
        answer = self.lookup.call_and_extract(run, scope)
        seen = {**scope, "response": answer.body, "status": answer.status, "headers": answer.headers}
        return bool(self.found.evaluate(seen))


def write(step: RequestStep, run: Run, scope: dict[str, Any]) -> None:
    """Run a write step: skip it if ``find`` finds it done; retry it only when it provably did not land."""
    find = step.find
    looks_first = find is not None and (find.when is None or bool(find.when.evaluate(scope)))
    if find is not None and looks_first and find.look(run, scope):
        log.info("trace=%s step=%s found what an earlier attempt wrote; not writing again", run.trace_id, step.name)
        return
    for attempt in range(1, MAX_WRITES + 1):
        try:
            step.call_and_extract(run, scope)
            return
        except WriteFailed as failed:
            if failed.never_sent:
                reason = "not sent"
            elif find is None:
                _give_up(step, run, scope, failed)
            elif _landed(find, step, run, scope, failed):
                log.info("trace=%s step=%s failed (%s) but had landed; using what it wrote",
                         run.trace_id, step.name, failed.what())
                return
            else:
                reason = "not applied"
            pause = PAUSES[min(attempt, len(PAUSES)) - 1] * random.uniform(0.5, 1.5)  # noqa: S311 (jitter)
            if attempt == MAX_WRITES or pause + run.client.useful_call() > run.deadline.remaining():
                _give_up(step, run, scope, failed)
            log.info("trace=%s step=%s failed (%s), %s: sending it again", run.trace_id, step.name,
                     failed.what(), reason)
            context.retry("write_" + reason.replace(" ", "_"))
            time.sleep(pause)


def _landed(find: Find, step: RequestStep, run: Run, scope: dict[str, Any], failed: WriteFailed) -> bool:
    """Whether the failed write landed; if the lookup fails too, the write's failure is what the
    agent is told (it says what was being written), and the lookup's goes to the log."""
    try:
        return find.look(run, scope)
    except KhorosError as exc:
        log.warning("trace=%s step=%s failed (%s) and its find failed too (%s)", run.trace_id, step.name,
                    failed.what(), exc.code)
        _give_up(step, run, scope, failed)


def _give_up(step: RequestStep, run: Run, scope: dict[str, Any], failed: WriteFailed) -> NoReturn:
    """Raise what the failure means for Khoros: the transport error, or the mapping's rules for the answer."""
    if failed.error is not None:
        raise failed.error
    assert failed.answer is not None
    step._check(run, scope, failed.answer, failed.outbound)  # raises: the step does not accept this 5xx
    raise AssertionError(f"step '{step.name}' accepted HTTP {failed.answer.status}, which WriteFailed excludes")
