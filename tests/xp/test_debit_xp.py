"""lua/debit_xp.lua in debit mode, through POST /api/v1/xp/debit: every outcome and boundary."""

from __future__ import annotations

import json

import httpx2
import msgspec
import pytest
import redis

from counters.clock import ManualClock
from counters.errors import NotFound
from counters.redis.idempotency import Idempotency
from counters.redis.keys import UserKeys
from counters.runtime.services import Services
from counters.settings import Settings
from counters.xp.service import TRANSACTION_TTL
from tests.support.core import NOON, service_headers, user_headers
from tests.support.xp import (
    ARCADE,
    BUCKETS,
    balance,
    debit,
    events,
    grant,
    kinds,
    spend_to,
    subscribe,
)

pytestmark = pytest.mark.anyio

DAY = 86_400


async def test_a_debit_takes_the_cost_and_records_an_event(
    client: httpx2.AsyncClient, redis_client: redis.Redis
) -> None:
    await subscribe(client, "u1", "pixel_rookie")
    response = await debit(client, "u1", "NEW_IMAGE", **{"Idempotency-Key": "gen-1"})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"transaction_id", "xp_debited", "xp_balance"}
    assert (body["xp_debited"], body["xp_balance"]) == (12, 588)
    assert body["transaction_id"].startswith("xd_") and ":" not in body["transaction_id"]
    event = events(redis_client, "u1")[-1]
    state = json.loads(event.pop("xp_state"))
    assert event.pop("run").isdigit()  # the bucket's Redis incarnation (persistence/runs.py)
    assert event == {
        "event_id": f"u1:{event['seq']}",
        "user": "u1",
        "seq": event["seq"],
        "ts": str(int(NOON * 1000)),
        "kind": "xp_debit",
        "action": "NEW_IMAGE",
        "amount": "-12",
        "actor": "user:u1",
        "target": body["transaction_id"],
        "idem": "gen-1",
        "effective_ts": str(int(NOON * 1000)),
        "xp_balance": "588",
        "xp_allocation": "588",
        "xp_topup": "0",
        "xp_held": "0",
        "tier": "pixel_rookie",
    }
    assert event["seq"] == "3"  # subscribe, period start, debit
    assert (state["tier"], state["alloc"], state["grants"], state["holds"]) == (
        "pixel_rookie",
        588,
        [],
        [],
    )


async def test_balance_equal_to_the_cost_and_one_short(
    client: httpx2.AsyncClient, redis_client: redis.Redis
) -> None:
    await subscribe(client, "u1", "pixel_rookie")
    await spend_to(client, "u1", "NEW_IMAGE", 50)  # 600 spent
    await grant(client, "u1", 11)
    before = kinds(redis_client, "u1")
    short = await debit(client, "u1", "NEW_IMAGE")
    assert short.status_code == 402
    assert short.json() == {
        "error": "insufficient_xp",
        "message": "Insufficient credits. Need 12 XP, have 11 XP (1 XP short).",
        "guidance": "⚡ You need 1 more XP credits. 💎 Upgrade your tier or wait for your monthly "
        "XP refresh to continue creating. 🎯 Recommended: Arcade Artist (A$20/month) gives you "
        "800 XP monthly!",
        "subscription_url": "/subscriptions",
        "recommended_tier": ARCADE,
        "code": "insufficient_xp",
        "detail": "Insufficient credits. Need 12 XP, have 11 XP (1 XP short).",  # = message
        "xp_balance": 11,
        "xp_required": 12,
        "xp_deficit": 1,
    }
    assert kinds(redis_client, "u1") == before  # refused: no event, nothing changed
    assert (await balance(client, "u1"))["xp_balance"] == 11
    await grant(client, "u1", 1)
    exact = await debit(client, "u1", "NEW_IMAGE")
    assert exact.status_code == 200
    assert exact.json()["xp_balance"] == 0
    assert (await debit(client, "u1", "EDIT_IMAGE")).status_code == 402


async def test_the_seed_middleware_body_for_5_of_12(client: httpx2.AsyncClient) -> None:
    await subscribe(client, "u1", "pixel_rookie")
    await spend_to(client, "u1", "NEW_IMAGE", 50)
    await grant(client, "u1", 5)
    response = await debit(client, "u1", "NEW_IMAGE")
    assert response.status_code == 402
    assert response.json() == {
        "error": "insufficient_xp",
        "message": "Insufficient credits. Need 12 XP, have 5 XP (7 XP short).",
        "guidance": "⚡ You need 7 more XP credits. 💎 Upgrade your tier or wait for your monthly "
        "XP refresh to continue creating. 🎯 Recommended: Arcade Artist (A$20/month) gives you "
        "800 XP monthly!",
        "subscription_url": "/subscriptions",
        "recommended_tier": ARCADE,
        "code": "insufficient_xp",
        "detail": "Insufficient credits. Need 12 XP, have 5 XP (7 XP short).",  # = message
        "xp_balance": 5,
        "xp_required": 12,
        "xp_deficit": 7,
    }


