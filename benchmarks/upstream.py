"""A canned demo CRM for benchmarks: answers instantly (or after ``--delay``), keeps connections alive.

Run: ``python -m benchmarks.upstream --port 8765 [--delay 0.3]``

The benchmarks measure our server, not the CRM, so this one does as little
as it can: one asyncio loop, HTTP/1.1 keep-alive, fixed JSON answers in the
demo CRM's shapes for the routes ``mappings/demo.yaml`` calls in the
benchmarked operations (customer lookup, customer search, and case create:
the look-up of the case by its request key, the case, its note, the case's
notes read back). The look-up always finds nothing, as the demo CRM answers
for a key it has not seen: the benchmarks send each create once, so every
create is a new one. With ``--delay`` every answer waits that long first, as
a real CRM does (300 ms to 1 s per call), without holding any thread.

``GET /_calls`` (never delayed, never counted) tells the benchmarks what
reached the CRM: how many calls so far, and the last few (method, target and
body), which it then forgets. The benchmarks use it to check that both sides
make the same calls and that every timed request made them.
Loopback only: it binds 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
from collections import deque

CUSTOMER = {"id": 42, "first_name": "Jane", "last_name": "Doe", "email": "jane@example.com",
            "phone": "+1 555 0100", "twitter": "janedoe", "tier": "gold", "vip": True, "notes": None,
            "created_at": "2024-05-01T09:00:00.000Z", "updated_at": "2024-05-01T09:00:00.000Z"}
CASE = {"id": 7, "customer_id": 42, "subject": "Broken charger", "description": "It sparks.", "status": "open",
        "priority": "normal", "created_at": "2024-05-01T09:00:00.000Z", "updated_at": "2024-05-01T09:00:00.000Z"}
NOTE = {"id": 9, "case_id": 7, "posted_at": "2024-05-01T09:00:00Z", "channel": "twitter", "content_type": "post",
        "body": "@acme my charger sparks", "link": "https://twitter.com/janedoe/status/1", "external_id": "1",
        "author_name": "Jane Doe", "author_handle": "janedoe", "author_id": "99", "brand_owned": False}

ROUTES: list[tuple[str, re.Pattern[str], int, bytes]] = [
    ("GET", re.compile(r"^/customers/\d+$"), 200, json.dumps(CUSTOMER).encode()),
    ("GET", re.compile(r"^/customers$"), 200, json.dumps({"items": [CUSTOMER], "total": 1}).encode()),
    ("POST", re.compile(r"^/cases$"), 201, json.dumps(CASE).encode()),
    ("POST", re.compile(r"^/cases/\d+/notes$"), 201, json.dumps(NOTE).encode()),
    ("GET", re.compile(r"^/cases/\d+/notes$"), 200, json.dumps({"items": [NOTE]}).encode()),
    # A create's find: `GET /cases?external_id=<request key>`; no case has the key yet.
    ("GET", re.compile(r"^/cases$"), 200, json.dumps({"total": 0, "items": []}).encode()),
]
NOT_FOUND = b'{"error": "not found"}'
REASONS = {200: b"OK", 201: b"Created", 404: b"Not Found"}
CALLS_PATH = "/_calls"


class Calls:
    """What reached the CRM: a count, and the last calls until someone reads them."""

    def __init__(self, keep: int = 32) -> None:
        self.count = 0
        self.recent: deque[tuple[str, str, str]] = deque(maxlen=keep)

    def add(self, method: str, target: str, body: bytes) -> None:
        self.count += 1
        self.recent.append((method, target, body.decode("utf-8", "replace")))

    def report(self) -> bytes:
        text = json.dumps({"count": self.count, "recent": list(self.recent)}).encode()
        self.recent.clear()
        return text


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float, calls: Calls) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            length = 0
            close = False
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value)
                elif name == "connection" and value.strip().lower() == "close":
                    close = True
            sent = await reader.readexactly(length) if length else b""
            path = target.split("?", 1)[0]
            status, body = 404, NOT_FOUND
            if path == CALLS_PATH:
                status, body = 200, calls.report()
            else:
                calls.add(method, target, sent)
                for route_method, pattern, route_status, route_body in ROUTES:
                    if method == route_method and pattern.match(path):
                        status, body = route_status, route_body
                        break
                if delay:
                    await asyncio.sleep(delay)
            writer.write(b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (status, REASONS[status], len(body), body))
            await writer.drain()
            if close:
                break
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def serve(port: int, delay: float) -> None:
    calls = Calls()
    server = await asyncio.start_server(lambda r, w: handle(r, w, delay, calls), "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.upstream", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer (default 0)")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port, args.delay))


if __name__ == "__main__":
    main()
