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
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.structures import CaseInsensitiveDict
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
                timeout: tuple[float, float], stream: bool = True,
                allow_redirects: bool = False) -> requests.Response:
        """What ``Session.request`` does for the engine's calls (same arguments), without its
        per-call lookups. The body is left unread when ``stream``; redirects are answers."""
        if allow_redirects:
            raise ValueError("the engine's CRM calls never follow redirects")
        merged = CaseInsensitiveDict(self.session.headers)  # requests' defaults (User-Agent...), then ours
        merged.update(headers or {})
        prepared = requests.PreparedRequest()
        prepared.prepare_method(method)
        prepared.prepare_url(url, params)
        prepared.prepare_headers({k: v for k, v in merged.items() if v is not None})
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
