"""Holds (two-phase debits): lua/debit_xp.lua in hold mode, capture_hold.lua, release_hold.lua."""

from __future__ import annotations

import dataclasses

import httpx2
import pytest
import redis

from counters.clock import ManualClock
from counters.settings import Settings
from tests.support.core import NOON, user_headers
from tests.support.xp import (
    app_client,
    balance,
    debit,
    events,
    grant,
    hold,
    iso,
    kinds,
    subscribe,
    xp_rules_with,
)

pytestmark = pytest.mark.anyio


async def capture(
    client: httpx2.AsyncClient, user: str, hold_id: str, amount: object = None, **headers: str
) -> httpx2.Response:
    body = None if amount is None else {"xp_amount": amount}
    return await client.post(
        f"/api/v1/xp/holds/{hold_id}/capture", json=body, headers=user_headers(user, **headers)
    )


async def release(client: httpx2.AsyncClient, user: str, hold_id: str) -> httpx2.Response:
    return await client.post(f"/api/v1/xp/holds/{hold_id}/release", headers=user_headers(user))


async def rookie_hold(client: httpx2.AsyncClient, user: str = "u1") -> str:
    """A Pixel Rookie (600 XP) holding 18 XP for NEW_IMAGE_REF."""
    await subscribe(client, user, "pixel_rookie")
    response = await hold(client, user, "NEW_IMAGE_REF")
    assert response.status_code == 201, response.text
    hold_id: str = response.json()["hold_id"]
    return hold_id


async def test_a_hold_takes_the_xp_out_of_the_balance(
    client: httpx2.AsyncClient, redis_client: redis.Redis
) -> None:
    await subscribe(client, "u1", "pixel_rookie")
    response = await hold(client, "u1", "NEW_IMAGE_REF")
    assert response.status_code == 201
    body = response.json()
    assert body == {
        "hold_id": body["hold_id"],
        "xp_held": 18,
        "xp_balance": 582,
        "expires_at": iso(NOON + 900),  # the default hold_ttl_seconds
    }
    view = await balance(client, "u1")
    assert (view["xp_balance"], view["xp_allocation"], view["xp_held"]) == (582, 582, 18)
    assert view["holds"] == [
        {
            "hold_id": body["hold_id"],
            "generation_type": "NEW_IMAGE_REF",
            "xp_held": 18,
            "expires_at": iso(NOON + 900),
        }
    ]
    event = events(redis_client, "u1")[-1]
    assert (event["kind"], event["amount"], event["target"]) == ("xp_hold", "-18", body["hold_id"])
    assert (event["xp_balance"], event["xp_held"]) == ("582", "18")


async def test_full_capture(client: httpx2.AsyncClient, redis_client: redis.Redis) -> None:
    hold_id = await rookie_hold(client)
    response = await capture(client, "u1", hold_id)
    assert response.status_code == 200
    assert response.json() == {
        "hold_id": hold_id,
        "transaction_id": hold_id,
        "xp_captured": 18,
        "xp_released": 0,
        "xp_balance": 582,
    }
    event = events(redis_client, "u1")[-1]
    assert (event["kind"], event["amount"], event["xp_captured"]) == ("xp_capture", "0", "18")
    assert (await balance(client, "u1"))["xp_held"] == 0


async def test_partial_capture_returns_the_rest(
    client: httpx2.AsyncClient, redis_client: redis.Redis
) -> None:
    hold_id = await rookie_hold(client)
    response = await capture(client, "u1", hold_id, 10)
    assert response.json()["xp_captured"] == 10
    assert response.json()["xp_released"] == 8
    view = await balance(client, "u1")
    assert (view["xp_balance"], view["xp_held"]) == (590, 0)
    assert kinds(redis_client, "u1")[-1] == ("xp_capture", "NEW_IMAGE_REF", 8)


async def test_capture_of_exactly_the_held_amount(client: httpx2.AsyncClient) -> None:
    hold_id = await rookie_hold(client)
    response = await capture(client, "u1", hold_id, 18)
    assert (response.json()["xp_captured"], response.json()["xp_released"]) == (18, 0)


