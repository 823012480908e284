"""The hot lane's packed award_exp command (counters/exp/packed.py) is, byte for byte, what
hiredis packs for the typed call (``ExpService.award_call`` through ``Scripts.command``)."""

from __future__ import annotations

import dataclasses

import hiredis
import httpx2
import msgspec
import pytest
import redis
from msgspec.structs import astuple

from api.app import create_app
from counters.clock import ManualClock
from counters.exp.entities import Target
from counters.redis.calls import CreatorAward, CreatorAwardKeys
from counters.redis.idempotency import Idempotency
from counters.redis.keys import EntityKeys, UserKeys
from counters.runtime.services import Services
from counters.settings import Settings
from tests.support.core import SERVICE_KEY, forget_scripts, user_headers
from tests.support.http import asgi_client

GAIN = "/api/exp/gain"


def typed(svc: Services, user: str, action_name: str, idem: Idempotency | None) -> bytes:
    """The command the typed path sends for an award to ``user`` itself without a target."""
    keys = UserKeys.of(user, svc.settings.key_buckets)
    record = keys.idempotency(idem.caller, idem.key) if idem else keys.unused
    fingerprint, key = (idem.fingerprint, idem.key) if idem else ("", "")
    action = svc.exp.action(action_name)
    call = svc.exp.award_call(action_name, action, user, user, None, record, fingerprint, key)
    return hiredis.pack_command(svc.scripts.command(call.keys, call.call))


@pytest.mark.parametrize("leaderboards", [True, False])
@pytest.mark.parametrize("jitter", [0, 600])
def test_the_packed_command_is_the_typed_one(
    settings: Settings, clock: ManualClock, leaderboards: bool, jitter: int
) -> None:
    settings = dataclasses.replace(
        settings, leaderboards_enabled=leaderboards, day_jitter_seconds=jitter
    )
    svc = Services.build(settings, clock=clock)
    idem = Idempotency.of("service:0", "retry-1", "POST /api/exp/gain u", b"{}")
    users = ["u1", "alice@example.com", "a" * 128, "x.y-z:9_"]
    for action_name in svc.exp.rules.actions:
        action = svc.exp.action(action_name)
        for user in users:
            for key in (None, idem):
                packed = svc.exp.packed_award(user, action_name, action, key)
                assert packed == typed(svc, user, action_name, key), (action_name, user, key)
        clock.advance(3_601.5)  # other TTLs and times, and past midnight (a new day's packer)


@pytest.mark.anyio
async def test_the_packed_command_is_the_typed_one_as_fcall(
    settings: Settings, clock: ManualClock
) -> None:
    """Once Scripts sends FCALL (Redis >= 7, chosen when it first answers), so does the packed
    command: the packers are kept by how scripts are sent too."""
    svc = Services.build(settings, clock=clock)
    try:
        action = svc.exp.action("daily_chat")
        before = svc.exp.packed_award("u1", "daily_chat", action, None)  # EVALSHA: not chosen yet
        assert await svc.scripts.connect()  # the suite's Redis is 7
        for action_name in svc.exp.rules.actions:
            action = svc.exp.action(action_name)
            packed = svc.exp.packed_award("u1", action_name, action, None)
            assert packed == typed(svc, "u1", action_name, None)
            assert packed.split(b"\r\n")[2] == b"FCALL"
        assert before.split(b"\r\n")[2] == b"EVALSHA"
    finally:
        await svc.close()


def test_a_reload_and_may_create_change_the_packed_command(
    settings: Settings, clock: ManualClock
) -> None:
    """The packer is per rules version and may_create: a reload (another version and SHA, here
    another reward) and a changed eviction-policy answer are in the next command."""
    svc = Services.build(settings, clock=clock)
    action = svc.exp.action("daily_chat")
    before = svc.exp.packed_award("u1", "daily_chat", action, None)
    rules = svc.rules
    actions = {
        **rules.exp.actions,
        "daily_chat": msgspec.structs.replace(action, exp=action.exp + 1),
    }
    svc.use_rules(
        msgspec.structs.replace(rules, exp=msgspec.structs.replace(rules.exp, actions=actions))
    )
    reloaded = svc.exp.action("daily_chat")
    after = svc.exp.packed_award("u1", "daily_chat", reloaded, None)
    assert after == typed(svc, "u1", "daily_chat", None)
    assert after != before
    svc.hydrator.may_create_code = "0"  # type: ignore[misc]
    assert svc.exp.packed_award("u1", "daily_chat", reloaded, None) == typed(
        svc, "u1", "daily_chat", None
    )


@pytest.mark.anyio
async def test_a_flushed_script_is_loaded_again_on_the_packed_path(
    client: httpx2.AsyncClient, redis_client: redis.Redis
) -> None:
    """NOSCRIPT on the hot lane's packed command: the typed call's recovery loads the script
    and sends it again, and the award is applied once."""
    first = await client.post(
        "/api/exp/gain", json={"action": "daily_chat"}, headers=user_headers("u1")
    )
    assert first.status_code == 200
    forget_scripts(redis_client)
    second = await client.post(
        "/api/exp/gain", json={"action": "create_scene"}, headers=user_headers("u1")
    )
    assert second.status_code == 200
    assert second.json()["action_count"] == 1
    assert second.json()["total_exp"] == first.json()["total_exp"] + second.json()["exp_added"]


