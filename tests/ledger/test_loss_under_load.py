"""Redis emptied under a bounded keyed load (#11): while a flush is stuck behind a Postgres lock,
and after Postgres went down.

Every answer is recorded; afterwards every request is retried with its key, and an oracle holds
the record against the ledger: each request ledgered at most once, and every change sent after
the loss exactly once, with the amount and total answered; no seq gap or duplicate per user;
daily limits and caps hold in the ledger; a retry of a ledgered request replays the first answer;
nothing in quarantine; reconcile exits 0. Only changes sent before the loss may be missing (the
durability window: no AOF here), and then their retry is a new request.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import anyio
import httpx2
import pytest
import redis
from starlette.applications import Starlette

from counters.cli.embedded import PostgresServer
from counters.settings import Settings
from tests.ledger.test_buckets import restorer
from tests.ledger.test_reconcile import invoke
from tests.support.core import service_headers
from tests.support.persistence import fetch, fetchval, flusher, services, store

pytestmark = pytest.mark.anyio

ACTIONS = ("daily_chat", "create_character", "create_scene", "create_persona")


@dataclass
class Answer:
    user: str
    key: str
    body: dict[str, str]
    status: int
    reply: dict[str, Any]
    replayed: bool
    sent_at: float  # time.monotonic() when sent
    done_at: float  # and when answered


async def send(client: httpx2.AsyncClient, user: str, key: str, body: dict[str, str]) -> Answer:
    headers = service_headers(user, **{"Idempotency-Key": key})
    sent_at = time.monotonic()
    response = await client.post("/api/exp/gain", json=body, headers=headers)
    replayed = response.headers.get("idempotent-replayed") == "true"
    return Answer(
        user, key, body, response.status_code, response.json(), replayed, sent_at,
        time.monotonic(),
    )  # fmt: skip


def by_first(row: Any, load: KeyedLoad) -> bool:
    """Whether ledger ``row`` came from a first attempt (its stream entry, stamped by Redis's
    clock, is older than the retries): a retry may repeat a lost first answer to the digit."""
    return int(row["stream_id"].split("-")[0]) < load.retries_from_ms


def answered(row: Any, answer: Answer) -> bool:
    """Whether ledger ``row`` is the change ``answer`` acknowledged (amount and total after)."""
    return (row["amount"], row["exp"]) == (answer.reply["exp_added"], answer.reply["total_exp"])


class KeyedLoad:
    """Callers sending keyed awards for ``users`` until stopped, every answer recorded."""

    def __init__(self, client: httpx2.AsyncClient, users: list[str], callers: int = 6) -> None:
        self.client, self.users = client, users
        self.answers: list[Answer] = []
        self.retries: list[Answer] = []
        self.retries_from_ms = 0
        self._running = True
        self._tasks = [asyncio.create_task(self._caller(i)) for i in range(callers)]

    async def _caller(self, i: int) -> None:
        rng, n = random.Random(i), 0
        while self._running:
            n += 1
            body = {"action": rng.choice(ACTIONS)}
            answer = await send(self.client, rng.choice(self.users), f"{i}-{n}", body)
            self.answers.append(answer)
            if answer.status == 503:
                await asyncio.sleep(0.02)  # a client backing off

    async def stop(self) -> None:
        self._running = False
        await asyncio.gather(*self._tasks)

    async def retry_all(self) -> None:
        """Every request once more with its key, until it gets an answer other than 503."""
        self.retries_from_ms = int(time.time() * 1000)
        for first in self.answers:
            for _ in range(100):
                again = await send(self.client, first.user, first.key, first.body)
                if again.status != 503:
                    break
                await asyncio.sleep(0.05)
            self.retries.append(again)


async def oracle(app: Starlette, load: KeyedLoad, loss_at: float, settings: Settings) -> int:
    """Hold the record against the ledger (module docstring); returns how many acknowledged
    changes were lost inside the window (sent before ``loss_at``: a request in flight at the
    loss may have been applied by the Redis that was lost)."""
    rows = await fetch(
        app,
        "SELECT user_id, seq, action, amount, day, idem, (totals->>'level')::int AS level,"
        " (totals->>'exp')::int AS exp, stream_id"
        " FROM ledger WHERE user_id = ANY($1::text[]) ORDER BY user_id, seq",
        load.users,
    )
    assert await fetchval(app, "SELECT count(*) FROM ledger_quarantine") == 0
    by_key: dict[str, list[Any]] = defaultdict(list)
    for row in rows:
        by_key[row["idem"]].append(row)
    assert all(len(found) == 1 for found in by_key.values()), "a request ledgered twice"
    lost = 0
    for first, again in zip(load.answers, load.retries, strict=True):
        assert first.status in (200, 429, 503), first
        assert again.status in (200, 429), again
        found = by_key.get(first.key, [])
        if first.status == 200 and found and by_first(found[0], load):
            assert answered(found[0], first)
            assert (again.status, again.reply, again.replayed) == (200, first.reply, True)
        elif first.status == 200:
            assert first.sent_at < loss_at, f"{first.key} sent after the loss, not ledgered"
            lost += 1  # inside the window: its retry is a new request
            if again.status == 200:
                assert len(found) == 1 and answered(found[0], again), again
    acknowledged = sum(1 for a in load.answers if a.status == 200)
    assert acknowledged > lost and any(a.done_at > loss_at for a in load.answers)
    rules = services(app).rules.exp
    per_user: dict[str, list[Any]] = defaultdict(list)
    for row in rows:
        per_user[row["user_id"]].append(row)
    for user, events in per_user.items():
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1)), f"{user}: seq"
        counts: dict[tuple[str, str], int] = defaultdict(int)
        gained: dict[str, int] = defaultdict(int)
        level = 1
        for e in events:
            counts[e["day"], e["action"]] += 1
            limit = rules.actions[e["action"]].daily_limit
            assert limit is None or counts[e["day"], e["action"]] <= limit, f"{user}: limit"
            gained[e["day"]] += e["amount"]
            assert gained[e["day"]] <= rules.cap_for(level), f"{user}: over the cap"
            level = e["level"]
    reconciled = await anyio.to_thread.run_sync(invoke, ["reconcile"], settings)
    assert reconciled.exit_code == 0, reconciled.output
    return lost


async def test_redis_emptied_under_load_while_a_flush_is_stuck_changes_no_answer(
    durable_app: Starlette,
    durable_client: httpx2.AsyncClient,
    redis_client: redis.Redis,
    durable_settings: Settings,
) -> None:
    stop_flusher = asyncio.Event()
    flushing = asyncio.create_task(flusher(durable_app, batch=20).run(stop_flusher))
    load = KeyedLoad(durable_client, [f"load-{n}" for n in range(6)])
    await asyncio.sleep(0.6)
    async with store(durable_app).connection("lock") as conn:
        slow = conn.transaction()
        await slow.start()
        await conn.execute("LOCK TABLE user_totals IN SHARE ROW EXCLUSIVE MODE")  # flushes stall
        await asyncio.sleep(0.2)
        redis_client.flushall()  # an empty restart: users, streams, records, bucket markers
        loss_at = time.monotonic()
        await asyncio.sleep(0.3)
        await slow.commit()
    await asyncio.sleep(0.6)
    await load.stop()
    stop_flusher.set()
    await flushing
    await load.retry_all()
    await flusher(durable_app).drain()
    await oracle(durable_app, load, loss_at, durable_settings)


async def test_postgres_down_then_redis_emptied_under_load_changes_no_answer(
    durable_app: Starlette,
    durable_client: httpx2.AsyncClient,
    redis_client: redis.Redis,
    durable_settings: Settings,
    postgres_server: PostgresServer,
) -> None:
    """Postgres down (its changes wait in Redis), then Redis loses them: everything
    acknowledged while Postgres was down is inside the window; nothing after the loss is lost,
    no user restarts behind the ledger, and the answers while both are out are prompt 503s."""
    assert await restorer(durable_app).restore_once() == 0  # an empty ledger: buckets complete
    stop_flusher = asyncio.Event()
    # Reads of 2 entries per stream stop between an award's event and its idempotency record
    # in most transactions; with 20, only when the flusher fell behind (under load): a retry
    # then found its event ledgered and its record lost, and was applied again (now fixed).
    flushing = asyncio.create_task(flusher(durable_app, batch=2, backoff_max=0.1).run(stop_flusher))
    load = KeyedLoad(durable_client, [f"down-{n}" for n in range(6)])
    await asyncio.sleep(0.5)
    postgres_server.stop()
    try:
        await asyncio.sleep(0.4)  # new and known users still served from Redis
        redis_client.flushall()
        loss_at = time.monotonic()
        await asyncio.sleep(0.4)  # nobody can be told from new now: 503, promptly
    finally:
        postgres_server.start()
    await asyncio.sleep(0.6)
    await load.stop()
    stop_flusher.set()
    await flushing
    await load.retry_all()
    await flusher(durable_app).drain()
    down = [a for a in load.answers if loss_at < a.sent_at and a.status == 503]
    assert down, "no request met both stores out"
    await oracle(durable_app, load, loss_at, durable_settings)
