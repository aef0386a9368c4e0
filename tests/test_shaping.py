"""Shapes: one CRM record in, one Khoros object out, held to the contract.

A shape that builds something Khoros would misread is a mapping mistake, so
it is a 500 (MappingRuntimeError) naming the shape's place in the mapping,
not an answer with a missing id or a status Khoros does not know.
"""

from __future__ import annotations

from typing import Any

import pytest

from mapper.core.pipeline import Where
from mapper.core.shaping import Shaper
from mapper.core.templating import compile_value
from mapper.errors import MappingRuntimeError, MissingValue

WHERE = Where("m.yaml", 40, "shapes.case")

CUSTOMER_SHAPE = {
    "id": "{{ record.id | string }}",
    "uri": "https://crm/people/{{ record.id }}",
    "email": "{{ record.email | default(none) }}",
    "tags": "{{ record.tags | default([]) }}",
    "vip": "{{ record.vip | default(none) }}",
}

CASE_SHAPE = {
    "id": "{{ record.id | string }}",
    "number": "{{ 'T-' ~ record.id }}",
    "customerId": "{{ record.owner }}",
    "title": "{{ record.title }}",
    "linkUrl": "https://crm/tickets/{{ record.id }}",
    "created": "{{ record.created | isodate }}",
    "lastUpdated": "{{ record.updated | default(none) }}",
    "status": "{{ record.status }}",
    "interactions": "{{ record.notes | default(none) }}",
}

NOTE = {"created": "2017-08-07T14:09:00Z", "body": "hi", "linkUrl": "https://t/1", "serviceId": "1",
        "service": "twitter", "contentType": "post"}


def shaper(kind: str, shape: dict[str, Any]) -> Shaper:
    return Shaper(kind, compile_value(shape, f"m.yaml:40 shapes.{kind}"), Where("m.yaml", 40, f"shapes.{kind}"))


def customer(record: dict[str, Any], **shape_changes: Any) -> dict[str, Any]:
    return shaper("customer", {**CUSTOMER_SHAPE, **shape_changes}).one(record, {})


def case(record: dict[str, Any], **shape_changes: Any) -> dict[str, Any]:
    base = {"id": 7, "owner": 42, "title": "Broken", "created": "2017-08-07T14:09:00Z", "status": "open"}
    return shaper("case", {**CASE_SHAPE, **shape_changes}).one({**base, **record}, {})


def test_a_customer_gets_url_mirroring_uri():
    result = customer({"id": 42, "email": "j@x.io", "vip": False})
    assert result == {"id": "42", "uri": "https://crm/people/42", "url": "https://crm/people/42",
                      "email": "j@x.io", "vip": False}


def test_a_case_gets_url_mirroring_link_url_and_a_string_customer_id():
    result = case({})
    assert result["url"] == result["linkUrl"] == "https://crm/tickets/7"
    assert result["customerId"] == "42"
    assert result["number"] == "T-7"


def test_fields_without_a_value_are_left_out():
    result = customer({"id": 1, "email": "", "tags": []})
    assert set(result) == {"id", "uri", "url"}


def test_false_is_a_value_and_is_kept():
    assert customer({"id": 1, "vip": False})["vip"] is False


def test_a_case_without_interactions_has_no_interactions_key_and_an_empty_list_stays():
    assert "interactions" not in case({})
    assert case({"notes": []})["interactions"] == []
    assert case({"notes": [NOTE]})["interactions"] == [NOTE]


def test_many_shapes_every_record_and_treats_none_as_no_records():
    many = shaper("customer", CUSTOMER_SHAPE)
    assert [c["id"] for c in many.many([{"id": 1}, {"id": 2}], {})] == ["1", "2"]
    assert many.many(None, {}) == []


def test_the_shape_sees_the_scope_as_well_as_the_record():
    result = shaper("customer", {**CUSTOMER_SHAPE, "uri": "{{ settings.base }}/p/{{ record.id }}"}).one(
        {"id": 3}, {"settings": {"base": "https://crm.example"}})
    assert result["uri"] == "https://crm.example/p/3"


@pytest.mark.parametrize(("record", "shape_changes", "problem"), [
    ({"id": 42}, {"id": "{{ record.id }}"}, "gave an 'id' of type int; Khoros ids are strings (add '| string')"),
    ({"id": ""}, {"id": "{{ record.id }}"}, "gave no 'id'"),
    ({"id": 1}, {"uri": "{{ none }}"}, "gave no 'uri'"),
])
def test_customer_shape_mistakes_name_the_shape(record, shape_changes, problem):
    with pytest.raises(MappingRuntimeError) as caught:
        customer(record, **shape_changes)
    assert caught.value.message.startswith("The mapping's customer shape (m.yaml:40 shapes.customer) ")
    assert problem in caught.value.message