@pytest.mark.parametrize(
    ("amount", "status", "fragment"),
    [
        (19, 422, "Cannot capture 19 XP: hold"),
        (0, 422, ">= 1"),
        (-5, 422, ">= 1"),
        ("ten", 422, "Expected `int"),
    ],
)
async def test_bad_capture_amounts_change_nothing(
    client: httpx2.AsyncClient,
    redis_client: redis.Redis,
    amount: object,
    status: int,
    fragment: str,
) -> None:
    hold_id = await rookie_hold(client)
    before = kinds(redis_client, "u1")
    response = await capture(client, "u1", hold_id, amount)
    assert response.status_code == status
    assert fragment in response.json()["detail"]
    assert kinds(redis_client, "u1") == before
    view = await balance(client, "u1")
    assert (view["xp_balance"], view["xp_held"]) == (582, 18)
    assert (await capture(client, "u1", hold_id)).status_code == 200  # still capturable


async def test_a_second_capture_or_release_is_409(
    client: httpx2.AsyncClient, redis_client: redis.Redis
) -> None:
    captured = await rookie_hold(client)
    assert (await capture(client, "u1", captured, 5)).status_code == 200
    released = (await hold(client, "u1", "EDIT_IMAGE")).json()["hold_id"]
    assert (await release(client, "u1", released)).status_code == 200
    before = (await balance(client, "u1"), kinds(redis_client, "u1"))
    for hold_id in (captured, released):
        for response in (
            await capture(client, "u1", hold_id),
            await release(client, "u1", hold_id),
        ):
            assert response.status_code == 409
            assert response.json() == {
                "detail": f"Hold {hold_id} was already captured or released",
                "code": "already_settled",
            }
    assert (await balance(client, "u1"), kinds(redis_client, "u1")) == before


async def test_release_returns_everything(
    client: httpx2.AsyncClient, redis_client: redis.Redis
) -> None:
    hold_id = await rookie_hold(client)
    response = await release(client, "u1", hold_id)
    assert response.json() == {"hold_id": hold_id, "xp_released": 18, "xp_balance": 600}
    assert kinds(redis_client, "u1")[-1] == ("xp_release", "NEW_IMAGE_REF", 18)


async def test_hold_expiry_one_second_before_and_after(
    client: httpx2.AsyncClient, redis_client: redis.Redis, clock: ManualClock
) -> None:
    hold_id = await rookie_hold(client)
    clock.at = NOON + 899
    view = await balance(client, "u1")
    assert (view["xp_balance"], view["xp_held"]) == (582, 18)
    clock.at = NOON + 901
    view = await balance(client, "u1")
    assert (view["xp_balance"], view["xp_held"], view["holds"]) == (600, 0, [])
    expired = events(redis_client, "u1")[-1]
    assert (expired["kind"], expired["amount"], expired["target"]) == (
        "xp_hold_expired",
        "18",
        hold_id,
    )
    assert (expired["actor"], expired["idem"]) == ("system", "")
    assert expired["effective_ts"] == str(int((NOON + 900) * 1000))
    assert expired["ts"] == str(int((NOON + 901) * 1000))
    for response in (await capture(client, "u1", hold_id), await release(client, "u1", hold_id)):
        assert response.status_code == 409
        assert "expired" in response.json()["detail"]
    assert (await balance(client, "u1"))["xp_balance"] == 600


async def test_capture_at_the_last_second(client: httpx2.AsyncClient, clock: ManualClock) -> None:
    hold_id = await rookie_hold(client)
    clock.at = NOON + 899
    assert (await capture(client, "u1", hold_id)).status_code == 200
    clock.at = NOON + 2000
    assert (await balance(client, "u1"))["xp_balance"] == 582  # captured XP stays spent


async def test_expiry_is_exactly_at_expires_at(
    client: httpx2.AsyncClient, clock: ManualClock
) -> None:
    hold_id = await rookie_hold(client)
    clock.at = NOON + 900
    assert (await capture(client, "u1", hold_id)).status_code == 409


async def test_unknown_holds(client: httpx2.AsyncClient) -> None:
    await subscribe(client, "u1", "pixel_rookie")
    debit_id = (await debit(client, "u1", "EDIT_IMAGE")).json()["transaction_id"]
    for hold_id in ("xh_000000000000000000000000", debit_id, "bad%20id"):
        response = await capture(client, "u1", hold_id)
        assert response.status_code == 404
        assert response.json()["detail"].startswith("Unknown hold")
    other = await rookie_hold(client, "u2")
    assert (await release(client, "u1", other)).status_code == 404  # another user's hold
    assert (await balance(client, "u2"))["xp_held"] == 18


