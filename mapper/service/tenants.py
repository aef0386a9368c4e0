"""Tenants: which mapping, which CRM and which Khoros secrets serve each request.

One server can serve several Khoros companies or initiatives, each with its
own CRM. The server file (YAML, ``schemas/server.schema.json``) lists them::

    tenants:
      acme:
        mapping: mappings/my-crm.yaml        # relative to the server file
        khoros_tokens_env: ACME_KHOROS_TOKENS
        env_prefix: ACME_                    # the mapping reads ACME_CRM_URL, ...
        company_ids: ["1234"]
    default_tenant: acme

A request is served by the tenant its ``x-sf-company-id`` and
``x-sf-initiative`` headers select (a tenant naming both wins over one naming
either), else by the default tenant, else refused. Its ``Authorization`` value
is then checked against that tenant's tokens only: a secret registered for
one company can never reach another company's CRM. Each tenant has its own
:class:`~mapper.core.engine.Engine` (connection pool, OAuth token cache,
live-model cache) and a name that namespaces anything stored per tenant.

The single-mapping command line (``--mapping``/``MAPPER_MAPPING`` with
``MAPPER_AUTH_TOKENS``) is the same thing with one default tenant,
``default``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import jsonschema

from ..core import SCHEMA_DIR
from ..core.compiler import compile_document, schema_problems
from ..core.engine import DEFAULT_POOL_SIZE, Engine
from ..core.source import SourceDocument, load_source
from ..errors import ConfigError, Problem, ServerError, Unauthorized
from .idempotency import Settings as GuardSettings
from .idempotency import settings_from as guard_settings_from

if TYPE_CHECKING:
    from .app import TokenCheck

log = logging.getLogger("mapper.tenants")

SCHEMA_PATH = os.path.join(SCHEMA_DIR, "server.schema.json")
with open(SCHEMA_PATH, encoding="utf-8") as _handle:
    SERVER_SCHEMA = json.load(_handle)
_VALIDATOR = jsonschema.Draft202012Validator(SERVER_SCHEMA)

DEFAULT_ADMIN_ENV = "MAPPER_ADMIN_TOKENS"
# The console's own token from before there was one admin token: still read, as more admin tokens.
DEPRECATED_CONSOLE_ENV = "MAPPER_CONSOLE_TOKEN"
SINGLE_TENANT = "default"


def is_server_file(doc: SourceDocument) -> bool:
    """A server file has ``tenants:`` at the top; a mapping never does."""
    return isinstance(doc.data, dict) and "tenants" in doc.data


@dataclass(frozen=True)
class TenantSpec:
    """One tenant as the server file declares it (no secrets: only variable names)."""

    name: str
    mapping: str
    tokens_env: str
    env_prefix: str | None
    company_ids: frozenset[str]
    initiatives: frozenset[str]
    line: int

    @property
    def kinds(self) -> tuple[bool, bool]:
        return bool(self.company_ids), bool(self.initiatives)


@dataclass(frozen=True)
class ServerFile:
    path: str
    tenants: list[TenantSpec]
    default: str | None
    admin_tokens_env: str
    idempotency: dict[str, Any] = field(default_factory=dict)  # the server file's idempotency: block


def read_text(path: str, texts: Mapping[str, str] | None) -> str:
    """A file's text: from ``texts`` (a last good copy) when given, else from disk."""
    if texts is not None:
        if path not in texts:
            raise ConfigError([Problem(path, 0, "", "not in the last good copy of the configuration")])
        return texts[path]
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError as exc:
        raise ConfigError([Problem(path, 0, "", f"cannot read the file: {exc.strerror}")]) from exc


