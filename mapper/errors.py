"""One error hierarchy for the whole engine.

Every failure the server can meet is one of these classes, and each class
knows how it leaves the server: its HTTP status (only statuses Khoros knows)
and its Khoros ``error`` code. The Flask layer serialises them and does no
thinking of its own.

    MapperError
    ├── ConfigError              a mapping file is wrong (load time); lists every problem
    └── KhorosError              a request failed; renders the Khoros error JSON
        ├── BadRequest           400 malformed JSON, unknown field, wrong shape
        ├── Unauthorized         401 missing or wrong Authorization value
        ├── NotFound             404 no such customer/case, unknown meta type
        ├── MethodNotAllowed     405 a method the path does not serve (HTTP layer only)
        ├── PayloadTooLarge      413 a body over the configured size limit (HTTP layer only)
        ├── ValidationFailed     422 field values Khoros sent fail the data model
        └── ServerError          500 anything unexpected
            ├── MappingRuntimeError   a mapping template or extraction failed on real data
            ├── Unsupported           the mapping declares the operation unsupported
            └── UpstreamError         the CRM failed or answered something we cannot use
                ├── UpstreamUnavailable   the CRM refused or dropped the connection
                ├── UpstreamTimeout       the CRM did not answer inside the Khoros budget
                └── MissingValue          a template read a key the data lacks (also a
                                          MappingRuntimeError: the path may be wrong too)

The two HTTP-layer classes are the only statuses outside Khoros's list: they
answer what no Khoros call sends (a method or a size Khoros never uses), and
HTTP gives them their own meaning that a 400 would blur.

Messages are sentences meant for a person: what failed and what to do. They
never contain secrets or template contexts; submitted values are not echoed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class MapperError(Exception):
    """Base of every error raised on purpose by crm-mapper."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a mapping file: ``file:line: key: message``."""

    file: str
    line: int
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.key or '(top)'}: {self.message}"


class ConfigError(MapperError):
    """Raised when a mapping cannot be loaded; carries every problem found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class KhorosError(MapperError):
    """Raised while serving a request; renders itself as Khoros error JSON."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, internal: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        # Detail for the log only (never sent to Khoros): upstream bodies, step names.
        self.internal = internal

    def to_json(self, trace_id: str) -> dict[str, Any]:
        return {"error": self.code, "message": f"{self.message} (trace {trace_id})"}

    def add_context(self, where: str) -> None:
        """Say where it happened, as the error passes up: ``... (step 'x' at file:line).``"""
        self.message = f"{self.message.rstrip('.')} ({where})."
        self.args = (self.message,)

    def headers(self) -> dict[str, str]:
        """HTTP headers this error's answer must carry besides the body (most need none)."""
        return {}


class BadRequest(KhorosError):
    """Raised when the request body is not JSON, not an object, or names unknown fields."""

    status = 400
    code = "bad_request"


class Unauthorized(KhorosError):
    """Raised when the Authorization header is missing or matches no configured token."""

    status = 401
    code = "unauthorized"


class NotFound(KhorosError):
    """Raised when a customer, case or meta type does not exist."""

    status = 404
    code = "not_found"


class MethodNotAllowed(KhorosError):
    """Raised when a path exists but not with this method (OPTIONS, PUT, DELETE...);
    the answer lists the methods it does take in ``Allow``, as HTTP requires."""

    status = 405
    code = "method_not_allowed"

    def __init__(self, message: str, allow: list[str], **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.allow = list(allow)

    def headers(self) -> dict[str, str]:
        return {"Allow": ", ".join(self.allow)}


class PayloadTooLarge(KhorosError):
    """Raised when a request body is longer than the server's size limit."""

    status = 413
    code = "payload_too_large"


@dataclass(frozen=True)
class FieldError:
    """One field problem, named with the Khoros field name from /meta."""

    name: str
    error_message: str

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "errorMessage": self.error_message}


class ValidationFailed(KhorosError):
    """Raised when field values fail the data model or the CRM's own validation."""

    status = 422
    code = "validation_failed"

    def __init__(self, message: str, fields: list[FieldError], **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.fields = list(fields)

    def to_json(self, trace_id: str) -> dict[str, Any]:
        body = super().to_json(trace_id)
        body["fields"] = [
            {"name": f.name, "errorMessage": f"{f.error_message} (trace {trace_id})"} for f in self.fields
        ]
        return body


class ServerError(KhorosError):
    """Raised for anything unexpected; always a 500 to Khoros."""


class Overloaded(ServerError):
    """Raised before any CRM call when a request waited so long for a free worker that
    what is left of the Khoros budget cannot cover the operation."""

    code = "overloaded"


class MappingRuntimeError(ServerError):
    """Raised when a mapping's template or extraction fails on real data."""

    code = "mapping_error"


class Unsupported(ServerError):
    """Raised when the mapping declares that this CRM cannot do the operation."""

    code = "not_supported"


class UpstreamError(ServerError):
    """Raised when the CRM answers with a failure or with something unusable."""

    code = "crm_error"
    # Set by the HTTP client on transport failures that another attempt might not meet:
    # the cause (as urllib3's retry policy classifies it), and whether the request
    # provably never left (the connection was refused or never opened), which makes
    # even a write safe to send again.
    transient: Exception | None = None
    nothing_sent: bool = False

    def retry_allowed(self, safe: bool) -> bool:
        """May this failure be retried, for a call that is (or is not) safe to repeat?"""
        return self.transient is not None and (safe or self.nothing_sent)


class UpstreamUnavailable(UpstreamError):
    """Raised when the CRM cannot be reached at all."""

    code = "crm_unavailable"


class UpstreamTimeout(UpstreamError):
    """Raised when the CRM does not answer within what is left of the Khoros budget."""

    code = "crm_timeout"


class MissingValue(UpstreamError, MappingRuntimeError):
    """Raised when a template reads a key (at any depth) that the data does not have: most
    often the CRM answered something other than what the mapping expects."""

    code = "crm_error"


# Khoros error codes a mapping may raise from an upstream answer, and the
# class each becomes. Anything not listed is a 500 with the mapping's own code.
ERROR_CLASSES: dict[str, type[KhorosError]] = {
    "bad_request": BadRequest,
    "not_found": NotFound,
    "validation_failed": ValidationFailed,
}


def error_for_code(code: str, message: str, fields: list[FieldError] | None = None,
                   internal: str | None = None) -> KhorosError:
    """Build the right error class for a Khoros ``error`` code named in a mapping."""
    cls = ERROR_CLASSES.get(code, UpstreamError)
    if cls is ValidationFailed:
        return ValidationFailed(message, fields or [], internal=internal)
    if cls is UpstreamError:
        return UpstreamError(message, code=code, internal=internal)
    return cls(message, internal=internal)
