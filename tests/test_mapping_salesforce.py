"""mappings/salesforce.yaml against the Salesforce fake, through our real server.

The Khoros scenario (tests/test_khoros_scenario.py) proves every operation works;
these tests pin what is particular to Salesforce: values from Khoros reach SOQL
only as escaped literals, the OAuth token is shared and renewed once on
401 INVALID_SESSION_ID, PATCH answers 204 so records are read back, interactions
are FeedItem link posts read back from the case feed, Salesforce's error arrays
become Khoros errors with Khoros field names, and /meta/object/case lists the
org's picklists live (and from cache when Salesforce is down).

The fake is shared by the whole session: every test makes its own data unique
with a uuid, and the ``fake`` fixture disarms every fault knob afterwards.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mapper.core.engine import Engine
from mapper.errors import ConfigError
from tests.conftest import Fake
from tests.fakes.salesforce import Comparison, Literal, Logical, RecordedRequest, error_body
from tests.support.khoros import KhorosClient
from tests.support.mappings import without_live_cache
from tests.targets.registry import ROOT

pytestmark = pytest.mark.vendor

MAPPING = f"{ROOT}/mappings/salesforce.yaml"
API = "/services/data/v66.0"
TRACE = re.compile(r"\(trace ([0-9a-f]{16})\)")
HOSTILE = [
    "x' OR Name LIKE '%",               # closes the literal and matches every contact if pasted raw
    "x\\' OR Name LIKE \\'%",           # defeats escaping that doubles the quote but forgets the backslash
    "x\\",                              # a trailing backslash would escape the closing quote
]


# --- fixtures and helpers -----------------------------------------------------------


@pytest.fixture()
def fake(salesforce_fake: Fake) -> Iterator[Fake]:
    """The session's fake, with every fault knob disarmed after the test, pass or fail."""
    yield salesforce_fake
    state = salesforce_fake.state
    with state.lock:
        state._failures.clear()  # no public reset: a failed test must not leave one armed
    state.restricted_picklists = False
    state.slow_seconds = 0.0


@pytest.fixture(scope="module")
def khoros(bridge: Callable[[str, dict[str, str]], KhorosClient], salesforce_env: dict[str, str]) -> KhorosClient:
    return bridge(MAPPING, salesforce_env)


def unique() -> str:
    return uuid.uuid4().hex[:10]


def since(fake: Fake, mark: int) -> list[RecordedRequest]:
    """The requests the fake received after ``mark = len(fake.state.requests)``."""
    return fake.state.requests[mark:]


def api_calls(requests: list[RecordedRequest], method: str, path_part: str) -> list[RecordedRequest]:
    return [r for r in requests if r.method == method and path_part in r.path]


def new_customer(khoros: KhorosClient, tag: str, **fields: Any) -> dict[str, Any]:
    answer = khoros.create_customer({"firstName": "Jane", "lastName": f"Doe{tag}",
                                     "email": f"jane.{tag}@example.com", **fields})
    assert answer.status == 201, answer.body
    return answer.body


def interaction(tag: str, n: int, **extra: Any) -> dict[str, Any]:
    return {"created": f"2021-03-0{n}T10:00:0{n}Z", "body": f"Post {n} {tag}: it broke\nagain",
            "linkUrl": f"https://twitter.com/jane/status/{tag}{n}", "serviceId": f"{tag}{n}",
            "service": "twitter", "contentType": "post", **extra}


def assert_khoros_error(answer: Any, status: int, code: str) -> str:
    """The status and code, a trace id in the message matching X-Trace-Id; returns the message."""
    assert answer.status == status, answer.body
    assert answer.body["error"] == code
    match = TRACE.search(answer.body["message"])
    assert match and answer.headers["X-Trace-Id"] == match.group(1)
    return str(answer.body["message"])


# --- (a) SOQL injection ------------------------------------------------------------------


