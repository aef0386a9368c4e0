"""HTTP calls to the CRM: one pooled session per mapping, each call on a budget.

This module knows HTTP and nothing about Khoros or mapping syntax. It sends
one request, reads the answer within the time the :class:`Deadline` allows
(the body is streamed so a CRM that drips bytes cannot hold us past the
deadline), waits out a ``429 Retry-After`` when the wait fits the budget, and
turns transport failures into :mod:`mapper.errors` classes whose messages say
which CRM call failed without showing secrets.
"""

from __future__ import annotations

import email.utils
import http.cookiejar
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict

from ..errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable
from . import context
from .budget import Deadline
from .transport import Transport

log = logging.getLogger("mapper.upstream")

# Below this many seconds left, a call is not worth starting.
MIN_CALL_SECONDS = 0.05
CHUNK = 64 * 1024


@dataclass
class Outbound:
    """One fully rendered request to the CRM."""

    method: str
    url: str
    params: list[tuple[str, str]] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    json_body: Any = None
    form: dict[str, Any] | None = None
    has_json_body: bool = False

    def describe(self) -> str:
        """``GET /api/contacts/`` — for messages and logs: no host, no query, no secrets."""
        return f"{self.method} {urlsplit(self.url).path}"

    def __repr__(self) -> str:  # headers, query, form and body may all carry credentials
        return f"Outbound({self.describe()})"


@dataclass
class Inbound:
    """The CRM's answer: status, headers, and the body as JSON (or text when not JSON)."""

    status: int
    headers: Mapping[str, str]  # case-insensitive, as HTTP header names are
    body: Any
    text: str
    seconds: float

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def __repr__(self) -> str:  # a CRM may echo our credentials in its answer
        return f"Inbound({self.status}, {len(self.text)} characters)"


class Signer:
    """Adds the CRM credentials to a request (see :mod:`mapper.auth`)."""

    def sign(self, outbound: Outbound, client: Client, deadline: Deadline) -> None:
        return None

    def refresh_on(self, answer: Inbound) -> bool:
        """True when this answer means 'credentials expired': refresh and retry once."""
        return False

    def refresh(self, client: Client, deadline: Deadline, failed: Outbound | None = None) -> None:
        """Get new credentials; ``failed`` is the request they were refused for."""
        return None


def _retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(moment.timestamp() - time.time(), 0.0)


