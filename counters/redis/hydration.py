"""Getting a user back into Redis after Redis lost them.

Every script that touches a user's totals receives ``may_create``. With no durable store it is
"1": a missing user is simply new. With a durable store it is "0": a missing user may be a user
Redis forgot (restart without persistence, failover, FLUSHALL), so the script answers
``NEEDS_HYDRATION``, the caller asks the ``Hydrator`` to load the user's totals, and runs the
script once more. Users Redis holds pay nothing: one round trip, as always.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from counters.errors import StorageError
from counters.redis.scripts import NEEDS_HYDRATION


class Hydrator(Protocol):
    @property
    def may_create(self) -> bool:
        """True when a user missing from Redis is a new user (no durable store)."""
        ...

    async def hydrate(self, user_id: str) -> None:
        """Load the user's durable totals into Redis unless Redis already has the user."""
        ...


class NoDurableStore:
    """Redis is the only store: a missing user is a new user."""

    may_create = True

    async def hydrate(self, user_id: str) -> None:
        raise StorageError(f"user {user_id} needs hydration but no durable store is configured")


def may_create_arg(hydrator: Hydrator) -> str:
    """The ``may_create`` argument every user-touching script takes."""
    return "1" if hydrator.may_create else "0"


async def run_hydrated(
    hydrator: Hydrator, user_id: str, call: Callable[[str], Awaitable[list[Any]]]
) -> list[Any]:
    """Run ``call(may_create)``; if the user must be hydrated first, hydrate and run it again.

    On the hot path ``call`` should be a plain function returning the script's awaitable, not a
    coroutine function: then this is the only frame between the caller and the reply."""
    reply = await call(may_create_arg(hydrator))
    if reply[0] == NEEDS_HYDRATION:
        await hydrator.hydrate(user_id)
        reply = await call(may_create_arg(hydrator))
        if reply[0] == NEEDS_HYDRATION:
            raise StorageError(f"user {user_id} is still missing after hydration")
    return reply
