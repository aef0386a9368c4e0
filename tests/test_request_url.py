"""``request.url``: following a link the CRM gave (a next page), verbatim, on the CRM's host only."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator

import pytest
from flask import Flask, request

from mapper.core.compiler import compile_document
from mapper.core.engine import Engine
from mapper.core.source import load_source
from mapper.errors import ConfigError, MappingRuntimeError
from tests.support.live_server import LiveServer

MAPPING = """
name: links
settings: {base: {env: CRM_URL}}
connection: {base_url: "{{ settings.base }}/api/v1"}
model:
  customer: {fields: [{name: email, label: Email, type: text, searchable: true}]}
  case: {fields: []}
shapes:
  customer: {id: "{{ record.id }}", uri: "https://crm.example/{{ record.id }}", email: "{{ record.email }}"}
  case: {id: "1", linkUrl: "https://crm.example/c/1", created: "2024-01-01T00:00:00Z", status: open}
operations:
  search_customers:
    steps:
      - request: {method: GET, path: /people, query: {q: "{{ body.email }}"}}
        extract: {page1: {path: "$.records[*]", many: true}, next: {path: "$.next", default: null}}
      - when: "{{ next }}"
        request: {method: GET, url: "__NEXT__"}
        extract: {page2: {path: "$.records[*]", many: true}}
    result: "{{ page1 + (page2 if next else []) }}"
  best_match: {unsupported: "no"}
  get_customer: {unsupported: "no"}
  customer_cases: {unsupported: "no"}
  create_customer: {unsupported: "no"}
  update_customer: {unsupported: "no"}
  create_case: {unsupported: "no"}
  get_case: {unsupported: "no"}
  update_case: {unsupported: "no"}
"""


@pytest.fixture
def crm() -> Iterator[tuple[str, list[str]]]:
    app = Flask("links")
    seen: list[str] = []

    @app.get("/api/v1/people")
    def first() -> dict:
        seen.append(request.full_path)
        return {"records": [{"id": "1", "email": "a@x.io"}], "next": "/api/v1/people/page/2?cursor=a%2Fb"}

    @app.get("/api/v1/people/page/2")
    def second() -> dict:
        seen.append(request.full_path)
        return {"records": [{"id": "2", "email": "b@x.io"}]}

    server = LiveServer(app).start()
    yield server.url, seen
    server.stop()


def engine_for(tmp_path, next_expr: str, url: str) -> Engine:
    path = tmp_path / "links.yaml"
    path.write_text(textwrap.dedent(MAPPING.replace("__NEXT__", next_expr)))
    return Engine.load(str(path), {"CRM_URL": url})


def test_a_next_link_from_the_crm_is_followed_verbatim(tmp_path, crm) -> None:
    url, seen = crm
    status, found = engine_for(tmp_path, "{{ next }}", url).run("search_customers", {"email": "a@x.io"})
    assert status == 200
    assert [c["id"] for c in found] == ["1", "2"]
    assert seen[1] == "/api/v1/people/page/2?cursor=a%2Fb"


def test_a_link_to_another_host_is_refused(tmp_path, crm) -> None:
    url, seen = crm
    engine = engine_for(tmp_path, "https://elsewhere.example{{ next }}", url)
    with pytest.raises(MappingRuntimeError, match="not on the CRM's host"):
        engine.run("search_customers", {"email": "a@x.io"})
    assert len(seen) == 1


def test_a_request_needs_exactly_one_of_path_and_url() -> None:
    text = textwrap.dedent(MAPPING.replace("__NEXT__", "{{ next }}")).replace(
        'url: "{{ next }}"', 'url: "{{ next }}", path: /x')
    with pytest.raises(ConfigError, match="exactly one of 'path'"):
        compile_document(load_source("links.yaml", text))


@pytest.mark.parametrize(("link", "followed"), [
    ("https://crm.example/api/v1/people/page/2", True),
    ("HTTPS://CRM.example:443/api/v1/people/page/2", True),   # the same origin, spelled differently
    ("/api/v1/people/page/2", True),
    ("http://crm.example/api/v1/people/page/2", False),       # clear text: the credentials would be readable
    ("https://crm.example:8443/api/v1/people/page/2", False),  # another port is another server
    ("https://crm.example.evil.io/api/v1/people/page/2", False),
    ("https://user:pw@crm.example/api/v1/people/page/2", False),
    ("//crm.example/api/v1/people/page/2", False),
    ("ftp://crm.example/api/v1/people/page/2", False),
    ("https://crm.example:xyz/api/v1/people/page/2", False),
])
def test_a_link_must_have_the_base_urls_scheme_host_and_port(link: str, followed: bool) -> None:
    from mapper.core.pipeline import Where, _same_host_url

    where = Where("m.yaml", 1, "k")
    if followed:
        assert _same_host_url(link, "https://crm.example/api/v1", where).lower().endswith("/api/v1/people/page/2")
    else:
        with pytest.raises(MappingRuntimeError, match="scheme, host and port"):
            _same_host_url(link, "https://crm.example/api/v1", where)
