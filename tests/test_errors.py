"""One error hierarchy: each class knows its Khoros status and code and renders itself.

Only statuses Khoros knows leave the server; the body is always
``{"error", "message"}`` with the trace id at the end of the message, plus
``fields`` for validation failures.
"""

from __future__ import annotations

import pytest

from mapper.errors import (
    BadRequest,
    ConfigError,
    FieldError,
    KhorosError,
    MappingRuntimeError,
    NotFound,
    Problem,
    ServerError,
    Unauthorized,
    Unsupported,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    ValidationFailed,
    error_for_code,
)

KHOROS_STATUSES = {200, 201, 204, 400, 401, 404, 422, 500}


@pytest.mark.parametrize(("cls", "status", "code"), [
    (BadRequest, 400, "bad_request"),
    (Unauthorized, 401, "unauthorized"),
    (NotFound, 404, "not_found"),
    (ServerError, 500, "internal_error"),
    (MappingRuntimeError, 500, "mapping_error"),
    (Unsupported, 500, "not_supported"),
    (UpstreamError, 500, "crm_error"),
    (UpstreamUnavailable, 500, "crm_unavailable"),
    (UpstreamTimeout, 500, "crm_timeout"),
])
def test_each_error_knows_its_status_and_code(cls, status, code):
    error = cls("Something failed.")
    assert (error.status, error.code) == (status, code)
    assert error.status in KHOROS_STATUSES
    assert error.to_json("abc123") == {"error": code, "message": "Something failed. (trace abc123)"}


def test_validation_failed_is_422_with_fields_that_carry_the_trace():
    error = ValidationFailed("Not saved.", [FieldError("email", "is not an email address")])
    assert error.status == 422
    assert error.to_json("t1") == {
        "error": "validation_failed", "message": "Not saved. (trace t1)",
        "fields": [{"name": "email", "errorMessage": "is not an email address (trace t1)"}]}
    assert FieldError("a", "b").to_json() == {"name": "a", "errorMessage": "b"}


def test_a_code_can_be_given_per_instance_without_changing_the_class():
    error = UpstreamError("Token refused.", code="crm_auth_failed")
    assert error.code == "crm_auth_failed"
    assert UpstreamError.code == "crm_error"


def test_internal_detail_is_kept_out_of_the_khoros_answer():
    error = UpstreamError("The CRM failed.", internal="GET /x -> 500: stack trace with secrets")
    assert "stack trace" not in str(error.to_json("t"))
    assert error.internal == "GET /x -> 500: stack trace with secrets"


@pytest.mark.parametrize(("code", "cls", "status"), [
    ("not_found", NotFound, 404),
    ("bad_request", BadRequest, 400),
    ("validation_failed", ValidationFailed, 422),
    ("crm_down", UpstreamError, 500),
])
def test_error_for_code_maps_a_mapping_code_to_a_class(code, cls, status):
    error = error_for_code(code, "Message.", [FieldError("f", "bad")], internal="detail")
    assert type(error) is cls
    assert (error.status, error.code, error.internal) == (status, code, "detail")


def test_every_request_error_is_a_khoros_error():
    for cls in (BadRequest, Unauthorized, NotFound, ValidationFailed, ServerError, UpstreamTimeout):
        assert issubclass(cls, KhorosError)
    assert not issubclass(ConfigError, KhorosError)


def test_problems_render_as_file_line_key_message():
    assert str(Problem("m.yaml", 12, "a.b[0]", "is wrong")) == "m.yaml:12: a.b[0]: is wrong"
    assert str(Problem("environment", 0, "MAPPER_MAPPING", "not set")) == "environment: MAPPER_MAPPING: not set"
    assert str(Problem("m.yaml", 1, "", "empty")) == "m.yaml:1: (top): empty"


def test_a_config_error_lists_every_problem_one_per_line():
    error = ConfigError([Problem("m.yaml", 1, "a", "x"), Problem("m.yaml", 2, "b", "y")])
    assert str(error) == "m.yaml:1: a: x\nm.yaml:2: b: y"
    assert len(error.problems) == 2
