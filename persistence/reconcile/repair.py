"""Reconcile's repairs, in the safe direction: no user ever loses EXP or XP to a repair.

- EXP: the target is the highest of Postgres, the ledger sum and Redis (Redis only when it holds
  the same seq as Postgres; a Redis behind Postgres lost writes and is stale). EXP is earned
  standing: granting a few points a store lost is harmless, taking away points (and maybe a level
  and what it unlocks) that a user saw is not.
- XP state: a Redis behind Postgres gets Postgres's state back (what the ledger proves). Two states
  at the same seq: the one with the higher balance is copied to the other side. The ledger is
  brought up to the chosen balance by a repair row; a ledger that shows *more* XP than the state
  is reported, never "fixed" by minting credit into a state we cannot rebuild from a sum.
- seq: the highest of the three, so new event ids never repeat a ledgered one.

Each repaired user gets ``reconcile_repair`` ledger rows (action "exp" and, when XP moved, "xp")
whose amounts bring the ledger sums to the repaired totals and whose JSON names every problem
fixed. Redis is changed only if the user's seq did not move since it was read (compare-and-set),
and Postgres only if its row did not either; a user who changed is left for the next run.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg  # type: ignore[import-untyped]
import msgspec

from counters.redis.calls import RepairUser, UserKey
from counters.redis.codes import WriteIfOutcome
from counters.redis.keys import UserKeys
from counters.redis.scripts import Scripts
from counters.xp.state import XpState
from persistence.reconcile.sources import (
    REPAIR_KIND,
    Finding,
    PostgresUser,
    same_state,
    xp_balance,
)
from persistence.store import Store


@dataclass(frozen=True, slots=True)
class Plan:
    exp: int
    level: int
    seq: int
    xp_state: str | None  # the state both stores should hold (None: no XP involved)
    redis_needs_xp: bool
    postgres_needs_xp: bool
    ledger_exp: int  # amount of the EXP repair row
    ledger_xp: int  # amount of the XP repair row (0: none)
    manual: tuple[str, ...] = field(default=())  # what a repair will not do


def plan(finding: Finding, level_for: Callable[[int], int]) -> Plan:
    """What repairing ``finding`` writes where (only for a drifted user not in flight)."""
    seen = finding.observed
    r, p, lg = seen.redis, seen.postgres, seen.ledger
    p_seq, p_exp, p_state = (p.seq, p.exp, p.xp_state) if p else (0, 0, None)
    current = r if r is not None and r.seq == p_seq else None
    exp = max(p_exp, lg.exp if lg else 0, current.exp if current else 0)
    seq = max(p_seq, lg.max_seq if lg else 0, r.seq if r else 0)
    state, redis_xp, postgres_xp = p_state, False, False
    if r is not None and r.seq < p_seq:
        redis_xp = p_state is not None  # Redis lost writes: give it back what Postgres proves
    elif current is not None and not same_state(current.xp_state, p_state):
        if _rank(xp_balance(current.xp_state)) > _rank(xp_balance(p_state)):
            state, postgres_xp = current.xp_state, True
        else:
            redis_xp = p_state is not None
    manual: list[str] = []
    balance = xp_balance(state)
    ledger_xp_sum = lg.xp if lg else 0
    ledger_xp = 0
    if balance is not None and balance > ledger_xp_sum:
        ledger_xp = balance - ledger_xp_sum
    elif (balance or 0) < ledger_xp_sum:
        manual.append(f"ledger shows {ledger_xp_sum} XP but the state holds {balance}")
    postgres_xp = postgres_xp or (p is not None and balance is not None and p.xp_balance != balance)
    return Plan(
        exp=exp, level=level_for(exp), seq=seq, xp_state=state, redis_needs_xp=redis_xp,
        postgres_needs_xp=postgres_xp, ledger_exp=exp - (lg.exp if lg else 0),
        ledger_xp=ledger_xp, manual=tuple(manual),
    )  # fmt: skip


def _rank(balance: int | None) -> int:
    """A balance to compare states by: no (or an unreadable) state ranks below a zero balance."""
    return -1 if balance is None else balance


class _Changed(Exception):
    """The user changed since reconcile read them."""


async def repair(
    finding: Finding, plan: Plan, store: Store, scripts: Scripts, buckets: int
) -> bool:
    """Apply ``plan``; False when the user changed meanwhile (left for the next run)."""
    seen = finding.observed
    r, p = seen.redis, seen.postgres
    if r is not None and (r.exp != plan.exp or r.seq != plan.seq or plan.redis_needs_xp):
        key = UserKeys.of(seen.user_id, buckets).user
        xp = plan.xp_state if plan.redis_needs_xp and plan.xp_state else ""
        call = RepairUser(
            expected_seq=r.seq, exp=plan.exp, level=plan.level, seq=plan.seq, xp_state=xp
        )
        (code,) = await scripts.run(UserKey(user=key), call)
        if code != WriteIfOutcome.WRITTEN:
            return False
    try:
        async with store.connection("reconcile repair") as conn, conn.transaction():
            await _repair_totals(conn, seen.user_id, plan, p)
            await conn.executemany(_INSERT_REPAIR, _repair_rows(finding, plan))
    except _Changed:
        return False
    return True


_UPDATE = """
UPDATE user_totals SET exp = $2, level = $3, seq = GREATEST(seq, $4),
       exp_seq = GREATEST(exp_seq, $4), updated_at = now()
