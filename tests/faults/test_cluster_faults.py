"""The fault suite on a Redis Cluster (issue #12): ``counters serve`` on a local cluster of its
own (3 masters, each with a replica) under the recorded load of ``tests/faults/harness.py``,
then its oracle: nothing acknowledged lost, nothing applied twice, limits and balances exact.

Faults: a master stalled (SIGSTOP; prompt 503s for its users only), the load's slots migrated to
another master while it runs (CLUSTER SETSLOT IMPORTING/MIGRATING, MIGRATE in small batches, so
calls meet ASK and TRYAGAIN, then MOVED), and a master SIGKILLed with its replica promoted.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx2
import pytest

from counters.cli.cluster import LocalCluster
from counters.cli.embedded import PostgresServer, RedisServer
from counters.redis.cluster import slot_of
from counters.redis.keys import bucket_of, bucket_tag
from counters.settings import DEFAULT_KEY_BUCKETS
from tests.faults.harness import (
    Load,
    Serve,
    check,
    counters_command,
    fault_rules,
    paused,
    rules_of,
)
from tests.faults.test_faults import _create_database
from tests.support.core import JWT_SECRET, SERVICE_KEY
from tests.support.persistence import run_sync

pytestmark = pytest.mark.anyio

LOAD_SECONDS = 1.0
PROMPT = 2.0  # no answer may take longer (Redis timeout 0.5 s per node)
BUCKETS = DEFAULT_KEY_BUCKETS  # serve runs with the default; said explicitly in env()


@dataclass
class ClusterStack:
    cluster: LocalCluster
    postgres: PostgresServer
    rules: Path
    tmp: Path

    @property
    def direct_db(self) -> str:
        return f"postgresql://counters:{self.postgres.password}@127.0.0.1:{self.postgres.port}/cluster_faults"

    def env(self, **extra: str) -> dict[str, str]:
        base = {
            "COUNTERS_REDIS_URL": self.cluster.url,
            "COUNTERS_KEY_BUCKETS": str(BUCKETS),
            "COUNTERS_DATABASE_URL": self.direct_db,
            "COUNTERS_JWT_SECRET": JWT_SECRET,
            "COUNTERS_SERVICE_KEYS": SERVICE_KEY,
            "COUNTERS_RULES": str(self.rules),
            "COUNTERS_FLUSH_CLAIM_IDLE_MS": "1000",
            "COUNTERS_FLUSH_BACKOFF_MAX_SECONDS": "0.5",
            "COUNTERS_FLUSH_BLOCK_MS": "100",
            "COUNTERS_DATA_DIR": str(self.tmp),
        }
        return {**base, **extra}

    def master_of(self, user: str) -> RedisServer:
        """The node serving ``user``'s bucket now."""
        slot = slot_of(f"{bucket_tag(bucket_of(user, BUCKETS))}:user:{user}")
        for server in self.cluster.servers:
            if not server._running():
                continue
            client = self.cluster.client(server)
            try:
                if client.info("replication").get("role") != "master":
                    continue
                owned = client.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
            finally:
                client.close()
            for start, end, owner, *_ in owned:
                if start <= slot <= end and int(owner[1]) == server.port:
                    return server
        raise AssertionError(f"no master serves slot {slot}")


@pytest.fixture(scope="module")
def cstack(
    tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer
) -> Iterator[ClusterStack]:
    """A cluster of the module's own (its masters get killed), a fresh database."""
    tmp = tmp_path_factory.mktemp("cluster-faults")
    postgres_server.start()
    admin = postgres_server.url.rsplit("/", 1)[0] + "/postgres"
    run_sync(_create_database(admin, "cluster_faults"))
    cluster = LocalCluster(tmp / "cluster", node_timeout_ms=1_000)
    cluster.start()
    yield ClusterStack(cluster, postgres_server, fault_rules(tmp), tmp)
    cluster.stop()


@pytest.fixture(scope="module")
def cserve(cstack: ClusterStack) -> Iterator[Serve]:
    server = Serve(cstack.env(), cstack.tmp / "serve.log")
    server.start()
    yield server
    server.stop()


def users(prefix: str, n: int = 12) -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


async def finish(load: Load, stack: ClusterStack) -> None:
    """Retry every request with its key, reconcile (exit 0, after draining), check."""
    await load.retry_all()
    env = stack.env(COUNTERS_FLUSH_CLAIM_IDLE_MS="0")
    code = await anyio.to_thread.run_sync(lambda: counters_command(["reconcile"], env))
    assert code == 0, "counters reconcile found drift"
    verdict = await check(load, stack.direct_db, rules_of(stack.rules))
    assert verdict.acknowledged > 0 and verdict.ledgered > 0
    assert verdict.slowest < PROMPT, f"an answer took {verdict.slowest:.2f}s"


