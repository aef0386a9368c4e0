"""The Khoros data model: the /meta answer and the checks on what Khoros sends.

An unknown field or a wrong shape is a 400 (BadRequest); a field value that
breaks the model is a 422 (ValidationFailed) naming every bad field with its
Khoros name. Messages never echo submitted values.
"""

from __future__ import annotations

import re

import pytest

from mapper.core.model import (
    IDENTITY_FIELDS,
    Field,
    ObjectModel,
    check_bestmatch,
    check_customer_id,
    check_interactions,
)
from mapper.errors import BadRequest, ValidationFailed

CUSTOMER = ObjectModel("customer", [
    Field("firstName", "First name", "text", searchable=True),
    Field("lastName", "Last name", "text", searchable=True, required=True),
    Field("email", "Email", "text", searchable=True, format="email"),
    Field("tier", "Tier", "single_sel_list", list_values=(("Gold", "gold"), ("Silver", "silver"))),
    Field("vip", "VIP", "checkbox"),
    Field("notes", "Notes", "textarea", max_length=10),
    Field("zip", "Postcode", "text", pattern=re.compile(r"^\d{5}$")),
    Field("score", "Score", "text", readonly=True),
])

CASE = ObjectModel("case", [
    Field("title", "Title", "text", required=True, max_length=20),
    Field("priority", "Priority", "single_sel_list", list_values=(("Low", "low"), ("High", "high"))),
])

INTERACTION = {"created": "2017-08-07T14:09:00Z", "body": "My charger is broken",
               "linkUrl": "https://twitter.com/jane/status/1", "serviceId": "1", "service": "twitter",
               "contentType": "post",
               "author": {"service": "twitter", "serviceId": "99", "handle": "jane", "name": "Jane Doe",
                          "brandOwned": False}}

CASE_EXTRA = {"interactions": check_interactions, "customerId": check_customer_id}


def field_errors(caught: pytest.ExceptionInfo[ValidationFailed]) -> dict[str, str]:
    return {f.name: f.error_message for f in caught.value.fields}


# --- /meta -------------------------------------------------------------------------------

def test_customer_meta_adds_id_and_uri_when_the_mapping_leaves_them_out():
    meta = CUSTOMER.meta()
    assert meta["name"] == "customer"
    names = [f["name"] for f in meta["fields"]]
    assert names[:2] == ["id", "uri"]
    assert names[2:] == [f.name for f in CUSTOMER.fields]


def test_case_meta_adds_id_link_url_and_created():
    names = [f["name"] for f in CASE.meta()["fields"]]
    assert names == ["id", "linkUrl", "created", "title", "priority"]


def test_meta_does_not_duplicate_identity_fields_the_mapping_declares():
    model = ObjectModel("customer", [Field("uri", "Profile", "text")])
    fields = model.meta()["fields"]
    assert [f["name"] for f in fields] == ["id", "uri"]
    assert fields[1]["label"] == "Profile"


def test_meta_answers_are_copies_so_callers_cannot_change_the_table():
    CUSTOMER.meta()["fields"][0]["label"] = "changed"
    assert IDENTITY_FIELDS["customer"][0]["label"] == "Id"


def test_meta_fields_carry_the_khoros_keys_and_list_values_only_on_dropdowns():
    by_name = {f["name"]: f for f in CUSTOMER.meta()["fields"]}
    assert by_name["firstName"] == {"name": "firstName", "label": "First name", "type": "text", "searchable": True}
    assert by_name["tier"]["listValues"] == [{"name": "Gold", "value": "gold"}, {"name": "Silver", "value": "silver"}]
    assert [name for name, f in by_name.items() if "listValues" in f] == ["tier"]


# --- search --------------------------------------------------------------------------------

def test_search_keeps_known_fields_and_drops_empty_and_identity_ones():
    assert CUSTOMER.check_search({"email": "j@x.io", "lastName": "", "firstName": None, "id": "7"}) == \
        {"email": "j@x.io"}


def test_search_with_an_unknown_field_is_a_bad_request_naming_it():
    with pytest.raises(BadRequest) as caught:
        CUSTOMER.check_search({"emial": "j@x.io", "shoe": "9"})
    assert "'emial', 'shoe'" in caught.value.message
    assert "/meta/object/customer" in caught.value.message


