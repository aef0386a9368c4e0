"""``find:`` and write retries (mapper/core/resume.py) against json-server through a failing proxy.

The documented ``find`` example (docs/mapping-language.md) is run as it is
written; the CRM's state and every request it received are checked.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from mapper.core.compiler import compile_document
from mapper.core.engine import Engine
from mapper.core.pipeline import RequestStep
from mapper.core.source import load_source
from mapper.errors import ConfigError, KhorosError
from tests.support.failing_proxy import FailingProxy
from tests.support.live_server import free_port
from tests.targets.registry import ROOT

pytestmark = pytest.mark.jsonserver

JSON_SERVER_YAML = Path(ROOT, "mappings", "json-server.yaml").read_text(encoding="utf-8")


def documented_find() -> list[dict[str, Any]]:
    doc = Path(ROOT, "docs", "mapping-language.md").read_text(encoding="utf-8")
    section = doc.split("#### `find`", 1)[1].split("#### `set`", 1)[0]
    steps: list[dict[str, Any]] = yaml.safe_load(section.split("```yaml\n", 1)[1].split("```", 1)[0])
    return steps


def mapping_with_case_steps(steps: list[dict[str, Any]]) -> str:
    """json-server.yaml with create_case replaced by ``steps``; the result is the case, with the
    fields the shape needs that the short example does not write."""
    data = yaml.safe_load(JSON_SERVER_YAML)
    result = "{{ case | merge({'createdAt': now, 'updatedAt': now, 'status': 'open'}) }}"
    data["operations"]["create_case"] = {"steps": steps, "result": result}
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


@pytest.fixture(scope="module")
def proxy(json_server) -> Iterator[FailingProxy]:
    running = FailingProxy(json_server.url).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def documented(proxy: FailingProxy, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    path = tmp_path_factory.mktemp("find") / "documented.yaml"
    path.write_text(mapping_with_case_steps(documented_find()), encoding="utf-8")
    engine = Engine.load(str(path), {"JSON_SERVER_URL": proxy.url})
    yield engine
    engine.close()


def new_customer(proxy: FailingProxy) -> str:
    answer = requests.post(proxy.url + "/customers", json={"lastName": f"Find{os.urandom(4).hex()}"}, timeout=5)
    return str(answer.json()["id"])


def case_body(customer_id: str) -> dict[str, Any]:
    tag = os.urandom(4).hex()
    return {"customerId": customer_id, "title": f"Find {tag}", "interactions": [
        {"created": "2017-08-01T14:09:01Z", "body": f"Post {n}", "linkUrl": f"https://x.example/{tag}{n}",
         "serviceId": f"{tag}{n}", "service": "twitter", "contentType": "post"} for n in (1, 2)]}


def stored(proxy: FailingProxy, case_title: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    cases = requests.get(proxy.url + "/cases", params={"title": case_title}, timeout=5).json()
    interactions = [i for case in cases for i in
                    requests.get(proxy.url + "/interactions", params={"caseId": case["id"]}, timeout=5).json()]
    return cases, interactions


def writes(proxy: FailingProxy, since: int) -> list[str]:
    return [line.split(" ", 1)[1] for line in proxy.seen[since:] if not line.startswith("GET ")]


def test_the_documented_find_writes_once_and_a_repeat_adds_only_what_is_missing(
        proxy: FailingProxy, documented: Engine) -> None:
    body = case_body(new_customer(proxy))
    mark = len(proxy.seen)
    status, first = documented.run("create_case", body)
    assert status == 201
    assert writes(proxy, mark) == ["/cases", "/interactions", "/interactions"]

    mark = len(proxy.seen)
    _, again = documented.run("create_case", body)
    assert again["id"] == first["id"]
    assert writes(proxy, mark) == []
    assert len(proxy.seen) - mark == 3  # the case, then each interaction, found

    cases, interactions = stored(proxy, body["title"])
    second = next(i for i in interactions if i["serviceId"] == body["interactions"][1]["serviceId"])
    requests.delete(f"{proxy.url}/interactions/{second['id']}", timeout=5)
    mark = len(proxy.seen)
    _, resumed = documented.run("create_case", body)
    assert resumed["id"] == first["id"]
    assert writes(proxy, mark) == ["/interactions"]
    cases, interactions = stored(proxy, body["title"])
    assert len(cases) == 1
    assert sorted(i["serviceId"] for i in interactions) == sorted(i["serviceId"] for i in body["interactions"])


def test_a_failed_write_that_did_not_land_is_sent_again(proxy: FailingProxy, documented: Engine) -> None:
    body = case_body(new_customer(proxy))
    proxy.fail("POST", "/cases", how="refuse")
    mark = len(proxy.seen)
    status, _ = documented.run("create_case", body)
    assert status == 201
    assert writes(proxy, mark).count("/cases") == 2
    assert len(stored(proxy, body["title"])[0]) == 1


def test_a_failed_write_that_landed_is_found_not_sent_again(proxy: FailingProxy, documented: Engine) -> None:
    body = case_body(new_customer(proxy))
    proxy.fail("POST", "/cases", how="lose")
    mark = len(proxy.seen)
    status, _ = documented.run("create_case", body)
    assert status == 201
    assert writes(proxy, mark).count("/cases") == 1
    assert len(stored(proxy, body["title"])[0]) == 1


def test_a_write_without_find_is_not_sent_again_after_a_5xx(proxy: FailingProxy) -> None:
    engine = Engine.load(os.path.join(ROOT, "mappings", "json-server.yaml"), {"JSON_SERVER_URL": proxy.url})
    try:
        proxy.fail("POST", "/customers", how="lose")
        mark = len(proxy.seen)
        with pytest.raises(KhorosError) as caught:
            engine.run("create_customer", {"lastName": "Once"})
        assert caught.value.code == "crm_error"
        assert writes(proxy, mark) == ["/customers"]
    finally:
        engine.close()


def test_a_write_whose_connection_was_refused_is_sent_again(caplog: pytest.LogCaptureFixture) -> None:
    engine = Engine.load(os.path.join(ROOT, "mappings", "json-server.yaml"),
                         {"JSON_SERVER_URL": f"http://127.0.0.1:{free_port()}"})
    try:
        with caplog.at_level(logging.INFO), pytest.raises(KhorosError) as caught:
            engine.run("create_customer", {"lastName": "Nobody home"})
    finally:
        engine.close()
    assert caught.value.code == "crm_unavailable"
    assert caplog.text.count("not sent: sending it again") == 2  # 3 sends in all
    # ...by the step alone: the HTTP client sends a write once (it would have made 6 sends).
    assert not [r for r in caplog.records if r.name == "mapper.upstream" and r.getMessage().startswith("retrying")]


def test_a_find_lookup_sent_as_post_is_a_read_and_a_safe_write_cannot_have_find() -> None:
    write = {"request": {"method": "POST", "path": "/cases", "body": {"title": "{{ body.title }}"}},
             "extract": {"case": "$"}}
    search = {"method": "POST", "path": "/cases/search", "body": {"title": "{{ body.title }}"}}
    find = {"request": search, "extract": {"case": {"path": "$[0]", "default": None}}, "found": "{{ case }}"}
    compiled = compile_document(load_source("find.yaml", mapping_with_case_steps([{**write, "find": find}])))
    step = compiled.operations["create_case"].steps[0]
    assert isinstance(step, RequestStep) and step.guarded and step.find is not None
    assert step.find.lookup is not None and step.find.lookup.safe and not step.find.lookup.guarded
    marked = {**write, "request": {**write["request"], "safe": True}, "find": find}
    assert problems([marked]) == [
        "operations.create_case.steps[0].find: 'find' belongs to a write (POST, PUT, PATCH, DELETE not marked "
        "safe): it says how to find what the write may already have written"]


def problems(steps: list[dict[str, Any]]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        compile_document(load_source("find.yaml", mapping_with_case_steps(steps)))
    return [f"{p.key}: {p.message}" for p in caught.value.problems]


def test_validate_refuses_a_find_that_cannot_stand_in_for_the_write() -> None:
    write = {"request": {"method": "POST", "path": "/cases", "body": {"title": "{{ body.title }}"}},
             "extract": {"case": "$"}}
    lookup = {"method": "GET", "path": "/cases"}
    assert problems([{**write, "find": {"request": lookup, "found": "{{ response | length > 0 }}"}}]) == [
        "operations.create_case.steps[0].find.extract: must also set 'case': when the lookup finds the record "
        "the write is skipped, and the steps after it read what the write's extract would have set"]
    assert problems([{"request": lookup, "extract": {"case": "$[0]"},
                      "find": {"request": lookup, "extract": {"case": "$[0]"}, "found": "{{ true }}"}}]) == [
        "operations.create_case.steps[0].find: 'find' belongs to a write (POST, PUT, PATCH, DELETE not marked "
        "safe): it says how to find what the write may already have written"]
    both = {"request": lookup, "steps": [{"set": {"case": "{{ none }}"}}], "found": "{{ true }}"}
    assert problems([{**write, "find": both}]) == [
        "operations.create_case.steps[0].find: give 'find' exactly one of 'request' (one lookup) or 'steps' "
        "(several)"]
    assert problems([{**write, "find": {"request": lookup, "extract": {"case": "$[0]"}, "found": "{{ kase }}"}}])[0] \
        .startswith("operations.create_case.steps[0].find.found: ")
