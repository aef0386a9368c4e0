"""The demo CRM's HTTP contract, exercised over real loopback HTTP.

The mapping for the demo CRM is written against exactly these answers, so
each test pins one promise of the route table in ``democrm/app.py``: status
codes, body shapes, string ids, exact versus substring filters, paging,
errors naming every offending field, auth, and persistence in the SQLite
file across restarts.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from democrm import create_app, start_demo_crm
from tests.support.live_server import serve

CUSTOMER_KEYS = ["id", "first_name", "last_name", "email", "phone", "twitter", "tier",
                 "vip", "notes", "created_at", "updated_at"]
CASE_KEYS = ["id", "customer_id", "subject", "description", "status", "priority",
             "created_at", "updated_at", "external_id"]
NOTE_KEYS = ["id", "case_id", "posted_at", "body", "link", "channel", "external_id",
             "content_type", "author_name", "author_handle", "author_id", "brand_owned",
             "created_at"]


@dataclass
class Crm:
    """A running demo CRM and a thin requests wrapper that fails fast."""

    url: str
    headers: dict[str, str] = field(default_factory=dict)

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {**self.headers, **kwargs.pop("headers", {})}
        return requests.request(method, self.url + path, headers=headers, timeout=10, **kwargs)

    def get(self, path: str, **params: str) -> requests.Response:
        return self.call("GET", path, params=params)

    def post(self, path: str, body: Any) -> requests.Response:
        return self.call("POST", path, json=body)

    def patch(self, path: str, body: Any) -> requests.Response:
        return self.call("PATCH", path, json=body)

    def created(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        answer = self.post(path, body)
        assert answer.status_code == 201, answer.text
        item: dict[str, Any] = answer.json()
        return item


@pytest.fixture
def crm(tmp_path: Path) -> Iterator[Crm]:
    url, stop = start_demo_crm(str(tmp_path / "crm.sqlite3"))
    try:
        yield Crm(url)
    finally:
        stop()


@pytest.fixture
def customer(crm: Crm) -> dict[str, Any]:
    return crm.created("/customers", {"first_name": "Zed", "last_name": "Quill",
                                      "email": "Zed.Quill@Example.com", "phone": "+44 20 7946 0001",
                                      "twitter": "@ZedQuill"})


@pytest.fixture
def case(crm: Crm, customer: dict[str, Any]) -> dict[str, Any]:
    return crm.created("/cases", {"customer_id": customer["id"], "subject": "Refund please"})


# --- Seed data, index, unknown routes ---------------------------------------


def test_a_new_database_is_seeded_with_demo_data(crm: Crm) -> None:
    jane = crm.get("/customers", email="jane@example.com").json()["items"]
    assert [(c["first_name"], c["phone"], c["tier"], c["vip"]) for c in jane] == [
        ("Jane", "+1 555 0100", "gold", True)]
    cases = crm.get("/cases", customer_id=jane[0]["id"]).json()
    assert cases["total"] == 1
    notes = crm.get(f"/cases/{cases['items'][0]['id']}/notes").json()["items"]
    assert len(notes) == 1 and notes[0]["channel"] == "twitter"


def test_index_lists_the_routes(crm: Crm) -> None:
    routes = crm.get("/").json()["routes"]
    assert "POST /cases/<ident>/notes" in routes and "PATCH /customers/<ident>" in routes


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/nowhere", 404), ("DELETE", "/customers/1", 405), ("PUT", "/cases/1", 405)])
def test_routing_errors_are_json(crm: Crm, method: str, path: str, status: int) -> None:
    answer = crm.call(method, path)
    assert answer.status_code == status
    assert answer.headers["Content-Type"] == "application/json"
    assert set(answer.json()) == {"error", "detail"}


# --- Customers -------------------------------------------------------------


def test_create_customer_returns_every_column_with_string_id(crm: Crm) -> None:
    answer = crm.post("/customers", {"first_name": "Ann", "email": "ann@example.com"})
    assert answer.status_code == 201
    created = answer.json()
    assert list(created) == CUSTOMER_KEYS
    assert created["id"].isdigit()
    assert (created["vip"], created["tier"], created["last_name"]) == (False, None, None)
    assert created["created_at"].endswith("Z") and created["created_at"] == created["updated_at"]
    assert crm.get(f"/customers/{created['id']}").json() == created


@pytest.mark.parametrize("ident", ["999999", "abc", "99999999999999999999999"])
def test_missing_customer_is_404_with_detail(crm: Crm, ident: str) -> None:
    for answer in (crm.get(f"/customers/{ident}"), crm.patch(f"/customers/{ident}", {"notes": "x"})):
        assert answer.status_code == 404
        body = answer.json()
        assert body["error"] == "not found" and body["detail"]


def test_patch_customer_changes_only_given_fields(crm: Crm, customer: dict[str, Any]) -> None:
    answer = crm.patch(f"/customers/{customer['id']}", {"tier": "silver", "vip": True, "phone": None})
    assert answer.status_code == 200
    updated = answer.json()
    assert (updated["tier"], updated["vip"], updated["phone"]) == ("silver", True, None)
    assert updated["email"] == customer["email"] and updated["created_at"] == customer["created_at"]
    assert updated["updated_at"] > customer["updated_at"]
    assert crm.get(f"/customers/{customer['id']}").json() == updated


def test_empty_patch_changes_nothing(crm: Crm, customer: dict[str, Any]) -> None:
    answer = crm.patch(f"/customers/{customer['id']}", {})
    assert answer.status_code == 200 and answer.json() == customer


@pytest.mark.parametrize(("params", "found"), [
    ({"email": "zed.quill@example.com"}, True),  # email: exact, ignoring case
    ({"email": "ZED.QUILL@EXAMPLE.COM"}, True),
    ({"email": "zed.quill"}, False),
    ({"phone": "+44 20 7946 0001"}, True),  # phone: exact, as stored
    ({"phone": "7946 0001"}, False),
    ({"first_name": "Zed"}, True),  # names and twitter: exact, case matters
    ({"first_name": "zed"}, False),
    ({"last_name": "Quill"}, True),
    ({"twitter": "@ZedQuill"}, True),
    ({"twitter": "@zedquill"}, False),
    ({"first_name": "Zed", "last_name": "Doe"}, False),  # filters combine with AND
    ({"q": "zed quil"}, True),  # q: substring over "first last", any case
    ({"q": "QUILL@EXAMPLE"}, True),  # ... over email
    ({"q": "7946"}, True),  # ... over phone
    ({"q": "zedq"}, True),  # ... over twitter
    ({"q": "zed_quill"}, False),  # LIKE wildcards in q are literal
    ({"q": "nobody-has-this"}, False),
])
def test_customer_filters(crm: Crm, customer: dict[str, Any], params: dict[str, str], found: bool) -> None:
    answer = crm.get("/customers", **params)
    assert answer.status_code == 200
    ids = [c["id"] for c in answer.json()["items"]]
    assert (customer["id"] in ids) is found
    assert answer.json()["total"] == len(ids)


def test_paging_walks_every_match_once(crm: Crm) -> None:
    made = [crm.created("/customers", {"last_name": "Pager", "first_name": f"P{i}"})["id"] for i in range(5)]
    pages = [crm.get("/customers", last_name="Pager", limit="2", offset=str(o)).json() for o in (0, 2, 4, 6)]
    assert [p["total"] for p in pages] == [5, 5, 5, 5]
    assert [len(p["items"]) for p in pages] == [2, 2, 1, 0]
    assert [c["id"] for p in pages for c in p["items"]] == made  # ordered by id


def test_default_limit_is_50_and_limit_0_counts(crm: Crm) -> None:
    for i in range(51):
        crm.created("/customers", {"last_name": "Bulk", "first_name": str(i)})
    default = crm.get("/customers", last_name="Bulk").json()
    assert (default["total"], len(default["items"])) == (51, 50)
    assert len(crm.get("/customers", last_name="Bulk", limit="200").json()["items"]) == 51
    assert crm.get("/customers", last_name="Bulk", limit="0").json() == {"total": 51, "items": []}


@pytest.mark.parametrize(("params", "bad"), [
    ({"limit": "201"}, "limit"), ({"limit": "-1"}, "limit"), ({"limit": "ten"}, "limit"),
    ({"offset": "-5"}, "offset"), ({"offset": "1e3"}, "offset"),
    ({"emial": "x@example.com"}, "emial"), ({"page": "2"}, "page")])
def test_bad_query_parameters_are_named(crm: Crm, params: dict[str, str], bad: str) -> None:
    answer = crm.get("/customers", **params)
    assert answer.status_code == 400
    assert list(answer.json()["fields"]) == [bad]


def test_repeated_query_parameter_is_rejected(crm: Crm) -> None:
    answer = crm.call("GET", "/customers?email=a@example.com&email=b@example.com")
    assert answer.status_code == 400 and "email" in answer.json()["fields"]


@pytest.mark.parametrize(("body", "fields"), [
    ({"email": "not-an-email"}, {"email": "not an email address"}),
    ({"email": ""}, {"email": "not an email address"}),
    ({"tier": "platinum"}, {"tier": "must be one of gold, silver, bronze or null"}),
    ({"vip": "yes"}, {"vip": "must be true or false"}),
    ({"vip": None}, {"vip": "must be true or false"}),
    ({"first_name": 42}, {"first_name": "must be a string or null"}),
    ({"phone": "1" * 41}, {"phone": "must be at most 40 characters"}),
    ({"email": "x", "tier": "x", "vip": 1}, {"email": "not an email address",
                                            "tier": "must be one of gold, silver, bronze or null",
                                            "vip": "must be true or false"}),
])
def test_customer_validation_names_every_bad_field(crm: Crm, body: dict[str, Any], fields: dict[str, str]) -> None:
    for answer in (crm.post("/customers", body), crm.patch("/customers/1", body)):
        assert answer.status_code == 400
        assert answer.json() == {"error": "invalid", "fields": fields}


def test_unknown_and_read_only_keys_are_named(crm: Crm) -> None:
    answer = crm.post("/customers", {"emial": "a@example.com", "id": "7", "first_name": "Ok"})
    assert answer.status_code == 400
    fields = answer.json()["fields"]
    assert set(fields) == {"emial", "id"}
    assert fields["emial"].startswith("unknown field") and fields["id"] == "is read-only"


@pytest.mark.parametrize(("data", "error"), [
    (b'{"first_name": "Ann"', "malformed"), (b"", "malformed"), (b"[1, 2]", "malformed"),
    (b'{"vip": NaN}', "malformed"), (b"\xff\xfe{", "malformed")])
def test_malformed_bodies_get_a_json_400(crm: Crm, data: bytes, error: str) -> None:
    answer = crm.call("POST", "/customers", data=data, headers={"Content-Type": "application/json"})
    assert answer.status_code == 400
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.json()["error"] == error and answer.json()["detail"]


def test_duplicate_email_is_409_naming_the_owner(crm: Crm, customer: dict[str, Any]) -> None:
    owner = {"email": f"already used by customer {customer['id']}"}
    dup = crm.post("/customers", {"email": "ZED.quill@example.com"})
    assert dup.status_code == 409
    assert dup.json() == {"error": "conflict", "fields": owner}
    other = crm.created("/customers", {"email": "other@example.com"})
    moved = crm.patch(f"/customers/{other['id']}", {"email": customer["email"]})
    assert (moved.status_code, moved.json()["fields"]) == (409, owner)
    same = crm.patch(f"/customers/{customer['id']}", {"email": customer["email"]})
    assert same.status_code == 200


def test_concurrent_creates_with_one_email_yield_one_customer(crm: Crm) -> None:
    statuses: list[int] = []
    def create() -> None:
        statuses.append(crm.post("/customers", {"email": "race@example.com"}).status_code)
    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [201] + [409] * 7
    assert crm.get("/customers", email="race@example.com").json()["total"] == 1


# --- Cases -----------------------------------------------------------------


def test_create_case_applies_written_defaults(crm: Crm, customer: dict[str, Any]) -> None:
    created = crm.created("/cases", {"customer_id": customer["id"], "subject": "Where is my parcel?"})
    assert list(created) == CASE_KEYS
    assert created["id"].isdigit() and created["customer_id"] == customer["id"]
    assert (created["status"], created["priority"], created["description"]) == ("open", "normal", None)
    assert crm.get(f"/cases/{created['id']}").json() == created


@pytest.mark.parametrize(("body", "fields"), [
    ({}, {"customer_id": "is required", "subject": "is required"}),
    ({"customer_id": "999999", "subject": "x"}, {"customer_id": "no customer has this id"}),
    ({"customer_id": 1, "subject": "x"}, {"customer_id": 'must be an id given as a string of digits, e.g. "3"'}),
    ({"customer_id": "1", "subject": "  "}, {"subject": "must not be empty"}),
    ({"customer_id": "1", "subject": "x", "status": "done", "priority": "urgent"},
     {"status": "must be one of open, pending, closed", "priority": "must be one of low, normal, high"}),
    ({"customer_id": "1", "subject": "x", "customerId": "1"},
     {"customerId": "unknown field; writable fields are customer_id, subject, description, status, priority, "
                    "external_id"}),
])
def test_case_validation(crm: Crm, body: dict[str, Any], fields: dict[str, str]) -> None:
    answer = crm.post("/cases", body)
    assert answer.status_code == 400
    assert answer.json() == {"error": "invalid", "fields": fields}


def test_cases_filter_by_customer_and_status(crm: Crm, customer: dict[str, Any], case: dict[str, Any]) -> None:
    second = crm.created("/cases", {"customer_id": customer["id"], "subject": "Also", "status": "closed"})
    mine = crm.get("/cases", customer_id=customer["id"]).json()
    assert (mine["total"], [c["id"] for c in mine["items"]]) == (2, [case["id"], second["id"]])
    closed = crm.get("/cases", customer_id=customer["id"], status="closed").json()
    assert [c["id"] for c in closed["items"]] == [second["id"]]
    paged = crm.get("/cases", customer_id=customer["id"], limit="1", offset="1").json()
    assert (paged["total"], [c["id"] for c in paged["items"]]) == (2, [second["id"]])
    assert crm.get("/cases", customer_id="999999").json() == {"total": 0, "items": []}
    assert crm.get("/cases", customer_id="abc").status_code == 400
    assert crm.get("/cases", status="done").status_code == 400


def test_cases_filter_by_external_id_exactly(crm: Crm, customer: dict[str, Any]) -> None:
    key = "k-" + str(len(crm.get("/cases").json()["items"]))
    made = crm.created("/cases", {"customer_id": customer["id"], "subject": "Keyed", "external_id": key})
    crm.created("/cases", {"customer_id": customer["id"], "subject": "Keyed too", "external_id": key + "x"})
    assert [c["id"] for c in crm.get("/cases", external_id=key).json()["items"]] == [made["id"]]
    assert crm.get("/cases", external_id="nobody").json() == {"total": 0, "items": []}


def test_a_database_made_before_cases_had_external_id_gains_the_column(tmp_path: Any) -> None:
    import sqlite3

    from democrm.app import init_db
    path = str(tmp_path / "old.sqlite3")
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE cases (id INTEGER PRIMARY KEY AUTOINCREMENT, customer_id INTEGER NOT NULL, "
                 "subject TEXT NOT NULL, description TEXT, status TEXT NOT NULL, priority TEXT NOT NULL, "
                 "created_at TEXT NOT NULL, updated_at TEXT NOT NULL)")
    conn.commit()
    conn.close()
    init_db(path)
    conn = sqlite3.connect(path)
    assert [row[1] for row in conn.execute("PRAGMA table_info(cases)")][-1] == "external_id"
    conn.close()


def test_patch_case(crm: Crm, case: dict[str, Any]) -> None:
    answer = crm.patch(f"/cases/{case['id']}", {"status": "closed", "priority": "high"})
    assert answer.status_code == 200
    assert (answer.json()["status"], answer.json()["priority"], answer.json()["subject"]) == (
        "closed", "high", "Refund please")
    bad = crm.patch(f"/cases/{case['id']}", {"customer_id": "999999", "subject": None})
    assert bad.json() == {"error": "invalid", "fields": {"subject": "must be a string"}}
    orphan = crm.patch(f"/cases/{case['id']}", {"customer_id": "999999"})
    assert (orphan.status_code, orphan.json()["fields"]) == (400, {"customer_id": "no customer has this id"})
    assert crm.get(f"/cases/{case['id']}").json()["customer_id"] == case["customer_id"]
    assert crm.get("/cases/999999").status_code == 404


# --- Notes -----------------------------------------------------------------


def test_notes_are_created_and_listed_oldest_first(crm: Crm, case: dict[str, Any]) -> None:
    later = crm.created(f"/cases/{case['id']}/notes", {
        "posted_at": "2024-05-01T14:00:00+02:00", "body": "second", "channel": "twitter",
        "external_id": "1785", "content_type": "text/plain", "link": "https://x.example/1785",
        "author_name": "Zed", "author_handle": "@ZedQuill", "author_id": "42", "brand_owned": True})
    assert list(later) == NOTE_KEYS
    assert (later["case_id"], later["posted_at"], later["brand_owned"]) == (
        case["id"], "2024-05-01T12:00:00.000Z", True)  # normalised to UTC
    earlier = crm.created(f"/cases/{case['id']}/notes", {"posted_at": "2024-05-01T11:59:59Z", "body": "first"})
    assert earlier["brand_owned"] is False and earlier["channel"] is None
    listed = crm.get(f"/cases/{case['id']}/notes").json()
    assert listed == {"items": [earlier, later]}


@pytest.mark.parametrize(("body", "fields"), [
    ({}, {"posted_at": "is required", "body": "is required"}),
    ({"posted_at": "2024-05-01T12:00:00", "body": "x"},
     {"posted_at": "must be an ISO-8601 time with a timezone, e.g. 2024-05-01T12:00:00Z"}),
    ({"posted_at": "yesterday", "body": "x"},
     {"posted_at": "must be an ISO-8601 time with a timezone, e.g. 2024-05-01T12:00:00Z"}),
    ({"posted_at": "2024-05-01T12:00:00Z", "body": "x", "brand_owned": "no", "case_id": "1"},
     {"brand_owned": "must be true or false", "case_id": "is read-only"}),
])
def test_note_validation(crm: Crm, case: dict[str, Any], body: dict[str, Any], fields: dict[str, str]) -> None:
    answer = crm.post(f"/cases/{case['id']}/notes", body)
    assert (answer.status_code, answer.json()) == (400, {"error": "invalid", "fields": fields})


def test_notes_of_a_missing_case_are_404(crm: Crm) -> None:
    assert crm.get("/cases/999999/notes").status_code == 404
    answer = crm.post("/cases/999999/notes", {"posted_at": "2024-05-01T12:00:00Z", "body": "x"})
    assert answer.status_code == 404 and answer.json()["error"] == "not found"


# --- Auth, persistence, construction ---------------------------------------


def test_api_key_is_required_on_every_route(tmp_path: Path) -> None:
    with serve(create_app(str(tmp_path / "crm.sqlite3"), api_key="s3cret")) as server:
        anonymous, wrong, right = Crm(server.url), Crm(server.url, {"X-Api-Key": "nope"}), Crm(
            server.url, {"X-Api-Key": "s3cret"})
        for client in (anonymous, wrong):
            for answer in (client.get("/customers"), client.post("/customers", {}), client.get("/nowhere")):
                assert answer.status_code == 401
                assert answer.json()["error"] == "unauthorized"
                assert "s3cret" not in answer.text
        assert right.get("/customers").status_code == 200
        assert right.post("/customers", {"first_name": "Key"}).status_code == 201


def test_data_survives_a_restart(tmp_path: Path) -> None:
    db_file = tmp_path / "crm.sqlite3"
    url, stop = start_demo_crm(str(db_file))
    try:
        made = Crm(url).created("/customers", {"email": "kept@example.com"})
        Crm(url).created("/cases", {"customer_id": made["id"], "subject": "Kept too"})
    finally:
        stop()
    url, stop = start_demo_crm(str(db_file))
    try:
        again = Crm(url)
        assert again.get(f"/customers/{made['id']}").json() == made
        assert again.get("/cases", customer_id=made["id"]).json()["total"] == 1
        assert again.get("/customers", email="jane@example.com").json()["total"] == 1  # not re-seeded
    finally:
        stop()


def test_stop_releases_the_port_and_is_idempotent(tmp_path: Path) -> None:
    url, stop = start_demo_crm(str(tmp_path / "crm.sqlite3"))
    stop()
    stop()
    with pytest.raises(requests.ConnectionError):
        requests.get(url + "/customers", timeout=2)


def test_in_memory_database_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="path to a database file"):
        create_app(":memory:")
