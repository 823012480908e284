"""EXP and levels: awards with per-action daily limits and level-based daily caps, corrections.

An award to oneself (``daily_chat``, ``create_*``) is one Lua script, one round trip, in the
acting user's slot, its idempotency record there too. A creator-targeted award (a like, a fork)
spans the actor's, the entity's and the owner's slots: ``counters.exp.creator`` runs it as a
short protocol of single-slot scripts that stays exact (see lua/reserve_creator_award.lua).
This module chooses the keys, passes an action's reward and limit as arguments (the levels and
caps are compiled into the scripts, counters/rules/compiled.py: a call names its rules version)
and decodes the fixed-shape reply.
Reaching a limit or a cap is an outcome, not an error.

**Refusals held locally.** Within one UTC day an action's count only grows: ``award_exp.lua``
adds to it, ``hydrate_user.lua`` writes it only where Redis has none, and nothing else writes
it. So once Redis has refused a user's action at its daily limit (code 2), that answer stands
until midnight, whichever worker asks, for as long as Redis keeps today's count. Each worker
keeps the refusals of unkeyed self-awards (``daily_chat``, ``create_*``) it has seen today, at
most ``limit_cache_entries`` pairs (oldest dropped first), in the day's ``_Today`` (so they go
at midnight), and answers a repeat with the same 429 without a round trip, as envoy's
ratelimit caches over-limit keys until the window ends. The refusal's reply is reused as it
was: its count decides; a rules reload that raises the limit (or puts the action in shadow
mode) is seen at once, since the cached count is compared with the rule served now. Keyed
requests always go to Redis (their record may hold an earlier answer to replay), as do creator
awards and anything refused for its cap (a level-up raises the cap). After a Redis loss that
forgot part of today (its unflushed events, or the day hash evicted), a worker that saw the
refusal goes on refusing while Redis alone (another worker, or the batch route, which always
asks Redis) would allow the action again: the limit the user had reached holds where the
refusal was seen. Likewise a worker holding a refusal answers it while Redis is unreachable,
where the others answer 503. The 429 body and headers are the same either way
(``api.routes.exp.award_reply`` reads only the action and its limit from a refusal).
"""

from __future__ import annotations

import asyncio
import hashlib
import zlib
from collections import OrderedDict
from collections.abc import Awaitable, Sequence
from typing import Any, NamedTuple

import msgspec

from counters.auth import Principal
from counters.clock import SECONDS_PER_DAY, Clock, next_utc_midnight, utc_day
from counters.errors import (
    ConflictError,
    ForbiddenError,
    InvalidRequest,
    RequestError,
    ScriptReplyError,
    StorageError,
    shown,
)
from counters.exp.creator import CreatorAwards
from counters.exp.entities import Entities, Target
from counters.exp.leaderboard import Period, window
from counters.exp.levels import Progress, progress
from counters.exp.packed import AwardCommands, CreatorCommands
from counters.exp.stats import count_award
from counters.exp.types import (
    Adjustment,
    AwardCall,
    AwardRequest,
    AwardResult,
    DailyUsage,
    DayWindow,
)
from counters.redis.calls import (
    AdjustExp,
    AwardExp,
    AwardExpKeys,
    Call,
    CreatorAward,
    CreatorAwardKeys,
    Keys,
    ReadExp,
    UserDayKeys,
    UserWriteKeys,
)
from counters.redis.codes import (
    MAX_TOTAL,
    AdjustOutcome,
    AwardOutcome,
    Hydration,
)
from counters.redis.hydration import Hydrator, hydrate_and_run, run_hydrated
from counters.redis.idempotency import (
    Idempotency,
    claim_callers_key,
    reject_reused_key,
    script_args,
)
from counters.redis.keys import EntityKeys, UserKeys
from counters.redis.pipelining import RedisRefusal
from counters.redis.scripts import Scripts
from counters.rules import Action, ExpRules
from counters.rules.metrics import count_shadow_refusal

