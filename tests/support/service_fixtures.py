"""Fixtures the service tests share: the mapper logging undone, the two tenant CRMs.

A plugin of the test suite (``pytest_plugins`` in conftest.py): ``crms`` is
there for any module that asks; a module that builds apps opts in to the
logging reset with ``pytestmark = pytest.mark.usefixtures("restore_logging")``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from tests.support.tenants import Crm


def reset_mapper_logging() -> None:
    """Undo what ``create_app`` / ``configure`` did to the 'mapper' loggers: they send the
    log to the stderr (or stream) of the moment, which a later test must not inherit."""
    logger = logging.getLogger("mapper")
    for handler in list(logger.handlers):
        if getattr(handler, "_mapper_handler", False):
            logger.removeHandler(handler)
    logger.propagate = True
    logger.setLevel(logging.NOTSET)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    yield
    reset_mapper_logging()


@pytest.fixture(scope="module")
def crms() -> Iterator[tuple[Crm, Crm]]:
    """acme's and globex's CRMs (tests/support/tenants.py), for the module."""
    acme, globex = Crm("acme").start(), Crm("globex").start()
    yield acme, globex
    acme.stop()
    globex.stop()
