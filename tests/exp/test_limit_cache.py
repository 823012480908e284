"""Refusals held locally (counters/exp/service.py's module docstring, issue #15): a worker that
has seen Redis refuse a user's unkeyed self-award at its daily limit answers the rest of the
day's repeats itself, with the same 429, and nothing else changes.

Every test runs on the suite's real Redis and counts the script calls Redis saw, so a held
refusal is shown to skip Redis, and everything that must still ask Redis is shown to ask it.
Two apps on one Redis stand for two workers: the answer may not depend on which one is asked.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import httpx2
import pytest
import redis
from prometheus_client import REGISTRY

from api.app import create_app
from counters import metrics
from counters.clock import ManualClock
from counters.exp.service import ExpService
from counters.rules import load_rules
from counters.settings import Settings
from tests.exp.test_creator_shortcut import evalsha_calls, state
from tests.exp.test_cross_identity import Layout, pick
from tests.support.core import NOON, service_headers
from tests.support.http import asgi_client
from tests.support.rules import DAILY_CHAT, LOW_CAP, write_rules

pytestmark = pytest.mark.anyio

GAIN = "/api/exp/gain"
CHAT = {"action": "daily_chat"}  # 1 a day in the shipped rules
SCENE = {"action": "create_scene"}  # 2 a day


async def gain(
    http: httpx2.AsyncClient, user: str, body: dict[str, str], **headers: str
) -> httpx2.Response:
    """``user``'s award, sent with the service key."""
    return await http.post(GAIN, json=body, headers=service_headers(user, **headers))


def limit_refusals(action: str) -> float:
    metrics.flush()
    sample = REGISTRY.get_sample_value(
        "counters_exp_awards_total", {"action": action, "outcome": "limit"}
    )
    return sample or 0.0


async def test_a_repeat_past_the_daily_limit_is_refused_without_redis_and_alike(
    settings: Settings, clock: ManualClock, redis_client: redis.Redis
) -> None:
    redis_client.flushall()
    app = create_app(settings, clock=clock)
    async with app.router.lifespan_context(app), asgi_client(app) as http:
        assert (await gain(http, "u1", CHAT)).status_code == 200
        first = await gain(http, "u1", CHAT)  # Redis refuses it, and the worker keeps that
        assert first.status_code == 429
        calls, counted = evalsha_calls(redis_client), limit_refusals("daily_chat")
        before = state(redis_client)
        repeats = [await gain(http, "u1", CHAT) for _ in range(5)]
        assert evalsha_calls(redis_client) == calls  # not one script call
        for repeat in repeats:
            assert repeat.status_code == 429
            assert repeat.json() == first.json()
            assert repeat.headers["retry-after"] == first.headers["retry-after"]
            assert repeat.json()["code"] == "daily_limit_reached"
        assert limit_refusals("daily_chat") == counted + 5  # counted as Redis's refusals are
        assert state(redis_client) == before


async def test_two_workers_answer_alike_and_other_users_and_actions_still_ask(
    settings: Settings, clock: ManualClock, redis_client: redis.Redis
) -> None:
    """The worker that holds the refusal and one that does not give the same answer; a user in
    the same bucket, and the same user's other action, are not refused by it."""
    for kind in ("same", "different"):
        redis_client.flushall()
        a, b = pick(Layout(kind, settings.key_buckets), "a", "b")
        one, two = create_app(settings, clock=clock), create_app(settings, clock=clock)
        async with (
            one.router.lifespan_context(one),
            two.router.lifespan_context(two),
            asgi_client(one) as first,
            asgi_client(two) as second,
        ):
            assert (await gain(first, a, CHAT)).status_code == 200
            held = await gain(first, a, CHAT)
            calls = evalsha_calls(redis_client)
            asked = await gain(second, a, CHAT)  # the second worker asks Redis
            assert evalsha_calls(redis_client) == calls + 1
            assert (asked.status_code, asked.json()) == (held.status_code, held.json())
            again = await gain(first, a, CHAT)  # the first still answers itself
            assert evalsha_calls(redis_client) == calls + 1
            assert (again.status_code, again.json()) == (held.status_code, held.json())
            other = await gain(first, b, CHAT)  # b's own limit, b's own answer
            assert other.status_code == 200, (kind, other.json())
            scene = await gain(first, a, SCENE)
            assert scene.status_code == 200, (kind, scene.json())
            assert evalsha_calls(redis_client) == calls + 3


