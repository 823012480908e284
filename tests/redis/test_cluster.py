"""The cluster transport (counters/redis/cluster.py) on the suite's real local cluster: the seed
URL, routing by slot, MOVED and ASK followed, SCRIPT LOAD and FUNCTION LOAD on every master, a
dead seed skipped; and the cluster flusher's polling cost with 1,024 buckets
(persistence/cluster_flusher.py)."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import replace
from pathlib import Path

import pytest
import redis

from api.app import create_app
from counters.cli import cluster as cluster_module
from counters.cli.cluster import LocalCluster
from counters.cli.embedded import RedisServer, free_port
from counters.cli.state import redact
from counters.clock import ManualClock
from counters.errors import ConfigError
from counters.redis.cluster import (
    ClusterPipeline,
    first_key,
    is_cluster_url,
    parse_cluster_url,
    slot_of,
)
from counters.redis.keys import bucket_of
from counters.runtime.services import connect_redis
from counters.settings import Settings
from persistence.cluster_flusher import ClusterFlusher
from persistence.store import Store
from tests.support.core import user_headers
from tests.support.http import asgi_client
from tests.support.persistence import fetch, flusher

pytestmark = pytest.mark.anyio
on_the_cluster = pytest.mark.parametrize("redis_backend", ["cluster"], indirect=True)


def test_the_seed_url_is_read_strictly() -> None:
    address = parse_cluster_url("redis+cluster://:s%40cret@10.0.0.1:7000,10.0.0.2:7001")
    assert address.seeds == (("10.0.0.1", 7000), ("10.0.0.2", 7001))
    assert (address.username, address.password, address.tls) == (None, "s@cret", False)
    assert parse_cluster_url(address.url()) == address
    assert parse_cluster_url("rediss+cluster://app:pw@h:1").tls
    assert is_cluster_url("redis+cluster://h:1") and not is_cluster_url("redis://h:1/0")
    for bad in ("redis://h:1", "redis+cluster://", "redis+cluster://h", "redis+cluster://h:0",
                "redis+cluster://h:1/2",
                "redis+cluster://h:\u00b2",  # a superscript two: was a ValueError traceback
                "redis+cluster://h:\u0667\u0660\u0660\u0660"):  # fmt: skip
        with pytest.raises(ConfigError, match="COUNTERS_REDIS_URL"):
            parse_cluster_url(bad)
    assert "s%40cret" not in redact("redis+cluster://:s%40cret@10.0.0.1:7000,10.0.0.2:7001")


def test_a_script_is_routed_by_its_first_key() -> None:
    assert first_key(("EVALSHA", "abc", 2, "ctr:{b3}:user:u", "ctr:{b3}:x", "arg")) == (
        "ctr:{b3}:user:u"
    )
    assert first_key(("EVALSHA", "abc", 0)) is None
    assert first_key(("GET", "ctr:{b3}:user:u")) == "ctr:{b3}:user:u"
    assert slot_of("ctr:{b3}:user:u") == slot_of("{b3}") == slot_of(b"x{b3}y")


def _owner(cluster: LocalCluster, slot: int) -> tuple[RedisServer, str]:
    for server in cluster.servers[: cluster.masters]:
        client = cluster.client(server)
        try:
            mine = client.execute_command("CLUSTER", "MYID")  # type: ignore[no-untyped-call]
            slots = client.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
        finally:
            client.close()
        if any(a <= slot <= b and o[2] == mine for a, b, o, *_ in slots):
            return server, mine
    raise AssertionError(slot)


def _cmd(client: redis.Redis, *args: object) -> object:
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


@on_the_cluster
async def test_calls_follow_ask_then_moved_when_a_slot_migrates(
    redis_cluster: LocalCluster, redis_url: str
) -> None:
    del redis_url  # emptied
    cluster = redis_cluster
    pipeline = ClusterPipeline(cluster.url, timeout=5)
    try:
        keys = [f"ctr:{{b{i}}}:probe" for i in range(40)]
        assert await pipeline.execute_many([("SET", k, i) for i, k in enumerate(keys)]) == (
            ["OK"] * 40
        )
        assert len(pipeline.masters()) == 3
        key = keys[0]
        slot = slot_of(key)
        source, source_id = _owner(cluster, slot)
        masters = cluster.servers[: cluster.masters]
        target = masters[(masters.index(source) + 1) % len(masters)]
        src, dst = cluster.client(source), cluster.client(target)
        try:
            target_id = _cmd(dst, "CLUSTER", "MYID")
            _cmd(dst, "CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
            _cmd(src, "CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
            _cmd(src, "MIGRATE", "127.0.0.1", target.port, "", 0, 5000,
                 "AUTH", cluster.password, "KEYS", key)  # fmt: skip
            # The key is on the target, the slot still the source's: ASK, then ASKING there.
            assert await pipeline.execute("GET", key) == "0"
            assert await pipeline.execute("SET", key, "asked") == "OK"
            for server in masters:
                client = cluster.client(server)
                _cmd(client, "CLUSTER", "SETSLOT", slot, "NODE", target_id)
                client.close()
        finally:
            src.close()
            dst.close()
        # The slot map still names the source: MOVED, the map refreshed, the call sent again.
        assert await pipeline.execute("GET", key) == "asked"
        await asyncio.sleep(0.3)  # the background refresh
        assert pipeline._slots[slot] == ("127.0.0.1", target.port)
        # SCRIPT LOAD reaches every master: EVALSHA then runs wherever a key lives.
        sha = await pipeline.execute("SCRIPT", "LOAD", "return KEYS[1]")
        replies = await pipeline.execute_many([("EVALSHA", sha, 1, k) for k in keys])
        assert replies == keys
        # So does FUNCTION LOAD: FCALL then runs wherever a key lives, routed by its first key.
        library = (
            "#!lua name=routed\nredis.register_function('routed', function(k) return k[1] end)"
        )
        assert await pipeline.execute("FUNCTION", "LOAD", "REPLACE", library) == "routed"
        replies = await pipeline.execute_many([("FCALL", "routed", 1, k) for k in keys])
        assert replies == keys
    finally:
        await pipeline.aclose()


@on_the_cluster
async def test_a_dead_seed_is_skipped(redis_cluster: LocalCluster, redis_url: str) -> None:
    dead = f"127.0.0.1:{free_port()}"
    url = redis_url.replace("@", f"@{dead},", 1)
    pipeline = ClusterPipeline(url, timeout=2)
    try:
        assert await pipeline.execute("SET", "ctr:{b1}:x", "1") == "OK"
    finally:
        await pipeline.aclose()


@on_the_cluster
async def test_the_cluster_flusher_polls_idle_buckets_rarely(
    redis_cluster: LocalCluster, redis_url: str
) -> None:
    """With 1,024 buckets and nothing to flush, 20 blocking reads within one sweep interval
    send one sweep of XREADGROUPs (1,024), not one per stream per read."""
    redis_client = connect_redis(redis_url, 4, timeout=5)
    try:
        flusher = ClusterFlusher(
            redis_client, Store.__new__(Store), buckets=1_024, sweep_seconds=600.0,
            idle_poll_seconds=0.01,
        )  # fmt: skip
        await flusher.ensure_groups()
        flusher._own_pending_first = False
        flusher._next_claim = float("inf")
        reads = 0
        async with asyncio.timeout(30):
            while reads < 20:
                assert await flusher.flush_once(block=True) == 0
                reads += 1
        assert flusher.polls == 1_024
    finally:
        await redis_client.aclose()


@pytest.mark.parametrize("redis_backend", ["single", "cluster"], indirect=True)
async def test_1024_buckets_award_and_ledger_on_both(
    durable_settings: Settings, clock: ManualClock
) -> None:
    """With 1,024 buckets (users spread over many slots, on every master of the cluster), awards
    answer, and one drain ledgers each exactly once with the totals Redis holds."""
    app = create_app(replace(durable_settings, key_buckets=1_024), clock=clock)
    users = [f"wide{n}" for n in range(60)]
    async with app.router.lifespan_context(app), asgi_client(app) as http:
        for user in users:
            response = await http.post(
                "/api/exp/gain", json={"action": "daily_chat"}, headers=user_headers(user)
            )
            assert response.status_code == 200, response.text
        assert len({bucket_of(u, 1_024) for u in users}) > 40
        assert await flusher(app).drain() >= len(users)
        rows = await fetch(app, "SELECT user_id, amount FROM ledger ORDER BY user_id")
    assert sorted(r["user_id"] for r in rows) == sorted(users)
    assert {r["amount"] for r in rows} == {20}  # daily_chat in the shipped rules


def test_the_local_cluster_starts_again_after_its_nodes_left_rdb_files(tmp_path: Path) -> None:
    """A failover makes the old master full-sync from its replica: an RDB on disk although the
    local cluster keeps nothing. At the next start that node loaded its keys, claimed their
    slots, and forming the new cluster failed ("Slot N is already busy", an attacker found)."""
    first = LocalCluster(tmp_path / "cluster", masters=3, replicas_per_master=0)
    with first:
        node = first.client(first.servers[0])
        key = next(k for k in (f"k{n}" for n in range(1_000)) if slot_of(k) < 5_000)  # node0's
        node.set(key, "1")
        node.save()  # what a full sync leaves behind
        node.close()
    assert list((tmp_path / "cluster" / "node0").glob("*.rdb"))
    again = LocalCluster(tmp_path / "cluster", masters=3, replicas_per_master=0)
    with again:
        info = again.client(again.servers[0]).execute_command("CLUSTER", "INFO")  # type: ignore[no-untyped-call]
        assert "cluster_state:ok" in str(info)
        assert again.client(again.servers[0]).get(key) is None  # a new cluster: nothing kept


def test_cluster_ports_and_their_bus_ports_stay_below_the_ephemeral_range() -> None:
    """A CI run lost a node: its bus port (port + 10,000) was in the kernel's ephemeral range,
    and an outgoing connection took it between the check and the node's bind."""
    low = cluster_module._ephemeral_low()
    ports = {cluster_module._cluster_port(set()) for _ in range(200)}
    assert all(p >= 10_000 and p + 10_000 < low for p in ports)


