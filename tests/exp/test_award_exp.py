"""lua/award_exp.lua through POST /api/exp/gain: limits, caps, partial awards, levels, midnight."""

from __future__ import annotations

import time

import httpx2
import msgspec
import pytest
import redis

from api.routes.exp import award_reply
from counters.clock import ManualClock, next_utc_midnight
from counters.exp.entities import Target
from counters.exp.types import AwardResult
from counters.redis.codes import AwardOutcome
from counters.redis.keys import UserKeys
from counters.runtime.services import Services
from counters.settings import Settings
from persistence.events import expand
from tests.support.core import NOON, data_keys, service_headers, user_headers

pytestmark = pytest.mark.anyio

MIDNIGHT = NOON + 12 * 3600  # 2026-11-22 00:00:00 UTC


async def gain(http: httpx2.AsyncClient, user: str, action: str, **body: object) -> httpx2.Response:
    return await http.post(
        "/api/exp/gain", json={"action": action, **body}, headers=user_headers(user)
    )


async def adjust(http: httpx2.AsyncClient, user: str, delta: int) -> httpx2.Response:
    body = {"user_id": user, "delta": delta, "reason": "test setup"}
    return await http.post("/api/admin/exp/adjust", json=body, headers=service_headers())


@pytest.mark.parametrize("action", ["create_character", "create_scene", "create_persona"])
async def test_limit_minus_one_limit_and_limit_plus_one(
    client: httpx2.AsyncClient, action: str
) -> None:
    first = await gain(client, "u1", action)
    second = await gain(client, "u1", action)
    third = await gain(client, "u1", action)
    assert (first.status_code, second.status_code) == (200, 200)
    assert (first.json()["action_count"], second.json()["action_count"]) == (1, 2)
    assert second.json()["action_limit"] == 2
    assert third.status_code == 429
    assert third.json() == {
        "detail": f"Daily limit reached for {action} (2/day)",
        "code": "daily_limit_reached",
        "action": action,
        "action_limit": 2,
        "retry_after": 12 * 3600,  # the clock stands at noon UTC
    }
    assert third.headers["Retry-After"] == str(12 * 3600)
    limits = (await client.get("/api/exp/limits", headers=user_headers("u1"))).json()
    assert limits["daily_action_counts"] == {action: 2}
    assert limits["daily_exp_gained"] == second.json()["daily_exp_gained"]


async def test_the_seed_success_body(client: httpx2.AsyncClient) -> None:
    await adjust(client, "u1", 100)
    response = await gain(client, "u1", "create_character")
    assert response.status_code == 200
    body = response.json()
    assert body.pop("unlocked_features") == []  # an addition (issue #14); the rest is the seed's
    assert body == {
        "awarded_to": "u1",
        "action": "create_character",
        "success": True,
        "exp_added": 30,
        "total_exp": 130,
        "level": 2,
        "leveled_up": False,
        "daily_exp_gained": 30,
        "daily_exp_cap": 150,
        "action_count": 1,
        "action_limit": 2,
        "progress": {
            "current_level": 2,
            "level_name": "Creator",
            "total_exp": 130,
            "current_level_exp": 30,
            "exp_needed_for_next": 200,
            "exp_to_next_level": 170,
            "progress_percentage": 15.0,
            "is_max_level": False,
        },
    }


async def test_level_up_is_reported_once(client: httpx2.AsyncClient) -> None:
    await adjust(client, "u1", 80)
    up = (await gain(client, "u1", "daily_chat")).json()
    assert (up["total_exp"], up["level"], up["leveled_up"]) == (100, 2, True)
    after = (await gain(client, "u1", "create_scene")).json()
    assert (after["level"], after["leveled_up"]) == (2, False)


async def test_cap_minus_one_cap_and_cap_plus_one_with_the_partial_award(
    client: httpx2.AsyncClient,
) -> None:
    # forked has no daily limit: 14 forks reach 140 of the 150 cap.
    await client.put(
        "/api/entities/character/c1", json={"owner_id": "creator"}, headers=service_headers()
    )
    for n in range(14):
        assert (
            await gain(client, f"fan{n}", "forked", target_type="character", target_id="c1")
        ).status_code == 200
    usage = (await client.get("/api/exp/limits", headers=user_headers("creator"))).json()
    assert (usage["daily_exp_gained"], usage["remaining_exp"]) == (140, 10)
    # cap - 1 would be a 9-EXP award; here the 15th fork (10 EXP) lands exactly on the cap.
    at_cap = (await gain(client, "fan14", "forked", target_type="character", target_id="c1")).json()
    assert (at_cap["exp_added"], at_cap["daily_exp_gained"]) == (10, 150)
    over = await gain(client, "fan15", "forked", target_type="character", target_id="c1")
    assert over.status_code == 429
    assert over.json() == {
        "detail": "Daily EXP cap reached (150 EXP/day for level 2)",
        "code": "daily_cap_reached",
        "daily_exp_cap": 150,
        "level": 2,
        "retry_after": 12 * 3600,
    }


