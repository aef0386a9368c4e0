"""Duplicate-safe creates: the same ``POST /customer`` or ``POST /case`` is run once.

Khoros stops waiting after 8 s and the agent sends the create again. Without
help, a create that had reached the CRM is then made twice. Each create is
keyed (:func:`mapper.core.request_key.request_key`: the operation and the
canonical body, or the ``Idempotency-Key`` header) and namespaced by tenant;
a :class:`Store` holds, per key, either a claim ("running now") or the
answer. A request that finds:

* nothing: claims the key, runs, and stores its answer when it succeeded
  (2xx) for the deployment's window (default 10 minutes); a failure is not
  kept, so the retry does the work again (the mapping's ``find:`` steps make
  that safe: it finishes a half-written case instead of starting another);
* a claim: waits for the answer, within its own Khoros budget; if the first
  attempt failed meanwhile, it claims the key and runs itself;
* an answer: sends that answer again (same status, same id).

A claim expires after :data:`LEASE_SECONDS`, so a process that died holding
one blocks nobody for long. Three stores: :class:`MemoryStore` (one process,
the default), :class:`SqliteStore` (one file shared by the workers of one
server: ``serve.py``'s default when it runs more than one) and
:class:`RedisStore` (shared by every worker and replica).
If Redis cannot be reached, the create runs unguarded and the failure is
logged: the mapping's ``find:`` still keeps the CRM free of duplicates.

Configuration (environment, or ``idempotency:`` in the server file; the
environment wins): ``MAPPER_IDEMPOTENCY_STORE`` (``memory``, ``sqlite`` or ``redis``),
``MAPPER_REDIS_URL`` (``redis://host:port/db``), ``MAPPER_IDEMPOTENCY_PATH``
(the sqlite file; set, it makes sqlite the default), ``MAPPER_IDEMPOTENCY_WINDOW``
(seconds; 0 turns the store off).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ..core import context
from ..core.budget import ANSWER_RESERVE
from ..core.khoros import OPERATION_BUDGET
from ..errors import BadRequest, ConfigError, Problem, ServerError

log = logging.getLogger("mapper.idempotency")

# Operations whose retries must not write twice.
GUARDED_OPERATIONS = frozenset({"create_customer", "create_case"})
DEFAULT_WINDOW = 600.0
# How long a claim holds without an answer: a whole Khoros budget, and a little more.
LEASE_SECONDS = OPERATION_BUDGET + 2.0
# How often a waiting request looks at Redis or the SQLite file again.
POLL_SECONDS = 0.05
KEY_PREFIX = "crm-mapper:idempotency"
STORES = ("memory", "sqlite", "redis")

Answer = tuple[int, Any]


@dataclass(frozen=True)
class Claim:
    """What :meth:`Store.claim` found: ``token`` set = the caller runs; ``answer`` set = done."""

    token: str | None = None
    answer: Answer | None = None


class Store(Protocol):
    """Claims and answers per key; every method is safe to call from many threads."""

    def claim(self, key: str, lease: float) -> Claim:
        """Take the key (returns a token), or return its answer, or ``Claim()`` if another runs."""

    def finish(self, key: str, token: str, answer: Answer, window: float) -> None:
        """Keep ``answer`` under ``key`` for ``window`` seconds, replacing the claim."""

    def release(self, key: str, token: str) -> None:
        """Drop the claim (the attempt failed) unless someone else holds the key now."""

    def wait(self, key: str, seconds: float) -> None:
        """Return when the key may have changed, or after ``seconds``."""

    def close(self) -> None:
        """Free connections."""


@dataclass
class _Entry:
    token: str | None
    answer: Answer | None
    expires: float


class MemoryStore:
    """One process's claims and answers: protects against retries reaching the same process."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._changed = threading.Condition()

    def claim(self, key: str, lease: float) -> Claim:
        with self._changed:
            now = self._clock()
            self._forget_expired(now)
            entry = self._entries.get(key)
            if entry is not None and entry.expires > now:
                return Claim(answer=entry.answer) if entry.answer is not None else Claim()
            token = uuid.uuid4().hex
            self._entries[key] = _Entry(token, None, now + lease)
            self._entries.move_to_end(key)
            return Claim(token=token)

    def finish(self, key: str, token: str, answer: Answer, window: float) -> None:
        with self._changed:
            self._entries[key] = _Entry(None, answer, self._clock() + window)
            self._entries.move_to_end(key)
            self._changed.notify_all()

    def release(self, key: str, token: str) -> None:
        with self._changed:
            entry = self._entries.get(key)
            if entry is not None and entry.token == token:
                del self._entries[key]
            self._changed.notify_all()

    def wait(self, key: str, seconds: float) -> None:
        with self._changed:
            self._changed.wait(max(seconds, 0.0))

    def close(self) -> None:
        return None

    def _forget_expired(self, now: float) -> None:
        # Entries are kept in the order they were last written; most expire in that order.
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if entry.expires > now:
                return
            del self._entries[key]


