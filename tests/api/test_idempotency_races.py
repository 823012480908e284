"""One Idempotency-Key, one request, also when requests with that key race (an attacker's
findings): the batch route, creator-targeted awards (a chain of scripts), grants and adjusts.

Each race sends the requests at once, many times over (each trial with fresh ids), and checks
every answer and the resulting totals: exactly one request applies, the other is 422
``idempotency_key_reused`` and changes nothing, and a later retry of either gets the answer its
key holds. The ids of each trial land in one bucket or in different ones (``pick``). The last
two tests stop an attempt after its claim (step A alone) to show what a pending claim does:
refuse another request, let a retry of the same request complete it, and be freed only when
the last attempt holding it failed before applying anything.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, NamedTuple

import httpx2
import pytest
from starlette.applications import Starlette

from api.app import create_app
from counters.auth import Principal
from counters.clock import ManualClock
from counters.errors import ConflictError, IdempotencyMismatch, NotFound
from counters.exp.entities import Target
from counters.redis.calls import ClaimKeys, ClaimRequest, IdemKey, ReleaseRequest
from counters.redis.codes import AwardOutcome, ClaimOutcome, ReleaseOutcome
from counters.redis.idempotency import Idempotency
from counters.redis.keys import UserKeys
from counters.settings import Settings
from tests.exp.test_cross_identity import Layout, act, own, pick, total
from tests.support.core import service_headers, user_headers
from tests.support.persistence import services
from tests.support.xp import balance

pytestmark = pytest.mark.anyio

GAIN = "/api/exp/gain"
BATCH = "/api/exp/gain/batch"
GRANTS = "/api/v1/xp/grants"
ADJUST = "/api/admin/exp/adjust"
TRIALS = 20
REUSED = {
    "detail": "Idempotency-Key was already used with a different request",
    "code": "idempotency_key_reused",
}


@pytest.fixture(params=["same", "different"])
def layout(request: pytest.FixtureRequest, key_buckets: int) -> Layout:
    return Layout(str(request.param), key_buckets)


def one_applied(responses: list[httpx2.Response]) -> int:
    """The index of the one request that applied; every other is 422 key reused."""
    winners = [i for i, r in enumerate(responses) if r.status_code == 200]
    assert len(winners) == 1, [(r.status_code, r.text) for r in responses]
    for i, response in enumerate(responses):
        if i != winners[0]:
            assert (response.status_code, response.json()) == (422, REUSED)
    return winners[0]


def retried(again: list[httpx2.Response], first: list[httpx2.Response], won: int) -> None:
    """Each request sent again: the winner's replays its first answer, the other's is 422."""
    assert (again[won].status_code, again[won].json()) == (200, first[won].json())
    assert again[won].headers["Idempotent-Replayed"] == "true"
    for i, response in enumerate(again):
        if i != won:
            assert (response.status_code, response.json()) == (422, REUSED)


async def owned(client: httpx2.AsyncClient, layout: Layout, trial: int) -> list[str]:
    """A fan, an owner and the owner's entity, new in each trial."""
    fan, owner, entity = pick(layout, f"fan{trial}-", f"o{trial}-", f"character:e{trial}-")
    await own(client, entity, owner)
    return [fan, owner, entity]


async def at_once(
    client: httpx2.AsyncClient, path: str, bodies: list[Any], headers: dict[str, str]
) -> list[httpx2.Response]:
    """POST each body to ``path`` concurrently."""
    return list(await asyncio.gather(*(client.post(path, json=b, headers=headers) for b in bodies)))


async def in_turn(
    client: httpx2.AsyncClient, path: str, bodies: list[Any], headers: dict[str, str]
) -> list[httpx2.Response]:
    """POST each body to ``path``, one after the other."""
    return [await client.post(path, json=b, headers=headers) for b in bodies]


