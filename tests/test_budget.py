"""The Khoros deadline as a budget every CRM call spends from.

A fake clock makes these exact: the budget keeps back a reserve for our own
answer, each call may wait what it wants but never more than what is left,
and a spent budget says so.
"""

from __future__ import annotations

import pytest

from mapper.core.budget import ANSWER_RESERVE, Deadline


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_the_budget_keeps_back_a_reserve_for_our_own_answer(clock):
    deadline = Deadline(8.0, clock=clock)
    assert deadline.remaining() == pytest.approx(8.0 - ANSWER_RESERVE)
    assert deadline.seconds == 8.0


def test_allow_gives_a_call_what_it_wants_while_the_budget_lasts(clock):
    deadline = Deadline(8.0, clock=clock)
    assert deadline.allow(5.0) == 5.0


def test_allow_caps_a_call_at_what_is_left(clock):
    deadline = Deadline(8.0, clock=clock)
    clock.now += 6.0
    assert deadline.allow(5.0) == pytest.approx(1.5)
    assert deadline.elapsed() == pytest.approx(6.0)
    assert not deadline.expired()


def test_a_spent_budget_is_expired_and_never_negative(clock):
    deadline = Deadline(8.0, clock=clock)
    clock.now += 30.0
    assert deadline.remaining() == 0.0
    assert deadline.allow(5.0) == 0.0
    assert deadline.expired()


def test_a_budget_smaller_than_the_reserve_is_spent_from_the_start(clock):
    deadline = Deadline(0.2, clock=clock)
    assert deadline.expired()
