"""What ``mapper run`` prints: every step of one operation, as it ran.

:class:`TextTrace` is a :class:`~mapper.core.pipeline.Trace`: the engine tells
it of each step started or skipped, each rendered request and the CRM's
answer, each value a step set, and which strategy of a ``first`` settled.
It writes indented lines as they happen, so a run that hangs or fails still
shows how far it got.

Nothing secret is printed: every credential the engine holds (and any
OAuth token), in every encoding (:mod:`mapper.core.redaction`), is replaced
by ``***`` in every line, and so are headers whose name says they carry a
credential. Long bodies and values are cut to ``limit`` characters, after
redaction (a cut could leave the start of a secret behind).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from ..core.pipeline import FirstStep, ForEachStep, Step, Trace
from ..core.redaction import REDACTED
from ..core.redaction import Redactor as _Redactor
from ..core.upstream import Inbound, Outbound

# Headers whose value is a credential whatever the mapping calls its secrets.
SENSITIVE_HEADERS = ("authorization", "cookie", "set-cookie", "x-api-key", "api-key", "apikey", "token",
                     "x-auth-token", "proxy-authorization")


def is_sensitive_header(name: str) -> bool:
    lowered = name.lower()
    return lowered in SENSITIVE_HEADERS or "token" in lowered or "secret" in lowered or "key" in lowered


class Redactor(_Redactor):
    """The engine's redaction (every form of every secret), called as a function on text."""

    def __init__(self, secrets: Iterable[str] = (), sources: Iterable[Callable[[], Iterable[str]]] = ()) -> None:
        super().__init__(secrets, sources)

    def __call__(self, text: str) -> str:
        return self.redact(text)


def compact(value: Any, limit: int) -> str:
    """One line of JSON (or the text itself), cut to ``limit`` characters."""
    text = value.strip() if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    text = text.replace("\r", "").replace("\n", " ")
    if len(text) > limit:
        return f"{text[:limit]}... ({len(text)} characters)"
    return text


class TextTrace(Trace):
    """Prints a run step by step through ``echo`` (``click.echo`` in the command)."""

    def __init__(self, echo: Callable[[str], None], redact: Redactor, limit: int = 400) -> None:
        self.echo = echo
        self.redact = redact
        self.limit = limit
        self.depth = 0
        self.steps = 0
        self.exchanges = 0
        self._reported: set[int] = set()

    def line(self, text: str, extra: int = 0) -> None:
        self.echo("  " * (self.depth + extra) + self.redact(text))

    def _compact(self, value: Any) -> str:
        return compact(self.redact.redact_value(value), self.limit)  # redacted before it is cut

    def _label(self, step: Step) -> str:
        return f"step '{step.name}' ({step.where.place})"

    def started(self, step: Step) -> None:
        self.steps += 1
        self.line(f"- {self._label(step)}")
        if isinstance(step, (FirstStep, ForEachStep)):
            self.depth += 1

    def skipped(self, step: Step) -> None:
        self.line(f"- {self._label(step)} skipped: its 'when' is false")

    def exchange(self, step: Step, outbound: Outbound, answer: Inbound) -> None:
        self.exchanges += 1
        query = "&".join(f"{k}={v}" for k, v in outbound.params)
        self.line(f"> {outbound.method} {outbound.url}{'?' + query if query else ''}", 1)
        for name, value in outbound.headers.items():
            shown = REDACTED if is_sensitive_header(name) else value
            self.line(f"> {name}: {shown}", 1)
        if outbound.has_json_body:
            self.line(f"> body {self._compact(outbound.json_body)}", 1)
        elif outbound.form is not None:
            form = {k: REDACTED if is_sensitive_header(k) else v for k, v in outbound.form.items()}
            self.line(f"> form {self._compact(form)}", 1)
        self.line(f"< {answer.status} in {answer.seconds * 1000:.0f} ms: {self._compact(answer.text)}", 1)

    def branch(self, step: Step, name: str, taken: bool) -> None:
        if taken:
            self.line(f"strategy '{name}':")
        else:
            self.line(f"strategy '{name}' passed over: its 'when' is false")

    def settled(self, step: Step, branch: str | None) -> None:
        if branch is None:
            self.line(f"= '{step.name}' settled on no strategy: none ran or none satisfied 'until'")
        else:
            self.line(f"= '{step.name}' settled on strategy '{branch}'")

    def finished(self, step: Step, values: dict[str, Any]) -> None:
        if isinstance(step, (FirstStep, ForEachStep)):
            self.depth -= 1
        for name, value in values.items():
            self.line(f"  {name} = {self._compact(value)}")

    def failed(self, step: Step, error: Exception) -> None:
        if isinstance(step, (FirstStep, ForEachStep)):
            self.depth -= 1
        if id(error) in self._reported:
            return  # already shown at the step that raised it
        self._reported.add(id(error))
        message = getattr(error, "message", str(error))
        self.line(f"! {self._label(step)} failed: {message}")
