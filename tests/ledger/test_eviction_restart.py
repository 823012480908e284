"""A node that evicted and was restarted with its data, both between two eviction checks, has
its bucket markers dropped (issue #11; README, Durability, "Only while Redis evicts nothing").

A restart resets the node's ``evicted_keys`` to 0, so a marker written when the node had
evicted nothing (0) matched again, and the complete bucket answered an evicted user as a new,
empty one. Each marker now records the node's ``run_id`` (INFO server) beside the count: a
restarted node is another run, and its markers are dropped until the restore wrote them again.

Our own Redis with its AOF, restarted with its data (the suite's runs without persistence).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import httpx2
import pytest
import redis
from starlette.applications import Starlette

from api.app import create_app
from counters.cli.embedded import RedisServer
from counters.clock import ManualClock
from counters.redis.keys import UserKeys
from counters.settings import Settings
from tests.ledger.test_eviction_trust import earn_and_complete, evict, restorer, total_exp
from tests.ledger.test_flush_fence import restart_empty
from tests.support.http import asgi_client
from tests.support.persistence import services

pytestmark = pytest.mark.anyio


@pytest.fixture
async def served(
    durable_settings: Settings, clock: ManualClock, tmp_path: Path
) -> AsyncIterator[tuple[Starlette, RedisServer]]:
    """The app on our own Redis, which keeps its data across a restart (its AOF)."""
    with RedisServer(tmp_path / "redis", persistent=True) as server:
        app = create_app(replace(durable_settings, redis_url=server.url), clock=clock)
        async with app.router.lifespan_context(app):
            yield app, server


async def test_a_node_that_evicted_and_restarted_with_its_data_loses_its_markers(
    served: tuple[Starlette, RedisServer],
) -> None:
    app, server = served
    client = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        async with asgi_client(app) as http:
            await check(app, http, client, server)
    finally:
        client.close()


async def check(
    app: Starlette, http: httpx2.AsyncClient, client: redis.Redis, server: RedisServer
) -> None:
    exp = await earn_and_complete(app, http, "ann")  # markers written at evicted_keys 0
    keys = UserKeys.of("ann", services(app).settings.key_buckets)
    evict(client, keys)  # ann evicted; the policy back to noeviction before any check
    await restart_empty(server, app)  # persistent: it comes back with its data (its AOF)
    assert client.info("stats")["evicted_keys"] == 0  # where the markers recorded it
    assert client.hexists(keys.meta, "complete")  # the marker came back with the data
    await restorer(app).check_eviction()
    assert not client.hexists(keys.meta, "complete")  # another run of the node: dropped
    read = await total_exp(http, "ann")
    assert (read.status_code, read.json()["total_exp"]) == (200, exp), read.text  # not new
    assert await restorer(app).restore_once() == 0  # complete again, trusted again
    await restorer(app).check_eviction()
    assert client.hexists(keys.meta, "complete")
