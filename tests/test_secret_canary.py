"""The secret canary: no credential, in any encoding, in any answer to Khoros or any log line.

Every shipped mapping is served with distinctive secrets (and a distinctive
Khoros token) in front of a CRM that echoes back every credential it receives
(the Authorization header, the pair it decodes to, the bearer token, API-key
headers, OAuth form fields and the tokens it issued) in every error shape a
CRM uses: a JSON message, field errors (names and texts), a JSON array,
headers, an HTML page, plain text. All ten Khoros operations run against each
shape with every logger of the process (urllib3's debug lines included)
captured at DEBUG. No answer, header or log line may then contain a secret
as itself, percent-encoded, JSON-escaped, in base64 (alone or in the HTTP
Basic pair) or any ten characters of it in a row; and the echo must be seen
to arrive (``***``), or the test would prove nothing.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus

import pytest

from mapper.core.engine import Engine
from mapper.service.app import create_app
from tests.support.khoros import KhorosClient
from tests.support.live_server import LiveServer
from tests.support.recording_crm import RecordingCrm, Reply, Seen
from tests.targets.registry import ROOT

pytestmark = pytest.mark.vendor


def canary(name: str) -> str:
    # '+', '/' and '=' make the percent-encoded and base64 forms differ from the raw one.
    # The name is cut to three letters so that no ten characters of a canary form an ordinary word.
    return f"cnry-{name[:3]}+/={uuid.uuid4().hex[:12]}"


KHOROS_TOKEN = canary("khoros")
ACCESS_TOKEN = canary("access")      # issued by the OAuth endpoint at run time
NEW_REFRESH_TOKEN = canary("newrefresh")
SECRETS = {  # mapping -> (environment without the CRM URL variable, the secret values in it)
    "demo": ({"DEMO_CRM_API_KEY": canary("demokey")}, ["DEMO_CRM_API_KEY"]),
    "json-server": ({}, []),
    "bottlecrm": ({"BOTTLECRM_TOKEN": canary("bottle")}, ["BOTTLECRM_TOKEN"]),
    "zendesk": ({"ZENDESK_EMAIL": "agent@example.com", "ZENDESK_API_TOKEN": canary("zendesk")}, ["ZENDESK_API_TOKEN"]),
    "hubspot": ({"HUBSPOT_TOKEN": canary("hubspot")}, ["HUBSPOT_TOKEN"]),
    "salesforce": ({"SALESFORCE_CLIENT_ID": canary("sfid"), "SALESFORCE_CLIENT_SECRET": canary("sfsecret"),
                    "SALESFORCE_GRANT": "refresh_token", "SALESFORCE_REFRESH_TOKEN": canary("sfrefresh")},
                   ["SALESFORCE_CLIENT_ID", "SALESFORCE_CLIENT_SECRET", "SALESFORCE_REFRESH_TOKEN"]),
    "freshdesk": ({"FRESHDESK_API_KEY": canary("freshdesk")}, ["FRESHDESK_API_KEY"]),
    "servicenow": ({"SERVICENOW_USER": "khoros.bridge", "SERVICENOW_PASSWORD": canary("servicenow")},
                   ["SERVICENOW_PASSWORD"]),
    "dynamics": ({"DYNAMICS_TENANT_ID": "contoso", "DYNAMICS_CLIENT_ID": "dyn-client",
                  "DYNAMICS_CLIENT_SECRET": canary("dynamics")}, ["DYNAMICS_CLIENT_SECRET"]),
}
URL_VARIABLES = {"demo": ["DEMO_CRM_URL"], "json-server": ["JSON_SERVER_URL"], "bottlecrm": ["BOTTLECRM_URL"],
                 "zendesk": ["ZENDESK_URL"], "hubspot": ["HUBSPOT_URL"], "salesforce": ["SALESFORCE_LOGIN_URL"],
                 "freshdesk": ["FRESHDESK_URL"], "servicenow": ["SERVICENOW_URL"],
                 "dynamics": ["DYNAMICS_URL", "DYNAMICS_LOGIN_URL"]}
# Mappings whose messages and field errors quote the CRM's own text (the others use their own words).
FIELD_TEXTS_FROM_CRM = ("demo", "bottlecrm", "zendesk", "hubspot", "salesforce")
OAUTH = ("salesforce", "dynamics")  # the mappings that get ACCESS_TOKEN and NEW_REFRESH_TOKEN at run time
SHAPES = ["json", "fields", "array", "unauthorized", "forbidden", "not_found", "conflict", "unprocessable",
          "html", "text", "rate_limited"]


def credentials_in(seen: Seen) -> str:
    """Everything credential-like in a request, in the forms a careless CRM would echo."""
    parts = []
    for name, value in seen.headers.items():
        if name.lower() in ("authorization", "x-api-key", "cookie"):
            parts.append(value)
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "basic":
                parts.append(base64.b64decode(token).decode("utf-8", "replace"))
            parts.append(token)
    parts += [value for _, value in parse_qsl(seen.body.decode("utf-8", "replace"))]  # an OAuth form
    parts += [value for _, value in seen.query]
    return " | ".join(parts)


class EchoCrm(RecordingCrm):
    """Issues OAuth tokens on request; answers everything else with the current error shape."""

    def __init__(self) -> None:
        super().__init__(self.reply)
        self.shape = "json"
        self.url = ""

    def reply(self, seen: Seen) -> Reply:
        leak = f"credential {credentials_in(seen)} is not allowed"
        headers = {"WWW-Authenticate": f'Bearer error="invalid_token", detail="{leak}"', "X-Echo": leak,
                   "Set-Cookie": f"session={quote(leak)}"}
        if "/oauth2/" in seen.path and seen.path.endswith("/token"):
            return 200, {"access_token": ACCESS_TOKEN, "refresh_token": NEW_REFRESH_TOKEN,
                         "instance_url": self.url, "token_type": "Bearer"}, {}
        hubspot_problems = json.dumps([{"name": leak, "error": "INVALID_EMAIL", "message": leak}])
        everything = {"message": leak, "error": leak, "description": leak, "detail": leak, "category": leak,
                      "details": {"email": [{"description": leak, "error": leak}], leak: [{"description": leak}]},
                      "errors": {"email": [leak], leak: [leak]}, "fields": {"email": leak, leak: leak},
                      "status": "error"}
        shapes: dict[str, Reply] = {
            "json": (400, everything, headers),
            "fields": (400, {**everything, "message": f"Property values were not valid: {hubspot_problems}"},
                       headers),
            "array": (400, [{"message": leak, "errorCode": "INVALID_FIELD", "fields": [leak, "Email"]},
                            {"message": leak, "errorCode": "REQUIRED_FIELD_MISSING", "fields": ["LastName"]}],
                      headers),
            "unauthorized": (401, everything, headers),
            "forbidden": (403, everything, headers),
            "not_found": (404, everything, headers),
            "conflict": (409, everything, headers),
            "unprocessable": (422, everything, headers),
            "html": (500, f"<html><body><h1>Error</h1><p>{leak}</p></body></html>",
                     {**headers, "Content-Type": "text/html"}),
            "text": (503, leak, {**headers, "Content-Type": "text/plain"}),
            "rate_limited": (429, everything, {**headers, "Retry-After": "0"}),
        }
        return shapes[self.shape]


def forms(secret: str, users: list[str]) -> list[str]:
    """What must never be seen: encodings of the secret (also as either half of an HTTP Basic
    pair), and any ten characters of it in a row."""
    found = [secret, quote(secret, safe=""), quote_plus(secret), json.dumps(secret)[1:-1],
             base64.b64encode(secret.encode()).decode(), base64.urlsafe_b64encode(secret.encode()).decode()]
    found += [base64.b64encode(pair.encode()).decode() for user in users
              for pair in (f"{user}:{secret}", f"{secret}:{user}")]
    found += [secret[i:i + 10] for i in range(len(secret) - 9)]
    return found


@pytest.fixture(scope="module")
def captured() -> Iterator[io.StringIO]:
    """Every log record of the process, at DEBUG, whichever logger made it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    handler.setLevel(logging.DEBUG)
    root, urllib3, ours = logging.getLogger(), logging.getLogger("urllib3"), logging.getLogger("mapper")
    levels = (root.level, urllib3.level)
    root.addHandler(handler)
    ours.addHandler(handler)  # the mapper loggers do not propagate to the root
    root.setLevel(logging.DEBUG)
    urllib3.setLevel(logging.DEBUG)
    yield stream
    root.removeHandler(handler)
    ours.removeHandler(handler)
    root.setLevel(levels[0])
    urllib3.setLevel(levels[1])


