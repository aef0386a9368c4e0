"""The idempotency key of a Khoros request: the same request sent again gets the same key.

Khoros gives up after 8 s and the agent sends the create again, byte for byte.
The key is a hash of the operation and the body in canonical JSON (keys
sorted, no spaces), so key order or whitespace cannot make a retry look new;
when the caller sends an ``Idempotency-Key`` header, that value (with the
operation) is the key instead. Templates read it as ``idempotency_key``: a
mapping can store it on the record it creates and look for it later, which
keeps a retry from writing twice even after the server's window has passed.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

# Hex digits kept: 128 bits, short enough for a CRM's external-id or tag field.
KEY_LENGTH = 32


def canonical_json(value: Any) -> str:
    """One spelling per JSON value: sorted keys, no whitespace, Unicode kept as is."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def request_key(operation: str, body: Any, supplied: str | None = None) -> str:
    """The key of ``operation`` with ``body``, or with the caller's ``Idempotency-Key`` value."""
    if supplied:
        material = f"header\x00{operation}\x00{supplied}"
    else:
        material = f"body\x00{operation}\x00{canonical_json(body)}"
    return hashlib.sha256(material.encode("utf-8")).hexdigest()[:KEY_LENGTH]
