"""check-xp, preview-generation-cost and the tables: the seed's bodies, on the real Redis."""

from __future__ import annotations

import httpx2
import pytest
import redis

from counters.redis.keys import UserKeys
from tests.support.core import service_headers, user_headers
from tests.support.xp import ARCADE, BUCKETS, grant, kinds, spend_to, subscribe

pytestmark = pytest.mark.anyio

GAME_MASTER = {
    "tier_name": "game_master",
    "tier_display_name": "Game Master",
    "tier_level": 3,
    "monthly_xp_allocation": 1320,
    "monthly_price_aud": 33,
}
ROOKIE_INFO = {"tier_name": "pixel_rookie", "tier_display_name": "Pixel Rookie", "tier_level": 1}
SEED_BODY = {
    "has_sufficient_xp": False,
    "xp_balance": 5,
    "xp_required": 12,
    "xp_deficit": 7,
    "message": "Insufficient credits. Need 12 XP, have 5 XP (7 XP short).",
    "guidance": "⚡ You need 7 more XP credits. 💎 Upgrade your tier or wait for your monthly XP "
    "refresh to continue creating. 🎯 Recommended: Arcade Artist (A$20/month) gives you 800 XP "
    "monthly!",
    "subscription_url": "/subscriptions",
    "current_tier": ROOKIE_INFO,
    "recommended_tier": ARCADE,
}


async def rookie_with_5_xp(client: httpx2.AsyncClient, user: str) -> None:
    """A Pixel Rookie whose 600 XP are spent, with a 5 XP top-up: the seed's example user."""
    await subscribe(client, user, "pixel_rookie")
    await spend_to(client, user, "NEW_IMAGE", 50)
    await grant(client, user, 5)


async def check(client: httpx2.AsyncClient, user: str, path: str) -> httpx2.Response:
    return await client.get(f"/api/v1/subscriptions/check-xp/{path}", headers=user_headers(user))


async def test_the_seed_example_word_for_word(client: httpx2.AsyncClient) -> None:
    await rookie_with_5_xp(client, "u1")
    response = await check(client, "u1", "NEW_IMAGE?include_guidance=true")
    assert response.status_code == 200
    assert response.json() == SEED_BODY
    assert list(response.json()) == list(SEED_BODY)  # the seed's field order too


async def test_guidance_is_left_out_unless_asked_for(client: httpx2.AsyncClient) -> None:
    await rookie_with_5_xp(client, "u1")
    for query in ("", "?include_guidance=false"):
        body = (await check(client, "u1", f"NEW_IMAGE{query}")).json()
        assert body == {k: v for k, v in SEED_BODY.items() if k != "guidance"}
    response = await check(client, "u1", "NEW_IMAGE?include_guidance=maybe")
    assert response.status_code == 422
    assert "include_guidance" in response.json()["detail"]
    twice = await check(client, "u1", "NEW_IMAGE?include_guidance=false&include_guidance=true")
    assert (twice.status_code, twice.json()["code"]) == (422, "invalid_request")


async def test_sufficient_xp(client: httpx2.AsyncClient) -> None:
    await subscribe(client, "u1", "pixel_rookie")
    body = (await check(client, "u1", "EDIT_IMAGE?include_guidance=true")).json()
    assert body == {
        "has_sufficient_xp": True,
        "xp_balance": 600,
        "xp_required": 9,
        "xp_deficit": 0,
        "message": "Sufficient credits. Need 9 XP, have 600 XP.",
        "guidance": "✅ You have 600 XP. Keep creating!",
        "subscription_url": "/subscriptions",
        "current_tier": ROOKIE_INFO,
        "recommended_tier": None,
    }


