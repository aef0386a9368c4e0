"""Shared fixtures: the real CRMs on loopback and our server in front of them.

The CRM fixtures start real services (the demo CRM in-process, json-server
from npm, BottleCRM from PyPI in its own virtualenv) once per session; the
``bridge`` fixture serves a shipped mapping through our real Flask app on a
loopback port and hands back a client that calls it as Khoros would.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from mapper.core.engine import Engine
from mapper.service.app import create_app
from tests.support.khoros import KhorosClient
from tests.support.live_server import LiveServer
from tests.targets.bottlecrm import bottlecrm  # noqa: F401  (fixture)
from tests.targets.json_server import json_server  # noqa: F401  (fixture)

pytest_plugins = ["tests.support.service_fixtures"]  # crms, restore_logging

KHOROS_TOKEN = "khoros-test-secret-0123456789"
RECORDINGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "recordings")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--record-exchanges", action="store_true", default=False,
                     help="Re-record tests/recordings/<target>/ from the Khoros scenario runs "
                          "(python -m pytest tests/test_khoros_scenario.py --record-exchanges).")
    parser.addoption("--record-into", metavar="DIR", default=RECORDINGS,
                     help="Where --record-exchanges writes (default: tests/recordings).")


def _current_test() -> str | None:
    current = os.environ.get("PYTEST_CURRENT_TEST", "")
    return current.rsplit(" (", 1)[0].split("::", 1)[-1] or None


@pytest.fixture(scope="session")
def bridge(pytestconfig: pytest.Config) -> Iterator[Callable[..., KhorosClient]]:
    """Start our server for a mapping with a given environment; stopped at session end.
    ``record=NAME`` records every Khoros call it answers into tests/recordings/NAME/
    (or ``--record-into``'s folder)."""
    running: list[tuple[LiveServer, Engine]] = []
    recordings = pytestconfig.getoption("--record-into")

    def start(mapping: str, environ: dict[str, str], record: str | None = None) -> KhorosClient:
        engine = Engine.load(mapping, environ)
        if record:
            from mapper.workbench.recording import Recorder
            Recorder(engine, mapping, environ, os.path.join(recordings, record), note=_current_test).attach()
        app = create_app(engine, tokens=[KHOROS_TOKEN, "older-secret-being-rotated"])
        server = LiveServer(app).start()
        running.append((server, engine))
        return KhorosClient(server.url, KHOROS_TOKEN)

    yield start
    for server, engine in running:
        server.stop()
        engine.close()


@pytest.fixture(scope="session")
def demo_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    from democrm.launcher import start_demo_crm

    url, stop = start_demo_crm(os.path.join(tmp_path_factory.mktemp("democrm"), "demo.sqlite3"))
    yield {"DEMO_CRM_URL": url}
    stop()


@pytest.fixture(scope="session")
def json_server_env(json_server) -> dict[str, str]:  # noqa: F811
    return {"JSON_SERVER_URL": json_server.url}


@pytest.fixture(scope="session")
def bottlecrm_env(bottlecrm) -> dict[str, str]:  # noqa: F811
    return {"BOTTLECRM_URL": bottlecrm.url, "BOTTLECRM_TOKEN": bottlecrm.token}


# --- vendor fakes (issue: Zendesk, Salesforce, HubSpot mappings) -------------
# Each fake is served on loopback for the session; the *_fake fixtures give the
# fake's state so a test can inspect exactly what the fake received.

@dataclass
class Fake:
    state: Any
    url: str


def _serve_fake(create_app: Callable[[Any], Any], state: Any) -> Iterator[Fake]:
    server = LiveServer(create_app(state)).start()
    try:
        yield Fake(state, server.url)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def zendesk_fake() -> Iterator[Fake]:
    from tests.fakes.zendesk import ZendeskState, create_app
    yield from _serve_fake(create_app, ZendeskState(agent_email="bridge@example.com", api_token="zd-test-token-123"))


@pytest.fixture(scope="session")
def zendesk_env(zendesk_fake: Fake) -> dict[str, str]:
    return {"ZENDESK_URL": zendesk_fake.url, "ZENDESK_EMAIL": "bridge@example.com",
            "ZENDESK_API_TOKEN": "zd-test-token-123"}


@pytest.fixture(scope="session")
def salesforce_fake() -> Iterator[Fake]:
    from tests.fakes.salesforce import SalesforceState, create_app
    yield from _serve_fake(create_app, SalesforceState(client_id="sf-client-id", client_secret="sf-client-secret-123",
                                                       refresh_token="sf-refresh-token-123"))


@pytest.fixture(scope="session")
def salesforce_env(salesforce_fake: Fake) -> dict[str, str]:
    return {"SALESFORCE_LOGIN_URL": salesforce_fake.url, "SALESFORCE_CLIENT_ID": "sf-client-id",
            "SALESFORCE_CLIENT_SECRET": "sf-client-secret-123"}


@pytest.fixture(scope="session")
def hubspot_fake() -> Iterator[Fake]:
    from tests.fakes.hubspot import HubSpotState, create_app
    yield from _serve_fake(create_app, HubSpotState(token="hs-private-app-token-123"))


@pytest.fixture(scope="session")
def hubspot_env(hubspot_fake: Fake) -> dict[str, str]:
    return {"HUBSPOT_URL": hubspot_fake.url, "HUBSPOT_TOKEN": "hs-private-app-token-123"}


@pytest.fixture(scope="session")
def freshdesk_fake() -> Iterator[Fake]:
    from tests.fakes.freshdesk import FreshdeskState, create_app
    yield from _serve_fake(create_app, FreshdeskState(api_key="fd-api-key-123"))


@pytest.fixture(scope="session")
def freshdesk_env(freshdesk_fake: Fake) -> dict[str, str]:
    return {"FRESHDESK_URL": freshdesk_fake.url, "FRESHDESK_API_KEY": "fd-api-key-123"}


@pytest.fixture(scope="session")
def servicenow_fake() -> Iterator[Fake]:
    from tests.fakes.servicenow import ServiceNowState, create_app
    yield from _serve_fake(create_app, ServiceNowState(user="khoros.bridge", password="sn-password-123"))


@pytest.fixture(scope="session")
def servicenow_env(servicenow_fake: Fake) -> dict[str, str]:
    return {"SERVICENOW_URL": servicenow_fake.url, "SERVICENOW_USER": "khoros.bridge",
            "SERVICENOW_PASSWORD": "sn-password-123"}


@pytest.fixture(scope="session")
def dynamics_fake() -> Iterator[Fake]:
    from tests.fakes.dynamics import DynamicsState, create_app
    yield from _serve_fake(create_app, DynamicsState(tenant="contoso-tenant", client_id="dyn-client-id",
                                                     client_secret="dyn-client-secret-123"))


@pytest.fixture(scope="session")
def dynamics_env(dynamics_fake: Fake) -> dict[str, str]:
    return {"DYNAMICS_URL": dynamics_fake.url, "DYNAMICS_LOGIN_URL": dynamics_fake.url,
            "DYNAMICS_TENANT_ID": "contoso-tenant", "DYNAMICS_CLIENT_ID": "dyn-client-id",
            "DYNAMICS_CLIENT_SECRET": "dyn-client-secret-123"}
