"""A programmable fault CRM on loopback: json-server's API, with one fault per test cell.

It speaks the part of json-server's REST API the shipped json-server mapping
uses (customers, cases, interactions) from memory, on a raw
``http.server`` so that it can misbehave below HTTP's level: hang, drip one
byte at a time (with a length or chunked), send its headers late, reset the
connection mid-body, send 50 MB or a gzip bomb.

Cells run in parallel against one server. Each cell has its own customer
(``c<n>``, ``c<n>@example.com``), and every request is traced back to its
cell: by the customer id or email it names, the case it touches, or the
request key a case is looked up by (the test tells it each cell's key). A
cell's program says which fault to play on which of its CRM calls, counted
by distinct ``METHOD /path`` in the order they first arrive; the fault is
played on every try of that call (``times`` limits it, to test retries).

Faults that answer an error status (5xx, 429, a redirect) do not apply a
write; the others apply it and then spoil the answer, as a proxy or a
failing network would after the CRM did its work.
"""

from __future__ import annotations

import gzip
import itertools
import json
import socket
import struct
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

# What a fault costs in time is set so that, with a 2 s budget, the slow ones outlast it
# several times over: a client without a hard deadline would answer far too late.
DRIP_SECONDS = 0.1  # per byte
DRIP_BYTES = 80
SLOW_HEADERS_SECONDS = 1.2
HANG_SECONDS = 30.0
BIG_BYTES = 50 * 1024 * 1024
BOMB_BYTES = 256 * 1024 * 1024  # what the gzip bomb unpacks to

# Faults that answer an error status: the CRM did nothing.
NOT_APPLIED = frozenset({"status_500", "status_502", "status_503", "rate_limit_short", "rate_limit_long",
                         "html_500", "redirect"})
FAULTS = ("hang", "delay", "reset_mid_body", "status_500", "status_502", "status_503", "rate_limit_short",
          "rate_limit_long", "html_200", "html_500", "invalid_json", "empty_200", "wrong_shape",
          "slow_headers", "drip", "drip_chunked", "big_body", "gzip_bomb", "redirect")

_bomb: bytes | None = None
_bomb_lock = threading.Lock()


def gzip_bomb() -> bytes:
    global _bomb
    with _bomb_lock:
        if _bomb is None:
            _bomb = gzip.compress(b"\0" * BOMB_BYTES, compresslevel=9)
        return _bomb


@dataclass
class Program:
    """Play ``fault`` on the cell's ``call``-th distinct CRM call (1-based), ``times`` times."""

    fault: str
    call: int
    times: int = 1_000_000
    calls: list[str] = field(default_factory=list)  # distinct METHOD /path, in order
    played: int = 0


