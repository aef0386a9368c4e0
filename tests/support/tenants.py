"""Two small CRMs and a server file that gives each to one Khoros company.

Used by the tenant, reload, metrics and gunicorn tests. Each CRM serves the
``people`` test mapping's customer routes, answers with its own name in the
record (so a test sees which CRM answered) and records every request's
headers (so a test sees which credentials and trace header reached it).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import Flask, Response, jsonify, request

from tests.support.live_server import LiveServer

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEOPLE_YAML = os.path.join(HERE, "mappings", "good", "people.yaml")

ACME_TOKEN = "acme-khoros-secret-0123456789"
GLOBEX_TOKEN = "globex-khoros-secret-9876543210"
ADMIN_TOKEN = "operator-admin-token-55555"
ACME_KEY = "acme-crm-api-key-1111"
GLOBEX_KEY = "globex-crm-api-key-2222"


@dataclass
class Crm:
    name: str
    seen: list[dict[str, str]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    server: LiveServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    def app(self) -> Flask:
        app = Flask(f"crm-{self.name}")

        @app.get("/people/<pid>")
        def person(pid: str) -> Response:
            self.seen.append(dict(request.headers))
            if pid == "missing":
                return Response('{"error": "no such person"}', status=404, mimetype="application/json")
            if pid == "slow":  # held until the test releases it
                self.release.wait(20)
            return jsonify({"data": {"id": pid, "given_name": self.name, "family_name": "Person"}})

        @app.get("/people")
        def search() -> Response:
            self.seen.append(dict(request.headers))
            return jsonify({"data": []})

        return app

    def start(self) -> Crm:
        self.server = LiveServer(self.app()).start()
        return self

    def stop(self) -> None:
        self.release.set()
        if self.server is not None:
            self.server.stop()


def traced_mapping(folder: Path, site: str = "https://people.example") -> Path:
    """The people mapping under another name, sending traceparent, with ``site`` as the default
    of the setting that builds customer URIs (a visible change for reload tests)."""
    text = Path(PEOPLE_YAML).read_text(encoding="utf-8")
    text = text.replace("name: people\n", "name: people-traced\n", 1)
    text = text.replace("  timeout: 10\n", "  timeout: 10\n  traceparent: true\n", 1)
    text = text.replace('default: "https://people.example"', f'default: "{site}"', 1)
    path = folder / "traced.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def write_server_file(folder: Path, extra: str = "") -> Path:
    """acme (company 42, the people mapping) and globex (company 77, the traced copy)."""
    traced = folder / "traced.yaml"
    if not traced.exists():
        traced_mapping(folder)
    path = folder / "server.yaml"
    path.write_text(f"""\
# yaml-language-server: $schema=../schemas/server.schema.json
tenants:
  acme:
    mapping: {PEOPLE_YAML}
    khoros_tokens_env: ACME_KHOROS_TOKENS
    env_prefix: ACME_
    company_ids: ["42"]
  globex:
    mapping: traced.yaml
    khoros_tokens_env: GLOBEX_KHOROS_TOKENS
    env_prefix: GLOBEX_
    company_ids: [77]
{extra}""", encoding="utf-8")
    return path


def server_environ(acme: Crm, globex: Crm) -> dict[str, str]:
    return {"ACME_KHOROS_TOKENS": ACME_TOKEN, "GLOBEX_KHOROS_TOKENS": GLOBEX_TOKEN,
            "MAPPER_ADMIN_TOKENS": ADMIN_TOKEN,
            "ACME_PEOPLE_CRM_URL": acme.url, "ACME_PEOPLE_API_KEY": ACME_KEY,
            "GLOBEX_PEOPLE_CRM_URL": globex.url, "GLOBEX_PEOPLE_API_KEY": GLOBEX_KEY}


def headers(token: str | None, company: str | None = None, initiative: str | None = None) -> dict[str, Any]:
    out = {"x-sf-user-email": "agent@example.com"}
    if token is not None:
        out["Authorization"] = token
    if company is not None:
        out["x-sf-company-id"] = company
    if initiative is not None:
        out["x-sf-initiative"] = initiative
    return out
