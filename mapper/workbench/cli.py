"""The ``mapper`` command: the integrator's workbench, and the server's.

``mapper validate PATH...`` prints every problem as ``file:line: key: message``
and exits 1 if there is any (warnings are printed but do not fail); a server
file (``tenants:``) is checked with every mapping it names.
``mapper run`` answers one Khoros operation against the CRM and prints the
trace of every step; ``--record`` keeps the exchanges. ``mapper test``
replays recordings offline against their golden answers. ``mapper init``
starts a mapping from a CRM's OpenAPI description. ``mapper serve`` runs the
Khoros-facing server (``--config`` a server file, or ``--mapping`` one
mapping); without either it starts the bundled demo (found through the
``crm_mapper.demo`` entry point) and serves its mapping, so a first run
needs nothing else. ``mapper reload`` checks the files, then sends SIGHUP
to a running server.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import sys
import time
import uuid
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

import click
import requests

from ..core.compiler import compile_file
from ..core.source import load_source
from ..errors import ConfigError, Problem


@click.group()
def main() -> None:
    """crm-mapper: serve Khoros Marketing's Custom CRM API for any CRM from a YAML mapping."""


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(dir_okay=False))
def validate(paths: tuple[str, ...]) -> None:
    """Check mapping files (and server files): schema, templates, JSONPaths and every referenced value."""
    failed = 0
    for path in paths:
        problems = _server_file_problems(path)
        if problems is not None:
            failed += bool(problems)
            for problem in problems:
                click.echo(str(problem), err=True)
            if not problems:
                click.echo(f"{path}: ok (server file)")
            continue
        try:
            mapping = compile_file(path)
        except ConfigError as exc:
            failed += 1
            for problem in exc.problems:
                click.echo(str(problem), err=True)
            continue
        for warning in mapping.warnings:
            click.echo(f"{warning} (warning)", err=True)
        supported = sum(1 for op in mapping.operations.values() if not op.unsupported)
        click.echo(f"{path}: ok ({mapping.name}, {supported} of {len(mapping.operations)} operations mapped)")
    if failed:
        click.echo(f"{failed} of {len(paths)} mapping file(s) have problems.", err=True)
        sys.exit(1)


def _server_file_problems(path: str) -> list[Problem] | None:
    """The problems of a server file, or None when ``path`` is not one."""
    from ..service.tenants import is_server_file, validate_server_file

    try:
        doc = load_source(path)
    except ConfigError:
        return None  # reported by the mapping check
    return validate_server_file(path) if is_server_file(doc) else None


@main.command()
@click.argument("mapping", type=click.Path(exists=True, dir_okay=False))
@click.argument("operation")
@click.option("--id", "id_", metavar="ID", help="The customer or case id, for operations on one.")
@click.option("--body", metavar="JSON|@FILE", help="The body Khoros would send: JSON, or @file to read it.")
@click.option("--record", "record_dir", metavar="DIR", type=click.Path(file_okay=False),
              help="Save the exchanges and the answer as a recording that 'mapper test DIR' replays.")
@click.option("--limit", default=400, show_default=True, help="Cut bodies and values to this many characters.")
def run(mapping: str, operation: str, id_: str | None, body: str | None, record_dir: str | None,
        limit: int) -> None:
    """Answer one Khoros OPERATION against the CRM and print every step.

    OPERATION is a key under 'operations:' (get_customer, create_case...), or
    'meta' with --id customer|case. The mapping reads its settings and
    secrets from the environment, as 'mapper serve' does; secrets are shown
    as ***.
    """
    from ..core.engine import Engine
    from ..core.khoros import OPERATIONS_BY_NAME
    from ..errors import KhorosError
    from .trace import Redactor, TextTrace, compact

    if operation != "meta" and operation not in OPERATIONS_BY_NAME:
        raise click.BadParameter(f"use one of: {', '.join([*OPERATIONS_BY_NAME, 'meta'])}",
                                 param_hint="OPERATION")
    payload = _read_body_option(body)
    try:
        engine = Engine.load(mapping)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        sys.exit(1)
    if record_dir:
        from .recording import Recorder
        Recorder(engine, mapping, dict(os.environ), record_dir).attach()
    redact = Redactor(sources=[lambda: engine.secret_values])  # tokens fetched during the run too
    trace = TextTrace(click.echo, redact, limit)
    trace_id = uuid.uuid4().hex[:16]
    compiled = engine.mapping.operations.get(operation)
    where = f" ({compiled.where.place})" if compiled is not None else ""
    click.echo(f"{operation}{where} on {engine.mapping.name}" + (f", id {id_}" if id_ else "")
               + f", trace {trace_id}")
    status: int
    answer: Any
    try:
        if operation == "meta":
            status, answer = 200, engine.meta(id_ or "customer", trace_id)
        else:
            status, answer = engine.run(operation, payload, id=id_, trace_id=trace_id, trace=trace)
    except KhorosError as exc:
        redact.add(engine.secret_values)  # an OAuth token fetched during the run
        click.echo(redact(f"answer {exc.status} {exc.code}: {exc.message}"))
        if exc.internal:
            click.echo(redact(f"  detail: {compact(redact(exc.internal), limit)}"))
        click.echo(redact(json.dumps(exc.to_json(trace_id), indent=2, ensure_ascii=False)))
        sys.exit(1)
    finally:
        engine.close()
    redact.add(engine.secret_values)
    click.echo(f"answer {status}:")
    click.echo(redact(json.dumps(answer, indent=2, ensure_ascii=False)))
    if record_dir:
        click.echo(f"recorded into {record_dir}; replay with: mapper test {record_dir}")


