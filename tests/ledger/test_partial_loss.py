"""Redis loses one bucket while another bucket's stream still holds an award on an entity of the
lost one, not yet flushed (a Redis Cluster failover losing a few slots; issue #11).

fan likes e (once per actor), paying ann: the once-per-actor record is in e's bucket, the award's
event in ann's. Then e's bucket alone is lost (every key of it deleted: on the single Redis and
on the local cluster). Postgres learns of the like only from ann's stream; the lost bucket's
once-per-actor records must not be read back before that stream was ledgered up to where it
stood at the loss (``persistence/marks.py``), or fan's second like is paid again.
"""

from __future__ import annotations

import asyncio
import time

import httpx2
import pytest
import redis
from starlette.applications import Starlette

from counters.redis.keys import bucket_of, bucket_tag, stream_key
from tests.ledger.test_flush_fence import put_owner, restorer
from tests.support.core import service_headers
from tests.support.persistence import fetch, flusher, services

pytestmark = [pytest.mark.anyio, pytest.mark.both_redis]

OWNER, FAN = "ann", "fan"


def entity_apart(buckets: int) -> str:
    """An entity id whose bucket is neither the owner's nor the fan's."""
    apart = {bucket_of(OWNER, buckets), bucket_of(FAN, buckets)}
    return next(f"e{n}" for n in range(1000) if bucket_of(f"character:e{n}", buckets) not in apart)


def lose_bucket(client: redis.Redis, bucket: int) -> int:
    """Every key of ``bucket`` deleted (its users, entities, records, stream and marker): what a
    failover losing its slot does. Returns how many."""
    keys = client.keys(f"{bucket_tag(bucket)}:*")
    for key in keys:
        client.delete(key)
    return len(keys)


async def like(client: httpx2.AsyncClient, entity: str) -> httpx2.Response:
    body = {"action": "character_liked", "target_type": "character", "target_id": entity}
    return await client.post("/api/exp/gain", json=body, headers=service_headers(FAN))


async def paid(app: Starlette, entity: str) -> list[str]:
    rows = await fetch(
        app,
        "SELECT user_id FROM ledger WHERE kind = 'exp_award' AND actor = $1 AND target = $2",
        FAN,
        f"character:{entity}",
    )
    return [row["user_id"] for row in rows]


async def liked_then_bucket_lost(app: Starlette, client: httpx2.AsyncClient, r: redis.Redis) -> str:
    """ann owns e (ledgered); fan's like paid ann, its event still in ann's stream; then e's
    bucket is lost. Returns e."""
    buckets = services(app).settings.key_buckets
    assert await restorer(app).restore_once() == 0  # an empty ledger: every bucket complete
    entity = entity_apart(buckets)
    await put_owner(client, entity, OWNER)
    await flusher(app).drain()
    first = await like(client, entity)
    assert first.status_code == 200, first.text
    assert r.xlen(stream_key(bucket_of(OWNER, buckets)))  # the award's event: not ledgered
    assert lose_bucket(r, bucket_of(f"character:{entity}", buckets)) > 0
    return entity


async def test_a_like_after_the_loss_waits_for_the_surviving_stream(
    durable_app: Starlette, durable_client: httpx2.AsyncClient, redis_client: redis.Redis
) -> None:
    """On demand: the like reads e back from Postgres only once ann's stream was ledgered past
    the loss. No flusher runs: 503 (nothing changed); once one ran, 409, and ann was paid once."""
    entity = await liked_then_bucket_lost(durable_app, durable_client, redis_client)
    early = await like(durable_client, entity)
    assert early.status_code == 503, early.text  # 200: e read back without fan's like, paid again
    assert early.json()["code"] == "storage_unavailable"
    await flusher(durable_app).drain()
    again = await like(durable_client, entity)
    assert again.status_code == 409, again.text
    assert again.json()["code"] == "already_triggered"
    await flusher(durable_app).drain()
    assert await paid(durable_app, entity) == [OWNER]


async def test_likes_queued_behind_the_wait_answer_within_their_own_budget(
    durable_app: Starlette, durable_client: httpx2.AsyncClient, redis_client: redis.Redis
) -> None:
    """Three likes at once on the lost entity, no flusher running: one waits for the ledger,
    the others for it; each answers 503 within its own Postgres budget (the queue does not add
    up: the third would have waited for both before it)."""
    entity = await liked_then_bucket_lost(durable_app, durable_client, redis_client)
    budget = services(durable_app).settings.database_timeout_seconds

    async def timed(fan: str) -> tuple[int, float]:
        body = {"action": "character_liked", "target_type": "character", "target_id": entity}
        started = time.monotonic()
        reply = await durable_client.post("/api/exp/gain", json=body, headers=service_headers(fan))
        return reply.status_code, time.monotonic() - started

    answers = await asyncio.gather(*(timed(f"fan-{n}") for n in range(3)))
    assert [status for status, _ in answers] == [503] * 3, answers
    assert max(seconds for _, seconds in answers) < 1.8 * budget, answers


async def test_the_restore_waits_for_the_surviving_stream(
    durable_app: Starlette, durable_client: httpx2.AsyncClient, redis_client: redis.Redis
) -> None:
    """The background restore: it completes e's bucket only after ann's stream was ledgered
    past the loss, and says in ``/readyz`` what it waits for. Then the like is 409."""
    entity = await liked_then_bucket_lost(durable_app, durable_client, redis_client)
    restoring = asyncio.create_task(restorer(durable_app).restore_once())
    await asyncio.sleep(0.5)
    assert not restoring.done(), "the restore read e back before ann's stream was ledgered"
    ready = (await durable_client.get("/readyz")).json()
    assert ready["restore"]["ledger_streams_behind"] == 1, ready
    await flusher(durable_app).drain()
    assert await asyncio.wait_for(restoring, 10) == 0
    assert "ledger_streams_behind" not in (await durable_client.get("/readyz")).json()["restore"]
    again = await like(durable_client, entity)
    assert again.status_code == 409, again.text
    assert again.json()["code"] == "already_triggered"
    await flusher(durable_app).drain()
    assert await paid(durable_app, entity) == [OWNER]