async def test_one_batch_key_sent_with_two_batches_at_once_applies_one(
    client: httpx2.AsyncClient, layout: Layout
) -> None:
    for trial in range(TRIALS):
        users = pick(layout, f"t{trial}a", f"t{trial}c")
        headers = service_headers(**{"Idempotency-Key": f"batch-{trial}"})
        bodies = [{"awards": [{"user_id": user, "action": "create_scene"}]} for user in users]
        responses = await at_once(client, BATCH, bodies, headers)
        won = one_applied(responses)
        assert responses[won].json()["results"][0]["status"] == 200
        assert [await total(client, user) for user in users] == [
            15 if i == won else 0 for i in range(2)
        ]
        # Each retried afterwards: the winner's replays, the other's is still refused.
        again = await in_turn(client, BATCH, bodies, headers)
        assert again[won].status_code == 200
        assert again[won].json()["results"][0]["headers"] == {"Idempotent-Replayed": "true"}
        assert (again[1 - won].status_code, again[1 - won].json()) == (422, REUSED)
        assert [await total(client, user) for user in users] == [
            15 if i == won else 0 for i in range(2)
        ]


async def test_many_batches_with_one_key_at_once_one_applies_and_the_rest_change_nothing(
    client: httpx2.AsyncClient, key_buckets: int
) -> None:
    users = pick(Layout("different", key_buckets), *(f"m{n}-" for n in range(12)))
    headers = service_headers(**{"Idempotency-Key": "many"})
    # Two items each (the attacker saw a "refused" batch answer 200 with item 1 applied).
    bodies = [
        {
            "awards": [
                {"user_id": u, "action": "daily_chat"},
                {"user_id": u, "action": "create_scene"},
            ]
        }
        for u in users
    ]
    responses = await at_once(client, BATCH, bodies, headers)
    won = one_applied(responses)
    assert [item["status"] for item in responses[won].json()["results"]] == [200, 200]
    assert [await total(client, u) for u in users] == [
        35 if i == won else 0 for i in range(len(users))
    ]


async def test_keyed_likes_of_two_entities_with_one_key_at_once_pay_one_owner(
    client: httpx2.AsyncClient, layout: Layout
) -> None:
    for trial in range(TRIALS):
        fan, o1, o2, e1, e2 = pick(
            layout, f"fan{trial}-", f"o{trial}a", f"o{trial}b", f"character:e{trial}a",
            f"character:e{trial}b",
        )  # fmt: skip
        await own(client, e1, o1)
        await own(client, e2, o2)
        headers = user_headers(fan, **{"Idempotency-Key": "same"})
        likes = [act("character_liked", e) for e in (e1, e2)]
        responses = await at_once(client, GAIN, likes, headers)
        won = one_applied(responses)
        owners = (o1, o2)
        assert responses[won].json()["awarded_to"] == owners[won]
        paid = [5 if i == won else 0 for i in range(2)]
        assert [await total(client, o) for o in owners] == paid
        retried(await in_turn(client, GAIN, likes, headers), responses, won)
        assert [await total(client, o) for o in owners] == paid


async def test_a_keyed_like_and_a_keyed_award_to_oneself_with_one_key_apply_one(
    client: httpx2.AsyncClient, layout: Layout
) -> None:
    for trial in range(TRIALS):
        fan, owner, entity = await owned(client, layout, trial)
        headers = user_headers(fan, **{"Idempotency-Key": "same"})
        bodies = [act("character_liked", entity), {"action": "daily_chat"}]
        responses = await at_once(client, GAIN, bodies, headers)
        won = one_applied(responses)
        expected = [(5, 0), (0, 20)][won]  # (owner, fan)
        assert (await total(client, owner), await total(client, fan)) == expected
        retried(await in_turn(client, GAIN, bodies, headers), responses, won)
        assert (await total(client, owner), await total(client, fan)) == expected


