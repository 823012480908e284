"""Which ledger events cause which webhooks, and writing them to the outbox.

Called by the writer inside the transaction that inserts the ledger rows (``write_batch``), with
only the rows that transaction inserted: a batch written twice adds nothing the second time, and
each webhook's id is stable (``<ledger event id>:<type>``), so a receiver can dedupe on it.

Each event is judged on its own (its totals after, minus its amount, give the totals before):

    level_up              exp_award / exp_adjust whose level after is above the level before
    xp_low_balance        an XP change taking the balance from >= the tier's threshold to below
                          it (``[webhooks.low_balance]`` in the rules; a tier not listed: none)
    xp_depleted           an XP change taking a positive balance to 0
    subscription_renewed  an xp_allocation ``renewal`` (the monthly allocation came due)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import orjson

from counters.rules import Rules
from persistence.events import LedgerEvent

LEVEL_UP = "level_up"
XP_LOW_BALANCE = "xp_low_balance"
XP_DEPLETED = "xp_depleted"
SUBSCRIPTION_RENEWED = "subscription_renewed"
TYPES = (LEVEL_UP, XP_LOW_BALANCE, XP_DEPLETED, SUBSCRIPTION_RENEWED)

_INSERT = """
INSERT INTO webhook_outbox (event_id, type, user_id, payload, next_attempt_at)
SELECT e, t, u, p::jsonb, to_timestamp(ts / 1000.0)
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[]) AS x(e, t, u, p, ts)
ON CONFLICT (event_id) DO NOTHING
"""


@dataclass(frozen=True, slots=True)
class OutboxRow:
    event_id: str
    type: str
    user_id: str
    payload: dict[str, Any]  # the body sent: {"id", "type", "created", "data"}
    ts_ms: int


@dataclass(frozen=True, slots=True)
class OutboxPolicy:
    """What the mapping needs from the rules: levels, unlocks, low-balance thresholds."""

    rules: Rules

    def rows(self, events: list[LedgerEvent]) -> list[OutboxRow]:
        """The webhooks ``events`` cause, in the events' order."""
        found: list[OutboxRow] = []
        for event in events:
            if event.kind in ("exp_award", "exp_adjust"):
                found += self._level_up(event)
            elif event.kind.startswith("xp_"):
                found += self._xp(event)
        return found

    def _level_up(self, event: LedgerEvent) -> list[OutboxRow]:
        exp = event.totals.get("exp")
        if not isinstance(exp, int):
            return []
        level, before = self.rules.exp.level_for(exp), self.rules.exp.level_for(exp - event.amount)
        if level <= before:
            return []
        unlocked = self.rules.entitlements.unlocked_between(before, level)
        data = {
            "level": level, "previous_level": before, "total_exp": exp,
            "unlocked_features": unlocked, "action": event.action,
        }  # fmt: skip
        return [_row(event, LEVEL_UP, data)]

    def _xp(self, event: LedgerEvent) -> list[OutboxRow]:
        balance = event.totals.get("xp_balance")
        if not isinstance(balance, int):
            return []
        before = balance - event.amount
        tier = str(event.totals.get("tier") or "")
        common = {"tier": tier or None, "xp_balance": balance, "previous_xp_balance": before,
                  "kind": event.kind, "action": event.action}  # fmt: skip
        found: list[OutboxRow] = []
        threshold = self.rules.webhooks.low_balance.get(tier)
        if threshold is not None and balance < threshold <= before:
            found.append(_row(event, XP_LOW_BALANCE, {**common, "threshold": threshold}))
        if balance == 0 < before:
            found.append(_row(event, XP_DEPLETED, common))
        if event.kind == "xp_allocation" and event.action == "renewal":
            renewed = {
                "tier": tier or None, "xp_allocation": event.totals.get("xp_allocation"),
                "xp_balance": balance, "renewed_at_ms": event.totals.get("effective_ts"),
            }  # fmt: skip
            found.append(_row(event, SUBSCRIPTION_RENEWED, renewed))
        return found


def _row(event: LedgerEvent, kind: str, data: dict[str, Any]) -> OutboxRow:
    event_id = f"{event.event_id}:{kind}"
    payload = {
        "id": event_id,
        "type": kind,
        "created": event.ts_ms // 1000,
        "data": {"user_id": event.user_id, "ledger_event_id": event.event_id, **data},
    }
    return OutboxRow(event_id, kind, event.user_id, payload, event.ts_ms)


async def write_outbox(conn: asyncpg.Connection, rows: list[OutboxRow]) -> None:
    """Insert ``rows`` (in the caller's transaction); rows already there are left as they are."""
    if not rows:
        return
    await conn.execute(
        _INSERT,
        [r.event_id for r in rows],
        [r.type for r in rows],
        [r.user_id for r in rows],
        [orjson.dumps(r.payload).decode() for r in rows],
        [r.ts_ms for r in rows],
    )
