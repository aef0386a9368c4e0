"""Redaction: every form of every credential is replaced, in error texts and in reprs.

The end-to-end proof over every shipped mapping is tests/test_secret_canary.py;
these tests pin the forms one by one, the order of redaction and cutting, and
the reprs of the objects that hold credentials.
"""

from __future__ import annotations

import base64
import json
from urllib.parse import quote, quote_plus

import pytest

from mapper.core.budget import Deadline
from mapper.core.engine import Engine
from mapper.core.redaction import MAX_FIELD_MESSAGE, MAX_MESSAGE, REDACTED, Redactor, clean_error, clip
from mapper.core.upstream import Inbound, Outbound
from mapper.errors import FieldError, UpstreamError, ValidationFailed
from tests.targets.registry import ROOT

SECRET = "s3cr+t/tok=en-9f8e7d6c"


@pytest.mark.parametrize("form", [
    SECRET,
    quote(SECRET, safe=""),
    quote_plus(SECRET),
    json.dumps(SECRET)[1:-1],
    base64.b64encode(SECRET.encode()).decode(),
    base64.urlsafe_b64encode(SECRET.encode()).decode(),
])
def test_each_form_of_a_secret_is_redacted(form: str) -> None:
    text = f"the CRM said: {form} is not allowed"
    assert Redactor([SECRET]).redact(text) == f"the CRM said: {REDACTED} is not allowed"


@pytest.mark.parametrize("user", ["", "a", "ab", "agent@example.com/token", "agent@example.com/tokens"])
def test_a_secret_inside_http_basic_is_redacted_whatever_comes_before_it(user: str) -> None:
    blob = base64.b64encode(f"{user}:{SECRET}".encode()).decode()
    redacted = Redactor([SECRET]).redact(f"credential Basic {blob} rejected")
    assert REDACTED in redacted
    # At most the last few characters around the secret (which also encode the user name) remain.
    assert len(redacted.split(REDACTED)[1].split(" ")[0]) <= 3


def test_a_secret_inside_a_longer_secret_does_not_split_it() -> None:
    assert Redactor(["abcdef", "abcdef-123456"]).redact("key abcdef-123456 and abcdef") == "key *** and ***"


def test_short_values_and_none_are_not_secrets() -> None:
    redactor = Redactor(["ab", "", "12345"])
    assert redactor.secrets == []
    assert redactor.redact("ab 12345") == "ab 12345"


def test_a_watched_source_adds_tokens_learned_later() -> None:
    tokens: list[str] = []
    redactor = Redactor(sources=[lambda: tokens])
    assert redactor.redact("Bearer oauth-token-1") == "Bearer oauth-token-1"
    tokens.append("oauth-token-1")
    assert redactor.redact("Bearer oauth-token-1") == f"Bearer {REDACTED}"


def test_nested_values_are_redacted_keys_included() -> None:
    value = {"errors": [{SECRET: f"bad {SECRET}"}], "n": 3, "ok": True}
    assert Redactor([SECRET]).redact_value(value) == {"errors": [{REDACTED: f"bad {REDACTED}"}], "n": 3, "ok": True}


def test_an_error_is_redacted_before_it_is_cut() -> None:
    # The secret straddles the cut: cutting first would leave its start behind.
    message = "x" * (MAX_MESSAGE - 10) + SECRET + "y" * 50
    error = ValidationFailed(message, [FieldError(SECRET, "z" * (MAX_FIELD_MESSAGE - 5) + SECRET)],
                             internal=f"detail {SECRET}")
    clean_error(error, Redactor([SECRET]))
    assert SECRET[:8] not in error.message and len(error.message) <= MAX_MESSAGE
    assert error.fields[0].name == REDACTED
    assert SECRET[:8] not in error.fields[0].error_message and len(error.fields[0].error_message) <= MAX_FIELD_MESSAGE
    assert error.internal == f"detail {REDACTED}"
    body = json.dumps(error.to_json("t"))
    assert SECRET not in body and SECRET[:8] not in body


def test_clip_marks_what_it_cut() -> None:
    assert clip("abcdef", 4) == "abc…"
    assert clip("abc", 4) == "abc"


def test_a_long_crm_error_is_cut_to_a_sane_length() -> None:
    error = UpstreamError("boom " * 10_000)
    clean_error(error, Redactor())
    assert len(error.message) <= MAX_MESSAGE
    assert str(error) == error.message


# --- reprs ---------------------------------------------------------------------------------

def test_a_request_and_an_answer_show_no_credentials_in_their_repr() -> None:
    outbound = Outbound("POST", f"https://crm.example/token?key={SECRET}", params=[("key", SECRET)],
                        headers={"Authorization": f"Bearer {SECRET}"}, json_body={"secret": SECRET},
                        form={"client_secret": SECRET})
    answer = Inbound(401, {"Echo": SECRET}, {"error": SECRET}, f"bad {SECRET}", 0.1)
    assert repr(outbound) == "Outbound(POST /token)"
    assert SECRET not in repr(answer)


@pytest.mark.parametrize("mapping, env", [
    ("zendesk", {"ZENDESK_URL": "https://z.example", "ZENDESK_EMAIL": "a@example.com", "ZENDESK_API_TOKEN": SECRET}),
    ("hubspot", {"HUBSPOT_TOKEN": SECRET}),
    ("salesforce", {"SALESFORCE_LOGIN_URL": "https://s.example", "SALESFORCE_CLIENT_ID": "id-123456",
                    "SALESFORCE_CLIENT_SECRET": SECRET}),
    ("bottlecrm", {"BOTTLECRM_TOKEN": SECRET}),
    ("demo", {"DEMO_CRM_API_KEY": SECRET}),
])
def test_objects_holding_credentials_do_not_show_them(mapping: str, env: dict[str, str]) -> None:
    engine = Engine.load(f"{ROOT}/mappings/{mapping}.yaml", env)
    try:
        signer = engine.client.signer
        shown = [repr(engine), repr(signer), repr(engine.client), repr(engine.redactor)]
        outbound = Outbound("GET", "https://crm.example/x", form=dict(getattr(signer, "_form", {})))
        if mapping != "salesforce":  # signing or starting a run would fetch an OAuth token
            signer.sign(outbound, engine.client, Deadline(1))
            shown.append(repr(engine._new_run(Deadline(1), "trace")))
        shown.append(repr(outbound))
        assert all(SECRET not in text for text in shown)
        assert SECRET in engine.secret_values  # ... while the redactor knows it
    finally:
        engine.close()


def test_the_step_trace_shows_no_secret_in_any_form_even_where_it_cuts() -> None:
    from mapper.core.pipeline import RequestStep, Where
    from mapper.workbench.trace import Redactor as TraceRedactor
    from mapper.workbench.trace import TextTrace

    lines: list[str] = []
    trace = TextTrace(lines.append, TraceRedactor([SECRET]), limit=40)
    step = RequestStep("read", Where("m.yaml", 1, "k"), None)
    blob = base64.b64encode(f"agent/token:{SECRET}".encode()).decode()
    outbound = Outbound("GET", "https://crm.example/x", json_body={"note": "y" * 30 + SECRET}, has_json_body=True)
    answer = Inbound(401, {}, None, f"{'z' * 30}{SECRET} / Basic {blob}", 0.01)  # the cut falls inside the secret
    trace.exchange(step, outbound, answer)
    trace.finished(step, {"echo": f"{'w' * 35}{SECRET}"})
    text = "\n".join(lines)
    assert REDACTED in text
    assert SECRET[:6] not in text and blob[:20] not in text