_NEEDS_HYDRATION = Hydration.NEEDS_HYDRATION  # awards a batch runs again one by one
_LIMIT_REACHED = int(AwardOutcome.LIMIT_REACHED)
_COUNT = 6  # an award_exp reply's action_count
_OUTCOMES = {int(outcome): outcome for outcome in AwardOutcome}
_PROGRESS_CACHE = 4_096  # progress blocks kept by total EXP (then the cache starts over)


class ExpService:
    def __init__(
        self,
        rules: ExpRules,
        version: str,
        scripts: Scripts,
        entities: Entities,
        hydrator: Hydrator,
        clock: Clock,
        *,
        buckets: int,
        idempotency_ttl: int,
        day_grace: int,
        day_jitter: int,
        leaderboards: bool = True,
        creator_shortcut: bool = True,
        limit_cache_entries: int = 0,
    ) -> None:
        """``limit_cache_entries``: how many refusals at a daily limit a worker keeps (module
        docstring, "Refusals held locally"; COUNTERS_LIMIT_CACHE_ENTRIES); 0 keeps none."""
        self._scripts = scripts
        self._entities = entities
        self._hydrator = hydrator
        self._clock = clock
        self._buckets = buckets
        self._idempotency_ttl = idempotency_ttl
        self._day_grace = day_grace
        self._day_jitter = day_jitter
        self._leaderboards = leaderboards  # award_exp.lua adds to the boards (3 ZINCRBY)
        self._limit_cache_entries = limit_cache_entries
        # The UTC day of the last award (see _Today)
        self._today = _Today(0, "", "", 0, {}, {}, {}, OrderedDict())
        self._creator = CreatorAwards(
            self, scripts, entities, buckets, idempotency_ttl, shortcut=creator_shortcut
        )
        self.use_rules(rules, version)

    @property
    def clock(self) -> Clock:
        return self._clock

    def use_rules(self, rules: ExpRules, version: str) -> None:
        """Serve ``rules`` from the next award on (a reload); today's counters are kept.

        ``version`` is the rules version the scripts were compiled with (``Scripts.use_rules``:
        the levels and caps are in their source, a cap in shadow mode as unreachable, so
        ``award_result`` compares with the real one): every call names it. Everything derived
        from the rules is swapped in one step, with no await in between, so a request sees
        either the old rules or the new ones, never a mix.
        """
        progress_cache: dict[int, Progress] = {}
        self.rules, self._version = rules, version
        self._progress = progress_cache

    def progress(self, total_exp: int) -> Progress:
        """The seed's progress block for ``total_exp`` under the rules served now
        (``counters.exp.levels.progress``), kept by total: a Progress is immutable, and
        building one costs an award reply ~2.5 us. The cache is new with each rules reload."""
        cache = self._progress
        found = cache.get(total_exp)
        if found is None:
            if len(cache) >= _PROGRESS_CACHE:
                cache.clear()
            found = cache[total_exp] = progress(self.rules, total_exp)
        return found

    def action(self, name: str) -> Action:
        """The rule of an action, or ``InvalidRequest`` listing the known ones."""
        action = self.rules.actions.get(name)
        if action is None:
            known = ", ".join(self.rules.actions)
            raise InvalidRequest(f"Unknown action '{shown(name)}'; known actions: {known}")
        return action

    def window(self, user_id: str, now: float) -> DayWindow:
        """Today's key window and clean-up time (next midnight + grace + per-user jitter)."""
        today = self._day_of(now)
        return DayWindow(today.day, self._day_ttl(user_id, today, now))

    def _day_ttl(self, user_id: str, today: _Today, now: float) -> int:
        """Seconds a user's day hash lives: to next midnight + grace + per-user jitter."""
        jitter = zlib.crc32(user_id.encode()) % (self._day_jitter + 1) if self._day_jitter else 0
        return max(today.midnight + self._day_grace + jitter - int(now), 1)

    def _day_of(self, now: float) -> _Today:
        """The UTC day of ``now`` (formatting a day costs more than the rest of an award call:
        built once a day)."""
        today = self._today
        if not today.midnight - SECONDS_PER_DAY <= now < today.midnight:  # another day
            week = window(Period.WEEK, now, 0)
            assert week.ttl is not None
            today = self._today = _Today(
                next_utc_midnight(now), utc_day(now), week.id, int(now) + week.ttl, {}, {}, {},
                OrderedDict(),
            )  # fmt: skip
        return today

    async def award(
        self,
        principal: Principal,
        action_name: str,
        target: Target | None,
        idem: Idempotency | None,
    ) -> AwardResult:
        """Award EXP for one action by ``principal`` (to its user, or to the target's owner)."""
        action = self.rules.actions.get(action_name)
        if (
            target is None
            and action is not None
            and action.awards != "creator"
            and (action.user_may_trigger or principal.is_service)
        ):  # prepare_award's checks pass (no target to check or claim): the hot lane's case,
            # one await on the script's reply (README, "The hot path's CPU budget")
            user_id = principal.user_id
            now = self._clock.now()
            today = self._day_of(now)
            if idem is None:  # a refusal at the daily limit held from earlier today
                refused = today.refused.get((user_id, action_name))
                if refused is not None and _still_refused(refused, action):
                    return self.result_of(action_name, action, user_id, user_id, None, refused)
            send = self._scripts.send_packed
            if send is None:  # a cluster, or no auto-pipeline: the typed call
                own = self._own_award(user_id, action_name, action, None, idem)
                reply = await self._run(own.user_id, own.keys, own.call)
            else:  # inline, not a coroutine of its own: the hot lane awaits once
                try:
                    reply = await send(self.packed_award(user_id, action_name, action, idem, now))
                except RedisRefusal as exc:  # NOSCRIPT (a restarted Redis): the typed call's
                    # recovery, and the packers built again from the typed command as it is now
                    # (the way Scripts sends a script may have changed since they were built)
                    self.forget_packers()
                    own = self._own_award(user_id, action_name, action, None, idem)
                    command = self._scripts.command(own.keys, own.call)
                    reply = await self._scripts.refused(own.call, command, exc)
                if reply[0] == _NEEDS_HYDRATION:  # Redis lost the user: hydrate, run it again
                    own = self._own_award(user_id, action_name, action, None, idem)
                    reply = await hydrate_and_run(
                        self._hydrator, self._scripts, user_id, own.keys, own.call
                    )
            if reply[0] == _LIMIT_REACHED and idem is None and self._limit_cache_entries:
                self._hold_refusal(today, user_id, action_name, reply)
            return self.result_of(action_name, action, user_id, user_id, None, reply)
        if (
            action is not None
            and action.awards == "creator"
            and (action.user_may_trigger or principal.is_service)
        ):  # prepare_award's checks, then what it leaves to counters.exp.creator, without
            # awaiting it (a like or a fork: 40% of the chat server's awards)
            self._check_target(action_name, action, target)
            assert target is not None  # _check_target refuses a creator award without one
            return await self._creator.award(principal.user_id, action_name, action, target, idem)
        call = await self.prepare_award(principal, action_name, target, idem)
        # None only for a creator award a caller may trigger, which went to the branch above
        assert call is not None
        return await self._run_award(call)

    def _hold_refusal(
        self, today: _Today, user_id: str, action_name: str, reply: list[int]
    ) -> None:
        """Keep an unkeyed self-award's refusal at its daily limit (``reply``, award_exp's
        code 2) for the rest of ``today`` (module docstring, "Refusals held locally"), the
        oldest kept dropped first when ``limit_cache_entries`` are held."""
        refused = today.refused
        key = (user_id, action_name)
        refused[key] = reply
        refused.move_to_end(key)  # held again (a raised limit asked Redis): the newest now
        if len(refused) > self._limit_cache_entries:
            # O(1): a plain dict's first key is found by scanning the slots its deletions
            # left at the front of its table, O(size) a hold once it is full
            refused.popitem(last=False)

    async def claim_batch_key(self, idem: Idempotency) -> None:
        """Claim a batch's Idempotency-Key for the service caller (``claim_callers_key``: scope
        the caller, the whole batch's fingerprint, atomic); ``IdempotencyMismatch`` when the key
        was used with a different batch. The items carry keys derived from it
        (``batch_item_key``), so a retried batch replays each item's first answer, exactly
        once under any race, through each user's own records."""
        await claim_callers_key(self._scripts, idem, self._buckets, self._idempotency_ttl)

    async def award_many(
        self, requests: Sequence[AwardRequest]
    ) -> list[AwardResult | RequestError | StorageError]:
        """Many awards, each checked and applied on its own (its own outcome or error, in order),
        their scripts run in one pipelined round trip. Not a transaction: each award is atomic.

        The rare award whose user must first be hydrated, and every creator-targeted award (a
        protocol of several steps), run after the others, through the single path (one acting
        user's such awards in the batch's order).
        """
        prepared = await asyncio.gather(
            *(self.prepare_award(*request) for request in requests), return_exceptions=True
        )
        results: list[AwardResult | RequestError | StorageError | None] = [None] * len(requests)
        calls: list[tuple[int, AwardCall]] = []
        again: dict[str, list[int]] = {}  # by acting user
        for index, item in enumerate(prepared):
            if isinstance(item, AwardCall):
                calls.append((index, item))
            elif item is None:
                again.setdefault(requests[index].principal.user_id, []).append(index)
            elif isinstance(item, RequestError | StorageError):
                results[index] = item
            else:
                raise item
        replies = await self._scripts.run_many([(call.keys, call.call) for _, call in calls])
        for (index, call), reply in zip(calls, replies, strict=True):
            if isinstance(reply, StorageError):
                results[index] = reply
            elif reply[0] == _NEEDS_HYDRATION:
                again.setdefault(call.user_id, []).append(index)
            else:
                try:
                    results[index] = self.award_result(call, reply)
                except (RequestError, StorageError) as exc:
                    results[index] = exc

        async def in_order(indexes: list[int]) -> None:
            for index in indexes:
                try:
                    results[index] = await self.award(*requests[index])
                except (RequestError, StorageError) as exc:
                    results[index] = exc

        await asyncio.gather(*(in_order(indexes) for indexes in again.values()))
        done = [result for result in results if result is not None]
        assert len(done) == len(results)
        return done

    async def prepare_award(
        self,
        principal: Principal,
        action_name: str,
        target: Target | None,
        idem: Idempotency | None,
    ) -> AwardCall | None:
        """Check an award and build its script call; None for a creator-targeted award (run by
        ``counters.exp.creator``). A service's ``create_*`` claims the target first; a user
        token's earns its EXP and claims nothing (only services record ownership)."""
        action = self.action(action_name)
        if not action.user_may_trigger and not principal.is_service:
            raise ForbiddenError(f"{action_name} may only be triggered by a service")
        target = self._check_target(action_name, action, target)
        actor = principal.user_id
        if action.awards == "creator":
            return None
        if target is not None and action.records_ownership and principal.is_service:
            await self._entities.claim(target, actor)
        return self._own_award(actor, action_name, action, target, idem)

    def _own_award(
        self, actor: str, action_name: str, action: Action, target: Target | None,
        idem: Idempotency | None,
    ) -> AwardCall:  # fmt: skip
        """The award_exp call of a checked award to ``actor`` itself, its request's record in
        its own slot."""
        fingerprint, idem_key = script_args(idem)
        user = UserKeys.of(actor, self._buckets)
        record = user.idempotency(idem.caller, idem.key) if idem else user.unused
        return self.award_call(
            action_name, action, actor, actor, target, record, fingerprint, idem_key, user
        )

    def packed_award(
        self, user_id: str, action_name: str, action: Action, idem: Idempotency | None,
        now: float | None = None,
    ) -> bytes:  # fmt: skip
        """The command ``_own_award`` would build for an award to ``user_id`` itself with no
        target, packed as RESP from the day's segments (``counters.exp.packed``): the bytes
        hiredis packs for ``Scripts.command`` of that call, for a fraction of the CPU.
        ``now`` (Unix seconds) is the clock's, read here when not given."""
        if now is None:
            now = self._clock.now()
        today = self._day_of(now)
        may_create = self.may_create
        # by how Scripts sends it too (FCALL or EVALSHA, chosen when Redis first answers)
        key = (self._version, may_create, self._scripts.functions)
        packer = today.packers.get(key)
        if packer is None:
            packer = today.packers[key] = self._packer(today, may_create)
        encoded = user_id.encode()
        bucket, day_ttl, week_ttl = self._packed_times(encoded, today, now)
        return packer.pack(
            encoded, bucket, action_name, action.exp,
            0 if action.shadow else action.daily_limit or 0,
            day_ttl, int(now * 1000), week_ttl,
            None if idem is None else (
                UserKeys.of(user_id, self._buckets).idempotency(idem.caller, idem.key),
                idem.fingerprint, idem.key,
            ),
        )  # fmt: skip

    def packed_creator(
        self, owner: str, actor: str, action_name: str, action: Action, target: Target,
        rid: str, once_ttl: int, entity: EntityKeys | None = None,
    ) -> bytes:  # fmt: skip
        """The one-script creator award's command (counters/exp/creator.py, ``_shortcut``):
        ``actor``'s unkeyed ``action_name`` on ``target`` paying ``owner``, packed from the
        day's segments (``CreatorCommands``): the bytes hiredis packs for the typed
        ``CreatorAward`` call. ``entity``: ``target``'s keys, when the caller has them."""
        now = self._clock.now()
        today = self._day_of(now)
        may_create = self.may_create
        key = (self._version, may_create, self._scripts.functions, once_ttl)
        packer = today.creator_packers.get(key)
        if packer is None:
            packer = today.creator_packers[key] = self._creator_packer(today, may_create, once_ttl)
        encoded = owner.encode()
        bucket, day_ttl, week_ttl = self._packed_times(encoded, today, now)
        if entity is None:
            entity = EntityKeys.of(target.type, target.id, self._buckets)
        return packer.pack(
            encoded, bucket, action_name, action.exp,
            0 if action.shadow else action.daily_limit or 0,
            day_ttl, int(now * 1000), week_ttl, actor.encode(), entity.identity.encode(),
            entity.owner.encode(),
            entity.once(action_name).encode() if action.once_per_actor else None,
            entity.unused.encode(), rid.encode(),
        )  # fmt: skip

    def _packed_times(self, user_id: bytes, today: _Today, now: float) -> tuple[int, int, int]:
        """A packed award's bucket of ``user_id`` (UTF-8), its day TTL and the week board's
        (as ``UserKeys`` and ``award_call`` compute them)."""
        crc = zlib.crc32(user_id)  # the bucket's and the day jitter's (as UserKeys, _day_ttl)
        jitter = crc % (self._day_jitter + 1) if self._day_jitter else 0
        second = int(now)
        return (
            crc % self._buckets,
            max(today.midnight + self._day_grace + jitter - second, 1),
            max(today.week_end + self._day_grace - second, 1) if self._leaderboards else 0,
        )

    def _packer(self, today: _Today, may_create: str) -> AwardCommands:
        """The packer of ``today``'s award_exp commands under the rules served now: its head
        taken from the typed command (the SHA of this rules version, the key count)."""
        sample = self._sample_call()
        return AwardCommands(
            self._scripts.command_head(sample.keys, sample.call),
            day=today.day, rules_version=self._version, may_create=may_create,
            idempotency_ttl=self._idempotency_ttl, boards=lambda user: self._boards(user, today),
        )  # fmt: skip

    def _creator_packer(self, today: _Today, may_create: str, once_ttl: int) -> CreatorCommands:
        """The packer of ``today``'s creator_award commands: its head from the typed command."""
        sample = self._sample_call()
        key_args = (*msgspec.structs.astuple(sample.keys), "entity", "once")
        argv = (*msgspec.structs.astuple(sample.call), "plain", "rid", once_ttl)
        keys, call = CreatorAwardKeys(*key_args), CreatorAward(*argv)
        return CreatorCommands(
            self._scripts.command_head(keys, call),
            day=today.day, rules_version=self._version, may_create=may_create,
            idempotency_ttl=self._idempotency_ttl, once_ttl=once_ttl,
            boards=lambda user: self._boards(user, today),
        )  # fmt: skip

    def _sample_call(self) -> AwardCall:
        """An award_exp call of today's rules whose command head (function or SHA, key count)
        a packer takes: every command packed for the day starts the same way."""
        return self.award_call(
            "daily_chat", Action(exp=1), "sample", "sample", None, "unused", "", ""
        )

    def award_call(
        self,
        action_name: str,
        action: Action,
        user_id: str,
        actor: str,
        target: Target | None,
        record: str,
        fingerprint: str,
        idem_key: str,
        user: UserKeys | None = None,
    ) -> AwardCall:
        """The award_exp call paying ``user_id``; ``record`` is the request's at-most-once
        record in that user's slot (used when ``fingerprint`` is not empty); ``user`` the
        user's keys when the caller has them already."""
        now = self._clock.now()
        today = self._day_of(now)
        if user is None:
            user = UserKeys.of(user_id, self._buckets)
        keys = AwardExpKeys(
            user.user, user.day(today.day), user.events, record, *self._boards(user, today),
            user.meta,
        )  # fmt: skip
        # Positional, in AwardExp's field order: on the hot path msgspec builds a 15-field Struct
        # from keywords in ~2 us, from positions in ~0.4 us. tests/exp/test_award_exp.py
        # ::test_the_award_call_names_every_argument checks every field gets its value.
        call = AwardExp(
            user_id, action_name, action.exp, 0 if action.shadow else action.daily_limit or 0,
            self._version, today.day, self._day_ttl(user_id, today, now),
            int(now * 1000), fingerprint, self._idempotency_ttl, actor, self.may_create,
            str(target) if target else "", idem_key, self._week_ttl(today, now),
        )  # fmt: skip
        return AwardCall(action_name, action, user_id, actor, target, keys, call)

    async def run_award(self, call: AwardCall) -> AwardResult:
        """Run one award_exp call (hydrating its user first if Redis lost it)."""
        return await self._run_award(call)

    def _boards(self, user: UserKeys, today: _Today) -> tuple[str, str, str]:
        """The day, week and all-time boards of the user's bucket (unused keys when off),
        formatted once a day per bucket."""
        if not self._leaderboards:
            return user.unused, user.unused, user.unused
        boards = today.boards.get(user.tag)
        if boards is None:
            boards = today.boards[user.tag] = (
                user.board(f"day:{today.day}"),
                user.board(today.week),
                user.board("all"),
            )
        return boards

    def _week_ttl(self, today: _Today, now: float) -> int:
        """Seconds this ISO week's board lives; 0 tells the script leaderboards are off."""
        if not self._leaderboards:
            return 0
        return max(today.week_end + self._day_grace - int(now), 1)

    async def _run_award(self, call: AwardCall) -> AwardResult:
        reply = await self._run(call.user_id, call.keys, call.call)
        return self.award_result(call, reply)

    def _run(self, user_id: str, keys: Keys, call: Call) -> Awaitable[list[Any]]:
        return run_hydrated(self._hydrator, self._scripts, user_id, keys, call)

    @property
    def may_create(self) -> str:
        """``may_create`` of every script touching a user (``may_create_arg``: "0" or "2" with
        a durable store, by the last eviction-policy check)."""
        return self._hydrator.may_create_code

    def run_hydrated(self, user_id: str, keys: Keys, call: Call) -> Awaitable[list[Any]]:
        """Run a script touching ``user_id``; hydrate the user first if it answers
        ``NEEDS_HYDRATION`` (counters/redis/hydration.py). Raises ``StorageError``."""
        return self._run(user_id, keys, call)

    def forget_packers(self) -> None:
        """Drop today's packed-command packers (award_exp's and creator_award's): a packed
        command was refused, so they are built again from the typed command as it is now."""
        self._today.packers.clear()
        self._today.creator_packers.clear()

    def award_result(self, call: AwardCall, reply: list[int]) -> AwardResult:
        """The typed result of an award_exp reply (or of a stored one) for ``call``."""
        return self.result_of(
            call.action_name, call.action, call.user_id, call.actor, call.target, reply
        )

    def result_of(
        self, action_name: str, action: Action, user_id: str, actor: str, target: Target | None,
        reply: list[int],
    ) -> AwardResult:  # fmt: skip
        """The typed result of an award_exp (or creator_award) reply paying ``user_id`` for
        ``actor``'s ``action_name`` (on ``target``); ``ScriptReplyError`` for an unknown code
        (``IdempotencyMismatch`` for key_reused). Counted in the award metrics unless replayed."""
        code, added, total, level, previous, gained, count, _seq, replayed = reply
        outcome = _OUTCOMES.get(code)  # a dict lookup: AwardOutcome(code) costs ~4x as much
        if outcome is None:
            reject_reused_key(code)
            raise ScriptReplyError(f"award_exp replied with unknown code {code}")
        shadow = None
        if outcome is AwardOutcome.AWARDED:
            shadow = self._shadow_refusal(
                action_name, action, previous, gained, count, bool(replayed)
            )
        # Positional, in AwardResult's field order (from keywords msgspec takes ~4x as long);
        # tests/exp/test_award_exp.py::test_the_award_result_names_every_field checks them.
        # The replayed slot: 0 (decided now), 1 (a record that kept no time), else the unix
        # ms the record's answer was decided at (lua/lib/award.lua)
        result = AwardResult(
            outcome, user_id, action_name, added, total, level, previous, gained,
            self.rules.cap_for(level), count, action.daily_limit, actor, target,
            bool(replayed), shadow, replayed if replayed > 1 else 0,
        )  # fmt: skip
        if not replayed:
            count_award(action, result)
        return result

    def _shadow_refusal(
        self, action_name: str, action: Action, level: int, gained: int, count: int,
        replayed: bool,
    ) -> str | None:  # fmt: skip
        """Which shadow rule would have refused this award (``level`` is the level it was made
        at, ``gained`` and ``count`` today's totals after it); counted unless a replay."""
        rules = self.rules
        refusal, name = None, ""
        limit = action.daily_limit
        if action.shadow and limit is not None and count > limit:
            refusal, name = "daily_limit", action_name
        elif rules.shadow_caps_by_level[level - 1] and gained > rules.cap_for(level):
            refusal, name = "daily_cap", f"level_{level}"
        if refusal is not None and not replayed:
            count_shadow_refusal(refusal, name)
        return refusal

    def _check_target(self, name: str, action: Action, target: Target | None) -> Target | None:
        if not action.target_types:
            return None  # the action names no entity; a target sent with it is ignored
        if target is None:
            if action.awards == "creator":
                raise InvalidRequest(f"{name} needs target_type and target_id")
            return None
        if target.type not in action.target_types:
            allowed = ", ".join(action.target_types)
            raise InvalidRequest(f"{name} takes target_type {allowed}, not '{shown(target.type)}'")
        return target

    async def usage(self, user_id: str) -> DailyUsage:
        """The user's total EXP and today's gains and action counts."""
        now = self._clock.now()
        user = UserKeys.of(user_id, self._buckets)
        keys = UserDayKeys(user=user.user, today=user.day(utc_day(now)), meta=user.meta)
        call = ReadExp(may_create=self.may_create)
        _, total, _seq, day_fields = await self._run(user_id, keys, call)
        assert isinstance(total, int) and isinstance(day_fields, list)
        fields = dict(zip(day_fields[::2], day_fields[1::2], strict=True))
        level = self.rules.level_for(total)
        counts = {name[2:]: int(value) for name, value in fields.items() if name.startswith("a:")}
        return DailyUsage(
            user_id=user_id, total_exp=total, level=level,
            daily_exp_gained=int(fields.get("exp", 0)), daily_exp_cap=self.rules.cap_for(level),
            daily_action_counts=counts,
        )  # fmt: skip

    async def adjust(
        self, user_id: str, delta: int, reason: str, actor: str, idem: Idempotency | None
    ) -> Adjustment:
        """A support correction: no limit or cap applies; the total never drops below zero.

        A key is the service caller's whatever user the correction names
        (``claim_callers_key``: the same key for another user is 422), and the correction's
        own record in the user's slot applies it once."""
        if idem is not None:
            await claim_callers_key(self._scripts, idem, self._buckets, self._idempotency_ttl)
        user = UserKeys.of(user_id, self._buckets)
        fingerprint, idem_key = script_args(idem)
        keys = UserWriteKeys(
            user=user.user,
            events=user.events,
            idem=user.idempotency(idem.caller, idem.key) if idem else user.unused,
            meta=user.meta,
        )
        call = AdjustExp(
            user_id=user_id, delta=delta, reason=reason, rules=self._version,
            now_ms=int(self._clock.now() * 1000), fingerprint=fingerprint,
            idem_ttl=self._idempotency_ttl, actor=actor, may_create=self.may_create,
            idem_key=idem_key,
        )  # fmt: skip
        code, applied, total, level, previous, _seq, replayed = await self._run(user_id, keys, call)
        reject_reused_key(code)
        if code == AdjustOutcome.TOTAL_LIMIT:
            raise ConflictError(
                f"{user_id}'s total EXP {total} would pass {MAX_TOTAL:,}; nothing was changed",
                code="total_limit",
            )
        if code != AdjustOutcome.ADJUSTED:
            raise ScriptReplyError(f"adjust_exp replied with unknown code {code}")
        return Adjustment(user_id, applied, total, level, previous, bool(replayed))