# Deletes the key only while it still holds our claim: a claim that expired and was taken
# by another request, or an answer stored since, must survive a late release.
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""
_CLAIMED = "claim:"
_ANSWERED = "answer:"


class SqliteStore:
    """Claims and answers in one SQLite file, shared by the worker processes of one server.

    ``serve.py`` with more than one worker uses it unless another store is named: a Khoros
    retry may reach any worker, and a memory store is one worker's alone. Replicas on
    other machines need Redis. Each thread has its own connection (SQLite's rule); a
    claim is one write transaction, so two workers cannot both take a key. Times are
    ``time.monotonic()``, one clock for every process of the machine."""

    def __init__(self, path: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._clock = clock
        self._local = threading.local()
        self._writes = 0

    def _connect(self) -> sqlite3.Connection:
        """This thread's connection, opened at its first use: a file that cannot be opened
        fails a claim, and the guard then runs the create unguarded and logs why."""
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            # Autocommit (isolation_level None): transactions are the explicit BEGIN IMMEDIATE below.
            connection = sqlite3.connect(self.path, timeout=2.0, isolation_level=None, check_same_thread=False)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute("CREATE TABLE IF NOT EXISTS idempotency (key TEXT PRIMARY KEY, "
                               "token TEXT, answer TEXT, expires REAL NOT NULL)")
            self._local.connection = connection
        return connection

    def claim(self, key: str, lease: float) -> Claim:
        connection = self._connect()
        connection.execute("BEGIN IMMEDIATE")  # the write lock: one claimant at a time
        try:
            now = self._clock()
            row = connection.execute("SELECT token, answer, expires FROM idempotency WHERE key = ?",
                                     (key,)).fetchone()
            if row is not None and row[2] > now:
                connection.execute("COMMIT")
                if row[1] is not None:
                    status, payload = json.loads(row[1])
                    return Claim(answer=(int(status), payload))
                return Claim()
            token = uuid.uuid4().hex
            connection.execute("INSERT OR REPLACE INTO idempotency VALUES (?, ?, NULL, ?)", (key, token, now + lease))
            self._writes += 1
            if self._writes % 256 == 0:  # now and then, not on every claim
                connection.execute("DELETE FROM idempotency WHERE expires <= ?", (now,))
            connection.execute("COMMIT")
            return Claim(token=token)
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise

    def finish(self, key: str, token: str, answer: Answer, window: float) -> None:
        self._connect().execute("INSERT OR REPLACE INTO idempotency VALUES (?, NULL, ?, ?)",
                                (key, json.dumps(list(answer)), self._clock() + window))

    def release(self, key: str, token: str) -> None:
        self._connect().execute("DELETE FROM idempotency WHERE key = ? AND token = ?", (key, token))

    def wait(self, key: str, seconds: float) -> None:
        time.sleep(min(max(seconds, 0.0), POLL_SECONDS))

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None


class RedisStore:
    """Claims and answers in Redis, shared by every process and replica that uses it.

    A claim is ``SET key claim:<token> NX PX lease``; an answer replaces it with
    ``answer:<json>`` and the window as expiry. Waiting is polling (every
    :data:`POLL_SECONDS`): simple, and a Khoros retry waits at most a few seconds."""

    def __init__(self, url: str) -> None:
        import redis  # imported here: the memory store needs no Redis client

        # Short socket timeouts: an unreachable Redis must not eat the Khoros budget.
        self._redis = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self._release = self._redis.register_script(_RELEASE)

    def claim(self, key: str, lease: float) -> Claim:
        token = uuid.uuid4().hex
        if self._redis.set(key, _CLAIMED + token, nx=True, px=int(lease * 1000)):
            return Claim(token=token)
        raw = self._redis.get(key)
        if raw is None:  # it expired or was released between the two calls: try once more
            if self._redis.set(key, _CLAIMED + token, nx=True, px=int(lease * 1000)):
                return Claim(token=token)
            return Claim()
        text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
        if text.startswith(_ANSWERED):
            status, payload = json.loads(text[len(_ANSWERED):])
            return Claim(answer=(int(status), payload))
        return Claim()

    def finish(self, key: str, token: str, answer: Answer, window: float) -> None:
        self._redis.set(key, _ANSWERED + json.dumps(list(answer)), px=int(window * 1000))

    def release(self, key: str, token: str) -> None:
        self._release(keys=[key], args=[_CLAIMED + token])

    def wait(self, key: str, seconds: float) -> None:
        time.sleep(min(max(seconds, 0.0), POLL_SECONDS))

    def close(self) -> None:
        self._redis.close()


@dataclass(frozen=True)
class Settings:
    """Which store, where, and how long answers are kept."""

    store: str = "memory"
    redis_url: str | None = None
    window: float = DEFAULT_WINDOW
    path: str | None = None  # the sqlite store's file


def settings_from(environ: Mapping[str, str], server_file: Mapping[str, Any] | None = None,
                  where: str = "environment", line: int = 0) -> Settings:
    """The server file's ``idempotency:`` block, overridden by ``MAPPER_IDEMPOTENCY_*`` variables.

    The Redis URL may hold a password, so the server file names the variable that holds
    it (``redis_url_env``, default ``MAPPER_REDIS_URL``), never the URL itself."""
    block = dict(server_file or {})
    path = environ.get("MAPPER_IDEMPOTENCY_PATH", "").strip() or None
    # serve.py sets the path for its workers to share (see SqliteStore): then sqlite is the default.
    default = "sqlite" if path else "memory"
    store = environ.get("MAPPER_IDEMPOTENCY_STORE", "").strip() or str(block.get("store", default))
    url_env = str(block.get("redis_url_env", "MAPPER_REDIS_URL"))
    url = environ.get(url_env, "").strip() or None
    raw_window = environ.get("MAPPER_IDEMPOTENCY_WINDOW", "").strip() or block.get("window_seconds", DEFAULT_WINDOW)
    problems = []
    if store not in STORES:
        problems.append(Problem(where, line, "MAPPER_IDEMPOTENCY_STORE",
                                f"unknown idempotency store {store!r}; use one of: {', '.join(STORES)}"))
    try:
        window = float(raw_window)
        if window < 0:
            raise ValueError
    except (TypeError, ValueError):
        problems.append(Problem(where, line, "MAPPER_IDEMPOTENCY_WINDOW",
                                f"must be a number of seconds of at least 0, not {raw_window!r}"))
        window = DEFAULT_WINDOW
    if store == "redis" and not url:
        problems.append(Problem(where, line, url_env, "the idempotency store is redis but this variable is not "
                                                   "set; set it to the server's URL (redis://host:6379/0)"))
    if store == "sqlite" and not path:
        problems.append(Problem(where, line, "MAPPER_IDEMPOTENCY_PATH", "the idempotency store is sqlite but this "
                                "variable is not set; set it to a file all the server's workers can write"))
    if problems:
        raise ConfigError(problems)
    return Settings(store, url, window, path if store == "sqlite" else None)


def open_store(settings: Settings) -> Store | None:
    """The store the settings name; None when the window is 0 (no store)."""
    if settings.window == 0:
        return None
    if settings.store == "redis":
        assert settings.redis_url is not None
        return RedisStore(settings.redis_url)
    if settings.store == "sqlite":
        assert settings.path is not None
        return SqliteStore(settings.path)
    return MemoryStore()


class Guard:
    """Runs each guarded create at most once per key and window (see the module docstring)."""

    def __init__(self, store: Store | None, window: float) -> None:
        self.store = store
        self.window = window

    def once(self, tenant: str, operation: str, key: str, run: Callable[[], Answer],
             arrived: float) -> Answer:
        """``run()`` unless an answer for ``key`` is kept or arrives before the budget ends."""
        if self.store is None or operation not in GUARDED_OPERATIONS:
            return run()
        full_key = f"{KEY_PREFIX}:{tenant}:{operation}:{key}"
        ends = arrived + OPERATION_BUDGET - ANSWER_RESERVE
        try:
            token = self._claim(full_key, ends)
        except _Unavailable:
            return run()
        if isinstance(token, tuple):
            log.info("idempotency: answered %s again from the store", operation)
            context.idempotent_replay()
            return token
        try:
            answer = run()
        except BaseException:
            self._quietly(self.store.release, full_key, token)
            raise
        if 200 <= answer[0] < 300:
            self._quietly(self.store.finish, full_key, token, answer, self.window)
        else:
            self._quietly(self.store.release, full_key, token)
        return answer

    def _claim(self, key: str, ends: float) -> str | Answer:
        assert self.store is not None
        while True:
            try:
                claim = self.store.claim(key, LEASE_SECONDS)
            except Exception as exc:  # Redis down: serve unguarded rather than not at all
                log.error("idempotency store unavailable (%s); running the create without it", type(exc).__name__)
                raise _Unavailable() from exc
            if claim.answer is not None:
                return claim.answer
            if claim.token is not None:
                return claim.token
            left = ends - time.monotonic()
            if left <= 0:
                raise ServerError("The same create is still being processed by an earlier request; "
                                  "send it again in a few seconds to get its answer.", code="in_progress")
            self.store.wait(key, min(left, 0.5))

    @staticmethod
    def _quietly(action: Callable[..., None], *args: Any) -> None:
        try:
            action(*args)
        except Exception as exc:
            log.error("idempotency store unavailable (%s); the answer was not kept", type(exc).__name__)


class _Unavailable(Exception):
    pass


class Guards:
    """One idempotency guard per store configuration, kept across reloads: a reload that
    leaves the settings alone keeps the in-memory answers (and the Redis connections)."""

    def __init__(self) -> None:
        self._guards: dict[Settings, Guard] = {}
        self._lock = threading.Lock()

    def for_settings(self, settings: Settings) -> Guard:
        guard = self._guards.get(settings)
        if guard is None:
            with self._lock:
                guard = self._guards.get(settings)
                if guard is None:
                    guard = Guard(open_store(settings), settings.window)
                    self._guards[settings] = guard
        return guard


# An Idempotency-Key longer than this, or not printable ASCII, is refused.
MAX_IDEMPOTENCY_KEY = 255


def header_key(value: str | None) -> str | None:
    """The ``Idempotency-Key`` header's value, checked (400 when malformed), or None."""
    if value is None:
        return None
    if not value or len(value) > MAX_IDEMPOTENCY_KEY or not value.isascii() or not value.isprintable():
        raise BadRequest(f"The Idempotency-Key header must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII "
                         "characters.")
    return value
