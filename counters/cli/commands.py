"""The durable-ledger commands: ``counters migrate``, ``counters flush``, ``counters reconcile``.

Each uses COUNTERS_DATABASE_URL and COUNTERS_REDIS_URL. When one is unset it uses the servers
of the ``counters serve`` running on the same COUNTERS_DATA_DIR (its state file,
``counters.cli.state``), else starts the embedded server under the data dir for the command's
duration.

Exit codes: 0 done (reconcile: clean), 1 reconcile found drift, 2 a setup error (bad setting,
rules file, unreachable server), reported on one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from contextlib import ExitStack
from dataclasses import replace

import click
from redis.exceptions import RedisError
from tqdm import tqdm  # type: ignore[import-untyped]

from counters.cli.cluster import LocalCluster
from counters.cli.embedded import PostgresServer, RedisServer
from counters.cli.state import redact, running_serve
from counters.errors import CountersError
from counters.logs import configure as configure_logging
from counters.redis.scripts import Scripts
from counters.rules import Rules, load_rules
from counters.runtime.durability import make_flusher
from counters.runtime.layout import settle_buckets
from counters.runtime.reload import settle_tiers
from counters.runtime.services import connect_redis
from counters.settings import Settings
from persistence.migrate import migrate_url
from persistence.reconcile.reconciler import Reconciler, Report
from persistence.reconcile.sources import Finding, known_users
from persistence.store import DRIVER_ERRORS, Store

EXIT_CLEAN, EXIT_DRIFT, EXIT_ERROR = 0, 1, 2


class CommandError(click.ClickException):
    """A setup error: one line on stderr, exit code 2."""

    exit_code = EXIT_ERROR

    def __init__(self, message: str) -> None:
        super().__init__(" | ".join(line.strip() for line in message.splitlines() if line.strip()))


def load_settings() -> Settings:
    """Settings from the environment, and logging configured by them; a bad value ends the
    command with its message."""
    try:
        settings = Settings.from_env()
    except CountersError as exc:
        raise CommandError(str(exc)) from exc
    configure_logging(settings.log_level, settings.log_format)
    return settings


Embedded = RedisServer | PostgresServer


def _embedded(
    server: Embedded, variable: str, stack: ExitStack, started: list[Embedded] | None
) -> str:
    """Start an embedded server until the stack closes (added to ``started``); its URL."""
    try:
        server.start()
    except CountersError as exc:
        raise CommandError(f"{exc} (or set {variable})") from exc
    stack.callback(server.stop)
    if started is not None:
        started.append(server)
    name = "Redis" if isinstance(server, RedisServer) else "Postgres"
    click.echo(f"embedded {name} at {redact(server.url)} (data in {server.data_dir})", err=True)
    return server.url


def _of_running_serve(settings: Settings, kind: str, use: bool) -> str | None:
    """The URL of the serve running on the data dir (``kind``: redis or database), if any."""
    running = running_serve(settings.data_dir) if use else None
    if running is None:
        return None
    url: str = getattr(running, f"{kind}_url")
    click.echo(f"using the {kind} of the running serve (pid {running.pid})", err=True)
    return url


def database_url(
    settings: Settings, stack: ExitStack, *, beside_serve: bool = True,
    started: list[Embedded] | None = None,
) -> str:  # fmt: skip
    """COUNTERS_DATABASE_URL, the running serve's, or the embedded Postgres until exit."""
    if settings.database_url is not None:
        return settings.database_url
    if url := _of_running_serve(settings, "database", beside_serve):
        return url
    server = PostgresServer(settings.data_dir / "postgres")
    return _embedded(server, "COUNTERS_DATABASE_URL", stack, started)


def redis_url(
    settings: Settings, stack: ExitStack, *, beside_serve: bool = True,
    started: list[Embedded] | None = None,
) -> str:  # fmt: skip
    """COUNTERS_REDIS_URL, the running serve's, or the embedded Redis until exit."""
    if settings.redis_url is not None:
        return settings.redis_url
    if url := _of_running_serve(settings, "redis", beside_serve):
        return url
    if settings.local_cluster:
        return _local_cluster(settings, stack)
    server = RedisServer(settings.data_dir / "redis", persistent=True)
    return _embedded(server, "COUNTERS_REDIS_URL", stack, started)