class FaultCrm:
    """The server: ``url``, ``program(cell, ...)``, ``cases_of(cell)``, ``stop()``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.customers: dict[str, dict[str, Any]] = {}
        self.cases: dict[str, dict[str, Any]] = {}
        self.interactions: list[dict[str, Any]] = []
        self.programs: dict[str, Program] = {}
        self.case_cell: dict[str, str] = {}
        self.key_cell: dict[str, str] = {}  # request key (the mapping's requestKey) -> cell
        self.ids = itertools.count(1)
        self.stopping = threading.Event()
        crm = self

        class Handler(FaultHandler):
            server_crm = crm

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def add_cell(self, cell: str, program: Program | None = None, key: str | None = None) -> dict[str, Any]:
        customer = {"id": cell, "firstName": "Jane", "lastName": f"Doe {cell}", "email": f"{cell}@example.com"}
        with self.lock:
            self.customers[cell] = customer
            if key is not None:
                self.key_cell[key] = cell
            if program is not None:
                self.programs[cell] = program
        return customer

    def cases_of(self, cell: str) -> list[dict[str, Any]]:
        with self.lock:
            return [c for c in self.cases.values() if c.get("customerId") == cell]

    def interactions_of(self, case_id: Any) -> list[dict[str, Any]]:
        with self.lock:
            return [i for i in self.interactions if str(i.get("caseId")) == str(case_id)]

    def stop(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    # -- which cell, and which fault --------------------------------------------------------

    def cell_of(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> str | None:
        parts = path.strip("/").split("/")
        with self.lock:
            if parts[0] == "customers" and len(parts) == 2:
                return parts[1]
            if parts[0] == "customers" and "email" in query:
                return query["email"][0].split("@")[0]
            if parts[0] == "cases" and method == "POST" and isinstance(body, dict):
                return str(body.get("customerId"))
            if parts[0] == "cases" and len(parts) == 2:
                return self.case_cell.get(parts[1])
            if parts[0] == "cases" and "requestKey" in query:
                return self.key_cell.get(query["requestKey"][0])
            if parts[0] == "interactions":
                case_id = body.get("caseId") if isinstance(body, dict) else (query.get("caseId") or [None])[0]
                return self.case_cell.get(str(case_id))
        return None

    def fault_for(self, cell: str | None, method: str, path: str) -> str | None:
        with self.lock:
            program = self.programs.get(cell or "")
            if program is None:
                return None
            call = f"{method} {path}"
            if call not in program.calls:
                program.calls.append(call)
            if program.calls.index(call) + 1 != program.call or program.played >= program.times:
                return None
            program.played += 1
            return program.fault

    # -- json-server's behaviour ----------------------------------------------------------

    def answer(self, method: str, path: str, query: dict[str, list[str]], body: Any,
               apply: bool) -> tuple[int, Any]:
        parts = path.strip("/").split("/")
        now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        with self.lock:
            if parts[0] == "customers" and len(parts) == 2 and method == "GET":
                found = self.customers.get(parts[1])
                return (200, found) if found else (404, {})
            if parts[0] == "customers" and len(parts) == 1 and method == "GET":
                return 200, _matching(self.customers.values(), query)
            if parts[0] == "cases" and len(parts) == 1 and method == "POST":
                case = {**body, "id": next(self.ids)}
                if apply:
                    self.cases[str(case["id"])] = case
                    self.case_cell[str(case["id"])] = str(body.get("customerId"))
                return 201, case
            if parts[0] == "cases" and len(parts) == 1 and method == "GET":
                return 200, _matching(self.cases.values(), query)
            if parts[0] == "cases" and len(parts) == 2 and method == "GET":
                found = self.cases.get(parts[1])
                return (200, found) if found else (404, {})
            if parts[0] == "interactions" and method == "POST":
                item = {**body, "id": next(self.ids)}
                if apply:
                    self.interactions.append(item)
                return 201, item
            if parts[0] == "interactions" and method == "GET":
                return 200, _matching(self.interactions, query)
        return 404, {"error": f"no route {method} {path} (at {now})"}


def _matching(records: Iterable[dict[str, Any]], query: dict[str, list[str]]) -> list[dict[str, Any]]:
    """json-server's filter: every query field not starting with ``_`` equals the record's."""
    wanted = {k: v[0] for k, v in query.items() if not k.startswith("_")}
    return [r for r in records if all(str(r.get(k)) == v for k, v in wanted.items())]


class FaultHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_crm: FaultCrm

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the matrix makes hundreds of calls
        return None

    def do_GET(self) -> None:
        self.serve()

    def do_POST(self) -> None:
        self.serve()

    def do_PATCH(self) -> None:
        self.serve()

    def serve(self) -> None:
        crm = self.server_crm
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw.strip() else None
        cell = crm.cell_of(self.command, parts.path, query, body)
        fault = crm.fault_for(cell, self.command, parts.path)
        status, payload = crm.answer(self.command, parts.path, query, body, apply=fault not in NOT_APPLIED)
        if fault is None:
            self.send_json(status, payload)
        else:
            getattr(self, fault)(status, payload)

    # -- plain answers --------------------------------------------------------------------

    def send_bytes(self, status: int, data: bytes, content_type: str = "application/json",
                   headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def send_json(self, status: int, payload: Any) -> None:
        self.send_bytes(status, json.dumps(payload).encode())

    # -- the faults (each takes the answer json-server would have given) -------------------

    def hang(self, status: int, payload: Any) -> None:
        self.server_crm.stopping.wait(HANG_SECONDS)
        self.close_connection = True

    def delay(self, status: int, payload: Any) -> None:
        time.sleep(0.3)
        self.send_json(status, payload)

    def reset_mid_body(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data) + 100))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()  # with linger 0: a TCP reset, not a clean end
        self.close_connection = True

    def status_500(self, status: int, payload: Any) -> None:
        self.send_json(500, {"error": "Internal Server Error"})

    def status_502(self, status: int, payload: Any) -> None:
        self.send_bytes(502, b"Bad Gateway", "text/plain")

    def status_503(self, status: int, payload: Any) -> None:
        self.send_bytes(503, b"Service Unavailable", "text/plain")

    def rate_limit_short(self, status: int, payload: Any) -> None:
        self.send_bytes(429, b'{"error": "Too many requests"}', headers={"Retry-After": "1"})

    def rate_limit_long(self, status: int, payload: Any) -> None:
        self.send_bytes(429, b'{"error": "Too many requests"}', headers={"Retry-After": "30"})

    def html_200(self, status: int, payload: Any) -> None:
        self.send_bytes(200, b"<!DOCTYPE html><html><body>Please log in</body></html>", "text/html")

    def html_500(self, status: int, payload: Any) -> None:
        self.send_bytes(500, b"<html><body><h1>500 Internal Server Error</h1></body></html>", "text/html")

    def invalid_json(self, status: int, payload: Any) -> None:
        self.send_bytes(status, json.dumps(payload).encode()[:-1])

    def empty_200(self, status: int, payload: Any) -> None:
        self.send_bytes(200, b"")

    def wrong_shape(self, status: int, payload: Any) -> None:
        self.send_json(status, {"data": payload} if isinstance(payload, list) else [payload])

    def slow_headers(self, status: int, payload: Any) -> None:
        time.sleep(SLOW_HEADERS_SECONDS)
        self.drip(status, payload)

    def drip(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode().ljust(DRIP_BYTES)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.flush()
        self.dribble(data)

    def drip_chunked(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode().ljust(DRIP_BYTES)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.write(f"{len(data):x}\r\n".encode())  # one chunk, its bytes one by one
        self.wfile.flush()
        if self.dribble(data):
            self.wfile.write(b"\r\n0\r\n\r\n")

    def dribble(self, data: bytes) -> bool:
        try:
            for byte in data:
                if self.server_crm.stopping.wait(DRIP_SECONDS):
                    break
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
            return True
        except OSError:
            self.close_connection = True
            return False

    def big_body(self, status: int, payload: Any) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(BIG_BYTES))
        self.end_headers()
        piece = b" " * 65536
        try:
            for _ in range(BIG_BYTES // len(piece)):
                self.wfile.write(piece)
        except OSError:
            pass
        self.close_connection = True

    def gzip_bomb(self, status: int, payload: Any) -> None:
        self.send_bytes(status, gzip_bomb(), headers={"Content-Encoding": "gzip"})

    def redirect(self, status: int, payload: Any) -> None:
        self.send_bytes(302, b"", headers={"Location": "http://203.0.113.9/elsewhere"})
