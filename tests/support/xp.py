"""Helpers shared by the XP tests: set a user up through the API, read balances and events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import httpx2
import msgspec
import redis

from api.app import create_app
from counters.clock import ManualClock
from counters.redis.keys import UserKeys
from counters.rules import Rules, load_rules
from counters.settings import DEFAULT_KEY_BUCKETS, Settings
from persistence.events import expand
from tests.support.core import service_headers, user_headers

BUCKETS = DEFAULT_KEY_BUCKETS  # Settings.key_buckets, as the suite's settings fixture leaves it

# The seed's recommended_tier for a Pixel Rookie who is short of XP.
ARCADE = {
    "tier_name": "arcade_artist",
    "tier_display_name": "Arcade Artist",
    "tier_level": 2,
    "monthly_xp_allocation": 800,
    "monthly_price_aud": 20,
}


def iso(ts: float) -> str:
    """A unix time as the API writes it."""
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def ts(year: int, month: int, day: int, hour: int = 12, minute: int = 0, second: int = 0) -> float:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


async def subscribe(
    client: httpx2.AsyncClient, user: str, tier: str, period_start: float | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"tier": tier}
    if period_start is not None:
        body["period_start"] = iso(period_start)
    response = await client.put(
        f"/api/v1/subscriptions/{user}", json=body, headers=service_headers()
    )
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def grant(
    client: httpx2.AsyncClient, user: str, amount: int, expires_at: float | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"user_id": user, "xp_amount": amount, "reason": "top_up"}
    if expires_at is not None:
        body["expires_at"] = iso(expires_at)
    response = await client.post("/api/v1/xp/grants", json=body, headers=service_headers())
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def balance(client: httpx2.AsyncClient, user: str) -> dict[str, Any]:
    response = await client.get("/api/v1/xp/balance", headers=user_headers(user))
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def debit(
    client: httpx2.AsyncClient, user: str, generation_type: str, **headers: str
) -> httpx2.Response:
    return await client.post(
        "/api/v1/xp/debit",
        json={"generation_type": generation_type},
        headers=user_headers(user, **headers),
    )


async def hold(client: httpx2.AsyncClient, user: str, generation_type: str) -> httpx2.Response:
    return await client.post(
        "/api/v1/xp/holds", json={"generation_type": generation_type}, headers=user_headers(user)
    )


async def spend_to(client: httpx2.AsyncClient, user: str, cost_each: str, times: int) -> None:
    """Run ``times`` debits of one type (all must succeed)."""
    responses = await asyncio.gather(*(debit(client, user, cost_each) for _ in range(times)))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]


def events(redis_client: redis.Redis, user: str) -> list[dict[str, str]]:
    """The user's ledger events, oldest first."""
    stream = UserKeys.of(user, BUCKETS).events
    entries: Any = redis_client.xrange(stream)
    named = [expand(fields) for _, fields in entries]
    return [fields for fields in named if fields.get("user") == user]


def kinds(redis_client: redis.Redis, user: str) -> list[tuple[str, str, int]]:
    """(kind, action, amount) of each of the user's XP events."""
    return [
        (e["kind"], e["action"], int(e["amount"]))
        for e in events(redis_client, user)
        if e["kind"].startswith("xp_")
    ]


@asynccontextmanager
async def app_client(
    settings: Settings, clock: ManualClock, rules: Rules | None = None
) -> AsyncIterator[httpx2.AsyncClient]:
    """A client for an app built with other settings or rules (as the ``client`` fixture)."""
    app = create_app(settings, rules=rules, clock=clock)
    async with app.router.lifespan_context(app):
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://counters") as http:
            yield http


def xp_rules_with(**changes: Any) -> Rules:
    """The shipped rules with some ``[xp]`` values replaced."""
    rules = load_rules()
    return msgspec.structs.replace(rules, xp=msgspec.structs.replace(rules.xp, **changes))
