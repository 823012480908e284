"""The shared thin probe's design served on this service's hot lane (issue #15).

``thin.py`` (``../shared/perf/thin``) runs under stock uvicorn's ASGI path; this service's hot
routes do not: they run on its own HTTP protocol and lane (README, Performance, "Seventh
round"), whose floor measured 1.22-1.56x the bare route (``bench/baselines/floor.py``). So thin
as the issue ran it is not the floor of this stack, and a gap between it and the service mixes
the two HTTP paths with the two divisions of labour. This target takes the HTTP path away: the
service as ``counters serve`` serves it, ``POST /api/exp/gain``'s handler replaced by thin's
work, step for step:

- the caller from a dict of the raw ``Authorization`` header bytes (thin's pre-filled token
  dict: the probe's token file, read from ``THIN_TOKENS`` once a worker; user ``u<line>``);
- the bucket tag from ``crc32(user) % 1024`` and three keys formatted;
- the request body handed as is to the probe's own ``award_reply.lua`` (read from the probe's
  directory, not copied) in one ``EVALSHA`` on the service's auto-pipeline;
- the status and the body bytes the script returned, sent as they are.

The lane's framing stays as served (request id, the route's timer and metrics, one write), so
the difference from ``floor`` is thin's Python and its script's cost in Redis, and the
difference from ``gain`` is this service's division of labour and contract against thin's.
Not a target and not the service: no validation, idempotency, ownership, hydration, ledger
fields or leaderboards. ``bench.wrk_probe`` serves it as ``thin-lane``.
"""

from __future__ import annotations

import hashlib
import os
import zlib
from typing import Any

import hiredis
import msgspec

from api.asgi import Exchange
from api.http import Reply
from api.main import app_from_env as service_app
from api.routes import exp as exp_routes
from bench.baselines.thin import thin_dir
from counters.redis.pipelining import RedisRefusal
from counters.redis.scripts import _is_missing
from counters.runtime.services import Services

_UNAUTHENTICATED = msgspec.Raw(b'{"detail":"Not authenticated"}')
_DAY_TTL = b"90000"  # the probe's ARGV[3]
_DAY = "20261130"  # the probe's day key, as thin.py has it


class ThinOnLane:
    """The probe's handler for the hot lane: ``tokens`` maps ``b"Bearer <token>"`` to a user
    id; ``script`` is ``award_reply.lua``'s source (loaded into Redis whenever Redis answers
    NOSCRIPT: on the first call, and after a flush or a restart)."""

    def __init__(self, tokens: dict[bytes, bytes], script: str) -> None:
        self.tokens = tokens
        self.script = script.encode()
        self.sha = hashlib.sha1(self.script).hexdigest().encode()

    async def __call__(self, svc: Services, exchange: Exchange) -> Reply:
        """401 for an unknown token; else the script's ``{status, body}`` as the reply."""
        user = self.tokens.get(exchange.authorization or b"")
        if user is None:
            return 401, _UNAUTHENTICATED, None
        return await self.award(svc, user, exchange.body)

    async def award(self, svc: Services, user: bytes, body: bytes) -> Reply:
        """thin's work once the caller is known: ``body`` to the script, its reply back
        (``bench.hot_split``'s ``thin-lane`` step calls it with the service key's user)."""
        send = svc.scripts.send_packed
        assert send is not None, "thin on the lane needs the single-node auto-pipeline"
        tag = b"{b%d}" % (zlib.crc32(user) % 1024)
        command = hiredis.pack_command((
            b"EVALSHA", self.sha, b"3", b"ctr:%s:user:%s" % (tag, user),
            b"ctr:%s:day:%s:%s" % (tag, _DAY.encode(), user), b"ctr:%s:events" % tag,
            user, body, _DAY_TTL,
        ))  # fmt: skip
        try:
            reply: Any = await send(command)
        except RedisRefusal as exc:
            if not _is_missing(exc):  # the project's own test for a script Redis lost
                raise
            await send(hiredis.pack_command((b"SCRIPT", b"LOAD", self.script)))
            reply = await send(command)
        status, payload = reply
        return int(status), msgspec.Raw(payload), None


def read_tokens(path: str) -> dict[bytes, bytes]:
    """The probe's token dict: line i of the file is user ``u<i>``'s bearer token."""
    with open(path, "rb") as lines:
        return {b"Bearer " + line.strip(): b"u%d" % i for i, line in enumerate(lines)}


def app_from_env() -> object:
    """Uvicorn factory (``bench.baselines.thin_lane:app_from_env``): the service's app with
    ``POST /api/exp/gain`` answered by ``ThinOnLane``. Needs ``THIN_TOKENS`` (the probe's token
    file) and the probe's directory (``COUNTERS_THIN_DIR``); raises ``RuntimeError`` without
    the probe."""
    where = thin_dir()
    if where is None:
        raise RuntimeError("the shared thin probe (thin.py) is not found: set COUNTERS_THIN_DIR")
    script = (where / "award_reply.lua").read_text()
    exp_routes.hot_gain.handler = ThinOnLane(read_tokens(os.environ["THIN_TOKENS"]), script)
    return service_app()
