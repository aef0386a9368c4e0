"""The Khoros deadline as a budget that every upstream call spends from.

Khoros gives up after 8 s (20 s for ``/meta``). A server that lets each CRM
call run to its own timeout answers too late, and the agent sees a generic
error instead of ours. So each inbound request gets one :class:`Deadline`;
every upstream call asks it how long it may wait, keeping back a small
reserve to build and send our own answer.
"""

from __future__ import annotations

import time

# Seconds kept back from the Khoros limit to shape and send our answer.
ANSWER_RESERVE = 0.5


class Deadline:
    """A point in time by which the whole operation must have answered."""

    def __init__(self, seconds: float, clock=time.monotonic, started: float | None = None) -> None:
        """``started`` is when the request arrived (on ``clock``): a request that waited in a
        queue has less left. Default: now."""
        self._clock = clock
        self.seconds = seconds
        now = clock()
        self.started = now if started is None or started > now else started
        self.ends = self.started + max(seconds - ANSWER_RESERVE, 0.0)
        self._created = now

    def remaining(self) -> float:
        """Seconds left for upstream work (never negative)."""
        return max(self.ends - self._clock(), 0.0)

    def elapsed(self) -> float:
        return self._clock() - self.started

    def expired(self) -> bool:
        return self.remaining() <= 0.0

    def waited(self) -> float:
        """Seconds between the request's arrival and this budget's creation (queue time)."""
        return self._created - self.started

    def allow(self, wanted: float) -> float:
        """How long one upstream call may take: what it wants, capped by what is left."""
        return min(wanted, self.remaining())