async def test_one_keyed_like_sent_twice_at_once_pays_once_and_both_get_its_answer(
    client: httpx2.AsyncClient, layout: Layout
) -> None:
    for trial in range(TRIALS):
        fan, owner, entity = await owned(client, layout, trial)
        headers = user_headers(fan, **{"Idempotency-Key": f"twice-{trial}"})
        like = act("character_liked", entity)
        responses = await at_once(client, GAIN, [like, like], headers)
        for response in responses:
            assert response.status_code == 200, response.text
            assert response.json()["awarded_to"] == owner
        assert await total(client, owner) == 5
        again = await client.post(GAIN, json=like, headers=headers)
        assert (again.status_code, again.headers["Idempotent-Replayed"]) == (200, "true")
        assert again.json()["exp_added"] == 5
        assert await total(client, owner) == 5


async def test_a_keyed_like_refused_before_paying_frees_its_key(
    client: httpx2.AsyncClient, layout: Layout
) -> None:
    fan, owner, entity = pick(layout, "fan", "o", "character:e")
    headers = user_headers(fan, **{"Idempotency-Key": "k"})
    like = act("character_liked", entity)
    unknown = await client.post(GAIN, json=like, headers=headers)  # nobody owns it yet
    assert (unknown.status_code, unknown.json()["code"]) == (404, "not_found")
    await own(client, entity, fan)
    mine = await client.post(GAIN, json=like, headers=headers)  # one's own entity
    assert (mine.status_code, mine.json()["code"]) == (409, "self_action")
    # Neither changed anything, so the key is free: another request with it applies...
    chat = await client.post(GAIN, json={"action": "daily_chat"}, headers=headers)
    assert (chat.status_code, chat.json()["exp_added"]) == (200, 20)
    # ...and from now on the key is that request's.
    await own(client, entity, owner)
    after = await client.post(GAIN, json=like, headers=headers)
    assert (after.status_code, after.json()) == (422, REUSED)
    assert (await total(client, owner), await total(client, fan)) == (0, 20)


GIVES = {  # route -> the body beside user_id, and what it gives the user
    GRANTS: {"xp_amount": 50, "reason": "top_up"},
    ADJUST: {"delta": 40, "reason": "support"},
}


async def given(client: httpx2.AsyncClient, route: str, user: str) -> int:
    """What the user holds of what ``route`` gives: XP balance, or total EXP."""
    if route == GRANTS:
        return int((await balance(client, user))["xp_balance"])
    return await total(client, user)


@pytest.mark.parametrize("route", [GRANTS, ADJUST])
async def test_a_grant_or_adjust_key_is_the_callers_whatever_user_it_names(
    client: httpx2.AsyncClient, layout: Layout, route: str
) -> None:
    amount = 50 if route == GRANTS else 40
    for trial in range(TRIALS):
        users = pick(layout, f"g{trial}a", f"g{trial}b")
        headers = service_headers(**{"Idempotency-Key": f"k-{trial}"})
        bodies = [{"user_id": u, **GIVES[route]} for u in users]
        send = at_once if trial % 2 else in_turn
        responses = await send(client, route, bodies, headers)
        won = one_applied(responses)
        expected = [amount if i == won else 0 for i in range(2)]
        assert [await given(client, route, u) for u in users] == expected
        retried(await in_turn(client, route, bodies, headers), responses, won)
        assert [await given(client, route, u) for u in users] == expected


@pytest.fixture
async def app(settings: Settings, clock: ManualClock) -> AsyncIterator[Starlette]:
    app = create_app(settings, clock=clock)
    async with app.router.lifespan_context(app):
        yield app


async def claim(app: Starlette, idem: Idempotency, user: str) -> int:
    """Run step A alone for ``idem`` acting as ``user``: an attempt that stops after it."""
    svc = services(app)
    keys = UserKeys.of(user, svc.settings.key_buckets)
    record = ClaimKeys(keys.idempotency(idem.caller, idem.key), keys.user, keys.meta)
    call = ClaimRequest(idem.fingerprint, "1", svc.settings.idempotency_ttl_seconds, "pending")
    return int((await svc.scripts.run(record, call))[0])


class Scene(NamedTuple):
    """A fan (acting with its own token), an owner, their entity, and two requests of the fan
    with one key: a like of the entity and a ``daily_chat``."""

    fan: Principal
    owner: str
    target: Target
    like: Idempotency
    chat: Idempotency