def _local_cluster(settings: Settings, stack: ExitStack) -> str:
    """COUNTERS_LOCAL_CLUSTER=1: a new local Redis Cluster (3 masters, 3 replicas, nothing on
    disk: the ledger in Postgres is what survives a restart) until exit; its URL."""
    cluster = LocalCluster(settings.data_dir / "cluster")
    try:
        cluster.start()
    except (CountersError, RedisError, OSError) as exc:  # a node refused to form: one line
        cluster.stop()
        raise CommandError(
            f"the local Redis Cluster did not start: {exc} (or set COUNTERS_REDIS_URL)"
        ) from exc
    stack.callback(cluster.stop)
    click.echo(f"local Redis Cluster at {redact(cluster.url)}", err=True)
    return cluster.url


def with_servers(
    settings: Settings, stack: ExitStack, *, beside_serve: bool = True,
    started: list[Embedded] | None = None,
) -> Settings:  # fmt: skip
    """The settings with Redis and Postgres URLs: the running serve's, or embedded servers
    (until exit, each added to ``started``), for any unset."""
    return replace(
        settings,
        redis_url=redis_url(settings, stack, beside_serve=beside_serve, started=started),
        database_url=database_url(settings, stack, beside_serve=beside_serve, started=started),
    )


def check_redis(url: str, variable: str = "COUNTERS_REDIS_URL") -> None:
    """PING Redis (5 s); a failure is a ``CommandError`` naming the variable."""

    async def ping() -> None:
        redis = connect_redis(url, 1)
        try:
            async with asyncio.timeout(5):
                await redis.ping()
        finally:
            await redis.aclose()

    try:
        asyncio.run(ping())
    except (RedisError, OSError, ValueError) as exc:  # ValueError: redis-py refused the URL
        raise CommandError(f"{variable}: cannot use Redis at {redact(url)}: {exc}") from exc


def apply_migrations(
    url: str, variable: str = "COUNTERS_DATABASE_URL", timeout: float = 60.0
) -> None:
    """Apply every pending migration (connecting within ``timeout`` seconds); say which."""
    where = f"{variable}: migrate {redact(url)}"
    try:
        applied = asyncio.run(migrate_url(url, timeout=timeout))
    except (CountersError, OSError) as exc:
        raise CommandError(f"{where}: {exc}") from exc
    except Exception as exc:  # asyncpg's errors share no base we can name without its stubs
        raise CommandError(f"{where}: {type(exc).__name__}: {exc}") from exc
    for migration in applied:
        click.echo(f"applied migration {migration.version:04d}_{migration.name}", err=True)


@click.command()
def migrate() -> None:
    """Apply the Postgres schema migrations (serve applies them too)."""
    settings = load_settings()
    with ExitStack() as stack:
        apply_migrations(database_url(settings, stack))
    click.echo("schema up to date")


@click.command()
@click.option("--burst", is_flag=True, help="Flush until the streams are empty, then exit.")
def flush(burst: bool) -> None:
    """Move the event streams into the Postgres ledger (serve runs this in every worker)."""
    settings = load_settings()
    with ExitStack() as stack:
        settings = with_servers(settings, stack)
        assert settings.database_url is not None and settings.redis_url is not None
        apply_migrations(settings.database_url)
        check_redis(settings.redis_url)
        total = asyncio.run(_flush(settings, burst))
    click.echo(f"flushed {total} events")


def check_buckets(settings: Settings) -> None:
    """The deployment's recorded bucket count against the setting, and its recorded tiers
    against the rules (counters/runtime/reload.py), before ``serve`` starts its workers: a
    contradiction is a one-line ``CommandError`` (exit 2), as for ``flush``, not a traceback
    from every worker's start-up. A Postgres that does not answer is skipped here; the workers
    check it when it answers (counters/runtime/layout.py)."""

    async def check() -> None:
        assert settings.redis_url is not None
        redis = connect_redis(settings.redis_url, 1)
        store: Store | None = None
        try:
            if settings.database_url is not None:
                try:
                    async with asyncio.timeout(5):
                        store = await Store.open(settings.database_url)
                except DRIVER_ERRORS:
                    store = None
            await settle_buckets(settings, redis, store)
            await settle_tiers(redis, load_rules(settings.rules), timeout=5.0)
        finally:
            await redis.aclose()
            if store is not None:
                await store.close()

    try:
        asyncio.run(check())
    except CountersError as exc:
        raise CommandError(str(exc)) from exc


