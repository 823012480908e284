"""Leaderboards (issue #14): updated with the award, periods in the key across UTC day and ISO
week boundaries, merged across buckets, rebuilt from the ledger after Redis lost them."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import httpx2
import msgspec
import pytest
import redis
from starlette.applications import Starlette

from api.app import create_app
from counters.auth import Principal
from counters.clock import ManualClock
from counters.exp.leaderboard import Period, window
from counters.redis.keys import bucket_of
from counters.runtime.services import Services
from counters.settings import DEFAULT_KEY_BUCKETS, Settings
from tests.support.core import NOON, service_headers, user_headers
from tests.support.http import asgi_client
from tests.support.persistence import flusher

pytestmark = pytest.mark.anyio

BOARD = "/api/exp/leaderboard"
SUNDAY_LAST_SECOND = datetime(2026, 11, 22, 23, 59, 59, tzinfo=UTC).timestamp()


async def gain(http: httpx2.AsyncClient, user: str, action: str) -> None:
    response = await http.post("/api/exp/gain", json={"action": action}, headers=user_headers(user))
    assert response.status_code == 200, response.text


async def board(http: httpx2.AsyncClient, user: str, **params: Any) -> dict[str, Any]:
    response = await http.get(BOARD, params=params, headers=user_headers(user))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def ranking(body: dict[str, Any]) -> list[tuple[int, str, int]]:
    return [(e["rank"], e["user_id"], e["exp"]) for e in body["entries"]]


async def test_the_top_and_my_rank_ties_share_a_rank(client: httpx2.AsyncClient) -> None:
    for user, actions in {
        "ann": ["daily_chat", "create_character"],  # 50
        "bob": ["create_character", "create_scene", "create_persona"],  # 60
        "cyd": ["daily_chat", "create_character"],  # 50
        "dee": ["create_scene"],  # 15
    }.items():
        for action in actions:
            await gain(client, user, action)
    body = await board(client, "dee", period="day", limit=3)
    assert (body["period"], body["period_id"]) == ("day", "day:20261121")
    assert ranking(body) == [(1, "bob", 60), (2, "ann", 50), (2, "cyd", 50)]
    assert body["me"] == {"rank": 4, "user_id": "dee", "exp": 15}
    assert (await board(client, "nobody"))["me"] is None
    assert ranking(await board(client, "ann", period="all")) == ranking(
        await board(client, "ann", period="week", limit=10)
    )


async def test_periods_turn_over_at_utc_midnight_and_monday(
    client: httpx2.AsyncClient, clock: ManualClock, redis_client: redis.Redis
) -> None:
    clock.at = SUNDAY_LAST_SECOND
    await gain(client, "eve", "create_character")  # Sunday, ISO week 47
    clock.advance(2)  # Monday 00:00:01: a new day and a new ISO week
    await gain(client, "eve", "create_scene")
    monday = await board(client, "eve", period="day")
    assert (monday["period_id"], ranking(monday)) == ("day:20261123", [(1, "eve", 15)])
    week = await board(client, "eve", period="week")
    assert (week["period_id"], ranking(week)) == ("week:2026W48", [(1, "eve", 15)])
    assert ranking(await board(client, "eve", period="all")) == [(1, "eve", 45)]
    # The ended periods' boards still exist until their clean-up time; nothing reads them.
    tag = f"ctr:{{b{bucket_of('eve', DEFAULT_KEY_BUCKETS)}}}"
    assert redis_client.zscore(f"{tag}:board:day:20261122", "eve") == 30
    assert redis_client.zscore(f"{tag}:board:week:2026W47", "eve") == 30
    # Memory is bounded: day and week boards expire after their period (+ grace), "all" never.
    day_ttl = redis_client.ttl(f"{tag}:board:day:20261123")
    week_ttl = redis_client.ttl(f"{tag}:board:week:2026W48")
    assert 86_400 < day_ttl <= 86_400 + 3_600
    assert 6 * 86_400 < week_ttl <= 7 * 86_400 + 3_600
    assert redis_client.ttl(f"{tag}:board:all") == -1


def test_iso_weeks_across_the_new_year() -> None:
    new_year = datetime(2026, 12, 31, 12, tzinfo=UTC).timestamp()  # Thursday of 2026-W53
    span = window(Period.WEEK, new_year, 0)
    assert (span.id, span.first_day, span.last_day) == ("week:2026W53", "20261228", "20270103")
    assert window(Period.DAY, NOON, 0).ttl == 12 * 3_600


async def test_every_award_key_shares_the_users_hash_tag(
    settings: Settings, clock: ManualClock
) -> None:
    """One slot per script on Redis Cluster: the boards live in the user's bucket."""
    services = Services.build(settings, clock=clock)
    try:
        for user in ("u7", "someone-else", "x"):
            principal = Principal(user, f"user:{user}", False)
            call = await services.exp.prepare_award(principal, "daily_chat", None, None)
            keys = msgspec.structs.astuple(call.keys)
            assert len(keys) == 8  # with the bucket record (issue #11)
            assert {key.split("}")[0] for key in keys} == {
                f"ctr:{{b{bucket_of(user, DEFAULT_KEY_BUCKETS)}"
            }
    finally:
        await services.close()