async def test_tier_required(client: httpx2.AsyncClient, redis_client: redis.Redis) -> None:
    await subscribe(client, "u1", "pixel_rookie")
    response = await debit(client, "u1", "NEW_VIDEO")
    assert response.status_code == 403
    body = response.json()
    assert body["error"] == body["code"] == "tier_required"
    assert body["recommended_tier"] == ARCADE
    assert body["message"] == "NEW_VIDEO is not included in Pixel Rookie."
    assert body["subscription_url"] == "/subscriptions"
    assert body["guidance"].startswith("🔒 NEW_VIDEO is not included in Pixel Rookie.")
    assert (await balance(client, "u1"))["xp_balance"] == 600
    assert [k for k, _, _ in kinds(redis_client, "u1")] == ["xp_subscription", "xp_allocation"]


async def test_no_subscription_is_tier_required_even_with_top_ups(
    client: httpx2.AsyncClient,
) -> None:
    await grant(client, "u1", 100)
    response = await debit(client, "u1", "EDIT_IMAGE")
    assert response.status_code == 403
    body = response.json()
    assert body["error"] == "tier_required"
    assert body["recommended_tier"]["tier_name"] == "pixel_rookie"
    assert body["message"] == "No active subscription. A subscription is needed for EDIT_IMAGE."
    assert (await balance(client, "u1"))["xp_balance"] == 100


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"generation_type": "NEW_HOLOGRAM"}, 404, "known types: NEW_IMAGE"),
        ({"generation_type": ""}, 422, "length >= 1"),
        ({}, 422, "generation_type"),
        ({"generation_type": "NEW_IMAGE", "xp": 1}, 422, "xp"),
        ([], 422, "Expected `object`"),
    ],
)
async def test_bad_input_changes_nothing(
    client: httpx2.AsyncClient,
    redis_client: redis.Redis,
    body: object,
    status: int,
    fragment: str,
) -> None:
    await subscribe(client, "u1", "pixel_rookie")
    before = kinds(redis_client, "u1")
    response = await client.post("/api/v1/xp/debit", json=body, headers=user_headers("u1"))
    assert response.status_code == status
    assert fragment in response.json()["detail"]
    assert kinds(redis_client, "u1") == before
    assert (await balance(client, "u1"))["xp_balance"] == 600


async def test_malformed_body_and_no_credentials(client: httpx2.AsyncClient) -> None:
    response = await client.post("/api/v1/xp/debit", content=b"{nope", headers=user_headers("u1"))
    assert response.status_code == 400
    assert (await client.post("/api/v1/xp/debit", json={"generation_type": "X"})).status_code == 401


async def test_idempotent_replay_and_key_reuse(
    client: httpx2.AsyncClient, redis_client: redis.Redis
) -> None:
    await subscribe(client, "u1", "pixel_rookie")
    first = await debit(client, "u1", "NEW_IMAGE", **{"Idempotency-Key": "k1"})
    again = await debit(client, "u1", "NEW_IMAGE", **{"Idempotency-Key": "k1"})
    assert again.status_code == 200
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert (await balance(client, "u1"))["xp_balance"] == 588
    other = await debit(client, "u1", "EDIT_IMAGE", **{"Idempotency-Key": "k1"})
    assert other.status_code == 422
    assert "different request" in other.json()["detail"]
    assert [k for k, _, _ in kinds(redis_client, "u1")].count("xp_debit") == 1


async def test_a_refusal_is_replayed_as_a_refusal(client: httpx2.AsyncClient) -> None:
    await subscribe(client, "u1", "pixel_rookie")
    refused = await debit(client, "u1", "NEW_VIDEO", **{"Idempotency-Key": "k2"})
    await subscribe(client, "u1", "arcade_artist")
    again = await debit(client, "u1", "NEW_VIDEO", **{"Idempotency-Key": "k2"})
    assert (refused.status_code, again.status_code) == (403, 403)
    assert again.json() == refused.json()
    assert (await debit(client, "u1", "NEW_VIDEO")).status_code == 200


async def test_a_service_key_debits_for_the_user_it_names(client: httpx2.AsyncClient) -> None:
    await subscribe(client, "u1", "pixel_rookie")
    response = await client.post(
        "/api/v1/xp/debit", json={"generation_type": "EDIT_IMAGE"}, headers=service_headers("u1")
    )
    assert response.json()["xp_balance"] == 591
    forged = await client.post(
        "/api/v1/xp/debit",
        json={"generation_type": "EDIT_IMAGE"},
        headers=user_headers("u2", **{"X-User-Id": "u1"}),
    )
    assert forged.status_code == 403


