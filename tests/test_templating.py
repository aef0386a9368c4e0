"""Value trees: YAML structure with Jinja leaves, evaluated in a sandbox.

The contract: types survive a lone ``{{ expression }}``; other templates
render text; ``omit`` removes keys and list items; ``$map`` turns lists into
lists; the sandbox refuses Python internals; a missing value is an error
naming the mapping line, never an empty string; values printed into URL
paths are percent-encoded.
"""

from __future__ import annotations

from typing import Any

import pytest

from mapper.core.templating import (
    ENV,
    OMIT,
    PATH_ENV,
    Expression,
    Literal,
    TemplateCompileError,
    Text,
    compile_string,
    compile_value,
    iter_templates,
)
from mapper.errors import MappingRuntimeError, MissingValue

WHERE = "m.yaml:7 operations.get_customer.result"


def ev(value: Any, **context: Any) -> Any:
    return compile_value(value, WHERE).evaluate(context)


# --- types survive -----------------------------------------------------------

@pytest.mark.parametrize(("template", "context", "expected"), [
    ("{{ x }}", {"x": "478"}, "478"),
    ("{{ x }}", {"x": 478}, 478),
    ("{{ x }}", {"x": ["a", "b"]}, ["a", "b"]),
    ("{{ x }}", {"x": {"k": [1]}}, {"k": [1]}),
    ("{{ x }}", {"x": True}, True),
    ("{{ none }}", {}, None),
    ("  {{ x }}  ", {"x": 1.5}, 1.5),
    ("{{ x | default(none) }}", {}, None),
])
def test_a_lone_expression_keeps_the_type_of_its_value(template, context, expected):
    result = ev(template, **context)
    assert result == expected
    assert type(result) is type(expected)


def test_a_lone_expression_compiles_to_an_expression_and_text_to_text():
    assert isinstance(compile_value("{{ x }}", WHERE), Expression)
    assert isinstance(compile_value("id {{ x }}", WHERE), Text)
    assert isinstance(compile_value("{{ a }}{{ b }}", WHERE), Text)
    assert compile_value("plain", WHERE) == Literal("plain")


@pytest.mark.parametrize(("template", "context", "expected"), [
    ("id {{ x }}", {"x": 478}, "id 478"),
    ("{{ a }}{{ b }}", {"a": 4, "b": 78}, "478"),
    ("{{ first }} {{ last }}", {"first": "Jane", "last": "Doe"}, "Jane Doe"),
    ("{% if vip %}gold{% else %}none{% endif %}", {"vip": True}, "gold"),
])
def test_any_other_template_renders_text(template, context, expected):
    assert ev(template, **context) == expected


@pytest.mark.parametrize("literal", [478, 1.5, True, None, "no template here", "50% {off}"])
def test_literals_are_returned_as_they_are(literal):
    assert ev(literal) == literal


def test_structures_are_built_item_by_item():
    tree = {"name": "{{ c.name }}", "tags": ["x", "{{ c.tag }}"], "count": 3,
            "nested": {"id": "{{ c.id }}"}}
    assert ev(tree, c={"name": "Jane", "tag": "vip", "id": "478"}) == {
        "name": "Jane", "tags": ["x", "vip"], "count": 3, "nested": {"id": "478"}}


# --- omit ----------------------------------------------------------------------

def test_omit_drops_a_dict_key():
    tree = {"email": "{{ body.email | default(omit) }}", "phone": "{{ body.phone | default(omit) }}"}
    assert ev(tree, body={"email": "j@example.com"}) == {"email": "j@example.com"}


def test_omit_drops_a_list_item():
    assert ev(["{{ a | default(omit) }}", "{{ b }}"], b=2) == [2]


def test_omit_at_the_top_is_the_omit_sentinel():
    assert ev("{{ omit }}") is OMIT
    assert not OMIT


# --- $map ----------------------------------------------------------------------------

def test_map_builds_one_item_per_input_item():
    tree = {"$map": "{{ rows }}", "$as": "row", "$to": {"id": "{{ row.id | string }}", "at": "{{ index }}"}}
    assert ev(tree, rows=[{"id": 1}, {"id": 2}]) == [{"id": "1", "at": 0}, {"id": "2", "at": 1}]


