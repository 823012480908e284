"""The fault suite: a real ``counters serve`` under a recorded load while a fault is injected,
then the oracle (``tests/faults/harness.py``) holds every answer against the ledger.

Faults: kill -9 of Redis (AOF, restarted on the same port and data dir), Redis stopped (SIGSTOP),
Postgres cut through a proxy (refusing, then black-holed), ``serve`` SIGKILLed, a flusher killed
in the middle of a batch, and ``serve`` started while Postgres is down. Each run is a few
seconds of load; the suite's own servers only.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import anyio
import asyncpg  # type: ignore[import-untyped]
import httpx2
import pytest
import redis.asyncio

from counters.cli.embedded import PostgresServer, RedisServer
from counters.redis.keys import LAYOUT_KEY, stream_key
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
from tests.support.core import JWT_SECRET, SERVICE_KEY
from tests.support.persistence import run_sync
from tests.support.proxy import Mode, TcpProxy

pytestmark = pytest.mark.anyio

LOAD_SECONDS = 1.0  # before and after each fault
PROMPT = 2.0  # no answer may take longer, whatever the fault (Redis timeout 0.5 s, Postgres 1 s)


@dataclass
class Stack:
    redis: RedisServer
    postgres: PostgresServer
    database: str
    pg_proxy: TcpProxy
    rules: Path
    tmp: Path
    redis_db: int = 0

    @property
    def direct_db(self) -> str:
        return self.pg_url(self.postgres.port, self.database)

    def pg_url(self, port: int, database: str) -> str:
        """The suite's Postgres (its password) at ``port`` (the server's or a proxy's)."""
        return f"postgresql://counters:{self.postgres.password}@127.0.0.1:{port}/{database}"

    def env(self, **extra: str) -> dict[str, str]:
        base = {
            "COUNTERS_REDIS_URL": (
                f"redis://:{self.redis.password}@127.0.0.1:{self.redis.port}/{self.redis_db}"
            ),
            "COUNTERS_DATABASE_URL": (self.pg_url(self.pg_proxy.port, self.database)),
            "COUNTERS_JWT_SECRET": JWT_SECRET,
            "COUNTERS_SERVICE_KEYS": SERVICE_KEY,
            "COUNTERS_RULES": str(self.rules),
            "COUNTERS_FLUSH_CLAIM_IDLE_MS": "1000",
            "COUNTERS_FLUSH_BACKOFF_MAX_SECONDS": "0.5",
            "COUNTERS_FLUSH_BLOCK_MS": "100",
            "COUNTERS_DATA_DIR": str(self.tmp),
        }
        return {**base, **extra}


async def _create_database(url: str, name: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


def open_stack(
    tmp: Path, postgres_server: PostgresServer, database: str, rules: Callable[[Path], Path]
) -> Iterator[Stack]:
    """An AOF Redis of its own in ``tmp``, a fresh ``database`` on the suite's Postgres behind a
    proxy, and the rules file ``rules(tmp)`` writes: a module fixture's body."""
    postgres_server.start()
    admin = postgres_server.url.rsplit("/", 1)[0] + "/postgres"
    run_sync(_create_database(admin, database))
    redis = RedisServer(tmp / "redis", persistent=True)
    redis.start()
    with TcpProxy(postgres_server.port) as proxy:
        yield Stack(redis, postgres_server, database, proxy, rules(tmp), tmp)
    redis.stop()


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer
) -> Iterator[Stack]:
    """An AOF Redis of the suite's own, a fresh database on the suite's Postgres behind a proxy;
    shared by the module's tests (each has users of its own; reconcile checks them all)."""
    yield from open_stack(tmp_path_factory.mktemp("faults"), postgres_server, "faults", fault_rules)


@pytest.fixture(scope="module")
def serve(stack: Stack) -> Iterator[Serve]:
    """``counters serve`` on the stack, with its flusher; a test may kill and restart it."""
    server = Serve(stack.env(), stack.tmp / "serve.log")
    server.start()
    yield server
    server.stop()


def users(prefix: str, n: int = 12) -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


async def finish(load: Load, stack: Stack, loss_at: float | None = None) -> None:
    """Retry every request with its key, drain the streams, reconcile (exit 0), check."""
    await load.retry_all()
    env = stack.env(COUNTERS_DATABASE_URL=stack.direct_db, COUNTERS_FLUSH_CLAIM_IDLE_MS="0")
    code = await anyio.to_thread.run_sync(lambda: counters_command(["reconcile"], env))
    assert code == 0, "counters reconcile found drift"
    verdict = await check(load, stack.direct_db, rules_of(stack.rules), loss_at)
    assert verdict.acknowledged > 0 and verdict.ledgered > 0
    assert verdict.slowest < PROMPT, f"an answer took {verdict.slowest:.2f}s"


