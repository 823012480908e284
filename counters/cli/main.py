"""The ``counters`` command: serve the API (with embedded servers when none are configured)."""

from __future__ import annotations

import os
from contextlib import ExitStack
from dataclasses import replace

import click

from counters.cli import supervisor
from counters.cli.commands import (
    apply_migrations,
    flush,
    load_settings,
    migrate,
    reconcile,
    with_servers,
)
from counters.cli.devcreds import DevCredentials
from counters.cli.importer import import_command
from counters.cli.loadtest.command import loadtest
from counters.errors import ConfigError
from counters.rules import load_rules


@click.group()
def main() -> None:
    """Counters: EXP/levels and XP credits on Redis, ledgered in Postgres."""


main.add_command(migrate)
main.add_command(flush)
main.add_command(reconcile)
main.add_command(loadtest)
main.add_command(import_command)


@main.command()
@click.option("--host", default=None, help="Bind address [env COUNTERS_HOST; 127.0.0.1]")
@click.option("--port", type=int, default=None, help="Port [env COUNTERS_PORT; 8000]")
@click.option("--workers", type=int, default=None, help="Worker processes [COUNTERS_WORKERS; 1]")
def serve(host: str | None, port: int | None, workers: int | None) -> None:
    """Serve the HTTP API; starts an embedded Redis and Postgres when their URLs are unset."""
    settings = load_settings()
    settings = replace(
        settings,
        host=host or settings.host,
        port=port or settings.port,
        workers=workers or settings.workers,
    )
    try:
        load_rules(settings.rules)  # fail before starting anything when the rules are invalid
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    with ExitStack() as stack:
        # Embedded servers under the data dir for any URL not configured, stopped on exit.
        settings = with_servers(settings, stack)
        assert settings.redis_url is not None and settings.database_url is not None
        env = {
            "COUNTERS_REDIS_URL": settings.redis_url,
            "COUNTERS_DATABASE_URL": settings.database_url,
        }
        apply_migrations(settings.database_url)
        if settings.jwt_secret is None and not settings.service_keys:
            creds = DevCredentials.load_or_create(settings.data_dir)
            env["COUNTERS_JWT_SECRET"] = creds.jwt_secret
            env["COUNTERS_SERVICE_KEYS"] = creds.service_key
            click.echo(creds.banner(f"http://{settings.host}:{settings.port}", settings.data_dir))
        os.environ.update(env)  # worker processes read their settings from the environment
        supervisor.run(  # uvicorn.run, with SIGHUP reloading the rules in every worker
            "api.main:app_from_env",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            loop="uvloop",
            http="httptools",
            access_log=False,
            proxy_headers=False,  # nothing reads the client's address; it cost ~3% CPU a request
            server_header=False,
            log_level="info",
        )