def test_map_defaults_to_item_and_to_the_item_itself():
    assert ev({"$map": "{{ rows }}"}, rows=[1, 2]) == [1, 2]
    assert ev({"$map": "{{ rows }}", "$to": "{{ item * 10 }}"}, rows=[1, 2]) == [10, 20]


def test_map_where_keeps_only_matching_items():
    tree = {"$map": "{{ rows }}", "$as": "r", "$where": "{{ r.open }}", "$to": "{{ r.id }}"}
    assert ev(tree, rows=[{"id": 1, "open": True}, {"id": 2, "open": False}, {"id": 3, "open": True}]) == [1, 3]


def test_map_to_omit_drops_that_item():
    tree = {"$map": "{{ rows }}", "$to": "{{ item.email | default(omit) }}"}
    assert ev(tree, rows=[{"email": "a@x.io"}, {}, {"email": "b@x.io"}]) == ["a@x.io", "b@x.io"]


def test_map_over_omit_drops_the_key_that_holds_it():
    tree = {"id": "1", "interactions": {"$map": "{{ record.interactions | default(omit) }}", "$to": "{{ item }}"}}
    assert ev(tree, record={}) == {"id": "1"}
    assert ev(tree, record={"interactions": [{"b": 1}]}) == {"id": "1", "interactions": [{"b": 1}]}


def test_map_over_none_is_an_empty_list_and_over_a_dict_is_key_value_pairs():
    assert ev({"$map": "{{ none }}"}) == []
    assert ev({"$map": "{{ d }}", "$to": "{{ item.key }}={{ item.value }}"}, d={"a": 1}) == ["a=1"]


def test_map_over_something_that_is_not_a_list_names_the_place():
    with pytest.raises(MappingRuntimeError, match=r"expected a list at m\.yaml:7"):
        ev({"$map": "{{ n }}"}, n=5)


def test_map_with_an_unknown_key_does_not_compile():
    with pytest.raises(TemplateCompileError) as caught:
        compile_value({"$map": "{{ rows }}", "$too": "{{ item }}"}, WHERE)
    assert caught.value.path == ("$too",)


def test_map_as_must_be_a_plain_name():
    with pytest.raises(TemplateCompileError) as caught:
        compile_value({"tags": {"$map": "{{ rows }}", "$as": "a.b"}}, WHERE)
    assert caught.value.path == ("tags", "$as")


# --- the sandbox and strict undefined ---------------------------------------------------

@pytest.mark.parametrize("template", [
    "{{ x.__class__ }}",
    "{{ x.__class__.__mro__ }}",
    "{{ omit._instance }}",
    "{{ x.__init__.__globals__ }}",
    "text {{ x.__class__ }}",
])
def test_the_sandbox_refuses_private_attributes_at_run_time(template):
    with pytest.raises(MappingRuntimeError) as caught:
        ev(template, x="s")
    assert "unsafe" in caught.value.message
    assert WHERE in caught.value.message


def test_the_sandbox_refuses_to_mutate_values():
    with pytest.raises(MappingRuntimeError):
        ev("{{ items.append(1) }}", items=[])


@pytest.mark.parametrize("template", ["{{ contact.email }}", "Hello {{ contact }}", "{{ contact | string }}"])
def test_a_missing_value_is_an_error_naming_the_place_and_the_name(template):
    with pytest.raises(MappingRuntimeError) as caught:
        ev(template)
    assert "'contact' is undefined" in caught.value.message
    assert WHERE in caught.value.message


def test_a_missing_key_of_a_present_value_is_an_error_too():
    with pytest.raises(MappingRuntimeError, match="has no attribute 'email'"):
        ev("{{ contact.email }}", contact={})


def test_errors_never_show_the_values_in_the_context():
    with pytest.raises(MappingRuntimeError) as caught:
        ev("{{ token.missing }}", token={"value": "s3cr3t-value"})
    assert "s3cr3t-value" not in caught.value.message


def test_a_template_that_does_not_parse_is_a_compile_error_with_its_inner_path():
    with pytest.raises(TemplateCompileError) as caught:
        compile_value({"a": ["ok", "{{ x + }}"]}, WHERE)
    assert caught.value.path == ("a", 1)
    assert "does not compile" in caught.value.message


def test_names_lists_the_top_level_values_a_tree_reads():
    tree = compile_value({"a": "{{ body.email }}", "b": {"$map": "{{ rows }}", "$as": "r",
                                                          "$to": "{{ r.id }} {{ settings.x }}"}}, WHERE)
    assert tree.names() == {"body", "rows", "settings"}
    assert len(list(iter_templates(tree))) == 3