async def test_redis_killed_with_aof_loses_no_acknowledged_change(
    stack: Stack, serve: Serve
) -> None:
    load = Load(serve.url, users("k"), seed=1)
    await load.warm()
    running = asyncio.create_task(load.run(3 * LOAD_SECONDS))
    await asyncio.sleep(LOAD_SECONDS)
    proc = stack.redis._proc
    assert proc is not None
    proc.send_signal(signal.SIGKILL)
    await anyio.to_thread.run_sync(proc.wait)
    stack.redis._proc = None
    await anyio.to_thread.run_sync(stack.redis.start)  # same port, same dir: the AOF replays
    await running
    ready = httpx2.get(f"{serve.url}/readyz", timeout=2)
    assert ready.json()["redis"] == "ok", ready.text  # exact right after the restart
    await finish(load, stack)


async def test_redis_stopped_gives_prompt_503s_never_a_hang(stack: Stack, serve: Serve) -> None:
    load = Load(serve.url, users("s"), seed=2)
    await load.warm()
    running = asyncio.create_task(load.run(LOAD_SECONDS + 2.5))
    await asyncio.sleep(LOAD_SECONDS)
    await paused(stack.redis, 2.0)
    await running
    refused = [c for c in load.calls if c.status == 503]
    assert refused, "no request noticed that Redis stopped"
    assert all(c.retry_after for c in refused)
    assert all(c.status is not None for c in load.calls), "a request got no answer"
    await finish(load, stack)


@pytest.mark.parametrize("mode", [Mode.REFUSE, Mode.BLACKHOLE])
async def test_postgres_cut_off_then_back(stack: Stack, serve: Serve, mode: Mode) -> None:
    load = Load(serve.url, users(f"p{mode.value[0]}"), seed=3)
    await load.warm()
    running = asyncio.create_task(load.run(3 * LOAD_SECONDS))
    await asyncio.sleep(LOAD_SECONDS)
    await anyio.to_thread.run_sync(stack.pg_proxy.set_mode, mode)
    await asyncio.sleep(0.2)
    newcomer = Load(serve.url, [f"new{mode.value}"])
    # a complete bucket (restored at start on an empty ledger): Redis knows the user is new,
    # so a brand-new user is served while Postgres is cut off (issue #11)
    await newcomer.warm(expect=None)
    await asyncio.sleep(LOAD_SECONDS)
    await anyio.to_thread.run_sync(stack.pg_proxy.set_mode, Mode.FORWARD)
    await running
    assert newcomer.calls[0].status == 200 and newcomer.calls[0].elapsed < PROMPT
    served = [c for c in load.calls if c.status == 200]
    assert len(served) > len(load.users)  # the hot path kept serving from Redis
    await finish(load, stack)


async def test_serve_sigkilled_and_restarted(stack: Stack, serve: Serve) -> None:
    load = Load(serve.url, users("x"), seed=4)
    await load.warm()
    running = asyncio.create_task(load.run(3 * LOAD_SECONDS))
    await asyncio.sleep(LOAD_SECONDS)
    await anyio.to_thread.run_sync(serve.kill)
    await anyio.to_thread.run_sync(serve.start)  # the same port; the dead consumer's entries
    await running  # are claimed by the new one
    await finish(load, stack)


async def test_flusher_killed_in_the_middle_of_a_batch(stack: Stack) -> None:
    """serve without a flusher; ``counters flush`` as its own process reaching Postgres through
    a second proxy. Once it is ledgering, the proxy black-holes its connection under load: the
    batch it reads next is sent into the hole (a transaction half-sent, entries pending under
    its name), and it is killed there. A new flusher claims and ledgers what it held."""
    serve = Serve(stack.env(COUNTERS_FLUSHER_ENABLED="false"), stack.tmp / "serve.log")
    await anyio.to_thread.run_sync(serve.start)
    try:
        with TcpProxy(stack.postgres.port) as flush_proxy:
            flush_db = stack.pg_url(flush_proxy.port, stack.database)
            flush = Serve(stack.env(COUNTERS_DATABASE_URL=flush_db), stack.tmp / "flush.log")
            load = Load(serve.url, users("f"), seed=5)
            await load.warm()
            flusher = flush.spawn(["flush"])
            for _ in range(600):  # bounded wait until it has written (it starts a process)
                if await _ledger_rows(stack, "f%"):
                    break
                await asyncio.sleep(0.05)
            assert await _ledger_rows(stack, "f%"), "the flusher never wrote"
            flush_proxy.set_mode(Mode.BLACKHOLE)
            held = 0
            for _ in range(20):  # load until it holds a batch it cannot commit (bounded)
                await load.run(LOAD_SECONDS / 2)
                held = await _pending(stack)
                if held:
                    break
            flusher.kill()
            await anyio.to_thread.run_sync(lambda: flusher.wait(10))
            flush_proxy.set_mode(Mode.FORWARD)
            assert held > 0, "the flusher held no batch when it was killed"
            await load.run(LOAD_SECONDS / 2)
            again = flush.spawn(["flush", "--burst"])
            assert await anyio.to_thread.run_sync(lambda: again.wait(30)) == 0
            await finish(load, stack)
    finally:
        await anyio.to_thread.run_sync(serve.stop)