async def test_refused_holds_have_the_debit_bodies(client: httpx2.AsyncClient) -> None:
    await subscribe(client, "u1", "pixel_rookie")
    forbidden = await hold(client, "u1", "NEW_VIDEO")
    assert forbidden.status_code == 403
    assert forbidden.json()["error"] == "tier_required"
    audio = await hold(client, "u2", "NEW_VIDEO_WITH_AUDIO")
    assert audio.json()["recommended_tier"]["tier_name"] == "game_master"
    await subscribe(client, "u3", "game_master")
    assert (await hold(client, "u3", "NEW_VIDEO_WITH_AUDIO")).status_code == 201
    short = await hold(client, "u3", "IMAGE_TO_VIDEO_WITH_AUDIO")  # 600 left of 1320
    assert short.status_code == 402
    assert short.json()["error"] == "insufficient_xp"
    assert short.json()["recommended_tier"] is None


async def test_idempotent_capture(client: httpx2.AsyncClient) -> None:
    hold_id = await rookie_hold(client)
    first = await capture(client, "u1", hold_id, 10, **{"Idempotency-Key": "c1"})
    again = await capture(client, "u1", hold_id, 10, **{"Idempotency-Key": "c1"})
    assert again.status_code == 200
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    other = await capture(client, "u1", hold_id, 11, **{"Idempotency-Key": "c1"})
    assert other.status_code == 422
    assert (await capture(client, "u1", hold_id)).status_code == 409


async def test_a_held_allocation_does_not_survive_its_period(
    client: httpx2.AsyncClient, redis_client: redis.Redis, clock: ManualClock
) -> None:
    await subscribe(client, "u1", "pixel_rookie")
    period_end = NOON + 30 * 86_400
    clock.at = period_end - 60
    hold_id = (await hold(client, "u1", "NEW_IMAGE_REF")).json()["hold_id"]
    clock.at = period_end + 900
    view = await balance(client, "u1")
    assert (view["xp_balance"], view["xp_held"]) == (600, 0)
    assert kinds(redis_client, "u1")[-2:] == [
        ("xp_allocation", "renewal", 18),  # 582 expired, 600 granted
        ("xp_hold_expired", "NEW_IMAGE_REF", 0),  # its XP came from the old period: lost
    ]
    assert (await release(client, "u1", hold_id)).status_code == 409


async def test_a_held_top_up_that_expired_meanwhile_is_lost(
    client: httpx2.AsyncClient, clock: ManualClock
) -> None:
    await subscribe(client, "u1", "pixel_rookie")
    await debit(client, "u1", "NEW_IMAGE")  # keep the allocation; the top-up expires sooner
    await grant(client, "u1", 18, NOON + 600)
    hold_id = (await hold(client, "u1", "NEW_IMAGE_REF")).json()["hold_id"]
    view = await balance(client, "u1")
    assert (view["xp_topup"], view["xp_allocation"]) == (0, 588)
    clock.at = NOON + 700
    response = await release(client, "u1", hold_id)
    assert response.json()["xp_released"] == 0
    assert (await balance(client, "u1"))["xp_balance"] == 588


async def test_the_hold_ttl_is_a_setting(settings: Settings, clock: ManualClock) -> None:
    async with app_client(dataclasses.replace(settings, hold_ttl_seconds=60), clock) as client:
        await subscribe(client, "u1", "pixel_rookie")
        response = await hold(client, "u1", "EDIT_IMAGE")
        assert response.json()["expires_at"] == iso(NOON + 60)
        clock.at = NOON + 61
        assert (await balance(client, "u1"))["xp_balance"] == 600


async def test_open_holds_are_bounded(settings: Settings, clock: ManualClock) -> None:
    async with app_client(settings, clock, xp_rules_with(max_active_holds=2)) as client:
        await subscribe(client, "u1", "pixel_rookie")
        assert (await hold(client, "u1", "EDIT_IMAGE")).status_code == 201
        assert (await hold(client, "u1", "EDIT_IMAGE")).status_code == 201
        third = await hold(client, "u1", "EDIT_IMAGE")
        assert third.status_code == 409
        assert "2 holds are open" in third.json()["detail"]
        assert (await balance(client, "u1"))["xp_balance"] == 582
