"""The examples of docs/mapping-language.md for writing less (``define``, ``identity``,
``dig`` and the identity filters, recipe 8.2) are run, not just read: each block is
spliced into the demo mapping and run against the demo CRM, or evaluated as shown."""

from __future__ import annotations

import ast
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from mapper.core.compiler import compile_document
from mapper.core.engine import Engine
from mapper.core.identity import IdentityRules
from mapper.core.source import load_source
from mapper.core.templating import compile_value, make_environment
from mapper.errors import ConfigError, KhorosError

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "mapping-language.md").read_text(encoding="utf-8")
DEMO = (ROOT / "mappings" / "demo.yaml").read_text(encoding="utf-8")


def section(title: str) -> str:
    return DOC.split(title, 1)[1].split("\n### ", 1)[0]


def yaml_blocks(text: str) -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", text, re.S)


def replace_operations(mapping: str, block: str) -> str:
    """The demo mapping with the operations (and top-level keys) of ``block`` put in."""
    example = yaml.safe_load(block)
    data = yaml.safe_load(mapping)
    for key, value in example.items():
        if key == "operations":
            data["operations"].update(value)
        elif key == "define":
            data["define"] = {**data.get("define", {}), **value}
        else:
            data[key] = value
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


@pytest.fixture(scope="module")
def demo_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from democrm.launcher import start_demo_crm

    url, stop = start_demo_crm(os.path.join(tmp_path_factory.mktemp("democrm"), "docs.sqlite3"))
    yield url
    stop()


def engine_for(text: str, url: str, tmp_path: Path) -> Engine:
    path = tmp_path / "example.yaml"
    path.write_text(text, encoding="utf-8")
    return Engine.load(str(path), {"DEMO_CRM_URL": url})


def test_the_define_example_runs_against_the_demo_crm(demo_url: str, tmp_path: Path) -> None:
    block = yaml_blocks(section("### `define` and `$use`"))[0]
    engine = engine_for(replace_operations(DEMO, block.replace("in the CRM", "in the demo CRM")), demo_url, tmp_path)
    _, customer = engine.run("create_customer", {"lastName": "Defined"})
    post = {"created": "2017-08-01T14:09:01Z", "body": "hi", "linkUrl": "https://t.example/1", "serviceId": "71",
            "service": "twitter", "contentType": "post"}
    status, case = engine.run("create_case", {"customerId": customer["id"], "title": "Defined", "interactions": [post]})
    assert status == 201
    status, read = engine.run("get_case", {}, id=case["id"])
    assert status == 200 and [i["serviceId"] for i in read["interactions"]] == ["71"]
    status, updated = engine.run("update_case", {"status": "closed"}, id=case["id"])
    assert status == 200 and updated["status"] == "closed" and len(updated["interactions"]) == 1
    with pytest.raises(KhorosError) as caught:
        engine.run("get_case", {}, id="987654")
    assert caught.value.status == 404 and caught.value.message == "No case 987654 in the demo CRM"


def test_the_documented_validate_messages_are_the_ones_validate_prints() -> None:
    messages = re.findall(r"^m\.yaml:\d+: (.+)$", section("### `define` and `$use`"), re.M)
    for name in ("use-unknown-definition", "definition-never-used"):
        text = (ROOT / "tests" / "mappings" / "bad" / f"{name}.yaml").read_text(encoding="utf-8")
        with pytest.raises(ConfigError) as caught:
            compile_document(load_source("m.yaml", text))
        printed = [f"{p.key}: {p.message}" for p in caught.value.problems]
        assert any(m in printed for m in messages), printed


def test_the_identity_example_compiles_into_its_rules() -> None:
    block = yaml_blocks(section("### `identity`"))[0]
    text = replace_operations(DEMO, block)
    compile_document(load_source("identity.yaml", text))
    example = yaml.safe_load(block)["identity"]
    found = compile_value("{{ found | rank_matches(body) }}", "docs", env=make_environment(identity=IdentityRules(
        region=example["region"], email=(example["email"],), phone=tuple(example["phone"]),
        handle=(example["handle"],), name=tuple(example["name"])))).evaluate({
            "found": [{"id": "1", "properties": {"mobilephone": "+15551469907"}},
                      {"id": "2", "properties": {"firstname": "Zoë", "lastname": "Doe"}}],
            "body": {"phoneNumbers": ["(555) 146-9907"], "displayName": "zoe  DOE"}})
    assert [record["id"] for record in found] == ["1", "2"]


@pytest.mark.parametrize("typed", ["(555) 146-9907", "555-146-9907", "+1 555 146 9907"])
def test_recipe_8_2_finds_a_number_stored_in_e164_however_it_is_typed(demo_url: str, tmp_path: Path,
                                                                     typed: str) -> None:
    block = yaml_blocks(section("### 8.2 "))[0].replace("/contacts", "/customers").replace('"$[*]"', '"$.items[*]"')
    engine = engine_for(replace_operations(DEMO, block), demo_url, tmp_path)
    _, stored = engine.run("create_customer", {"lastName": "Recipe", "phone": "+15551469907",
                                               "email": f"r{abs(hash(typed))}@example.com"})
    _, other = engine.run("create_customer", {"lastName": "Recipe", "phone": "+15551469908"})
    status, found = engine.run("best_match", {"phoneNumbers": [typed]})
    assert status == 200
    ids = [c["id"] for c in found]
    assert stored["id"] in ids and other["id"] not in ids and len(ids) == len(set(ids))
    status, by_email = engine.run("best_match", {"email": stored["email"], "phoneNumbers": [typed]})
    assert by_email[0]["id"] == stored["id"]  # found by email and by phone: once, first


def filter_examples() -> list[tuple[str, str]]:
    rows = [line for line in section("### 4.3 Filters").splitlines()
            if re.match(r"\| `(dig\(|e164|phone_forms|phone_key)", line)]
    assert len(rows) == 4
    pairs = []
    for row in rows:
        for template, expected in re.findall(r"`([^`]+)` → `([^`]+)`", row):
            pairs.append((template.replace("\\|", "|"), expected))
    return pairs


@pytest.mark.parametrize(("template", "expected"), filter_examples())
def test_the_filter_examples_give_what_the_table_says(template: str, expected: str) -> None:
    env = make_environment(identity=IdentityRules(region="US"))
    value = compile_value("{{ " + template + " }}", "docs", env=env).evaluate({})
    assert value == (None if expected == "none" else ast.literal_eval(expected))