async def like_claimed(app: Starlette, layout: Layout) -> Scene:
    """A scene where an attempt of the like claimed the key and stopped (it crashed, or it
    still runs)."""
    fan, owner, entity = pick(layout, "fan", "o", "character:e")
    kind, _, entity_id = entity.partition(":")
    fan_as_user = Principal(fan, f"user:{fan}", False)
    like = Idempotency.of(fan_as_user.caller, "k", "like", b"1")
    chat = Idempotency.of(fan_as_user.caller, "k", "chat", b"2")
    assert like is not None and chat is not None
    assert await claim(app, like, fan) == ClaimOutcome.CLAIMED
    return Scene(fan_as_user, owner, Target(kind, entity_id), like, chat)


async def test_a_pending_claim_refuses_other_requests_and_a_retry_completes_it(
    app: Starlette, layout: Layout
) -> None:
    fan_as_user, owner, target, like, chat = await like_claimed(app, layout)
    fan, svc = fan_as_user.user_id, services(app)
    await svc.entities.assign(target, owner)
    with pytest.raises(IdempotencyMismatch):  # another request: refused, nothing written
        await svc.exp.award(fan_as_user, "daily_chat", None, chat)
    with pytest.raises(IdempotencyMismatch):
        await svc.exp.award(fan_as_user, "character_liked", target, chat)
    assert (await svc.exp.usage(fan)).total_exp == 0
    assert (await svc.exp.usage(owner)).total_exp == 0
    # The same request again joins the claim, runs, and pays once; then it replays.
    paid = await svc.exp.award(fan_as_user, "character_liked", target, like)
    assert (paid.outcome, paid.exp_added, paid.awarded_to, paid.replayed) == (
        AwardOutcome.AWARDED, 5, owner, False,
    )  # fmt: skip
    again = await svc.exp.award(fan_as_user, "character_liked", target, like)
    assert (again.exp_added, again.awarded_to, again.replayed) == (5, owner, True)
    assert (await svc.exp.usage(owner)).total_exp == 5
    with pytest.raises(IdempotencyMismatch):
        await svc.exp.award(fan_as_user, "daily_chat", None, chat)


async def test_a_claim_is_freed_only_when_its_last_attempt_fails(
    app: Starlette, layout: Layout
) -> None:
    # One attempt holds the claim (it may still run): failing attempts beside it keep the key.
    fan_as_user, owner, target, like, chat = await like_claimed(app, layout)
    fan, svc = fan_as_user.user_id, services(app)
    with pytest.raises(NotFound):  # nobody owns the entity yet
        await svc.exp.award(fan_as_user, "character_liked", target, like)
    await svc.entities.assign(target, fan)
    with pytest.raises(ConflictError):  # one's own entity: 409 self_action
        await svc.exp.award(fan_as_user, "character_liked", target, like)
    with pytest.raises(IdempotencyMismatch):
        await svc.exp.award(fan_as_user, "daily_chat", None, chat)
    # The holding attempt fails too: the last one out frees the key.
    keys = UserKeys.of(fan, svc.settings.key_buckets)
    release = ReleaseRequest(like.fingerprint)
    record = IdemKey(keys.idempotency(like.caller, like.key))
    assert (await svc.scripts.run(record, release))[0] == ReleaseOutcome.RELEASED
    assert (await svc.scripts.run(record, release))[0] == ReleaseOutcome.KEPT  # nothing left
    await svc.entities.assign(target, owner)
    chat_paid = await svc.exp.award(fan_as_user, "daily_chat", None, chat)
    assert (chat_paid.outcome, chat_paid.exp_added) == (AwardOutcome.AWARDED, 20)
    with pytest.raises(IdempotencyMismatch):  # now the key is the chat's
        await svc.exp.award(fan_as_user, "character_liked", target, like)
    assert (await svc.scripts.run(record, release))[0] == ReleaseOutcome.KEPT  # an answer
    assert (await svc.exp.usage(owner)).total_exp == 0
