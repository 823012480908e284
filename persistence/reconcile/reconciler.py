"""``counters reconcile``: find users whose Redis totals, Postgres totals and ledger disagree.

Meant for a cron. It first drains the event streams (so Redis and Postgres can be compared at
all), then streams through every user (``persistence.reconcile.sources``) and, with
``repair``, fixes drift in the safe direction (``persistence.reconcile.repair``). Users written
while it runs are "in flight" (Redis ahead of Postgres by unflushed events), not drift.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field

from redis.asyncio import Redis

from counters.redis.keys import UserKeys
from counters.redis.scripts import Scripts
from persistence.flusher import Flusher
from persistence.reconcile.repair import plan, repair
from persistence.reconcile.sources import (
    Finding,
    Observed,
    examine,
    observe_postgres_users,
    observe_redis_only_users,
    observe_user,
    quarantined,
)
from persistence.store import Store

_KEEP_IDS = 1_000  # user ids kept for the summary; every drifted user is reported as found

OnDrift = Callable[[Finding, str], None]  # the finding, and what became of it


@dataclass(slots=True)
class Report:
    users: int = 0
    in_flight: int = 0
    drifted: int = 0
    repaired: int = 0
    unrepaired: list[str] = field(default_factory=list)  # first user ids left drifted
    quarantined: int = 0  # unresolved rows in ledger_quarantine

    @property
    def clean(self) -> bool:
        """Nothing drifted (or all of it was repaired) and nothing waits in quarantine."""
        return self.drifted == self.repaired and not self.quarantined


@dataclass(slots=True)
class Reconciler:
    redis: Redis
    store: Store
    scripts: Scripts
    buckets: int
    level_for: Callable[[int], int]
    repair: bool = False
    on_drift: OnDrift | None = None
    on_progress: Callable[[int], None] | None = None
    report: Report = field(default_factory=Report)

    async def run(self, flusher: Flusher | None = None) -> Report:
        """Drain the streams (with ``flusher``), then compare every user. Returns the summary."""
        if flusher is not None:
            await flusher.drain(max_failures=5)
        self.report = Report(quarantined=await quarantined(self.store))
        await self._check(observe_postgres_users(self.store, self.redis, self._user_key))
        await self._check(observe_redis_only_users(self.store, self.redis, self.buckets))
        return self.report

    def _user_key(self, user_id: str) -> str:
        return UserKeys.of(user_id, self.buckets).user

    async def _check(self, chunks: AsyncGenerator[list[Observed]]) -> None:
        async with aclosing(chunks):  # on an error too: the cursor's connection goes back
            async for chunk in chunks:
                for seen in chunk:
                    await self._one(seen)
                if self.on_progress is not None:
                    self.on_progress(len(chunk))

    async def _one(self, seen: Observed) -> None:
        report = self.report
        report.users += 1
        finding = examine(seen)
        report.in_flight += finding.in_flight
        if not finding.drifted:
            return
        report.drifted += 1
        outcome = await self._repair(finding) if self.repair else "not repaired"
        if outcome == "repaired":
            report.repaired += 1
        elif len(report.unrepaired) < _KEEP_IDS:
            report.unrepaired.append(seen.user_id)
        if self.on_drift is not None:
            self.on_drift(finding, outcome)

    async def _repair(self, finding: Finding) -> str:
        if finding.in_flight:
            return "in flight: re-run after the flusher caught up"
        fix = plan(finding, self.level_for)
        if fix.manual:
            return "needs a human: " + "; ".join(fix.manual)
        if not await repair(finding, fix, self.store, self.scripts, self.buckets):
            return "changed while reconciling: re-run"
        user_id = finding.observed.user_id
        after = examine(await observe_user(self.store, self.redis, self._user_key, user_id))
        if after.drifted and not after.in_flight:  # a repair claims only what it achieved
            return "repair did not fix it: " + "; ".join(after.problems)
        return "repaired"