def test_search_with_a_wrong_type_is_a_bad_request():
    with pytest.raises(BadRequest, match="'vip' must be true or false"):
        CUSTOMER.check_search({"vip": "yes"})


# --- writes ---------------------------------------------------------------------------------

def test_a_valid_create_comes_back_clean():
    body = {"lastName": "Doe", "email": "jane@example.com", "tier": "gold", "vip": True, "notes": "short"}
    assert CUSTOMER.check_write(body, creating=True) == body


def test_a_create_with_an_unknown_field_is_a_bad_request_naming_it():
    with pytest.raises(BadRequest) as caught:
        CUSTOMER.check_write({"lastName": "Doe", "middleName": "Q"}, creating=True)
    assert caught.value.status == 400
    assert "'middleName'" in caught.value.message


@pytest.mark.parametrize(("body", "name", "message"), [
    ({"vip": "yes"}, "vip", "must be true or false"),
    ({"firstName": 7}, "firstName", "must be text"),
    ({"tier": "platinum"}, "tier", "must be one of: gold, silver"),
    ({"notes": "far too long for ten"}, "notes", "must be at most 10 characters (got 20)"),
    ({"email": "not-an-email"}, "email", "is not an email address"),
    ({"zip": "AB1"}, "zip", "is not in the expected format"),
    ({"score": "10"}, "score", "is read-only in this CRM"),
])
def test_a_bad_value_is_a_validation_failure_naming_the_khoros_field(body, name, message):
    with pytest.raises(ValidationFailed) as caught:
        CUSTOMER.check_write({"lastName": "Doe", **body}, creating=True)
    assert caught.value.status == 422
    assert field_errors(caught) == {name: message}
    assert name in caught.value.message


def test_a_missing_required_field_on_create_is_a_validation_failure():
    with pytest.raises(ValidationFailed) as caught:
        CUSTOMER.check_write({"email": "jane@example.com"}, creating=True)
    assert field_errors(caught) == {"lastName": "is required"}


def test_every_bad_field_is_reported_at_once():
    with pytest.raises(ValidationFailed) as caught:
        CUSTOMER.check_write({"vip": 1, "tier": "x", "email": "y"}, creating=True)
    assert set(field_errors(caught)) == {"vip", "tier", "email", "lastName"}


def test_validation_messages_do_not_echo_the_submitted_value():
    with pytest.raises(ValidationFailed) as caught:
        CUSTOMER.check_write({"lastName": "Doe", "email": "leaky-value-123"}, creating=True)
    assert "leaky-value-123" not in str(caught.value.to_json("t"))


def test_an_update_may_clear_a_field_that_is_not_required():
    assert CUSTOMER.check_write({"notes": None, "email": ""}, creating=False) == {"notes": None, "email": None}


def test_an_update_may_not_clear_a_required_field():
    with pytest.raises(ValidationFailed) as caught:
        CUSTOMER.check_write({"lastName": ""}, creating=False)
    assert field_errors(caught) == {"lastName": "is required and cannot be emptied"}


def test_an_update_does_not_require_fields_it_does_not_change():
    assert CUSTOMER.check_write({"vip": False}, creating=False) == {"vip": False}


def test_empty_values_on_create_mean_absent():
    assert CUSTOMER.check_write({"lastName": "Doe", "notes": "", "email": None}, creating=True) == {"lastName": "Doe"}


@pytest.mark.parametrize("key", ["id", "uri", "url"])
def test_customer_identity_keys_are_ignored_on_write(key):
    assert CUSTOMER.check_write({"lastName": "Doe", key: "whatever"}, creating=False) == {"lastName": "Doe"}


@pytest.mark.parametrize("key", ["id", "number", "linkUrl", "url", "created", "lastUpdated"])
def test_case_identity_keys_are_ignored_on_write(key):
    assert CASE.check_write({"title": "t", key: "whatever"}, creating=False, extra=CASE_EXTRA) == {"title": "t"}


# --- case extras: customerId and interactions -------------------------------------------

def test_a_case_create_with_customer_and_interactions_is_clean():
    body = {"customerId": "42", "title": "Broken charger", "interactions": [INTERACTION]}
    assert CASE.check_write(body, creating=True, extra=CASE_EXTRA) == body


