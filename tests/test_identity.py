"""Identity matching: phone numbers in E.164, emails and handles case-folded, names
without accents, and best-match candidates ranked by how they matched, each once."""

from __future__ import annotations

import pytest

from mapper.core.identity import (
    IdentityRules,
    e164,
    email_key,
    handle_key,
    name_key,
    phone_forms,
    phone_key,
    rank_matches,
)
from mapper.core.templating import compile_value, make_environment

STORED = "+15551469907"


@pytest.mark.parametrize("typed", ["(555) 146-9907", "555-146-9907", "+1 555 146 9907", "555.146.9907",
                                   "+1 (555) 146-9907", STORED])
def test_every_spelling_of_a_us_number_is_one_e164_number(typed):
    assert e164(typed, "US") == STORED


def test_without_a_region_only_numbers_with_a_country_code_parse():
    assert e164("(555) 146-9907") is None
    assert e164("+1 555 146 9907") == STORED
    assert e164("020 7946 0018", "GB") == "+442079460018"


@pytest.mark.parametrize("not_a_number", [None, "", "  ", "call me", "+1 555 0100 ab12cd34", "12", True])
def test_text_that_is_not_a_phone_number_has_no_e164_form(not_a_number):
    assert e164(not_a_number, "US") is None


def test_a_value_that_is_no_number_is_still_equal_to_itself_whatever_its_punctuation():
    assert phone_key("+1 555 0100 AB12", "US") == phone_key("+1-555-0100-ab12", "US") == "15550100ab12"
    assert phone_key("(555) 146-9907", "US") == STORED


def test_phone_forms_lists_the_spellings_an_exact_match_crm_may_hold_each_once():
    assert phone_forms("(555) 146-9907", "US") == ["(555) 146-9907", STORED, "+1 555-146-9907"]
    assert phone_forms(STORED, "US") == [STORED, "+1 555-146-9907", "(555) 146-9907"]
    assert phone_forms("ext. 12", "US") == ["ext. 12"]
    assert phone_forms(None, "US") == []


def test_emails_handles_and_names_compare_without_case_accents_or_extra_spaces():
    assert email_key(" Jane.Doe@Example.COM ") == email_key("jane.doe@example.com")
    assert handle_key("@JaneDoe") == handle_key("janedoe") == "janedoe"
    assert name_key("  Zoë   O'Brien ") == name_key("ZOE O'BRIEN") == "zoe o'brien"
    assert name_key("José Müller") == "jose muller"
    assert email_key(None) is None and name_key("") is None


RULES = IdentityRules(region="US", email=("email",), phone=("phone", "mobile"), handle=("twitter",),
                      name=("first", "last"))


def test_best_match_ranks_email_over_phone_over_handle_over_name_and_drops_the_rest():
    by_name = {"id": 1, "first": "Jose", "last": "Muller"}
    by_handle = {"id": 2, "twitter": "jm"}
    by_phone = {"id": 3, "mobile": STORED}
    by_email = {"id": 4, "email": "JM@x.io"}
    stranger = {"id": 5, "email": "other@x.io", "phone": "+15550000000"}
    body = {"email": "jm@X.io", "phoneNumbers": ["(555) 146-9907"], "screenName": "@JM", "displayName": "José Müller"}
    ranked = rank_matches([by_name, stranger, by_handle, by_phone, by_email], body, RULES)
    assert [r["id"] for r in ranked] == [4, 3, 2, 1]


def test_a_record_found_by_several_searches_is_listed_once_at_its_best_rank():
    jane = {"id": 7, "email": "jane@x.io", "phone": STORED, "first": "Jane", "last": "Doe"}
    other = {"id": 8, "phone": "555 146 9907"}
    body = {"email": "jane@x.io", "phoneNumbers": ["555-146-9907"], "displayName": "Jane Doe"}
    ranked = rank_matches([other, jane, dict(jane), other], body, RULES)
    assert [r["id"] for r in ranked] == [7, 8]


def test_records_without_an_id_are_told_apart_by_their_content():
    body = {"phoneNumbers": ["555-146-9907"]}
    ranked = rank_matches([{"phone": STORED}, {"phone": STORED}, {"phone": "+15551469908"}], body,
                          IdentityRules(region="US", id="id"))
    assert ranked == [{"phone": STORED}]


def test_dotted_paths_and_list_values_reach_nested_records():
    rules = IdentityRules(region="US", id="id", email=("properties.email",), phone=("phones",))
    record = {"id": "9", "properties": {"email": "A@b.c"}, "phones": ["+44 20 7946 0018", STORED]}
    assert rank_matches([record], {"phoneNumbers": ["(555) 146-9907"]}, rules) == [record]
    assert rank_matches([record], {"email": "a@B.C"}, rules) == [record]
    assert rank_matches([record], {"displayName": "Nobody"}, rules) == []


def test_the_filters_read_the_region_and_rules_of_their_mapping():
    env = make_environment(identity=RULES)
    assert compile_value("{{ '(555) 146-9907' | e164 }}", "t", env=env).evaluate({}) == STORED
    assert compile_value("{{ '(555) 146-9907' | e164 }}", "t").evaluate({}) is None  # no region set
    assert compile_value("{{ '020 7946 0018' | e164('GB') }}", "t", env=env).evaluate({}) == "+442079460018"
    ranked = compile_value("{{ found | rank_matches(body) }}", "t", env=env).evaluate(
        {"found": [{"id": 1, "mobile": "555 146 9907"}], "body": {"phoneNumbers": [STORED]}})
    assert ranked == [{"id": 1, "mobile": "555 146 9907"}]