async def test_burn_order_soonest_expiring_first_never_expiring_last(
    client: httpx2.AsyncClient, clock: ManualClock
) -> None:
    await subscribe(client, "u1", "pixel_rookie")  # allocation expires at NOON + 30 days
    never = (await grant(client, "u1", 20))["grant_id"]
    late = (await grant(client, "u1", 20, NOON + 40 * DAY))["grant_id"]
    ten = (await grant(client, "u1", 20, NOON + 10 * DAY))["grant_id"]
    await grant(client, "u1", 5, NOON + 5 * DAY)  # burns first, then is gone

    def left(view: dict[str, object]) -> dict[str, int]:
        topups = view["topups"]
        assert isinstance(topups, list)
        return {t["grant_id"]: t["xp_left"] for t in topups}

    await debit(client, "u1", "EDIT_IMAGE")  # 9: the 5 expiring first, then 4 of the 10-day one
    view = await balance(client, "u1")
    assert left(view) == {never: 20, late: 20, ten: 16}
    assert view["xp_allocation"] == 600
    await spend_to(client, "u1", "EDIT_IMAGE", 69)  # 630 in all: 25 top-up, 600 allocation, 5
    view = await balance(client, "u1")
    assert view["xp_allocation"] == 0
    assert left(view) == {never: 20, late: 15}
    await debit(client, "u1", "EDIT_IMAGE")
    await debit(client, "u1", "EDIT_IMAGE")
    assert left(await balance(client, "u1")) == {never: 17}


async def test_an_allocation_expiring_with_a_top_up_burns_first(
    client: httpx2.AsyncClient,
) -> None:
    await subscribe(client, "u1", "pixel_rookie")
    same = (await grant(client, "u1", 10, NOON + 30 * DAY))["grant_id"]  # the period's end
    await debit(client, "u1", "EDIT_IMAGE")
    view = await balance(client, "u1")
    assert view["xp_allocation"] == 591
    assert view["topups"] == [
        {"grant_id": same, "xp_left": 10, "expires_at": "2026-12-21T12:00:00Z"}
    ]


def test_the_charge_call_names_every_argument(settings: Settings, clock: ManualClock) -> None:
    """The hot path builds DebitXp positionally (for speed): every field gets its own value."""
    svc = Services.build(settings, clock=clock)
    idem = Idempotency.of("service:0", "key-1", "POST /api/v1/xp/debit u1", b"{}")
    assert idem is not None
    call = svc.xp.charge_call("u1", "service:0", "NEW_IMAGE", True, idem)
    fields = msgspec.structs.asdict(call)
    transaction_id = fields.pop("transaction_id")
    assert transaction_id.startswith("xhs_") and len(transaction_id) == 4 + 24
    assert fields == {
        "user_id": "u1", "now_ms": int(NOON * 1000), "fingerprint": idem.fingerprint,
        "idem_ttl": settings.idempotency_ttl_seconds, "idem_key": "key-1", "actor": "service:0",
        "may_create": "1", "rules": svc.rules_version, "generation_type": "NEW_IMAGE",
        "mode": "hold",
        "hold_expires_at": int(NOON) + svc.xp.hold_ttl,
        "max_holds": svc.xp.rules.max_active_holds, "record_ttl": TRANSACTION_TTL,
    }  # fmt: skip
    debit_call = svc.xp.charge_call("u1", "user:u1", "NEW_IMAGE", False, None)
    assert debit_call.transaction_id.startswith("xd_") and debit_call.mode == "debit"
    assert (debit_call.fingerprint, debit_call.idem_key) == ("", "")
    assert debit_call.transaction_id != call.transaction_id
    with pytest.raises(NotFound, match="Unknown generation type 'NOPE'"):
        svc.xp.charge_call("u1", "user:u1", "NOPE", False, None)


@pytest.mark.parametrize("route", ["/api/v1/xp/debit", "/api/v1/xp/holds"])
async def test_the_event_the_hash_and_the_reply_carry_one_state(
    client: httpx2.AsyncClient, redis_client: redis.Redis, route: str
) -> None:
    """debit_xp.lua encodes the state once, for the event, and finishes with that text: the
    event's xp_state, the user hash's xp and the balance answered must all be the same state."""
    await subscribe(client, "u1", "pixel_rookie")
    await grant(client, "u1", 50)
    response = await client.post(
        route, json={"generation_type": "NEW_IMAGE"}, headers=user_headers("u1")
    )
    assert response.status_code in (200, 201)
    stored = redis_client.hget(UserKeys.of("u1", BUCKETS).user, "xp")
    event = events(redis_client, "u1")[-1]
    assert event["kind"] == ("xp_debit" if route.endswith("debit") else "xp_hold")
    assert event["xp_state"] == stored
    state = json.loads(stored)
    assert response.json()["xp_balance"] == state["alloc"] + sum(g["left"] for g in state["grants"])