def _read_body_option(body: str | None) -> Any:
    if body is None:
        return {}
    text = body
    if body.startswith("@"):
        with open(body[1:], encoding="utf-8") as handle:
            text = handle.read()
    try:
        return json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--body") from exc


@main.command("test")
@click.argument("paths", nargs=-1, type=click.Path(exists=True, file_okay=False))
@click.option("-q", "--quiet", is_flag=True, help="Print only failures and the summary.")
def test_command(paths: tuple[str, ...], quiet: bool) -> None:
    """Replay recordings offline and compare the Khoros answers with the golden ones.

    Each PATH is a recording directory (it holds session.yaml) or a folder of
    them; the default is tests/recordings. No CRM is called.
    """
    from .recording import find_recordings, replay

    directories = find_recordings(paths or ("tests/recordings",))
    if not directories:
        click.echo("No recordings found (a recording directory holds session.yaml).", err=True)
        sys.exit(2)
    failed = cases = 0
    for directory in directories:
        try:
            result = replay(directory)
        except ConfigError as exc:
            failed += 1
            click.echo(f"{directory}: the mapping does not load:", err=True)
            for problem in exc.problems:
                click.echo(f"  {problem}", err=True)
            continue
        cases += len(result.cases)
        bad = [c for c in result.cases if not c.ok]
        failed += len(bad)
        for case in bad:
            click.echo(f"FAIL {case.file} ({case.operation}): {case.problem}\n", err=True)
        if not quiet or bad:
            click.echo(f"{directory}: {len(result.cases) - len(bad)} of {len(result.cases)} cases pass "
                       f"({result.mapping})")
    if failed:
        click.echo(f"{failed} case(s) failed.", err=True)
        sys.exit(1)
    click.echo(f"All {cases} cases of {len(directories)} recording(s) pass.")


@main.command()
@click.argument("specs", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--customer", metavar="PATH", help="The collection Khoros calls customers, e.g. /persons.")
@click.option("--case", "case_", metavar="PATH", help="The collection Khoros calls cases, e.g. /deals.")
@click.option("--note", metavar="PATH", help="The collection that keeps a case's interactions, e.g. /notes "
                                             "(optional; '-' for none).")
@click.option("--name", help="The mapping's name (default: the description's title).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write here instead of printing.")
def init(specs: tuple[str, ...], customer: str | None, case_: str | None, note: str | None, name: str | None,
         output: str | None) -> None:
    """Start a mapping from a CRM's OpenAPI description (one or more SPECS files).

    Names the customer, case and note collections by option, or asks for
    them. Writes the model from their schemas, the requests, and a TODO
    wherever it cannot guess: 'mapper validate' lists those until filled.
    """
    from .scaffold import ScaffoldError, Spec, build_mapping, collections, count_todos, find_resource, render

    try:
        loaded = [Spec.load(path) for path in specs]
        offered = collections(loaded)
        if customer is None or case_ is None:
            click.echo("Collections that can be created and read one by one: " + ", ".join(offered), err=True)
        customer = customer or click.prompt("Khoros customers are the CRM's", err=True)
        case_ = case_ or click.prompt("Khoros cases are the CRM's", err=True)
        if note is None:
            note = click.prompt("Interactions are kept as (a collection, or '-' for none)", default="-", err=True)
        title = name or str((loaded[0].data.get("info") or {}).get("title") or "my-crm")
        mapping, notes = build_mapping(
            loaded, find_resource(loaded, "customer", customer), find_resource(loaded, "case", case_),
            find_resource(loaded, "note", note) if note and note != "-" else None, title)
    except ScaffoldError as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    text = render(mapping, notes, [os.path.basename(p) for p in specs])
    if output is None:
        click.echo(text, nl=False)
        return
    with open(output, "w", encoding="utf-8") as handle:
        handle.write(text)
    todos = count_todos(mapping)
    click.echo(f"Wrote {output}: fill its {todos} TODO(s), then: mapper validate {output}", err=True)


@main.command()
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="Server file listing tenants (default $MAPPER_CONFIG).")
@click.option("--mapping", "mapping_path", type=click.Path(exists=True, dir_okay=False),
              help="Mapping file to serve. Without it or --config: the bundled demo and its mapping.")
