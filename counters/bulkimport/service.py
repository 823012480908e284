"""Applying import records: one ``import_user.lua`` call each, through the same hydration path
as every other write, so an import is safe while the service serves (each line is one atomic
step; the flusher ledgers its event like any other)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Sequence
from enum import IntEnum
from typing import Any

from redis.asyncio import Redis

from counters.bulkimport.records import ExpLine, Record, SubscriptionLine
from counters.clock import Clock
from counters.errors import ScriptReplyError, StorageError
from counters.redis.hydration import Hydrator, run_hydrated
from counters.redis.keys import UserKeys
from counters.redis.scripts import Arg, Scripts
from counters.rules import Rules

ACTOR = "import"


class ImportOutcome(IntEnum):
    """Reply codes of lua/import_user.lua (6, needs hydration, is handled by run_hydrated)."""

    APPLIED = 1
    ALREADY_IMPORTED = 12
    TOO_MANY_TOPUPS = 13
    SUBSCRIPTION_ACTIVE = 15


class ImportService:
    """Applies records to Redis with the rules of the running service."""

    def __init__(
        self,
        rules: Rules,
        scripts: Scripts,
        redis: Redis,
        hydrator: Hydrator,
        clock: Clock,
        *,
        buckets: int,
    ) -> None:
        self._rules = rules
        self._scripts = scripts
        self._redis = redis
        self._hydrator = hydrator
        self._clock = clock
        self._buckets = buckets
        self._thresholds = json.dumps(list(rules.exp.thresholds))
        self._tiers = rules.xp.tiers_arg

    def _args(self, record: Record, may_create: str) -> list[Arg]:
        line = record.line
        now_ms = int(self._clock.now() * 1000)
        common: list[Arg] = [line.user_id, now_ms, "", 1, record.import_id, ACTOR, may_create,
                             self._tiers]  # fmt: skip
        if isinstance(line, ExpLine):
            return [*common, "exp", self._thresholds, line.exp, "", 0, 0]
        if isinstance(line, SubscriptionLine):
            start = 0 if line.period_start is None else int(line.period_start.timestamp())
            return [*common, "subscription", self._thresholds, 0, line.tier, start, 0]
        expires = 0 if line.expires_at is None else int(line.expires_at.timestamp())
        limit = self._rules.xp.max_active_grants
        return [*common, "topup", self._thresholds, line.xp_amount, "", expires, limit]

    async def apply(self, record: Record) -> ImportOutcome:
        """Apply one record (at most once per user and import id); its outcome."""
        user = UserKeys.of(record.line.user_id, self._buckets)
        keys = [user.user, user.events, user.unused, user.imports]

        def call(may_create: str) -> Awaitable[list[Any]]:
            return self._scripts.run("import_user", keys, self._args(record, may_create))

        reply = await run_hydrated(self._hydrator, record.line.user_id, call)
        try:
            return ImportOutcome(reply[0])
        except ValueError as exc:
            raise ScriptReplyError(f"import_user replied with unknown code {reply[0]}") from exc

    async def applied(self, records: Sequence[Record]) -> set[str]:
        """The import ids of ``records`` that Redis has already applied."""
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for record in records:
                    user = UserKeys.of(record.line.user_id, self._buckets)
                    pipe.sismember(user.imports, record.import_id)
                found = await pipe.execute()
        except Exception as exc:  # redis-py's errors: one wrapper, as scripts.py does
            raise StorageError(f"Redis: {exc}") from exc
        return {r.import_id for r, hit in zip(records, found, strict=True) if hit}
