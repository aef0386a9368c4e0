"""How a log line looks: text (default) or one JSON object per line (``MAPPER_LOG_FORMAT=json``).

Both carry the trace id of the request being served, read from
:mod:`mapper.core.context`, so lines written by the engine's core (which has
no request object) can be joined with the Khoros answer and the CRM's own
logs. Redaction is not done here: the redacting filter in
:mod:`mapper.service.logs` has already rewritten the message (and folded any
traceback into it) when a formatter sees the record.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from ..core import context

FORMATS = ("text", "json")
# Request summary fields a log call may pass in ``extra=`` (the request line does).
REQUEST_FIELDS = ("status", "duration_ms", "crm_calls", "method", "path")


class RequestContextFilter(logging.Filter):
    """Copy the current request's trace id, tenant and operation onto every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = context.current()
        if not hasattr(record, "trace_id"):
            record.trace_id = ctx.trace_id if ctx else "-"
        if not hasattr(record, "tenant"):
            record.tenant = ctx.tenant if ctx else "-"
        if not hasattr(record, "operation"):
            record.operation = ctx.operation if ctx else "-"
        return True


class TextFormatter(logging.Formatter):
    """Today's line, ``time LEVEL logger message``, with ``trace=<id>`` added to a line
    written during a request whose message does not already carry it."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")
        self._second: tuple[int, str] = (-1, "")  # the last second written, as text

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """What logging writes (``2026-12-03 07:18:13,856``, local time), with the date and
        time text made once per second rather than once per line."""
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second, text = self._second
        if int(record.created) != second:
            second = int(record.created)
            text = time.strftime(self.default_time_format, self.converter(record.created))
            self._second = (second, text)  # one assignment: threads read a matching pair
        return f"{text},{int(record.msecs):03d}"  # as logging.Formatter.default_msec_format

    def formatMessage(self, record: logging.LogRecord) -> str:
        trace = getattr(record, "trace_id", "-")
        if trace != "-" and "trace=" not in record.message:
            record.message = f"trace={trace} {record.message}"
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: timestamp, level, logger, trace_id, tenant, operation,
    the request summary fields when given, and the message."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:  # only when no secret is known (the redactor folds tracebacks otherwise)
            message = f"{message}\n{self.formatException(record.exc_info)}"
        line: dict[str, Any] = {
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "trace_id": getattr(record, "trace_id", "-"),
            "tenant": getattr(record, "tenant", "-"),
            "operation": getattr(record, "operation", "-"),
        }
        for name in REQUEST_FIELDS:
            if hasattr(record, name):
                line[name] = getattr(record, name)
        line["message"] = message
        return json.dumps(line, ensure_ascii=False, default=str)


def formatter_for(name: str) -> logging.Formatter:
    """``text`` or ``json``; anything else is refused at start-up, naming the variable."""
    from ..errors import ConfigError, Problem

    if name == "json":
        return JsonFormatter()
    if name in ("", "text"):
        return TextFormatter()
    raise ConfigError([Problem("environment", 0, "MAPPER_LOG_FORMAT",
                               f"unknown log format; use one of: {', '.join(FORMATS)}")])
