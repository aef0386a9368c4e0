"""Structured logs: ``MAPPER_LOG_FORMAT=json`` writes one JSON object per line, every
line of a request carries its trace id (also the lines the engine's core writes,
which know no request object), secrets are redacted, and the trace id is the one
Khoros sees in the error and the CRM receives in ``traceparent``.
"""

from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path

import pytest
import requests

from mapper.core import context
from mapper.errors import ConfigError
from mapper.service.app import create_app
from mapper.service.logformat import TextFormatter
from mapper.service.logs import configure
from tests.support.live_server import LiveServer
from tests.support.tenants import ACME_TOKEN, GLOBEX_KEY, GLOBEX_TOKEN, Crm, headers, server_environ, write_server_file

pytestmark = pytest.mark.usefixtures("restore_logging")  # create_app configures the mapper log


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_json_lines_carry_the_trace_id_khoros_sees_and_the_crm_receives(
        tmp_path: Path, crms: tuple[Crm, Crm], capsys: pytest.CaptureFixture[str]) -> None:
    acme, globex = crms
    environ = {**server_environ(acme, globex), "MAPPER_LOG_FORMAT": "json", "MAPPER_LOG_LEVEL": "DEBUG"}
    app = create_app(config_path=str(write_server_file(tmp_path)), environ=environ)
    live = LiveServer(app).start()
    try:
        capsys.readouterr()
        globex.seen.clear()
        answer = requests.get(live.url + "/api/v1/customer/missing", headers=headers(GLOBEX_TOKEN, company="77"),
                              timeout=10)
        assert answer.status_code == 404
        trace = re.search(r"\(trace ([0-9a-f]{16})\)$", answer.json()["message"]).group(1)
        assert answer.headers["X-Trace-Id"] == trace
        # The CRM got it in a W3C traceparent (the people-traced mapping allows it).
        parent = globex.seen[-1]["Traceparent"]
        assert re.fullmatch(r"00-0{16}" + trace + r"-[0-9a-f]{16}-01", parent), parent
        lines = json_lines(capsys.readouterr().err)  # every line parses, or this fails
    finally:
        live.stop()
        app.config["RUNTIME"].current.close()
    mine = [line for line in lines if line["trace_id"] == trace]
    assert len(mine) == len(lines) >= 3, lines
    by_logger = {line["logger"]: line for line in mine}
    # mapper.upstream writes "CRM GET /people/missing -> 404" with no trace in its message.
    assert "trace=" not in by_logger["mapper.upstream"]["message"]
    summary = next(line for line in mine if "status" in line)
    assert summary["status"] == 404
    assert summary["tenant"] == "globex"
    assert summary["operation"] == "get_customer"
    assert summary["crm_calls"] == 1
    assert summary["duration_ms"] >= 0
    assert {"timestamp", "level", "message"} <= set(summary)
    assert all(GLOBEX_KEY not in json.dumps(line) for line in lines)


def test_a_mapping_without_traceparent_sends_none(tmp_path: Path, crms: tuple[Crm, Crm]) -> None:
    acme, globex = crms
    app = create_app(config_path=str(write_server_file(tmp_path)), environ=server_environ(acme, globex))
    live = LiveServer(app).start()
    try:
        acme.seen.clear()
        assert requests.get(live.url + "/api/v1/customer/1", headers=headers(ACME_TOKEN, company="42"),
                            timeout=10).status_code == 200
        assert "Traceparent" not in acme.seen[-1]
    finally:
        live.stop()
        app.config["RUNTIME"].current.close()


def test_json_lines_are_redacted_and_hold_tracebacks() -> None:
    stream = io.StringIO()
    configure("INFO", ["secret-value-123"], stream=stream, fmt="json")
    log = logging.getLogger("mapper.test")
    with context.request("abc123", tenant="acme"):
        log.info("token is %s", "secret-value-123")
        try:
            raise ValueError("boom secret-value-123")
        except ValueError:
            log.exception("failed")
    log.info("outside a request")
    first, second, third = json_lines(stream.getvalue())
    assert first["message"] == "token is ***"
    assert (first["trace_id"], first["tenant"]) == ("abc123", "acme")
    assert "ValueError: boom ***" in second["message"]
    assert third["trace_id"] == "-"


def test_text_lines_get_the_trace_id_when_the_message_lacks_it() -> None:
    stream = io.StringIO()
    configure("INFO", [], stream=stream, fmt="text")
    log = logging.getLogger("mapper.test")
    with context.request("feedbeef"):
        log.info("CRM GET /x -> 200")
        log.info("trace=feedbeef already here")
    first, second = stream.getvalue().splitlines()
    assert first.endswith("INFO mapper.test trace=feedbeef CRM GET /x -> 200")
    assert second.endswith("INFO mapper.test trace=feedbeef already here")


def test_an_unknown_log_format_is_refused() -> None:
    with pytest.raises(ConfigError, match="MAPPER_LOG_FORMAT"):
        configure("INFO", [], stream=io.StringIO(), fmt="xml")


def test_traceparent_needs_a_hex_trace_id() -> None:
    assert context.traceparent("-") is None
    assert context.traceparent("0000") is None
    value = context.traceparent("0123456789abcdef")
    assert value is not None and value.startswith("00-00000000000000000123456789abcdef-")


def test_the_documented_traceparent_example_compiles() -> None:
    import yaml

    from mapper.core.compiler import compile_document
    from mapper.core.source import load_source
    from tests.support.tenants import PEOPLE_YAML

    doc = Path(__file__).parent.parent.joinpath("docs", "mapping-language.md").read_text(encoding="utf-8")
    section = doc.split("#### `connection.traceparent`", 1)[1]
    example = yaml.safe_load(section.split("```yaml\n", 1)[1].split("```", 1)[0])
    assert example["connection"]["traceparent"] is True
    people = Path(PEOPLE_YAML).read_text(encoding="utf-8")
    start = people.index("connection:\n")
    end = people.index("\n\n", start)
    # The docs name the setting crm_url; the people mapping calls it base_url.
    block = yaml.safe_dump(example, default_flow_style=False).replace("settings.crm_url", "settings.base_url")
    text = people[:start] + block + people[end:]
    compiled = compile_document(load_source("example.yaml", text))
    assert compiled.traceparent is True
    assert compile_document(load_source(PEOPLE_YAML)).traceparent is False


def test_the_time_of_a_text_line_reads_as_logging_writes_it() -> None:
    ours, standard = TextFormatter(), logging.Formatter()
    for created in (1764745093.001, 1764745093.999, 1764745094.5, 1764745093.25):  # back in time too
        record = logging.makeLogRecord({"msg": "x", "created": created, "msecs": (created % 1) * 1000})
        assert ours.formatTime(record) == standard.formatTime(record)
        assert ours.formatTime(record, "%H:%M") == standard.formatTime(record, "%H:%M")
