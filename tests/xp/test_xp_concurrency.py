"""Many parallel XP writes at one user: exact totals, never below zero, transitions applied once."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx2
import pytest
import redis

from counters.clock import ManualClock
from tests.support.core import NOON, user_headers
from tests.support.xp import balance, debit, hold, kinds, subscribe

pytestmark = pytest.mark.anyio


async def user_with_588(client: httpx2.AsyncClient, user: str) -> None:
    await subscribe(client, user, "pixel_rookie")
    assert (await debit(client, user, "NEW_IMAGE")).json()["xp_balance"] == 588


async def test_100_parallel_debits_against_588(
    client: httpx2.AsyncClient, redis_client: redis.Redis
) -> None:
    await user_with_588(client, "u1")
    responses = await asyncio.gather(*(debit(client, "u1", "EDIT_IMAGE") for _ in range(100)))
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {200: 65, 402: 35}
    assert (await balance(client, "u1"))["xp_balance"] == 3
    balances = sorted(r.json()["xp_balance"] for r in responses if r.status_code == 200)
    assert balances == list(range(3, 588, 9))  # every intermediate balance exactly once
    refusals = {r.json()["message"] for r in responses if r.status_code == 402}
    assert refusals == {"Insufficient credits. Need 9 XP, have 3 XP (6 XP short)."}
    debits = [amount for kind, _, amount in kinds(redis_client, "u1") if kind == "xp_debit"]
    assert len(debits) == 66 and sum(debits) == -597


async def test_parallel_holds_then_parallel_releases(client: httpx2.AsyncClient) -> None:
    await user_with_588(client, "u1")
    responses = await asyncio.gather(*(hold(client, "u1", "EDIT_IMAGE") for _ in range(100)))
    created = [r.json()["hold_id"] for r in responses if r.status_code == 201]
    assert len(created) == 65 and len(set(created)) == 65
    view = await balance(client, "u1")
    assert (view["xp_balance"], view["xp_held"]) == (3, 585)
    released = await asyncio.gather(
        *(
            client.post(f"/api/v1/xp/holds/{hold_id}/release", headers=user_headers("u1"))
            for hold_id in created
        )
    )
    assert {r.status_code for r in released} == {200}
    view = await balance(client, "u1")
    assert (view["xp_balance"], view["xp_held"]) == (588, 0)


async def test_racing_captures_and_releases_of_one_hold(client: httpx2.AsyncClient) -> None:
    await user_with_588(client, "u1")
    hold_id = (await hold(client, "u1", "NEW_IMAGE_REF")).json()["hold_id"]
    calls = [
        client.post(f"/api/v1/xp/holds/{hold_id}/{verb}", headers=user_headers("u1"))
        for verb in ("capture", "release") * 10
    ]
    statuses = Counter(r.status_code for r in await asyncio.gather(*calls))
    assert statuses == {200: 1, 409: 19}
    assert (await balance(client, "u1"))["xp_held"] == 0


async def test_a_renewal_due_under_a_burst_is_applied_once(
    client: httpx2.AsyncClient, redis_client: redis.Redis, clock: ManualClock
) -> None:
    await subscribe(client, "u1", "pixel_rookie")
    clock.at = NOON + 30 * 86_400  # the period's end
    responses = await asyncio.gather(*(debit(client, "u1", "NEW_IMAGE") for _ in range(40)))
    assert {r.status_code for r in responses} == {200}
    renewals = [e for e in kinds(redis_client, "u1") if e[:2] == ("xp_allocation", "renewal")]
    assert renewals == [("xp_allocation", "renewal", 0)]  # 600 expired, 600 granted
    assert (await balance(client, "u1"))["xp_balance"] == 600 - 40 * 12
