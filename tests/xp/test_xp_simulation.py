"""A seeded, deterministic simulation of many XP operations, holding the ledger to its invariants.

Whatever the operations and however the clock jumps (renewals, expiries), every user's events
must form an exact chain: each event's balance is the previous one plus its amount, the balance
and the held XP are never negative, and the state recorded on each event adds up to its totals.
"""

from __future__ import annotations

import json
import random

import httpx2
import pytest
import redis

from counters.clock import ManualClock
from counters.rules import load_rules
from tests.support.core import service_headers, user_headers
from tests.support.xp import balance, events, iso

pytestmark = pytest.mark.anyio

USERS = ("ann", "bob", "cy")
TIERS = [tier.name for tier in load_rules().xp.tiers]
TYPES = list(load_rules().xp.costs)


async def step(
    client: httpx2.AsyncClient,
    clock: ManualClock,
    rng: random.Random,
    ids: dict[str, list[str]],
) -> int:
    user = rng.choice(USERS)
    op = rng.choices(
        ["sub", "cancel", "grant", "debit", "hold", "capture", "release", "refund", "time"],
        weights=[2, 1, 2, 6, 4, 3, 2, 2, 2],
    )[0]
    mine = ids.setdefault(user, [])
    if op == "sub":
        response = await client.put(
            f"/api/v1/subscriptions/{user}",
            json={"tier": rng.choice(TIERS)},
            headers=service_headers(),
        )
    elif op == "cancel":
        response = await client.delete(f"/api/v1/subscriptions/{user}", headers=service_headers())
    elif op == "grant":
        body: dict[str, object] = {
            "user_id": user,
            "xp_amount": rng.randint(1, 300),
            "reason": "sim",
        }
        if rng.random() < 0.6:
            body["expires_at"] = iso(clock.now() + rng.randint(1, 40 * 86_400))
        response = await client.post("/api/v1/xp/grants", json=body, headers=service_headers())
    elif op in ("debit", "hold"):
        path = "/api/v1/xp/debit" if op == "debit" else "/api/v1/xp/holds"
        response = await client.post(
            path, json={"generation_type": rng.choice(TYPES)}, headers=user_headers(user)
        )
        if response.status_code in (200, 201):
            mine.append(response.json().get("transaction_id") or response.json()["hold_id"])
    elif op in ("capture", "release") and mine:
        target = rng.choice(mine)
        amount = {"xp_amount": rng.randint(1, 40)} if rng.random() < 0.5 else None
        response = await client.post(
            f"/api/v1/xp/holds/{target}/{op}",
            json=amount if op == "capture" else None,
            headers=user_headers(user),
        )
    elif op == "refund" and mine:
        response = await client.post(
            "/api/v1/xp/refunds",
            json={"transaction_id": rng.choice(mine)},
            headers=service_headers(user),
        )
    else:
        clock.advance(rng.choice([1, 60, 600, 3600, 86_400, 7 * 86_400, 20 * 86_400]))
        return 200
    return response.status_code


def check_chain(redis_client: redis.Redis, user: str) -> int:
    """Check every invariant over the user's events; the last balance."""
    balance_after = 0
    for seq, event in enumerate(events(redis_client, user), start=1):
        assert int(event["seq"]) == seq
        assert event["event_id"] == f"{user}:{seq}"
        balance_after += int(event["amount"])
        assert int(event["xp_balance"]) == balance_after, event
        assert balance_after >= 0 and int(event["xp_held"]) >= 0
        state = json.loads(event["xp_state"])
        assert state["alloc"] == int(event["xp_allocation"]) >= 0
        assert state["alloc"] + sum(g["left"] for g in state["grants"]) == balance_after
        assert sum(h["amount"] for h in state["holds"]) == int(event["xp_held"])
        assert all(g["left"] > 0 for g in state["grants"])
    return balance_after


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_the_ledger_stays_exact(
    client: httpx2.AsyncClient, redis_client: redis.Redis, clock: ManualClock, seed: int
) -> None:
    rng = random.Random(seed)
    ids: dict[str, list[str]] = {}
    statuses = [await step(client, clock, rng, ids) for _ in range(300)]
    assert max(statuses) < 500
    assert statuses.count(200) + statuses.count(201) > 100  # the simulation did real work
    clock.advance(90 * 86_400)  # let everything due come due
    for user in USERS:
        view = await balance(client, user)
        assert check_chain(redis_client, user) == view["xp_balance"]
        assert view["xp_held"] == 0  # every hold has expired by now
