"""The hot lane's floor with the service's own Redis work and its command packing: the service
less its result, reply, idempotency and metrics Python, in ``make bench``'s setting (issue #15).

``bench/baselines/floor.py`` answers with one ``PING``: it measures HTTP and the lane, not the
work. This baseline sends the very command the service sends for each request of row 2's mix,
packed by the service's own packers, and runs the real scripts, so Redis does exactly the
service's work (the award, the ledger event, the leaderboards, the creator protocol's
once-per-actor record and the owner's limits) and the Python does little around it:

- the caller: ``Auth.authenticate_raw`` (a dict lookup of the raw header, as served);
- the body decoded by the route's own msgspec decoder (any design hands Redis the action);
- an award to oneself: ``ExpService.packed_award``, one auto-pipelined script call;
- a like or a fork: ``ExpService.packed_creator`` (lua/creator_award.lua, the one-script
  shortcut the service takes on one node), its owner from the run's seed (the service reads it
  once per entity, then keeps it as a hint); when the shortcut leaves it to the chain (a
  repeat: row 2's 100k-request cycle wraps within a run at these rates), the chain's scripts
  as the service runs them next (``CreatorAwards._reserve_and_pay``, then its settle);
- a service's ``create_*`` naming its new entity: the service's own ``ExpService.award``
  (its claim, then the award: two round trips, as served; 10% of the mix). That is the
  service's whole Python for those requests (checks, typed commands, result, award metrics):
  ~35 us in process against ~12 for a packed self-award, so this floor's Python is not the
  least a split could have (a review's ``floor-memo``, every command packed ahead, ran ~1.14x
  it);
- then the bare route's fixed body: no reply parsed, no body encoded, no idempotency, no
  metrics beyond the lane's timer.

So ``floor-lua`` against ``floor`` is the Redis work's price with the packing's, and ``gain``
against ``floor-lua`` is what the service's result, reply and bookkeeping add. The bound on
every split of work with these scripts is ``floor-memo`` (``bench/baselines/floor_memo.py``),
not this (README, Performance, "Twelfth round"). Not a target and not the service.
"""

from __future__ import annotations

import msgspec

from api.asgi import Exchange, HotRoute
from api.http import Reply
from api.main import app_from_env as service_app
from api.routes import exp as exp_routes
from api.schemas.exp import gain_decoder
from bench import scenarios
from bench.baselines.bare import BODY
from counters.exp.creator import _UNKEYED, _Award
from counters.exp.entities import Target
from counters.ids import random_hex
from counters.redis.codes import CreatorChain
from counters.redis.pipelining import RedisRefusal
from counters.redis.scripts import _is_missing
from counters.runtime.services import Services

_BODY = msgspec.Raw(BODY)
_CHAIN = CreatorChain.CHAIN
# "<type>:<id>" -> owner, as the run seeds them (bench.direct.seed_owners)
_OWNERS = {f"{kind}:{id_}": owner for kind, id_, owner in scenarios.owned_entities()}


async def floor_lua(svc: Services, exchange: Exchange) -> Reply:
    """The service's script command(s) for this request, then the fixed body (200)."""
    send = svc.scripts.send_packed
    assert send is not None, "floor-lua needs the single-node auto-pipeline"
    caller = svc.auth.authenticate_raw(exchange.authorization, exchange.user_id)
    req = gain_decoder.decode(exchange.body)
    exp = svc.exp
    action = exp.rules.actions[req.action]
    user = caller.user_id
    target = None if req.target_id is None else Target(str(req.target_type), req.target_id)
    try:
        if target is None:
            await send(exp.packed_award(user, req.action, action, None))
        elif action.awards == "creator":
            owner = _OWNERS[str(target)]
            if owner != user:
                rid = random_hex(16)
                once_ttl = exp._creator._once_ttl  # the service's, from its rules
                reply = await send(
                    exp.packed_creator(owner, user, req.action, action, target, rid, once_ttl)
                )
                if reply[0] == _CHAIN:  # a repeat (row 2's cycle wraps within a run): the
                    # service's next step, the chain (reserve; pay and settle unless refused)
                    award = _Award(user, req.action, action, target)
                    _, settle = await exp._creator._reserve_and_pay(
                        award, random_hex(16), _UNKEYED, ""
                    )
                    await settle
        else:
            await exp.award(caller, req.action, target, None)
    except RedisRefusal as exc:
        if not _is_missing(exc):  # only the library not loaded yet (NOSCRIPT, Function not
            raise  # found) is recovered, as the service does; any other refusal is an error
        exp.forget_packers()  # the service's own recovery
        await exp.award(caller, req.action, target, None)
    return 200, _BODY, None


def app_from_env() -> object:
    """Uvicorn factory (``bench.baselines.floor_lua:app_from_env``): the service's app, its gain
    route answered by ``floor_lua``."""
    route: HotRoute = exp_routes.hot_gain
    route.handler = floor_lua
    return service_app()
