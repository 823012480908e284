"""Whether a Redis node refuses writes because its memory is full (for GET /readyz).

Under ``maxmemory-policy noeviction`` (what the service needs: README, Durability) a node whose
data reached ``maxmemory`` answers every write, every script included, with ``OOM command not
allowed when used memory > 'maxmemory'``: the service answers 503 ``storage_unavailable`` to
every write while PING, and so readiness, stayed fine. Redis's own rule (``performEvictions``
in evict.c): memory counted is ``used_memory`` less ``mem_not_counted_for_evict`` (replication
and AOF buffers), compared with ``maxmemory`` when it is not 0. Under an evicting policy Redis
frees memory instead (``/readyz`` reports that policy apart).

Read by ``/readyz`` only (INFO memory, one round trip per node), never on a request's path.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError


def refuses_writes(info: dict[str, Any]) -> bool:
    """Whether one node's ``INFO memory`` says it refuses writes for memory: ``noeviction``,
    ``maxmemory`` set, and the memory Redis counts above it."""
    limit = int(info.get("maxmemory", 0))
    if limit <= 0 or info.get("maxmemory_policy") != "noeviction":
        return False
    counted = int(info["used_memory"]) - int(info.get("mem_not_counted_for_evict", 0))
    return counted > limit


async def full_nodes(redis: Redis) -> list[str]:
    """The nodes that refuse writes for memory (by name, ``host:port``; ``""`` for a single
    Redis), sorted; ``[]`` when none does or a node refuses ``INFO`` (some managed Redis).
    Raises ``RedisError`` when a node does not answer."""
    try:
        if hasattr(redis, "get_primaries"):  # a cluster: every primary takes writes
            primaries = redis.get_primaries()
            reply: Any = await redis.info("memory", target_nodes=primaries)
            if "used_memory" in reply:  # one primary: its reply alone
                reply = {primaries[0].name: reply}
        else:
            reply = {"": await redis.info("memory")}
        return sorted(name for name, info in reply.items() if refuses_writes(info))
    except (ResponseError, KeyError, TypeError, ValueError):
        return []
