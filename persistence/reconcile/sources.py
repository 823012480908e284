"""What reconcile reads and compares: Redis totals, Postgres totals and ledger sums per user.

Streaming, never every user in memory: a server-side cursor walks Postgres totals joined with
the ledger's sums, ordered by user, in chunks; each chunk's Redis hashes are read in one pipeline.
Then a SCAN of each bucket's user hashes finds users only Redis knows. Memory is one chunk.

What is compared (``examine``):
- Postgres totals against the ledger: EXP = the sum of EXP amounts, the XP balance = the sum of
  XP amounts, seq = the ledger's highest seq.
- Redis against Postgres, when both hold the same seq. A higher seq in Redis means events not
  flushed yet: the user is "in flight", not drifted. A lower one means Redis lost writes that
  Postgres has (a failover): drift.

Repairs are in ``persistence.reconcile.repair``; the run is in ``persistence.reconcile.reconciler``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from redis.asyncio import Redis

from counters.redis.keys import UserKeys, bucket_of_key, bucket_tag
from counters.xp.state import XpState
from persistence.store import Store

CHUNK = 500
REPAIR_KIND = "reconcile_repair"

_FAMILY = "(kind LIKE '{0}\\_%' OR (kind = 'reconcile_repair' AND action = '{0}'))"
_TOTALS_AND_SUMS = f"""
SELECT user_id, t.seq, t.exp, t.level, t.xp_balance, t.xp_state::text AS xp_state,
       l.exp_sum, l.xp_sum, l.xp_rows, l.max_seq