async def test_service_only_action_and_the_cap_on_a_creator(client: httpx2.AsyncClient) -> None:
    await client.put(
        "/api/entities/character/c1", json={"owner_id": "cr"}, headers=service_headers()
    )
    sale = {"action": "paid_char_sold", "target_type": "character", "target_id": "c1"}
    by_user = await client.post("/api/exp/gain", json=sale, headers=user_headers("buyer"))
    assert by_user.status_code == 403
    assert by_user.json() == {
        "detail": "paid_char_sold may only be triggered by a service",
        "code": "forbidden",
    }
    statuses = [
        (
            await client.post("/api/exp/gain", json=sale, headers=service_headers(f"b{n}"))
        ).status_code
        for n in range(4)
    ]
    assert statuses == [200, 200, 200, 429]  # 3 x 50 = the 150 cap of level 1-2
    gained = (await client.get("/api/exp/limits", headers=user_headers("cr"))).json()
    assert gained["daily_exp_gained"] == 150
    assert gained["daily_action_counts"] == {"paid_char_sold": 3}


async def test_partial_award_cut_to_what_reaches_the_cap(client: httpx2.AsyncClient) -> None:
    # 2 characters (60) + 2 scenes (30) + 2 personas (30) + chat (20) + a like (5) = 145:
    # a 10-EXP fork is then cut to the 5 that reach the cap, and the next one is refused.
    await client.put(
        "/api/entities/character/c9", json={"owner_id": "u1"}, headers=service_headers()
    )
    for action in ["create_character"] * 2 + ["create_scene"] * 2 + ["create_persona"] * 2:
        assert (await gain(client, "u1", action)).status_code == 200
    assert (await gain(client, "u1", "daily_chat")).json()["daily_exp_gained"] == 140
    liked = (
        await gain(client, "fan", "character_liked", target_type="character", target_id="c9")
    ).json()
    assert liked["daily_exp_gained"] == 145
    await client.put("/api/entities/scene/s9", json={"owner_id": "u1"}, headers=service_headers())
    partial = (await gain(client, "fan", "forked", target_type="scene", target_id="s9")).json()
    assert (partial["exp_added"], partial["daily_exp_gained"], partial["total_exp"]) == (
        5,
        150,
        150,
    )
    refused = await gain(client, "fan2", "forked", target_type="scene", target_id="s9")
    assert refused.status_code == 429
    assert refused.json()["detail"] == "Daily EXP cap reached (150 EXP/day for level 2)"


async def test_the_cap_follows_the_level_held_when_awarding(client: httpx2.AsyncClient) -> None:
    await adjust(client, "u1", 290)  # level 2 (cap 150)
    await client.put(
        "/api/entities/character/c1", json={"owner_id": "u1"}, headers=service_headers()
    )
    sale = await client.post(
        "/api/exp/gain",
        json={"action": "paid_char_sold", "target_type": "character", "target_id": "c1"},
        headers=service_headers("buyer"),
    )  # fmt: skip
    body = sale.json()
    assert (body["total_exp"], body["level"], body["leveled_up"]) == (340, 3, True)
    assert body["daily_exp_cap"] == 300  # the new level's cap applies from now on


async def test_max_level(client: httpx2.AsyncClient) -> None:
    await adjust(client, "u1", 1490)
    body = (await gain(client, "u1", "daily_chat")).json()
    assert (body["level"], body["leveled_up"], body["daily_exp_cap"]) == (6, True, 500)
    assert body["progress"]["is_max_level"] is True
    assert body["progress"]["level_name"] == "Master"


async def test_midnight_utc_one_second_before_and_after(
    client: httpx2.AsyncClient, clock: ManualClock, redis_client: redis.Redis
) -> None:
    clock.at = MIDNIGHT - 1
    assert (await gain(client, "u1", "daily_chat")).status_code == 200
    assert (await gain(client, "u1", "daily_chat")).status_code == 429
    day_keys = redis_client.keys("*:day:20261121:u1")
    assert len(day_keys) == 1
    # The key's clean-up is the next midnight plus the grace (jitter is 0 in tests), counted
    # from the service's clock: a TTL, whatever Redis's own clock says.
    assert 3600 < redis_client.ttl(day_keys[0]) <= 3601
    clock.at = MIDNIGHT
    again = await gain(client, "u1", "daily_chat")
    assert again.status_code == 200
    assert (again.json()["action_count"], again.json()["daily_exp_gained"]) == (1, 20)
    assert again.json()["total_exp"] == 40
    assert redis_client.keys("*:day:20261122:u1")