async def test_no_subscription_guides_to_the_first_tier_allowing_the_type(
    client: httpx2.AsyncClient,
) -> None:
    body = (await check(client, "new", "NEW_IMAGE?include_guidance=true")).json()
    assert body["has_sufficient_xp"] is False
    assert (body["xp_balance"], body["xp_required"], body["xp_deficit"]) == (0, 12, 12)
    assert body["current_tier"] is None
    assert body["recommended_tier"]["tier_name"] == "pixel_rookie"
    assert body["message"] == "No active subscription. A subscription is needed for NEW_IMAGE."
    assert body["guidance"] == (
        "🎮 Subscribe to unlock NEW_IMAGE and start creating! 🎯 Recommended: Pixel Rookie "
        "(A$15/month) gives you 600 XP monthly!"
    )
    video = (await check(client, "new", "NEW_VIDEO_WITH_AUDIO")).json()
    assert video["recommended_tier"] == GAME_MASTER


async def test_a_type_the_tier_does_not_allow(client: httpx2.AsyncClient) -> None:
    await subscribe(client, "u1", "pixel_rookie")
    body = (await check(client, "u1", "NEW_VIDEO?include_guidance=true")).json()
    assert body["has_sufficient_xp"] is False  # 600 XP would pay 15, but the tier forbids it
    assert (body["xp_balance"], body["xp_required"], body["xp_deficit"]) == (600, 15, 0)
    assert body["recommended_tier"] == ARCADE
    assert body["message"] == "NEW_VIDEO is not included in Pixel Rookie."
    assert body["guidance"] == (
        "🔒 NEW_VIDEO is not included in Pixel Rookie. 💎 Upgrade your tier to unlock it. "
        "🎯 Recommended: Arcade Artist (A$20/month) gives you 800 XP monthly!"
    )
    audio = (await check(client, "u1", "IMAGE_TO_VIDEO_WITH_AUDIO")).json()
    assert audio["recommended_tier"] == GAME_MASTER  # the lowest tier that allows it


async def test_top_tier_and_short_recommends_nothing(client: httpx2.AsyncClient) -> None:
    await subscribe(client, "u1", "game_master")
    await spend_to(client, "u1", "NEW_VIDEO_WITH_AUDIO", 1)  # 1320 - 720 = 600 left
    body = (await check(client, "u1", "NEW_VIDEO_WITH_AUDIO?include_guidance=true")).json()
    assert (body["xp_balance"], body["xp_required"], body["xp_deficit"]) == (600, 720, 120)
    assert body["recommended_tier"] is None
    assert body["current_tier"]["tier_name"] == "game_master"
    assert body["message"] == "Insufficient credits. Need 720 XP, have 600 XP (120 XP short)."
    assert body["guidance"] == (
        "⚡ You need 120 more XP credits. ⏳ Wait for your monthly XP refresh or top up your XP "
        "to continue creating."
    )


async def test_unknown_type_is_404_listing_the_known_types(client: httpx2.AsyncClient) -> None:
    response = await check(client, "u1", "NEW_HOLOGRAM")
    assert response.status_code == 404
    detail = response.json()["detail"]
    assert "NEW_HOLOGRAM" in detail
    assert "NEW_IMAGE, NEW_IMAGE_REF, EDIT_IMAGE" in detail and "EDIT_IMAGE_REF_TO_VIDEO" in detail


async def test_a_long_unknown_type_is_not_echoed_whole(client: httpx2.AsyncClient) -> None:
    response = await check(client, "u1", "X" * 5_000)
    assert response.status_code == 404
    detail = response.json()["detail"]
    assert f"'{'X' * 80}... (4920 more characters)'" in detail and len(detail) < 400


async def test_check_needs_credentials_and_writes_nothing(
    client: httpx2.AsyncClient, redis_client: redis.Redis
) -> None:
    response = await client.get("/api/v1/subscriptions/check-xp/NEW_IMAGE")
    assert response.status_code == 401
    await subscribe(client, "u1", "pixel_rookie")
    before = kinds(redis_client, "u1")
    await check(client, "u1", "NEW_IMAGE")
    await client.post(
        "/api/v1/subscriptions/preview-generation-cost",
        json={"generation_type": "NEW_IMAGE"},
        headers=user_headers("u1"),
    )
    assert kinds(redis_client, "u1") == before
    await check(client, "ghost", "NEW_IMAGE")
    assert not redis_client.exists(UserKeys.of("ghost", BUCKETS).user)


