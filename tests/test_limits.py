"""The bounds on a Khoros body (mapper.core.limits) and the HTTP errors table (mapper.service.http_errors).

Over-the-wire behaviour under both servers is in tests/test_hostile_http.py;
here each check is held to its limit exactly (at the limit passes, one past
is refused), and every refusal is the right Khoros error naming its variable.
"""

from __future__ import annotations

import pytest
from flask import Flask
from werkzeug import exceptions as wz
from werkzeug.routing import RequestRedirect

from mapper.core.khoros import OPERATIONS_BY_NAME
from mapper.core.limits import (
    ENVIRONMENT,
    Limits,
    check_id,
    check_payload,
    limits_from_environ,
    parse_body,
    unknown_keys_phrase,
)
from mapper.errors import BadRequest, ConfigError, NotFound, ValidationFailed
from mapper.service import http_errors

SMALL = Limits(body_bytes=1000, json_depth=3, string_chars=5, interactions=2, list_items=2)


def test_defaults_and_environment_names() -> None:
    limits = limits_from_environ({})
    assert limits == Limits()
    assert limits.body_bytes == 4 * 1024 * 1024
    changed = limits_from_environ({"MAPPER_MAX_BODY_BYTES": " 1234 ", "MAPPER_MAX_INTERACTIONS": "7"})
    assert (changed.body_bytes, changed.interactions, changed.json_depth) == (1234, 7, Limits().json_depth)
    assert set(ENVIRONMENT) == set(Limits.__dataclass_fields__)


def test_a_bad_limit_is_a_config_error_naming_every_variable() -> None:
    with pytest.raises(ConfigError) as caught:
        limits_from_environ({"MAPPER_MAX_BODY_BYTES": "4MB", "MAPPER_MAX_JSON_DEPTH": "0"})
    assert [p.key for p in caught.value.problems] == ["MAPPER_MAX_BODY_BYTES", "MAPPER_MAX_JSON_DEPTH"]


def test_depth_at_the_limit_passes_one_past_is_refused() -> None:
    assert parse_body(b'{"a": [{"b": 1}]}', SMALL) == {"a": [{"b": 1}]}
    with pytest.raises(BadRequest, match=r"more than 3 levels deep.*MAPPER_MAX_JSON_DEPTH"):
        parse_body(b'{"a": [{"b": [1]}]}', SMALL)


def test_nesting_past_the_recursion_limit_is_a_400_not_a_recursion_error() -> None:
    for opener, closer in ((b"[", b"]"), (b'{"a":', b"}")):
        with pytest.raises(BadRequest, match="MAPPER_MAX_JSON_DEPTH"):
            parse_body(opener * 100_000 + b"1" + closer * 100_000)


def test_string_length_counts_keys_and_values_and_names_the_place() -> None:
    assert parse_body(b'{"abcde": ["12345"]}', SMALL)
    with pytest.raises(BadRequest, match=r"value at 'a\[1\]' is 6 characters.*MAPPER_MAX_STRING_CHARS") as caught:
        parse_body(b'{"a": ["1", "123456"]}', SMALL)
    assert "123456" not in caught.value.message
    with pytest.raises(BadRequest, match="A key at 'abcdef'"):
        parse_body(b'{"abcdef": 1}', SMALL)


@pytest.mark.parametrize("body", [b'"\\ud800"', b'{"x": "a\\udc00"}', b'{"\\udbff": 1}', b'["\\ude00\\ud83d"]'])
def test_lone_surrogates_are_refused(body: bytes) -> None:
    with pytest.raises(BadRequest, match="lone UTF-16 surrogate"):
        parse_body(body)


@pytest.mark.parametrize(("body", "value"), [(b"1", 1), (b"null", None), (b"true", True), (b'"x"', "x"),
                                             (b"[]", []), (b"{}", {}), (b"2.5", 2.5)])
def test_any_json_value_parses(body: bytes, value: object) -> None:
    assert parse_body(body, SMALL) == value  # the operation, not the parser, says it must be an object


