"""Every form a credential can take in text, and the one place that removes them.

A CRM may echo a credential back in an error (``Bearer tok_... is not
allowed``, ``credential Basic YWdl... rejected``), a library may log a URL
with a key in its query string, a traceback may quote a header. So a secret
is looked for not only as itself but in every encoding it travels in:

* the raw value (also what follows ``Bearer``, or sits in a header or query);
* percent-encoded (a query string or form body), JSON-escaped and HTML-escaped;
* base64, wherever it sits in the encoded text: HTTP Basic sends
  ``base64(user:secret)``, and the part of that text which depends only on the
  secret is found whatever comes before it (three alignments, standard and
  URL-safe alphabets).

:class:`Redactor` holds the secrets (those known at start-up plus those
learned at run time, such as OAuth tokens, through *sources* it polls) and
replaces each form with ``***``. :func:`clean_error` applies it to an error
about to leave the engine and cuts its texts to a sane length, so no CRM can
flood an agent's screen either. The service's log filter uses the same
redactor for every log line.
"""

from __future__ import annotations

import base64
import html
import json
import re
import threading
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import quote, quote_plus

from ..errors import FieldError, KhorosError, ValidationFailed

REDACTED = "***"
# Very short values would redact ordinary words; credentials are never that short.
MIN_SECRET_LENGTH = 6
# A base64 run shorter than this is too likely to occur by chance.
MIN_BASE64_LENGTH = 6

# Lengths of the texts an error may carry to Khoros (and to the log).
MAX_MESSAGE = 1000
MAX_FIELD_NAME = 100
MAX_FIELD_MESSAGE = 300
MAX_FIELDS = 50
MAX_INTERNAL = 2000

Source = Callable[[], Iterable[str]]


def _base64_runs(secret: bytes) -> set[str]:
    """The base64 text that depends only on ``secret``, at each of the three alignments
    it can have inside a longer encoded value (``user:secret`` in HTTP Basic)."""
    runs = set()
    for pad in range(3):
        encoded = base64.b64encode(b"\0" * pad + secret).decode("ascii")
        total = pad + len(secret)
        # The first characters mix in the bytes before the secret, the last ones those after it.
        start = (0, 2, 3)[pad]
        end = 4 * (total // 3) + (0, 1, 2)[total % 3]
        run = encoded[start:end]
        if len(run) >= MIN_BASE64_LENGTH:
            runs.add(run)
            runs.add(run.replace("+", "-").replace("/", "_"))
    return runs


def forms_of(secret: str) -> set[str]:
    """Every text form of ``secret`` the redactor looks for."""
    forms = {secret, quote(secret, safe=""), quote(secret, safe="/"), quote_plus(secret),
             quote(quote(secret, safe=""), safe=""),
             json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1], html.escape(secret)}
    raw = secret.encode("utf-8")
    forms |= {base64.b64encode(raw).decode("ascii"), base64.urlsafe_b64encode(raw).decode("ascii")}
    forms |= _base64_runs(raw)
    return {f for f in forms if len(f) >= MIN_SECRET_LENGTH}


class Redactor:
    """Replaces every form of every known secret with ``***``; thread-safe."""

    def __init__(self, secrets: Iterable[str] = (), sources: Iterable[Source] = ()) -> None:
        self._secrets: set[str] = set()
        self._sources = list(sources)
        self._pattern: re.Pattern[str] | None = None
        self._lock = threading.Lock()
        self.add(secrets)

    @property
    def secrets(self) -> list[str]:
        """The secret values known so far (not their other forms), longest first."""
        return sorted(self._secrets, key=len, reverse=True)

    def watch(self, source: Source) -> None:
        """Also redact what ``source()`` returns, asked again before each use (tokens renewed at run time)."""
        self._sources.append(source)
        self.add(source())

    def add(self, secrets: Iterable[str]) -> None:
        new = {str(s) for s in secrets if s and len(str(s)) >= MIN_SECRET_LENGTH} - self._secrets
        if not new:
            return
        with self._lock:
            self._secrets |= new
            forms = {form for secret in self._secrets for form in forms_of(secret)}
            # Longest first: a secret that contains another is replaced whole.
            self._pattern = re.compile("|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True)))

    @property
    def pattern(self) -> re.Pattern[str] | None:
        """What :meth:`redact` replaces now; a new object whenever a secret is learned."""
        return self._pattern

    def refresh(self) -> None:
        for source in self._sources:
            self.add(source())

    def redact(self, text: str) -> str:
        """``text`` with every form of every secret replaced."""
        self.refresh()
        pattern = self._pattern
        if pattern is None or not text:
            return text
        return pattern.sub(REDACTED, text)

    def redact_value(self, value: Any) -> Any:
        """A copy of a JSON-like value with every string (keys included) redacted."""
        self.refresh()
        return self._walk(value)

    def _walk(self, value: Any) -> Any:
        pattern = self._pattern
        if pattern is None:
            return value
        if isinstance(value, str):
            return pattern.sub(REDACTED, value)
        if isinstance(value, dict):
            return {self._walk(k) if isinstance(k, str) else k: self._walk(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self._walk(v) for v in value]
        return value


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, marked with an ellipsis when cut."""
    return text if len(text) <= limit else text[:limit - 1] + "…"


def clean_error(exc: KhorosError, redactor: Redactor) -> KhorosError:
    """Redact and shorten, in place, every text of an error that is about to leave the engine.

    Redaction comes first: cutting first could leave the start of a secret behind."""
    exc.message = clip(redactor.redact(exc.message), MAX_MESSAGE)
    exc.args = (exc.message,)
    if exc.internal:
        exc.internal = clip(redactor.redact(exc.internal), MAX_INTERNAL)
    if isinstance(exc, ValidationFailed):
        exc.fields = [FieldError(clip(redactor.redact(f.name), MAX_FIELD_NAME),
                                 clip(redactor.redact(f.error_message), MAX_FIELD_MESSAGE))
                      for f in exc.fields[:MAX_FIELDS]]
    return exc
