"""Review of 6e1ef5a (helper-56): a request that completes a competitor's pending like refused
at the owner's limit answers that refusal. The refusal is the competitor's: its owner (the
entry's, not the entity's now) and its time (C's record replays whenever C ran). Where either
differs from this request's (another owner now; decided before this request started), the chain
before 6e1ef5a (release, reserve, pay the owner now) answers."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import httpx2
import pytest
import redis

from api.app import create_app
from counters.clock import ManualClock
from counters.redis.keys import EntityKeys, UserKeys
from counters.settings import Settings
from tests.exp.test_cross_identity import Layout, act, own, pick, total
from tests.support.core import user_headers
from tests.support.http import asgi_client
from tests.support.rules import write_rules

pytestmark = pytest.mark.anyio

GAIN = "/api/exp/gain"
LIKE = "character_liked"
LIMIT = 20  # default_rules.toml: character_liked's daily_limit


def pending(client: redis.Redis, buckets: int, entity: str, fan: str, rid: str, owner: str,
            ts_ms: int, fp: str = "-") -> None:  # fmt: skip
    """``fan``'s like on ``entity`` reserved under ``rid`` to pay ``owner``, not settled (a
    request between B and D: still running, or its D failed)."""
    kind, _, entity_id = entity.partition(":")
    key = EntityKeys.of(kind, entity_id, buckets).once(LIKE)
    entry = {"state": "pending", "rid": rid, "owner": owner, "fp": fp, "ts": ts_ms}
    client.hset(key, fan, json.dumps(entry))
    client.expire(key, 3600)


async def owned_at_the_limit(http: httpx2.AsyncClient, entity: str, owner: str) -> None:
    """``entity`` owned by ``owner``, who then earns today's ``LIMIT`` likes of it."""
    await own(http, entity, owner)
    for n in range(LIMIT):
        r = await http.post(GAIN, json=act(LIKE, entity), headers=user_headers(f"f{n}"))
        assert r.status_code == 200, r.text


async def refused_keyed_like(http: httpx2.AsyncClient, entity: str) -> None:
    """The fan's keyed like of ``entity`` (the chain: C records its answer under the request's
    rid), refused at its owner's limit."""
    first = user_headers("fan") | {"Idempotency-Key": "k0"}
    r = await http.post(GAIN, json=act(LIKE, entity), headers=first)
    assert r.status_code == 429, r.text


def leave_refusal_pending(
    client: redis.Redis, buckets: int, owner: str, entity: str, ts_ms: int
) -> None:
    """The fan's keyed like just refused at ``owner``'s limit, as if its D had failed: C's
    record of the refusal (in the owner's slot) kept, its entry pending under its rid again."""
    owner_tag = UserKeys.of(owner, buckets).tag
    records = {
        str(k): str(client.get(k)).partition("|")
        for k in client.scan_iter(match=f"{owner_tag}:award:*")
    }
    ((key, (fp, _, _)),) = [(k, v) for k, v in records.items() if json.loads(v[2])[0] == 2]
    pending(client, buckets, entity, "fan", key.rpartition(":")[2], owner, ts_ms, fp)


@pytest.mark.parametrize("kind", ["same", "different"])
async def test_a_competitor_refused_by_the_former_owner_is_not_this_likes_answer(
    settings: Settings, clock: ManualClock, redis_client: redis.Redis, kind: str
) -> None:
    """The fan's earlier like reserved to pay a (at a's limit) and has not been settled; the
    entity then went to b. A like after the transfer answered pays b (B is the linearization
    point: "an award that starts after a transfer answered never pays the former owner"), it
    is not refused at a's limit."""
    a, b, c = pick(Layout(kind, settings.key_buckets), "a", "b", "character:c")
    app = create_app(settings, clock=clock)
    async with app.router.lifespan_context(app), asgi_client(app) as http:
        await owned_at_the_limit(http, c, a)
        now_ms = int(clock.now() * 1000)
        pending(redis_client, settings.key_buckets, c, "fan", "r1", a, now_ms)
        await own(http, c, b)  # the transfer answers
        r = await http.post(GAIN, json=act(LIKE, c), headers=user_headers("fan"))
        assert r.status_code == 200, r.text
        assert r.json()["awarded_to"] == b
        assert await total(http, b) == 5


