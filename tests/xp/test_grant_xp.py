"""lua/grant_xp.lua through POST /api/v1/xp/grants: top-ups, their expiry, bad input."""

from __future__ import annotations

import json

import httpx2
import pytest
import redis

from counters.clock import LATEST, ManualClock
from counters.redis.keys import UserKeys
from counters.settings import Settings
from tests.support.core import NOON, service_headers, user_headers
from tests.support.xp import (
    BUCKETS,
    app_client,
    balance,
    debit,
    events,
    grant,
    iso,
    kinds,
    subscribe,
    xp_rules_with,
)

pytestmark = pytest.mark.anyio

LATEST_RULE = "expires_at must be at most 9999-12-31T23:59:59Z in UTC"


async def test_a_grant_adds_to_the_balance(
    client: httpx2.AsyncClient, redis_client: redis.Redis
) -> None:
    body = await grant(client, "u1", 250, NOON + 3600)
    assert body == {
        "grant_id": body["grant_id"],
        "user_id": "u1",
        "xp_granted": 250,
        "xp_balance": 250,
        "expires_at": iso(NOON + 3600),
    }
    assert body["grant_id"].startswith("xg_")
    event = events(redis_client, "u1")[-1]
    assert (event["kind"], event["action"], event["amount"], event["target"], event["actor"]) == (
        "xp_grant",
        "top_up",
        "250",
        body["grant_id"],
        "service:0",
    )
    assert (event["xp_topup"], event["xp_balance"], event["tier"]) == ("250", "250", "")
    never = await grant(client, "u1", 10)
    assert (never["expires_at"], never["xp_balance"]) == (None, 260)


async def test_top_up_expiry_one_second_before_and_after(
    client: httpx2.AsyncClient, redis_client: redis.Redis, clock: ManualClock
) -> None:
    await subscribe(client, "u1", "pixel_rookie")
    grant_id = (await grant(client, "u1", 30, NOON + 100))["grant_id"]
    await debit(client, "u1", "EDIT_IMAGE")  # from the top-up: it expires first
    clock.at = NOON + 99
    view = await balance(client, "u1")
    assert (view["xp_topup"], view["xp_balance"]) == (21, 621)
    clock.at = NOON + 101
    view = await balance(client, "u1")
    assert (view["xp_topup"], view["xp_balance"], view["topups"]) == (0, 600, [])
    expired = events(redis_client, "u1")[-1]
    assert (expired["kind"], expired["amount"], expired["target"], expired["actor"]) == (
        "xp_grant_expired",
        "-21",
        grant_id,
        "system",
    )
    assert expired["effective_ts"] == str(int((NOON + 100) * 1000))


async def test_transitions_are_applied_in_time_order(
    client: httpx2.AsyncClient, redis_client: redis.Redis, clock: ManualClock
) -> None:
    await subscribe(client, "u1", "pixel_rookie")
    await grant(client, "u1", 7, NOON + 40 * 86_400)
    await grant(client, "u1", 5, NOON + 10 * 86_400)
    clock.at = NOON + 45 * 86_400
    await balance(client, "u1")
    assert kinds(redis_client, "u1")[-3:] == [
        ("xp_grant_expired", "expired", -5),  # day 10
        ("xp_allocation", "renewal", 0),  # day 30
        ("xp_grant_expired", "expired", -7),  # day 40
    ]
    stamps = [int(e["effective_ts"]) for e in events(redis_client, "u1")[-3:]]
    assert stamps == sorted(stamps)


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"xp_amount": 0}, 422, ">= 1"),
        ({"xp_amount": -10}, 422, ">= 1"),
        ({"xp_amount": 10**10}, 422, "<= 1000000000"),
        # the time written as the replies write times (it was "2026-... 12:00:00+00:00")
        ({"xp_amount": 10, "expires_at": iso(NOON)}, 422, f"in the future (now is {iso(NOON)})"),
        ({"xp_amount": 10, "expires_at": iso(NOON - 1)}, 422, "in the future"),
        # A reviewer's finding: year 10000 in UTC was granted, then answered 500 (as did the
        # user's balance from then on): no reply can write that time.
        ({"xp_amount": 10, "expires_at": "9999-12-31T23:59:59-12:00"}, 422, LATEST_RULE),
        ({"xp_amount": 10, "expires_at": "9999-12-31T12:00:00-23:59"}, 422, LATEST_RULE),
        ({"xp_amount": 10, "reason": ""}, 422, "length >= 1"),
        ({"xp_amount": 10, "user_id": "bad id"}, 422, "user_id"),
    ],
)
async def test_bad_grants_change_nothing(
    client: httpx2.AsyncClient,
    redis_client: redis.Redis,
    body: dict[str, object],
    status: int,
    fragment: str,
) -> None:
    request = {"user_id": "u1", "reason": "top_up", **body}
    response = await client.post("/api/v1/xp/grants", json=request, headers=service_headers())
    assert response.status_code == status
    assert fragment in response.json()["detail"]
    assert kinds(redis_client, "u1") == []


async def test_a_refused_year_10000_grant_leaves_the_balance_readable(
    client: httpx2.AsyncClient, redis_client: redis.Redis
) -> None:
    """The reviewer's repro: the grant was applied, answered 500, and the balance answered 500
    every time after."""
    body = {"user_id": "y10k-x", "xp_amount": 7, "reason": "r",
            "expires_at": "9999-12-31T23:59:59-12:00"}  # fmt: skip
    response = await client.post("/api/v1/xp/grants", json=body, headers=service_headers())
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "invalid_request"
    assert response.json()["detail"] == (
        "expires_at must be at most 9999-12-31T23:59:59Z in UTC, the latest time the service can"
        " show (leave it out for a top-up that never expires)"
    )
    assert kinds(redis_client, "y10k-x") == []
    assert (await balance(client, "y10k-x"))["xp_balance"] == 0


