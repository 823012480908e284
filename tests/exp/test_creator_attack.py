"""An outside reviewer's attack on the one-script creator award (counters/exp/creator.py,
``_shortcut``; lua/creator_award.lua; the packed command, counters/exp/packed.py): odd-but-valid
ids, few buckets, two workers racing on once-per-actor, Redis forgetting its scripts mid-load.
Each case runs through HTTP on the suite's real Redis (one on a Redis of its own, restarted)."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx2
import pytest
import redis

from api.app import create_app
from counters.cli.embedded import RedisServer
from counters.clock import ManualClock
from counters.settings import Settings
from tests.cli.test_http_guard import serving
from tests.exp.test_creator_shortcut import FANS, evalsha_calls, run, state
from tests.exp.test_cross_identity import Layout, act, own, pick, total
from tests.support.core import SERVICE_KEY, service_headers, user_headers
from tests.support.http import asgi_client

pytestmark = pytest.mark.anyio

GAIN = "/api/exp/gain"


def odd_ids(n: int) -> list[str]:
    """Valid ids at the edges of counters/ids.py's patterns: 128 characters, '@', ':', '.'."""
    owner_a = "a" + "@:.-_" * 25 + "xx"  # 128
    owner_b = "B.b@example.com:tenant"
    entity_c = "character:" + "c" + "._-" * 42 + "z"  # target id 128
    entity_d = "character:d.1"
    fans = [f"fan:{i}@x.y" if i % 2 else ("f" * 120 + f"{i:07d}") for i in range(n)]
    assert len(owner_a) == 128 and len(entity_c.partition(":")[2]) == 128
    return [owner_a, owner_b, entity_c, entity_d, *fans]


@pytest.mark.parametrize("key_buckets", [1, 4])
async def test_odd_ids_answer_and_write_what_the_chain_does(
    settings: Settings, clock: ManualClock, redis_client: redis.Redis
) -> None:
    ids = odd_ids(FANS)
    redis_client.flushall()
    chain = await run(replace(settings, creator_shortcut=False), clock, ids)
    chain_state = state(redis_client)
    redis_client.flushall()
    shortcut = await run(replace(settings, creator_shortcut=True), clock, ids)
    assert shortcut == chain
    assert state(redis_client) == chain_state


async def _workers(
    stack: AsyncExitStack, settings: Settings, clock: ManualClock, n: int
) -> list[Any]:
    clients = []
    for _ in range(n):
        app = create_app(settings, clock=clock)
        await stack.enter_async_context(app.router.lifespan_context(app))
        clients.append(await stack.enter_async_context(asgi_client(app)))
    return clients


@pytest.mark.parametrize("key_buckets", [4])
@pytest.mark.parametrize("kind", ["same", "different"])
async def test_two_workers_racing_pay_each_actor_once(
    settings: Settings, clock: ManualClock, redis_client: redis.Redis, kind: str
) -> None:
    """Each of 15 fans likes one entity 3 times at once, spread over two workers (worker 2
    never saw it: its first sight is an HGET): exactly one award of 5 EXP each."""
    owner, entity = pick(Layout(kind, settings.key_buckets), "owner", "character:c")
    fans = [f"fan{i}" for i in range(15)]
    redis_client.flushall()
    async with AsyncExitStack() as stack:
        w1, w2 = await _workers(stack, settings, clock, 2)
        await own(w1, entity, owner)
        like = act("character_liked", entity)
        # the owner's records hydrated first (else every like racing the first one runs the
        # chain, which hydrates: correct, but not the shortcut this test counts)
        assert (await w1.post(GAIN, json=like, headers=user_headers("warm"))).status_code == 200
        redis_client.config_resetstat()
        calls = [
            (w1 if (i + j) % 2 else w2).post(GAIN, json=like, headers=user_headers(fan))
            for i, fan in enumerate(fans)
            for j in range(3)
        ]
        answers = await asyncio.gather(*calls)
        statuses = sorted(r.status_code for r in answers)
        assert statuses == [200] * 15 + [409] * 30, statuses
        assert await total(w1, owner) == 80
        # The shortcut ran: one script a first like, two a repeat (it, then B); the chain
        # alone takes 3 and 1 (B, C, D; B): 75 against 105
        assert evalsha_calls(redis_client) <= 80, evalsha_calls(redis_client)


