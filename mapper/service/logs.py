"""Logging set-up: one line per event, trace ids in every line, secrets redacted.

Secrets come from the environment and must never reach a log, even through
an upstream error body that happens to echo a token. The redacting filter is
installed on the handler, so it also covers log calls from libraries.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable

REDACTED = "***"


class RedactSecrets(logging.Filter):
    """Replace every known secret value in a record's final message."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets: list[str] = []
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        # Called after every request (an OAuth token may have been renewed): cheap when nothing is new.
        # Very short values would redact ordinary words; secrets are never that short.
        new = {s for s in secrets if len(s) >= 6} - set(self.secrets)
        if new:
            self.secrets = sorted({*self.secrets, *new}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = message
        for secret in self.secrets:
            redacted = redacted.replace(secret, REDACTED)
        if redacted != message or record.exc_info:
            if record.exc_info:
                text = logging.Formatter().formatException(record.exc_info)
                for secret in self.secrets:
                    text = text.replace(secret, REDACTED)
                redacted = f"{redacted}\n{text}"
                record.exc_info = None
                record.exc_text = None
            record.msg, record.args = redacted, None
        return True


def configure(level: str = "INFO", secrets: Iterable[str] = (), stream=None) -> RedactSecrets:
    """Send the ``mapper`` loggers to stderr (or ``stream``) through the redactor."""
    redactor = RedactSecrets(secrets)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    handler.addFilter(redactor)
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
    return redactor