def read_server_file(path: str, text: str | None = None) -> tuple[ServerFile, SourceDocument]:
    """Parse and check the server file itself (not the mappings it names)."""
    doc = load_source(path, text)
    problems = schema_problems(doc, _VALIDATOR)
    if problems:
        raise ConfigError(problems)
    data: dict[str, Any] = doc.data
    base = os.path.dirname(os.path.abspath(path))
    specs = []
    for name, raw in data["tenants"].items():
        specs.append(TenantSpec(
            name=name, mapping=os.path.normpath(os.path.join(base, raw["mapping"])),
            tokens_env=raw["khoros_tokens_env"], env_prefix=raw.get("env_prefix"),
            company_ids=frozenset(str(v) for v in raw.get("company_ids", [])),
            initiatives=frozenset(str(v) for v in raw.get("initiatives", [])),
            line=doc.line_of(("tenants", name))))
    default = data.get("default_tenant")
    if default is not None and default not in data["tenants"]:
        problems.append(doc.problem(("default_tenant",), f"there is no tenant '{default}' in tenants"))
    for spec in specs:
        if spec.kinds == (False, False) and spec.name != default:
            problems.append(doc.problem(("tenants", spec.name), "this tenant selects no request: give it "
                                        "company_ids and/or initiatives, or make it the default_tenant"))
    problems += _overlaps(doc, specs)
    if problems:
        raise ConfigError(problems)
    return ServerFile(path, specs, default, data.get("admin_tokens_env", DEFAULT_ADMIN_ENV),
                      data.get("idempotency", {})), doc


def _overlaps(doc: SourceDocument, specs: list[TenantSpec]) -> list[Problem]:
    """Two tenants selecting the same request with the same precision: which would serve it?"""
    problems = []
    for i, a in enumerate(specs):
        for b in specs[i + 1:]:
            if a.kinds != b.kinds or a.kinds == (False, False):
                continue
            companies = a.company_ids & b.company_ids if a.company_ids else {"*"}
            initiatives = a.initiatives & b.initiatives if a.initiatives else {"*"}
            if companies and initiatives:
                problems.append(doc.problem(("tenants", b.name), f"selects the same requests as tenant "
                                            f"'{a.name}'; give each company id / initiative to one tenant"))
    return problems


def validate_server_file(path: str) -> list[Problem]:
    """Every problem in the server file and in every mapping it names (for ``mapper validate``).

    Environment variables are not needed here; they are checked when the server loads.
    """
    try:
        server, doc = read_server_file(path)
    except ConfigError as exc:
        return exc.problems
    problems: list[Problem] = []
    for spec in server.tenants:
        if not os.path.isfile(spec.mapping):
            problems.append(doc.problem(("tenants", spec.name, "mapping"),
                                        "the mapping file does not exist (paths are relative to this file)"))
            continue
        try:
            compile_document(load_source(spec.mapping))
        except ConfigError as exc:
            problems += exc.problems
    return problems


@dataclass
class Tenant:
    """One company's (or initiative's) CRM: its engine and the Khoros tokens it accepts."""

    name: str
    engine: Engine
    check: TokenCheck
    company_ids: frozenset[str] = frozenset()
    initiatives: frozenset[str] = frozenset()
    mapping_file: str = ""

    def precision(self, company_id: str | None, initiative: str | None) -> int:
        """How precisely this tenant matches the headers: 0 = not at all."""
        if not self.company_ids and not self.initiatives:
            return 0
        if self.company_ids and company_id not in self.company_ids:
            return 0
        if self.initiatives and initiative not in self.initiatives:
            return 0
        return bool(self.company_ids) + bool(self.initiatives)