async def test_a_stalled_master_gives_prompt_503s_to_its_users_only(
    cstack: ClusterStack, cserve: Serve
) -> None:
    load = Load(cserve.url, users("st"), seed=11)
    await load.warm()
    stalled = cstack.master_of(load.users[0])
    theirs = {u for u in load.users if cstack.master_of(u) is stalled}
    running = asyncio.create_task(load.run(LOAD_SECONDS + 0.8))
    await asyncio.sleep(LOAD_SECONDS)
    # shorter than the 1 s node timeout: no failover
    stopped_at, resumed_at = await paused(stalled, 0.7)
    await running
    refused = [c for c in load.calls if c.status == 503]
    assert refused, "no request noticed that a master stalled"
    assert all(c.retry_after for c in refused)
    assert {c.user for c in refused} <= theirs, "a user of another master got a 503"
    others = [
        c for c in load.calls
        if c.user not in theirs and stopped_at <= c.sent_at < resumed_at - 0.1
    ]  # fmt: skip
    bad = [(c.user, c.status, c.reply) for c in others if c.status is None or c.status >= 500]
    assert others and not bad, f"the other masters stopped serving: {bad[:3]}"
    assert all(c.status is not None for c in load.calls), "a request got no answer"
    await finish(load, cstack)


def _reshard(stack: ClusterStack, slots: list[int], pause: float) -> None:
    """Move ``slots`` to another master, the keys a few at a time (``pause`` between batches:
    the load meets ASK and TRYAGAIN), as ``redis-cli --cluster reshard`` does."""
    cluster = stack.cluster
    password = cluster.password
    masters = [s for s in cluster.servers[: cluster.masters]]
    for slot in slots:
        source = next(
            s for s in masters
            if any(a <= slot <= b for a, b, *_ in _slots_of(cluster, s))
        )  # fmt: skip
        target = masters[(masters.index(source) + 1) % len(masters)]
        src, dst = cluster.client(source), cluster.client(target)
        try:
            src_id = src.execute_command("CLUSTER", "MYID")  # type: ignore[no-untyped-call]
            dst_id = dst.execute_command("CLUSTER", "MYID")  # type: ignore[no-untyped-call]
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)  # type: ignore[no-untyped-call]
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)  # type: ignore[no-untyped-call]
            while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 3):  # type: ignore[no-untyped-call]
                src.execute_command(  # type: ignore[no-untyped-call]
                    "MIGRATE", "127.0.0.1", target.port, "", 0, 5_000,
                    "AUTH", password, "KEYS", *keys,
                )  # fmt: skip
                time.sleep(pause)
            for server in masters:
                client = cluster.client(server)
                try:
                    client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)  # type: ignore[no-untyped-call]
                finally:
                    client.close()
        finally:
            src.close()
            dst.close()


def _slots_of(cluster: LocalCluster, server: RedisServer) -> list[tuple[int, int]]:
    client = cluster.client(server)
    try:
        mine = client.execute_command("CLUSTER", "MYID")  # type: ignore[no-untyped-call]
        nodes = client.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
    finally:
        client.close()
    return [(int(a), int(b)) for a, b, owner, *_ in nodes if owner[2] == mine]


async def test_slots_migrated_under_load_lose_nothing_and_apply_nothing_twice(
    cstack: ClusterStack, cserve: Serve
) -> None:
    load = Load(cserve.url, users("rs"), seed=12)
    await load.warm()
    slots = sorted({slot_of(bucket_tag(bucket_of(u, BUCKETS))) for u in load.users})
    running = asyncio.create_task(load.run(3 * LOAD_SECONDS))
    await asyncio.sleep(0.5)
    await anyio.to_thread.run_sync(lambda: _reshard(cstack, slots, 0.02))
    await running
    moved = [c for c in load.calls if c.status == 200 and c.sent_at > 0]
    assert moved, "nothing was served during the migration"
    await finish(load, cstack)


async def test_a_master_killed_and_its_replica_promoted_under_load(
    cstack: ClusterStack, cserve: Serve
) -> None:
    load = Load(cserve.url, users("fo"), seed=13)
    await load.warm()
    victim = cstack.master_of(load.users[0])
    theirs = {u for u in load.users if cstack.master_of(u) is victim}
    running = asyncio.create_task(load.run(LOAD_SECONDS + 5.0))
    await asyncio.sleep(LOAD_SECONDS)
    proc = victim._proc
    assert proc is not None
    proc.send_signal(signal.SIGKILL)
    await anyio.to_thread.run_sync(proc.wait)
    victim._proc = None
    killed_at = time.monotonic()
    await anyio.to_thread.run_sync(lambda: cstack.cluster.wait_healthy(20))
    await running
    wrong = [(c.user, c.reply) for c in load.calls if c.status == 503 and c.user not in theirs]
    assert not wrong, f"users of other masters got 503s: {wrong[:3]}"
    after = [c for c in load.calls if c.user in theirs and c.sent_at > killed_at + 4.0]
    assert after and all(c.status is not None and c.status < 500 for c in after), (
        "the promoted replica is not used"
    )
    await finish(load, cstack)
    ready = httpx2.get(f"{cserve.url}/readyz", timeout=2)
    assert ready.status_code == 200, ready.text
