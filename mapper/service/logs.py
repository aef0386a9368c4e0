"""Logging set-up: one line per event, trace ids in every line, secrets redacted.

Secrets come from the environment and must never reach a log, even through
an upstream error body that happens to echo a token, a library's debug line
(urllib3 logs each URL, query string included) or a traceback. Redaction is
therefore done where every log record is born: :func:`configure` installs a
log-record factory that rewrites each record's message (and its traceback,
which it folds into the message) through every active
:class:`~mapper.core.redaction.Redactor`, whichever logger or handler the
record then goes to. The ``mapper`` handler also keeps its own filter, for
records made before the factory was installed.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import weakref
from collections.abc import Iterable
from typing import Any

from ..core.redaction import REDACTED, Redactor
from .logformat import RequestContextFilter, formatter_for
from .logwrite import LineHandler

__all__ = ["REDACTED", "RedactSecrets", "configure", "scrub"]

_ACTIVE: weakref.WeakSet[Redactor] = weakref.WeakSet()
_install_lock = threading.Lock()
_installed = False


# Set on a record by scrub(): the (redactor, pattern) pairs it was redacted with.
SCRUBBED_ATTR = "_mapper_scrubbed"


def scrub(record: logging.LogRecord, redactors: Iterable[Redactor]) -> None:
    """Rewrite ``record`` in place so that its message, traceback and stack carry no secret."""
    redactors = list(redactors)
    if not redactors:
        return
    for redactor in redactors:
        redactor.refresh()  # tokens learned since the last record
    # What the record was redacted with: a filter holding one of these redactors, still with
    # the same secrets, need not redact it a second time (see RedactSecrets.filter).
    setattr(record, SCRUBBED_ATTR, [(redactor, redactor.pattern) for redactor in redactors])
    try:
        message = record.getMessage()
    except Exception:  # a broken format string: logging reports it later; show nothing of the args
        message, record.args = str(record.msg), None
    redacted = message
    for redactor in redactors:
        redacted = redactor.redact(redacted)
    if record.exc_info:
        text = logging.Formatter().formatException(record.exc_info)
        for redactor in redactors:
            text = redactor.redact(text)
        redacted = f"{redacted}\n{text}"
        record.exc_info = None
        record.exc_text = None
    if record.stack_info:
        for redactor in redactors:
            record.stack_info = redactor.redact(record.stack_info)
    if redacted != message:
        record.msg, record.args = redacted, None


def _install_factory() -> None:
    global _installed
    with _install_lock:
        if _installed:
            return
        previous = logging.getLogRecordFactory()

        def redacting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            if _ACTIVE:
                scrub(record, list(_ACTIVE))
            return record

        logging.setLogRecordFactory(redacting_factory)
        _installed = True


class RedactSecrets(logging.Filter):
    """A handler filter replacing every form of every known secret in a record."""

    def __init__(self, secrets: Iterable[str] = (), redactor: Redactor | None = None) -> None:
        super().__init__()
        self.redactor = redactor if redactor is not None else Redactor()
        self.redactor.add(secrets)

    @property
    def secrets(self) -> list[str]:
        return self.redactor.secrets

    def add(self, secrets: Iterable[str]) -> None:
        self.redactor.add(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        # Every record made after configure() was redacted where it was born (the record
        # factory); again only if it was not, or this redactor learned a secret since.
        self.redactor.refresh()
        if (self.redactor, self.redactor.pattern) not in getattr(record, SCRUBBED_ATTR, ()):
            scrub(record, [self.redactor])
        return True


def configure(level: str = "INFO", secrets: Iterable[str] = (), stream: Any = None,
              redactor: Redactor | None = None, fmt: str | None = None) -> RedactSecrets:
    """Send the ``mapper`` loggers to stderr (or ``stream``), and redact every log record of
    the process (any logger) with ``redactor`` (a new one holding ``secrets`` if not given).

    ``fmt`` is ``text`` or ``json`` (default ``$MAPPER_LOG_FORMAT``, else text); see
    :mod:`mapper.service.logformat`."""
    redacting = RedactSecrets(secrets, redactor)
    _ACTIVE.add(redacting.redactor)
    _install_factory()
    handler = LineHandler(stream or sys.stderr)
    handler.setFormatter(formatter_for(fmt if fmt is not None else os.environ.get("MAPPER_LOG_FORMAT", "text")))
    handler.addFilter(RequestContextFilter())
    handler.addFilter(redacting)
    logger = logging.getLogger("mapper")
    for old in list(logger.handlers):
        if getattr(old, "_mapper_handler", False):
            logger.removeHandler(old)
    handler._mapper_handler = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    # Our lines name no source file or line (nor do gunicorn's): skip walking the stack to find
    # them for every record, which costs more than formatting the line (see logging/__init__.py).
    logging._srcfile = None
    return redacting