def test_a_case_create_needs_a_customer_id():
    with pytest.raises(ValidationFailed) as caught:
        CASE.check_write({"title": "t"}, creating=True, extra=CASE_EXTRA)
    assert field_errors(caught) == {"customerId": "is required: the case must belong to a customer"}


def test_a_customer_id_must_be_a_string_or_number():
    assert check_customer_id("42") == [] and check_customer_id(42) == []
    assert [f.name for f in check_customer_id(True)] == ["customerId"]
    assert [f.name for f in check_customer_id({"id": 1})] == ["customerId"]


@pytest.mark.parametrize(("interactions", "name"), [
    ([{**INTERACTION, "body": 5}], "interactions[0].body"),
    ([{k: v for k, v in INTERACTION.items() if k != "body"}], "interactions[0].body"),
    ([INTERACTION, {k: v for k, v in INTERACTION.items() if k != "service"}], "interactions[1].service"),
    ([{**INTERACTION, "author": {**INTERACTION["author"], "brandOwned": "no"}}], "interactions[0].author.brandOwned"),
    ([{**INTERACTION, "mood": "angry"}], "interactions[0]"),
    ({"not": "a list"}, "interactions"),
])
def test_interaction_problems_name_the_interaction_and_key(interactions, name):
    with pytest.raises(ValidationFailed) as caught:
        CASE.check_write({"customerId": "1", "title": "t", "interactions": interactions}, creating=True,
                         extra=CASE_EXTRA)
    assert name in field_errors(caught)


# --- best match -------------------------------------------------------------------------------

def test_a_best_match_body_keeps_only_populated_keys():
    body = {"displayName": "Jane Doe", "screenName": "@jane", "email": "", "phoneNumbers": [],
            "addresses": [{"city": "Leeds"}], "profileUrl": None}
    assert check_bestmatch(body) == {"displayName": "Jane Doe", "screenName": "@jane",
                                     "addresses": [{"city": "Leeds"}]}


@pytest.mark.parametrize(("body", "message"), [
    ({"phoneNumbers": "555-1234"}, "Best-match field 'phoneNumbers' must be of type ['array', 'null']."),
    ({"phoneNumbers": ["555", 1234]}, "Best-match field 'phoneNumbers[1]' must be of type string."),
    ({"addresses": [{"town": "Leeds"}]}, "Best-match field 'addresses[0]' has a key Khoros does not define: 'town'."),
    ({"shoeSize": "9"}, "Best-match field 'body' has a key Khoros does not define: 'shoeSize'."),
])
def test_best_match_shape_errors_are_bad_requests(body, message):
    with pytest.raises(BadRequest) as caught:
        check_bestmatch(body)
    assert caught.value.status == 400
    assert caught.value.message == message


INTERACTION_OK = {"created": "2017-08-07T14:09:00Z", "body": "b", "linkUrl": "https://x/1", "serviceId": "1",
                  "service": "twitter", "contentType": "post"}


@pytest.mark.parametrize("value", [
    [], [INTERACTION_OK], [{**INTERACTION_OK, "author": {"name": "Jane", "brandOwned": False}}],
    [{**INTERACTION_OK, "author": {}}], "x", [1], [{}], [{**INTERACTION_OK, "created": ""}],
    [{**INTERACTION_OK, "service": ""}], [{**INTERACTION_OK, "body": ""}], [{**INTERACTION_OK, "extra": 1}],
    [{**INTERACTION_OK, "body": 5}], [{**INTERACTION_OK, "author": None}], [{**INTERACTION_OK, "author": []}],
    [{**INTERACTION_OK, "author": {"brandOwned": 1}}], [{**INTERACTION_OK, "author": {"brandOwned": "no"}}],
    [{**INTERACTION_OK, "author": {"name": None}}], [{**INTERACTION_OK, "author": {"team": "x"}}],
    [{k: v for k, v in INTERACTION_OK.items() if k != "linkUrl"}],
    [{k: v for k, v in INTERACTION_OK.items() if k != "linkUrl"} | {"author": {}}],
    [INTERACTION_OK, {**INTERACTION_OK, "serviceId": 7}],
])
def test_the_direct_interactions_check_agrees_with_the_schema(value):
    import jsonschema

    from mapper.core.model import INTERACTIONS_SCHEMA, _interactions_valid
    assert _interactions_valid(value) == jsonschema.Draft202012Validator(INTERACTIONS_SCHEMA).is_valid(value)