@pytest.mark.parametrize("hostile", HOSTILE)
def test_a_search_value_reaches_soql_as_one_escaped_literal(khoros: KhorosClient, fake: Fake,
                                                            hostile: str) -> None:
    tag = unique()
    decoys = [new_customer(khoros, tag + str(n))["id"] for n in range(2)]
    answer = khoros.search({"lastName": hostile})
    assert answer.status == 200, answer.body
    assert answer.body == []
    assert not set(decoys) & {c["id"] for c in answer.body}
    query = fake.state.requests[-1].soql
    assert query is not None and query.sobject.name == "Contact"
    condition = query.where  # one comparison: nothing from the value became SOQL syntax
    assert isinstance(condition, Comparison) and (condition.field, condition.op) == ("LastName", "=")
    assert isinstance(condition.value, Literal)
    assert (condition.value.kind, condition.value.value) == ("string", hostile)


@pytest.mark.parametrize("hostile", HOSTILE)
def test_a_best_match_value_reaches_soql_as_one_escaped_literal(khoros: KhorosClient, fake: Fake,
                                                                hostile: str) -> None:
    tag = unique()
    new_customer(khoros, tag)
    mark = len(fake.state.requests)
    answer = khoros.best_match({"email": hostile, "displayName": hostile, "phoneNumbers": [hostile]})
    assert answer.status == 200, answer.body
    assert answer.body == []
    queries = [r.soql for r in since(fake, mark) if r.soql is not None]
    assert len(queries) == 1  # one query ORs every identifier, and found nobody
    where = queries[0].where
    assert isinstance(where, Logical) and where.op == "OR"  # nothing from the value became SOQL syntax
    email, phone, mobile, name = where.parts
    assert isinstance(email, Comparison) and email.field == "Email" and email.value.value == hostile  # type: ignore[union-attr]
    assert isinstance(name, Comparison) and name.field == "Name" and name.value.value == hostile  # type: ignore[union-attr]
    for part, field in ((phone, "Phone"), (mobile, "MobilePhone")):
        assert isinstance(part, Comparison) and part.op == "IN" and part.field == field
        assert [item.value for item in part.value] == [hostile]  # type: ignore[union-attr]


def test_a_value_with_quotes_and_backslashes_still_finds_its_customer(khoros: KhorosClient) -> None:
    tag = unique()
    last_name = f"O'Brien\\{tag}"
    created = new_customer(khoros, tag, lastName=last_name)
    answer = khoros.search({"lastName": last_name})
    assert [c["id"] for c in answer.body] == [created["id"]]
    match = khoros.best_match({"displayName": f"Jane {last_name}"})
    assert [c["id"] for c in match.body] == [created["id"]]


def test_search_by_a_field_salesforce_cannot_filter_is_400(khoros: KhorosClient, fake: Fake) -> None:
    mark = len(fake.state.requests)
    answer = khoros.search({"description": "anything"})
    message = assert_khoros_error(answer, 400, "bad_request")
    assert "description" in message
    assert since(fake, mark) == []


# --- (b) OAuth: one token, renewed once on 401 -----------------------------------------------


def test_one_token_serves_many_calls_and_is_renewed_once_when_it_expires(
        bridge: Callable[[str, dict[str, str]], KhorosClient], salesforce_env: dict[str, str],
        fake: Fake) -> None:
    state = fake.state
    start = state.token_requests
    mark = len(state.requests)
    khoros = bridge(MAPPING, salesforce_env)  # a fresh engine: no token yet
    tag = unique()
    customer = new_customer(khoros, tag)
    assert khoros.get_customer(customer["id"]).status == 200
    assert khoros.search({"email": f"jane.{tag}@example.com"}).status == 200
    assert khoros.customer_cases(customer["id"]).status == 200
    assert state.token_requests - start == 1
    [token_call] = [r for r in since(fake, mark) if r.path == "/services/oauth2/token"]
    assert token_call.form["grant_type"] == ["client_credentials"]
    assert token_call.form["client_id"] == [salesforce_env["SALESFORCE_CLIENT_ID"]]
    bearers = {r.header("Authorization") for r in since(fake, mark) if r.path.startswith(API)}
    assert len(bearers) == 1 and next(iter(bearers)).startswith("Bearer ")

    state.expire_tokens()
    mark = len(state.requests)
    again = khoros.get_customer(customer["id"])
    assert again.status == 200, again.body
    assert again.body["id"] == customer["id"]
    assert state.token_requests - start == 2
    paths = [r.path for r in since(fake, mark)]
    contact = f"{API}/sobjects/Contact/{customer['id']}"
    assert paths == [contact, "/services/oauth2/token", contact]  # 401, new token, the same call again