async def test_a_service_key_checks_for_the_user_it_names(client: httpx2.AsyncClient) -> None:
    await subscribe(client, "u1", "pixel_rookie")
    response = await client.get(
        "/api/v1/subscriptions/check-xp/NEW_IMAGE", headers=service_headers("u1")
    )
    assert response.json()["xp_balance"] == 600


async def test_preview_is_the_check_plus_the_cost(client: httpx2.AsyncClient) -> None:
    await rookie_with_5_xp(client, "u1")
    response = await client.post(
        "/api/v1/subscriptions/preview-generation-cost",
        json={"generation_type": "NEW_IMAGE", "include_guidance": True},
        headers=user_headers("u1"),
    )
    assert response.status_code == 200
    assert response.json() == {
        **SEED_BODY,
        "generation_type": "NEW_IMAGE",
        "model": "FLUX 1.1 Pro",
        "base_xp_cost": 12,
        "xp_cost": 12,
        "tier_allows": True,
        "xp_balance_after": None,
    }
    await grant(client, "u1", 20)
    response = await client.post(
        "/api/v1/subscriptions/preview-generation-cost",
        json={"generation_type": "EDIT_IMAGE"},
        headers=user_headers("u1"),
    )
    body = response.json()
    assert "guidance" not in body
    assert (body["has_sufficient_xp"], body["xp_cost"], body["xp_balance_after"]) == (True, 9, 16)


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"generation_type": "NOPE"}, 404, "known types"),
        ({}, 422, "generation_type"),
        ({"generation_type": "NEW_IMAGE", "extra": 1}, 422, "extra"),
        ({"generation_type": 12}, 422, "Expected `str`"),
    ],
)
async def test_preview_bad_input(
    client: httpx2.AsyncClient, body: dict[str, object], status: int, fragment: str
) -> None:
    response = await client.post(
        "/api/v1/subscriptions/preview-generation-cost", json=body, headers=user_headers("u1")
    )
    assert response.status_code == status
    assert fragment in response.json()["detail"]


async def test_the_tables_need_no_credentials(client: httpx2.AsyncClient) -> None:
    costs = (await client.get("/api/v1/xp/costs")).json()
    assert {name: c["xp_cost"] for name, c in costs.items()} == {
        "NEW_IMAGE": 12,
        "NEW_IMAGE_REF": 18,
        "EDIT_IMAGE": 9,
        "EDIT_IMAGE_REF": 18,
        "EDIT_IMAGE_ADD_NEW": 18,
        "NEW_VIDEO": 15,
        "NEW_VIDEO_WITH_AUDIO": 720,
        "IMAGE_TO_VIDEO": 150,
        "IMAGE_TO_VIDEO_WITH_AUDIO": 720,
        "EDIT_IMAGE_REF_TO_VIDEO": 150,
    }
    assert costs["EDIT_IMAGE"]["model"] == "FLUX Kontext Max"
    assert costs["NEW_VIDEO_WITH_AUDIO"]["model"] == "Google VEO-3 Fast"
    tiers = (await client.get("/api/v1/subscriptions/tiers")).json()
    assert list(tiers) == ["pixel_rookie", "arcade_artist", "game_master"]
    summary = [
        (t["tier_level"], t["monthly_price_aud"], t["monthly_xp_allocation"])
        for t in tiers.values()
    ]
    assert summary == [(1, 15, 600), (2, 20, 800), (3, 33, 1320)]
    assert "NEW_VIDEO" not in tiers["pixel_rookie"]["allowed_generation_types"]
    assert "NEW_VIDEO" in tiers["arcade_artist"]["allowed_generation_types"]
    assert "NEW_VIDEO_WITH_AUDIO" not in tiers["arcade_artist"]["allowed_generation_types"]
    assert len(tiers["game_master"]["allowed_generation_types"]) == 10