def test_a_new_node_whose_bus_port_is_taken_gets_another_pair(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pair is checked, then taken by someone else before redis-server binds it: the node
    fails ("Failed listening on port ... (cluster)") and gets a new pair, not a failed start."""
    real = cluster_module._cluster_port
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken_bus = squatter.getsockname()[1]
    picks: list[int] = []

    def first_taken(taken: set[int]) -> int:
        port = taken_bus - 10_000 if not picks else real(taken | {taken_bus - 10_000})
        picks.append(port)
        return port

    monkeypatch.setattr(cluster_module, "_cluster_port", first_taken)
    try:
        with LocalCluster(tmp_path / "cluster", masters=3, replicas_per_master=0) as cluster:
            assert taken_bus - 10_000 not in {s.port for s in cluster.servers}
            assert len(picks) == 4  # three nodes, one of them twice
            info = cluster.client(cluster.servers[0]).execute_command("CLUSTER", "INFO")  # type: ignore[no-untyped-call]
            assert "cluster_state:ok" in str(info)
    finally:
        squatter.close()


def test_a_new_node_whose_own_port_is_taken_gets_another_pair(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As above, but the node's own port is the one taken before the start: the start's own
    check refuses it ("127.0.0.1:p is already in use"), before redis-server runs; the node gets
    a new pair all the same (it failed the cluster's start)."""
    real = cluster_module._cluster_port
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", real(set())))
    squatter.listen()
    taken = squatter.getsockname()[1]
    picks: list[int] = []

    def first_taken(ports: set[int]) -> int:
        port = taken if not picks else real(ports | {taken})
        picks.append(port)
        return port

    monkeypatch.setattr(cluster_module, "_cluster_port", first_taken)
    try:
        with LocalCluster(tmp_path / "cluster", masters=3, replicas_per_master=0) as cluster:
            assert taken not in {s.port for s in cluster.servers}
            assert len(picks) == 4  # three nodes, one of them twice
            info = cluster.client(cluster.servers[0]).execute_command("CLUSTER", "INFO")  # type: ignore[no-untyped-call]
            assert "cluster_state:ok" in str(info)
    finally:
        squatter.close()


def test_a_pair_never_overlaps_the_pairs_already_picked() -> None:
    """Every node's port is picked before any node starts, so the check that a port is free
    cannot see another node's pair: node B's bus port (p + 10,000) could be node A's port, and
    whichever started second failed. A pick leaves out the ports and bus ports of ``taken``."""
    taken = {cluster_module._cluster_port(set()) for _ in range(200)}
    busy = taken | {p + 10_000 for p in taken}
    for _ in range(5_000):
        port = cluster_module._cluster_port(taken)
        assert port not in busy and port + 10_000 not in busy