# --- filters ------------------------------------------------------------------------

def test_merge_puts_later_keys_over_earlier_ones_without_changing_inputs():
    body = {"a": 1, "b": 2}
    assert ev("{{ body | merge({'b': 3}, {'c': 4}) }}", body=body) == {"a": 1, "b": 3, "c": 4}
    assert body == {"a": 1, "b": 2}
    assert ev("{{ none | merge({'b': 3}) }}") == {"b": 3}


def test_without_and_only_copy_a_dict_with_fewer_keys():
    body = {"title": "t", "interactions": [], "priority": "high"}
    assert ev("{{ body | without('interactions') }}", body=body) == {"title": "t", "priority": "high"}
    assert ev("{{ body | only('title', 'missing') }}", body=body) == {"title": "t"}


def test_rename_keys_renames_listed_keys_and_keeps_the_rest():
    assert ev("{{ body | rename_keys({'firstName': 'first_name'}) }}",
              body={"firstName": "Jane", "email": "j@x.io"}) == {"first_name": "Jane", "email": "j@x.io"}


@pytest.mark.parametrize(("value", "expected"), [("+44 (20) 7946-0001", "442079460001"), (None, ""), (42, "42")])
def test_digits_keeps_only_digits(value, expected):
    assert ev("{{ v | digits }}", v=value) == expected


@pytest.mark.parametrize(("value", "expected"), [
    ("2017-08-07T14:09:00Z", "2017-08-07T14:09:00Z"),
    ("2017-08-07T16:09:00+02:00", "2017-08-07T14:09:00Z"),
    ("2017-08-07T09:09:00-0500", "2017-08-07T14:09:00Z"),
    ("2017-08-07T14:09:00", "2017-08-07T14:09:00Z"),
    ("2017-08-07T14:09:00.123456Z", "2017-08-07T14:09:00Z"),
    (1502114940, "2017-08-07T14:09:00Z"),
    (1502114940000, "2017-08-07T14:09:00Z"),
    (1502114940.5, "2017-08-07T14:09:00Z"),
    ("1502114940000", "2017-08-07T14:09:00Z"),
    (None, None),
    ("", None),
])
def test_isodate_normalises_to_utc_with_z(value, expected):
    assert ev("{{ v | isodate }}", v=value) == expected


def test_isodate_on_something_that_is_not_a_date_is_a_mapping_error():
    with pytest.raises(MappingRuntimeError, match="not an ISO-8601 date"):
        ev("{{ v | isodate }}", v="last tuesday")


def test_fromjson_parses_json_kept_in_a_text_field():
    assert ev("{{ v | fromjson }}", v='{"a": [1, "2"]}') == {"a": [1, "2"]}
    assert ev("{{ v | fromjson }}", v="") is None
    with pytest.raises(MappingRuntimeError):
        ev("{{ v | fromjson }}", v="{not json")


def test_backslash_escape_escapes_quotes_and_backslashes():
    assert ev("{{ v | backslash_escape }}", v="O'Brien \"x\" \\") == "O\\'Brien \\\"x\\\" \\\\"
    assert ev("{{ v | backslash_escape(':') }}", v="a:b'") == "a\\:b'"
    assert ev("{{ v | backslash_escape }}", v=None) == ""


def test_quote_literal_makes_one_literal_whatever_it_contains():
    assert ev("{{ v | quote_literal }}", v='say "hi" \\o/') == '"say \\"hi\\" \\\\o/"'
    assert ev("{{ v | quote_literal(\"'\", \"'\") }}", v="O'Brien") == "'O''Brien'"


@pytest.mark.parametrize(("value", "expected"), [
    ("O'Brien", "'O''Brien'"), ("''", "''''''"), ('a^b="c"\\', "'a^b=\"c\"\\'"), (None, "''"), (42, "'42'"),
])
def test_odata_string_doubles_single_quotes_inside_single_quotes(value, expected):
    assert ev("{{ v | odata_string }}", v=value) == expected


@pytest.mark.parametrize(("value", "expected"), [
    ("a^NQactive=false", "a^^NQactive=false"), ("^^", "^^^^"), ("x=y'\"\\", "x=y'\"\\"), (None, ""),
])
def test_encoded_query_value_doubles_every_caret(value, expected):
    assert ev("{{ v | encoded_query_value }}", v=value) == expected