async def test_a_keyed_request_still_asks_redis_and_replays_its_first_answer(
    settings: Settings, clock: ManualClock, redis_client: redis.Redis
) -> None:
    """A key's record may hold an earlier 200: a keyed request is never answered from the held
    refusal, and a new key past the limit gets Redis's own 429 (and its record)."""
    redis_client.flushall()
    app = create_app(settings, clock=clock)
    async with app.router.lifespan_context(app), asgi_client(app) as http:
        awarded = await gain(http, "u1", CHAT, **{"Idempotency-Key": "k-1"})
        assert awarded.status_code == 200
        assert (await gain(http, "u1", CHAT)).status_code == 429  # now held
        calls = evalsha_calls(redis_client)
        replay = await gain(http, "u1", CHAT, **{"Idempotency-Key": "k-1"})
        assert replay.status_code == 200
        assert replay.json() == awarded.json()
        assert replay.headers.get("idempotent-replayed") == "true"
        fresh = await gain(http, "u1", CHAT, **{"Idempotency-Key": "k-2"})
        assert fresh.status_code == 429
        assert evalsha_calls(redis_client) == calls + 2


async def test_midnight_a_raised_limit_and_shadow_mode_end_a_held_refusal(
    settings: Settings, clock: ManualClock, redis_client: redis.Redis, tmp_path: Path
) -> None:
    redis_client.flushall()
    rules = write_rules(tmp_path / "rules.toml")
    app = create_app(replace(settings, rules=rules), clock=clock)
    async with app.router.lifespan_context(app), asgi_client(app) as http:
        for user in ("u1", "u2"):
            assert (await gain(http, user, CHAT)).status_code == 200
            assert (await gain(http, user, CHAT)).status_code == 429
        # A reload that raises the limit to 2: the held count (1) is under it, so Redis is
        # asked and awards the second chat, then refuses (and the worker holds) the third.
        write_rules(rules, (DAILY_CHAT, DAILY_CHAT.replace("limit = 1", "limit = 2")))
        assert app.state.rules_reloader.reload() == "ok"
        assert (await gain(http, "u1", CHAT)).status_code == 200
        assert (await gain(http, "u1", CHAT)).status_code == 429
        # Shadow mode: the limit is reported, never enforced; a held refusal may not stand.
        write_rules(rules, (DAILY_CHAT, DAILY_CHAT + "shadow = true\n"))
        assert app.state.rules_reloader.reload() == "ok"
        shadowed = await gain(http, "u2", CHAT)
        assert shadowed.status_code == 200, shadowed.json()
        write_rules(rules)
        assert app.state.rules_reloader.reload() == "ok"
        assert (await gain(http, "u1", CHAT)).status_code == 429
        clock.advance(86_400)  # the next UTC day: a new limit, nothing held
        assert (await gain(http, "u1", CHAT)).status_code == 200


