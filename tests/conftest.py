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
from counters.cli.embedded import PostgresServer, RedisServer, free_port
from counters.clock import ManualClock
from counters.settings import DEFAULT_KEY_BUCKETS, Settings
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


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The suite's own Redis, emptied before each test."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    yield redis_server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
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