async def _flush(settings: Settings, burst: bool) -> int:
    assert settings.database_url is not None and settings.redis_url is not None
    store = await Store.open(settings.database_url)
    redis = connect_redis(settings.redis_url, 4)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not main thread
            loop.add_signal_handler(sig, stop.set)  # finish the batch in hand, then exit
    try:
        settings = await settle_buckets(settings, redis, store)  # the recorded bucket count
        flusher = make_flusher(settings, redis, store)
        return await flusher.run(stop, burst=burst, max_failures=20 if burst else None)
    except CountersError as exc:
        raise CommandError(str(exc)) from exc
    finally:
        await redis.aclose()
        await store.close()


@click.command()
@click.option("--repair", is_flag=True, help="Fix drift in the safe direction (see README).")
@click.option("--no-flush", is_flag=True, help="Compare without draining the streams first.")
def reconcile(repair: bool, no_flush: bool) -> None:
    """Compare Redis, Postgres totals and ledger sums for every user; exit 1 on drift."""
    settings = load_settings()
    try:
        rules = load_rules(settings.rules)  # a broken rules file is a setup error, not drift
    except CountersError as exc:
        raise CommandError(str(exc)) from exc
    with ExitStack() as stack:
        settings = with_servers(settings, stack)
        assert settings.database_url is not None and settings.redis_url is not None
        apply_migrations(settings.database_url)
        check_redis(settings.redis_url)
        report = asyncio.run(_reconcile(settings, rules, repair, not no_flush))
    click.echo(summary(report))
    sys.exit(EXIT_CLEAN if report.clean else EXIT_DRIFT)


def summary(report: Report) -> str:
    """The closing lines of a reconcile run."""
    verdict = "clean" if report.clean else "DRIFT"
    lines = [
        f"{verdict}: {report.users} users checked, {report.drifted} drifted,"
        f" {report.repaired} repaired, {report.in_flight} in flight,"
        f" {report.quarantined} quarantined events"
    ]
    if report.unrepaired:
        lines.append("left drifted: " + ", ".join(report.unrepaired))
    return "\n".join(lines)


def _print_drift(finding: Finding, outcome: str) -> None:
    problems = "; ".join(finding.problems)
    tqdm.write(f"drift {finding.observed.user_id}: {problems} -> {outcome}", file=sys.stdout)


async def _reconcile(settings: Settings, rules: Rules, repair: bool, flush_first: bool) -> Report:
    assert settings.database_url is not None and settings.redis_url is not None
    store = await Store.open(settings.database_url)
    redis = connect_redis(settings.redis_url, 4)
    try:
        settings = await settle_buckets(settings, redis, store)  # the recorded bucket count
        total = await known_users(store)
        # Shown only when the run lasts over a second, and only on a terminal.
        with tqdm(total=total, unit="user", file=sys.stderr, delay=1.0, disable=None) as bar:
            reconciler = Reconciler(
                redis, store, Scripts(redis), settings.key_buckets, rules.exp.level_for,
                repair=repair, on_drift=_print_drift, on_progress=bar.update,
            )  # fmt: skip
            flusher = make_flusher(settings, redis, store) if flush_first else None
            return await reconciler.run(flusher)
    except CountersError as exc:
        raise CommandError(str(exc)) from exc
    except (RedisError, *DRIVER_ERRORS) as exc:
        # A run that stopped half-way could not run (exit 2), not drift (1): an attacker's
        # finding, one user key of the wrong type (WRONGTYPE) ended it with a traceback, exit 1.
        raise CommandError(f"reconcile could not run: {type(exc).__name__}: {exc}") from exc
    finally:
        await redis.aclose()
        await store.close()