def bodies(model: Any, customer: str) -> dict[str, Any]:
    names = {f.name for f in model["customer"].fields}
    person = {k: v for k, v in {"firstName": "Ann", "lastName": "Lee", "name": "Ann Lee",
                                "email": "ann@example.com"}.items() if k in names}
    interaction = {"created": "2024-03-01T10:00:00Z", "body": "It broke", "linkUrl": "https://x.com/a/status/1",
                   "serviceId": "1", "service": "twitter", "contentType": "post"}
    return {"person": person, "case": {"title": "It broke", "customerId": customer, "interactions": [interaction]}}


def run_every_operation(khoros: KhorosClient, model: Any, customer: str, case: str) -> list[str]:
    body = bodies(model, customer)
    answers = [
        khoros.meta("customer"), khoros.meta("case"),
        khoros.search({"email": "ann@example.com"}),
        khoros.best_match({"email": "ann@example.com", "displayName": "Ann Lee", "phoneNumbers": ["+1 555 0100"]}),
        khoros.get_customer(customer), khoros.customer_cases(customer),
        khoros.create_customer(body["person"]), khoros.update_customer(customer, {"email": "ann@example.com"}
                                                                        if "email" in body["person"] else
                                                                        {"lastName": "Lee"}),
        khoros.create_case(body["case"]), khoros.get_case(case), khoros.update_case(case, {"title": "Still broken"}),
    ]
    return [f"{a.status} {json.dumps(a.headers)} {json.dumps(a.body)}" for a in answers]


