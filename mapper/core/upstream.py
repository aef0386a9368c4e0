"""HTTP calls to the CRM: one pooled session per mapping, each call on a budget.

This module knows HTTP and nothing about Khoros or mapping syntax. It sends
one request and reads the answer within the time the :class:`Deadline` allows
(a watchdog closes the connection when that time is up, whatever pace the CRM
keeps: see :mod:`mapper.core.watchdog`); waits out a ``429 Retry-After`` when
the wait and a useful call fit the budget; retries reads on transient
failures, by urllib3's ``Retry`` policy, while the budget allows; and turns
transport failures into :mod:`mapper.errors` classes whose messages say which
CRM call failed, and whether the request was sent, without showing secrets.
A write is never sent twice here: its step decides (:mod:`mapper.core.resume`),
from what the error says (``nothing_sent``) and what the mapping can look up.
"""

from __future__ import annotations

import codecs
import email.utils
import http.cookiejar
import json
import logging
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from requests.utils import get_encoding_from_headers
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError, ProtocolError, ReadTimeoutError
from urllib3.util.retry import Retry

from ..errors import MappingRuntimeError, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from . import context
from .budget import Deadline
from .transport import Transport
from .watchdog import POOL_CLASSES, Watch, watching

log = logging.getLogger("mapper.upstream")

# Below this many seconds left, a call is not worth starting.
MIN_CALL_SECONDS = 0.05
# A retry (after a 429's wait or a backoff) is sent only if this much time (or the whole
# connection.timeout, if shorter) is left for it: less would only turn the CRM's own
# answer into our timeout.
MIN_RETRY_SECONDS = 1.0
# Opening a connection gets at most this long (and never more than the call's time).
CONNECT_SECONDS = 3.0
CHUNK = 64 * 1024


# Read calls: retried on connection failures, timeouts, 502/503/504 and HTML error pages,
# twice at most, sooner or later by the budget (0 s, then 0.2 s, 0.4 s... up to 1 s apart).
READ_RETRY = Retry(total=2, connect=2, read=2, status=2, other=0, redirect=0, allowed_methods=None,
                   status_forcelist=(502, 503, 504), backoff_factor=0.1, backoff_max=1.0,
                   respect_retry_after_header=False, raise_on_status=False)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def is_safe(method: str, safe: bool | None = None) -> bool:
    """Whether a call may be sent again: what the mapping's ``safe:`` says, else whether
    its method only reads. The client retries these; any other call is a write."""
    return safe if safe is not None else method.upper() in SAFE_METHODS


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


def is_html_page(answer: Inbound) -> bool:
    """A proxy's or a server's HTML error page where the CRM's API answers JSON."""
    if not answer.text.strip() or isinstance(answer.body, (dict, list)):
        return False
    kind = str(answer.headers.get("Content-Type", "")).split(";")[0].strip().lower()
    return kind in ("text/html", "application/xhtml+xml") or (
        answer.text.lstrip()[:15].lower().startswith(("<!doctype", "<html")))


