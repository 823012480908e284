"""A repeated like or fork answered by lua/creator_award.lua itself (session 12: code 4 when the
actor's entry is done and paid the owner it is about to pay) answers and writes what the chain
(reserve_creator_award.lua's code 4) does, whatever the entry's shape and history.

Entries of every shape a writer leaves are seeded into the once-per-actor record (restored
from the ledger: rid and fp ""; a keyed request's: a digest rid; a stale pending one, which B
settles as done; a fresh pending one, which the chain completes; one naming another owner; a
minimal older one), then repeats run through HTTP, single and batched, keyed and unkeyed,
before and after transfers, with the shortcut off and on: statuses, bodies, the headers a
client sees, the award metrics and every key must be the same. Then many concurrent first
likes and repeats by the same actors on two workers, with concurrent transfers, must keep the
chain's invariants (one award per actor, to the owner its entry names; every other answer 409
already_triggered; each owner's total the sum of the entries naming it).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from typing import Any

import pytest
import redis
from prometheus_client import REGISTRY

from api.app import create_app
from counters import metrics
from counters.clock import ManualClock
from counters.redis.keys import EntityKeys, request_digest
from counters.settings import Settings
from tests.exp.test_creator_shortcut import evalsha_calls, state
from tests.exp.test_cross_identity import Layout, act, own, pick
from tests.support.core import service_headers, user_headers
from tests.support.http import asgi_client

pytestmark = pytest.mark.anyio

GAIN = "/api/exp/gain"
BATCH = "/api/exp/gain/batch"
LIKE = "character_liked"
SEEN_HEADERS = ("retry-after", "idempotent-replayed", "content-type")


def award_counts() -> dict[tuple[str, ...], float]:
    metrics.flush()
    found: dict[tuple[str, ...], float] = {}
    for family in REGISTRY.collect():
        for sample in family.samples:
            if sample.name.startswith(("counters_exp_awards", "counters_exp_near_limit")):
                if sample.name.endswith("_created"):
                    continue
                found[(sample.name, *sorted(sample.labels.items()))] = sample.value  # type: ignore[arg-type]
    return found


def seed(client: redis.Redis, entity: str, buckets: int, now_ms: int, stale_ms: int,
         a: str, b: str, fans: list[str]) -> None:  # fmt: skip
    """The once-per-actor entries of ``fans[0..6]`` on ``entity``'s like, one shape each."""
    kind, _, entity_id = entity.partition(":")
    key = EntityKeys.of(kind, entity_id, buckets).once(LIKE)
    entries = [
        {"state": "done", "rid": "", "owner": a, "fp": "", "ts": now_ms - 1000},  # restored
        {
            "state": "done",
            "rid": request_digest("svc", fans[1], "k"),
            "owner": a,
            "fp": "f",
            "ts": now_ms - 5,
        },  # a keyed request's
        # stale pending: B settles it as done (a write the shortcut must leave to B)
        {"state": "pending", "rid": "r2", "owner": a, "fp": "-", "ts": now_ms - stale_ms - 1},
        # pending under another request: the chain completes it (pays a) first
        {"state": "pending", "rid": "r3", "owner": a, "fp": "-", "ts": now_ms - 10},
        {"state": "done", "rid": "r4", "owner": b, "fp": "-", "ts": now_ms - 10},  # another owner
        {"state": "done", "owner": a},  # minimal, older
        {"state": "done", "rid": "r6", "owner": a, "fp": "-", "ts": str(now_ms), "x": [1]},
    ]
    for fan, entry in zip(fans, entries, strict=False):
        client.hset(key, fan, json.dumps(entry))
    client.expire(key, 3600)