@pytest.mark.parametrize(
    ("query", "detail"),
    [
        ("period=month", "period must be one of day, week, all"),
        ("limit=0", "limit must be an integer from 1 to 100"),
        ("limit=101", "limit must be an integer from 1 to 100"),
        ("limit=ten", "limit must be an integer from 1 to 100"),
        # A reviewer's finding: other scripts' digits were a limit (int() reads them), while
        # "+5" was refused; a superscript two was a 500 (int() cannot read it).
        ("limit=%D9%A1", "limit must be an integer from 1 to 100"),  # U+0661 ARABIC-INDIC ONE
        ("limit=%EF%BC%91", "limit must be an integer from 1 to 100"),  # U+FF11 FULLWIDTH ONE
        ("limit=%C2%B2", "limit must be an integer from 1 to 100"),  # U+00B2 SUPERSCRIPT TWO
        ("limit=%2B5", "limit must be an integer from 1 to 100"),
        ("top=3", "Unknown query parameter(s): top"),
        ("limit=5&limit=100", "Query parameter limit is given 2 times; give it once"),
        ("period=day&period=all", "Query parameter period is given 2 times; give it once"),
    ],
)
async def test_bad_parameters(client: httpx2.AsyncClient, query: str, detail: str) -> None:
    response = await client.get(f"{BOARD}?{query}", headers=user_headers("u"))
    assert (response.status_code, response.json()) == (
        422,
        {"detail": detail, "code": "invalid_request"},
    )


async def test_boards_are_rebuilt_from_the_ledger_after_redis_loses_them(
    durable_client: httpx2.AsyncClient, durable_app: Starlette, redis_client: redis.Redis
) -> None:
    for user, action in [("fay", "create_character"), ("gus", "daily_chat"),
                         ("gus", "create_scene")]:  # fmt: skip
        await gain(durable_client, user, action)
    adjust = {"user_id": "fay", "delta": 500, "reason": "not an award"}
    await durable_client.post("/api/admin/exp/adjust", json=adjust, headers=service_headers())
    await flusher(durable_app).drain()
    before = {p: ranking(await board(durable_client, "fay", period=p)) for p in Period}
    assert before["day"] == [(1, "gus", 35), (2, "fay", 30)]  # awards only, not corrections
    redis_client.flushall()  # Redis loses everything
    after = {p: ranking(await board(durable_client, "fay", period=p)) for p in Period}
    assert after == before
    # A user hydrated after the loss earns on top of what the ledger restored.
    await gain(durable_client, "fay", "create_scene")
    assert ranking(await board(durable_client, "fay", period="day"))[0] == (1, "fay", 45)


async def test_a_user_back_before_any_read_is_counted_exactly(
    durable_client: httpx2.AsyncClient, durable_app: Starlette, redis_client: redis.Redis
) -> None:
    """Hydration puts the user's sums back on the boards in the same step as the user, so
    awards made after a loss and before any leaderboard read add to them, not replace them."""
    await gain(durable_client, "ivy", "create_character")  # 30
    await gain(durable_client, "jon", "daily_chat")  # 20
    await flusher(durable_app).drain()
    redis_client.flushall()
    await gain(durable_client, "ivy", "create_scene")  # hydrated, then 15 more, not flushed
    for period in Period:
        body = await board(durable_client, "jon", period=period)
        assert ranking(body) == [(1, "ivy", 45), (2, "jon", 20)], period
    await flusher(durable_app).drain()  # the ledger catching up changes nothing
    assert ranking(await board(durable_client, "jon", period="all"))[0] == (1, "ivy", 45)


