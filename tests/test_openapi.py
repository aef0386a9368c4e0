"""``GET /openapi.json``: generated for every shipped mapping, valid OpenAPI 3.1, true to the data model.

The document is checked with openapi-spec-validator (pinned in constraints.txt);
its fields, types and list values are compared with each mapping's model; and
the running demo server serves it behind the Khoros secret. The fuzzing of
the server against it is in tests/test_fuzz_openapi.py.
"""

from __future__ import annotations

import glob
import os
from typing import Any

import pytest
import requests
from openapi_spec_validator import validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

from mapper.core.compiler import compile_document
from mapper.core.khoros import OPERATIONS
from mapper.core.limits import Limits
from mapper.core.source import load_source
from mapper.service.app import create_app
from mapper.service.openapi import document
from tests.support.live_server import serve
from tests.targets.registry import ROOT

SHIPPED = sorted(glob.glob(os.path.join(ROOT, "mappings", "*.yaml")))
TOKEN = "openapi-test-token-0123456789"


def _document(path: str, limits: Limits | None = None) -> tuple[Any, dict[str, Any]]:
    mapping = compile_document(load_source(path))
    return mapping, document(mapping, limits or Limits())


def _resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


@pytest.mark.parametrize("path", SHIPPED, ids=os.path.basename)
def test_the_document_validates_for_every_shipped_mapping(path: str) -> None:
    _, doc = _document(path)
    validate(doc)  # raises on anything OpenAPI 3.1 does not allow
    assert doc["openapi"] == "3.1.0"


def test_the_validator_would_catch_a_broken_document() -> None:
    _, doc = _document(SHIPPED[0])
    doc["paths"]["/customers"]["post"]["parameters"][0]["in"] = "body"  # an OpenAPI 2 location
    with pytest.raises(OpenAPIValidationError):
        validate(doc)


