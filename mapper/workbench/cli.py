"""The ``mapper`` command: validate mappings and serve one.

``mapper validate PATH...`` prints every problem as ``file:line: key: message``
and exits 1 if there is any. ``mapper serve`` runs the Khoros-facing server;
without ``--mapping`` it starts the bundled demo (found through the
``crm_mapper.demo`` entry point) and serves its mapping, so a first run
needs nothing else.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Callable
from importlib.metadata import entry_points

import click

from ..core.compiler import compile_file
from ..errors import ConfigError


@click.group()
def main() -> None:
    """crm-mapper: serve Khoros Marketing's Custom CRM API for any CRM from a YAML mapping."""


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(dir_okay=False))
def validate(paths: tuple[str, ...]) -> None:
    """Check mapping files: schema, templates, JSONPaths and every referenced value."""
    failed = 0
    for path in paths:
        try:
            mapping = compile_file(path)
        except ConfigError as exc:
            failed += 1
            for problem in exc.problems:
                click.echo(str(problem), err=True)
            continue
        supported = sum(1 for op in mapping.operations.values() if not op.unsupported)
        click.echo(f"{path}: ok ({mapping.name}, {supported} of {len(mapping.operations)} operations mapped)")
    if failed:
        click.echo(f"{failed} of {len(paths)} mapping file(s) have problems.", err=True)
        sys.exit(1)


@main.command()
@click.option("--mapping", "mapping_path", type=click.Path(exists=True, dir_okay=False),
              help="Mapping file to serve. Without it: the bundled demo and its mapping.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
def serve(mapping_path: str | None, host: str, port: int) -> None:
    """Run the Khoros-facing server (development server; use gunicorn in production)."""
    from ..core.engine import Engine
    from ..service.app import create_app, parse_tokens

    tokens = parse_tokens(os.environ.get("MAPPER_AUTH_TOKENS"))
    if mapping_path is None:
        mapping_path = _demo_mapping()
        if mapping_path is None:
            click.echo("No --mapping given and no demo is installed; pass --mapping FILE.", err=True)
            sys.exit(2)
        if not tokens:
            tokens = [secrets.token_urlsafe(24)]
            click.echo(f"Demo mode: MAPPER_AUTH_TOKENS is not set, so this run accepts the token\n"
                       f"    {tokens[0]}\n"
                       f"Try: curl -H 'Authorization: {tokens[0]}' http://{host}:{port}/api/v1/meta/object/customer")
    try:
        engine = Engine.load(mapping_path)
        app = create_app(engine, tokens=tokens)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        sys.exit(1)
    click.echo(f"Serving {engine.mapping.name} ({mapping_path}) on http://{host}:{port}/api/v1")
    app.run(host=host, port=port, threaded=True)


def _demo_mapping() -> str | None:
    """The bundled demo, found through the ``crm_mapper.demo`` entry point: it starts
    its CRM and returns the mapping to serve. The engine itself names no CRM."""
    for entry in entry_points(group="crm_mapper.demo"):
        prepare: Callable[[], str] = entry.load()
        return prepare()
    return None


if __name__ == "__main__":
    main()
