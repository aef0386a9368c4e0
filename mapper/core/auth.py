"""How the engine proves itself to the CRM: one signer per mapping.

The kinds are a table (:data:`SIGNERS`) read by the compiler: ``none``,
``bearer``, ``basic``, ``header``, ``query`` and ``oauth2``. Static
credentials are rendered once at start-up from the mapping's secrets.
``oauth2`` fetches a token on first use, shares it across requests and
threads, and fetches a new one once when an answer says it expired (by
default HTTP 401); values from the token answer other than the token (such as
an instance URL) are exposed to templates as ``auth.<name>``.
"""

from __future__ import annotations

import base64
import copy
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from jsonpath_ng import JSONPath

from ..errors import ConfigError, KhorosError, Problem, UpstreamError, UpstreamTimeout
from . import context
from .budget import Deadline
from .templating import Compiled
from .upstream import Client, Inbound, Outbound, Signer

log = logging.getLogger("mapper.auth")


class NoAuth(Signer):
    """The CRM needs no credentials (or they are in the base URL's network)."""

    def __init__(self, values: dict[str, Any]) -> None:
        pass


class BearerAuth(Signer):
    def __init__(self, values: dict[str, Any]) -> None:
        self._header = f"Bearer {values['token']}"

    def sign(self, outbound: Outbound, client: Client, deadline: Deadline) -> None:
        outbound.headers["Authorization"] = self._header


class BasicAuth(Signer):
    def __init__(self, values: dict[str, Any]) -> None:
        pair = f"{values['username']}:{values['password']}".encode()
        self._header = "Basic " + base64.b64encode(pair).decode("ascii")

    def sign(self, outbound: Outbound, client: Client, deadline: Deadline) -> None:
        outbound.headers["Authorization"] = self._header


class HeaderAuth(Signer):
    def __init__(self, values: dict[str, Any]) -> None:
        self._name = values["name"]
        self._value = str(values["value"])

    def sign(self, outbound: Outbound, client: Client, deadline: Deadline) -> None:
        outbound.headers[self._name] = self._value


class QueryAuth(Signer):
    def __init__(self, values: dict[str, Any]) -> None:
        self._name = values["name"]
        self._value = str(values["value"])

    def sign(self, outbound: Outbound, client: Client, deadline: Deadline) -> None:
        outbound.params.append((self._name, self._value))


# After a failed token fetch, the next waits 1, 2, 4... seconds, up to this much.
MAX_BACKOFF = 30.0

# The OAuth 2.0 grants the oauth2 signer can use (connection.auth.grant).
GRANTS = ("client_credentials", "refresh_token")