def test_urlencode_part_encodes_everything_that_could_change_a_url():
    assert ev("{{ v | urlencode_part }}", v="a b/c?d=e&f#g") == "a%20b%2Fc%3Fd%3De%26f%23g"


@pytest.mark.parametrize(("value", "expected"), [(None, []), ([1, 2], [1, 2]), ("x", ["x"]), (0, [0])])
def test_as_list_makes_a_list_of_anything(value, expected):
    assert ev("{{ v | as_list }}", v=value) == expected


# --- URL paths -------------------------------------------------------------------------

def path(template: str, **context: Any) -> str:
    return str(compile_value(template, WHERE, env=PATH_ENV).evaluate(context))


def test_values_in_path_templates_are_percent_encoded():
    assert path("/customers/{{ id }}/cases", id="../x?y") == "/customers/..%2Fx%3Fy/cases"
    assert path("/customers/{{ id }}", id="a b#c") == "/customers/a%20b%23c"
    assert path("/customers/{{ id }}", id=42) == "/customers/42"


@pytest.mark.parametrize(("value", "problem"), [
    (".", "cannot be '.'"), ("..", "cannot be '..'"), ("", "cannot be empty"), (None, "cannot be empty"),
])
def test_a_value_that_would_move_or_vanish_from_its_path_segment_is_refused(value, problem):
    # '/customers/../cases' would call '/cases'; '/customers//cases' is joined to '/customers/cases'.
    with pytest.raises(MappingRuntimeError) as caught:
        path("/customers/{{ id }}/cases", id=value)
    assert problem in caught.value.message
    assert WHERE in caught.value.message


def test_a_path_that_is_one_expression_is_encoded_too():
    assert path("{{ id }}", id="a/b?c") == "a%2Fb%3Fc"


def test_the_urlencode_part_filter_leaves_dots_alone():
    assert ev("{{ v | urlencode_part }}", v="..") == ".."


def test_literal_text_of_a_path_template_is_not_encoded():
    assert path("/api/v2/search?type=contact&q={{ q }}", q="a&b") == "/api/v2/search?type=contact&q=a%26b"


def test_path_encoding_does_not_leak_into_other_values():
    assert ev("/customers/{{ id }}", id="a/b") == "/customers/a/b"


# --- the fast paths give exactly what Jinja gives ---------------------------------------------

