"""Repeated creator awards (likes and forks) under faults: the same actor liking or forking the
same entity again and again, concurrently, unkeyed and keyed (a keyed request sometimes sent
again with its key while the first still runs), while Redis is killed (AOF), stalled
(SIGSTOP), emptied (a restart without its data), or Postgres is cut off. Actors, entities and
owners hash into one bucket ("same") or into disjoint buckets ("different").

The oracle, from every recorded answer and the final state (Redis through the API, and the
Postgres ledger once drained):

- every request answered within ``PROMPT``; no 500 (503 only while a store is down); only the
  statuses a like can have (200, 409 already_triggered or self_action, 429 daily limit, 503);
- for each (actor, entity, action) at most one request paid EXP, ever (a keyed request and its
  retries count once), and the ledger holds exactly one ``exp_award`` per paid one; after a
  Redis data loss, a payment acknowledged before it may be lost (the durability window), and
  then exactly one more may be paid, the one the ledger holds;
- each owner's total (Redis and ``user_totals``) is the ledger's sum and, without a loss, the
  sum of the paid answers; at most 20 ``character_liked`` per owner per day in the ledger;
- a keyed request sent again afterwards replays its first answer; ``counters reconcile`` exits 0.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import shutil
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import asyncpg  # type: ignore[import-untyped]
import httpx2
import pytest

from counters.cli.embedded import PostgresServer
from counters.redis.keys import bucket_of
from tests.faults.harness import Call, Load, Serve, counters_command, paused
from tests.faults.test_faults import Stack, open_stack
from tests.support.core import SERVICE_KEY, user_headers
from tests.support.proxy import Mode

pytestmark = pytest.mark.anyio

BUCKETS = 16  # few buckets: ids of one test share them often
PROMPT = 2.0  # no answer may take longer (Redis timeout 0.5 s, Postgres 1 s)
LIKE_LIMIT = 20  # character_liked's daily limit per receiving owner (the shipped rules)
GAIN = "/api/exp/gain"
ACTIONS = ("character_liked", "forked")
LAYOUTS = ["same", "different"]


def likes_rules(directory: Path) -> Path:
    """The shipped rules with daily caps out of reach, so the like limit (20) is what refuses."""
    shipped = Path(__file__).parents[2] / "counters" / "rules" / "default_rules.toml"
    text = shipped.read_text()
    for cap in ("cap = 150", "cap = 300", "cap = 500"):
        text = text.replace(cap, "cap = 1000000")
    path = directory / "likes_rules.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer
) -> Iterator[Stack]:
    yield from open_stack(
        tmp_path_factory.mktemp("likes"), postgres_server, "likes_faults", likes_rules
    )


@pytest.fixture(scope="module")
def serve(stack: Stack) -> Iterator[Serve]:
    server = Serve(stack.env(COUNTERS_KEY_BUCKETS=str(BUCKETS)), stack.tmp / "serve.log")
    server.start()
    yield server
    server.stop()


# -- the world: owners, their characters, actors ------------------------------------------------


@dataclass
class World:
    owners: list[str]
    entities: dict[str, str]  # "character:<id>" -> owner
    actors: list[str]

    @property
    def triples(self) -> list[tuple[str, str, str]]:
        return [
            (actor, entity, action)
            for actor in self.actors
            for entity in self.entities
            for action in ACTIONS
        ]


def _ids(prefix: str, count: int, buckets: set[int], taken: set[str]) -> list[str]:
    found: list[str] = []
    for n in itertools.count():
        candidate = f"{prefix}{n}"
        if candidate not in taken and bucket_of(candidate, BUCKETS) in buckets:
            found.append(candidate)
            taken.add(candidate)
            if len(found) == count:
                return found
    raise AssertionError("unreachable")


def world(tag: str, layout: str, owners: int = 3, per_owner: int = 2, actors: int = 24) -> World:
    """Ids in one bucket ("same"), or owners, entities and actors each in buckets of their own,
    no two kinds sharing one ("different"); each owner a few characters."""
    if layout == "same":
        one = {bucket_of(f"{tag}o0", BUCKETS)}
        owner_b, entity_b, actor_b = one, one, one
    else:
        owner_b, entity_b, actor_b = {0, 1, 2, 3, 4}, {5, 6, 7, 8, 9}, {10, 11, 12, 13, 14, 15}
    taken: set[str] = set()
    owner_ids = _ids(f"{tag}o", owners, owner_b, taken)
    entity_ids = _ids(f"character:{tag}c", owners * per_owner, entity_b, taken)
    actor_ids = _ids(f"{tag}a", actors, actor_b, taken)
    for entity in entity_ids:  # the bucket is the entity's "<type>:<id>"
        assert bucket_of(entity, BUCKETS) in entity_b
    entities = {e: owner_ids[i // per_owner] for i, e in enumerate(entity_ids)}
    return World(owner_ids, entities, actor_ids)


def act(action: str, entity: str) -> dict[str, str]:
    kind, _, entity_id = entity.partition(":")
    return {"action": action, "target_type": kind, "target_id": entity_id}


async def own_all(http: httpx2.AsyncClient, w: World) -> None:
    for entity, owner in w.entities.items():
        kind, _, entity_id = entity.partition(":")
        response = await http.put(
            f"/api/entities/{kind}/{entity_id}",
            json={"owner_id": owner},
            headers={"Authorization": f"Bearer {SERVICE_KEY}"},
        )
        assert response.status_code == 200, response.text


async def wait_owners_ledgered(stack: Stack, w: World) -> None:
    """Until Postgres knows every owner (a later Redis loss must not make them unknown)."""
    conn = await asyncpg.connect(stack.direct_db)
    try:
        for _ in range(200):
            rows = await conn.fetch("SELECT entity_type, entity_id FROM entity_owners")
            known = {f"{r['entity_type']}:{r['entity_id']}" for r in rows}
            if set(w.entities) <= known:
                return
            await asyncio.sleep(0.05)
    finally:
        await conn.close()
    raise AssertionError("the owners never reached Postgres")


# -- the load ------------------------------------------------------------------------------------


@dataclass
class Like:
    """One like or fork request and its answer."""

    actor: str
    entity: str
    action: str
    key: str | None  # Idempotency-Key, or None: unkeyed
    call: Call

    @property
    def triple(self) -> tuple[str, str, str]:
        return (self.actor, self.entity, self.action)

    @property
    def ident(self) -> str:
        """One paid request: a keyed request and its retries are one."""
        return self.key if self.key is not None else f"unkeyed-{id(self)}"

    @property
    def paid(self) -> int:
        c = self.call
        if c.status == 200 and int(c.reply["exp_added"]) > 0:
            return int(c.reply["exp_added"])
        return 0


@dataclass
class LikeLoad:
    url: str
    w: World
    seed: int
    likes: list[Like] = field(default_factory=list)
    retries: list[tuple[Like, Call]] = field(default_factory=list)
    timeout: float = 5.0
    _n: int = 0

    def _make(self, triple: tuple[str, str, str], key: str | None) -> Like:
        actor, entity, action = triple
        headers = {"Authorization": f"Bearer {SERVICE_KEY}", "X-User-Id": actor}
        if key is not None:
            headers["Idempotency-Key"] = key
        call = Call(actor, GAIN, act(action, entity), key or "", headers)
        return Like(actor, entity, action, key, call)

    async def _send(self, http: httpx2.AsyncClient, like: Like) -> None:
        await Load(self.url, []).send(http, like.call)  # the harness's recording send
        self.likes.append(like)

    def _key(self, actor: str) -> str:
        self._n += 1
        return f"{actor}-k{self._n}"

    async def run(self, seconds: float, concurrency: int = 8) -> None:
        """Callers sending likes and forks of a small set of (actor, entity, action): repeats
        are the rule. A third of the rounds is a burst: the same triple 4 times at once, mixed
        keyed and unkeyed, a key sometimes sent twice at once (a retry overlapping its first
        attempt). Owners like their own characters now and then (409 self_action)."""
        rng = random.Random(self.seed)
        triples = self.w.triples
        owners_own = [
            (owner, entity, "character_liked") for entity, owner in self.w.entities.items()
        ]
        deadline = time.monotonic() + seconds
        async with httpx2.AsyncClient(base_url=self.url, timeout=self.timeout) as http:

            async def caller() -> None:
                while time.monotonic() < deadline:
                    triple = rng.choice(owners_own if rng.random() < 0.03 else triples)
                    batch: list[Like] = []
                    if rng.random() < 0.35:
                        key = self._key(triple[0])
                        for i in range(4):
                            kind = rng.random()
                            if kind < 0.4:
                                batch.append(self._make(triple, None))
                            elif kind < 0.7 or i == 0:
                                batch.append(self._make(triple, key))  # the same key twice
                            else:
                                batch.append(self._make(triple, self._key(triple[0])))
                    else:
                        keyed = rng.random() < 0.5
                        batch.append(self._make(triple, self._key(triple[0]) if keyed else None))
                    await asyncio.gather(*(self._send(http, like) for like in batch))
                    if any(b.call.status is None or b.call.status >= 500 for b in batch):
                        await asyncio.sleep(0.05)  # a client backing off

            await asyncio.gather(*(caller() for _ in range(concurrency)))

    async def retry_keyed(self, concurrency: int = 8) -> None:
        """Every keyed request once more with its key (until an answer that is not 503)."""
        gate = asyncio.Semaphore(concurrency)
        firsts: dict[str, Like] = {}
        for like in self.likes:  # per key its first answer (503 only if it never had one)
            if like.key is None:
                continue
            if like.key not in firsts or (_answered(like) and not _answered(firsts[like.key])):
                firsts[like.key] = like
        async with httpx2.AsyncClient(base_url=self.url, timeout=self.timeout) as http:

            async def retry(first: Like) -> tuple[Like, Call]:
                async with gate:
                    again = first.call
                    for _ in range(50):
                        again = Call(
                            first.actor, GAIN, first.call.body, first.key or "",
                            first.call.headers,
                        )  # fmt: skip
                        started = time.monotonic()
                        try:
                            response = await http.post(GAIN, json=again.body, headers=again.headers)
                        except httpx2.HTTPError as exc:
                            again.error = str(exc)
                        else:
                            again.status = response.status_code
                            again.reply = response.json()
                            again.replayed = response.headers.get("idempotent-replayed") == "true"
                        again.elapsed = time.monotonic() - started
                        if again.status is not None and again.status < 500:
                            break
                        await asyncio.sleep(0.1)
                    return first, again

            self.retries = list(await asyncio.gather(*(retry(f) for f in firsts.values())))


# -- the oracle ----------------------------------------------------------------------------------


def _answered(like: Like | None) -> bool:
    return like is not None and like.call.status is not None and like.call.status < 500


def _stable(reply: Any) -> Any:
    if isinstance(reply, dict):
        return {k: v for k, v in reply.items() if k != "retry_after"}
    return reply


async def check(
    load: LikeLoad,
    stack: Stack,
    loss_at: float | None = None,
    loss_wall: float | None = None,
    loss_began: float | None = None,
) -> dict[str, int]:
    """The oracle. With a loss: ``loss_began`` and ``loss_at`` (monotonic) bound the time Redis
    was being emptied; a like answered before it began was applied before it, one sent after
    it ended after it, and one in flight across it on either side."""
    w = load.w
    likes = load.likes
    problems: list[str] = []
    # answers: prompt, no 500s, only a like's statuses
    statuses = Counter(like.call.status for like in likes)
    for like in likes:
        c = like.call
        if c.status is None:
            problems.append(f"no answer: {like.triple} {c.error} after {c.elapsed:.2f}s")
        elif c.status not in (200, 409, 429, 503):
            problems.append(f"status {c.status} for {like.triple} key={like.key}: {c.reply}")
        elif c.elapsed >= PROMPT:
            problems.append(f"{like.triple} answered in {c.elapsed:.2f}s")
        if c.status == 409:
            code = c.reply.get("code")
            own = w.entities[like.entity] == like.actor
            if code != ("self_action" if own else "already_triggered"):
                problems.append(f"409 {code} for {like.triple} (own entity: {own})")
        if c.status == 200 and c.reply["awarded_to"] != w.entities[like.entity]:
            problems.append(f"{like.triple} paid {c.reply['awarded_to']}")
    # paid requests per (actor, entity, action), before and after a loss
    paid_by: dict[tuple[str, str, str], dict[str, Like]] = defaultdict(dict)
    for like in likes:
        if like.paid:
            paid_by[like.triple].setdefault(like.ident, like)
    for first, again in load.retries:  # a keyed request first refused 503: its retry answers
        if not _answered(first) and again.status == 200 and int(again.reply["exp_added"]) > 0:
            late = Like(first.actor, first.entity, first.action, first.key, again)
            late.call.sent_at = first.call.sent_at  # the request began then
            paid_by[first.triple].setdefault(late.ident, late)
    # an unkeyed request answered 503 (or not at all) may have been applied: its triple may
    # hold a ledger row no answer acknowledged (never two, never beside a paid answer)
    unsure = {
        like.triple
        for like in likes
        if like.key is None and (like.call.status is None or like.call.status >= 500)
    }
    # the ledger, drained
    conn = await asyncpg.connect(stack.direct_db)
    try:
        rows = await conn.fetch(
            "SELECT user_id, actor, target, action, amount, day, idem, occurred_at"
            " FROM ledger WHERE kind = 'exp_award' AND user_id = ANY($1::text[])",
            w.owners,
        )
        sums = {
            r["user_id"]: int(r["s"])
            for r in await conn.fetch(
                "SELECT user_id, sum(amount) AS s FROM ledger WHERE user_id = ANY($1::text[])"
                " GROUP BY user_id",
                w.owners,
            )
        }
        totals = {
            r["user_id"]: int(r["exp"])
            for r in await conn.fetch(
                "SELECT user_id, exp FROM user_totals WHERE user_id = ANY($1::text[])", w.owners
            )
        }
        quarantined = await conn.fetchval(
            "SELECT count(*) FROM ledger_quarantine WHERE resolved_at IS NULL"
        )
    finally:
        await conn.close()
    if quarantined:
        problems.append(f"{quarantined} entries in quarantine")
    ledgered: dict[tuple[str, str, str], list[Any]] = defaultdict(list)
    for row in rows:
        ledgered[row["actor"], row["target"], row["action"]].append(row)
        if w.entities.get(row["target"]) != row["user_id"]:
            problems.append(f"ledger pays {row['user_id']} for {row['target']}")
    for triple in set(paid_by) | set(ledgered):
        paid, found = paid_by.get(triple, {}), ledgered.get(triple, [])
        if len(found) > 1:
            problems.append(f"{triple}: {len(found)} exp_award rows in the ledger")
        if loss_at is None:
            if len(paid) > 1:
                keys = [(p.key, p.call.reply["exp_added"]) for p in paid.values()]
                problems.append(f"{triple}: paid by {len(paid)} requests {keys}")
            if len(paid) != len(found) and not (not paid and triple in unsure):
                problems.append(f"{triple}: {len(paid)} paid answers, {len(found)} ledger rows")
        else:
            began = loss_at if loss_began is None else loss_began
            before = [p for p in paid.values() if p.call.sent_at + p.call.elapsed < began]
            after = [p for p in paid.values() if p.call.sent_at >= loss_at]
            # In flight across the loss (sent before it ended, answered after it began): applied
            # on one side or the other. Once on each side at most, so twice in all at most.
            if len(before) > 1 or len(after) > 1 or len(paid) > 2:
                problems.append(
                    f"{triple}: paid {len(before)} before, {len(after)} after loss,"
                    f" {len(paid) - len(before) - len(after)} in flight across it"
                )
            if after and len(found) != 1:
                problems.append(f"{triple}: paid after the loss, {len(found)} ledger rows")
            if before and after and found:
                assert loss_wall is not None
                if found[0]["occurred_at"].timestamp() < loss_wall:
                    problems.append(f"{triple}: ledgered before the loss and paid again after")
    # limits: at most 20 likes per owner per day, in the ledger and in the answers
    per_day = Counter((r["user_id"], r["day"]) for r in rows if r["action"] == "character_liked")
    for (owner, day), count in per_day.items():
        if count > LIKE_LIMIT:
            problems.append(f"{owner} got {count} likes on {day} (limit {LIKE_LIMIT})")
    if loss_at is None:
        answered = Counter(
            w.entities[t[1]]
            for t, paid in paid_by.items()
            if t[2] == "character_liked"
            for _ in paid
        )
        for owner, count in answered.items():
            if count > LIKE_LIMIT:
                problems.append(f"{owner}: {count} paid likes answered (limit {LIKE_LIMIT})")
    # totals: Redis (the API), user_totals and the ledger agree; without a loss, the answers too
    async with httpx2.AsyncClient(base_url=load.url, timeout=5) as http:
        for owner in w.owners:
            body = (await http.get("/api/exp/progress", headers=user_headers(owner))).json()
            redis_total = int(body["total_exp"])
            ledger_total = sums.get(owner, 0)
            answered_total = sum(
                p.paid
                for t, paid in paid_by.items()
                if w.entities[t[1]] == owner
                for p in paid.values()
            ) + sum(  # applied under a 503
                int(r["amount"])
                for t, found in ledgered.items()
                if w.entities.get(t[1]) == owner and t not in paid_by and t in unsure
                for r in found
            )
            if not redis_total == totals.get(owner, 0) == ledger_total:
                problems.append(
                    f"{owner}: Redis {redis_total}, user_totals {totals.get(owner)},"
                    f" ledger {ledger_total}"
                )
            if loss_at is None and redis_total != answered_total:
                problems.append(f"{owner}: total {redis_total}, paid answers {answered_total}")
    # keyed retries replay their first answer
    for first, again in load.retries:
        if again.status is None or again.status >= 500:
            problems.append(f"retry of {first.key}: {again.status}")
            continue
        if loss_at is not None and first.call.sent_at < loss_at and not again.replayed:
            continue  # inside the durability window: a new request
        if not _answered(first):
            continue  # its retry is its answer
        same = (again.status, _stable(again.reply)) == (
            first.call.status,
            _stable(first.call.reply),
        )
        if not same:
            problems.append(
                f"retry of {first.key} {first.triple}: {first.call.status} {first.call.reply}"
                f" then {again.status} {again.reply}"
            )
        elif first.call.status == 200 and not again.replayed:
            problems.append(f"retry of {first.key}: not a replay")
    assert not problems, "\n".join(problems[:30]) + f"\n({len(problems)} problems; {statuses})"
    return {
        "requests": len(likes),
        "paid": sum(len(p) for p in paid_by.values()),
        "ledgered": len(rows),
        **{str(k): v for k, v in statuses.items()},
    }


async def finish(
    load: LikeLoad,
    stack: Stack,
    loss_at: float | None = None,
    loss_wall: float | None = None,
    loss_began: float | None = None,
) -> dict[str, int]:
    """Retry the keyed requests, drain and reconcile (exit 0), then the oracle."""
    await load.retry_keyed()
    env = stack.env(
        COUNTERS_DATABASE_URL=stack.direct_db,
        COUNTERS_FLUSH_CLAIM_IDLE_MS="0",
        COUNTERS_KEY_BUCKETS=str(BUCKETS),
    )
    code = await anyio.to_thread.run_sync(lambda: counters_command(["reconcile"], env))
    assert code == 0, "counters reconcile found drift"
    summary = await check(load, stack, loss_at, loss_wall, loss_began)
    assert summary["paid"] > 0 and summary["ledgered"] > 0, summary
    return summary


async def prepare(serve: Serve, stack: Stack, tag: str, layout: str, seed: int) -> LikeLoad:
    w = world(f"{tag}{layout[0]}", layout)
    async with httpx2.AsyncClient(base_url=serve.url, timeout=5) as http:
        await own_all(http, w)
    await wait_owners_ledgered(stack, w)
    return LikeLoad(serve.url, w, seed)


def _kill_redis(stack: Stack) -> None:
    proc = stack.redis._proc
    assert proc is not None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stack.redis._proc = None


# -- the attacks ---------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
async def test_repeated_likes_without_a_fault(stack: Stack, serve: Serve, layout: str) -> None:
    """The baseline: the same load, nothing cut."""
    load = await prepare(serve, stack, "n", layout, seed=10)
    await load.run(1.5)
    await finish(load, stack)


@pytest.mark.parametrize("layout", LAYOUTS)
async def test_repeated_likes_across_a_redis_kill_with_aof(
    stack: Stack, serve: Serve, layout: str
) -> None:
    load = await prepare(serve, stack, "k", layout, seed=11)
    running = asyncio.create_task(load.run(2.5))
    await asyncio.sleep(0.8)
    await anyio.to_thread.run_sync(lambda: _kill_redis(stack))
    await anyio.to_thread.run_sync(stack.redis.start)  # same port and dir: the AOF replays
    await running
    await finish(load, stack)


@pytest.mark.parametrize("layout", LAYOUTS)
async def test_repeated_likes_across_a_redis_stall(stack: Stack, serve: Serve, layout: str) -> None:
    load = await prepare(serve, stack, "s", layout, seed=12)
    running = asyncio.create_task(load.run(3.0))
    await asyncio.sleep(0.8)
    await paused(stack.redis, 1.2)
    await running
    assert any(like.call.status == 503 for like in load.likes), "nobody noticed the stall"
    await finish(load, stack)


@pytest.mark.parametrize("layout", LAYOUTS)
async def test_repeated_likes_across_a_postgres_outage(
    stack: Stack, serve: Serve, layout: str
) -> None:
    load = await prepare(serve, stack, "p", layout, seed=13)
    running = asyncio.create_task(load.run(2.5))
    await asyncio.sleep(0.5)
    await anyio.to_thread.run_sync(stack.pg_proxy.set_mode, Mode.REFUSE)
    await asyncio.sleep(0.7)
    await anyio.to_thread.run_sync(stack.pg_proxy.set_mode, Mode.BLACKHOLE)
    await asyncio.sleep(0.7)
    await anyio.to_thread.run_sync(stack.pg_proxy.set_mode, Mode.FORWARD)
    await running
    await finish(load, stack)


@pytest.mark.parametrize("layout", LAYOUTS)
async def test_a_burst_of_repeats_at_the_owners_daily_limit_is_429_not_503(
    stack: Stack, serve: Serve, layout: str
) -> None:
    """Nothing cut: an owner at the like limit (20 today), then one fan's like of the owner's
    character sent 24 times at once (keyed and unkeyed), 5 times over. Every one is 429: the
    keyed ones run the chain, and each that meets another's pending reservation completes it
    (refused at the limit, released) and, before the fix, asked B again, met the next
    competitor's fresh reservation, and after 4 rounds answered 503 storage_unavailable
    ("stayed reserved by other requests") with Redis and Postgres up."""
    w = world(f"b{layout[0]}", layout, owners=1, per_owner=1, actors=LIKE_LIMIT + 1)
    entity, owner = next(iter(w.entities.items()))
    fan = w.actors[-1]
    load = LikeLoad(serve.url, w, seed=16)
    async with httpx2.AsyncClient(base_url=serve.url, timeout=load.timeout) as http:
        await own_all(http, w)
        for actor in w.actors[:LIKE_LIMIT]:
            await load._send(http, load._make((actor, entity, "character_liked"), None))
        assert [like.call.status for like in load.likes] == [200] * LIKE_LIMIT
        for _ in range(5):
            burst = [
                load._make((fan, entity, "character_liked"), load._key(fan) if i % 3 else None)
                for i in range(24)
            ]
            await asyncio.gather(*(load._send(http, like) for like in burst))
            answers = Counter((b.call.status, b.call.reply.get("code")) for b in burst)
            assert answers == {(429, "daily_limit_reached"): 24}, answers
    summary = await finish(load, stack)
    assert summary["paid"] == summary["ledgered"] == LIKE_LIMIT, summary
    assert owner in w.owners


def _empty_redis(stack: Stack) -> None:
    _kill_redis(stack)
    for name in ("appendonlydir", "dump.rdb"):  # the data, not the password file
        path = stack.redis.data_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    stack.redis.start()


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("postgres_down", [False, True], ids=["pg-up", "pg-down"])
async def test_repeated_likes_across_a_redis_data_loss(
    stack: Stack, serve: Serve, layout: str, postgres_down: bool
) -> None:
    """Redis restarted empty under load (with Postgres cut off for a while after the restart):
    likes flushed before the loss come back from the ledger, so a repeat is still 409; a like
    acknowledged but not flushed may be lost and then paid once more, never twice. Last in the
    module: it empties the Redis the earlier tests' ids live in."""
    tag = "d" if postgres_down else "e"
    load = await prepare(serve, stack, tag, layout, seed=14 + postgres_down)
    running = asyncio.create_task(load.run(2.5))
    await asyncio.sleep(1.0)
    if postgres_down:
        await anyio.to_thread.run_sync(stack.pg_proxy.set_mode, Mode.REFUSE)
    loss_wall, loss_began = time.time(), time.monotonic()
    await anyio.to_thread.run_sync(lambda: _empty_redis(stack))
    loss_at = time.monotonic()  # nothing sent from now on may be lost
    if postgres_down:
        await asyncio.sleep(0.6)
        await anyio.to_thread.run_sync(stack.pg_proxy.set_mode, Mode.FORWARD)
    await running
    await load.run(1.0)  # after the loss: owners, once-records and users back from Postgres
    assert any(like.paid and like.call.sent_at > loss_at for like in load.likes) or any(
        like.call.status == 409 and like.call.sent_at > loss_at for like in load.likes
    )
    await finish(load, stack, loss_at, loss_wall, loss_began)