@pytest.mark.parametrize("keyed", [False, True])
async def test_a_competitors_refusal_from_yesterday_is_not_todays_answer(
    settings: Settings, clock: ManualClock, redis_client: redis.Redis, keyed: bool
) -> None:
    """The fan's like was refused at a's limit just before midnight and its D (release)
    failed: the entry stays pending, C's record holds the refusal. After midnight a has room:
    the fan's next like pays a, it does not replay yesterday's refusal."""
    a, c = pick(Layout("different", settings.key_buckets), "a", "character:c")
    clock.at = (int(clock.now()) // 86_400 + 1) * 86_400 - 60  # 23:59
    app = create_app(settings, clock=clock)
    async with app.router.lifespan_context(app), asgi_client(app) as http:
        await owned_at_the_limit(http, c, a)
        await refused_keyed_like(http, c)
        # its D failed: C's record of the refusal stays, and the entry pending under its rid
        leave_refusal_pending(redis_client, settings.key_buckets, a, c, int(clock.now() * 1000))
        clock.advance(120)  # 00:01 the next day: a's limit starts over
        headers = user_headers("fan") | ({"Idempotency-Key": "k1"} if keyed else {})
        r = await http.post(GAIN, json=act(LIKE, c), headers=headers)
        assert r.status_code == 200, r.text
        assert r.json()["awarded_to"] == a
        if keyed:  # and the key's stored answer is that award
            again = await http.post(GAIN, json=act(LIKE, c), headers=headers)
            assert again.status_code == 200, again.text
            assert again.headers.get("idempotent-replayed") == "true"


async def test_a_refusal_answered_from_a_competitor_is_counted(
    settings: Settings, clock: ManualClock, redis_client: redis.Redis
) -> None:
    """Two likes answered 429 count two refusals in the award metrics (as before 6e1ef5a, and
    as a refusal held by the worker counts): the first keyed like's, whose D failed, and the
    next like's, answered from the first's record."""
    from tests.exp.test_creator_shortcut_repeats import award_counts

    a, c = pick(Layout("different", settings.key_buckets), "a", "character:c")
    app = create_app(settings, clock=clock)
    async with app.router.lifespan_context(app), asgi_client(app) as http:
        await owned_at_the_limit(http, c, a)
        label = ("counters_exp_awards_total", ("action", LIKE), ("outcome", "limit"))
        before = award_counts().get(label, 0.0)
        await refused_keyed_like(http, c)
        leave_refusal_pending(redis_client, settings.key_buckets, a, c, int(clock.now() * 1000))
        r = await http.post(GAIN, json=act(LIKE, c), headers=user_headers("fan"))
        assert r.status_code == 429, r.text
        assert award_counts().get(label, 0.0) - before == 2


async def test_a_competitors_refusal_from_before_this_request_is_asked_again(
    settings: Settings, clock: ManualClock, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """Same day, but the refusal was stored before this request started, and a reload has
    raised the limit since: the like is asked again and pays. A competitor's refusal is this
    request's answer only when it was decided while this request ran (its entry reserved after
    this request's first B), not merely the same UTC day."""
    a, c = pick(Layout("different", settings.key_buckets), "a", "character:c")
    rules = write_rules(tmp_path / "rules.toml")
    app = create_app(replace(settings, rules=rules), clock=clock)
    async with app.router.lifespan_context(app), asgi_client(app) as http:
        await owned_at_the_limit(http, c, a)
        await refused_keyed_like(http, c)
        leave_refusal_pending(redis_client, settings.key_buckets, a, c, int(clock.now() * 1000))
        clock.advance(60)
        write_rules(rules, ("daily_limit = 20\n", "daily_limit = 21\n"))
        assert app.state.rules_reloader.reload() == "ok"
        r = await http.post(GAIN, json=act(LIKE, c), headers=user_headers("fan"))
        assert r.status_code == 200, r.text
        assert r.json()["awarded_to"] == a
