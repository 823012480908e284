"""The ledger's side of the leaderboards: each user's EXP from awards in a period.

Only asked when a bucket's board has no ``board_ok`` marker (``counters.exp.leaderboard``): after
Redis lost its data, or on a period's first read. A day or a week is a range scan of
``ledger_award_day_user`` (migration 0007); ``all`` sums every award (once per Redis lifetime).
"""

from __future__ import annotations

from counters.exp.leaderboard import LedgerSums, PeriodWindow
from persistence.store import Store

_SUMS = """
SELECT user_id, sum(amount) AS exp FROM ledger
WHERE kind = 'exp_award' AND ($1::text IS NULL OR day BETWEEN $1 AND $2)
GROUP BY user_id
"""


def ledger_sums(store: Store, timeout: float = 30.0) -> LedgerSums:
    """``Leaderboards``'s rebuild source: ``(period, first_day, last_day) -> {user: exp}``."""

    async def sums(period: str, first_day: str | None, last_day: str | None) -> dict[str, int]:
        async with store.bounded(f"leaderboard rebuild ({period})", timeout) as conn:
            rows = await conn.fetch(_SUMS, first_day, last_day)
        return {row["user_id"]: int(row["exp"]) for row in rows}

    return sums


_USER_SUMS = """
SELECT COALESCE(sum(amount) FILTER (WHERE day BETWEEN $2 AND $3), 0) AS week,
       COALESCE(sum(amount), 0) AS total
FROM ledger WHERE user_id = $1 AND kind = 'exp_award'
"""


async def user_award_sums(store: Store, user_id: str, week: PeriodWindow) -> tuple[int, int]:
    """One user's EXP from awards in ``week`` and in all time (hydration puts them back on the
    boards); index ``ledger_user_time`` (its user prefix; migration 0007)."""
    async with store.bounded("leaderboard sums of a user", store.timeout) as conn:
        row = await conn.fetchrow(_USER_SUMS, user_id, week.first_day, week.last_day)
    return int(row["week"]), int(row["total"])