@click.option("--host", default="127.0.0.1", show_default=True, envvar="MAPPER_HOST", show_envvar=True,
              help="Address to listen on (0.0.0.0: all).")
@click.option("--port", default=8080, show_default=True, type=int, envvar="MAPPER_PORT", show_envvar=True)
@click.option("--workers", type=click.IntRange(min=1), envvar="MAPPER_WORKERS", show_envvar=True,
              help="Processes (default 2: one per core of a small machine).")
@click.option("--threads", type=click.IntRange(min=1), envvar="MAPPER_THREADS", show_envvar=True,
              help="Requests each process serves at once (default 128); the CRM connection pool follows it.")
@click.option("--timeout", type=click.IntRange(min=1), envvar="MAPPER_WORKER_TIMEOUT", show_envvar=True,
              help="Seconds a silent process is given before it is replaced (default 30).")
@click.option("--graceful-timeout", type=click.IntRange(min=1), envvar="MAPPER_GRACEFUL_TIMEOUT",
              show_envvar=True, help="Seconds requests in flight get to finish on stop (default 10).")
@click.option("--keepalive", type=click.IntRange(min=1), envvar="MAPPER_KEEPALIVE", show_envvar=True,
              help="Seconds an idle client connection stays open (default 5).")
@click.option("--idempotency-store", type=click.Choice(["memory", "sqlite", "redis"]),
              envvar="MAPPER_IDEMPOTENCY_STORE", show_envvar=True,
              help="Where repeated creates are caught: memory (each process), sqlite (one file for this "
              "server's processes: the default with more than one) or redis (shared by replicas too; URL in "
              "$MAPPER_REDIS_URL). Default: the server file's idempotency block, else as said.")
@click.option("--idempotency-window", type=click.FloatRange(min=0), envvar="MAPPER_IDEMPOTENCY_WINDOW",
              show_envvar=True, help="Seconds a create's answer is kept for a retry (default 600; 0: off).")
