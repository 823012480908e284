"""set_subscription.lua, cancel_subscription.lua and the renewals every XP script applies."""

from __future__ import annotations

import httpx2
import msgspec
import pytest
import redis

from counters.clock import ManualClock
from counters.rules import load_rules
from counters.settings import Settings
from tests.support.core import NOON, service_headers, user_headers
from tests.support.xp import (
    app_client,
    balance,
    debit,
    events,
    grant,
    iso,
    kinds,
    spend_to,
    subscribe,
    ts,
)

pytestmark = pytest.mark.anyio

EARLIEST_START = (
    "period_start must be 1970-01-01T00:00:01Z or later (periods are kept in whole seconds: a"
    " fraction of a second is dropped)"
)

DAY = 86_400
PERIOD_END = NOON + 30 * DAY  # 2026-12-21 12:00, a month after NOON


async def cancel(client: httpx2.AsyncClient, user: str) -> httpx2.Response:
    return await client.delete(f"/api/v1/subscriptions/{user}", headers=service_headers())


async def test_subscribe_grants_the_allocation(
    client: httpx2.AsyncClient, redis_client: redis.Redis
) -> None:
    body = await subscribe(client, "u1", "pixel_rookie")
    assert body == {
        "user_id": "u1",
        "change": "subscribe",
        "current_tier": {
            "tier_name": "pixel_rookie",
            "tier_display_name": "Pixel Rookie",
            "tier_level": 1,
        },
        "next_tier": None,
        "cancel_at_period_end": False,
        "period_start": iso(NOON),
        "period_end": iso(PERIOD_END),
        "xp_allocation_added": 600,
        "xp_allocation": 600,
        "xp_balance": 600,
    }
    assert kinds(redis_client, "u1") == [
        ("xp_subscription", "subscribe", 0),
        ("xp_allocation", "period_start", 600),
    ]
    assert {e["actor"] for e in events(redis_client, "u1")} == {"service:0"}
    view = await balance(client, "u1")
    assert view["allocation"] == {
        "xp_left": 600,
        "monthly_xp_allocation": 600,
        "period_start": iso(NOON),
        "renews_at": iso(PERIOD_END),
        "expires_at": iso(PERIOD_END),
        "rolls_over": False,
    }


async def test_renewal_one_second_before_and_after_the_period_end(
    client: httpx2.AsyncClient, redis_client: redis.Redis, clock: ManualClock
) -> None:
    await subscribe(client, "u1", "pixel_rookie")
    await spend_to(client, "u1", "NEW_IMAGE", 10)
    clock.at = PERIOD_END - 1
    view = await balance(client, "u1")
    assert (view["xp_balance"], view["allocation"]["period_start"]) == (480, iso(NOON))
    clock.at = PERIOD_END + 1
    view = await balance(client, "u1")
    assert view["xp_balance"] == 600
    assert view["allocation"]["period_start"] == iso(PERIOD_END)
    assert view["allocation"]["renews_at"] == iso(ts(2027, 1, 21))
    renewal = events(redis_client, "u1")[-1]
    assert (renewal["kind"], renewal["action"], renewal["amount"]) == (
        "xp_allocation",
        "renewal",
        "120",
    )
    assert renewal["effective_ts"] == str(int(PERIOD_END * 1000))
    assert renewal["actor"] == "system"


async def test_renewals_at_exactly_the_period_end_and_after_a_long_absence(
    client: httpx2.AsyncClient, redis_client: redis.Redis, clock: ManualClock
) -> None:
    await subscribe(client, "u1", "pixel_rookie")
    clock.at = PERIOD_END
    assert (await balance(client, "u1"))["allocation"]["period_start"] == iso(PERIOD_END)
    clock.at = ts(2027, 4, 1)
    view = await balance(client, "u1")
    assert view["allocation"]["period_start"] == iso(ts(2027, 3, 21))
    renewals = [e for e in events(redis_client, "u1") if e["action"] == "renewal"]
    assert [int(e["effective_ts"]) // 1000 for e in renewals] == [
        int(ts(2026, 12, 21)),
        int(ts(2027, 1, 21)),
        int(ts(2027, 2, 21)),
        int(ts(2027, 3, 21)),
    ]