@pytest.mark.parametrize("path", SHIPPED, ids=os.path.basename)
def test_every_operation_is_listed_with_its_success_status_and_the_auth_it_needs(path: str) -> None:
    mapping, doc = _document(path)
    listed = {(method.upper(), route, spec["operationId"], next(iter(spec["responses"])))
              for route, methods in doc["paths"].items() for method, spec in methods.items()}
    expected = {(op.method, op.rule.replace("<id>", "{id}"), op.name, str(op.success)) for op in OPERATIONS}
    assert listed == expected | {("GET", "/meta/object/{type}", "meta", "200")}
    scheme = doc["components"]["securitySchemes"]["khorosSecret"]
    assert (scheme["type"], scheme["in"], scheme["name"]) == ("apiKey", "header", "Authorization")
    assert doc["security"] == [{"khorosSecret": []}]
    for methods in doc["paths"].values():
        for spec in methods.values():
            for status, answer in spec["responses"].items():
                if int(status) >= 400:
                    assert answer["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    for name, compiled in mapping.operations.items():
        if compiled.unsupported:
            [spec] = [s for m in doc["paths"].values() for s in m.values() if s["operationId"] == name]
            assert compiled.unsupported in spec["description"]


@pytest.mark.parametrize("path", SHIPPED, ids=os.path.basename)
def test_the_mapping_fields_types_and_list_values_are_in_the_document(path: str) -> None:
    mapping, doc = _document(path)
    schemas = doc["components"]["schemas"]
    for kind, answer_schema, create_schema in (("customer", "Customer", "CustomerCreate"),
                                               ("case", "Case", "CaseCreate")):
        for field in mapping.models[kind].fields:
            written = schemas[create_schema]["properties"][field.name]
            value = written["anyOf"][0] if "anyOf" in written else written
            assert value["title"] == field.label
            assert value["type"] == ("boolean" if field.type == "checkbox" else "string")
            if field.type == "single_sel_list":
                assert value["enum"] == [v for _, v in field.list_values]
            if field.required:
                assert field.name in schemas[create_schema]["required"]
            assert field.name in schemas[answer_schema]["properties"]
        searchable = schemas["CustomerSearch"]["properties"] if kind == "customer" else {}
        for field in mapping.models[kind].fields if kind == "customer" else []:
            assert field.name in searchable
    assert schemas["CaseCreate"]["required"][-1] == "customerId"


def test_the_server_limits_are_in_the_document() -> None:
    _, doc = _document(os.path.join(ROOT, "mappings", "demo.yaml"),
                       Limits(string_chars=77, interactions=5, list_items=3, id_chars=40))
    schemas = doc["components"]["schemas"]
    assert schemas["BestMatch"]["properties"]["phoneNumbers"]["maxItems"] == 3
    assert schemas["BestMatch"]["properties"]["displayName"]["maxLength"] == 77
    assert schemas["CaseCreate"]["properties"]["interactions"]["maxItems"] == 5
    assert schemas["Interaction"]["properties"]["body"]["maxLength"] == 77
    [id_param] = [p for p in doc["paths"]["/case/{id}"]["get"]["parameters"] if p["name"] == "id"]
    assert id_param["schema"]["maxLength"] == 40
    assert "413" in doc["paths"]["/case"]["post"]["responses"]
    assert "413" not in doc["paths"]["/case/{id}"]["get"]["responses"]


def test_the_server_serves_it_behind_the_khoros_secret(demo_env: dict[str, str]) -> None:
    demo = os.path.join(ROOT, "mappings", "demo.yaml")
    app = create_app(mapping_path=demo, environ={**demo_env, "MAPPER_AUTH_TOKENS": TOKEN,
                                                 "MAPPER_MAX_STRING_CHARS": "999"})
    with serve(app) as live:
        refused = requests.get(live.url + "/openapi.json", timeout=10)
        served = requests.get(live.url + "/openapi.json", headers={"Authorization": TOKEN}, timeout=10)
        options = requests.options(live.url + "/openapi.json", headers={"Authorization": TOKEN}, timeout=10)
    assert refused.status_code == 401 and refused.json()["error"] == "unauthorized"
    assert served.status_code == 200 and served.headers["Content-Type"] == "application/json"
    assert served.json() == _document(demo, Limits(string_chars=999))[1]
    assert options.status_code == 405 and options.headers["Allow"] == "GET, HEAD"
    fields = _resolve(served.json(), {"$ref": "#/components/schemas/CustomerCreate"})["properties"]
    assert fields["tier"]["anyOf"][0]["enum"] == ["gold", "silver", "bronze"]


def test_with_tenants_it_describes_the_tenant_the_headers_select(tmp_path) -> None:
    from tests.support.tenants import ACME_TOKEN, GLOBEX_TOKEN, Crm, headers, server_environ, write_server_file

    acme, globex = Crm("acme").start(), Crm("globex").start()
    app = create_app(config_path=str(write_server_file(tmp_path)), environ=server_environ(acme, globex))
    try:
        with serve(app) as live:
            def get(token: str, company: str) -> requests.Response:
                return requests.get(live.url + "/openapi.json", headers=headers(token, company), timeout=10)
            titles = [get(ACME_TOKEN, "42").json()["info"]["title"], get(GLOBEX_TOKEN, "77").json()["info"]["title"]]
            crossed = get(GLOBEX_TOKEN, "42")
    finally:
        acme.stop()
        globex.stop()
        app.config["RUNTIME"].current.close()
    assert titles[0].startswith("people:") and titles[1].startswith("people-traced:")
    assert crossed.status_code == 401 and crossed.json()["error"] == "unauthorized"


def test_a_path_id_is_described_as_the_record_it_names() -> None:
    """``/customer/{id}/cases`` lists cases, but its id is a customer's."""
    _, doc = _document(SHIPPED[0])
    for path, kind in (("/customer/{id}/cases", "customer"), ("/customer/{id}", "customer"), ("/case/{id}", "case")):
        (parameter,) = [p for p in doc["paths"][path]["get"]["parameters"] if p["in"] == "path"]
        assert parameter["description"] == f"The CRM's {kind} id."