@dataclass
class TenantSet:
    """Every tenant of one configuration generation; swapped whole on reload."""

    tenants: dict[str, Tenant]
    default: Tenant | None
    admin: TokenCheck | None
    source: str  # the server file, or the mapping file in single-mapping mode
    files: list[str] = field(default_factory=list)  # every file read, for /readyz
    texts: dict[str, str] = field(default_factory=dict)  # what they held: the last good copy
    generation: int = 0
    khoros_tokens: list[str] = field(default_factory=list)  # for the log redactor
    # Where duplicate creates are caught (mapper.service.idempotency); shared by all tenants,
    # each under its own name.
    idempotency: GuardSettings = field(default_factory=GuardSettings)
    _in_flight: int = 0
    _retired: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        # Every engine's redactor cleans the errors and log lines it makes: the Khoros and admin
        # tokens of every tenant are never shown either, whichever CRM echoes them.
        for tenant in self.tenants.values():
            tenant.engine.redactor.add(self.khoros_tokens)

    def select(self, company_id: str | None, initiative: str | None) -> Tenant:
        """The tenant that serves a request with these headers, or 401."""
        best = 0
        chosen: list[Tenant] = []
        for tenant in self.tenants.values():
            score = tenant.precision(company_id, initiative)
            if score > best:
                best, chosen = score, [tenant]
            elif score and score == best:
                chosen.append(tenant)
        if len(chosen) > 1:
            raise ServerError("The server's tenant file lets this request's x-sf-company-id and "
                              "x-sf-initiative select more than one CRM; the operator must fix it.",
                              internal=f"tenants {', '.join(t.name for t in chosen)}")
        if chosen:
            return chosen[0]
        if self.default is not None:
            return self.default
        raise Unauthorized("No CRM is configured on this server for this request's x-sf-company-id / "
                           "x-sf-initiative headers; ask the operator to add the company to the tenant file.")

    def same_on_disk(self) -> bool:
        """True when every file still holds the text this set was built from: a worker forked
        from the process that built it then serves it as it is, without loading it again."""
        if not self.texts:
            return False
        try:
            return all(read_text(path, None) == text for path, text in self.texts.items())
        except ConfigError:  # a file gone or unreadable: the loader will say what is wrong
            return False

    @property
    def secret_values(self) -> list[str]:
        values = list(self.khoros_tokens)
        for tenant in self.tenants.values():
            values += tenant.engine.secret_values
        return values

    # -- in-flight accounting: a replaced set is closed when its last request ends

    def enter(self) -> bool:
        """Count one more request on this set; False when it was retired meanwhile."""
        with self._lock:
            if self._retired:
                return False
            self._in_flight += 1
        return True

    def leave(self) -> None:
        with self._lock:
            self._in_flight -= 1
            close = self._retired and self._in_flight == 0
        if close:
            self.close()

    def retire(self) -> None:
        with self._lock:
            self._retired = True
            close = self._in_flight == 0
        if close:
            self.close()

    def close(self) -> None:
        for tenant in self.tenants.values():
            tenant.engine.close()


def _tokens(raw: str | None) -> list[str]:
    from .app import parse_tokens
    return parse_tokens(raw)


def _token_check(tokens: list[str]) -> TokenCheck:
    from .app import TokenCheck
    return TokenCheck(tokens)


def _tenant_environ(environ: Mapping[str, str], prefix: str | None) -> Mapping[str, str]:
    if not prefix:
        return environ
    return {key[len(prefix):]: value for key, value in environ.items() if key.startswith(prefix)}