@pytest.mark.parametrize("key_buckets", [4])
async def test_a_transfer_between_likes_on_a_hinted_worker_pays_the_new_owner(
    settings: Settings, clock: ManualClock, redis_client: redis.Redis
) -> None:
    """Worker 1 hints owner a; worker 2 transfers to b; worker 1's next like pays b."""
    a, b, entity = pick(Layout("same", settings.key_buckets), "a", "b", "character:c")
    redis_client.flushall()
    async with AsyncExitStack() as stack:
        w1, w2 = await _workers(stack, settings, clock, 2)
        await own(w2, entity, a)
        like = act("character_liked", entity)
        first = await w1.post(GAIN, json=like, headers=user_headers("fan1"))
        assert first.json()["awarded_to"] == a
        await own(w2, entity, b)
        second = await w1.post(GAIN, json=like, headers=user_headers("fan2"))
        assert (second.status_code, second.json()["awarded_to"]) == (200, b)
        mine = await w1.post(GAIN, json=like, headers=user_headers(b))  # b owns it now
        assert mine.status_code == 409
        theirs = await w1.post(GAIN, json=like, headers=user_headers(a))  # a no longer does
        assert (theirs.status_code, theirs.json()["awarded_to"]) == (200, b)
        assert (await total(w1, a), await total(w1, b)) == (5, 10)


@pytest.mark.parametrize("flush", ["SCRIPT FLUSH", "FUNCTION FLUSH", "both"])
async def test_redis_forgetting_its_scripts_mid_load_loses_no_like(
    settings: Settings, clock: ManualClock, redis_client: redis.Redis, flush: str
) -> None:
    owner, entity = "owner1", "character:c1"
    redis_client.flushall()
    async with AsyncExitStack() as stack:
        (w1,) = await _workers(stack, settings, clock, 1)
        await own(w1, entity, owner)
        like = act("character_liked", entity)
        statuses = []
        for i in range(12):
            if i in (3, 7):
                if flush in ("SCRIPT FLUSH", "both"):
                    redis_client.script_flush()
                if flush in ("FUNCTION FLUSH", "both"):
                    redis_client.function_flush()
            statuses.append(
                (await w1.post(GAIN, json=like, headers=user_headers(f"f{i}"))).status_code
            )
        # concurrently, with a flush in between
        calls = [w1.post(GAIN, json=like, headers=user_headers(f"g{i}")) for i in range(6)]
        redis_client.script_flush()
        redis_client.function_flush()
        statuses += [r.status_code for r in await asyncio.gather(*calls)]
        assert statuses == [200] * 18, statuses
        assert await total(w1, owner) == 90


async def test_unknown_entity_then_owned_on_another_worker(
    settings: Settings, clock: ManualClock, redis_client: redis.Redis
) -> None:
    """A worker that saw an entity unknown (404) pays its owner once another worker sets it."""
    redis_client.flushall()
    async with AsyncExitStack() as stack:
        w1, w2 = await _workers(stack, settings, clock, 2)
        like = act("forked", "character:late")
        assert (await w1.post(GAIN, json=like, headers=user_headers("fan"))).status_code == 404
        await own(w2, "character:late", "owner")
        after = await w1.post(GAIN, json=like, headers=user_headers("fan"))
        assert (after.status_code, after.json()["awarded_to"]) == (200, "owner")
        own_ = await w1.post(GAIN, json=like, headers=user_headers("owner"))
        assert own_.status_code == 409


# The HTTP hot lane (counters/cli/http_guard.py): bad bytes in each header and body field
# answer what the ASGI path answers for the same request (a query string sends it there).

BAD = [b"\x00", b"\x01", b"\x7f", b"\x80", b"\xff", b"\xc3\x28", b"\t", b" ", b"%00", b"\\", b'"']


def _one(port: int, raw: bytes) -> tuple[int, dict[str, Any] | bytes]:

    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(raw)
        got = b""
        while True:
            head_end = got.find(b"\r\n\r\n")
            if head_end >= 0:
                head = got[:head_end].decode("latin-1").lower()
                length = next(
                    (
                        int(line.split(":")[1])
                        for line in head.split("\r\n")
                        if line.startswith("content-length:")
                    ),
                    None,
                )
                if length is not None and len(got) >= head_end + 4 + length:
                    break
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += chunk
    if not got:
        return 0, b""
    status = int(got.split(b" ", 2)[1])
    body = got[got.find(b"\r\n\r\n") + 4 :]
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


