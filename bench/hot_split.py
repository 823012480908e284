"""Where a hot gain request's in-process CPU goes: the lane measured with less and less cut off.

``python -m bench.hot_split [requests [rounds]]``: ``bench.hot_cost``'s harness (the app in
this process on a throwaway Redis, uvloop, 64 requests in flight, the 10th percentile over
256-request batches of the thread's CPU per request), ``daily_chat`` awards sent with the
service key, with ``POST /api/exp/gain``'s handler replaced in turn by one that stops earlier:

- ``lane``: a constant reply (the harness, ``CountersApp``, ``HotRoute.serve``, the encoder);
- ``+ auth, decode``: the caller authenticated (token cache) and the body decoded;
- ``+ call built``: the award_exp command built (packed from the day's segments,
  ``counters.exp.packed``), not sent;
- ``+ PING``: instead of the call, one PING on the auto-pipeline (a round trip's own cost);
- ``+ script run``: the command sent and its reply awaited, nothing made of it;
- ``+ result``: ``ExpService.award`` whole (the reply decoded, the metrics counted);
- ``real``: the route as served (the reply body built and encoded);
- ``thin-lane`` (with the shared thin probe on this machine): the probe's handler on the lane
  (``bench/baselines/thin_lane.py``: the body to ``award_reply.lua``, its bytes back), the
  caller taken from the service key's ``X-User-Id`` rather than thin's token dict. What our
  gain adds to thin's design is ``real`` less this, not less ``lane``: thin pays a round trip,
  a CRC and a packed command too.

Each step runs ``rounds`` times (default 3), the steps alternated; the least of its rounds is
printed (other work on the machine only adds). Each difference is what that step adds. The
round trip's share depends on how fast Redis answers (replies that trickle in wake the loop
more often), which this harness, idle while Redis works, shows more than a saturated server
does. Reported, never asserted.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import uvloop

import api.routes.exp as exp_routes
from api.asgi import Exchange
from api.http import Reply, decode
from api.schemas.exp import gain_decoder
from bench import direct, hot_cost, scenarios
from bench.baselines.thin import thin_dir
from bench.baselines.thin_lane import ThinOnLane
from bench.metrics_cost import _asgi
from counters.cli.embedded import RedisServer
from counters.redis.pipelining import RedisRefusal
from counters.runtime.services import Services

Handler = Callable[[Services, Exchange], Awaitable[Reply]]
_OK: Reply = (200, {"ok": True}, None)


def _handler(stop: str) -> Handler:
    async def handler(svc: Services, exchange: Exchange) -> Reply:
        if stop == "lane":
            return _OK
        caller = svc.auth.authenticate_raw(exchange.authorization, exchange.user_id)
        req = decode(exchange.body, gain_decoder)
        if stop == "+ auth, decode":
            return _OK
        if stop == "+ PING":
            await svc.scripts.send(("PING",))
            return _OK
        if stop == "+ result":
            await svc.exp.award(caller, req.action, None, None)
            return _OK
        action = svc.exp.action(req.action)
        packed = svc.exp.packed_award(caller.user_id, req.action, action, None)
        send = svc.scripts.send_packed
        if stop == "+ script run" and send is not None:
            try:
                await send(packed)
            except RedisRefusal:  # the library not loaded yet (a flushed Redis): the typed
                await svc.exp.award(caller, req.action, None, None)  # call loads it, once
        return _OK

    return handler


class _ThinStep:
    """thin on the lane's work for a service-key request: its user from ``X-User-Id``."""

    def __init__(self, thin: ThinOnLane) -> None:
        self.thin = thin

    async def __call__(self, svc: Services, exchange: Exchange) -> Reply:
        return await self.thin.award(svc, (exchange.user_id or "").encode(), exchange.body)


def thin_handler() -> Handler | None:
    """The ``thin-lane`` step's handler, or None without the shared thin probe."""
    where = thin_dir()
    if where is None:
        return None
    return _ThinStep(ThinOnLane({}, (where / "award_reply.lua").read_text()))


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 12_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    awards = scenarios.gain_awards()
    daily = [award for award in awards if award.action == "daily_chat"][:count]
    calls = [_asgi(raw) for raw in scenarios.gain_requests(daily)]
    real = exp_routes.hot_gain.handler
    stops = ["lane", "+ auth, decode", "+ call built", "+ PING", "+ script run", "+ result"]
    steps = [(stop, _handler(stop)) for stop in stops] + [("real", real)]
    thin = thin_handler()
    if thin is not None:
        steps.append(("thin-lane", thin))
    seen: dict[str, list[float]] = {name: [] for name, _ in steps}
    with (
        tempfile.TemporaryDirectory() as tmp,
        RedisServer(Path(tmp) / "redis", persistent=False) as server,
    ):
        try:
            for _ in range(rounds):  # the steps alternated, so load drifts hit them alike
                for name, handler in steps:
                    direct.restore(server.url, [])
                    exp_routes.hot_gain.handler = handler
                    seen[name].append(
                        uvloop.run(hot_cost.measure(server.url, "/api/exp/gain", calls, False))
                    )
        finally:
            exp_routes.hot_gain.handler = real
    for name, values in seen.items():
        shown = ", ".join(f"{v:.1f}" for v in values)
        print(f"{name:16} {min(values):6.1f} us/request (least of {shown})")


if __name__ == "__main__":
    main()