async def _ledger_rows(stack: Stack, users_like: str) -> int:
    conn = await asyncpg.connect(stack.direct_db)
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM ledger WHERE user_id LIKE $1", users_like
        )
        return count
    finally:
        await conn.close()


async def _pending(stack: Stack) -> int:
    """Entries read by a flusher and not yet acknowledged, over every bucket's stream."""
    client = redis.asyncio.Redis.from_url(stack.env()["COUNTERS_REDIS_URL"])
    try:
        recorded = await client.hget(LAYOUT_KEY, "key_buckets")  # the deployment's count (#12)
        async with client.pipeline(transaction=False) as pipe:
            for bucket in range(int(recorded or DEFAULT_KEY_BUCKETS)):
                pipe.xpending(stream_key(bucket), "flusher")
            summaries = await pipe.execute()
        return sum(int(summary["pending"]) for summary in summaries)
    finally:
        await client.aclose()


async def test_serve_starts_with_postgres_down_and_migrates_when_it_returns(
    stack: Stack,
) -> None:
    """On a database of its own, so that there are migrations to apply."""
    admin = stack.pg_url(stack.postgres.port, "postgres")
    await _create_database(admin, "faults_late")
    stack = replace(stack, database="faults_late", redis_db=1)
    stack.pg_proxy.set_mode(Mode.REFUSE)
    serve = Serve(stack.env(COUNTERS_MIGRATE_RETRY_SECONDS="0.2"), stack.tmp / "late.log")
    await anyio.to_thread.run_sync(serve.start)  # answers although Postgres refuses
    try:
        async with httpx2.AsyncClient(base_url=serve.url, timeout=5) as http:
            down = (await http.get("/readyz")).json()
            assert down["postgres"] == "down" and down["status"] == "degraded"
            assert "schema migrations not applied" in down["flusher"]["stalled"]
            stack.pg_proxy.set_mode(Mode.FORWARD)
            for _ in range(100):  # bounded wait for the background migration
                body = (await http.get("/readyz")).json()
                if body["status"] == "ready":
                    break
                await asyncio.sleep(0.1)
            assert body["status"] == "ready", body
        load = Load(serve.url, users("m", 4), seed=6)
        await load.warm()
        await load.run(LOAD_SECONDS / 2)
        await finish(load, stack)
    finally:
        await anyio.to_thread.run_sync(serve.stop)


async def test_redis_restarted_empty_under_load_changes_no_answer(
    stack: Stack, serve: Serve
) -> None:
    """kill -9 of Redis and a restart with its AOF gone (what a Redis without persistence does),
    under load (issue #11): only changes sent before the loss may be lost (the window); no
    acknowledged change after it is lost or doubled, no user restarts behind the ledger, keyed
    retries of ledgered requests replay, limits hold in the ledger. Last in the module: it
    empties the Redis the other tests' users live in (they come back from Postgres)."""
    load = Load(serve.url, users("e"), seed=7)
    await load.warm()
    running = asyncio.create_task(load.run(LOAD_SECONDS + 0.5))
    await asyncio.sleep(LOAD_SECONDS)
    proc = stack.redis._proc
    assert proc is not None
    proc.send_signal(signal.SIGKILL)
    await anyio.to_thread.run_sync(proc.wait)
    stack.redis._proc = None
    for name in ("appendonlydir", "dump.rdb"):  # the data, not the password file
        path = stack.redis.data_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    await anyio.to_thread.run_sync(stack.redis.start)
    loss_at = time.monotonic()  # nothing sent from now on can be lost
    await running
    await load.run(2 * LOAD_SECONDS)  # after the loss: users rebuilt from Postgres
    assert any(c.status == 200 and c.sent_at > loss_at for c in load.calls)
    await finish(load, stack, loss_at)
