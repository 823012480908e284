"""floor-lua with the packing taken out of the request (``python -m bench.floor --memo``).

``floor-lua`` (``bench/baselines/floor_lua.py``) packs each request's script command(s) with
the service's packers and runs a ``create_*`` through the service's whole ``ExpService.award``:
~35 us of Python in process for a create, ~12 for a self-award. So it bounds the service's
Python only from below, not every split of work with these scripts. This baseline packs the
command(s) of every request of row 2's cycle once per worker, on the worker's first gain
request (answered as floor-lua answers it; the build takes ~1.3-2.2 s on the 2-core VM, inside
the 2 s warm-up or, if longer, counted against this target), with the code floor-lua uses:

- an award to oneself: ``ExpService.packed_award``'s bytes;
- a like or a fork: ``ExpService.packed_creator``'s, a fresh request id spliced in per request;
  a repeat (``creator_award`` leaves it to the chain) is then answered as floor-lua answers it
  (the shortcut again, then the chain: one script more than the service sends);
- a ``create_*``: the claim's ``assign_entity`` and the award's ``award_exp`` commands, typed
  as the service builds them, both sent in one round trip (the service waits for the claim).

A request then costs the lane, the caller's authentication, the body's decode and one dict
lookup: less Python than any design could have, the same Redis work as floor-lua. Its rate is
what no split of work between this service's Python and its current scripts can beat in
``make bench``'s setting. Not a target and not the service.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import cast

import hiredis
import msgspec

from api.asgi import Exchange, HotRoute
from api.http import Reply
from api.main import app_from_env as service_app
from api.routes import exp as exp_routes
from api.schemas.exp import gain_decoder
from bench import scenarios
from bench.baselines.bare import BODY
from bench.baselines.floor_lua import _OWNERS, floor_lua
from counters.exp.entities import Target
from counters.ids import random_hex
from counters.redis.codes import CreatorChain
from counters.redis.pipelining import RedisRefusal
from counters.runtime.services import Services

_BODY = msgspec.Raw(BODY)
_CHAIN = CreatorChain.CHAIN
# (user, body) -> ("plain", command) | ("rid", before the rid, after it) | ("two", claim, award)
_MEMO: dict[tuple[str, bytes], tuple[str, bytes, bytes]] = {}
_BUILT = [False]
_pack = cast(Callable[[tuple[object, ...]], bytes], hiredis.pack_command)


def build(svc: Services) -> int:
    """Pack every request of row 2's cycle into ``_MEMO``; returns how many."""
    exp, entities = svc.exp, svc.entities
    once_ttl = exp._creator._once_ttl
    encode = msgspec.json.encode
    for award in scenarios.gain_awards():
        user, name = award.user_id, award.action
        key = (user, encode(award.body()))
        action = exp.rules.actions[name]
        if award.target_type is None or award.target_id is None:
            _MEMO[key] = ("plain", exp.packed_award(user, name, action, None), b"")
            continue
        target = Target(award.target_type, award.target_id)
        if action.awards == "creator":
            rid = random_hex(16)
            owner = _OWNERS[str(target)]
            command = exp.packed_creator(owner, user, name, action, target, rid, once_ttl)
            at = command.index(rid.encode())
            _MEMO[key] = ("rid", command[:at], command[at + len(rid) :])
            continue
        claim = svc.scripts.command(
            *entities.assign_call(target, user, "claim", entities.may_create, 0)
        )
        own = exp._own_award(user, name, action, target, None)
        paid = svc.scripts.command(own.keys, own.call)
        _MEMO[key] = ("two", _pack(claim), _pack(paid))
    return len(_MEMO)


async def floor_memo(svc: Services, exchange: Exchange) -> Reply:
    """The request's packed command(s), then the fixed body (200)."""
    if not _MEMO:  # the worker's first requests: as floor-lua, then one build
        reply = await floor_lua(svc, exchange)
        if not _BUILT[0]:
            _BUILT[0] = True
            began = time.perf_counter()
            count = build(svc)
            took = time.perf_counter() - began
            print(f"floor-memo: {count} requests packed in {took:.2f} s", file=sys.stderr)
        return reply
    send = svc.scripts.send_packed
    assert send is not None, "floor-memo needs the single-node auto-pipeline"
    svc.auth.authenticate_raw(exchange.authorization, exchange.user_id)
    gain_decoder.decode(exchange.body)
    kind, first, second = _MEMO[(exchange.user_id or "", exchange.body)]
    try:
        if kind == "plain":
            await send(first)
        elif kind == "rid":
            reply = await send(b"".join((first, random_hex(16).encode(), second)))
            if reply[0] == _CHAIN:
                return await floor_lua(svc, exchange)
        else:
            claimed, paid = send(first), send(second)
            await claimed
            await paid
    except RedisRefusal:  # the library gone (NOSCRIPT): floor-lua's recovery (it raises others)
        return await floor_lua(svc, exchange)
    return 200, _BODY, None


def app_from_env() -> object:
    """Uvicorn factory (``bench.baselines.floor_memo:app_from_env``): the service's app, its
    gain route answered by ``floor_memo``."""
    route: HotRoute = exp_routes.hot_gain
    route.handler = floor_memo
    return service_app()
