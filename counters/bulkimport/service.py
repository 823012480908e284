"""Applying import records: one ``import_user.lua`` call each, through the same hydration path
as every other write, so an import is safe while the service serves (each line is one atomic
step; the flusher ledgers its event like any other)."""

from __future__ import annotations

from collections.abc import Sequence

from redis.asyncio import Redis

from counters.bulkimport.records import ExpLine, Record, SubscriptionLine
from counters.clock import Clock, unix_seconds
from counters.errors import RedisStorageError, ScriptReplyError
from counters.ids import IMPORT_ACTOR
from counters.redis.calls import ImportUser, ImportUserKeys
from counters.redis.codes import MAX_TOTAL, ImportSkip, XpOutcome
from counters.redis.hydration import Hydrator, may_create_arg, run_hydrated
from counters.redis.keys import UserKeys
from counters.redis.scripts import Scripts
from counters.rules import Rules, rules_version
from counters.rules.compiled import lua_rules

ACTOR = IMPORT_ACTOR
ImportOutcome = XpOutcome | ImportSkip
# What each outcome of lua/import_user.lua means for the line, as the command reports it.
OUTCOMES: dict[ImportOutcome, str] = {
    XpOutcome.DONE: "applied",
    XpOutcome.UNCHANGED: "already imported",
    XpOutcome.TOO_MANY: "skipped: too many live top-ups",
    XpOutcome.TOTAL_LIMIT: f"skipped: the total or balance would pass {MAX_TOTAL:,}",
    ImportSkip.SUBSCRIPTION_ACTIVE: "skipped: a subscription is active",
}


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
        # The levels and tiers import_user applies are compiled into it (counters/rules/compiled.py)
        self._version = rules_version(rules)
        scripts.use_rules(self._version, lua_rules(rules))

    def _call(self, record: Record) -> ImportUser:
        line = record.line
        op, amount, tier, at, reason = "topup", 0, "", 0, ""
        if isinstance(line, ExpLine):
            op, amount = "exp", line.exp
        elif isinstance(line, SubscriptionLine):
            op, tier = "subscription", line.tier
            at = 0 if line.period_start is None else unix_seconds(line.period_start)
        else:
            amount, reason = line.xp_amount, line.reason
            at = 0 if line.expires_at is None else unix_seconds(line.expires_at)
        return ImportUser(
            user_id=line.user_id, now_ms=int(self._clock.now() * 1000), fingerprint="",
            idem_ttl=1, idem_key=record.import_id, actor=ACTOR,
            may_create=may_create_arg(self._hydrator), rules=self._version, op=op,
            amount=amount, tier=tier, at=at,
            max_grants=self._rules.xp.max_active_grants, reason=reason,
        )  # fmt: skip

    async def apply(self, record: Record) -> ImportOutcome:
        """Apply one record (at most once per user and import id); its outcome."""
        user = UserKeys.of(record.line.user_id, self._buckets)
        keys = ImportUserKeys(user.user, user.events, user.unused, user.meta, user.imports)
        reply = await run_hydrated(
            self._hydrator, self._scripts, record.line.user_id, keys, self._call(record)
        )
        code = reply[0]
        outcome: ImportOutcome | None = None
        for family in (XpOutcome, ImportSkip):
            if code in family._value2member_map_:
                outcome = family(code)
        if outcome is None or outcome not in OUTCOMES:
            raise ScriptReplyError(f"import_user replied with unknown code {code}")
        return outcome

    async def applied(self, records: Sequence[Record]) -> set[str]:
        """The import ids of ``records`` that Redis has already applied."""
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for record in records:
                    user = UserKeys.of(record.line.user_id, self._buckets)
                    pipe.sismember(user.imports, record.import_id)
                found = await pipe.execute()
        except Exception as exc:  # redis-py's errors: one wrapper, as scripts.py does
            raise RedisStorageError(f"Redis: {exc}") from exc
        return {r.import_id for r, hit in zip(records, found, strict=True) if hit}
