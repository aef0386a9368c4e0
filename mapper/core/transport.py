"""One rendered CRM request through ``requests``, without the per-call work a plain
``Session.request`` does that the engine never needs.

``Session.request`` is made for scripts: on *every* call it reads the process
environment for proxies and CA bundles (walking all of ``os.environ`` twice),
looks for ``~/.netrc``, merges session and request settings through generic
helpers, builds two cookie jars and dispatches hooks. Measured with
``benchmarks/throughput.py`` that costs more than sending the request itself.
The engine's calls are always the same kind (one CRM, no redirects, no
cookies: the session refuses them), so :class:`Transport` prepares the request
itself and hands it to the adapter mounted on the session (a recording
adapter too, for ``mapper test``).

The environment is still honoured, read once instead of per call: the CA
bundle (``REQUESTS_CA_BUNDLE``, else ``CURL_CA_BUNDLE``) when the transport is
built, and the proxies of a host (``HTTP_PROXY``, ``HTTPS_PROXY``,
``ALL_PROXY``, ``NO_PROXY``) at the first call to that host. Changing them
takes a restart, as for every other environment variable. ``~/.netrc`` is not
read: a CRM's credentials come from the mapping only.

The query parameters are encoded here too, as requests would (``urlencode``,
appended after any query the URL has): requests checks each parameter list
against runtime protocols first, which costs more than the encoding.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlencode, urlsplit

import requests
from requests.utils import get_environ_proxies


class Transport:
    """Sends prepared requests through a session's adapters, with the environment read once."""

    def __init__(self, session: requests.Session) -> None:
        self.session = session
        session.trust_env = False  # anyone using the session directly gets no per-call lookups either
        # Both names are honoured by requests; REQUESTS_CA_BUNDLE wins, as there.
        self.verify: str | bool = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        session.verify = self.verify
        self._proxies: dict[tuple[str, str], dict[str, str]] = {}
        # requests' default headers (User-Agent, Accept-Encoding...), read once by lower-case name.
        self._default_headers = {name.lower(): (name, value) for name, value in session.headers.items()}

    def proxies_for(self, url: str) -> dict[str, str]:
        """The proxies for ``url``: none when none is set or ``NO_PROXY`` covers its host."""
        parts = urlsplit(url)
        origin = (parts.scheme, parts.netloc)
        found = self._proxies.get(origin)
        if found is None:
            # Reads os.environ; one assignment, so two threads racing here store equal values.
            found = self._proxies[origin] = dict(get_environ_proxies(url))
        return found

    def request(self, method: str, url: str, *, params: list[tuple[str, str]] | None = None,
                headers: dict[str, str] | None = None, json: Any = None, data: dict[str, Any] | None = None,
                timeout: tuple[float, float] | tuple[float, None], stream: bool = True,
                allow_redirects: bool = False) -> requests.Response:
        """What ``Session.request`` does for the engine's calls (same arguments), without its
        per-call lookups. The body is left unread when ``stream``; redirects are answers."""
        if allow_redirects:
            raise ValueError("the engine's CRM calls never follow redirects")
        merged = dict(self._default_headers)  # requests' defaults, then ours: a name given twice is ours
        for name, value in (headers or {}).items():
            merged[name.lower()] = (name, value)
        prepared = requests.PreparedRequest()
        prepared.prepare_method(method)
        prepared.prepare_url(url, urlencode(params) if params else None)  # a text query is taken as is
        prepared.prepare_headers({name: value for name, value in merged.values() if value is not None})
        prepared.prepare_body(data, None, json)
        prepared.prepare_auth(None, url)  # user:password in the URL, as requests does
        target = prepared.url or url
        adapter = self.session.get_adapter(target)
        # A CA bundle only matters to https; for a bundle path the adapter asks the file
        # system whether it is a folder on every call.
        verify = self.verify if target[:6].lower() == "https:" else True
        response = adapter.send(prepared, stream=stream, timeout=timeout, verify=verify, cert=None,
                                proxies=self.proxies_for(url))
        if not stream:
            response.content  # noqa: B018  # read now, as requests does
        return response
