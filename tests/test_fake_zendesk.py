"""The Zendesk fake behaves as Zendesk's documentation says, over real HTTP.

These tests pin the fake itself, so that mapping tests built on it inherit
documented behaviour: envelopes, status codes, error bodies, search quoting,
comments and injected faults. Facts and sources: docs/vendors/zendesk-api.md.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
import requests

from tests.fakes.zendesk import SearchTerm, ZendeskState, create_app
from tests.support.live_server import LiveServer, serve


class Zendesk:
    """A tiny authenticated client for one live fake, so tests read as calls."""

    def __init__(self, server: LiveServer, state: ZendeskState) -> None:
        self.base = server.url
        self.session = requests.Session()
        self.session.auth = (state.basic_username, state.api_tokens[0])
        self.session.headers["Accept"] = "application/json"

    def get(self, path: str, **params: Any) -> requests.Response:
        return self.session.get(self.base + path, params=params, timeout=5)

    def post(self, path: str, body: Any) -> requests.Response:
        return self.session.post(self.base + path, json=body, timeout=5)

    def put(self, path: str, body: Any) -> requests.Response:
        return self.session.put(self.base + path, json=body, timeout=5)


@pytest.fixture
def state() -> ZendeskState:
    return ZendeskState(agent_email="agent@example.com", api_token="test-token")


@pytest.fixture
def server(state: ZendeskState) -> Iterator[LiveServer]:
    with serve(create_app(state)) as live:
        yield live


@pytest.fixture
def zendesk(server: LiveServer, state: ZendeskState) -> Iterator[Zendesk]:
    client = Zendesk(server, state)
    with client.session:
        yield client


def _iso_z(stamp: str) -> datetime:
    assert stamp.endswith("Z"), stamp
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")


# ------------------------------------------------------------------ auth


@pytest.mark.parametrize("credentials", [
    ("agent@example.com/token", "wrong-token"),
    ("agent@example.com", "test-token"),          # password auth, not token auth
    ("other@example.com/token", "test-token"),
    None,
])
def test_bad_credentials_get_zendesks_401_body(
        server: LiveServer, credentials: tuple[str, str] | None) -> None:
    response = requests.get(f"{server.url}/api/v2/users/1.json", auth=credentials, timeout=5)

    assert response.status_code == 401
    assert response.json() == {"error": "Couldn't authenticate you"}
    assert response.headers["WWW-Authenticate"] == 'Basic realm="Web Password"'


def test_any_active_token_authenticates(zendesk: Zendesk, state: ZendeskState) -> None:
    state.api_tokens.append("rotated-token")
    zendesk.session.auth = (state.basic_username, "rotated-token")

    assert zendesk.get("/api/v2/ticket_fields").status_code == 200


# ------------------------------------------------------------------ users


def test_create_user_returns_201_with_user_envelope(zendesk: Zendesk) -> None:
    response = zendesk.post("/api/v2/users.json", {"user": {
        "name": "Ann Lee", "email": "ann@example.org", "phone": "+1 555 0100",
        "user_fields": {"tier": "gold"}}})

    assert response.status_code == 201
    user = response.json()["user"]
    assert isinstance(user["id"], int)
    assert user["email"] == "ann@example.org"
    assert user["role"] == "end-user"
    assert user["user_fields"] == {"tier": "gold"}
    assert user["url"].endswith(f"/api/v2/users/{user['id']}.json")
    assert response.headers["Location"] == user["url"]
    _iso_z(user["created_at"])
    assert zendesk.get(f"/api/v2/users/{user['id']}").json() == {"user": user}


def test_update_user_keeps_primary_email_and_merges_user_fields(
        zendesk: Zendesk, state: ZendeskState) -> None:
    user = state.add_user(name="Ann", email="ann@example.org")

    response = zendesk.put(f"/api/v2/users/{user['id']}.json", {"user": {
        "email": "new@example.org", "user_fields": {"tier": "silver"}, "id": 1}})

    assert response.status_code == 200
    assert response.json()["user"]["email"] == "ann@example.org"
    assert response.json()["user"]["user_fields"] == {"tier": "silver"}
    assert state.secondary_emails[user["id"]] == ["new@example.org"]
    assert "user.id" in response.headers["X-Zendesk-API-Warn"]


def test_unknown_user_is_404_record_not_found(zendesk: Zendesk) -> None:
    response = zendesk.get("/api/v2/users/424242.json")

    assert response.status_code == 404
    assert response.json() == {"error": "RecordNotFound", "description": "Not found"}


def test_duplicate_email_is_422_record_invalid(zendesk: Zendesk, state: ZendeskState) -> None:
    state.add_user(name="Ann", email="ann@example.org")

    response = zendesk.post("/api/v2/users", {"user": {"name": "Bo", "email": "ann@example.org"}})

    assert response.status_code == 422
    assert response.json() == {
        "error": "RecordInvalid", "description": "Record validation errors",
        "details": {"email": [{
            "description": "Email: ann@example.org is already being used by another user",
            "error": "DuplicateValue"}]}}


# ------------------------------------------------------------------ search


def test_quoted_value_keeps_operators_literal(zendesk: Zendesk, state: ZendeskState) -> None:
    tricky = "a OR type:ticket"
    user = state.add_user(name=tricky, email="tricky@example.org")
    state.add_ticket(requester_id=user["id"], body="a ticket that must not be found")
    query = f'type:user name:"{tricky}"'

    response = zendesk.get("/api/v2/search.json", query=query)

    assert response.status_code == 200
    body = response.json()
    assert [(r["result_type"], r["id"]) for r in body["results"]] == [("user", user["id"])]
    assert body["count"] == 1 and body["next_page"] is None
    received = state.requests[-1]
    assert received.query == {"query": [query]}
    assert "%22" in received.query_string  # quotes went over the wire encoded
    assert state.searches[-1].terms == (SearchTerm("type", "user", False),
                                        SearchTerm("name", tricky, True))


def test_a_quoted_phrase_matches_the_same_words_whatever_the_punctuation(
        zendesk: Zendesk, state: ZendeskState) -> None:
    user = state.add_user(name='Ann "the boss" O\\Lee', email="boss@example.org")

    body = zendesk.get("/api/v2/search", query='type:user name:"ann the boss o lee"').json()

    assert [r["id"] for r in body["results"]] == [user["id"]]


def test_a_backslash_does_not_escape_a_quote(zendesk: Zendesk, state: ZendeskState) -> None:
    # Zendesk documents no escape inside quotes, so the fake reads \" as a backslash that
    # ends the phrase: what follows is a term of its own (the injection issue 7 found).
    zendesk.get("/api/v2/search", query='type:user name:"qqq\\" name:"Ann"')

    assert state.searches[-1].terms == (SearchTerm("type", "user", False), SearchTerm("name", "qqq\\", True),
                                        SearchTerm("name", "Ann", True))


def test_unescaped_inner_quotes_break_the_phrase(zendesk: Zendesk, state: ZendeskState) -> None:
    state.add_user(name='"a" OR type:ticket')

    body = zendesk.get("/api/v2/search", query='type:user name:""a" OR type:ticket"').json()

    assert body["results"] == [] and body["count"] == 0


@pytest.mark.parametrize("query", [
    'type:user email:"ann@example.org"',
    'type:user phone:"+1 555 0100"',
    'type:user name:"Ann Lee"',
    'type:user "Ann Lee"',
])
def test_search_finds_a_user_by_field_or_phrase(
        zendesk: Zendesk, state: ZendeskState, query: str) -> None:
    ann = state.add_user(name="Ann Lee", email="ann@example.org", phone="+1 555 0100")
    state.add_user(name="Ann Leeds", email="leeds@example.org", phone="+1 555 0199")

    results = zendesk.get("/api/v2/search.json", query=query).json()["results"]

    assert [r["id"] for r in results][:1] == [ann["id"]]
    assert all(r["result_type"] == "user" for r in results)


def test_search_pages_with_absolute_next_page(zendesk: Zendesk, state: ZendeskState) -> None:
    ids = [state.add_user(name=f"User {n}", email=f"u{n}@example.org")["id"] for n in range(3)]

    first = zendesk.get("/api/v2/search.json", query='type:user "example.org"', per_page=2).json()
    second = zendesk.session.get(first["next_page"], timeout=5).json()

    assert first["count"] == 3 and len(first["results"]) == 2
    assert first["next_page"].startswith(zendesk.base + "/api/v2/search.json?")
    assert [r["id"] for r in first["results"] + second["results"]] == ids
    assert second["next_page"] is None and second["previous_page"]


def test_users_search_envelope(zendesk: Zendesk, state: ZendeskState) -> None:
    ann = state.add_user(name="Ann", email="ann@example.org", external_id="CRM-7")

    by_query = zendesk.get("/api/v2/users/search.json", query='email:"ann@example.org"').json()
    by_external_id = zendesk.get("/api/v2/users/search", external_id="crm-7").json()

    for body in (by_query, by_external_id):
        assert [u["id"] for u in body["users"]] == [ann["id"]]
        assert body["count"] == 1 and body["next_page"] is None


def test_unsupported_search_operator_fails_loudly(zendesk: Zendesk) -> None:
    response = zendesk.get("/api/v2/search.json", query="type:ticket created<2020-01-01")

    assert response.status_code == 400
    assert "does not implement" in response.json()["description"]


# ------------------------------------------------------------------ tickets


def test_ticket_with_comments_lists_them_in_order(zendesk: Zendesk, state: ZendeskState) -> None:
    customer = state.add_user(name="Ann", email="ann@example.org")
    product = state.ticket_field_id("Product")

    created = zendesk.post("/api/v2/tickets.json", {"ticket": {
        "subject": "Broken widget", "requester_id": customer["id"], "external_id": "K-1",
        "comment": {"body": "It broke."},
        "custom_fields": [{"id": product, "value": "gadget"}]}})
    ticket = created.json()["ticket"]
    updated = zendesk.put(f"/api/v2/tickets/{ticket['id']}.json", {"ticket": {
        "status": "pending",
        "comment": {"body": "Looking into it.", "public": False,
                    "author_id": state.agent["id"]}}})
    comments = zendesk.get(f"/api/v2/tickets/{ticket['id']}/comments.json").json()

    assert created.status_code == 201 and set(created.json()) == {"ticket", "audit"}
    assert ticket["status"] == "new" and ticket["requester_id"] == customer["id"]
    assert {"id": product, "value": "gadget"} in ticket["custom_fields"]
    assert updated.status_code == 200 and updated.json()["ticket"]["status"] == "pending"
    assert [(c["author_id"], c["body"], c["public"]) for c in comments["comments"]] == [
        (customer["id"], "It broke.", True), (state.agent["id"], "Looking into it.", False)]
    first = comments["comments"][0]
    assert {"id", "html_body", "plain_body", "created_at", "metadata", "via"} <= set(first)
    assert "It broke." in first["html_body"] and first["plain_body"] == "It broke."
    assert comments["count"] == 2
    requested = zendesk.get(f"/api/v2/users/{customer['id']}/tickets/requested").json()
    assert [t["id"] for t in requested["tickets"]] == [ticket["id"]]


def test_ticket_without_comment_is_422_description_blank(zendesk: Zendesk) -> None:
    response = zendesk.post("/api/v2/tickets", {"ticket": {"subject": "No body"}})

    assert response.status_code == 422
    assert response.json()["details"] == {
        "base": [{"description": "Description: cannot be blank", "error": "BlankValue"}]}


def test_closed_ticket_refuses_updates(zendesk: Zendesk, state: ZendeskState) -> None:
    ticket = state.add_ticket(requester_id=state.agent["id"], body="x", status="closed")

    response = zendesk.put(f"/api/v2/tickets/{ticket['id']}", {"ticket": {"status": "open"}})

    assert response.status_code == 422
    assert response.json()["details"] == {
        "status": [{"description": "Status closed prevents ticket update"}]}


def test_fields_are_seeded_with_dropdown_options(zendesk: Zendesk) -> None:
    ticket_fields = zendesk.get("/api/v2/ticket_fields.json").json()["ticket_fields"]
    user_fields = zendesk.get("/api/v2/user_fields.json").json()["user_fields"]

    by_title = {f["title"]: f for f in ticket_fields}
    assert by_title["Product"]["type"] == "tagger"
    assert {"name": "Gadget", "value": "gadget"}.items() <= \
        by_title["Product"]["custom_field_options"][2].items()
    assert [o["value"] for o in by_title["Priority"]["system_field_options"]] == [
        "low", "normal", "high", "urgent"]
    assert user_fields[0]["type"] == "dropdown" and user_fields[0]["key"] == "tier"


# ------------------------------------------------------------------ faults


def test_injected_429_carries_retry_after_then_clears(zendesk: Zendesk, state: ZendeskState) -> None:
    state.rate_limit_next(retry_after=1)

    limited = zendesk.get("/api/v2/ticket_fields")
    after = zendesk.get("/api/v2/ticket_fields")

    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "1"
    assert limited.text == "Number of allowed API requests per minute exceeded"
    assert after.status_code == 200


def test_injected_503_and_delay(zendesk: Zendesk, state: ZendeskState) -> None:
    state.fail_next(503, {"error": "unavailable"}, {"Retry-After": "5"})
    state.slow_seconds = 0.2

    started = time.monotonic()
    response = zendesk.get("/api/v2/users/1")

    assert time.monotonic() - started >= 0.2
    assert response.status_code == 503 and response.json() == {"error": "unavailable"}
    assert response.headers["Retry-After"] == "5"


def test_every_request_is_recorded(zendesk: Zendesk, state: ZendeskState) -> None:
    zendesk.post("/api/v2/users.json", {"user": {"name": "Ann"}})

    (received,) = state.requests_to("POST", "/api/v2/users")
    assert received.json == {"user": {"name": "Ann"}}
    assert received.header("content-type") == "application/json"
    assert (received.header("authorization") or "").startswith("Basic ")
    assert "Authorization" not in repr(received)
