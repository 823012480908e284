"""The hot lane's floor: the service as ``counters serve`` serves it, with both hot routes'
handlers replaced by one that makes one Redis round trip (``PING`` through the auto-pipeline,
as an award's or a debit's one script call goes) and answers the bare route's fixed JSON.

Not a target: what HTTP in, the lane's own framing (headers read, request id, timer, metrics,
one write), one Redis round trip and HTTP out cost a request in this architecture with none of
the service's work (no authentication, no body decoded, no script, no result). ``python -m
bench.floor`` serves it beside bare and the service (README, Performance, "Ninth round").
"""

from __future__ import annotations

import msgspec

from api.asgi import Exchange, HotRoute
from api.http import Reply
from api.main import app_from_env as service_app
from api.routes import exp as exp_routes
from api.routes import xp as xp_routes
from bench.baselines.bare import BODY
from counters.runtime.services import Services

_BODY = msgspec.Raw(BODY)
_PING = b"*1\r\n$4\r\nPING\r\n"


async def floor(svc: Services, exchange: Exchange) -> Reply:
    """One round trip to Redis, then the fixed body (200, no extra headers)."""
    send = svc.scripts.send_packed
    assert send is not None, "the floor needs the single-node auto-pipeline"
    await send(_PING)
    return 200, _BODY, None


def app_from_env() -> object:
    """Uvicorn factory (``bench.baselines.floor:app_from_env``): the service's app, its hot
    routes answered by ``floor``."""
    route: HotRoute
    for route in (exp_routes.hot_gain, xp_routes.hot_debit):
        route.handler = floor
    return service_app()
