"""The BottleCRM fixture gives a live, authenticated, clean server.

Every BottleCRM end-to-end test leans on these promises, so they are
checked once, directly against the API, before anything is built on them.
"""

from __future__ import annotations

import sqlite3
import uuid
from contextlib import closing

import pytest
import requests

from tests.targets.bottlecrm import BottleCRM, bottlecrm, prepare  # noqa: F401  (fixture)

pytestmark = pytest.mark.bottlecrm
TIMEOUT = 30


def test_contact_round_trip_with_the_token(bottlecrm: BottleCRM) -> None:  # noqa: F811
    email = f"ada-{uuid.uuid4().hex[:8]}@example.com"
    created = requests.post(
        f"{bottlecrm.url}/api/contacts/",
        json={"first_name": "Ada", "last_name": "Lovelace", "email": email},
        headers=bottlecrm.headers,
        timeout=TIMEOUT,
    )
    assert created.status_code == 200, created.text
    contact_id = created.json()["id"]
    assert uuid.UUID(contact_id)

    read = requests.get(
        f"{bottlecrm.url}/api/contacts/{contact_id}/", headers=bottlecrm.headers, timeout=TIMEOUT
    )
    assert read.status_code == 200, read.text
    contact = read.json()["contact_obj"]
    assert (contact["id"], contact["email"]) == (contact_id, email)
    assert (contact["first_name"], contact["last_name"]) == ("Ada", "Lovelace")


def test_no_credential_is_refused_with_403(bottlecrm: BottleCRM) -> None:  # noqa: F811
    anonymous = requests.get(f"{bottlecrm.url}/api/contacts/", timeout=TIMEOUT)
    assert anonymous.status_code == 403
    wrong = requests.get(
        f"{bottlecrm.url}/api/contacts/",
        headers={"Authorization": "Bearer bcrm_pat_not-a-real-token"},
        timeout=TIMEOUT,
    )
    assert wrong.status_code == 403


def test_the_server_runs_on_a_copy_of_the_pristine_database(bottlecrm: BottleCRM) -> None:  # noqa: F811
    # The running server holds an org (made at start); the cached pristine
    # file must still hold none, or the next session would not start clean.
    installation, _ = prepare()
    uri = f"{installation.pristine_db.as_uri()}?mode=ro"
    with closing(sqlite3.connect(uri, uri=True)) as db:
        orgs = db.execute("SELECT COUNT(*) FROM organization").fetchone()[0]
        contacts = db.execute("SELECT COUNT(*) FROM contacts").fetchone()[0]
    assert (orgs, contacts) == (0, 0)
    assert bottlecrm.org_id


def test_the_token_is_kept_out_of_the_repr(bottlecrm: BottleCRM) -> None:  # noqa: F811
    assert bottlecrm.token.startswith("bcrm_pat_")
    assert bottlecrm.token not in repr(bottlecrm)