class OAuth2(Signer):
    """OAuth 2.0 client-credentials or refresh-token grant with a shared, cached token."""

    def __init__(self, values: dict[str, Any], token_path: JSONPath, expires_path: JSONPath | None,
                 extra: dict[str, JSONPath], refresh_when: Compiled | None) -> None:
        grant = str(values.get("grant") or "client_credentials")
        if grant not in GRANTS:
            raise ConfigError([Problem("environment", 0, "connection.auth.grant",
                                       f"the OAuth grant is '{grant[:40]}'; it must be one of: {', '.join(GRANTS)} "
                                       "(check the setting the mapping reads for it)")])
        if grant == "refresh_token" and not values.get("refresh_token"):
            raise ConfigError([Problem("environment", 0, "connection.auth.refresh_token",
                                       "the refresh_token grant needs a refresh token; set the environment "
                                       "variable the mapping reads for it")])
        self._form = {"grant_type": grant,
                      "client_id": values.get("client_id"), "client_secret": values.get("client_secret")}
        if values.get("refresh_token"):
            self._form["refresh_token"] = values["refresh_token"]
        if values.get("scope"):
            self._form["scope"] = values["scope"]
        self._form = {k: v for k, v in self._form.items() if v}
        self._token_url = str(values["token_url"])
        self._token_path = token_path
        self._expires_path = expires_path
        self._extra = extra
        self._refresh_when = refresh_when
        self._lock = threading.Lock()
        self._failures = 0
        self._retry_at = 0.0
        self._failure: KhorosError | None = None
        self._token: str | None = None
        self._expires_at: float | None = None
        self.values: dict[str, Any] = {}
        self.issued: set[str] = set()  # every token the CRM issued, for redaction
        self.token_requests = 0

    def ensure(self, client: Client, deadline: Deadline) -> str:
        """A valid token (fetching one if none is cached or it has expired)."""
        with self._held(deadline):
            fresh = self._token is not None and (self._expires_at is None or time.time() < self._expires_at)
            if not fresh:
                self._fetch(client, deadline)
            assert self._token is not None  # _fetch raises rather than leave none
            return self._token

    def sign(self, outbound: Outbound, client: Client, deadline: Deadline) -> None:
        # The token is the one ensure() saw under the lock: reading self._token after the lock
        # is released could see None left by another request's failed refresh ("Bearer None").
        outbound.headers["Authorization"] = f"Bearer {self.ensure(client, deadline)}"

    def refresh_on(self, answer: Inbound) -> bool:
        if self._refresh_when is None:
            return answer.status == 401
        return bool(self._refresh_when.evaluate({"status": answer.status, "response": answer.body,
                                                 "headers": answer.headers}))

    def refresh(self, client: Client, deadline: Deadline, failed: Outbound | None = None) -> None:
        with self._held(deadline):
            # Many requests refused at once must not each fetch a token: if the token changed
            # since the refused request was signed, another request already refreshed it.
            if failed is not None and self._token is not None \
                    and failed.headers.get("Authorization") != f"Bearer {self._token}":
                return
            self._fetch(client, deadline)

    @contextmanager
    def _held(self, deadline: Deadline) -> Iterator[None]:
        """The token lock, waited for no longer than the request's budget allows: a slow token
        endpoint must not keep every other request past its deadline."""
        if not self._lock.acquire(timeout=max(deadline.remaining(), 0.0)):
            raise UpstreamTimeout("Another request was still fetching an OAuth token from the CRM when this "
                                  "request's time ran out. Check that the CRM's token endpoint is responsive.")
        try:
            yield
        finally:
            self._lock.release()

    def _fetch(self, client: Client, deadline: Deadline) -> None:
        """Fetch a token (the caller holds the lock). After a failure, the next fetch waits
        1, 2, 4... up to MAX_BACKOFF seconds: meanwhile every request gets the same error
        at once instead of each asking the token endpoint again, one after the other."""
        if self._failure is not None and time.monotonic() < self._retry_at:
            raise copy.copy(self._failure)
        try:
            self._fetch_now(client, deadline)
        except KhorosError as exc:
            self._token = None
            self._failures += 1
            self._retry_at = time.monotonic() + min(2.0 ** (self._failures - 1), MAX_BACKOFF)
            self._failure = exc
            raise
        self._failures = 0
        self._failure = None

    def _fetch_now(self, client: Client, deadline: Deadline) -> None:
        self.token_requests += 1
        answer = client.send_raw(Outbound("POST", self._token_url, form=dict(self._form),
                                          headers={"Accept": "application/json"}), deadline)
        if not answer.ok:
            context.token_refresh("failed")
            if answer.status == 429 or answer.status >= 500:
                raise UpstreamError(
                    f"The CRM's token endpoint is busy or failing (HTTP {answer.status}); no OAuth token "
                    "could be fetched. Try again shortly.", internal=answer.text)
            raise UpstreamError(
                f"The CRM's token endpoint refused our OAuth credentials (HTTP {answer.status}). "
                "Check the client id, secret or refresh token this mapping reads from the environment.",
                code="crm_auth_failed", internal=answer.text)  # cut after redaction, by the engine
        matches = self._token_path.find(answer.body)
        if not matches or not matches[0].value:
            raise UpstreamError("The CRM's token endpoint answered without an access token.",
                                code="crm_auth_failed")
        self._token = str(matches[0].value)
        self.issued |= {str(v) for k, v in (answer.body if isinstance(answer.body, dict) else {}).items()
                        if k in ("access_token", "refresh_token", "id_token") and v} | {self._token}
        self._expires_at = None
        if self._expires_path is not None:
            found = self._expires_path.find(answer.body)
            if found and isinstance(found[0].value, (int, float)):
                # Renew a little early so a token never expires mid-request.
                self._expires_at = time.time() + max(float(found[0].value) - 30.0, 0.0)
        self.values = {name: (path.find(answer.body)[0].value if path.find(answer.body) else None)
                       for name, path in self._extra.items()}
        context.token_refresh("ok")
        log.info("fetched an OAuth token (request #%d)", self.token_requests)


SIGNERS: dict[str, tuple[type[Signer], tuple[str, ...]]] = {
    "none": (NoAuth, ()),
    "bearer": (BearerAuth, ("token",)),
    "basic": (BasicAuth, ("username", "password")),
    "header": (HeaderAuth, ("name", "value")),
    "query": (QueryAuth, ("name", "value")),
    "oauth2": (OAuth2, ("token_url", "client_id")),
}