async def test_leaderboards_off_write_no_board(
    settings: Settings, clock: ManualClock, redis_client: redis.Redis
) -> None:
    app = create_app(replace(settings, leaderboards_enabled=False), clock=clock)
    async with app.router.lifespan_context(app):
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://counters") as http:
            await gain(http, "hal", "daily_chat")
            response = await http.get(BOARD, headers=user_headers("hal"))
    assert (response.status_code, response.json()) == (
        404, {"detail": "Leaderboards are off on this deployment", "code": "not_found"},
    )  # fmt: skip
    assert redis_client.keys("*board*") == []


@pytest.mark.parametrize("key_buckets", [16, 1024])
async def test_ranks_are_exact_whatever_the_bucket_count(
    client: httpx2.AsyncClient, redis_client: redis.Redis, key_buckets: int
) -> None:
    # Issue #12: the read counts the users above the caller from each bucket's top list where
    # the list reaches down to them, and asks the others (ZCOUNT). Scores put straight on the
    # boards (many users, many ties, some buckets fuller than the limit) against brute force.
    scores = {f"r{n}": (n * 7919) % 37 for n in range(600)}
    period = window(Period.ALL, NOON, 0).id
    pipe = redis_client.pipeline(transaction=False)
    for user, exp in scores.items():
        tag = f"ctr:{{b{bucket_of(user, key_buckets)}}}"
        pipe.zadd(f"{tag}:board:{period}", {user: exp})
    pipe.execute()
    ordered = sorted(scores.items(), key=lambda item: (-item[1], item[0]))
    for reader in ("r0", "r1", "r17", "r599", "nobody"):
        body = await board(client, reader, period="all", limit=5)
        expected_top = [
            (1 + sum(1 for s in scores.values() if s > exp), user, exp) for user, exp in ordered[:5]
        ]
        assert ranking(body) == expected_top
        if reader == "nobody":
            assert body["me"] is None
        else:
            above = sum(1 for s in scores.values() if s > scores[reader])
            assert body["me"] == {"rank": 1 + above, "user_id": reader, "exp": scores[reader]}


def command_calls(redis_client: redis.Redis) -> Counter[str]:
    """Calls of each command a read may send that Redis ran so far (INFO commandstats; every
    master of a cluster)."""
    if isinstance(redis_client, redis.RedisCluster):
        nodes = redis_client.info("commandstats", target_nodes=redis.RedisCluster.PRIMARIES)
        stats = list(nodes.values())
    else:
        stats = [redis_client.info("commandstats")]
    calls: Counter[str] = Counter()
    for node in stats:
        for name, stat in node.items():
            calls[name.removeprefix("cmdstat_")] += stat["calls"]
    return Counter({name: calls[name] for name in ("exists", "zrange", "zscore", "zcount")})


async def test_a_worker_reuses_the_tops_for_its_cache_window(
    settings: Settings, clock: ManualClock, redis_client: redis.Redis
) -> None:
    """FINDINGS: one read of ``period=all&limit=100`` sent 2 commands per bucket (2,048). Within
    COUNTERS_LEADERBOARD_CACHE_SECONDS a worker's reads share the tops: one ZSCORE each."""
    app = create_app(replace(settings, leaderboard_cache_seconds=3.0), clock=clock)
    async with app.router.lifespan_context(app), asgi_client(app) as http:
        await gain(http, "ann", "daily_chat")  # 20
        first = await board(http, "ann", period="all", limit=100)
        assert ranking(first) == [(1, "ann", 20)]
        before = command_calls(redis_client)
        others = [await board(http, user, period="all", limit=100) for user in ("bob", "ann")]
        assert command_calls(redis_client) - before == Counter({"zscore": 2})
        assert [body["me"] for body in others] == [None, {"rank": 1, "user_id": "ann", "exp": 20}]
        await gain(http, "bob", "create_character")  # 30: not seen within the window ...
        stale = await board(http, "bob", period="all", limit=100)
        assert ranking(stale) == [(1, "ann", 20)]
        assert stale["me"] == {"rank": 1, "user_id": "bob", "exp": 30}  # ... but his own EXP is
        await asyncio.sleep(3.1)
        fresh = await board(http, "ann", period="all", limit=100)
        assert ranking(fresh) == [(1, "bob", 30), (2, "ann", 20)]
        assert fresh["me"] == {"rank": 2, "user_id": "ann", "exp": 20}
