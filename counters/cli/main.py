"""The ``counters`` command: serve the API (with embedded servers when none are configured).

Exit codes, for every command: 0 done (``serve``: stopped by SIGTERM or Ctrl-C after draining),
1 ``reconcile`` found drift, 2 a setup error (a bad setting, an invalid rules file, a port in
use, no secrets outside development mode, a server that cannot be reached or started; for
``serve`` also an embedded server that exited while serving: ``counters/cli/watch.py``) printed
as one line, or a usage error.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
from contextlib import ExitStack
from dataclasses import replace
from importlib.metadata import version
from types import FrameType
from typing import Any

import click

from counters.cli import supervisor
from counters.cli.commands import (
    CommandError,
    Embedded,
    apply_migrations,
    check_buckets,
    check_redis,
    flush,
    load_settings,
    migrate,
    reconcile,
    with_servers,
)
from counters.cli.devcreds import DevCredentials
from counters.cli.importer import import_command
from counters.cli.loadtest.command import loadtest
from counters.cli.state import ServeState, clear_state, running_serve, write_state
from counters.cli.watch import ServerWatch
from counters.errors import CountersError
from counters.metrics import prepare_multiprocess_dir
from counters.rules import load_rules
from counters.settings import Settings


class _Commands(click.Group):
    """The group: any of our errors escaping a command is a setup error (one line, exit 2)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CountersError as exc:
            raise CommandError(str(exc)) from exc


@click.group(cls=_Commands)
@click.version_option(version("counters"), "--version", prog_name="counters")
def main() -> None:
    """Counters: EXP/levels and XP credits on Redis, ledgered in Postgres."""


main.add_command(migrate)
main.add_command(flush)
main.add_command(reconcile)
main.add_command(loadtest)
main.add_command(import_command)


class _Stopped(BaseException):
    """SIGTERM or SIGINT arrived: unwind, stopping everything started so far."""


def _stop_on_signal(signum: int, frame: FrameType | None) -> None:
    raise _Stopped(signum)


def check_port(host: str, port: int) -> None:
    """Fail (naming COUNTERS_PORT) when ``host:port`` cannot be bound, before anything starts."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds it
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise CommandError(
                f"cannot listen on {host}:{port} (COUNTERS_HOST/COUNTERS_PORT): {exc.strerror}"
            ) from exc


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
    settings.validate()
    load_rules(settings.rules)  # fail before starting anything when the rules are invalid
    dev_credentials = settings.jwt_secret is None and not settings.service_keys
    if dev_credentials and not settings.dev_mode:
        raise CommandError(
            "no secrets: set COUNTERS_JWT_SECRET and/or COUNTERS_SERVICE_KEYS"
            " (or COUNTERS_DEV_MODE=1 for development credentials)"
        )
    if running := running_serve(settings.data_dir):
        raise CommandError(f"a serve already runs on {settings.data_dir} (pid {running.pid})")
    check_port(settings.host, settings.port)
    previous = {sig: signal.signal(sig, _stop_on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    watch = ServerWatch()
    try:
        with ExitStack() as stack:
            _serve(settings, dev_credentials, stack, watch)
    except _Stopped:
        pass  # everything started was stopped on the way out: a clean exit
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if watch.died is not None:  # stopped because of it: the supervisor starts everything again
        raise CommandError(f"{watch.died}: serve stopped; start it again (the data is kept)")


def _serve(settings: Settings, dev_credentials: bool, stack: ExitStack, watch: ServerWatch) -> None:
    # Embedded servers under the data dir for any URL not configured, stopped on exit.
    started: list[Embedded] = []
    settings = with_servers(settings, stack, beside_serve=False, started=started)
    assert settings.redis_url is not None and settings.database_url is not None
    try:
        apply_migrations(settings.database_url, timeout=5.0)
    except CommandError as exc:
        # The hot path needs no Postgres: serve from Redis, and let every worker apply the
        # migrations in the background once Postgres answers (counters/runtime/durability.py).
        click.echo(f"{exc.message}: serving from Redis; migrations retried in the background")
    check_redis(settings.redis_url)
    check_buckets(settings)  # a contradicting COUNTERS_KEY_BUCKETS: one line, exit 2
    env = {
        "COUNTERS_REDIS_URL": settings.redis_url,
        "COUNTERS_DATABASE_URL": settings.database_url,
    }
    if dev_credentials:
        creds = DevCredentials.load_or_create(settings.data_dir)
        env["COUNTERS_JWT_SECRET"] = creds.jwt_secret
        env["COUNTERS_SERVICE_KEYS"] = creds.service_key
        base_url = f"http://{settings.host}:{settings.port}"
        click.echo(creds.banner(base_url, settings.data_dir, demo=settings.dev_mode))
    if settings.metrics_enabled and settings.workers > 1:
        metrics_dir = settings.data_dir / "metrics"  # this run's, emptied now and at exit
        env |= prepare_multiprocess_dir(metrics_dir)
        stack.callback(shutil.rmtree, metrics_dir, True)
    os.environ.update(env)  # worker processes read their settings from the environment
    api_url = f"http://{settings.host}:{settings.port}"
    state = ServeState(os.getpid(), api_url, settings.redis_url, settings.database_url)
    write_state(settings.data_dir, state)
    stack.callback(clear_state, settings.data_dir)
    watch.start(started)  # an embedded server that exits stops serve (counters/cli/watch.py)
    stack.callback(watch.stop)  # before the servers are stopped on purpose
    # uvicorn.run, with SIGHUP reloading the rules in every worker
    supervisor.run("api.main:app_from_env", **supervisor.serve_options(settings))
