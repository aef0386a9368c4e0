"""The CRMs the Khoros scenario runs against, as one table.

Each row names the shipped mapping, the pytest fixture that starts the CRM
and returns the environment the mapping reads, and the marks to select or
skip it (``-m "not bottlecrm"`` for a quick run).
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCENARIOS = os.path.join(ROOT, "tests", "scenarios")


@dataclass(frozen=True)
class Target:
    name: str
    mapping: str
    env_fixture: str
    marks: tuple[Any, ...] = field(default=())


TARGETS: tuple[Target, ...] = (
    Target("demo", os.path.join(ROOT, "mappings", "demo.yaml"), "demo_env"),
    Target("json-server", os.path.join(ROOT, "mappings", "json-server.yaml"), "json_server_env",
           (pytest.mark.jsonserver,)),
    Target("bottlecrm", os.path.join(ROOT, "mappings", "bottlecrm.yaml"), "bottlecrm_env",
           (pytest.mark.bottlecrm, pytest.mark.slow)),
    # Cloud CRMs, reached through fakes built from each vendor's reference docs (tests/fakes/).
    Target("zendesk", os.path.join(ROOT, "mappings", "zendesk.yaml"), "zendesk_env", (pytest.mark.vendor,)),
    Target("salesforce", os.path.join(ROOT, "mappings", "salesforce.yaml"), "salesforce_env", (pytest.mark.vendor,)),
    Target("hubspot", os.path.join(ROOT, "mappings", "hubspot.yaml"), "hubspot_env", (pytest.mark.vendor,)),
    Target("freshdesk", os.path.join(ROOT, "mappings", "freshdesk.yaml"), "freshdesk_env", (pytest.mark.vendor,)),
    Target("servicenow", os.path.join(ROOT, "mappings", "servicenow.yaml"), "servicenow_env", (pytest.mark.vendor,)),
    Target("dynamics", os.path.join(ROOT, "mappings", "dynamics.yaml"), "dynamics_env", (pytest.mark.vendor,)),
)


def _fill(value: Any, unique: str, digits: str) -> Any:
    if isinstance(value, str):
        return value.replace("{unique}", unique).replace("{digits}", digits)
    if isinstance(value, list):
        return [_fill(v, unique, digits) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, unique, digits) for k, v in value.items()}
    return value


def load_scenario(name: str) -> dict[str, Any]:
    """The target's scenario data, with ``{unique}`` (hex) and ``{digits}`` (for CRMs that
    accept only digits in phone numbers) made unique for this run."""
    with open(os.path.join(SCENARIOS, f"{name}.yaml"), encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    unique = uuid.uuid4().hex[:8]
    digits = str(uuid.uuid4().int % 10**7).zfill(7)
    filled: dict[str, Any] = _fill(data, unique, digits)
    filled["unique"] = unique
    return filled
