"""The deployment as shipped: the README's production commands and the systemd unit, run.

``/etc/crm-mapper`` is a copy of ``deploy/etc/crm-mapper`` in a temporary folder
(with an environment file pointing the two tenants at the Zendesk and HubSpot
fakes), ``/run/crm-mapper`` another, and ``/opt/crm-mapper/bin`` is this
virtualenv. Nothing else is changed in the commands.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import Fake
from tests.support import readme
from tests.support.live_server import free_port
from tests.support.readme import localise
from tests.targets.registry import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.vendor]
BIN = os.path.dirname(sys.executable)
ACME_TOKEN = "acme-khoros-secret-for-deploy-test"
GLOBEX_TOKEN = "globex-khoros-secret-for-deploy-test"
ADMIN_TOKEN = "operator-token-for-deploy-test"


@pytest.fixture
def machine(tmp_path: Path, zendesk_fake: Fake, hubspot_fake: Fake) -> dict[str, str]:
    """Where /etc/crm-mapper and /run/crm-mapper are, and the port the server listens on."""
    etc = tmp_path / "etc" / "crm-mapper"
    shutil.copytree(Path(ROOT, "deploy", "etc", "crm-mapper"), etc, symlinks=False)  # as `cp -rL`
    (etc / "env").write_text(f"""\
ACME_KHOROS_TOKENS={ACME_TOKEN}
ACME_ZENDESK_URL={zendesk_fake.url}
ACME_ZENDESK_EMAIL=bridge@example.com
ACME_ZENDESK_API_TOKEN=zd-test-token-123
GLOBEX_KHOROS_TOKENS={GLOBEX_TOKEN}
GLOBEX_HUBSPOT_URL={hubspot_fake.url}
GLOBEX_HUBSPOT_TOKEN=hs-private-app-token-123
MAPPER_ADMIN_TOKENS={ADMIN_TOKEN}
""")
    run = tmp_path / "run" / "crm-mapper"
    run.mkdir(parents=True)  # systemd's RuntimeDirectory=, or the operator
    return {"/etc/crm-mapper": str(etc), "/run/crm-mapper": str(run), "127.0.0.1:8080": f"127.0.0.1:{free_port()}",
            "/opt/crm-mapper/bin/": BIN + "/"}


def test_the_readme_production_commands_run_end_to_end(machine: dict[str, str]) -> None:
    script = localise(readme.block("production"), machine)
    pid_file = Path(machine["/run/crm-mapper"], "gunicorn.pid")
    env = {**os.environ, "PATH": BIN + os.pathsep + os.environ["PATH"]}
    for name in ("MAPPER_CONFIG", "MAPPER_MAPPING", "MAPPER_AUTH_TOKENS", "PROMETHEUS_MULTIPROC_DIR"):
        env.pop(name, None)
    try:
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=180)
    finally:
        if pid_file.exists():  # the script's last line stops it; make sure even when it failed half-way
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "server.yaml: ok (server file)" in out
    assert '{"status": "ready", "generation": 0, "last_reload": null}' in out
    assert '"name": "customer"' in out  # Zendesk's customer model, through tenant acme
    assert 'mapper_khoros_requests_total{operation="meta",status="200",tenant="acme"} 1.0' in out
    assert "Sent SIGHUP to" in out
    assert "Reloaded: generation 1." in out
    assert '"generation": 1' in out and '"ok": true' in out  # the reload was served
    assert set(re.findall(r'"(acme|globex)": \{"mapping"', out)) == {"acme", "globex"}


def unit() -> dict[str, list[str]]:
    """The [Service] section of the unit: key -> values, in order."""
    text = Path(ROOT, "deploy", "crm-mapper.service").read_text(encoding="utf-8")
    service = text.split("[Service]", 1)[1].split("\n[", 1)[0]
    entries: dict[str, list[str]] = {}
    for line in service.splitlines():
        if line.strip() and not line.startswith("#"):
            key, value = line.split("=", 1)
            entries.setdefault(key, []).append(value)
    return entries


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    text = Path(ROOT, "deploy", "crm-mapper.service").read_text(encoding="utf-8")
    local = tmp_path / "crm-mapper.service"
    local.write_text(text.replace("/opt/crm-mapper/bin/", BIN + "/"))
    done = subprocess.run(["systemd-analyze", "verify", str(local)], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_the_units_commands_start_notify_reload_and_stop(machine: dict[str, str], tmp_path: Path) -> None:
    """What systemd does with the unit: the environment, ExecStartPre in order, ExecStart
    until it notifies READY=1, ExecReload with $MAINPID, then SIGTERM (KillMode=mixed)."""
    service = unit()
    assert service["Type"] == ["notify"]
    env = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8"}
    for line in localise(Path(machine["/etc/crm-mapper"], "env").read_text(), {}).splitlines():
        key, value = line.split("=", 1)
        env[key] = value
    for value in service["Environment"]:
        key, setting = localise(value, machine).split("=", 1)
        env[key] = setting
    env["MAPPER_BIND"] = machine["127.0.0.1:8080"]
    for command in service["ExecStartPre"]:
        done = subprocess.run(shlex.split(localise(command, machine)), env=env, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, (command, done.stderr)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify_path = str(tmp_path / "notify.sock")
    notify.bind(notify_path)
    notify.settimeout(60)
    main = subprocess.Popen(shlex.split(localise(service["ExecStart"][0], machine)),
                            env={**env, "NOTIFY_SOCKET": notify_path}, cwd="/",
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://{machine['127.0.0.1:8080']}"
    try:
        assert b"READY=1" in notify.recv(4096)
        answer = requests.get(url + "/api/v1/meta/object/case",
                              headers={"Authorization": GLOBEX_TOKEN, "x-sf-company-id": "2002"}, timeout=30)
        assert answer.status_code == 200, answer.text
        reload = localise(service["ExecReload"][0], machine).replace("$MAINPID", str(main.pid))
        assert subprocess.run(shlex.split(reload), timeout=30).returncode == 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if requests.get(url + "/readyz", timeout=5).json()["generation"] == 1:
                break
            time.sleep(0.1)
        else:
            pytest.fail("ExecReload did not reload")
        main.send_signal(signal.SIGTERM)
        assert main.wait(timeout=int(service["TimeoutStopSec"][0])) == 0
    finally:
        if main.poll() is None:
            main.kill()
            main.wait()
        notify.close()