def load_server(path: str, environ: Mapping[str, str] | None = None,
                texts: Mapping[str, str] | None = None, pool_size: int = DEFAULT_POOL_SIZE) -> TenantSet:
    """Read the server file and every mapping (from disk, or from ``texts``), bind them to
    the environment, build each tenant's engine. Raises :class:`ConfigError` listing every
    problem; builds nothing half-way (engines made before a later problem are closed)."""
    environ = os.environ if environ is None else environ
    path = os.path.abspath(path)
    read = {path: read_text(path, texts)}
    server, doc = read_server_file(path, read[path])
    problems: list[Problem] = []
    tenants: dict[str, Tenant] = {}
    owners: dict[str, str] = {}  # Khoros token -> tenant, to refuse one secret for two companies
    all_tokens: list[str] = []
    for spec in server.tenants:
        tokens = _tokens(environ.get(spec.tokens_env))
        if not tokens:
            problems.append(doc.problem(("tenants", spec.name, "khoros_tokens_env"),
                                        f"the environment variable '{spec.tokens_env}' is not set; set it to the "
                                        "secret registered with Khoros for this tenant (several, comma-separated, "
                                        "while rotating)"))
        for token in tokens:
            other = owners.setdefault(token, spec.name)
            if other != spec.name:
                problems.append(doc.problem(("tenants", spec.name, "khoros_tokens_env"),
                                            f"a Khoros token of this tenant is also a token of tenant '{other}'; "
                                            "each company must have its own secret"))
        all_tokens += tokens
        if texts is None and not os.path.isfile(spec.mapping):
            problems.append(doc.problem(("tenants", spec.name, "mapping"),
                                        "the mapping file does not exist (paths are relative to this file)"))
            continue
        try:
            read[spec.mapping] = read_text(spec.mapping, texts)
            engine = Engine.load(spec.mapping, _tenant_environ(environ, spec.env_prefix), read[spec.mapping],
                                 pool_size=pool_size)
        except ConfigError as exc:
            problems += [_prefixed(p, spec) for p in exc.problems]
            continue
        if tokens:
            tenants[spec.name] = Tenant(spec.name, engine, _token_check(tokens), spec.company_ids,
                                        spec.initiatives, spec.mapping)
        else:
            engine.close()
    admin = admin_tokens(environ, server.admin_tokens_env)
    if set(admin) & set(all_tokens):
        problems.append(doc.problem(("admin_tokens_env",), _ADMIN_IS_KHOROS.format(server.admin_tokens_env)))
    try:
        line = doc.line_of(("idempotency",)) if server.idempotency else 0
        guard_settings = guard_settings_from(environ, server.idempotency, path, line)
    except ConfigError as exc:
        problems += exc.problems
    if problems:
        for tenant in tenants.values():
            tenant.engine.close()
        raise ConfigError(problems)
    default = tenants[server.default] if server.default else None
    return TenantSet(tenants, default, _token_check(admin) if admin else None, path, files=list(read),
                     texts=read, khoros_tokens=all_tokens + admin, idempotency=guard_settings)


_ADMIN_IS_KHOROS = ("an admin token in '{}' is also a Khoros token; the admin token reads metrics and, with "
                    "the console on, writes to every CRM: give it a secret of its own")


def admin_tokens(environ: Mapping[str, str], variable: str) -> list[str]:
    """The operator's tokens (/metrics, the detailed /readyz, the console): ``variable``'s,
    plus those of the deprecated ``MAPPER_CONSOLE_TOKEN``, which still works."""
    tokens = _tokens(environ.get(variable))
    old = _tokens(environ.get(DEPRECATED_CONSOLE_ENV))
    if old:
        log.warning("%s is deprecated: put its token in %s, the one admin token (it also opens /metrics), "
                    "and switch the console on with MAPPER_CONSOLE=on.", DEPRECATED_CONSOLE_ENV, variable)
    return list(dict.fromkeys(tokens + old))


def _prefixed(problem: Problem, spec: TenantSpec) -> Problem:
    """Environment problems of a tenant with a prefix name the variable it really reads."""
    if not spec.env_prefix or "the environment variable '" not in problem.message:
        return problem
    name = problem.message.split("'")[1]
    message = problem.message.replace(f"'{name}'", f"'{spec.env_prefix}{name}' (tenant '{spec.name}')", 1)
    return Problem(problem.file, problem.line, problem.key, message)


def single_tenant(engine: Engine, tokens: list[str], environ: Mapping[str, str] | None = None,
                  text: str | None = None) -> TenantSet:
    """The single-mapping command line as a configuration: one default tenant."""
    environ = os.environ if environ is None else environ
    tenant = Tenant(SINGLE_TENANT, engine, _token_check(tokens), mapping_file=engine.mapping.file)
    admin = admin_tokens(environ, DEFAULT_ADMIN_ENV)
    if set(admin) & set(tokens):
        raise ConfigError([Problem("environment", 0, DEFAULT_ADMIN_ENV, _ADMIN_IS_KHOROS.format(DEFAULT_ADMIN_ENV))])
    return TenantSet({SINGLE_TENANT: tenant}, tenant, _token_check(admin) if admin else None,
                     engine.mapping.file, files=[engine.mapping.file],
                     texts={engine.mapping.file: text} if text is not None else {},
                     khoros_tokens=list(tokens) + admin, idempotency=guard_settings_from(environ))