class Client:
    """A pooled connection to one CRM, shared by every request the mapping serves."""

    def __init__(self, *, call_timeout: float, max_body_bytes: int, max_429_retries: int = 2,
                 default_429_wait: float | None = None,
                 signer: Signer | None = None, pool_size: int = 32,
                 sleep: Callable[[float], None] = time.sleep,
                 read_retry: Retry = READ_RETRY) -> None:
        self.call_timeout = call_timeout
        self.max_body_bytes = max_body_bytes
        self.max_429_retries = max_429_retries
        self.default_429_wait = default_429_wait
        self.signer = signer or Signer()
        self.read_retry = read_retry
        self._sleep = sleep
        self.session = requests.Session()
        # The session is shared by every Khoros request: a cookie one CRM answer sets must
        # not be sent with the next request, whoever it is for. No domain may set cookies.
        self.session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
        adapter = WatchedAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.transport = Transport(self.session)  # no per-call environment lookups (see transport.py)

    def close(self) -> None:
        self.session.close()

    def send(self, outbound: Outbound, deadline: Deadline, *, sign: bool = True,
             safe: bool | None = None) -> Inbound:
        """Send with credentials; refresh them once if the CRM says they expired; wait out
        429s that fit the budget; retry what may be retried while the budget allows.

        ``safe``: the call may be sent again (a read); by default true for GET, HEAD and OPTIONS.
        A safe call is retried on connection failures, timeouts, 502/503/504 and HTML error
        pages; any other call is a write, sent once: the step that makes it decides on
        another send (:mod:`mapper.core.resume`)."""
        safe = is_safe(outbound.method, safe)
        retry = self.read_retry
        refreshed = False
        rate_limited = 0
        while True:
            attempt = Outbound(outbound.method, outbound.url, list(outbound.params), dict(outbound.headers),
                               outbound.json_body, outbound.form, outbound.has_json_body)
            if sign:
                self.signer.sign(attempt, self, deadline)
            try:
                answer = self.send_raw(attempt, deadline, safe=safe)
            except UpstreamError as exc:
                if not (safe and exc.retry_allowed(safe)):
                    raise
                next_retry = self._next_retry(retry, outbound, deadline, error=exc.transient)
                if next_retry is None:
                    raise
                retry = next_retry
                continue
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
                # Wait only when a useful call still fits after the wait; otherwise the 429 goes
                # straight to the mapping's rules (its rate-limit message beats a doomed retry).
                if wait is not None and wait + self.useful_call() <= deadline.remaining():
                    rate_limited += 1
                    log.info("CRM rate-limited %s; waiting %.2fs as Retry-After asks", outbound.describe(), wait)
                    context.rate_limit_wait(wait)
                    self._sleep(wait)
                    continue
            if safe and (answer.status in retry.status_forcelist
                         or (is_html_page(answer) and (answer.ok or answer.status >= 500))):
                next_retry = self._next_retry(retry, outbound, deadline, status=answer.status)
                if next_retry is not None:
                    retry = next_retry
                    continue
            return answer

    def useful_call(self) -> float:
        """The time a retry must still have (after its wait) to be worth sending."""
        return min(self.call_timeout, MIN_RETRY_SECONDS)

    def _next_retry(self, retry: Retry, outbound: Outbound, deadline: Deadline, *,
                    error: Exception | None = None, status: int | None = None) -> Retry | None:
        """The retry state after one more failure, having slept its backoff; None when the
        policy is spent or the backoff and a useful call no longer fit the budget."""
        try:
            retry = retry.increment(method=outbound.method, url=outbound.describe(), error=error)
        except Exception:  # MaxRetryError, or the policy re-raises what it will not retry
            return None
        wait = retry.get_backoff_time()
        if wait + self.useful_call() > deadline.remaining():
            return None
        what = f"HTTP {status}" if status is not None else type(error).__name__
        log.info("retrying %s after %s (waiting %.2fs)", outbound.describe(), what, wait)
        context.retry("transient")
        if wait:
            self._sleep(wait)
        return retry

    def send_raw(self, outbound: Outbound, deadline: Deadline, *, safe: bool | None = None) -> Inbound:
        """One HTTP exchange, bounded by the deadline, with no auth or retry logic.

        ``safe`` (as for :meth:`send`) only changes what an error says: a write that got
        no answer may have been applied, a read (or a search sent as POST) was not.

        The whole exchange (connect, headers, body) is watched: at the end of its time the
        socket is shut down (:mod:`mapper.core.watchdog`), whatever pace the CRM keeps."""
        allowed = deadline.allow(self.call_timeout)
        if allowed < MIN_CALL_SECONDS:
            raise UpstreamTimeout(
                f"The CRM call {outbound.describe()} was not started: the Khoros time limit "
                f"({deadline.seconds:g} s) was already spent by earlier CRM calls.")
        _check_header_values(outbound)
        started = time.monotonic()
        # Only the connect has a socket timeout: after it, the watch below bounds the exchange.
        kwargs: dict[str, Any] = {"params": outbound.params or None, "headers": outbound.headers,
                                  "timeout": (min(allowed, CONNECT_SECONDS), None), "stream": True,
                                  "allow_redirects": False}
        if outbound.has_json_body:
            kwargs["json"] = outbound.json_body
        elif outbound.form is not None:
            kwargs["data"] = outbound.form
        with watching(allowed) as watch:
            try:
                response = self.transport.request(outbound.method, outbound.url, **kwargs)
                try:
                    raw = self._read_body(response, outbound)
                finally:
                    response.close()
            except UpstreamError:
                raise
            except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
                raise _transport_error(exc, outbound, allowed, watch, is_safe(outbound.method, safe)) from exc
            if watch.fired:  # a body without a length ends when the socket closes: it may be cut
                raise _no_answer(outbound, allowed, _read_timeout(outbound, "deadline"), is_safe(outbound.method, safe))
        seconds = time.monotonic() - started
        text = raw.decode(_charset(response), errors="replace")
        headers = response.headers  # a CaseInsensitiveDict made for this answer alone (WatchedAdapter)
        if not isinstance(headers, CaseInsensitiveDict):
            headers = CaseInsensitiveDict(headers)
        answer = Inbound(response.status_code, headers, _parse(text), text, seconds)
        log.debug("CRM %s -> %s in %.3fs", outbound.describe(), answer.status, seconds)
        return answer

    def _read_body(self, response: requests.Response, outbound: Outbound) -> bytes:
        raw = response.raw
        encoding = str(response.headers.get("Content-Encoding", "")).strip().lower()
        decoder = _decoder(encoding, outbound)
        if raw.chunked and raw.supports_chunked_reads():
            pieces: Iterator[bytes] = raw.read_chunked(CHUNK, decode_content=False)
        else:
            # read1 returns what one socket read brings; read(CHUNK) would wait for CHUNK bytes
            # (or the end), so a CRM dripping a Content-Length body would never meet the deadline check.
            pieces = iter(lambda: raw.read1(CHUNK, decode_content=False), b"")
        chunks: list[bytes] = []
        size = 0
        try:
            for chunk in pieces:
                if decoder is not None:
                    # Decompressed a little at a time and counted as it grows: a small gzip
                    # answer can unpack to gigabytes.
                    chunk = decoder.decompress(chunk, self.max_body_bytes + 1 - size)
                    if decoder.unconsumed_tail:
                        size = self.max_body_bytes + 1
                size += len(chunk)
                if size > self.max_body_bytes:
                    raise UpstreamError(
                        f"The CRM answered {outbound.describe()} with more than {self.max_body_bytes} bytes; "
                        f"raise connection.max_response_bytes in the mapping if that is expected.")
                chunks.append(chunk)
        except zlib.error as exc:
            raise UpstreamError(f"The CRM's answer to {outbound.describe()} was not valid {encoding} data.",
                                internal=str(exc)) from exc
        return b"".join(chunks)