class Client:
    """A pooled connection to one CRM, shared by every request the mapping serves."""

    def __init__(self, *, call_timeout: float, max_body_bytes: int, max_429_retries: int = 2,
                 default_429_wait: float | None = None,
                 signer: Signer | None = None, pool_size: int = 32,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.call_timeout = call_timeout
        self.max_body_bytes = max_body_bytes
        self.max_429_retries = max_429_retries
        self.default_429_wait = default_429_wait
        self.signer = signer or Signer()
        self._sleep = sleep
        self.session = requests.Session()
        # The session is shared by every Khoros request: a cookie one CRM answer sets must
        # not be sent with the next request, whoever it is for. No domain may set cookies.
        self.session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.transport = Transport(self.session)  # no per-call environment lookups (see transport.py)

    def close(self) -> None:
        self.session.close()

    def send(self, outbound: Outbound, deadline: Deadline, *, sign: bool = True) -> Inbound:
        """Send with credentials; refresh them once if the CRM says they expired;
        wait out 429s that fit the budget."""
        refreshed = False
        rate_limited = 0
        while True:
            attempt = Outbound(outbound.method, outbound.url, list(outbound.params), dict(outbound.headers),
                               outbound.json_body, outbound.form, outbound.has_json_body)
            if sign:
                self.signer.sign(attempt, self, deadline)
            answer = self.send_raw(attempt, deadline)
            if sign and not refreshed and self.signer.refresh_on(answer):
                refreshed = True
                log.info("credentials expired on %s; refreshing once", outbound.describe())
                context.retry("expired_credentials")
                self.signer.refresh(self, deadline, attempt)
                continue
            if answer.status == 429 and rate_limited < self.max_429_retries:
                wait = _retry_after_seconds(answer.headers.get("Retry-After"))
                if wait is None:
                    wait = self.default_429_wait  # some CRMs rate-limit without saying how long
                if wait is not None and wait + MIN_CALL_SECONDS < deadline.remaining():
                    rate_limited += 1
                    log.info("CRM rate-limited %s; waiting %.2fs as Retry-After asks", outbound.describe(), wait)
                    context.rate_limit_wait(wait)
                    self._sleep(wait)
                    continue
            return answer

    def send_raw(self, outbound: Outbound, deadline: Deadline) -> Inbound:
        """One HTTP exchange, bounded by the deadline, with no auth or retry logic."""
        allowed = deadline.allow(self.call_timeout)
        if allowed < MIN_CALL_SECONDS:
            raise UpstreamTimeout(
                f"The CRM call {outbound.describe()} was not started: the Khoros time limit "
                f"({deadline.seconds:g} s) was already spent by earlier CRM calls.")
        started = time.monotonic()
        kwargs: dict[str, Any] = {"params": outbound.params or None, "headers": outbound.headers,
                                  "timeout": (min(allowed, 3.0), allowed), "stream": True,
                                  "allow_redirects": False}
        if outbound.has_json_body:
            kwargs["json"] = outbound.json_body
        elif outbound.form is not None:
            kwargs["data"] = outbound.form
        try:
            response = self.transport.request(outbound.method, outbound.url, **kwargs)
            try:
                raw = self._read_body(response, outbound, deadline)
            finally:
                response.close()
        except requests.Timeout as exc:
            raise UpstreamTimeout(
                f"The CRM did not answer {outbound.describe()} within {allowed:.1f} s, so we stopped "
                f"waiting to answer Khoros in time. Check that the CRM is up and responsive.",
                internal=type(exc).__name__) from exc
        except requests.ConnectionError as exc:
            parts = urlsplit(outbound.url)  # host and port only: the netloc may carry user:password
            host = f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)
            raise UpstreamUnavailable(
                f"Could not connect to the CRM at {host} for {outbound.describe()}. Check that the CRM "
                f"is running and that the mapping's base URL is right.", internal=type(exc).__name__) from exc
        except requests.RequestException as exc:
            raise UpstreamError(f"The CRM call {outbound.describe()} failed: {type(exc).__name__}.") from exc
        seconds = time.monotonic() - started
        text = raw.decode(response.encoding or "utf-8", errors="replace")
        answer = Inbound(response.status_code, CaseInsensitiveDict(response.headers), _parse(text), text, seconds)
        log.debug("CRM %s -> %s in %.3fs", outbound.describe(), answer.status, seconds)
        return answer

    def _read_body(self, response: requests.Response, outbound: Outbound, deadline: Deadline) -> bytes:
        raw = response.raw
        if raw.chunked and raw.supports_chunked_reads():
            pieces: Iterator[bytes] = raw.read_chunked(CHUNK, decode_content=True)
        else:
            # read1 returns what one socket read brings; read(CHUNK) would wait for CHUNK bytes
            # (or the end), so a CRM dripping a Content-Length body would never meet the deadline check.
            pieces = iter(lambda: raw.read1(CHUNK, decode_content=True), b"")
        chunks: list[bytes] = []
        size = 0
        try:
            for chunk in pieces:
                size += len(chunk)
                if size > self.max_body_bytes:
                    raise UpstreamError(
                        f"The CRM answered {outbound.describe()} with more than {self.max_body_bytes} bytes; "
                        f"raise connection.max_response_bytes in the mapping if that is expected.")
                if deadline.expired():
                    raise requests.Timeout("body not complete before the deadline")
                chunks.append(chunk)
        except urllib3.exceptions.ReadTimeoutError as exc:  # a stall mid-body is a timeout, not a refusal
            raise requests.Timeout(str(exc)) from exc
        except urllib3.exceptions.HTTPError as exc:
            raise requests.ConnectionError(str(exc)) from exc
        return b"".join(chunks)


def _parse(text: str) -> Any:
    """JSON when the body is JSON; otherwise the text itself (HTML error pages, plain text)."""
    if not text.strip():
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text
