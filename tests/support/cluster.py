"""Clients of the test's Redis whichever it is: one server, or the local cluster."""

from __future__ import annotations

from typing import cast

import redis
from redis.cluster import ClusterNode, RedisCluster

from counters.redis.cluster import is_cluster_url, parse_cluster_url


def sync_client(url: str) -> redis.Redis:
    """A synchronous client with decoded replies: ``redis.Redis`` for ``redis://``, a
    ``RedisCluster`` (typed as ``Redis``: same commands) for ``redis+cluster://``."""
    if not is_cluster_url(url):
        return redis.Redis.from_url(url, decode_responses=True)
    address = parse_cluster_url(url)
    cluster = RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in address.seeds],
        password=address.password,
        decode_responses=True,
        socket_timeout=5,
    )
    # Tests look for keys by pattern and count them: over every master, not one default node.
    cluster.command_flags = {
        **cluster.command_flags, "KEYS": RedisCluster.PRIMARIES, "DBSIZE": RedisCluster.PRIMARIES
    }  # fmt: skip
    return cast(redis.Redis, cluster)