FROM (SELECT * FROM user_totals {{where}}) t
FULL OUTER JOIN (
    SELECT user_id,
           COALESCE(sum(amount) FILTER (WHERE {_FAMILY.format("exp")}), 0) AS exp_sum,
           COALESCE(sum(amount) FILTER (WHERE {_FAMILY.format("xp")}), 0) AS xp_sum,
           count(*) FILTER (WHERE {_FAMILY.format("xp")}) AS xp_rows,
           max(seq) AS max_seq
    FROM ledger {{where}} GROUP BY user_id
) l USING (user_id)
ORDER BY user_id
"""
_EVERY_USER = _TOTALS_AND_SUMS.format(where="")
_ONE_USER = _TOTALS_AND_SUMS.format(where="WHERE user_id = $1")


@dataclass(frozen=True, slots=True)
class RedisUser:
    seq: int
    exp: int
    xp_state: str | None


@dataclass(frozen=True, slots=True)
class PostgresUser:
    seq: int
    exp: int
    xp_balance: int | None
    xp_state: str | None


@dataclass(frozen=True, slots=True)
class LedgerSums:
    exp: int
    xp: int
    xp_rows: int
    max_seq: int


@dataclass(frozen=True, slots=True)
class Observed:
    """One user as each source sees it (None: the source does not know the user)."""

    user_id: str
    redis: RedisUser | None
    postgres: PostgresUser | None
    ledger: LedgerSums | None


@dataclass(frozen=True, slots=True)
class Finding:
    observed: Observed
    problems: tuple[str, ...]
    in_flight: bool

    @property
    def drifted(self) -> bool:
        return bool(self.problems)


def xp_balance(state: str | None) -> int | None:
    """The spendable XP of a state (allocation left + top-ups); None for no or unreadable state."""
    if not state:
        return None
    try:
        return msgspec.json.decode(state, type=XpState).balance
    except msgspec.DecodeError:
        return None


def same_state(a: str | None, b: str | None) -> bool:
    """Two XP states are equal as JSON (Postgres's jsonb text is spaced differently)."""
    return (msgspec.json.decode(a) if a else None) == (msgspec.json.decode(b) if b else None)


def examine(seen: Observed) -> Finding:
    """Every way the three sources disagree about one user."""
    r, p, lg = seen.redis, seen.postgres, seen.ledger
    p_seq, p_exp = (p.seq, p.exp) if p else (0, 0)
    problems: list[str] = []
    if p or lg:
        l_exp, l_seq = (lg.exp, lg.max_seq) if lg else (0, 0)
        if p_exp != l_exp:
            problems.append(f"exp: postgres {p_exp}, ledger {l_exp}")
        if p_seq != l_seq:
            problems.append(f"seq: postgres {p_seq}, ledger {l_seq}")
        if lg and lg.xp_rows:
            p_xp = p.xp_balance if p else None
            if p_xp != lg.xp:
                problems.append(f"xp: postgres {p_xp}, ledger {lg.xp}")
    in_flight = r is not None and r.seq > p_seq
    if r is not None and not in_flight:
        if r.seq < p_seq:
            problems.append(f"seq: redis {r.seq} behind postgres {p_seq} (lost writes)")
        else:
            if r.exp != p_exp:
                problems.append(f"exp: redis {r.exp}, postgres {p_exp}")
            if not same_state(r.xp_state, p.xp_state if p else None):
                r_xp, p_xp = xp_balance(r.xp_state), xp_balance(p.xp_state if p else None)
                problems.append(f"xp state: redis (balance {r_xp}) != postgres (balance {p_xp})")
    return Finding(seen, tuple(problems), in_flight)


def _int(value: Any) -> int:
    return int(value) if value is not None else 0


async def _redis_users(redis: Redis, keys: list[str]) -> list[RedisUser | None]:
    async with redis.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hmget(key, "seq", "exp", "xp")
            pipe.exists(key)
        replies = await pipe.execute()
    users: list[RedisUser | None] = []
    for (seq, exp, xp), exists in zip(replies[::2], replies[1::2], strict=True):
        users.append(RedisUser(_int(seq), _int(exp), xp or None) if exists else None)
    return users


async def observe_postgres_users(
    store: Store, redis: Redis, user_key: Callable[[str], str]
) -> AsyncGenerator[list[Observed]]:
    """Every user Postgres knows (totals or ledger), in chunks, with their Redis hash."""
    async with store.connection("reconcile scan") as conn, conn.transaction(readonly=True):
        chunk: list[Any] = []
        async for row in conn.cursor(_EVERY_USER, prefetch=CHUNK):
            chunk.append(row)
            if len(chunk) == CHUNK:
                yield await _observed(redis, user_key, chunk)
                chunk = []
        if chunk:
            yield await _observed(redis, user_key, chunk)


async def observe_user(
    store: Store, redis: Redis, user_key: Callable[[str], str], user_id: str
) -> Observed:
    """One user as the three sources see them now (reconcile checks a repair with it)."""
    async with store.connection("reconcile re-check") as conn:
        rows = await conn.fetch(_ONE_USER, user_id)
    if rows:
        [seen] = await _observed(redis, user_key, rows)
        return seen
    [r] = await _redis_users(redis, [user_key(user_id)])
    return Observed(user_id, r, None, None)


async def _observed(
    redis: Redis, user_key: Callable[[str], str], rows: list[Any]
) -> list[Observed]:
    in_redis = await _redis_users(redis, [user_key(row["user_id"]) for row in rows])
    found: list[Observed] = []
    for row, r in zip(rows, in_redis, strict=True):
        p = None
        if row["seq"] is not None:
            p = PostgresUser(row["seq"], row["exp"], row["xp_balance"], row["xp_state"])
        lg = None
        if row["max_seq"] is not None:
            sums = (row["exp_sum"], row["xp_sum"], row["xp_rows"], row["max_seq"])
            lg = LedgerSums(*map(int, sums))  # sum() of bigint is numeric: Decimal
        found.append(Observed(row["user_id"], r, p, lg))
    return found


async def observe_redis_only_users(
    store: Store, redis: Redis, buckets: int
) -> AsyncGenerator[list[Observed]]:
    """Users Redis holds that Postgres knows nothing of, in chunks of ``CHUNK``: one SCAN over
    the user keys of every bucket (``ctr:{b*}:user:*``). A SCAN per bucket walked the whole
    keyspace once per bucket, 1,024 times at the default count (issue #12). ``buckets``: the
    deployment's count; a user key of a bucket outside it is not this deployment's."""
    keys: list[str] = []
    async for key in redis.scan_iter(match=USER_KEYS, count=CHUNK):
        if bucket_of_key(key) >= buckets:
            continue
        keys.append(key)
        if len(keys) == CHUNK:
            yield await _redis_only(store, redis, keys)
            keys = []
    if keys:
        yield await _redis_only(store, redis, keys)


USER_KEYS = UserKeys("*", bucket_tag(0)).user.replace("{b0}", "{b*}")  # "ctr:{b*}:user:*"


def _user_id(key: str) -> str:
    """The user id of a user key ``ctr:{bN}:user:<uid>`` (the id may hold ``:user:`` too)."""
    return key[key.index("}:user:") + len("}:user:") :]


async def _redis_only(store: Store, redis: Redis, keys: list[str]) -> list[Observed]:
    ids = [_user_id(key) for key in keys]
    async with store.connection("reconcile lookup") as conn:
        rows = await conn.fetch(
            "SELECT user_id FROM user_totals WHERE user_id = ANY($1::text[])"
            " UNION SELECT DISTINCT user_id FROM ledger WHERE user_id = ANY($1::text[])",
            ids,
        )
    known = {row["user_id"] for row in rows}
    unknown = [(uid, key) for uid, key in zip(ids, keys, strict=True) if uid not in known]
    in_redis = await _redis_users(redis, [key for _, key in unknown])
    return [Observed(uid, r, None, None) for (uid, _), r in zip(unknown, in_redis, strict=True)]


async def quarantined(store: Store) -> int:
    """Unresolved entries the flusher set aside."""
    async with store.connection("reconcile quarantine") as conn:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM ledger_quarantine WHERE resolved_at IS NULL"
        )
        return count


async def known_users(store: Store) -> int:
    """How many users Postgres has totals for (the progress bar's total)."""
    async with store.connection("reconcile count") as conn:
        count: int = await conn.fetchval("SELECT count(*) FROM user_totals")
        return count
