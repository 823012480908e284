"""The hot lane's packed debit_xp command (counters/xp/packed.py) is, byte for byte, what
hiredis packs for the typed call (``XpService.charge_call`` through ``Scripts.command``)."""

from __future__ import annotations

import hiredis
import httpx2
import msgspec
import pytest
import redis

from api.app import create_app
from counters.clock import ManualClock
from counters.redis.calls import XpTxKeys
from counters.redis.idempotency import Idempotency
from counters.redis.keys import UserKeys
from counters.runtime.services import Services
from counters.settings import Settings
from tests.support.core import forget_scripts, service_headers, user_headers
from tests.support.http import asgi_client


def test_the_packed_command_is_the_typed_one(settings: Settings, clock: ManualClock) -> None:
    svc = Services.build(settings, clock=clock)
    idem = Idempotency.of("user:u1", "retry-1", "POST /api/v1/xp/debit u1", b"{}")
    users = [("u1", "user:u1"), ("alice@example.com", "service:0"), ("a" * 128, "service:1")]
    for generation_type in svc.xp.rules.costs:
        for user, actor in users:
            for hold in (False, True):
                for key in (None, idem):
                    call = svc.xp.charge_call(user, actor, generation_type, hold, key)
                    tid = call.transaction_id
                    at = UserKeys.of(user, settings.key_buckets)
                    record = at.idempotency(key.caller, key.key) if key else at.unused
                    keys = XpTxKeys(at.user, at.events, record, at.meta, at.xp_transaction(tid))
                    typed = hiredis.pack_command(svc.scripts.command(keys, call))
                    packed = svc.xp.packed_charge(
                        user, actor, generation_type, hold, key, clock.now(), tid
                    )
                    assert packed == typed, (generation_type, user, hold, key)
        clock.advance(3_601.5)


def test_may_create_is_in_the_packed_command(settings: Settings, clock: ManualClock) -> None:
    svc = Services.build(settings, clock=clock)
    before = svc.xp.packed_charge("u1", "user:u1", "NEW_IMAGE", False, None, clock.now(), "xd_1")
    svc.hydrator.may_create_code = "0"  # type: ignore[misc]
    after = svc.xp.packed_charge("u1", "user:u1", "NEW_IMAGE", False, None, clock.now(), "xd_1")
    assert after == before.replace(b"$1\r\n1\r\n", b"$1\r\n0\r\n", 1) != before


@pytest.mark.anyio
async def test_a_flushed_script_is_loaded_again_on_the_packed_path(
    client: httpx2.AsyncClient, redis_client: redis.Redis
) -> None:
    """NOSCRIPT on the hot lane's packed debit: the typed call's recovery loads the script and
    sends it again, and the debit is applied once."""
    subscribe = await client.put(
        "/api/v1/subscriptions/u1", json={"tier": "arcade_artist"}, headers=service_headers()
    )
    assert subscribe.status_code == 200
    first = await client.post(
        "/api/v1/xp/debit", json={"generation_type": "NEW_IMAGE"}, headers=user_headers("u1")
    )
    assert first.status_code == 200
    forget_scripts(redis_client)
    second = await client.post(
        "/api/v1/xp/debit", json={"generation_type": "NEW_IMAGE"}, headers=user_headers("u1")
    )
    assert second.status_code == 200
    assert second.json()["xp_balance"] == first.json()["xp_balance"] - second.json()["xp_debited"]


@pytest.mark.anyio
async def test_a_refused_packed_command_rebuilds_the_packers(
    settings: Settings, clock: ManualClock
) -> None:
    """As for awards (tests/exp/test_packed_award.py): a stale packer costs one refusal, the
    typed call's recovery answers, and the next debit is packed from the typed command."""
    app = create_app(settings, clock=clock)
    async with app.router.lifespan_context(app), asgi_client(app) as http:
        svc: Services = app.state.services
        put = await http.put(
            "/api/v1/subscriptions/u1", json={"tier": "arcade_artist"}, headers=service_headers()
        )
        assert put.status_code == 200
        now = clock.now()
        svc.xp.packed_charge("u1", "user:u1", "NEW_IMAGE", False, None, now, "xd_1")
        (packer,) = svc.xp._packers.values()
        head = packer._head
        sha = head.split(b"\r\n")[4]
        packer._head = head.replace(sha, b"0" * len(sha))
        debit = await http.post(
            "/api/v1/xp/debit", json={"generation_type": "NEW_IMAGE"}, headers=user_headers("u1")
        )
        assert debit.status_code == 200
        tid = "xd_2"
        at = UserKeys.of("u1", settings.key_buckets)
        keys = XpTxKeys(at.user, at.events, at.unused, at.meta, at.xp_transaction(tid))
        call = svc.xp.charge_call("u1", "user:u1", "NEW_IMAGE", False, None)
        call = msgspec.structs.replace(call, transaction_id=tid)
        typed = hiredis.pack_command(svc.scripts.command(keys, call))
        assert (
            svc.xp.packed_charge("u1", "user:u1", "NEW_IMAGE", False, None, clock.now(), tid)
            == typed
        )