def _request(path: bytes, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    lines = [b"POST " + path + b" HTTP/1.1", b"Host: x"]
    lines += [name + b": " + value for name, value in headers]
    lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _cases() -> list[tuple[str, list[tuple[bytes, bytes]], bytes]]:

    good_auth = b"Bearer " + SERVICE_KEY.encode()
    good = {
        b"Authorization": good_auth,
        b"X-User-Id": b"lane-user",
        b"Content-Type": b"application/json",
        b"X-Request-Id": b"rid-1",
        b"Idempotency-Key": b"k-1",
    }
    body = b'{"action": "character_liked", "target_type": "character", "target_id": "c1"}'
    cases = []
    for name in good:
        for bad in BAD:
            for where in ("end", "mid"):
                value = (
                    good[name] + bad if where == "end" else good[name][:3] + bad + good[name][3:]
                )
                headers = [(n, value if n == name else v) for n, v in good.items()]
                cases.append((f"{name!r}{bad!r}{where}", headers, body))
    for field in (b"action", b"target_type", b"target_id"):
        for bad in [*BAD, b"\\u0000", b"\\ud800", b"\\udc00x", b"\\u00e9", b"\xe2\x80\xa8"]:
            mutated = body.replace(b'"' + field + b'": "', b'"' + field + b'": "' + bad)
            headers = [(n, v) for n, v in good.items() if n != b"Idempotency-Key"]
            cases.append((f"body {field!r}{bad!r}", headers, mutated))
    for bad in (b"\xff", b"\x00", b"{", b"[]", b"null", b"\xef\xbb\xbf" + body, body + b"\x00"):
        cases.append((f"body {bad!r}", list(good.items()), bad))
    return cases


async def test_bad_bytes_on_the_hot_lane_answer_what_asgi_answers(
    settings: Settings, redis_client: redis.Redis
) -> None:

    redis_client.flushall()
    differ = []
    async with serving(settings) as port:

        def put() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request(
                "PUT",
                "/api/entities/character/c1",
                body=b'{"owner_id": "owner1"}',
                headers=service_headers() | {"Content-Type": "application/json"},
            )
            assert conn.getresponse().status == 200
            conn.close()

        await asyncio.to_thread(put)
        for label, headers, body in _cases():
            # Each request's effects must not change the next one's answer: a fresh key
            lane = await asyncio.to_thread(_one, port, _request(b"/api/exp/gain", headers, body))
            redis_client.flushall()
            await asyncio.to_thread(put)
            asgi = await asyncio.to_thread(
                _one, port, _request(b"/api/exp/gain?q=1", headers, body)
            )
            redis_client.flushall()
            await asyncio.to_thread(put)
            if lane != asgi or lane[0] >= 500 or lane[0] == 0:
                differ.append((label, lane, asgi))
    assert not differ, "\n".join(map(str, differ))


def _all(port: int, raw: bytes) -> list[tuple[int, bytes]]:
    """Every answer on one connection until the server closes it (or 3 s of silence)."""

    got = b""
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        sock.sendall(raw)
        try:
            while chunk := sock.recv(65536):
                got += chunk
        except TimeoutError:
            got += b"<timeout>"
    answers = []
    for part in got.split(b"HTTP/1.1 ")[1:]:
        status = int(part[:3])
        body = part[part.find(b"\r\n\r\n") + 4 :]
        answers.append((status, body.replace(b"<timeout>", b"")))
    return answers + ([(0, b"timeout")] if got.endswith(b"<timeout>") else [])


async def test_framing_attacks_on_the_hot_lane_answer_what_asgi_answers(
    settings: Settings, redis_client: redis.Redis
) -> None:

    auth = b"Authorization: Bearer " + SERVICE_KEY.encode() + b"\r\nX-User-Id: u1\r\n"
    body = b'{"action": "daily_chat"}'

    def req(
        path: bytes, extra: bytes = b"", content: bytes = body, length: bytes | None = None
    ) -> bytes:
        cl = b"Content-Length: " + (b"%d" % len(content) if length is None else length) + b"\r\n"
        return b"POST " + path + b" HTTP/1.1\r\nHost: x\r\n" + auth + cl + extra + b"\r\n" + content

    cases: dict[str, Callable[[bytes], bytes]] = {
        "pipelined x3 + close": lambda p: req(p) + req(p) + req(p, b"Connection: close\r\n"),
        "pipelined then garbage": lambda p: req(p) + req(p) + b"\x00GARBAGE\r\n\r\n",
        "short body then garbage": lambda p: req(p, length=b"10")[: -len(body) + 10] + b"\x16\x03",
        "long CL, close": lambda p: req(p, length=b"30")[:-1],
        "CL 0 close": lambda p: req(p, b"Connection: close\r\n", b""),
        "CL +24": lambda p: req(p, b"Connection: close\r\n", length=b"+24"),
        "CL 024": lambda p: req(p, b"Connection: close\r\n", length=b"024"),
        "two CL": lambda p: req(p, b"Content-Length: 24\r\nConnection: close\r\n"),
        "CL and TE": lambda p: req(p, b"Transfer-Encoding: chunked\r\nConnection: close\r\n"),
        "dup auth": lambda p: req(p, b"Authorization: Bearer x\r\nConnection: close\r\n"),
        "dup user": lambda p: req(p, b"X-User-Id: u2\r\nConnection: close\r\n"),
        "obs-fold": lambda p: req(p, b"X-Request-Id: a\r\n b\r\nConnection: close\r\n"),
        "req id bad": lambda p: req(p, b"X-Request-Id: \xff\x80<script>\r\nConnection: close\r\n"),
        "upper header names": lambda p: req(
            p, b"CONTENT-TYPE: APPLICATION/JSON\r\nConnection: close\r\n"
        ),
        "lowercase method": lambda p: req(p, b"Connection: close\r\n").replace(b"POST", b"post", 1),
        "absolute uri": lambda p: req(b"http://x" + p, b"Connection: close\r\n"),
        "bare LF": lambda p: req(p, b"Connection: close\r\n").replace(b"\r\n", b"\n"),
        "CRLFs first": lambda p: b"\r\n\r\n" + req(p, b"Connection: close\r\n"),
        "space in name": lambda p: req(p, b"X-User-Id : u2\r\nConnection: close\r\n"),
        "null in path": lambda p: req(p + b"\x00", b"Connection: close\r\n"),
    }
    differ = []
    # Each run starts from an emptied Redis on the same workers, which would still hold u1's
    # refusal at the daily limit (counters/exp/service.py, "Refusals held locally"): none held
    held = replace(settings, limit_cache_entries=0)
    async with serving(held, read_timeout=1.0) as port:
        for label, make in cases.items():
            redis_client.flushall()
            lane = await asyncio.to_thread(_all, port, make(b"/api/exp/gain"))
            redis_client.flushall()
            asgi = await asyncio.to_thread(_all, port, make(b"/api/exp/gain?q=1"))
            if [s for s, _ in lane] != [s for s, _ in asgi] or any(s >= 500 for s, _ in lane):
                differ.append((label, lane, asgi))
    assert not differ, "\n".join(map(str, differ))


@pytest.mark.parametrize("key_buckets", [4])
@pytest.mark.parametrize("kind", ["same", "different"])
async def test_keyed_and_unkeyed_likes_racing_a_transfer_pay_each_fan_once(
    settings: Settings, clock: ManualClock, redis_client: redis.Redis, kind: str
) -> None:
    """Each fan sends an unkeyed like on each worker and a keyed one (retried) at once, while
    the entity moves from a to b and back: every fan paid exactly once, to one owner."""
    a, b, entity = pick(Layout(kind, settings.key_buckets), "a", "b", "character:c")
    fans = [f"fan{i}" for i in range(12)]
    redis_client.flushall()
    async with AsyncExitStack() as stack:
        w1, w2, w3 = await _workers(stack, settings, clock, 3)
        await own(w3, entity, a)
        like = act("character_liked", entity)
        calls = []
        for fan in fans:
            keyed = user_headers(fan, **{"Idempotency-Key": f"k-{fan}"})
            calls += [
                w1.post(GAIN, json=like, headers=user_headers(fan)),
                w2.post(GAIN, json=like, headers=user_headers(fan)),
                w1.post(GAIN, json=like, headers=keyed),
                w2.post(GAIN, json=like, headers=keyed),
            ]
        calls.insert(10, own(w3, entity, b))
        calls.insert(30, own(w3, entity, a))
        answers = [r for r in await asyncio.gather(*calls) if isinstance(r, httpx2.Response)]
        for r in answers:
            assert r.status_code in (200, 409), (r.status_code, r.text)
        assert (await total(w1, a)) + (await total(w1, b)) == 5 * len(fans)


@pytest.mark.parametrize("persistent", [True, False])
async def test_a_real_redis_restart_mid_load(
    settings: Settings, clock: ManualClock, tmp_path: Path, persistent: bool
) -> None:
    """A worker with the owner hinted; Redis (our own, AOF or nothing on disk) restarts while
    likes are in flight. With the AOF every fan is paid at most once, before or after; with
    nothing kept the entity is unknown after (no Postgres): 404, never the hinted owner paid."""
    server = RedisServer(tmp_path / "redis", persistent=persistent)
    server.start()
    try:
        served = replace(settings, redis_url=server.url)
        async with AsyncExitStack() as stack:
            (w1,) = await _workers(stack, served, clock, 1)
            await own(w1, "character:c", "owner")
            like = act("character_liked", "character:c")

            async def fan(i: int) -> int:
                return (await w1.post(GAIN, json=like, headers=user_headers(f"f{i}"))).status_code

            assert [await fan(i) for i in range(3)] == [200] * 3  # hinted, hydrated
            first = asyncio.gather(*(fan(i) for i in range(3, 15)))
            await asyncio.to_thread(server.restart)
            during = await first
            after = [await fan(i) for i in range(15)]
            owner_total = await total(w1, "owner")
        assert set(during) <= {200, 503}, during
        if persistent:
            assert after[:3] == [409] * 3
            # paid during the restart: 409 after; a 503 may have run (its command was sent)
            assert all(a == 409 for d, a in zip(during, after[3:], strict=True) if d == 200)
            # every fan paid exactly once in all
            assert owner_total == 5 * 15
        else:
            assert set(after) == {404}, after
    finally:
        server.stop()