class WatchedAdapter(HTTPAdapter):
    """requests' adapter on connection pools whose calls the watchdog can cut."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = POOL_CLASSES

    def build_response(self, req: requests.PreparedRequest, resp: Any) -> requests.Response:
        """requests' own, less copying the answer's cookies into ``response.cookies`` (a
        cookie-jar parse of every answer): nothing reads them, and no cookie is ever sent
        back to a CRM (see :class:`Client`). A ``Set-Cookie`` stays in the headers."""
        response = requests.Response()
        response.status_code = resp.status
        response.headers = CaseInsensitiveDict(resp.headers)
        response.encoding = get_encoding_from_headers(response.headers)
        response.raw = resp
        response.reason = resp.reason
        response.url = req.url.decode("utf-8") if isinstance(req.url, bytes) else (req.url or "")
        response.request = req
        response.connection = self
        return response


def _decoder(encoding: str, outbound: Outbound) -> Any:
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompressobj()
    raise UpstreamError(f"The CRM answered {outbound.describe()} in the '{encoding[:20]}' encoding, which we "
                        "did not ask for (only gzip and deflate).")


def _charset(response: requests.Response) -> str:
    """The charset the answer names, else UTF-8: JSON's own default. (requests falls back
    to ISO-8859-1 for any text/* type, which turns a 'josé' labelled text/plain into 'josÃ©'.)"""
    content_type = str(response.headers.get("Content-Type", ""))
    for param in content_type.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.strip().lower() == "charset" and value.strip().strip('"'):
            name = value.strip().strip('"')
            try:
                codecs.lookup(name)
            except LookupError:
                return "utf-8"
            return name
    return "utf-8"


def _check_header_values(outbound: Outbound) -> None:
    for name, value in outbound.headers.items():
        try:
            str(value).encode("latin-1")
        except UnicodeEncodeError:
            raise MappingRuntimeError(
                f"The header '{name}' for {outbound.describe()} has characters HTTP headers cannot carry "
                "(only Latin-1); percent-encode the value in the mapping (urlencode).") from None


def _host(url: str) -> str:
    parts = urlsplit(url)  # host and port only: the netloc may carry user:password
    return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        item = todo.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        todo += [item.__cause__, item.__context__, getattr(item, "reason", None)]
        todo += [arg for arg in item.args if isinstance(arg, BaseException)]


def _transport_error(exc: BaseException, outbound: Outbound, allowed: float, watch: Watch,
                     safe: bool) -> UpstreamError:
    """Say what happened: never connected (nothing sent), or sent and then no (whole) answer.

    A watched connection claims its watch just before the request is written, so a watch
    without a connection means nothing was written: a TLS handshake that timed out is
    reported by urllib3 as a read timeout, but the request never left."""
    causes = list(_causes(exc))
    fired = watch.fired
    not_connected = (any(isinstance(c, (NewConnectionError, ConnectTimeoutError)) for c in causes)
                     or (watch.connection is None and _is_timeout(exc, causes)))
    if fired or isinstance(exc, requests.ReadTimeout) or any(isinstance(c, ReadTimeoutError) for c in causes):
        if not_connected:
            error: UpstreamError = UpstreamTimeout(
                f"Could not connect to the CRM at {_host(outbound.url)} within {allowed:.1f} s for "
                f"{outbound.describe()}; nothing was sent. Check that the CRM is up and reachable.",
                internal=type(exc).__name__)
            error.transient = ConnectTimeoutError(str(exc))
            error.nothing_sent = True
            return error
        return _no_answer(outbound, allowed, _read_timeout(outbound, str(exc)), safe)
    if isinstance(exc, requests.ConnectTimeout) or not_connected:
        refused = any(isinstance(c, ConnectionRefusedError) for c in causes)
        error = UpstreamUnavailable(
            f"Could not connect to the CRM at {_host(outbound.url)} for {outbound.describe()}"
            f"{' (connection refused)' if refused else ''}; nothing was sent. Check that the CRM is running "
            "and that the mapping's base URL is right.", internal=type(exc).__name__)
        error.transient = NewConnectionError(None, str(exc))  # type: ignore[arg-type]
        error.nothing_sent = True
        return error
    applied = "but as a read it changed nothing" if safe else "so it may have been applied"
    error = UpstreamUnavailable(
        f"The CRM dropped the connection during {outbound.describe()} before its answer was complete: "
        f"the request was sent, {applied}. Check the CRM's health and logs.",
        internal=type(exc).__name__)
    error.transient = ProtocolError(str(exc))
    return error


def _read_timeout(outbound: Outbound, text: str) -> ReadTimeoutError:
    """The cause urllib3's retry policy counts as a read failure (it needs no pool)."""
    return ReadTimeoutError(None, outbound.describe(), text)  # type: ignore[arg-type]


def _is_timeout(exc: BaseException, causes: list[BaseException]) -> bool:
    return isinstance(exc, requests.Timeout) or any(isinstance(c, (ReadTimeoutError, TimeoutError)) for c in causes)


def _no_answer(outbound: Outbound, allowed: float, cause: Exception, safe: bool) -> UpstreamTimeout:
    applied = "" if safe else " (it may have been applied)"
    error = UpstreamTimeout(
        f"The CRM was sent {outbound.describe()} but gave no complete answer within {allowed:.1f} s{applied}; "
        "we stopped waiting to answer Khoros in time. Check that the CRM is up and responsive.",
        internal=type(cause).__name__)
    error.transient = cause
    return error


def _parse(text: str) -> Any:
    """JSON when the body is JSON; otherwise the text itself (HTML error pages, plain text)."""
    if not text.strip():
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text