async def test_a_month_end_anchor_clamps_and_recovers(
    client: httpx2.AsyncClient, clock: ManualClock
) -> None:
    body = await subscribe(client, "u1", "pixel_rookie", period_start=ts(2026, 1, 31))
    assert (body["period_start"], body["period_end"]) == (
        iso(ts(2026, 10, 31)),
        iso(ts(2026, 11, 30)),
    )
    expected = [
        (ts(2026, 11, 30), ts(2026, 12, 31)),
        (ts(2026, 12, 31), ts(2027, 1, 31)),
        (ts(2027, 1, 31), ts(2027, 2, 28)),  # Jan 31 -> Feb 28
        (ts(2027, 2, 28), ts(2027, 3, 31)),  # and back to the 31st
    ]
    for start, end in expected:
        clock.at = start - 1
        assert (await balance(client, "u1"))["allocation"]["renews_at"] == iso(start)
        clock.at = start + 1
        view = await balance(client, "u1")
        assert view["allocation"]["period_start"] == iso(start)
        assert view["allocation"]["renews_at"] == iso(end)


async def test_a_leap_year_february(client: httpx2.AsyncClient, clock: ManualClock) -> None:
    clock.at = ts(2028, 2, 10)
    body = await subscribe(client, "u1", "pixel_rookie", period_start=ts(2028, 1, 31))
    assert body["period_end"] == iso(ts(2028, 2, 29))


async def test_upgrade_mid_period(
    client: httpx2.AsyncClient, redis_client: redis.Redis, clock: ManualClock
) -> None:
    await subscribe(client, "u1", "pixel_rookie")
    await spend_to(client, "u1", "NEW_IMAGE", 5)  # 540 left of 600
    assert (await debit(client, "u1", "NEW_VIDEO")).status_code == 403
    clock.at = NOON + 10 * DAY
    body = await subscribe(client, "u1", "arcade_artist")
    assert body["change"] == "upgrade"
    assert (body["xp_allocation_added"], body["xp_allocation"]) == (200, 740)
    assert (body["period_start"], body["period_end"]) == (iso(NOON), iso(PERIOD_END))
    assert kinds(redis_client, "u1")[-2:] == [
        ("xp_subscription", "upgrade", 0),
        ("xp_allocation", "upgrade", 200),
    ]
    assert (await debit(client, "u1", "NEW_VIDEO")).status_code == 200
    clock.at = PERIOD_END
    assert (await balance(client, "u1"))["xp_balance"] == 800


async def test_downgrade_applies_at_renewal(
    client: httpx2.AsyncClient, redis_client: redis.Redis, clock: ManualClock
) -> None:
    await subscribe(client, "u1", "arcade_artist")
    body = await subscribe(client, "u1", "pixel_rookie")
    assert body["change"] == "downgrade_scheduled"
    assert body["current_tier"]["tier_name"] == "arcade_artist"
    assert body["next_tier"]["tier_name"] == "pixel_rookie"
    assert (body["xp_allocation_added"], body["xp_balance"]) == (0, 800)
    assert (await subscribe(client, "u1", "pixel_rookie"))["change"] == "none"
    clock.at = PERIOD_END - 1
    assert (await debit(client, "u1", "NEW_VIDEO")).status_code == 200
    clock.at = PERIOD_END + 1
    view = await balance(client, "u1")
    assert view["current_tier"]["tier_name"] == "pixel_rookie"
    assert (view["next_tier"], view["xp_balance"]) == (None, 600)
    assert kinds(redis_client, "u1")[-2:] == [
        ("xp_subscription", "downgrade", 0),
        ("xp_allocation", "renewal", 600 - 785),
    ]
    assert (await debit(client, "u1", "NEW_VIDEO")).status_code == 403


