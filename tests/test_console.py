"""The console at /console: off by default, admin-only, and usable in a real browser.

The browser test drives Debian's Chromium through Selenium and Debian's
chromedriver against our real server in front of the demo CRM: it signs in,
runs a search and a case create from the generated forms, reads the answer and
the trace from the page, and keeps a screenshot in ``test-artifacts/``.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.ui import WebDriverWait

from mapper.core.engine import Engine
from mapper.errors import ConfigError
from mapper.service.app import create_app
from tests.support.khoros import KhorosClient
from tests.support.live_server import LiveServer

ROOT = Path(__file__).resolve().parent.parent
DEMO = str(ROOT / "mappings" / "demo.yaml")
ARTIFACTS = Path(os.environ.get("MAPPER_TEST_ARTIFACTS", ROOT / "test-artifacts"))
KHOROS = "khoros-secret-for-console-tests"
ADMIN = "console-admin-secret-0451"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def demo_engine(demo_env: dict[str, str]) -> Iterator[Engine]:
    engine = Engine.load(DEMO, demo_env)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def console_server(demo_engine: Engine) -> Iterator[LiveServer]:
    server = LiveServer(create_app(demo_engine, tokens=[KHOROS], admin_tokens=[ADMIN], console=True)).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def customer(console_server: LiveServer) -> dict[str, str]:
    unique = uuid.uuid4().hex[:8]
    answer = KhorosClient(console_server.url, KHOROS).call(
        "POST", "/customer", {"firstName": "Console", "lastName": f"User{unique}",
                              "email": f"console.{unique}@example.com"})
    assert answer.status == 201, answer.body
    return answer.body


def test_console_is_off_unless_switched_on_even_with_an_admin_token(demo_engine: Engine) -> None:
    client = create_app(demo_engine, tokens=[KHOROS], environ={"MAPPER_ADMIN_TOKENS": ADMIN}).test_client()
    answer = client.get("/console")
    assert answer.status_code == 404
    assert answer.get_json()["error"]
    assert client.get("/metrics", headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 200


def test_mapper_console_on_opens_it_to_the_one_admin_token(demo_engine: Engine) -> None:
    client = create_app(demo_engine, tokens=[KHOROS],
                        environ={"MAPPER_ADMIN_TOKENS": ADMIN, "MAPPER_CONSOLE": "on"}).test_client()
    assert client.get("/console").status_code == 200
    for path in ("/console/api/setup", "/metrics"):  # one token for the console and the metrics
        assert client.get(path, headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 200, path
        assert client.get(path, headers={"Authorization": f"Bearer {ADMIN}x"}).status_code == 401, path


def test_the_deprecated_console_token_still_switches_it_on_as_an_admin_token(demo_engine: Engine) -> None:
    client = create_app(demo_engine, tokens=[KHOROS], environ={"MAPPER_CONSOLE_TOKEN": ADMIN}).test_client()
    for path in ("/console/api/setup", "/metrics"):
        assert client.get(path, headers={"Authorization": ADMIN}).status_code == 200, path
        assert client.get(path).status_code == 401, path


def test_the_console_cannot_be_on_without_an_admin_token(demo_engine: Engine) -> None:
    with pytest.raises(ConfigError, match="no admin token is set"):
        create_app(demo_engine, tokens=[KHOROS], environ={"MAPPER_CONSOLE": "on"})


def test_console_api_needs_the_admin_token_not_a_khoros_token(console_server: LiveServer) -> None:
    client = KhorosClient(console_server.url, KHOROS).session
    for token in (None, KHOROS, ADMIN + "x"):
        headers = {"Authorization": token} if token else {}
        answer = client.get(console_server.url + "/console/api/setup", headers=headers)
        assert answer.status_code == 401
        assert "admin token" in answer.json()["message"]


def test_the_admin_token_may_not_be_a_khoros_token(demo_engine: Engine) -> None:
    with pytest.raises(ConfigError, match=r"MAPPER_ADMIN_TOKENS: an admin token .* is also a Khoros token"):
        create_app(demo_engine, tokens=[KHOROS], admin_tokens=[KHOROS], console=True)
    with pytest.raises(ConfigError, match="also a Khoros token"):  # the console off: metrics alone
        create_app(demo_engine, tokens=[KHOROS], admin_tokens=[KHOROS], console=False)


def test_setup_lists_the_tenant_operations_and_the_data_model(console_server: LiveServer) -> None:
    answer = KhorosClient(console_server.url, KHOROS).session.get(
        console_server.url + "/console/api/setup", headers={"Authorization": ADMIN})
    assert answer.status_code == 200
    setup = answer.json()
    assert [t["name"] for t in setup["tenants"]] == ["default"]
    customer_fields = {f["name"] for f in setup["tenants"][0]["models"]["customer"]["fields"]}
    assert {"email", "firstName"} <= customer_fields
    assert len(setup["operations"]) == 9
    assert "phoneNumbers" in setup["bestmatchFields"]


def test_a_run_answers_like_khoros_and_traces_every_step_without_secrets(
        console_server: LiveServer, customer: dict[str, str], demo_engine: Engine) -> None:
    answer = KhorosClient(console_server.url, KHOROS).session.post(
        console_server.url + "/console/api/run", headers={"Authorization": ADMIN},
        json={"tenant": "default", "operation": "get_customer", "id": customer["id"]})
    assert answer.status_code == 200
    run = answer.json()
    assert run["status"] == 200
    assert run["answer"]["id"] == customer["id"]
    trace = "\n".join(run["trace"])
    assert "GET " in trace and customer["id"] in trace
    for secret in demo_engine.secret_values:
        assert secret not in trace


def test_a_failing_run_shows_the_khoros_error(console_server: LiveServer) -> None:
    answer = KhorosClient(console_server.url, KHOROS).session.post(
        console_server.url + "/console/api/run", headers={"Authorization": ADMIN},
        json={"tenant": "default", "operation": "get_customer", "id": "999999999"})
    run = answer.json()
    assert run["status"] == 404
    assert run["answer"]["error"] and run["traceId"] in run["answer"]["message"]


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    assert os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER), (
        "the console's browser test needs Debian's chromium and chromium-driver: run bash .ci/system-packages")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--window-size=1280,1400"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _run_and_wait(driver: webdriver.Chrome, expected_status: str) -> tuple[str, str]:
    driver.find_element(By.ID, "run").click()
    WebDriverWait(driver, 20).until(
        lambda d: d.find_element(By.ID, "status").text not in ("", "running..."))
    status = driver.find_element(By.ID, "status").text
    answer = driver.find_element(By.ID, "answer").text
    assert status == expected_status, answer
    return answer, driver.find_element(By.ID, "trace").text


@pytest.mark.slow
def test_console_in_a_real_browser_runs_a_search_and_a_case_create(
        browser: webdriver.Chrome, console_server: LiveServer, customer: dict[str, str]) -> None:
    browser.get(console_server.url + "/console")
    browser.find_element(By.ID, "token").send_keys(ADMIN)
    browser.find_element(By.ID, "connect").click()
    WebDriverWait(browser, 20).until(expected_conditions.visibility_of_element_located((By.ID, "operation-box")))

    Select(browser.find_element(By.ID, "operation")).select_by_value("search_customers")
    browser.find_element(By.ID, "field-email").send_keys(customer["email"])
    answer, trace = _run_and_wait(browser, "200")
    assert customer["id"] in answer
    assert "step" in trace and "GET " in trace

    Select(browser.find_element(By.ID, "operation")).select_by_value("create_case")
    browser.find_element(By.ID, "field-customerId").send_keys(customer["id"])
    browser.find_element(By.ID, "field-title").send_keys("Made in the console")
    answer, trace = _run_and_wait(browser, "201")
    assert "Made in the console" in answer
    assert "POST " in trace

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "console.png"
    assert browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