class _Today(NamedTuple):
    """One UTC day of awards: its next midnight, name (YYYYMMDD), ISO week's board id and end
    (unix seconds), the board keys of each bucket seen that day (by hash tag), the day's
    packed award_exp commands (``counters.exp.packed``) and the refusals at a daily limit held
    for the rest of it."""

    midnight: int
    day: str
    week: str
    week_end: int
    boards: dict[str, tuple[str, str, str]]
    packers: dict[tuple[str, str, bool | None], AwardCommands]  # (version, may_create, FCALL)
    creator_packers: dict[tuple[str, str, bool | None, int], CreatorCommands]  # and once_ttl
    # Unkeyed self-awards Redis refused at their daily limit today, by (user, action): the
    # reply it gave (module docstring, "Refusals held locally")
    refused: OrderedDict[tuple[str, str], list[int]]


def _still_refused(reply: list[int], action: Action) -> bool:
    """Whether a held refusal at the daily limit (``reply``, award_exp's code 2) still holds
    under ``action``'s rule as served now: not in shadow mode, and the count the refusal saw
    still at or over the limit (a reload may have raised it)."""
    limit = action.daily_limit
    return not action.shadow and limit is not None and 0 < limit <= reply[_COUNT]


def batch_item_key(batch_key: str, index: int) -> str:
    """The Idempotency-Key item ``index`` of a keyed batch gets when it names none of its own:
    fixed-size (any batch key fits the 255-character limit) and the same on every retry."""
    digest = hashlib.blake2b(batch_key.encode(), digest_size=16).hexdigest()
    return f"batch-{digest}-{index}"