@pytest.mark.anyio
async def test_a_refused_packed_command_rebuilds_the_packers(
    settings: Settings, clock: ManualClock
) -> None:
    """A packer whose head no longer names what Redis knows (the way scripts are sent changed
    after it was built) costs one refusal: the typed call's recovery answers, and the next
    command is packed from the typed command as it is now."""
    app = create_app(settings, clock=clock)
    async with app.router.lifespan_context(app), asgi_client(app) as http:
        svc: Services = app.state.services
        action = svc.exp.action("daily_chat")
        svc.exp.packed_award("u1", "daily_chat", action, None)  # today's packer, made stale:
        (packer,) = svc.exp._today.packers.values()
        sha = typed(svc, "u1", "daily_chat", None).split(b"\r\n")[4]
        packer._head = packer._head.replace(sha, b"0" * len(sha))
        gained = await http.post(GAIN, json={"action": "daily_chat"}, headers=user_headers("u1"))
        assert gained.status_code == 200
        assert gained.json()["exp_added"] == action.exp
        rebuilt = svc.exp.packed_award("u2", "daily_chat", action, None)
        assert rebuilt == typed(svc, "u2", "daily_chat", None)


def typed_creator(
    svc: Services, owner: str, actor: str, action_name: str, target: Target, rid: str
) -> bytes:
    """The command the one-script creator award's typed path sends (counters/exp/creator.py)."""
    buckets = svc.settings.key_buckets
    entity, user = EntityKeys.of(target.type, target.id, buckets), UserKeys.of(owner, buckets)
    action = svc.exp.action(action_name)
    base = svc.exp.award_call(action_name, action, owner, actor, target, user.unused, "", "", user)
    once = action.once_per_actor
    call = CreatorAward(*astuple(base.call), "once" if once else "plain", rid, ONCE_TTL)
    once_key = entity.once(action_name) if once else entity.unused
    keys = CreatorAwardKeys(*astuple(base.keys), entity.owner, once_key)
    return hiredis.pack_command(svc.scripts.command(keys, call))


ONCE_TTL = 86_400 * 400


@pytest.mark.parametrize("leaderboards", [True, False])
@pytest.mark.parametrize("jitter", [0, 600])
def test_the_packed_creator_command_is_the_typed_one(
    settings: Settings, clock: ManualClock, leaderboards: bool, jitter: int
) -> None:
    """The one-script creator award's packed command (``CreatorCommands``) is, byte for byte,
    its typed ``CreatorAward`` call: every creator action (once per actor or not), owners,
    actors and entities in several buckets, across TTLs and midnight."""
    settings = dataclasses.replace(
        settings, leaderboards_enabled=leaderboards, day_jitter_seconds=jitter
    )
    svc = Services.build(settings, clock=clock)
    creator_actions = [n for n, a in svc.exp.rules.actions.items() if a.awards == "creator"]
    assert len(creator_actions) >= 2
    pairs = [("u1", "fan-9"), ("alice@example.com", "b" * 128), ("x.y-z:9_", "u1")]
    targets = [Target("character", "c1"), Target("scene", "s-77.x"), Target("character", "9")]
    for action_name in creator_actions:
        action = svc.exp.action(action_name)
        for owner, actor in pairs:
            for target in targets:
                rid = f"r{len(owner)}{target.id}"
                packed = svc.exp.packed_creator(
                    owner, actor, action_name, action, target, rid, ONCE_TTL
                )
                typed = typed_creator(svc, owner, actor, action_name, target, rid)
                assert packed == typed, (action_name, owner, actor, target)
        clock.advance(3_601.5)


@pytest.mark.anyio
async def test_a_flushed_script_is_loaded_again_on_the_packed_creator_path(
    client: httpx2.AsyncClient, redis_client: redis.Redis
) -> None:
    """NOSCRIPT (Function not found) on the one-script creator award's packed command: the
    typed call's recovery loads it and sends it again; the owner is paid once."""
    headers = {"Authorization": f"Bearer {SERVICE_KEY}"}
    owned = await client.put(
        "/api/entities/character/c9", json={"owner_id": "maker"}, headers=headers
    )
    assert owned.status_code == 200
    like = {"action": "character_liked", "target_type": "character", "target_id": "c9"}
    first = await client.post(GAIN, json=like, headers=user_headers("fan1"))
    assert first.status_code == 200 and first.json()["awarded_to"] == "maker"
    forget_scripts(redis_client)
    second = await client.post(GAIN, json=like, headers=user_headers("fan2"))
    assert second.status_code == 200
    assert second.json()["total_exp"] == first.json()["total_exp"] + second.json()["exp_added"]
    assert second.json()["action_count"] == 2
