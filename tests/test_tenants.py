"""Tenants: one server, several Khoros companies, each with its own CRM and secrets.

The server file is checked like a mapping (every problem, ``file:line: key``);
a request reaches only the CRM of the tenant its ``x-sf-*`` headers select,
and only with that tenant's secret; the single-mapping server is one default
tenant. Real HTTP on loopback: our app and two small CRMs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from mapper.errors import ConfigError
from mapper.service.app import create_app
from mapper.service.tenants import load_server, validate_server_file
from mapper.workbench.cli import main
from tests.support.live_server import LiveServer
from tests.support.tenants import (
    ACME_KEY,
    ACME_TOKEN,
    ADMIN_TOKEN,
    GLOBEX_KEY,
    GLOBEX_TOKEN,
    Crm,
    headers,
    server_environ,
    write_server_file,
)

pytestmark = pytest.mark.usefixtures("restore_logging")  # create_app configures the mapper log


@pytest.fixture
def server(tmp_path: Path, crms: tuple[Crm, Crm]) -> Iterator[str]:
    app = create_app(config_path=str(write_server_file(tmp_path)), environ=server_environ(*crms))
    live = LiveServer(app).start()
    yield live.url
    live.stop()
    app.config["RUNTIME"].current.close()


def get(url: str, path: str, hdrs: dict[str, str]) -> requests.Response:
    return requests.get(url + "/api/v1" + path, headers=hdrs, timeout=10)


# --- the server file ---------------------------------------------------------------------------

def test_a_good_server_file_validates_with_its_mappings(tmp_path: Path) -> None:
    path = write_server_file(tmp_path)
    assert validate_server_file(str(path)) == []
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert "ok (server file)" in result.output


def test_server_file_problems_name_file_line_and_key(tmp_path: Path) -> None:
    path = write_server_file(tmp_path, extra="default_tenant: initech\nadmin_token_env: X\n")
    text = path.read_text().replace("    env_prefix: GLOBEX_\n", "    env_prefix: GLOBEX_\n    compnay_ids: [1]\n")
    path.write_text(text)
    problems = [str(p) for p in validate_server_file(str(path))]
    lines = text.splitlines()
    typo_line = next(i for i, line in enumerate(lines, 1) if "compnay_ids" in line)
    unknown_line = next(i for i, line in enumerate(lines, 1) if "admin_token_env" in line)
    assert f"{path}:{typo_line}: tenants.globex.compnay_ids: unknown key 'compnay_ids' (did you mean " \
           f"'company_ids'?)" in problems
    assert f"{path}:{unknown_line}: admin_token_env: unknown key 'admin_token_env' (did you mean " \
           f"'admin_tokens_env'?)" in problems
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 1
    assert "compnay_ids" in result.output


def test_references_between_tenants_are_checked(tmp_path: Path) -> None:
    path = write_server_file(tmp_path, extra="""\
  copycat:
    mapping: traced.yaml
    khoros_tokens_env: COPYCAT_TOKENS
    company_ids: ["42"]
  nobody:
    mapping: traced.yaml
    khoros_tokens_env: NOBODY_TOKENS