def test_paired_surrogates_and_other_unicode_pass() -> None:
    assert parse_body(b'{"n": "\\ud83d\\ude00 caf\xc3\xa9"}') == {"n": "\U0001f600 café"}


@pytest.mark.parametrize("body", [b"", b"  \n", b"{", b'{"a": NaN}', b"[Infinity]", b"\xff\xfe", b"1" * 5000])
def test_what_is_not_json_is_a_400(body: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_body(body)


def test_best_match_lists_are_bounded_per_field() -> None:
    op = OPERATIONS_BY_NAME["best_match"]
    check_payload(op, {"phoneNumbers": ["1", "2"], "orderNumbers": ["a", "b"]}, SMALL)
    for field in ("phoneNumbers", "addresses", "orderNumbers", "caseNumbers", "accountNumbers"):
        with pytest.raises(BadRequest, match=rf"'{field}' has 3 items; at most 2.*MAPPER_MAX_LIST_ITEMS"):
            check_payload(op, {field: [{}, {}, {}]}, SMALL)


@pytest.mark.parametrize("name", ["create_case", "update_case"])
def test_interactions_are_bounded_on_case_writes(name: str) -> None:
    op = OPERATIONS_BY_NAME[name]
    check_payload(op, {"interactions": [{}, {}]}, SMALL)
    with pytest.raises(ValidationFailed) as caught:
        check_payload(op, {"interactions": [{}, {}, {}]}, SMALL)
    assert [f.name for f in caught.value.fields] == ["interactions"]
    assert "MAPPER_MAX_INTERACTIONS" in caught.value.fields[0].error_message


def test_other_operations_have_no_count_limits() -> None:
    check_payload(OPERATIONS_BY_NAME["create_customer"], {"interactions": [{}, {}, {}]}, SMALL)
    check_payload(OPERATIONS_BY_NAME["best_match"], "not an object", SMALL)


def test_unknown_keys_are_listed_a_few_at_a_time() -> None:
    assert unknown_keys_phrase(["a", "b"]) == "'a', 'b'"
    assert unknown_keys_phrase([f"k{i}" for i in range(200_000)]) == "'k0', 'k1', 'k2', 'k3', 'k4' and 199995 more"
    assert unknown_keys_phrase(["x" * 500]) == "'" + "x" * 40 + "...'"


@pytest.mark.parametrize("id", [".", ".."])
def test_dot_ids_are_not_found(id: str) -> None:
    with pytest.raises(NotFound):
        check_id(id, "customer")


@pytest.mark.parametrize("id", [None, "...", ".a", "1", "a.b"])
def test_other_ids_pass(id: str | None) -> None:
    check_id(id, "case")


# --- Werkzeug's errors -> Khoros errors --------------------------------------------------------------

@pytest.mark.parametrize(("exc", "status", "code"), [
    (wz.NotFound(), 404, "not_found"),
    (RequestRedirect("http://x/y"), 404, "not_found"),
    (wz.MethodNotAllowed(valid_methods=["PATCH", "GET"]), 405, "method_not_allowed"),
    (wz.RequestEntityTooLarge(), 413, "payload_too_large"),
    (wz.ClientDisconnected(), 400, "bad_request"),
    (wz.BadRequest(), 400, "bad_request"),
    (wz.UnsupportedMediaType(), 400, "bad_request"),
    (wz.RequestHeaderFieldsTooLarge(), 400, "bad_request"),
    (wz.InternalServerError(), 500, "internal_error"),
])
def test_every_werkzeug_error_becomes_a_khoros_error(exc: wz.HTTPException, status: int, code: str) -> None:
    app = Flask("t")
    app.config["MAPPER_LIMITS"] = Limits(body_bytes=777)
    with app.test_request_context("/api/v1/customer/1", method="DELETE"):
        error = http_errors.khoros_error_for(exc)
    assert (error.status, error.code) == (status, code)
    if status == 405:
        assert error.headers() == {"Allow": "GET, PATCH"}
    if status == 413:
        assert "777 bytes" in error.message and "MAPPER_MAX_BODY_BYTES" in error.message