async def test_cancel_at_period_end(
    client: httpx2.AsyncClient, redis_client: redis.Redis, clock: ManualClock
) -> None:
    await subscribe(client, "u1", "pixel_rookie")
    await grant(client, "u1", 50)
    response = await cancel(client, "u1")
    assert response.status_code == 200
    body = response.json()
    assert (body["change"], body["cancel_at_period_end"]) == ("cancel_scheduled", True)
    assert (await cancel(client, "u1")).json()["change"] == "none"
    clock.at = PERIOD_END - 1
    assert (await debit(client, "u1", "EDIT_IMAGE")).status_code == 200
    view = await balance(client, "u1")
    assert (view["allocation"]["renews_at"], view["allocation"]["expires_at"]) == (
        None,
        iso(PERIOD_END),
    )
    clock.at = PERIOD_END + 1
    view = await balance(client, "u1")
    assert (view["current_tier"], view["xp_allocation"], view["xp_balance"]) == (None, 0, 50)
    assert kinds(redis_client, "u1")[-2:] == [
        ("xp_allocation", "expired", -591),
        ("xp_subscription", "ended", 0),
    ]
    assert (await debit(client, "u1", "EDIT_IMAGE")).status_code == 403
    again = await cancel(client, "u1")
    assert again.status_code == 409
    assert again.json() == {
        "detail": "User u1 has no subscription to cancel",
        "code": "no_subscription",
    }
    body = await subscribe(client, "u1", "pixel_rookie")  # a new subscription, anchored now
    assert (body["period_start"], body["xp_balance"]) == (iso(PERIOD_END + 1), 650)


async def test_resume_before_the_end(client: httpx2.AsyncClient, clock: ManualClock) -> None:
    await subscribe(client, "u1", "arcade_artist")
    await cancel(client, "u1")
    body = await subscribe(client, "u1", "arcade_artist")
    assert (body["change"], body["cancel_at_period_end"]) == ("resume", False)
    clock.at = PERIOD_END + 1
    assert (await balance(client, "u1"))["current_tier"]["tier_name"] == "arcade_artist"


async def test_the_same_tier_again_changes_nothing(
    client: httpx2.AsyncClient, redis_client: redis.Redis
) -> None:
    await subscribe(client, "u1", "pixel_rookie")
    before = kinds(redis_client, "u1")
    assert (await subscribe(client, "u1", "pixel_rookie"))["change"] == "none"
    assert (await subscribe(client, "u1", "pixel_rookie", NOON))["change"] == "none"
    assert kinds(redis_client, "u1") == before


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"tier": "diamond"}, 422, "known tiers: pixel_rookie, arcade_artist, game_master"),
        (
            {"tier": "pixel_rookie", "period_start": "2030-01-01T00:00:00Z"},
            422,
            "not be in the future",
        ),
        # 0 is "now" to the scripts: the message names the real bound, not "in the past".
        (
            {"tier": "pixel_rookie", "period_start": "1970-01-01T00:00:00Z"},
            422,
            EARLIEST_START,
        ),
        # A reviewer's finding: this was refused as not "after 1970-01-01T00:00:00Z", which it
        # is; its whole second, the one periods are kept in, is 0.
        (
            {"tier": "pixel_rookie", "period_start": "1970-01-01T00:00:00.5Z"},
            422,
            EARLIEST_START,
        ),
        ({"tier": "pixel_rookie", "period_start": "2026-01-01T00:00:00"}, 422, "timezone"),
        ({"tier": "pixel_rookie", "period_start": "yesterday"}, 422, "datetime"),
        ({"tier": "pixel_rookie", "extra": True}, 422, "extra"),
        ({}, 422, "tier"),
    ],
)
async def test_bad_subscription_requests(
    client: httpx2.AsyncClient,
    redis_client: redis.Redis,
    body: object,
    status: int,
    fragment: str,
) -> None:
    response = await client.put("/api/v1/subscriptions/u1", json=body, headers=service_headers())
    assert response.status_code == status
    assert fragment in response.json()["detail"]
    assert kinds(redis_client, "u1") == []


async def test_a_fraction_of_a_second_in_period_start_is_dropped(
    client: httpx2.AsyncClient, redis_client: redis.Redis
) -> None:
    """Periods are kept in whole seconds: a start's fraction is dropped, the reply shows the
    second kept, and the same second with another fraction is the same start (no 409)."""
    body = {"tier": "pixel_rookie", "period_start": "2026-11-21T11:59:59.750Z"}
    response = await client.put("/api/v1/subscriptions/u1", json=body, headers=service_headers())
    assert response.status_code == 200, response.text
    assert response.json()["period_start"] == "2026-11-21T11:59:59Z"
    before = kinds(redis_client, "u1")
    body["period_start"] = "2026-11-21T11:59:59.2Z"
    again = await client.put("/api/v1/subscriptions/u1", json=body, headers=service_headers())
    assert (again.status_code, again.json()["change"]) == (200, "none")
    assert kinds(redis_client, "u1") == before