@pytest.mark.parametrize(("record", "shape_changes", "problem"), [
    ({"created": "07/08/2017"}, {"created": "{{ record.created }}"}, "gave 'created' that is not an ISO-8601 date"),
    ({"updated": 1502114940}, {}, "gave 'lastUpdated' that is not an ISO-8601 date"),
    ({"status": "pending"}, {}, "gave a status other than 'open' or 'closed'"),
    ({"status": ""}, {}, "gave no 'status'"),
    ({"notes": [{k: v for k, v in NOTE.items() if k not in ("body", "service")}]}, {},
     "gave an interaction without body, service"),
    ({"notes": ["just text"]}, {}, "gave an interaction without created"),
    ({"notes": "some text"}, {}, "gave 'interactions' that is not a list"),
])
def test_case_shape_mistakes_name_the_shape(record, shape_changes, problem):
    with pytest.raises(MappingRuntimeError) as caught:
        case(record, **shape_changes)
    assert caught.value.message.startswith("The mapping's case shape (m.yaml:40 shapes.case) ")
    assert problem in caught.value.message
    assert caught.value.status == 500


def test_a_shape_that_is_not_an_object_is_a_mapping_error():
    bad = Shaper("customer", compile_value("{{ record.name }}", "w"), WHERE)
    with pytest.raises(MappingRuntimeError, match="gave str, not an object"):
        bad.one({"name": "x"}, {})


def test_many_needs_a_list():
    with pytest.raises(MappingRuntimeError, match="expected a list of records but the result is dict"):
        shaper("customer", CUSTOMER_SHAPE).many({"id": 1}, {})


def test_a_shape_that_misses_shows_the_keys_the_record_has() -> None:
    with pytest.raises(MappingRuntimeError) as caught:
        shaper("customer", CUSTOMER_SHAPE).one({"data": {"id": 7, "email": "jane@example.com"}}, {})
    message = caught.value.message
    assert "'dict object' has no attribute 'id'" in message
    assert message.endswith("the record has keys ['data'].")
    assert "jane@example.com" not in message  # keys only: values may be personal data


def test_a_one_expression_shape_failing_on_a_record_that_is_not_an_object_is_the_crms_broken_answer() -> None:
    whole = compile_value("{{ record | only('email') | merge({'id': record.id | string, "
                          "'uri': 'https://crm/people/' ~ record.id}) }}", "m.yaml:40 shapes.customer")
    shape = Shaper("customer", whole, Where("m.yaml", 40, "shapes.customer"))
    assert shape.one({"id": 7}, {})["uri"] == "https://crm/people/7"
    with pytest.raises(MissingValue) as caught:
        shape.one([{"id": 7}], {})
    assert caught.value.code == "crm_error"
    assert caught.value.message.endswith("the record is a list of 1 item(s), not an object.")


def test_a_shape_failing_on_an_object_record_stays_a_mapping_error() -> None:
    shape = Shaper("customer", compile_value("{{ record | only('id') | merge(record.id) }}", "w"), WHERE)
    with pytest.raises(MappingRuntimeError) as caught:
        shape.one({"id": 7}, {})
    assert caught.value.code == "mapping_error"


@pytest.mark.parametrize("link", ["javascript:alert(1)", "JavaScript:alert(1)", "data:text/html,<b>x</b>",
                                  "ftp://crm/people/1", "/people/1", "https://", "java\nscript:alert(1)",
                                  "https://crm/people/1\r\nSet-Cookie: x"])
def test_an_object_link_that_is_not_http_is_a_mapping_error(link: str):
    with pytest.raises(MappingRuntimeError, match="'uri' that is not an http\\(s\\) link"):
        customer({"id": 1}, uri=link)
    with pytest.raises(MappingRuntimeError, match="'linkUrl' that is not an http\\(s\\) link"):
        case({}, linkUrl=link)


def test_an_interaction_link_that_is_not_http_is_sent_empty(caplog):
    notes = [{**NOTE, "linkUrl": "javascript:alert(document.cookie)"}, {**NOTE, "linkUrl": "HTTPS://t/2"},
             {**NOTE, "linkUrl": ""}]
    result = case({"notes": notes})
    assert [n["linkUrl"] for n in result["interactions"]] == ["", "HTTPS://t/2", ""]
    assert notes[0]["linkUrl"].startswith("javascript:")  # the CRM's record is not changed
    assert "not http(s)" in caplog.text


@pytest.mark.parametrize("date", ["2024-13-45T99:99Z", "2024-02-30T10:00:00Z", "2024-01-01T24:00:00Z",
                                  "2024-01-01T10:60Z", "2024-01-01T10:00:00+25:00", "2024-01-01 10:00:00Z"])
def test_a_date_that_does_not_exist_is_a_mapping_error(date: str):
    with pytest.raises(MappingRuntimeError, match="'created' that is not an ISO-8601 date of a real day"):
        case({"created": date}, created="{{ record.created }}")
    with pytest.raises(MappingRuntimeError, match="interaction whose 'created' is not an ISO-8601 date of a real day"):
        case({"notes": [{**NOTE, "created": date}]})


@pytest.mark.parametrize("date", ["2024-02-29T10:00Z", "2024-01-01T10:00:00.123+0200", "2024-12-31T23:59:59-05:00"])
def test_real_dates_in_every_iso_form_pass(date: str):
    shaped = case({"created": date, "notes": [{**NOTE, "created": date}]}, created="{{ record.created }}")
    assert shaped["created"] == date