default_tenant: initech
""")
    problems = [f"{p.key}: {p.message}" for p in validate_server_file(str(path))]
    assert "default_tenant: there is no tenant 'initech' in tenants" in problems
    assert any(p.startswith("tenants.copycat: selects the same requests as tenant 'acme'") for p in problems)
    assert any(p.startswith("tenants.nobody: this tenant selects no request") for p in problems)


def test_a_broken_mapping_named_by_the_server_file_is_reported_at_its_own_line(tmp_path: Path) -> None:
    path = write_server_file(tmp_path)
    traced = tmp_path / "traced.yaml"
    traced.write_text(traced.read_text().replace("  timeout: 10\n", "  timeout: ten\n"))
    problems = validate_server_file(str(path))
    assert [(p.file, p.key) for p in problems] == [(str(traced), "connection.timeout")]
    assert problems[0].line == traced.read_text().splitlines().index("  timeout: ten") + 1


def test_loading_needs_each_tenants_tokens_and_prefixed_variables(tmp_path: Path, crms: tuple[Crm, Crm]) -> None:
    path = write_server_file(tmp_path)
    environ = server_environ(*crms)
    del environ["GLOBEX_KHOROS_TOKENS"], environ["ACME_PEOPLE_API_KEY"]
    environ["PEOPLE_API_KEY"] = "an-unprefixed-key-is-not-used"
    with pytest.raises(ConfigError) as caught:
        load_server(str(path), environ)
    messages = [str(p) for p in caught.value.problems]
    assert any("tenants.globex.khoros_tokens_env: the environment variable 'GLOBEX_KHOROS_TOKENS' is not set"
               in m for m in messages), messages
    assert any("'ACME_PEOPLE_API_KEY' (tenant 'acme') is not set" in m for m in messages), messages


def test_one_secret_for_two_companies_is_refused(tmp_path: Path, crms: tuple[Crm, Crm]) -> None:
    environ = {**server_environ(*crms), "GLOBEX_KHOROS_TOKENS": f"globex-own-secret-1234,{ACME_TOKEN}"}
    with pytest.raises(ConfigError) as caught:
        load_server(str(write_server_file(tmp_path)), environ)
    assert "also a token of tenant 'acme'" in str(caught.value)


def test_an_admin_token_that_is_a_khoros_token_is_refused(tmp_path: Path, crms: tuple[Crm, Crm]) -> None:
    environ = {**server_environ(*crms), "MAPPER_ADMIN_TOKENS": f"{ADMIN_TOKEN},{GLOBEX_TOKEN}"}
    with pytest.raises(ConfigError) as caught:
        load_server(str(write_server_file(tmp_path)), environ)
    assert [p.key for p in caught.value.problems] == ["admin_tokens_env"]
    assert "'MAPPER_ADMIN_TOKENS' is also a Khoros token" in str(caught.value)


def test_the_deprecated_console_token_is_read_as_an_admin_token(tmp_path: Path, crms: tuple[Crm, Crm]) -> None:
    environ = {**server_environ(*crms), "MAPPER_CONSOLE_TOKEN": "an-old-console-token-777"}
    tenants = load_server(str(write_server_file(tmp_path)), environ)
    assert tenants.admin is not None
    assert tenants.admin.allows("Bearer an-old-console-token-777") and tenants.admin.allows(f"Bearer {ADMIN_TOKEN}")
    for tenant in tenants.tenants.values():
        tenant.engine.close()


# --- routing and isolation ---------------------------------------------------------------------

def test_each_company_reaches_only_its_own_crm_with_its_own_credentials(server: str, crms: tuple[Crm, Crm]) -> None:
    acme, globex = crms
    acme.seen.clear()
    globex.seen.clear()
    for _ in range(3):
        a = get(server, "/customer/1", headers(ACME_TOKEN, company="42"))
        b = get(server, "/customer/1", headers(f"Bearer {GLOBEX_TOKEN}", company="77"))
        assert (a.status_code, a.json()["firstName"]) == (200, "acme")
        assert (b.status_code, b.json()["firstName"]) == (200, "globex")
    assert [h["X-Api-Key"] for h in acme.seen] == [ACME_KEY] * 3
    assert [h["X-Api-Key"] for h in globex.seen] == [GLOBEX_KEY] * 3


@pytest.mark.parametrize("token, company", [
    (ACME_TOKEN, "77"),       # acme's secret, globex's company
    (GLOBEX_TOKEN, "42"),     # and the other way round
    (ACME_TOKEN, "999"),      # a company nobody serves (no default tenant)
    (ACME_TOKEN, None),       # no company header at all
    (ADMIN_TOKEN, "42"),      # the operator's token is not a Khoros secret
])
def test_a_secret_never_reaches_another_companys_crm(server: str, crms: tuple[Crm, Crm], token: str,
                                                      company: str | None) -> None:
    acme, globex = crms
    before = len(acme.seen), len(globex.seen)
    answer = get(server, "/customer/1", headers(token, company=company))
    assert answer.status_code == 401
    assert answer.json()["error"] == "unauthorized"
    assert (len(acme.seen), len(globex.seen)) == before


def test_the_default_tenant_serves_unselected_requests_and_precise_selectors_win(
        tmp_path: Path, crms: tuple[Crm, Crm]) -> None:
    path = write_server_file(tmp_path, extra="default_tenant: acme\n")
    text = path.read_text().replace("    company_ids: [77]\n", "    company_ids: [42]\n    initiatives: [7]\n")
    path.write_text(text)
    app = create_app(config_path=str(path), environ=server_environ(*crms))
    with_server = LiveServer(app).start()
    try:
        url = with_server.url
        assert get(url, "/customer/1", headers(ACME_TOKEN)).json()["firstName"] == "acme"
        assert get(url, "/customer/1", headers(ACME_TOKEN, company="42", initiative="8")).json()["firstName"] == "acme"
        precise = get(url, "/customer/1", headers(GLOBEX_TOKEN, company="42", initiative="7"))
        assert precise.json()["firstName"] == "globex"
        assert get(url, "/customer/1", headers(ACME_TOKEN, company="42", initiative="7")).status_code == 401
    finally:
        with_server.stop()
        app.config["RUNTIME"].current.close()


def test_the_single_mapping_command_line_is_one_default_tenant(crms: tuple[Crm, Crm]) -> None:
    acme, _ = crms
    from tests.support.tenants import PEOPLE_YAML
    app = create_app(mapping_path=PEOPLE_YAML, tokens=[ACME_TOKEN],
                     environ={"PEOPLE_CRM_URL": acme.url, "PEOPLE_API_KEY": ACME_KEY})
    live = LiveServer(app).start()
    try:
        for company in (None, "42", "anything"):
            answer = get(live.url, "/customer/1", headers(ACME_TOKEN, company=company))
            assert answer.json()["firstName"] == "acme"
        assert requests.get(live.url + "/healthz", timeout=5).json() == {"status": "ok", "mapping": "people"}
        assert app.config["RUNTIME"].current.default.name == "default"
    finally:
        live.stop()
        app.config["RUNTIME"].current.close()


# --- operator endpoints ------------------------------------------------------------------------

def test_readyz_says_little_without_the_admin_token_and_everything_with_it(server: str) -> None:
    public = requests.get(server + "/readyz", timeout=5)
    assert public.status_code == 200
    assert public.json() == {"status": "ready", "generation": 0, "last_reload": None}
    detail = requests.get(server + "/readyz?crm=1", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                          timeout=10).json()
    assert set(detail["tenants"]) == {"acme", "globex"}
    assert detail["tenants"]["globex"]["crm"] == "people-traced"
    assert detail["tenants"]["acme"]["company_ids"] == ["42"]
    assert detail["tenants"]["acme"]["crm_check"]["reachable"] is True


def test_metrics_need_the_admin_token(server: str) -> None:
    assert requests.get(server + "/metrics", timeout=5).status_code == 401
    assert requests.get(server + "/metrics", headers={"Authorization": ACME_TOKEN}, timeout=5).status_code == 401
    answer = requests.get(server + "/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=5)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("text/plain")
    assert "mapper_khoros_requests_total" in answer.text