@pytest.mark.parametrize("mapping", list(SECRETS))
def test_no_secret_leaves_in_any_answer_or_log_line(mapping: str, captured: io.StringIO) -> None:
    crm = EchoCrm()
    server = LiveServer(crm.app()).start()
    crm.url = server.url
    env, secret_names = SECRETS[mapping]
    env = {**env, **{variable: server.url for variable in URL_VARIABLES[mapping]}}
    engine = Engine.load(f"{ROOT}/mappings/{mapping}.yaml", env)
    app = LiveServer(create_app(engine, tokens=[KHOROS_TOKEN])).start()
    mark = captured.tell()
    try:
        khoros = KhorosClient(app.url, KHOROS_TOKEN)
        customer, case = ("003000000000001AAA", "500000000000001AAA") if mapping == "salesforce" else ("123", "456")
        answers = []
        for shape in SHAPES:
            crm.shape = shape
            answers += run_every_operation(khoros, engine.mapping.models, customer, case)
    finally:
        app.stop()
        server.stop()
        engine.close()
    logs = captured.getvalue()[mark:]
    secrets = [env[name] for name in secret_names] + [KHOROS_TOKEN]
    if mapping in OAUTH:
        secrets += [ACCESS_TOKEN, NEW_REFRESH_TOKEN]
    users = [f"{env.get('ZENDESK_EMAIL')}/token", "khoros.bridge", "X"]
    text = "\n".join(answers)
    leaks = [(where, form) for secret in secrets for form in forms(secret, users)
             for where, haystack in (("answer", text), ("log", logs)) if form in haystack]
    assert leaks == []
    assert any(c.headers for c in crm.seen), "the CRM was never called"
    if secret_names:  # the echo must be seen to arrive, redacted, or the test proved nothing
        assert "***" in logs
    if mapping in FIELD_TEXTS_FROM_CRM:
        assert "***" in text, "no echoed credential reached an answer"
        assert any("***" in a.split('"fields": ', 1)[-1] for a in answers if '"fields": ' in a), \
            "no echoed credential reached a 'fields' entry"