async def test_a_refusal_for_the_cap_is_not_held(
    settings: Settings, clock: ManualClock, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """A level-up raises the daily cap, so a refusal for the cap may not stand: only limits
    are held."""
    redis_client.flushall()
    rules = write_rules(tmp_path / "rules.toml", (LOW_CAP, LOW_CAP.replace("150", "40")))
    app = create_app(replace(settings, rules=rules), clock=clock)
    async with app.router.lifespan_context(app), asgi_client(app) as http:
        assert (await gain(http, "u1", CHAT)).status_code == 200  # 20 of 40
        assert (await gain(http, "u1", {"action": "create_character"})).json()["exp_added"] == 20
        capped = await gain(http, "u1", SCENE)
        assert (capped.status_code, capped.json()["code"]) == (429, "daily_cap_reached")
        adjusted = await http.post(
            "/api/admin/exp/adjust",
            json={"user_id": "u1", "delta": 300, "reason": "support"},
            headers=service_headers(),
        )
        assert adjusted.json()["level"] == 3  # the cap is 300 now
        assert (await gain(http, "u1", SCENE)).status_code == 200


async def test_held_refusals_are_bounded(
    settings: Settings, clock: ManualClock, redis_client: redis.Redis
) -> None:
    """At most ``limit_cache_entries`` pairs a worker, the oldest dropped first; 0 holds none."""
    redis_client.flushall()
    app = create_app(replace(settings, limit_cache_entries=2), clock=clock)
    async with app.router.lifespan_context(app), asgi_client(app) as http:
        for user in ("u1", "u2", "u3"):
            await gain(http, user, CHAT)
            assert (await gain(http, user, CHAT)).status_code == 429  # held; u1 dropped at u3
        calls = evalsha_calls(redis_client)
        for user in ("u2", "u3"):
            assert (await gain(http, user, CHAT)).status_code == 429
        assert evalsha_calls(redis_client) == calls
        assert (await gain(http, "u1", CHAT)).status_code == 429
        assert evalsha_calls(redis_client) == calls + 1
    off = create_app(replace(settings, limit_cache_entries=0), clock=clock)
    async with off.router.lifespan_context(off), asgi_client(off) as http:
        calls = evalsha_calls(redis_client)
        for _ in range(3):
            assert (await gain(http, "u1", CHAT)).status_code == 429
        assert evalsha_calls(redis_client) == calls + 3


async def test_a_worker_that_held_a_refusal_keeps_the_limit_after_redis_forgets_the_day(
    settings: Settings, clock: ManualClock, redis_client: redis.Redis
) -> None:
    """Redis losing today's counts (here: the day hash deleted, as an eviction would) does not
    give the user a second daily chat from a worker that saw the limit reached."""
    redis_client.flushall()
    app = create_app(settings, clock=clock)
    async with app.router.lifespan_context(app), asgi_client(app) as http:
        assert (await gain(http, "u1", CHAT)).status_code == 200
        assert (await gain(http, "u1", CHAT)).status_code == 429
        for key in redis_client.scan_iter("ctr:*:day:*u1"):
            redis_client.delete(key)
        assert (await gain(http, "u1", CHAT)).status_code == 429


REFUSAL = [2, 0, 20, 1, 1, 20, 1, 1, 0]  # award_exp's code 2: limit_reached, count 1


def test_the_oldest_is_dropped_first_and_a_refreshed_hold_does_not_shrink_the_cache() -> None:
    """A pair held again (a raised limit asked Redis, which refused again) takes the newer
    reply and becomes the newest; holding it drops nobody else (helper-54's attack: it used to
    drop the oldest other pair and keep its old place, so it went next)."""
    rules = load_rules()
    svc = ExpService(
        rules.exp, "test", None, SimpleNamespace(), None, ManualClock(NOON),  # type: ignore[arg-type]
        buckets=16, idempotency_ttl=60, day_grace=3_600, day_jitter=0, limit_cache_entries=3,
    )  # fmt: skip
    today = svc._day_of(NOON)
    for user in ("u1", "u2", "u3"):
        svc._hold_refusal(today, user, "daily_chat", REFUSAL)
    svc._hold_refusal(today, "u2", "daily_chat", [2, 0, 20, 1, 1, 20, 2, 1, 0])
    assert set(today.refused) == {("u1", "daily_chat"), ("u2", "daily_chat"), ("u3", "daily_chat")}
    assert today.refused[("u2", "daily_chat")][6] == 2  # the newer reply
    svc._hold_refusal(today, "u4", "daily_chat", REFUSAL)  # drops u1, the oldest
    svc._hold_refusal(today, "u5", "daily_chat", REFUSAL)  # then u3: u2 was held again after it
    assert set(today.refused) == {("u2", "daily_chat"), ("u4", "daily_chat"), ("u5", "daily_chat")}