async def test_429_says_when_to_retry(client: httpx2.AsyncClient, clock: ManualClock) -> None:
    clock.at = MIDNIGHT - 90
    await gain(client, "u1", "daily_chat")
    refused = await gain(client, "u1", "daily_chat")
    assert refused.headers["retry-after"] == "90"


async def test_a_refused_award_changes_nothing(
    client: httpx2.AsyncClient, redis_client: redis.Redis
) -> None:
    await gain(client, "u1", "daily_chat")
    before = {key: redis_client.dump(key) for key in redis_client.keys("*")}
    assert (await gain(client, "u1", "daily_chat")).status_code == 429
    after = {key: redis_client.dump(key) for key in redis_client.keys("*")}
    assert after == before


async def test_every_key_of_one_user_shares_one_hash_tag(
    client: httpx2.AsyncClient, redis_client: redis.Redis
) -> None:
    await gain(client, "u1", "create_character", target_type="character", target_id="c1")
    await gain(client, "u2", "character_liked", target_type="character", target_id="c1")
    keys = [k for k in data_keys(redis_client) if ":entity:" not in k]
    tags = {key[key.index("{") : key.index("}") + 1] for key in keys}
    assert len(tags) == 1, keys


async def test_every_award_is_an_event(
    client: httpx2.AsyncClient, redis_client: redis.Redis, clock: ManualClock
) -> None:
    await gain(client, "u1", "daily_chat")
    await gain(client, "u1", "create_scene", target_type="scene", target_id="s1")
    await gain(client, "u1", "daily_chat")  # refused: no event
    streams = redis_client.keys("*:events")
    assert len(streams) == 1
    events = [expand(fields) for _, fields in redis_client.xrange(streams[0])]
    assert [e["event_id"] for e in events] == ["u1:1", "u1:2"]
    runs = {e.pop("run") for e in events}  # the bucket's Redis incarnation (persistence/runs.py)
    assert len(runs) == 1 and runs.pop().isdigit()
    assert events[1] == {
        "event_id": "u1:2", "user": "u1", "seq": "2", "ts": str(int(NOON * 1000)),
        "kind": "exp_award", "action": "create_scene", "amount": "15", "actor": "u1",
        "target": "scene:s1", "day": "20261121", "idem": "", "exp": "35", "level": "1",
    }  # fmt: skip


async def test_a_service_clock_behind_redis_still_counts_the_day(
    client: httpx2.AsyncClient, clock: ManualClock, redis_client: redis.Redis
) -> None:
    # Three days behind Redis's clock (COUNTERS_CLOCK_OFFSET_SECONDS, skew, a test's clock): the
    # day key's clean-up is counted from the service's now, so the key is not deleted at once.
    clock.at = time.time() - 3 * 86_400
    first = await gain(client, "u1", "create_scene")
    second = await gain(client, "u1", "create_scene")
    assert (first.json()["action_count"], second.json()["action_count"]) == (1, 2)
    assert (await gain(client, "u1", "create_scene")).status_code == 429
    (day_key,) = redis_client.keys("*:day:*:u1")
    assert 0 < redis_client.ttl(day_key) <= 86_400 + 3600


def test_the_award_call_names_every_argument(settings: Settings, clock: ManualClock) -> None:
    """The hot path builds AwardExp positionally (for speed): every field gets its own value."""
    svc = Services.build(settings, clock=clock)
    action = svc.exp.action("character_liked")
    target = Target("character", "c9")
    user = UserKeys.of("owner", settings.key_buckets)
    record = user.award_record("rid-1")
    call = svc.exp.award_call(
        "character_liked", action, "owner", "fan", target, record, "f" * 32, "key-1"
    )
    window = svc.exp.window("owner", clock.now())
    assert msgspec.structs.asdict(call.keys) == {
        "user": user.user, "today": user.day(window.day), "events": user.events,
        "record": record, "day_board": user.board("day:20261121"),
        "week_board": user.board("week:2026W47"), "all_board": user.board("all"), "meta": user.meta,
    }  # fmt: skip
    assert msgspec.structs.asdict(call.call) == {
        "user_id": "owner", "action": "character_liked", "reward": action.exp,
        "daily_limit": action.daily_limit, "rules": svc.rules_version,
        "day": window.day, "day_ttl": window.ttl,
        "now_ms": int(clock.now() * 1000), "fingerprint": "f" * 32,
        "idem_ttl": settings.idempotency_ttl_seconds, "actor": "fan", "may_create": "1",
        "target": "character:c9", "idem_key": "key-1",
        "week_ttl": 36 * 3600 + settings.day_grace_seconds,  # Saturday noon to Monday 00:00
    }  # fmt: skip