async def run(
    settings: Settings, clock: ManualClock, client: redis.Redis, ids: list[str], one_node: bool
) -> list[Any]:
    a, b, c = ids[:3]
    fans = ids[3:]
    steps: list[Any] = []
    app = create_app(settings, clock=clock)
    async with app.router.lifespan_context(app), asgi_client(app) as http:
        app.state.services.scripts.one_node = one_node

        def note(response: Any) -> None:
            headers = {h: response.headers.get(h) for h in SEEN_HEADERS}
            steps.append((response.status_code, response.json(), headers))

        async def gain(user: str, key: str | None = None) -> None:
            headers = user_headers(user) | ({"Idempotency-Key": key} if key else {})
            note(await http.post(GAIN, json=act(LIKE, c), headers=headers))

        async def batch(items: list[tuple[str, str | None]]) -> None:
            awards = [
                act(LIKE, c) | {"user_id": user} | ({"idempotency_key": key} if key else {})
                for user, key in items
            ]
            note(await http.post(BATCH, json={"awards": awards}, headers=service_headers()))

        await own(http, c, a)
        now_ms = int(clock.now() * 1000)
        seed(
            client,
            c,
            settings.key_buckets,
            now_ms,
            settings.idempotency_ttl_seconds * 1000,
            a,
            b,
            fans,
        )
        for _ in range(2):
            for fan in fans[:10]:  # seeded shapes, then 7..9 first likes, then all repeats
                await gain(fan)
        await gain(fans[10], "k10")  # a keyed first like: a digest rid
        await gain(fans[10])  # an unkeyed repeat of it
        await gain(fans[10], "k10")  # its retry: the replay
        await gain(fans[10], "k10b")  # a keyed repeat
        await batch([(fans[11], None), (fans[11], None), (fans[0], None), (fans[10], None),
                     (fans[12], "bk"), (fans[12], None), (fans[4], None)])  # fmt: skip
        await own(http, c, b)  # a transfer: entries naming a are now another owner's
        for fan in fans[:13]:
            await gain(fan)
        await batch([(fan, None) for fan in fans[:13]])
        await own(http, c, a)  # back: entries naming a are the owner's again
        for fan in fans[:13]:
            await gain(fan)
        await batch([(fan, None) for fan in fans[:13]])
        await gain(fans[10], "k10")  # the first answer still
    return steps


@pytest.mark.parametrize("pipeline", [True, False])
@pytest.mark.parametrize("one_node", [True, False])
@pytest.mark.parametrize("kind", ["same", "different"])
async def test_repeats_of_every_entry_shape_answer_and_write_as_the_chain(
    settings: Settings, clock: ManualClock, redis_client: redis.Redis, kind: str, one_node: bool,
    pipeline: bool,
) -> None:  # fmt: skip
    """The auto-pipeline packs the command (counters/exp/packed.py), the pool sends the typed
    call (CreatorAward.CODES checks the reply)."""
    settings = replace(settings, redis_autopipeline=pipeline)
    ids = pick(Layout(kind, settings.key_buckets), "a", "b", "character:c") + [
        f"fan{n}" for n in range(13)
    ]
    runs = []
    for shortcut in (False, True):
        redis_client.flushall()
        redis_client.config_resetstat()
        before = award_counts()
        steps = await run(
            replace(settings, creator_shortcut=shortcut), clock, redis_client, ids, one_node
        )
        after = award_counts()
        counted = {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}
        runs.append((steps, state(redis_client), counted, evalsha_calls(redis_client)))
    (chain, chain_state, chain_counted, chain_calls), (short, short_state, short_counted, calls) = (
        runs
    )
    for n, (x, y) in enumerate(zip(chain, short, strict=True)):
        assert y == x, n
    assert short_state == chain_state
    assert short_counted == chain_counted
    codes = [body.get("code") for _, body, _ in chain if isinstance(body, dict)]
    assert codes.count("already_triggered") > 20
    print("script calls: chain", chain_calls, "shortcut", calls)


