"""OAuth 2.0 options a mapping may take from its settings, and optional secrets.

One mapping serves both OAuth grants: ``connection.auth.grant`` may be a
template over settings, checked when the server starts, and a credential that
only one grant needs is a secret marked ``optional``. Tested with a tiny token
endpoint and CRM on loopback that record what they receive.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, jsonify, request

from mapper.core.compiler import compile_file
from mapper.core.engine import Engine
from mapper.errors import ConfigError
from tests.support.live_server import LiveServer

MAPPING = """\
    name: oauth-options
    settings:
      crm_url: {env: CRM_URL}
      grant: {env: CRM_GRANT, default: client_credentials}
    secrets:
      client_secret: {env: CRM_CLIENT_SECRET}
      refresh_token: {env: CRM_REFRESH_TOKEN, optional: true}
    connection:
      base_url: "{{ settings.crm_url }}"
      auth:
        type: oauth2
        token_url: "{{ settings.crm_url }}/token"
        grant: "{{ settings.grant }}"
        client_id: bridge
        client_secret: "{{ secrets.client_secret }}"
        refresh_token: "{{ secrets.refresh_token }}"
    model:
      customer: {fields: [{name: email, label: Email, type: text, searchable: true}]}
      case: {fields: [{name: title, label: Title, type: text}]}
    shapes:
      customer: {id: "{{ record.id }}", uri: "{{ settings.crm_url }}/people/{{ record.id }}"}
      case: {id: "{{ record.id }}", linkUrl: "x", created: "{{ record.created }}", status: open}
    operations:
      get_customer:
        steps:
          - request: {method: GET, path: "/people/{{ id }}"}
            extract: {person: "$"}
        result: "{{ person }}"
      search_customers: {unsupported: "no"}
      best_match: {unsupported: "no"}
      customer_cases: {unsupported: "no"}
      create_customer: {unsupported: "no"}
      update_customer: {unsupported: "no"}
      create_case: {unsupported: "no"}
      get_case: {unsupported: "no"}
      update_case: {unsupported: "no"}
"""


@pytest.fixture(scope="module")
def crm() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A token endpoint that records each form it gets, and one person behind it."""
    forms: list[dict[str, Any]] = []
    app = Flask("oauth-crm")

    @app.post("/token")
    def token() -> Any:
        forms.append(request.form.to_dict())
        return jsonify(access_token=f"token-{len(forms)}")

    @app.get("/people/<person>")
    def person(person: str) -> Any:
        return jsonify(id=person)

    server = LiveServer(app).start()
    yield server.url, forms
    server.stop()


@pytest.fixture()
def mapping(tmp_path: Path) -> str:
    path = tmp_path / "oauth-options.yaml"
    path.write_text(textwrap.dedent(MAPPING), encoding="utf-8")
    return str(path)


def test_the_mapping_with_a_templated_grant_and_an_optional_secret_is_valid(mapping: str) -> None:
    compiled = compile_file(mapping)
    assert [(s.name, s.has_default) for s in compiled.secrets] == [("client_secret", False),
                                                                 ("refresh_token", True)]


@pytest.mark.parametrize(("environ", "form"), [
    ({}, {"grant_type": "client_credentials", "client_id": "bridge", "client_secret": "s3"}),
    ({"CRM_GRANT": "refresh_token", "CRM_REFRESH_TOKEN": "r3"},
     {"grant_type": "refresh_token", "client_id": "bridge", "client_secret": "s3", "refresh_token": "r3"}),
])
def test_the_grant_comes_from_a_setting_and_an_absent_optional_secret_is_left_out(
        crm: tuple[str, list[dict[str, Any]]], mapping: str, environ: dict[str, str],
        form: dict[str, str]) -> None:
    url, forms = crm
    engine = Engine.load(mapping, {"CRM_URL": url, "CRM_CLIENT_SECRET": "s3", **environ})
    try:
        status, payload = engine.run("get_customer", None, id="p1")
    finally:
        engine.close()
    assert (status, payload["id"]) == (200, "p1")
    assert forms[-1] == form


@pytest.mark.parametrize(("environ", "key", "says"), [
    ({"CRM_GRANT": "password"}, "connection.auth.grant", "client_credentials, refresh_token"),
    ({"CRM_GRANT": "refresh_token"}, "connection.auth.refresh_token", "needs a refresh token"),
    ({"CRM_GRANT": "refresh_token", "CRM_REFRESH_TOKEN": ""}, "connection.auth.refresh_token",
     "needs a refresh token"),
])
def test_a_grant_the_engine_cannot_use_stops_the_server_at_start(mapping: str, environ: dict[str, str],
                                                                 key: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Engine.load(mapping, {"CRM_URL": "http://127.0.0.1:9", "CRM_CLIENT_SECRET": "s3", **environ})
    assert [p.key for p in caught.value.problems] == [key]
    assert says in caught.value.problems[0].message


def test_a_secret_not_marked_optional_is_still_required(mapping: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Engine.load(mapping, {"CRM_URL": "http://127.0.0.1:9"})
    assert [p.key for p in caught.value.problems] == ["secrets.client_secret"]
    assert "CRM_CLIENT_SECRET" in str(caught.value)


def test_optional_must_be_a_boolean(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(textwrap.dedent(MAPPING).replace("optional: true", "optional: sometimes"), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        compile_file(str(path))
    assert [p.key for p in caught.value.problems] == ["secrets.refresh_token.optional"]