WHERE user_id = $1 AND seq = $5 AND exp = $6
"""
_UPDATE_WITH_XP = """
UPDATE user_totals SET exp = $2, level = $3, seq = GREATEST(seq, $4),
       exp_seq = GREATEST(exp_seq, $4), xp_seq = GREATEST(xp_seq, $4), xp_state = $7::jsonb,
       xp_balance = $8, xp_allocation = $9, xp_topup = $10, xp_held = $11, tier = $12,
       updated_at = now()
WHERE user_id = $1 AND seq = $5 AND exp = $6
"""
_INSERT = """
INSERT INTO user_totals (user_id, exp, level, seq, exp_seq, xp_seq, xp_state, xp_balance,
                         xp_allocation, xp_topup, xp_held, tier)
VALUES ($1, $2, $3, $4, $4, $4, $5::jsonb, $6, $7, $8, $9, $10)
ON CONFLICT (user_id) DO NOTHING
"""
_INSERT_REPAIR = """
INSERT INTO ledger (event_id, user_id, seq, kind, action, amount, actor, occurred_at, totals,
                    stream_id)
VALUES ($1, $2, $3, $4, $5, $6, 'reconcile', now(), $7::jsonb, '')
"""


async def _repair_totals(
    conn: asyncpg.Connection, user_id: str, plan: Plan, p: PostgresUser | None
) -> None:
    """Write the repaired totals, only over the row reconcile read (else ``_Changed``)."""
    head = (user_id, plan.exp, plan.level, plan.seq)
    xp = _xp_columns(plan.xp_state)
    if p is None:
        status = await conn.execute(_INSERT, *head, *xp)
    elif plan.postgres_needs_xp:
        status = await conn.execute(_UPDATE_WITH_XP, *head, p.seq, p.exp, *xp)
    else:
        status = await conn.execute(_UPDATE, *head, p.seq, p.exp)
    if status.endswith(" 0"):
        raise _Changed


def _xp_columns(state: str | None) -> list[object]:
    if not state:
        return [None, None, None, None, None, None]
    try:
        xp = msgspec.json.decode(state, type=XpState)
    except msgspec.DecodeError:
        return [state, None, None, None, None, None]
    return [state, xp.balance, xp.alloc, xp.topup, xp.held, xp.tier or ""]


def _repair_rows(finding: Finding, plan: Plan) -> list[tuple[object, ...]]:
    user_id = finding.observed.user_id
    detail = {"exp": plan.exp, "level": plan.level, "problems": list(finding.problems)}
    rows: list[tuple[object, ...]] = [("exp", plan.ledger_exp, detail)]
    if plan.ledger_xp:
        rows.append(("xp", plan.ledger_xp, {"xp_balance": xp_balance(plan.xp_state)}))
    stamp = f"{int(time.time() * 1000)}{secrets.token_hex(2)}"
    return [
        (f"{user_id}:repair:{plan.seq}:{action}:{stamp}", user_id, plan.seq, REPAIR_KIND, action,
         amount, msgspec.json.encode(totals).decode())
        for action, amount, totals in rows
    ]  # fmt: skip
