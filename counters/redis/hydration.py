"""Getting a user back into Redis after Redis lost them.

Every script that touches a user's totals receives ``may_create``. With no durable store it is
"1": a missing user is simply new. With a durable store it is "0": a missing user is new only if
the user's bucket is complete (``ctr:{bN}:meta``, ``lua/lib/bucket.lua``: Redis holds every user
of the bucket Postgres knows, decided inside the script); otherwise it may be a user Redis forgot
(restart without persistence, failover, FLUSHALL), so the script answers ``NEEDS_HYDRATION``, the
caller asks the ``Hydrator`` to load the user, and runs the script once more. Users Redis holds
pay nothing: one round trip, as always.

A complete bucket speaks for its users only while Redis evicts nothing (``may_create_code``, set
by the background check of every node's ``maxmemory-policy``, ``persistence/restore.py``): an
evicted user would otherwise come back empty. Meanwhile ``may_create`` is "2": a missing user is
always hydrated, as in an incomplete bucket (issue #11).

``may_create`` is a field of each user-touching script's call (``counters/redis/calls.py``),
filled in from ``may_create_arg`` when the call is built: it depends on the store and the last
policy check, never on the attempt, and costs no round trip.
"""

from __future__ import annotations

from typing import Any, Protocol

from counters.errors import StorageError
from counters.redis.calls import Call, Keys
from counters.redis.codes import Hydration
from counters.redis.pipelining import RedisRefusal
from counters.redis.scripts import Scripts

_NEEDS_HYDRATION = Hydration.NEEDS_HYDRATION


class Hydrator(Protocol):
    @property
    def may_create(self) -> bool:
        """True when a user missing from Redis is a new user (no durable store)."""
        ...

    @property
    def may_create_code(self) -> str:
        """``may_create_arg``'s answer, kept current by whoever learns the eviction policy (a
        string read per call: nothing computed on the hot path)."""
        ...

    async def hydrate(self, user_id: str) -> None:
        """Load the user's durable totals into Redis unless Redis already has the user."""
        ...


class NoDurableStore:
    """Redis is the only store: a missing user is a new user."""

    may_create = True
    may_create_code = "1"

    async def hydrate(self, user_id: str) -> None:
        raise StorageError(f"user {user_id} needs hydration but no durable store is configured")


def may_create_arg(hydrator: Hydrator) -> str:
    """The ``may_create`` argument every user-touching script takes (``lua/lib/bucket.lua``):
    "1" with no durable store; "0" (a missing user is new in a complete bucket) while Redis
    evicts nothing; else "2" (a missing user is always hydrated)."""
    return hydrator.may_create_code


async def run_hydrated(
    hydrator: Hydrator, scripts: Scripts, user_id: str, keys: Keys, call: Call
) -> list[Any]:
    """Run the call; if the user must be hydrated first, hydrate and run it once more.

    The hot lane's one await: the script's reply future itself (``Scripts.run``'s steps,
    inlined: no coroutine between the request and the reply)."""
    command = scripts.command(keys, call)
    try:
        reply: list[Any] = await scripts.send(command)
    except RedisRefusal as exc:
        reply = await scripts.refused(call, command, exc)
    if reply[0] == _NEEDS_HYDRATION:
        reply = await hydrate_and_run(hydrator, scripts, user_id, keys, call)
    return reply


async def hydrate_and_run(
    hydrator: Hydrator, scripts: Scripts, user_id: str, keys: Keys, call: Call
) -> list[Any]:
    """After the call answered ``NEEDS_HYDRATION``: hydrate the user and run it once more
    (``StorageError`` if the user is still missing)."""
    await hydrator.hydrate(user_id)
    reply = await scripts.run(keys, call)
    if reply[0] == _NEEDS_HYDRATION:
        raise StorageError(f"user {user_id} is still missing after hydration")
    return reply
