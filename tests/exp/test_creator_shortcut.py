"""The one-script creator award (lua/creator_award.lua) answers and writes what the chain of
single-slot scripts does (issue #15 on top of #10's protocol in counters/exp/creator.py).

The same sequence of requests (likes up to the daily limit, a repeat, one's own entity, a
transfer between two likes, forks past the daily cap with a level-up, a service's sale, an
unknown entity) runs through HTTP twice on the suite's real Redis: with the shortcut off (the
chain B, C, D) and on; bodies, statuses, totals, today's counts, who is recorded as having liked
or forked, and the ledger events must be the same, with the ids in one bucket and in several.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
import redis

from api.app import create_app
from counters.clock import ManualClock
from counters.settings import Settings
from persistence.events import expand
from tests.exp.test_cross_identity import Layout, act, own, pick
from tests.support.core import service_headers, user_headers
from tests.support.http import asgi_client

pytestmark = pytest.mark.anyio

GAIN = "/api/exp/gain"
FANS = 40


async def run(
    settings: Settings, clock: ManualClock, ids: list[str], *, one_node: bool = True
) -> list[tuple[int, Any]]:
    """Every step's (status, body), in order; ``one_node`` False: served as on a Cluster
    (``Scripts.one_node``: a script may not take keys of two slots)."""
    a, b, c, d = ids[:4]
    fans = ids[4:]
    steps: list[tuple[int, Any]] = []
    app = create_app(settings, clock=clock)
    async with app.router.lifespan_context(app), asgi_client(app) as http:
        app.state.services.scripts.one_node = one_node

        async def gain(user: str, body: dict[str, str], service: bool = False) -> None:
            headers = service_headers(user) if service else user_headers(user)
            response = await http.post(GAIN, json=body, headers=headers)
            steps.append((response.status_code, response.json()))

        await own(http, c, a)
        await own(http, d, b)
        for fan in fans[:22]:  # the 21st and 22nd: character_liked's daily limit (20) for a
            await gain(fan, act("character_liked", c))
        await gain(fans[1], act("character_liked", c))  # a repeat: already triggered
        await gain(a, act("character_liked", c))  # one's own entity: 409
        await own(http, c, b)  # a transfer: the owner hinted for c is now wrong
        for fan in fans[22:25]:  # b: 15 EXP
            await gain(fan, act("character_liked", c))
        # a repeat whose first like paid a (the hint is b now): the chain's answer, a's
        await gain(fans[0], act("character_liked", c))
        for fan in fans[25:]:  # 10 EXP each past level 2 (100), a partial 5, the cap (150)
            await gain(fan, act("forked", d))
        await gain(fans[0], act("forked", c))
        await gain(fans[0], act("paid_char_sold", c), service=True)  # not once per actor
        await gain(fans[0], act("paid_char_sold", c), service=True)
        await gain(fans[0], act("character_liked", "character:nobody"))  # unknown: 404
    return steps


def state(client: redis.Redis) -> dict[str, Any]:
    """What the requests left in Redis, without what differs by nature (request ids, runs)."""
    found: dict[str, Any] = {}
    for key in client.scan_iter("ctr:*"):
        kind = client.type(key)
        if kind == "hash" and ":once:" in key:
            found[key] = {
                actor: {k: v for k, v in json.loads(entry).items() if k != "rid"}
                for actor, entry in client.hgetall(key).items()
            }
        elif kind == "hash" and not key.endswith(":meta"):
            found[key] = client.hgetall(key)
        elif kind == "stream":
            found[key] = [
                {k: v for k, v in expand(fields).items() if k != "run"}
                for _, fields in client.xrange(key)
                if expand(fields).get("kind") == "exp_award"
            ]
        elif kind == "zset":
            found[key] = client.zrange(key, 0, -1, withscores=True)
    return found


def evalsha_calls(client: redis.Redis) -> int:
    """Script calls Redis counted: FCALL and FCALL_RO (Redis >= 7), EVALSHA (6.2)."""
    stats = client.info("commandstats")
    names = ("cmdstat_evalsha", "cmdstat_fcall", "cmdstat_fcall_ro")
    return sum(int(stats.get(name, {}).get("calls", 0)) for name in names)


@pytest.mark.parametrize("kind", ["same", "different"])
async def test_the_one_script_award_answers_and_writes_what_the_chain_does(
    settings: Settings, clock: ManualClock, redis_client: redis.Redis, kind: str
) -> None:
    ids = pick(Layout(kind, settings.key_buckets), "a", "b", "character:c", "character:d") + [
        f"fan{n}" for n in range(FANS)
    ]

    redis_client.flushall()
    redis_client.config_resetstat()
    chain = await run(replace(settings, creator_shortcut=False), clock, ids)
    chain_state, chain_calls = state(redis_client), evalsha_calls(redis_client)

    redis_client.flushall()
    redis_client.config_resetstat()
    shortcut = await run(replace(settings, creator_shortcut=True), clock, ids)
    shortcut_state, shortcut_calls = state(redis_client), evalsha_calls(redis_client)

    assert shortcut == chain
    assert shortcut_state == chain_state
    codes = {body.get("code") for _, body in chain}
    assert {"daily_limit_reached", "daily_cap_reached", "already_triggered", "self_action"} <= codes
    assert "not_found" in codes
    assert any(body.get("leveled_up") for _, body in chain)
    assert any(body.get("action") == "forked" and body["exp_added"] == 5 for _, body in chain)
    # The shortcut ran: most likes and forks took one call instead of the chain's three.
    assert shortcut_calls < chain_calls - 40, (shortcut_calls, chain_calls)


@pytest.mark.parametrize("kind", ["same", "different"])
async def test_a_repeat_that_paid_the_same_owner_is_refused_in_one_script(
    settings: Settings, clock: ManualClock, redis_client: redis.Redis, kind: str
) -> None:
    """A repeated like whose first one paid the entity's owner now is answered by
    creator_award.lua itself (409 already_triggered, as the chain's B answers it): one script
    call, nothing written; before session 12 it took that call and then B's."""
    owner, fan, entity = pick(Layout(kind, settings.key_buckets), "o", "f", "character:e")
    app = create_app(settings, clock=clock)
    async with app.router.lifespan_context(app), asgi_client(app) as http:
        await own(http, entity, owner)
        first = await http.post(GAIN, json=act("character_liked", entity),
                                headers=user_headers(fan))  # fmt: skip
        before, calls = state(redis_client), evalsha_calls(redis_client)
        again = await http.post(GAIN, json=act("character_liked", entity),
                                headers=user_headers(fan))  # fmt: skip
        after, calls_after = state(redis_client), evalsha_calls(redis_client)
    assert first.status_code == 200 and first.json()["awarded_to"] == owner
    assert again.status_code == 409, again.text
    assert again.json()["code"] == "already_triggered"
    assert after == before  # nothing written
    assert calls_after - calls == 1


@pytest.mark.parametrize("kind", ["same", "different"])
async def test_on_a_cluster_the_one_script_award_needs_the_entity_and_owner_in_one_slot(
    settings: Settings, clock: ManualClock, redis_client: redis.Redis, kind: str
) -> None:
    ids = pick(Layout(kind, settings.key_buckets), "a", "b", "character:c", "character:d") + [
        f"fan{n}" for n in range(FANS)
    ]
    answers, calls = [], []
    for shortcut, one_node in ((False, True), (True, False)):
        redis_client.flushall()
        redis_client.config_resetstat()
        answers.append(
            await run(replace(settings, creator_shortcut=shortcut), clock, ids, one_node=one_node)
        )
        calls.append(evalsha_calls(redis_client))
    assert answers[0] == answers[1]
    if kind == "same":  # every entity shares its owner's slot: one script
        assert calls[1] < calls[0] - 40, calls
    else:  # never a script across two slots: the chain, call for call
        assert calls[1] == calls[0], calls


@pytest.mark.parametrize("kind", ["same", "different"])
async def test_an_entity_this_process_never_saw_takes_the_one_script_award(
    settings: Settings, clock: ManualClock, redis_client: redis.Redis, kind: str
) -> None:
    """No owner hint yet (a fresh worker, or the entity's first like since it started): on one
    node the owner is read with one HGET and the award is one script, not the chain's three
    (a fifth of row 2's likes and forks ran the chain before); the answer is the chain's."""
    owner, fan, entity = pick(Layout(kind, settings.key_buckets), "a", "b", "character:c")
    answers = []
    for shortcut in (False, True):
        redis_client.flushall()
        owning = create_app(settings, clock=clock)
        async with owning.router.lifespan_context(owning), asgi_client(owning) as http:
            await own(http, entity, owner)  # another worker recorded the owner
        redis_client.config_resetstat()
        app = create_app(replace(settings, creator_shortcut=shortcut), clock=clock)
        async with app.router.lifespan_context(app), asgi_client(app) as http:
            response = await http.post(
                GAIN, json=act("character_liked", entity), headers=user_headers(fan)
            )
        answers.append((response.status_code, response.json()))
        if shortcut:
            assert evalsha_calls(redis_client) == 1
        else:
            assert evalsha_calls(redis_client) == 3  # reserve, award, settle
    assert answers[0] == answers[1]
    assert answers[1][0] == 200 and answers[1][1]["awarded_to"] == owner
