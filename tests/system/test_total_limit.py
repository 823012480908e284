"""No total EXP or XP balance passes MAX_TOTAL (10^15, lua/lib/bounds.lua): Lua's numbers are
doubles, and above 2^53 an addition was silently rounded (FINDINGS F4: +1 answered "applied 1"
and changed nothing). A change that would pass it is 409 ``total_limit`` and writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import httpx2
import pytest
import redis

from counters.bulkimport.records import read_records
from counters.redis.codes import MAX_TOTAL
from counters.redis.keys import UserKeys
from counters.rules import load_rules
from tests.support.core import NOON, service_headers, user_headers
from tests.support.xp import BUCKETS, balance, grant

pytestmark = pytest.mark.anyio


def snapshot(redis_client: redis.Redis) -> dict[str, object]:
    return {key: redis_client.dump(key) for key in redis_client.keys("*")}


def set_exp(redis_client: redis.Redis, user: str, total: int) -> None:
    redis_client.hset(UserKeys.of(user, BUCKETS).user, "exp", total)


async def adjust(client: httpx2.AsyncClient, user: str, delta: int) -> httpx2.Response:
    body = {"user_id": user, "delta": delta, "reason": "support"}
    return await client.post("/api/admin/exp/adjust", json=body, headers=service_headers())


async def test_an_award_or_adjust_past_the_maximum_changes_nothing(
    client: httpx2.AsyncClient, redis_client: redis.Redis
) -> None:
    chat = {"action": "daily_chat"}
    assert (await client.post("/api/exp/gain", json=chat, headers=user_headers("u1"))).is_success
    set_exp(redis_client, "u1", MAX_TOTAL - 10)
    before = snapshot(redis_client)
    create = {"action": "create_character"}  # 50 EXP: past the maximum
    refused = await client.post("/api/exp/gain", json=create, headers=user_headers("u1"))
    assert refused.status_code == 409, refused.text
    assert refused.json()["code"] == "total_limit"
    over = await adjust(client, "u1", 11)
    assert (over.status_code, over.json()["code"]) == (409, "total_limit")
    assert snapshot(redis_client) == before
    exact = await adjust(client, "u1", 10)
    assert exact.status_code == 200 and exact.json()["total_exp"] == MAX_TOTAL
    assert (await adjust(client, "u1", -5)).json()["total_exp"] == MAX_TOTAL - 5
    progress = await client.get("/api/exp/progress", headers=user_headers("u1"))
    assert progress.json()["total_exp"] == MAX_TOTAL - 5


async def test_a_grant_or_subscription_past_the_maximum_changes_nothing(
    client: httpx2.AsyncClient, redis_client: redis.Redis
) -> None:
    await grant(client, "u2", 100)
    key = UserKeys.of("u2", BUCKETS).user
    state = json.loads(str(redis_client.hget(key, "xp")))
    state["grants"][0]["left"] = MAX_TOTAL - 100
    redis_client.hset(key, "xp", json.dumps(state))
    before = snapshot(redis_client)
    body = {"user_id": "u2", "xp_amount": 101, "reason": "promo"}
    refused = await client.post("/api/v1/xp/grants", json=body, headers=service_headers())
    assert (refused.status_code, refused.json()["code"]) == (409, "total_limit")
    subscribe = await client.put(
        "/api/v1/subscriptions/u2", json={"tier": "pixel_rookie"}, headers=service_headers()
    )
    assert (subscribe.status_code, subscribe.json()["code"]) == (409, "total_limit")
    assert snapshot(redis_client) == before
    assert (await grant(client, "u2", 100))["xp_balance"] == MAX_TOTAL
    assert (await balance(client, "u2"))["xp_balance"] == MAX_TOTAL


def test_an_import_file_adding_up_past_the_maximum_is_refused(tmp_path: Path) -> None:
    """The attack: 9,008 lines of 10^12 EXP for one user reached 9008000254740992."""
    path = tmp_path / "big.jsonl"
    line = json.dumps({"kind": "exp", "user_id": "big", "exp": 10**12}) + "\n"
    path.write_text(line * 1001)
    records, errors = read_records(path, load_rules(), NOON)
    assert [str(error) for error in errors] == [
        f"line 1001: big's exp lines add up past {MAX_TOTAL:,}"
    ]
    assert len(records) == 1000


async def test_a_keyed_like_refused_at_the_maximum_is_replayed_not_run_again(
    client: httpx2.AsyncClient, redis_client: redis.Redis
) -> None:
    """A keyed creator award's answer is stored in its claim (lua/claim_request.lua), and a
    stored total_limit (outcome 5) must replay as itself: the merge of the claim (whose "join a
    pending attempt" reply was 5 too) and the bound found them colliding, so a retry ran the
    like again and, once the owner's total had room, paid it."""
    claim = {"action": "create_character", "target_type": "character", "target_id": "tl-1"}
    made = await client.post("/api/exp/gain", json=claim, headers=service_headers("tl-owner"))
    assert made.status_code == 200, made.text
    set_exp(redis_client, "tl-owner", MAX_TOTAL - 1)
    like = {"action": "character_liked", "target_type": "character", "target_id": "tl-1"}
    headers = service_headers("tl-fan") | {"Idempotency-Key": "tl-like-1"}
    first = await client.post("/api/exp/gain", json=like, headers=headers)
    assert (first.status_code, first.json()["code"]) == (409, "total_limit")
    assert (await adjust(client, "tl-owner", -1000)).status_code == 200  # room again
    again = await client.post("/api/exp/gain", json=like, headers=headers)
    assert (again.status_code, again.json()) == (409, first.json())
    assert again.headers["idempotent-replayed"] == "true"
    owner = await client.get("/api/exp/progress", headers=user_headers("tl-owner"))
    assert owner.json()["total_exp"] == MAX_TOTAL - 1001