FAST_CONTEXT: dict[str, Any] = {
    "record": {"id": 7, "name": "Jane", "owner": None, "tags": ["a", "b"], "items": 3, "nested": {"x": "y"},
               "empty": "", "zero": 0, "stamp": "2024-05-01T09:00:00.000Z"},
    "body": {"email": "j@example.com"},
    "settings": {"base_url": "https://crm.example"},
    "rows": [{"id": 1}],
}
FAST_COVERED = [
    "{{ record.id }}", "{{ record.id | string }}", "{{ record.name }}", "{{ record.nested.x }}",
    "{{ record['name'] }}", "{{ record.tags[1] }}", "{{ rows[0].id | string }}",
    "{{ record.missing | default('') }}", "{{ record.missing | default(none) }}",
    "{{ record.missing | default(omit) }}", "{{ record.owner.name | default('nobody') }}",
    "{{ record.empty | default('x') }}", "{{ record.zero | default(5) | string }}",
    "{{ record.missing | default(3) | string }}", "{{ record.owner | string }}",
    "{{ body.email is defined }}", "{{ body.phone is defined }}", "{{ body.phone is not defined }}",
    "{{ record.owner is none }}", "{{ 'DEMO-' ~ record.id }}", "{{ record.id ~ '/' ~ record.name }}",
    "{{ settings.base_url }}/customers/{{ record.id }}", "x{{ record.missing | default('') }}y",
    "{{ record.tags }} and {{ record.nested }}", "  {{- record.name -}}  ", "{{ record.missing }}",
    "{{ record.owner.name }}", "{{ record.missing }}/x",
    "{{ 'closed' if record.name == 'Jane' else 'open' }}", "{{ 'x' if record.name != 'Jane' else record.id }}",
    "{{ record.owner.name if record.owner is defined else omit }}",
    "{{ record.id if record.missing is defined else omit }}",
    "{{ record.name if record.tags else 'none' }}", "{{ record.name if record.empty else record.zero }}",
    "{{ record.missing if record.missing is defined else 1 }}", "{{ record.id == 7 }}", "{{ 1 if record.x else 2 }}",
    "{{ 1 if record.missing == 2 else 3 }}", "{{ record.missing.x if record.owner is none else 2 }}",
    # our own filters, list and dict literals, 'and' / 'or' in conditions
    "{{ record.missing | default([]) }}", "{{ record.tags | default([]) }}", "{{ record.missing | default({}) }}",
    "{{ record.stamp | isodate }}", "{{ record | merge({'extra': record.id}) }}", "{{ [record.id, 'x'] }}",
    "{{ record | without('tags', 'nested') | rename_keys({'name': 'first_name'}) }}",
    "{{ rows | match_all(record | only('id'), ignore_case=true) if record else [] }}",
    "{{ {'id': record.id, 'who': record.name} if record.owner or record.name else omit }}",
    "{{ 1 if record.name and record.missing is defined else 2 }}", "{{ 1 if record.empty or record.zero else 2 }}",
    "{{ record.name | search_phrase }}", "at {{ record.stamp | isodate }}", "{{ record.tags | as_list }}",
    # a one-expression shape: '~' inside a dict literal
    "{{ record | only('name') | merge({'id': record.id | string, 'uri': settings.base_url ~ '/c/' ~ record.id}) }}",
    "{{ [record.name ~ '!', record.owner ~ ''] }}",
]
FAST_TEMPLATES = FAST_COVERED + [
    # shapes the fast path hands to Jinja: the same answers, or the same errors
    "{{ record.tags[-1] }}",
    "{{ record.items }}", "{{ record.keys }}", "{{ omit }}", "{{ record.tags.0 }}", "{{ record.tags[5] | default(1) }}",
    "{{ record.missing | string }}", "{{ nothing.at.all }}",
    "{{ record.missing.deeper | default(1) }}", "{{ record.name | upper }}", "{{ range(2) | list }}",
    "{{ record.__class__ }}", "{{ record.owner is none and body.email is defined }}",
    "{{ record.missing | isodate }}", "{{ record.name | isodate }}", "{{ record.missing | merge({}) }}",
    "{{ 1 if record.missing or record.name else 2 }}",
    "{{ record | merge(record.tags) }}", "{{ record.name | re_sub('a', 'x', 'y') }}",
    "{{ {'uri': settings.base_url ~ record.missing} }}", "{{ '020 7946 0018' | e164('GB') }}",
    "{{ [record.nested] | rank_matches(body) }}",
]


def _slow(compiled: Any, context: dict[str, Any]) -> Any:
    compiled._plan = None  # the same template, through Jinja only
    return compiled.evaluate(context)


@pytest.mark.parametrize("source", FAST_TEMPLATES)
@pytest.mark.parametrize("env", [ENV, PATH_ENV], ids=["value", "path"])
def test_the_fast_paths_answer_exactly_what_jinja_answers(source, env):
    outcomes = []
    for compiled in (compile_string(source, "m.yaml:1 x", env), compile_string(source, "m.yaml:1 x", env)):
        try:
            value: Any = compiled.evaluate(FAST_CONTEXT) if not outcomes else _slow(compiled, FAST_CONTEXT)
            outcomes.append(("value", type(value), value if value is not OMIT else "omit"))
        except MappingRuntimeError as exc:
            outcomes.append(("error", MappingRuntimeError, exc.message))
    assert outcomes[0] == outcomes[1]


def test_the_fast_paths_cover_the_common_shapes():
    planned = [s for s in FAST_COVERED if compile_string(s, "m.yaml:1 x")._plan is not None]
    assert planned == FAST_COVERED


def test_search_phrase_keeps_one_phrase_whatever_the_value_holds():
    assert ev("{{ v | search_phrase }}", v='qqq" name:"Ann') == '"qqq name: Ann"'
    assert ev("{{ v | search_phrase }}", v="a\\b") == '"a b"'
    assert ev("{{ v | search_phrase }}", v='"') == '""'
    assert ev("{{ v | search_phrase }}", v="line\nbreak\x00 \t end") == '"line break end"'
    assert ev("{{ v | search_phrase }}", v="\ud800x") == '"x"'  # a lone surrogate cannot be sent at all
    assert ev("{{ v | search_phrase }}", v=None) == '""'