def test_the_refresh_token_grant_is_chosen_by_a_setting(
        bridge: Callable[[str, dict[str, str]], KhorosClient], salesforce_env: dict[str, str],
        fake: Fake) -> None:
    environ = {**salesforce_env, "SALESFORCE_GRANT": "refresh_token",
               "SALESFORCE_REFRESH_TOKEN": fake.state.refresh_token}
    khoros = bridge(MAPPING, environ)
    mark = len(fake.state.requests)
    answer = khoros.search({"email": f"nobody.{unique()}@example.com"})
    assert answer.status == 200, answer.body
    [token_call] = [r for r in since(fake, mark) if r.path == "/services/oauth2/token"]
    assert token_call.form["grant_type"] == ["refresh_token"]
    assert token_call.form["refresh_token"] == [fake.state.refresh_token]


@pytest.mark.parametrize(("extra", "key"), [
    ({"SALESFORCE_GRANT": "password"}, "connection.auth.grant"),
    ({"SALESFORCE_GRANT": "refresh_token"}, "connection.auth.refresh_token"),
])
def test_a_wrong_grant_setting_stops_the_server_at_start(salesforce_env: dict[str, str],
                                                         extra: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Engine.load(MAPPING, {**salesforce_env, **extra})
    assert [p.key for p in caught.value.problems] == [key]


def test_wrong_client_credentials_are_a_500_that_names_the_credentials_not_the_secret(
        bridge: Callable[[str, dict[str, str]], KhorosClient], salesforce_env: dict[str, str],
        fake: Fake) -> None:
    wrong = "not-the-secret-" + unique()
    khoros = bridge(MAPPING, {**salesforce_env, "SALESFORCE_CLIENT_SECRET": wrong})
    mark = len(fake.state.requests)
    message = assert_khoros_error(khoros.get_customer("0035g00000ZZZZZAA5"), 500, "crm_auth_failed")
    assert "credentials" in message and wrong not in message
    assert [r.path for r in since(fake, mark)] == ["/services/oauth2/token"]


def test_a_revoked_refresh_token_is_a_500_naming_the_refresh_token(
        bridge: Callable[[str, dict[str, str]], KhorosClient], salesforce_env: dict[str, str]) -> None:
    revoked = "revoked-" + unique()
    khoros = bridge(MAPPING, {**salesforce_env, "SALESFORCE_GRANT": "refresh_token",
                              "SALESFORCE_REFRESH_TOKEN": revoked})
    message = assert_khoros_error(khoros.search({"lastName": "Doe"}), 500, "crm_auth_failed")
    assert "refresh token" in message and revoked not in message


# --- (c) PATCH answers 204: the record is read back ---------------------------------------------


def test_update_customer_patches_salesforce_names_and_reads_the_whole_contact_back(
        khoros: KhorosClient, fake: Fake) -> None:
    tag = unique()
    customer = new_customer(khoros, tag, phone="+1 555 0101")
    mark = len(fake.state.requests)
    answer = khoros.update_customer(customer["id"], {"jobTitle": "Support Lead", "phone": ""})
    assert answer.status == 200, answer.body
    patch, read = since(fake, mark)  # PATCH answers 204 with no body, so a GET follows
    contact = f"{API}/sobjects/Contact/{customer['id']}"
    assert (patch.method, patch.path, read.method, read.path) == ("PATCH", contact, "GET", contact)
    assert patch.json == {"Title": "Support Lead", "Phone": None}
    assert answer.body["jobTitle"] == "Support Lead"
    assert "phone" not in answer.body  # cleared in Salesforce
    assert answer.body["lastName"] == f"Doe{tag}"  # not in the PATCH: read back from Salesforce


def test_update_case_patches_status_reads_back_and_closes(khoros: KhorosClient, fake: Fake) -> None:
    tag = unique()
    customer = new_customer(khoros, tag)
    case = khoros.create_case({"customerId": customer["id"], "title": f"Case {tag}"}).body
    answer = khoros.update_case(case["id"], {"caseStatus": "Closed"})
    assert answer.status == 200, answer.body
    assert answer.body["status"] == "closed" and answer.body["caseStatus"] == "Closed"
    assert answer.body["title"] == f"Case {tag}"
    assert fake.state.get("Case", case["id"])["IsClosed"] is True


@pytest.mark.parametrize("body", [{"caseStatus": "Working"}, {"interactions": [interaction("x", 1)]}])
def test_update_of_an_unknown_case_is_404(khoros: KhorosClient, body: dict[str, Any]) -> None:
    assert_khoros_error(khoros.update_case("5005g00000ZZZZZAA5", body), 404, "not_found")


def test_update_of_an_unknown_customer_is_404(khoros: KhorosClient) -> None:
    assert_khoros_error(khoros.update_customer("0035g00000ZZZZZAA5", {"firstName": "X"}), 404, "not_found")


# --- (d) interactions are FeedItem link posts --------------------------------------------------


def test_interactions_become_feed_link_posts_and_read_back_whole(khoros: KhorosClient, fake: Fake) -> None:
    tag = unique()
    customer = new_customer(khoros, tag)
    author = {"service": "twitter", "serviceId": "991", "handle": "jane", "name": "Jane <Doe> & 'co'",
              "brandOwned": False}
    sent = [interaction(tag, 1, author=author), interaction(tag, 2, linkUrl="")]
    case = khoros.create_case({"customerId": customer["id"], "title": f"Case {tag}", "interactions": sent})
    assert case.status == 201, case.body

    posts = [p for p in fake.state.records("FeedItem") if p["ParentId"] == case.body["id"]]
    assert [p["Type"] for p in posts] == ["LinkPost", "TextPost"]
    assert posts[0]["LinkUrl"] == sent[0]["linkUrl"]
    assert posts[0]["Title"] == "twitter post by @jane (Jane <Doe> & 'co')"
    assert posts[0]["Body"].startswith(sent[0]["body"] + "\n")  # agents read the post text first

    looked_up = khoros.get_case(case.body["id"])
    assert looked_up.status == 200
    got = {item["serviceId"]: item for item in looked_up.body["interactions"]}
    assert set(got) == {f"{tag}1", f"{tag}2"}
    assert got[f"{tag}1"] == sent[0]
    assert got[f"{tag}2"] == sent[1]
    assert case.body["interactions"] == looked_up.body["interactions"]


def test_feed_posts_the_bridge_did_not_write_are_not_read_as_interactions(khoros: KhorosClient,
                                                                          fake: Fake) -> None:
    tag = unique()
    customer = new_customer(khoros, tag)
    case = khoros.create_case({"customerId": customer["id"], "title": f"Case {tag}",
                               "interactions": [interaction(tag, 1)]}).body
    fake.state.seed("FeedItem", ParentId=case["id"], Body="Internal: refund approved")
    fake.state.seed("FeedItem", ParentId=case["id"], Body="Tag at the end\nkhoros-interaction: not json")
    answer = khoros.get_case(case["id"])
    assert answer.status == 200, answer.body
    assert [i["serviceId"] for i in answer.body["interactions"]] == [f"{tag}1"]


def test_a_link_too_long_for_a_feed_item_is_422_before_anything_is_created(khoros: KhorosClient,
                                                                            fake: Fake) -> None:
    tag = unique()
    customer = new_customer(khoros, tag)
    mark = len(fake.state.requests)
    long_link = "https://example.com/" + "x" * 1000
    answer = khoros.create_case({"customerId": customer["id"], "title": f"Case {tag}",
                                 "interactions": [interaction(tag, 1), interaction(tag, 2, linkUrl=long_link)]})
    assert_khoros_error(answer, 422, "validation_failed")
    assert [f["name"] for f in answer.body["fields"]] == ["interactions[1].linkUrl"]
    assert api_calls(since(fake, mark), "POST", "/sobjects/") == []


def test_a_refused_feed_item_names_the_interaction_field(khoros: KhorosClient, fake: Fake) -> None:
    tag = unique()
    customer = new_customer(khoros, tag)
    case = khoros.create_case({"customerId": customer["id"], "title": f"Case {tag}"}).body
    # The update first checks the case exists (answered as Salesforce would), looks for the item
    # in the case feed (a retried update must not post it twice), then posts the item.
    fake.state.fail_next(200, {"attributes": {"type": "Case"}, "Id": case["id"]})
    fake.state.fail_next(200, {"totalSize": 0, "done": True, "records": []})
    fake.state.fail_next(400, error_body("STRING_TOO_LONG", "Link URL: data value too large", ["LinkUrl"]))
    answer = khoros.update_case(case["id"], {"interactions": [interaction(tag, 1)]})
    message = assert_khoros_error(answer, 422, "validation_failed")
    assert [f["name"] for f in answer.body["fields"]] == ["interactions[0].linkUrl"]
    assert f"Case {case['id']} was saved" in message


# --- Salesforce errors become Khoros errors ---------------------------------------------------


def test_field_errors_from_salesforce_are_422_with_khoros_field_names(khoros: KhorosClient, fake: Fake) -> None:
    """An org validation rule refusing two fields, and a required-fields error naming two more."""
    fake.state.fail_next(400, [
        {"message": "Email: invalid email address: x", "errorCode": "INVALID_EMAIL_ADDRESS", "fields": ["Email"]},
        {"message": "Required fields are missing: [MailingCity, MobilePhone]",
         "errorCode": "REQUIRED_FIELD_MISSING", "fields": ["MailingCity", "MobilePhone"]},
    ])
    answer = khoros.create_customer({"lastName": f"Doe{unique()}", "email": "jane@example.com"})
    assert_khoros_error(answer, 422, "validation_failed")
    fields = {f["name"]: f["errorMessage"] for f in answer.body["fields"]}
    assert list(fields) == ["email", "mailingCity", "mobilePhone"]
    assert fields["mailingCity"].startswith("is required in Salesforce")


def test_a_restricted_picklist_refusal_names_the_khoros_field(khoros: KhorosClient, fake: Fake) -> None:
    tag = unique()
    customer = new_customer(khoros, tag)
    case = khoros.create_case({"customerId": customer["id"], "title": f"Case {tag}"}).body
    fake.state.restricted_picklists = True
    answer = khoros.update_case(case["id"], {"priority": "Urgent"})
    assert_khoros_error(answer, 422, "validation_failed")
    assert [f["name"] for f in answer.body["fields"]] == ["priority"]
    assert fake.state.get("Case", case["id"])["Priority"] == "Medium"


def test_a_validation_rule_without_fields_is_422_with_its_message(khoros: KhorosClient, fake: Fake) -> None:
    customer = new_customer(khoros, unique())
    fake.state.fail_next(400, error_body("FIELD_CUSTOM_VALIDATION_EXCEPTION", "Give a reason before closing", []))
    answer = khoros.update_customer(customer["id"], {"jobTitle": "CEO"})
    message = assert_khoros_error(answer, 422, "validation_failed")
    assert "Give a reason before closing" in message
    assert answer.body["fields"] == []


def test_a_429_within_the_budget_is_waited_out(khoros: KhorosClient, fake: Fake) -> None:
    tag = unique()
    customer = new_customer(khoros, tag)
    fake.state.fail_next(429, error_body("REQUEST_LIMIT_EXCEEDED", "slow down"), {"Retry-After": "1"})
    mark = len(fake.state.requests)
    answer = khoros.get_customer(customer["id"])
    assert answer.status == 200, answer.body
    assert answer.body["id"] == customer["id"]
    assert len(api_calls(since(fake, mark), "GET", f"/sobjects/Contact/{customer['id']}")) == 2


def test_a_429_longer_than_the_budget_is_a_clear_500_without_waiting(khoros: KhorosClient, fake: Fake) -> None:
    fake.state.fail_next(429, error_body("REQUEST_LIMIT_EXCEEDED", "slow down"), {"Retry-After": "30"})
    mark = len(fake.state.requests)
    message = assert_khoros_error(khoros.search({"lastName": "Doe"}), 500, "crm_rate_limited")
    assert "429" in message and "try again" in message
    assert len(api_calls(since(fake, mark), "GET", "/query")) == 1


def test_the_daily_api_limit_is_a_500_saying_so(khoros: KhorosClient, fake: Fake) -> None:
    fake.state.fail_next(403, error_body("REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded."))
    message = assert_khoros_error(khoros.search({"lastName": "Doe"}), 500, "crm_rate_limited")
    assert "REQUEST_LIMIT_EXCEEDED" in message


@pytest.mark.parametrize("status", [500, 503])
def test_a_salesforce_failure_is_a_500_with_a_trace_id(khoros: KhorosClient, fake: Fake, status: int) -> None:
    for _ in range(3):  # a read is tried three times (two retries): every try fails
        fake.state.fail_next(status, "<html>Service Unavailable</html>")
    message = assert_khoros_error(khoros.get_case("5005g00000ZZZZZAA5"), 500, "crm_unavailable")
    assert f"HTTP {status}" in message and "Salesforce" in message


# --- the live data model ------------------------------------------------------------------------


def test_case_meta_lists_the_orgs_picklists_from_describe(khoros: KhorosClient) -> None:
    answer = khoros.meta("case")
    assert answer.status == 200
    fields = {f["name"]: f for f in answer.body["fields"]}
    assert fields["caseStatus"]["type"] == "single_sel_list"
    assert fields["caseStatus"]["listValues"] == [{"name": v, "value": v}
                                                  for v in ("New", "Working", "Escalated", "Closed")]
    assert [v["value"] for v in fields["priority"]["listValues"]] == ["High", "Medium", "Low"]
    assert fields["origin"]["label"] == "Case Origin"  # the org's own label
    assert fields["title"]["type"] == "text"  # declared fields stay


def test_case_meta_is_cached_between_calls(bridge: Callable[[str, dict[str, str]], KhorosClient],
                                           salesforce_env: dict[str, str], fake: Fake) -> None:
    khoros = bridge(MAPPING, salesforce_env)
    mark = len(fake.state.requests)
    first, second = khoros.meta("case"), khoros.meta("case")
    assert first.status == second.status == 200 and first.body == second.body
    assert len(api_calls(since(fake, mark), "GET", "/sobjects/Case/describe")) == 1


@pytest.fixture
def uncached_mapping(tmp_path: Path) -> str:
    """The shipped mapping with cache_seconds 0: every /meta call asks Salesforce again."""
    return without_live_cache(MAPPING, tmp_path, expected=1)


def test_case_meta_answers_the_last_good_answer_when_salesforce_is_down(
        bridge: Callable[[str, dict[str, str]], KhorosClient], salesforce_env: dict[str, str],
        fake: Fake, uncached_mapping: str) -> None:
    khoros = bridge(uncached_mapping, salesforce_env)
    good = khoros.meta("case")
    assert good.status == 200
    for _ in range(3):  # a read is tried three times (two retries): every try fails
        fake.state.fail_next(503, "<html>down for maintenance</html>")
    mark = len(fake.state.requests)
    stale = khoros.meta("case")
    assert stale.status == 200
    assert stale.body == good.body
    assert len(api_calls(since(fake, mark), "GET", "/sobjects/Case/describe")) == 3  # it did ask, and failed


def test_case_meta_with_no_good_answer_yet_is_a_500(
        bridge: Callable[[str, dict[str, str]], KhorosClient], salesforce_env: dict[str, str],
        fake: Fake, uncached_mapping: str) -> None:
    khoros = bridge(uncached_mapping, salesforce_env)
    for _ in range(3):  # a read is tried three times (two retries): every try fails
        fake.state.fail_next(503, "<html>down for maintenance</html>")
    assert_khoros_error(khoros.meta("case"), 500, "crm_unavailable")


def test_many_calls_refused_at_once_share_one_new_token(
        bridge: Callable[[str, dict[str, str]], KhorosClient], salesforce_env: dict[str, str],
        fake: Fake) -> None:
    from concurrent.futures import ThreadPoolExecutor

    state = fake.state
    khoros = bridge(MAPPING, salesforce_env)
    customer = new_customer(khoros, unique())
    state.expire_tokens()
    before = state.token_requests
    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(lambda _: khoros.get_customer(customer["id"]), range(6)))
    assert [a.status for a in answers] == [200] * 6
    assert state.token_requests - before == 1
