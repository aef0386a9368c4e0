"""Werkzeug's and the WSGI server's own errors, turned into Khoros errors.

Some requests fail before any of our code sees them: the path matches no
route, the method is not served, the body is larger than the limit, the
client hung up half way through its body. Werkzeug raises an
``HTTPException`` for these (and gunicorn an ``OSError`` while the body is
read); left alone, Flask would answer with an HTML page or fall into the
catch-all handler as a 500 with a traceback. Each becomes the one matching
:class:`~mapper.errors.KhorosError` instead, through the table below, so that
every answer from the server is Khoros's error JSON with a trace id.
"""

from __future__ import annotations

from collections.abc import Callable

from flask import current_app, request
from werkzeug import exceptions as wz
from werkzeug.routing import RequestRedirect

from ..core.limits import DEFAULT_LIMITS, ENVIRONMENT, Limits
from ..errors import BadRequest, KhorosError, MethodNotAllowed, NotFound, PayloadTooLarge, ServerError


def _no_route(exc: wz.HTTPException) -> KhorosError:
    return NotFound(f"There is no {request.method} {_path()} in the Khoros Custom CRM API.")


def _wrong_method(exc: wz.HTTPException) -> KhorosError:
    allow = sorted(getattr(exc, "valid_methods", None) or [])
    return MethodNotAllowed(f"{request.method} is not allowed on {_path()}; it takes {', '.join(allow)}.", allow)


def _too_large(exc: wz.HTTPException) -> KhorosError:
    return too_large(current_app.config.get("MAPPER_LIMITS", DEFAULT_LIMITS))


def too_large(limits: Limits) -> KhorosError:
    return PayloadTooLarge(f"The request body is larger than {limits.body_bytes} bytes, the limit set by "
                           f"{ENVIRONMENT['body_bytes']}.")


def _disconnected(exc: BaseException) -> KhorosError:
    return BadRequest("The request body ended before the length it announced: the client disconnected or "
                      "sent a broken body.")


def _bad_request(exc: wz.HTTPException) -> KhorosError:
    return BadRequest("The request could not be read as HTTP (a malformed header, body or URL).")


# Werkzeug's exception classes and the Khoros error each becomes; the first class in this
# order that the exception is an instance of wins (ClientDisconnected is a BadRequest).
TABLE: tuple[tuple[type[wz.HTTPException], Callable[[wz.HTTPException], KhorosError]], ...] = (
    (RequestRedirect, _no_route),          # a redirect the router would invent: no such path here
    (wz.NotFound, _no_route),
    (wz.MethodNotAllowed, _wrong_method),
    (wz.RequestEntityTooLarge, _too_large),
    (wz.ClientDisconnected, _disconnected),
)


def khoros_error_for(exc: wz.HTTPException) -> KhorosError:
    """The Khoros error for one of Werkzeug's: by the table, else by its status class
    (another 4xx is a 400, a 5xx a 500), so that no HTML page ever leaves."""
    for cls, make in TABLE:
        if isinstance(exc, cls):
            return make(exc)
    if exc.code is not None and exc.code < 500:
        return _bad_request(exc)
    return ServerError("The CRM bridge's web server failed to handle the request; the trace id is in its log.",
                       internal=f"{type(exc).__name__}: {exc.description}")


def _body_read_errors() -> tuple[type[Exception], ...]:
    """What a WSGI server's body reader raises when the client's body ends early or its
    chunked framing is broken: ``OSError`` (gunicorn's ``NoMoreData``), ``ValueError``, and
    gunicorn's parse errors (``InvalidChunkSize``, ``ChunkMissingTerminator``...)."""
    errors: tuple[type[Exception], ...] = (OSError, ValueError)
    try:
        from gunicorn.http.errors import ParseException
    except ImportError:  # pragma: no cover - gunicorn is a dependency, but not on every platform
        return errors
    return (*errors, ParseException)


BODY_READ_ERRORS = _body_read_errors()


def body_read_failed(exc: Exception) -> KhorosError:
    """The client's body could not be read (see :data:`BODY_READ_ERRORS`): its fault, a 400."""
    error = _disconnected(exc)
    error.internal = f"{type(exc).__name__}: {exc}"
    return error


def _path() -> str:
    """The path for a message: the sender's text, so cut short."""
    path = request.path
    return path if len(path) <= 200 else path[:200] + "..."
