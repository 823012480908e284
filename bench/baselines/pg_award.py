"""The design users would otherwise pick: POST /api/exp/gain on Postgres alone, as the seed's
original backend did it. A row per user with its daily fields, locked with SELECT ... FOR UPDATE
in a transaction; the same limit / cap / partial-award rule (from ``counters.rules``); a ledger
row per award; entity owners and once-per-actor likes in tables. Same HTTP stack, same auth
(service key + X-User-Id), same request decoding and response body as the service.

Settings from the environment: COUNTERS_DATABASE_URL, COUNTERS_SERVICE_KEYS, and
BENCH_PG_SYNCHRONOUS_COMMIT ("on" by default: every award waits for its WAL flush).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import msgspec
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.schemas.exp import GainResponse, gain_decoder
from counters.auth import Authenticator
from counters.clock import SystemClock, next_utc_midnight, utc_day
from counters.exp.levels import progress
from counters.rules import load_rules

SCHEMA = """
CREATE TABLE IF NOT EXISTS pg_users (
    user_id      text PRIMARY KEY,
    exp          integer NOT NULL DEFAULT 0,
    level        integer NOT NULL DEFAULT 1,
    day          text NOT NULL DEFAULT '',
    daily_exp    integer NOT NULL DEFAULT 0,
    daily_counts jsonb NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS pg_entities (
    entity_type text, entity_id text, owner_id text NOT NULL,
    PRIMARY KEY (entity_type, entity_id)
);
CREATE TABLE IF NOT EXISTS pg_likers (
    entity_type text, entity_id text, actor text,
    PRIMARY KEY (entity_type, entity_id, actor)
);
CREATE TABLE IF NOT EXISTS pg_events (
    id bigserial PRIMARY KEY, user_id text NOT NULL, action text NOT NULL,
    amount integer NOT NULL, actor text NOT NULL, target text, day text NOT NULL,
    total_exp integer NOT NULL, level integer NOT NULL, occurred_at timestamptz DEFAULT now()
);
"""


async def prepare(url: str, owners: list[tuple[str, str, str]]) -> None:
    """Create the tables (emptied) and record the entities that exist before the run."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(SCHEMA)
        await conn.execute("TRUNCATE pg_users, pg_entities, pg_likers, pg_events")
        await conn.copy_records_to_table(
            "pg_entities", records=owners, columns=["entity_type", "entity_id", "owner_id"]
        )
    finally:
        await conn.close()


class _Refused(Exception):
    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        self.status, self.detail, self.headers = status, detail, headers


def app_from_env() -> Starlette:
    """Uvicorn factory (``bench.baselines.pg_award:app_from_env``)."""
    all_rules = load_rules()
    rules = all_rules.exp
    clock = SystemClock()
    auth = Authenticator(None, os.environ["COUNTERS_SERVICE_KEYS"].split(","))
    url = os.environ["COUNTERS_DATABASE_URL"]
    commit = os.environ.get("BENCH_PG_SYNCHRONOUS_COMMIT", "on")
    pools: list[asyncpg.Pool] = []

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        pool = await asyncpg.create_pool(
            url, min_size=16, max_size=32, server_settings={"synchronous_commit": commit}
        )
        pools.append(pool)
        try:
            yield
        finally:
            await pool.close()

    async def award(conn: Any, actor: str, name: str, t_type: str | None, t_id: str | None) -> Any:
        action = rules.actions.get(name)
        if action is None:
            raise _Refused(422, f"Unknown action '{name}'")
        user_id, mode = actor, "actor"
        if action.awards == "creator":
            if t_type is None or t_id is None:
                raise _Refused(422, f"{name} needs target_type and target_id")
            user_id = await conn.fetchval(
                "SELECT owner_id FROM pg_entities WHERE entity_type = $1 AND entity_id = $2",
                t_type, t_id,
            )  # fmt: skip
            if user_id is None:
                raise _Refused(404, f"Unknown {t_type} {t_id}: no owner is recorded")
            if user_id == actor:
                raise _Refused(409, f"{name} on your own {t_type} awards nothing")
            mode = "creator_once" if action.once_per_actor else "creator"
        elif action.records_ownership and t_type is not None and t_id is not None:
            owner = await conn.fetchval(
                "INSERT INTO pg_entities VALUES ($1, $2, $3) ON CONFLICT (entity_type, entity_id)"
                " DO UPDATE SET owner_id = pg_entities.owner_id RETURNING owner_id",
                t_type, t_id, actor,
            )  # fmt: skip
            if owner != actor:
                raise _Refused(409, f"{t_type} {t_id} is already owned by another user")
        now = clock.now()
        today = utc_day(now)
        await conn.execute(
            "INSERT INTO pg_users (user_id) VALUES ($1) ON CONFLICT DO NOTHING", user_id
        )
        row = await conn.fetchrow(
            "SELECT exp, level, day, daily_exp, daily_counts FROM pg_users WHERE user_id = $1"
            " FOR UPDATE",
            user_id,
        )
        total, level = row["exp"], row["level"]
        counts: dict[str, int] = orjson.loads(row["daily_counts"]) if row["day"] == today else {}
        gained = row["daily_exp"] if row["day"] == today else 0
        count = counts.get(name, 0)
        if mode == "creator_once":
            liked = await conn.fetchval(
                "SELECT 1 FROM pg_likers WHERE entity_type = $1 AND entity_id = $2 AND actor = $3",
                t_type, t_id, actor,
            )  # fmt: skip
            if liked:
                raise _Refused(409, f"{actor} already triggered {name}; no EXP awarded")
        retry = {"Retry-After": str(max(next_utc_midnight(now) - int(now), 1))}
        if action.daily_limit and count >= action.daily_limit:
            detail = f"Daily limit reached for {name} ({action.daily_limit}/day)"
            raise _Refused(429, detail, retry)
        cap = rules.cap_for(level)
        if gained >= cap:
            raise _Refused(429, f"Daily EXP cap reached ({cap} EXP/day for level {level})", retry)
        added = min(action.exp, cap - gained)
        counts[name] = count + 1
        new_total = total + added
        new_level = rules.level_for(new_total)
        await conn.execute(
            "UPDATE pg_users SET exp = $2, level = $3, day = $4, daily_exp = $5,"
            " daily_counts = $6::jsonb WHERE user_id = $1",
            user_id, new_total, new_level, today, gained + added, orjson.dumps(counts).decode(),
        )  # fmt: skip
        if mode == "creator_once":
            await conn.execute("INSERT INTO pg_likers VALUES ($1, $2, $3)", t_type, t_id, actor)
        target = f"{t_type}:{t_id}" if t_type else None
        await conn.execute(
            "INSERT INTO pg_events (user_id, action, amount, actor, target, day, total_exp, level)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            user_id, name, added, actor, target, today, new_total, new_level,
        )  # fmt: skip
        return GainResponse(
            awarded_to=user_id, action=name, success=True, exp_added=added, total_exp=new_total,
            level=new_level, leveled_up=new_level > level, daily_exp_gained=gained + added,
            daily_exp_cap=rules.cap_for(new_level), action_count=count + 1,
            action_limit=action.daily_limit, progress=progress(rules, new_total),
            unlocked_features=all_rules.entitlements.unlocked_between(level, new_level),
        )  # fmt: skip

    async def gain(request: Request) -> Response:
        principal = auth.authenticate(
            request.headers.get("authorization"), request.headers.get("x-user-id")
        )
        req = gain_decoder.decode(await request.body())
        t_id = None if req.target_id is None else str(req.target_id)
        try:
            async with pools[0].acquire() as conn, conn.transaction():
                body = await award(conn, principal.user_id, req.action, req.target_type, t_id)
        except _Refused as refused:
            content = orjson.dumps({"detail": refused.detail})
            return Response(content, refused.status, refused.headers, "application/json")
        return Response(msgspec.json.encode(body), media_type="application/json")

    return Starlette(routes=[Route("/api/exp/gain", gain, methods=["POST"])], lifespan=lifespan)
