"""Fixtures: a real Redis and a real Postgres started by the suite itself, on free ports, with data
in a temp dir; never a server that happens to run on the machine."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import replace

import httpx2
import pytest
import redis
from starlette.applications import Starlette

from api.app import create_app
from counters.cli.cluster import LocalCluster
from counters.cli.embedded import PostgresServer, RedisServer, free_port
from counters.clock import ManualClock
from counters.settings import DEFAULT_KEY_BUCKETS, Settings
from tests.support.cluster import sync_client
from tests.support.core import JWT_SECRET, NOON, SERVICE_KEY
from tests.support.http import asgi_client
from tests.support.live import CORS_ORIGIN, live_service
from tests.support.persistence import migrate_and_truncate


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"), persistent=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    server = PostgresServer(tmp_path_factory.mktemp("postgres"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """The suite's own Redis Cluster (3 masters, each with a replica), started once (seconds)."""
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster"))
    cluster.start()
    yield cluster
    cluster.stop()


# The contract tests that run on the single Redis AND on the local cluster (issue #12): every
# test of these modules that uses Redis, plus any test marked ``both_redis``.
BOTH_REDIS_MODULES = frozenset(
    {
        "tests/exp/test_award_exp.py",
        "tests/exp/test_cross_identity.py",
        "tests/exp/test_leaderboard.py",
        "tests/exp/test_entitlements.py",
        "tests/api/test_batch.py",
        "tests/api/test_exp_api.py",
        "tests/api/test_hot_lane.py",
        "tests/api/test_operations.py",
        "tests/api/test_xp_check_api.py",
        "tests/ledger/test_flusher.py",
        "tests/ledger/test_persistence_recovery.py",
        "tests/ledger/test_reconcile.py",
        "tests/ledger/test_loss_records.py",
        "tests/ledger/test_persistence_xp.py",
        "tests/ledger/test_buckets.py",
        "tests/cli/test_import.py",
        "tests/xp/test_xp_subscriptions.py",
        "tests/xp/test_grant_xp.py",
        "tests/xp/test_refund_xp.py",
        "tests/xp/test_debit_xp.py",
        "tests/xp/test_xp_holds.py",
        "tests/xp/test_xp_lua.py",
    }
)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test marked ``both_redis`` runs twice: on the single Redis and on the local cluster."""
    module = metafunc.definition.path.relative_to(metafunc.config.rootpath).as_posix()
    marked = metafunc.definition.get_closest_marker("both_redis") is not None
    if not marked and module not in BOTH_REDIS_MODULES:
        return
    if "redis_backend" in metafunc.fixturenames:
        metafunc.parametrize("redis_backend", ["single", "cluster"], indirect=True)


@pytest.fixture
def redis_backend(request: pytest.FixtureRequest) -> str:
    """``single`` (the default) or ``cluster`` (tests marked ``both_redis``, once each)."""
    return str(getattr(request, "param", "single"))


@pytest.fixture
def redis_url(redis_backend: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """The suite's own Redis (or, for ``redis_backend == "cluster"``, its cluster: a
    ``redis+cluster://`` URL), emptied before each test."""
    if redis_backend == "cluster":
        cluster: LocalCluster = request.getfixturevalue("redis_cluster")
        cluster.wait_healthy()  # a fault test may have failed a master over
        cluster.flushall()
        yield cluster.url
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    client = redis.Redis.from_url(server.url)
    client.flushall()
    client.close()
    yield server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A plain synchronous client of the test's Redis (a ``RedisCluster`` on the cluster: one
    key's commands route by slot; commands over several slots are refused, as on any cluster)."""
    client = sync_client(redis_url)
    yield client
    client.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NOON)


@pytest.fixture
def key_buckets() -> int:
    """The bucket count of the suite's settings: the default. A test that must hold for any
    count parametrises it: ``@pytest.mark.parametrize("key_buckets", [16, 1024])``."""
    return DEFAULT_KEY_BUCKETS


@pytest.fixture
def settings(redis_url: str, key_buckets: int) -> Settings:
    return Settings(
        redis_url=redis_url,
        key_buckets=key_buckets,
        jwt_secret=JWT_SECRET,
        service_keys=(SERVICE_KEY,),
        day_jitter_seconds=0,
        # The suite shares a small machine with other jobs; the 0.5 s default is held by the
        # fault suite (tests/faults), which runs serve with it.
        redis_timeout_seconds=5.0,
        # Tests read their own writes at once; tests/exp/test_leaderboard.py holds the cache.
        leaderboard_cache_seconds=0.0,
        # The suite's clock stands at NOON of a fixed day (``clock``), days away from Redis's:
        # tests/ledger/test_persistence_health.py turns the skew check on to test it.
        max_clock_skew_seconds=0.0,
    )


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def client(settings: Settings, clock: ManualClock) -> AsyncIterator[httpx2.AsyncClient]:
    """An HTTP client for the app (in-process ASGI), its lifespan running, on the real Redis."""
    app = create_app(settings, clock=clock)
    async with app.router.lifespan_context(app), asgi_client(app) as http:
        yield http


@pytest.fixture
def database_url(postgres_server: PostgresServer) -> str:
    """The suite's Postgres, running, with the ledger schema and every table emptied."""
    postgres_server.start()  # a no-op unless a test stopped it
    migrate_and_truncate(postgres_server.url)
    return postgres_server.url


@pytest.fixture
def durable_settings(settings: Settings, database_url: str) -> Settings:
    """Settings with the durable store; tests run the flusher and the bucket restore themselves
    (burst mode, ``restore_once``)."""
    return replace(
        settings, database_url=database_url, flusher_enabled=False, restore_interval_seconds=0
    )


@pytest.fixture
async def durable_app(durable_settings: Settings, clock: ManualClock) -> AsyncIterator[Starlette]:
    """The app with Postgres behind it, its lifespan running."""
    app = create_app(durable_settings, clock=clock)
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def durable_client(durable_app: Starlette) -> AsyncIterator[httpx2.AsyncClient]:
    """An HTTP client for ``durable_app``."""
    async with asgi_client(durable_app) as http:
        yield http


@pytest.fixture(scope="session")
def demo_origin() -> str:
    """A free origin the live service allows by CORS (the browser tests serve the demo there)."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture(scope="session")
def live_url(
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: RedisServer,
    postgres_server: PostgresServer,
    demo_origin: str,
) -> Iterator[str]:
    """A real `counters serve` subprocess (dev mode) on the suite's servers, for the session.

    Tests using it share its Redis with the rest of the suite: they pick their own user ids.
    """
    postgres_server.start()
    workdir = tmp_path_factory.mktemp("serve")
    # No flusher and no bucket restore: the suite empties Redis between tests, under the live
    # service's feet, and other tests must not find its bucket records (ctr:{bN}:meta).
    with live_service(
        workdir,
        redis_server.url,
        postgres_server.url,
        flusher_enabled="0",
        restore_interval_seconds="0",
        cors_origins=f"{CORS_ORIGIN},{demo_origin}",
    ) as url:
        yield url