async def test_period_start_of_an_active_subscription_cannot_move(
    client: httpx2.AsyncClient,
) -> None:
    """The 409 names the start as every reply writes a time (a reviewer helper-63 finding: it
    read "2026-11-21 12:00:00+00:00", Python's ``str`` of a datetime)."""
    await subscribe(client, "u1", "pixel_rookie")
    response = await client.put(
        "/api/v1/subscriptions/u1",
        json={"tier": "arcade_artist", "period_start": iso(NOON - DAY)},
        headers=service_headers(),
    )
    assert response.status_code == 409
    detail = response.json()["detail"]
    assert f"period_start differs from the subscription's start ({iso(NOON)});" in detail
    assert f"once it has ended at {iso(PERIOD_END)}, subscribe again" in detail
    assert (await balance(client, "u1"))["current_tier"]["tier_name"] == "pixel_rookie"


async def test_the_conflict_names_the_path_that_moves_period_start(
    client: httpx2.AsyncClient, clock: ManualClock
) -> None:
    """FINDINGS F10: the 409 said "cancel it and subscribe again", and a PUT right after the
    DELETE still conflicted. The start moves once the cancelled subscription has ended."""
    await subscribe(client, "u1", "pixel_rookie")
    await cancel(client, "u1")
    moved = {"tier": "pixel_rookie", "period_start": iso(NOON + 5 * DAY)}
    clock.at = NOON + 6 * DAY
    early = await client.put("/api/v1/subscriptions/u1", json=moved, headers=service_headers())
    assert early.status_code == 409
    detail = early.json()["detail"]
    assert f"once it has ended at {iso(PERIOD_END)}" in detail, detail
    assert "cancel it (DELETE)" in detail
    clock.at = PERIOD_END + DAY  # what the detail says works
    body = await subscribe(client, "u1", "pixel_rookie", NOON + 5 * DAY)
    assert (body["change"], body["period_start"]) == ("subscribe", iso(NOON + 5 * DAY))


async def test_subscriptions_are_for_services_only(client: httpx2.AsyncClient) -> None:
    response = await client.put(
        "/api/v1/subscriptions/u1", json={"tier": "game_master"}, headers=user_headers("u1")
    )
    assert response.status_code == 403
    assert (await client.delete("/api/v1/subscriptions/u1")).status_code == 401
    bad_user = await client.put(
        "/api/v1/subscriptions/-x", json={"tier": "game_master"}, headers=service_headers()
    )
    assert bad_user.status_code == 422


async def test_idempotent_subscription_change(client: httpx2.AsyncClient) -> None:
    headers = service_headers(**{"Idempotency-Key": "sub-1"})
    first = await client.put(
        "/api/v1/subscriptions/u1", json={"tier": "pixel_rookie"}, headers=headers
    )
    again = await client.put(
        "/api/v1/subscriptions/u1", json={"tier": "pixel_rookie"}, headers=headers
    )
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    other = await client.put(
        "/api/v1/subscriptions/u2", json={"tier": "pixel_rookie"}, headers=headers
    )
    assert other.status_code == 200  # another user: another record (same caller, other hash tag)
    mismatch = await client.put(
        "/api/v1/subscriptions/u1", json={"tier": "game_master"}, headers=headers
    )
    assert mismatch.status_code == 422


async def test_a_rollover_tier_carries_the_allocation(
    settings: Settings, clock: ManualClock, redis_client: redis.Redis
) -> None:
    rules = load_rules()
    tiers = tuple(
        msgspec.structs.replace(t, rollover=True) if t.name == "pixel_rookie" else t
        for t in rules.xp.tiers
    )
    rollover = msgspec.structs.replace(rules, xp=msgspec.structs.replace(rules.xp, tiers=tiers))
    async with app_client(settings, clock, rollover) as client:
        await subscribe(client, "u1", "pixel_rookie")
        await grant(client, "u1", 10)  # never expires, but the rolling allocation burns first
        await debit(client, "u1", "NEW_IMAGE")
        view = await balance(client, "u1")
        assert (view["xp_allocation"], view["xp_topup"]) == (588, 10)
        assert (view["allocation"]["rolls_over"], view["allocation"]["expires_at"]) == (True, None)
        clock.at = PERIOD_END + 1
        assert (await balance(client, "u1"))["xp_allocation"] == 1188
        assert kinds(redis_client, "u1")[-1] == ("xp_allocation", "renewal", 600)