def from_environment(engine: Engine | None = None, *, mapping_path: str | None = None,
                     tokens: list[str] | None = None, config_path: str | None = None,
                     environ: Mapping[str, str] | None = None, texts: Mapping[str, str] | None = None,
                     pool_size: int = DEFAULT_POOL_SIZE) -> tuple[TenantSet, Callable[[], TenantSet] | None]:
    """The configuration to serve and how to read it again (None: it cannot be reloaded).

    In order: a ready ``engine`` (tests; one tenant, not reloadable); a server file
    (``config_path`` or ``$MAPPER_CONFIG``); one mapping (``mapping_path`` or
    ``$MAPPER_MAPPING``) with ``tokens`` (default ``$MAPPER_AUTH_TOKENS``). ``texts``
    (a last good copy, see :func:`last_good`) replaces the disk for the first load only.
    """
    env = os.environ if environ is None else environ
    if engine is not None:
        return single_tenant(engine, tokens if tokens is not None else _tokens(env.get("MAPPER_AUTH_TOKENS")),
                             env), None
    server_file = config_path or env.get("MAPPER_CONFIG")
    if server_file:
        def load_file() -> TenantSet:
            return load_server(server_file, env, pool_size=pool_size)
        return load_server(server_file, env, texts, pool_size), load_file
    path = mapping_path or env.get("MAPPER_MAPPING")
    if not path:
        raise ConfigError([Problem("environment", 0, "MAPPER_MAPPING",
                                   "no mapping given; pass one or set MAPPER_MAPPING to a mapping file "
                                   "(or MAPPER_CONFIG to a server file listing tenants)")])
    khoros = tokens if tokens is not None else _tokens(env.get("MAPPER_AUTH_TOKENS"))

    def load_mapping(copy: Mapping[str, str] | None = None) -> TenantSet:
        text = read_text(path, copy)
        # The mapping's problems first, then the missing tokens.
        engine = Engine.load(path, env, text, pool_size=pool_size)
        try:
            return single_tenant(engine, khoros, env, text)
        except ConfigError:
            engine.close()
            raise
    return load_mapping(texts), load_mapping


# -- the last good copy ------------------------------------------------------------------
# Under gunicorn a worker can start at any time (one died, or was recycled). If the files
# on disk are broken then (a reload refused them), it must not fail to boot: gunicorn
# would stop the whole server. So every worker that loads a good configuration writes its
# texts to $MAPPER_LAST_GOOD (set by the gunicorn hooks), and a worker that cannot load
# the files on disk serves that copy instead. Only file texts are kept, never secrets.

LAST_GOOD_ENV = "MAPPER_LAST_GOOD"


def save_last_good(tenants: TenantSet, environ: Mapping[str, str] | None = None) -> None:
    target = (os.environ if environ is None else environ).get(LAST_GOOD_ENV)
    if not target or not tenants.texts:
        return
    temporary = f"{target}.{os.getpid()}.tmp"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        json.dump({"source": tenants.source, "texts": tenants.texts}, handle)
    os.replace(temporary, target)  # atomic: a reader sees the old copy or the new one


def last_good(environ: Mapping[str, str] | None = None) -> dict[str, str] | None:
    target = (os.environ if environ is None else environ).get(LAST_GOOD_ENV)
    if not target or not os.path.isfile(target):
        return None
    with open(target, encoding="utf-8") as handle:
        texts: dict[str, str] = json.load(handle)["texts"]
    return texts