@pytest.mark.parametrize("transfer", [False, True])
@pytest.mark.parametrize("kind", ["same", "different"])
async def test_concurrent_first_likes_and_repeats_pay_each_actor_once(
    settings: Settings, clock: ManualClock, redis_client: redis.Redis, kind: str, transfer: bool
) -> None:
    """Every actor sends a burst of likes at once (keyed and unkeyed mixed, single and
    batched, on two workers with their own owner hints), with the entity transferred between
    two owners meanwhile: each actor is paid once, to the owner its entry names, every other
    answer is 409 already_triggered, and each owner's total is the sum of its entries."""
    a, b, c = pick(Layout(kind, settings.key_buckets), "a", "b", "character:c")
    fans = [f"cf{n}" for n in range(12)]
    redis_client.flushall()
    app = create_app(settings, clock=clock)
    other = create_app(settings, clock=clock)  # a second worker: its own hints
    async with (
        app.router.lifespan_context(app), asgi_client(app) as http,
        other.router.lifespan_context(other), asgi_client(other) as http2,
    ):  # fmt: skip
        await own(http, c, a)
        # warm both workers' hints on a with another actor
        await http.post(GAIN, json=act(LIKE, c), headers=user_headers("warm1"))
        await http2.post(GAIN, json=act(LIKE, c), headers=user_headers("warm2"))
        # a third of the fans liked before (their repeats take the new branch)
        for fan in fans[::3]:
            first = await http.post(GAIN, json=act(LIKE, c), headers=user_headers(fan))
            assert first.status_code == 200

        async def one(n: int, i: int, fan: str) -> list[tuple[int, Any]]:
            await asyncio.sleep(0.002 * ((n + i) % 10))  # each fan's burst starts elsewhere
            client = http if n % 2 else http2
            if n % 5 == 4:
                items = [act(LIKE, c) | {"user_id": fan} for _ in range(3)]
                r = await client.post(BATCH, json={"awards": items}, headers=service_headers())
                return [(i["status"], i["body"]) for i in r.json()["results"]]
            headers = user_headers(fan) | ({"Idempotency-Key": f"k{n}"} if n % 3 == 0 else {})
            r = await client.post(GAIN, json=act(LIKE, c), headers=headers)
            return [(r.status_code, r.json())]

        async def transfers() -> None:
            if not transfer:
                return
            for n in range(7):  # a, then b, a, b, ... while the bursts run; b last
                await asyncio.sleep(0.003)
                await own(http2 if n % 2 else http, c, b if n % 2 == 0 else a)

        jobs = [one(n, i, fan) for n in range(10) for i, fan in enumerate(fans)]
        answers, _ = await asyncio.gather(asyncio.gather(*jobs), transfers())
    kind_, _, entity_id = c.partition(":")
    record = {
        actor: json.loads(entry)
        for actor, entry in redis_client.hgetall(
            EntityKeys.of(kind_, entity_id, settings.key_buckets).once(LIKE)
        ).items()
    }
    by_fan: dict[str, list[tuple[int, Any]]] = {fan: [] for fan in fans}
    for n in range(10):
        for i, fan in enumerate(fans):
            by_fan[fan].extend(answers[n * len(fans) + i])
    for i, fan in enumerate(fans):
        entry = record[fan]
        assert entry["state"] == "done"
        paid = [body for status, body in by_fan[fan] if status == 200]
        assert len(paid) == (0 if i % 3 == 0 else 1), (fan, by_fan[fan])
        for status, body in by_fan[fan]:
            if status == 200:
                assert body["awarded_to"] == entry["owner"]
            else:
                assert (status, body["code"]) == (409, "already_triggered"), body
    paid_to = {a: 0, b: 0}
    for entry in record.values():
        paid_to[entry["owner"]] += 5
    for user in (a, b):
        [key] = list(redis_client.scan_iter(f"*:user:{user}")) or [None]
        exp = redis_client.hget(key, "exp") if key else None
        assert int(exp or 0) == paid_to[user], (user, paid_to)