def test_the_award_result_names_every_field(settings: Settings, clock: ManualClock) -> None:
    """award_result builds AwardResult positionally (for speed): every field gets its value."""
    svc = Services.build(settings, clock=clock)
    action = svc.exp.action("character_liked")
    target = Target("character", "c9")
    record = UserKeys.of("owner", settings.key_buckets).award_record("rid-1")
    call = svc.exp.award_call("character_liked", action, "owner", "fan", target, record, "", "")
    # code, added, total, level, previous, gained, count, seq, replayed (the record's time)
    result = svc.exp.award_result(call, [1, 10, 110, 2, 1, 30, 2, 9, 1_795_262_400_000])
    assert msgspec.structs.asdict(result) == {
        "outcome": 1, "awarded_to": "owner", "action": "character_liked", "exp_added": 10,
        "total_exp": 110, "level": 2, "previous_level": 1, "daily_exp_gained": 30,
        "daily_exp_cap": svc.exp.rules.cap_for(2), "action_count": 2,
        "action_limit": action.daily_limit, "actor": "fan", "target": target, "replayed": True,
        "shadow_refused": None, "decided_ms": 1_795_262_400_000,
    }  # fmt: skip


@pytest.mark.parametrize("outcome", [AwardOutcome.LIMIT_REACHED, AwardOutcome.CAP_REACHED])
def test_a_refusal_counted_before_midnight_and_answered_after_it_says_retry_now(
    settings: Settings, clock: ManualClock, outcome: AwardOutcome
) -> None:
    """retry_after counts to the midnight after the request was sent, not after the reply was
    built: a limit counted at 23:59:59.9999 and answered at 00:00:00.0002 has already reset
    (attack3, session 7: it said Retry-After 86400). Counted and answered on one day, it counts
    the seconds to that day's end."""
    svc = Services.build(settings, clock=clock)
    midnight = next_utc_midnight(NOON)
    result = AwardResult(
        outcome, "u1", "daily_chat", 0, 20, 1, 1, 150, 150, 1, 1, "u1", None, False
    )  # fmt: skip
    clock.at = midnight + 0.0002
    status, body, headers = award_reply(svc, result, midnight - 0.0001)
    assert (status, headers, body["retry_after"]) == (429, {"Retry-After": "1"}, 1)
    clock.at = NOON + 0.5
    status, body, headers = award_reply(svc, result, NOON)
    assert (status, headers, body["retry_after"]) == (429, {"Retry-After": "43200"}, 43200)


async def test_a_429_replayed_after_midnight_reports_the_wait_of_the_limit_that_refused_it(
    client: httpx2.AsyncClient, clock: ManualClock, redis_client: redis.Redis
) -> None:
    """A repeat returns the first response, and that response's wait is its limit's: to the
    midnight after the first request. Counted from the replay, a 429 at 23:59:59 replayed at
    00:00:03 said 86396 while a new request succeeded at once (reviewer helper-66)."""
    keyed = service_headers("u1", **{"Idempotency-Key": "chat-1"})
    clock.at = MIDNIGHT - 1
    assert (await gain(client, "u1", "daily_chat")).status_code == 200
    first = await client.post("/api/exp/gain", json={"action": "daily_chat"}, headers=keyed)
    assert (first.status_code, first.json()["retry_after"], first.headers["Retry-After"]) == (
        429, 1, "1",
    )  # fmt: skip
    clock.at = MIDNIGHT - 0.5  # the same day: the same wait
    same_day = await client.post("/api/exp/gain", json={"action": "daily_chat"}, headers=keyed)
    assert same_day.json() == first.json() and same_day.headers["Retry-After"] == "1"
    clock.at = MIDNIGHT + 3
    replay = await client.post("/api/exp/gain", json={"action": "daily_chat"}, headers=keyed)
    assert replay.status_code == 429 and replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json() == {**first.json(), "retry_after": 0}
    assert replay.headers["Retry-After"] == "0"  # retry now (RFC 9110 allows 0)
    assert (await gain(client, "u1", "daily_chat")).status_code == 200  # the limit reset
    # A record written before records kept their time (its replayed slot 0) still replays,
    # its wait counted from the replay, as before.
    [record] = redis_client.keys("*:idem:*")
    fingerprint, _, reply = str(redis_client.get(record)).partition("|")
    old = msgspec.json.decode(reply)
    assert old[8] == int((MIDNIGHT - 1) * 1000)
    old_format = f"{fingerprint}|{msgspec.json.encode([*old[:8], 0]).decode()}"
    redis_client.set(record, old_format, keepttl=True)
    again = await client.post("/api/exp/gain", json={"action": "daily_chat"}, headers=keyed)
    assert again.status_code == 429 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == {**first.json(), "retry_after": 86_400 - 3}
