"""The README's promises about a first run, and the engine's promise to name no CRM."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from tests.support.live_server import free_port
from tests.targets.registry import ROOT

CRM_NAMES = re.compile(r"bottle|django.crm|json-server|zendesk|salesforce|hubspot|pipedrive|freshdesk|dynamics|"
                       r"democrm|demo.crm", re.IGNORECASE)


def test_serve_py_without_arguments_serves_the_demo_and_prints_a_token() -> None:
    port = free_port()
    with tempfile.TemporaryDirectory() as data:
        env = {k: v for k, v in os.environ.items() if k != "MAPPER_AUTH_TOKENS"}
        env["DEMO_CRM_DATA"] = data
        process = subprocess.Popen([sys.executable, "serve.py", "--port", str(port)], cwd=ROOT, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            token = None
            assert process.stdout is not None
            deadline = time.monotonic() + 30
            while token is None and time.monotonic() < deadline:
                line = process.stdout.readline()
                if "accepts the token" in line:
                    token = process.stdout.readline().strip()
            assert token, "serve.py did not print a token"
            answer = None
            while time.monotonic() < deadline:
                try:
                    answer = requests.get(f"http://127.0.0.1:{port}/api/v1/meta/object/customer",
                                          headers={"Authorization": token}, timeout=2)
                    break
                except requests.ConnectionError:
                    time.sleep(0.2)
            assert answer is not None and answer.status_code == 200
            assert {"id", "uri"} <= {f["name"] for f in answer.json()["fields"]}
            found = requests.post(f"http://127.0.0.1:{port}/api/v1/customers", json={"email": "jane@example.com"},
                                  headers={"Authorization": token}, timeout=5)
            assert [c["lastName"] for c in found.json()] == ["Doe"]
        finally:
            process.terminate()
            process.wait(timeout=10)
            if process.stdout:
                process.stdout.close()


def test_no_python_in_the_engine_names_a_particular_crm() -> None:
    offenders = []
    for path in sorted(Path(ROOT, "mapper").rglob("*.py")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if CRM_NAMES.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []


def test_no_python_outside_the_tests_names_a_vendor() -> None:
    vendors = re.compile(r"zendesk|salesforce|hubspot|pipedrive|freshdesk|dynamics", re.IGNORECASE)
    sources = [*Path(ROOT, "mapper").rglob("*.py"), *Path(ROOT, "democrm").rglob("*.py"), Path(ROOT, "serve.py")]
    offenders = [f"{path.relative_to(ROOT)}:{number}"
                 for path in sources
                 for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                 if vendors.search(line)]
    assert offenders == []