def test_soql_string_uses_only_the_documented_escapes():
    assert ev("{{ v | soql_string }}", v="x' OR Name LIKE '%") == "'x\\' OR Name LIKE \\'%'"
    assert ev("{{ v | soql_string }}", v="a\nb\r\t\b\f\"\\") == "'a\\nb\\r\\t\\b\\f\\\"\\\\'"
    assert ev("{{ v | soql_string }}", v="bell\x07 del\x7f") == "'bell del'"
    assert ev("{{ v | soql_string }}", v="50%_off") == "'50%_off'"  # wildcards only in LIKE


def test_the_query_language_recipe_prints_what_the_docs_say_the_crm_received():
    from pathlib import Path

    from tests.targets.registry import ROOT

    doc = Path(ROOT, "docs", "mapping-language.md").read_text(encoding="utf-8")
    recipe = doc.split("### 8.7 ", 1)[1].split("### 8.8 ", 1)[0]
    received = recipe.split("the CRM received:\n\n```\n", 1)[1].split("```", 1)[0].splitlines()
    email, name = 'o"hara\\@x.io', "O'Brien_100%"
    assert received == [
        ev('type:user email:{{ email | search_phrase }}', email=email),
        ev("SELECT Id, Name, Email FROM Contact WHERE Email = {{ email | soql_string }} "
           "AND LastName LIKE '{{ name | backslash_escape(\"\\\\'%_\") }}%'", email=email, name=name),
    ]


# --- failures outside Jinja's own errors stay in the hierarchy, with the place (#6) -----------

@pytest.mark.parametrize(("template", "said"), [
    ("{{ 'x' | rename_keys({'a': 'b'}) }}", "AttributeError: 'str' object has no attribute 'items'"),
    ("{{ 'x' | re_sub('(', '') }}", "a regular expression in it is not valid"),
    ("text {{ 'x' | re_sub('[', '') }}", "a regular expression in it is not valid"),
])
def test_a_filter_that_raises_any_exception_is_a_mapping_error_naming_the_place(template: str, said: str):
    with pytest.raises(MappingRuntimeError) as caught:
        compile_value(template, "m.yaml:7 operations.search.result").evaluate({})
    assert caught.value.code == "mapping_error"
    assert "m.yaml:7 operations.search.result" in caught.value.message
    assert said in caught.value.message


def test_a_missing_key_inside_a_built_structure_is_a_missing_value_not_an_undefined_inside_the_data():
    value = compile_value("{{ {'case': {'owner': record.owner}} }}", "m.yaml:9 shapes.case")
    with pytest.raises(MissingValue) as caught:
        value.evaluate({"record": {"id": 1}})
    assert caught.value.code == "crm_error"
    assert "m.yaml:9 shapes.case" in caught.value.message
    assert "has no attribute 'owner'" in caught.value.message


# --- dig: a safe path lookup ---------------------------------------------------

GRAPHQL_ERROR = {"errors": [{"message": "taken", "extensions": {"code": "DUPLICATE"}}]}


@pytest.mark.parametrize(("template", "response", "expected"), [
    ("{{ response | dig('errors', 0, 'extensions', 'code') }}", GRAPHQL_ERROR, "DUPLICATE"),
    ("{{ response | dig('errors', -1, 'message') }}", GRAPHQL_ERROR, "taken"),
    ("{{ response | dig('errors', 1, 'extensions', 'code') }}", GRAPHQL_ERROR, None),
    ("{{ response | dig('errors', 0, 'nope', 'code') }}", GRAPHQL_ERROR, None),
    ("{{ response | dig('errors', 0, 'extensions', 'code') }}", "<html>Bad gateway</html>", None),
    ("{{ response | dig('errors', 0) }}", None, None),
    ("{{ response | dig('errors', '0') }}", GRAPHQL_ERROR, None),
    ("{{ response | dig('errors', 0, 'extensions', 'code', default='NONE') }}", {"errors": []}, "NONE"),
    ("{{ response | dig('errors', 0, 'x', default=[]) }}", {"errors": [{"x": None}]}, []),
])
def test_dig_follows_keys_and_positions_and_gives_none_or_the_default_when_any_part_is_missing(
        template, response, expected):
    assert ev(template, response=response) == expected


def test_dig_on_an_undefined_value_gives_the_default_instead_of_failing():
    assert ev("{{ missing.deeper | dig('a', default='-') }}", missing={}) == "-"