@pytest.mark.parametrize(
    "expires_at",
    ["9999-12-31T23:59:59Z", "9999-12-31T23:59:59.999999Z", "9999-12-31T23:59:59+14:00"],
)
async def test_the_last_second_of_year_9999_utc_is_a_valid_expiry(
    client: httpx2.AsyncClient, expires_at: str
) -> None:
    """Callers send 9999-12-31T23:59:59Z for "never": it is the latest time a reply can show."""
    body = {"user_id": "u1", "xp_amount": 7, "reason": "r", "expires_at": expires_at}
    response = await client.post("/api/v1/xp/grants", json=body, headers=service_headers())
    assert response.status_code == 200, response.text
    shown = response.json()["expires_at"]
    assert shown <= "9999-12-31T23:59:59Z"
    assert (await balance(client, "u1"))["topups"][0]["expires_at"] == shown


async def test_a_top_up_stored_with_a_year_10000_expiry_is_shown_as_year_9999(
    client: httpx2.AsyncClient, redis_client: redis.Redis
) -> None:
    """A top-up granted or imported before its expiry was bounded stays in the user's state (no
    route removes one): its expiry is shown as the latest time a reply can hold, at most a day
    early in year 9999, instead of the balance answering 500 for good."""
    await grant(client, "u1", 7, LATEST)
    key = UserKeys.of("u1", BUCKETS).user
    state = json.loads(redis_client.hget(key, "xp"))
    state["grants"][0]["expires_at"] = LATEST + 43_200  # 9999-12-31T23:59:59-12:00
    redis_client.hset(key, "xp", json.dumps(state))
    view = await balance(client, "u1")
    assert (view["xp_topup"], view["topups"][0]["expires_at"]) == (7, "9999-12-31T23:59:59Z")


async def test_grants_are_for_services_only(client: httpx2.AsyncClient) -> None:
    response = await client.post(
        "/api/v1/xp/grants",
        json={"user_id": "u1", "xp_amount": 1000, "reason": "free"},
        headers=user_headers("u1"),
    )
    assert response.status_code == 403
    assert (await balance(client, "u1"))["xp_balance"] == 0


async def test_idempotent_grant(client: httpx2.AsyncClient) -> None:
    body = {"user_id": "u1", "xp_amount": 40, "reason": "promo"}
    headers = service_headers(**{"Idempotency-Key": "promo-u1"})
    first = await client.post("/api/v1/xp/grants", json=body, headers=headers)
    again = await client.post("/api/v1/xp/grants", json=body, headers=headers)
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert (await balance(client, "u1"))["xp_balance"] == 40


async def test_live_top_ups_are_bounded(settings: Settings, clock: ManualClock) -> None:
    async with app_client(settings, clock, xp_rules_with(max_active_grants=2)) as client:
        await grant(client, "u1", 1)
        await grant(client, "u1", 1)
        response = await client.post(
            "/api/v1/xp/grants",
            json={"user_id": "u1", "xp_amount": 1, "reason": "x"},
            headers=service_headers(),
        )
        assert response.status_code == 409
        assert "2 top-ups are live" in response.json()["detail"]
        assert (await balance(client, "u1"))["xp_balance"] == 2


@pytest.mark.parametrize("route", ["/api/v1/xp/grants", "/api/admin/exp/adjust"])
async def test_an_x_user_id_naming_someone_else_than_the_body_is_refused(
    client: httpx2.AsyncClient, redis_client: redis.Redis, route: str
) -> None:
    """A grant and an adjust act for the body's user_id; an X-User-Id naming another user was
    silently ignored (a reviewer's finding), where the batch route refuses the header."""
    body: dict[str, object] = {"user_id": "u1", "reason": "top_up"}
    body |= {"xp_amount": 5} if "grants" in route else {"delta": 5}
    other = await client.post(route, json=body, headers=service_headers("u2"))
    assert other.status_code == 422, other.text
    assert "X-User-Id names 'u2' but the request's user_id is 'u1'" in other.json()["detail"]
    assert kinds(redis_client, "u1") == [] and kinds(redis_client, "u2") == []
    same = await client.post(route, json=body, headers=service_headers("u1"))
    assert same.status_code == 200, same.text


async def test_a_subscription_refuses_an_x_user_id_naming_another_user(
    client: httpx2.AsyncClient,
) -> None:
    """Its user is in its path; the header was ignored, even as ``system`` (a reviewer's
    finding after grants and adjusts were fixed)."""
    for sent in ("u2", "system"):
        put = await client.put(
            "/api/v1/subscriptions/u1", json={"tier": "pixel_rookie"}, headers=service_headers(sent)
        )
        assert put.status_code == 422, put.text
        gone = await client.delete("/api/v1/subscriptions/u1", headers=service_headers(sent))
        assert gone.status_code == 422, gone.text
    assert "pixel_rookie" not in str(await balance(client, "u1"))
    put = await client.put(
        "/api/v1/subscriptions/u1", json={"tier": "pixel_rookie"}, headers=service_headers("u1")
    )
    assert put.status_code == 200, put.text