def serve(config_path: str | None, mapping_path: str | None, host: str, port: int, workers: int | None,
          threads: int | None, timeout: int | None, graceful_timeout: int | None, keepalive: int | None,
          idempotency_store: str | None, idempotency_window: float | None) -> None:
    """Run the Khoros-facing server in production: gunicorn, threaded workers.

    Settings not given here come from mapper/service/gunicorn_conf.py. SIGHUP re-reads
    every file and swaps them in only if all are good (docs/service.md)."""
    from ..service import gunicorn_conf
    from ..service.app import create_app, parse_tokens
    from ..service.server import run, settings, share_idempotency_store

    tokens = parse_tokens(os.environ.get("MAPPER_AUTH_TOKENS"))
    # The app reads these from the environment (over the server file's idempotency block).
    if idempotency_store is not None:
        os.environ["MAPPER_IDEMPOTENCY_STORE"] = idempotency_store
    if idempotency_window is not None:
        os.environ["MAPPER_IDEMPOTENCY_WINDOW"] = str(idempotency_window)
    config_path = config_path or os.environ.get("MAPPER_CONFIG")
    if config_path is None and mapping_path is None:
        mapping_path = os.environ.get("MAPPER_MAPPING")
    if config_path is None and mapping_path is None:
        mapping_path = _demo_mapping()
        if mapping_path is None:
            click.echo("No --mapping given and no demo is installed; pass --mapping FILE.", err=True)
            sys.exit(2)
        if not tokens:
            tokens = [secrets.token_urlsafe(24)]
            click.echo(f"Demo mode: MAPPER_AUTH_TOKENS is not set, so this run accepts the token\n"
                       f"    {tokens[0]}\n"
                       f"Try: curl -H 'Authorization: {tokens[0]}' http://{host}:{port}/api/v1/meta/object/customer",
                       )
    options = settings({"bind": [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"], "workers": workers,
                        "threads": threads, "timeout": timeout, "graceful_timeout": graceful_timeout,
                        "keepalive": keepalive})
    shared = share_idempotency_store(int(options.get("workers", gunicorn_conf.workers)), os.environ)
    try:
        pool_size = options.get("threads", gunicorn_conf.threads)
        if config_path:
            app = create_app(config_path=config_path, pool_size=pool_size)
        else:
            app = create_app(mapping_path=mapping_path, tokens=tokens, pool_size=pool_size)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        sys.exit(1)
    runtime = app.config["RUNTIME"]
    served = ", ".join(f"{name}: {t.engine.mapping.name}" for name, t in runtime.current.tenants.items())
    click.echo(f"Serving {served} ({config_path or mapping_path}) on http://{host}:{port}/api/v1 "
               f"({options['workers']} processes x {options['threads']} threads; pid {os.getpid()}, "
               "SIGHUP reloads)")
    if shared and runtime.current.idempotency.store == "sqlite":
        click.echo(f"Repeated creates are caught across the {options['workers']} processes in {shared}")
    sys.stdout.flush()
    run(app, options)


@main.command()
@click.option("--pid", type=int, help="Process id of the server (gunicorn: the master's).")
@click.option("--pid-file", type=click.Path(exists=True, dir_okay=False),
              help="File holding that process id (gunicorn --pid, systemd PIDFile).")
@click.option("--url", help="The server's base URL: wait for its /readyz to show the outcome "
              "(sends $MAPPER_ADMIN_TOKENS, if set, to see the problems of a refused reload).")
@click.argument("check", nargs=-1, type=click.Path(dir_okay=False))
def reload(pid: int | None, pid_file: str | None, url: str | None, check: tuple[str, ...]) -> None:
    """Reload a running server: check the files given (server file or mappings) first, then
    send SIGHUP. The server checks everything again and keeps the old files if any is broken;
    with --url, wait until every worker asked reports the outcome, and exit 1 if it was refused."""
    if (pid is None) == (pid_file is None):
        click.echo("Give the server's process id: --pid N or --pid-file FILE.", err=True)
        sys.exit(2)
    broken = 0
    for path in check:
        problems = _server_file_problems(path)
        if problems is None:
            try:
                compile_file(path)
                problems = []
            except ConfigError as exc:
                problems = exc.problems
        broken += bool(problems)
        for problem in problems:
            click.echo(str(problem), err=True)
    if broken:
        click.echo("Not reloading: fix the problems above first (the server keeps serving the old files).",
                   err=True)
        sys.exit(1)
    if pid is None:
        assert pid_file is not None
        with open(pid_file, encoding="ascii") as handle:
            pid = int(handle.read().strip())
    headers = _admin_headers()
    if url:
        try:
            _readyz(url, headers)  # it answers before we signal: the wait below can only fail on the reload
        except (requests.RequestException, ValueError) as exc:
            click.echo(f"Not reloading: {url}/readyz does not answer ({type(exc).__name__}).", err=True)
            sys.exit(2)
    sent = time.time()
    os.kill(pid, signal.SIGHUP)
    click.echo(f"Sent SIGHUP to {pid}; its /readyz shows the result.")
    if url:
        sys.exit(_wait_for_reload(url, sent, headers))


def _admin_headers() -> dict[str, str]:
    """The first admin token, read as the server reads it (the deprecated variable too), so
    that /readyz shows the problems of a refused reload; none when no admin token is set."""
    from ..service.tenants import DEFAULT_ADMIN_ENV, admin_tokens

    tokens = admin_tokens(os.environ, DEFAULT_ADMIN_ENV)
    return {"Authorization": f"Bearer {tokens[0]}"} if tokens else {}


def _readyz(url: str, headers: dict[str, str]) -> dict[str, Any]:
    with requests.Session() as session:  # a new connection each time: another worker may answer
        answer: dict[str, Any] = session.get(url.rstrip("/") + "/readyz", headers=headers, timeout=10).json()
    return answer


def _wait_for_reload(url: str, sent: float, headers: dict[str, str], seconds: float = 60.0) -> int:
    """Until five answers in a row (likely from different workers) show the outcome of a
    reload that happened after the signal was sent (same machine, same clock)."""
    from ..service.reload import iso_time

    after = iso_time(sent)
    agreeing = 0
    deadline = time.monotonic() + seconds
    ready: dict[str, Any] = {}
    while time.monotonic() < deadline and agreeing < 5:
        ready = _readyz(url, headers)
        last = ready.get("last_reload") or {}
        done = str(last.get("at", "")) > after
        agreeing = agreeing + 1 if done else 0
        if not done:
            time.sleep(0.1)
    last = ready.get("last_reload") or {}
    if agreeing < 5:
        click.echo("The server did not report the reload in time; see its log.", err=True)
        return 1
    if last.get("ok"):
        click.echo(f"Reloaded: generation {ready['generation']}.")
        return 0
    click.echo(f"Refused: the server keeps generation {ready.get('generation')}.", err=True)
    for problem in last.get("problems", []):
        click.echo(str(problem), err=True)
    return 1


def _demo_mapping() -> str | None:
    """The bundled demo, found through the ``crm_mapper.demo`` entry point: it starts
    its CRM and returns the mapping to serve. The engine itself names no CRM."""
    for entry in entry_points(group="crm_mapper.demo"):
        prepare: Callable[[], str] = entry.load()
        return prepare()
    return None


if __name__ == "__main__":
    main()
