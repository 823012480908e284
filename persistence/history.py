"""Reading a user's ledger rows for ``GET /api/exp/history`` and ``/api/v1/xp/transactions``.

One indexed range scan per page (``ledger_user_time``, migration 0005), newest first, keyset on
``(occurred_at, seq)``. One row more than the limit is read to know whether a next page exists.
"""

from __future__ import annotations

from typing import Any

import asyncpg  # type: ignore[import-untyped]
import orjson

from counters.history import REPAIR_KIND, Cursor, HistoryEntry, HistoryPage, HistoryQuery

_SELECT = """
SELECT event_id, seq, kind, action, amount, occurred_at, actor, target, idem, totals::text
FROM ledger
WHERE user_id = $1
  AND (kind LIKE $2 OR (kind = $3 AND action = $4))
  AND (cardinality($5::text[]) = 0 OR kind = ANY($5::text[]))
  AND ($6::timestamptz IS NULL OR occurred_at >= $6)
  AND ($7::timestamptz IS NULL OR occurred_at < $7)
  AND ($8::timestamptz IS NULL OR (occurred_at, seq) < ($8, $9::bigint))
ORDER BY occurred_at DESC, seq DESC
LIMIT $10
"""


async def read_history(conn: asyncpg.Connection, query: HistoryQuery) -> HistoryPage:
    """One page of ``query``'s rows, newest first, and the cursor of the next page."""
    cursor = query.cursor
    rows = await conn.fetch(
        _SELECT,
        query.user_id,
        f"{query.family}\\_%",
        REPAIR_KIND,
        query.family,
        list(query.kinds),
        query.since,
        query.until,
        cursor.occurred_at if cursor else None,
        cursor.seq if cursor else 0,
        query.limit + 1,
    )
    items = [_entry(row) for row in rows[: query.limit]]
    more = len(rows) > query.limit
    last = items[-1] if items else None
    next_cursor = Cursor.of(last.occurred_at, last.seq).encode() if more and last else None
    return HistoryPage(items=items, next_cursor=next_cursor)


def _entry(row: Any) -> HistoryEntry:
    return HistoryEntry(
        id=row["event_id"], seq=row["seq"], kind=row["kind"], action=row["action"],
        amount=row["amount"], occurred_at=row["occurred_at"], actor=row["actor"],
        target=row["target"], idempotency_key=row["idem"], totals=orjson.loads(row["totals"]),
    )  # fmt: skip
