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

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, get_args

import asyncpg  # type: ignore[import-untyped]
import msgspec

from counters.rules import Rules
from counters.webhooks import (
    LevelUp,
    LevelUpWebhook,
    SubscriptionRenewed,
    SubscriptionRenewedWebhook,
    Webhook,
    XpBalance,
    XpDepletedWebhook,
    XpLowBalanceWebhook,
)
from persistence.events import (
    Event,
    ExpAdjust,
    ExpAward,
    LedgerEvent,
    XpAllocation,
    XpChange,
    XpImport,
)

# Kinds as the event schema (persistence/events.py) tags them. Imports (`counters import`, a
# migration of existing users) send no webhooks: receivers would get a flood of old news.
_EXP_KINDS = frozenset(kind.__struct_config__.tag for kind in (ExpAward, ExpAdjust))
_XP_KINDS = frozenset(
    kind.__struct_config__.tag
    for kind in get_args(Event)
    if issubclass(kind, XpChange) and kind is not XpImport
)
_ALLOCATION = XpAllocation.__struct_config__.tag

_encode = msgspec.json.Encoder().encode

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
    payload: Webhook  # the body sent
    ts_ms: int


@dataclass(frozen=True, slots=True)
class OutboxPolicy:
    """What the mapping needs from the rules: levels, unlocks, low-balance thresholds.

    ``rules_of`` gives the rules in force (a reload swaps them: counters/runtime/reload.py)."""

    rules_of: Callable[[], Rules]

    @property
    def rules(self) -> Rules:
        return self.rules_of()

    def rows(self, events: list[LedgerEvent]) -> list[OutboxRow]:
        """The webhooks ``events`` cause, in the events' order."""
        found: list[OutboxRow] = []
        for event in events:
            if event.kind in _EXP_KINDS:
                found += self._level_up(event)
            elif event.kind in _XP_KINDS:
                found += self._xp(event)
        return found

    def _level_up(self, event: LedgerEvent) -> list[OutboxRow]:
        exp = event.totals.get("exp")
        if not isinstance(exp, int):
            return []
        level, before = self.rules.exp.level_for(exp), self.rules.exp.level_for(exp - event.amount)
        if level <= before:
            return []
        data = LevelUp(
            user_id=event.user_id, ledger_event_id=event.event_id, level=level,
            previous_level=before, total_exp=exp,
            unlocked_features=self.rules.entitlements.unlocked_between(before, level),
            action=event.action,
        )  # fmt: skip
        return [_row(event, LevelUpWebhook, data)]

    def _xp(self, event: LedgerEvent) -> list[OutboxRow]:
        balance = event.totals.get("xp_balance")
        if not isinstance(balance, int):
            return []
        before = balance - event.amount
        tier = str(event.totals.get("tier") or "") or None
        change = XpBalance(
            user_id=event.user_id, ledger_event_id=event.event_id, tier=tier, xp_balance=balance,
            previous_xp_balance=before, kind=event.kind, action=event.action,
        )  # fmt: skip
        found: list[OutboxRow] = []
        threshold = self.rules.webhooks.low_balance.get(tier or "")
        if threshold is not None and balance < threshold <= before:
            low = msgspec.structs.replace(change, threshold=threshold)
            found.append(_row(event, XpLowBalanceWebhook, low))
        if balance == 0 < before:
            found.append(_row(event, XpDepletedWebhook, change))
        allocation = event.totals.get("xp_allocation")
        renewed_at = event.totals.get("effective_ts")
        if event.kind == _ALLOCATION and event.action == "renewal":
            renewed = SubscriptionRenewed(
                user_id=event.user_id, ledger_event_id=event.event_id, tier=tier,
                xp_allocation=allocation if isinstance(allocation, int) else 0, xp_balance=balance,
                renewed_at_ms=renewed_at if isinstance(renewed_at, int) else event.ts_ms,
            )  # fmt: skip
            found.append(_row(event, SubscriptionRenewedWebhook, renewed))
        return found


def _row(event: LedgerEvent, kind: type[Webhook], data: Any) -> OutboxRow:
    tag = kind.__struct_config__.tag
    event_id = f"{event.event_id}:{tag}"
    payload = kind(id=event_id, created=event.ts_ms // 1000, data=data)
    return OutboxRow(event_id, str(tag), event.user_id, payload, event.ts_ms)


async def write_outbox(conn: asyncpg.Connection, rows: list[OutboxRow]) -> None:
    """Insert ``rows`` (in the caller's transaction); rows already there are left as they are."""
    if not rows:
        return
    await conn.execute(
        _INSERT,
        [r.event_id for r in rows],
        [r.type for r in rows],
        [r.user_id for r in rows],
        [_encode(r.payload).decode() for r in rows],
        [r.ts_ms for r in rows],
    )
