"""Recovery: a user Redis forgot is loaded back from Postgres before the operation runs.

When Redis loses state (a restart without persistence, a failover, FLUSHALL), the next script
that touches a user answers "needs hydration" (``counters.redis.hydration``).
``PostgresHydrator`` then
loads the user's durable totals (EXP, level, seq, the XP state) and today's EXP counters (summed
from today's ``exp_award`` rows) and writes them with ``lua/hydrate_user.lua``, which writes only
if the user is still missing, so a concurrent hydration or write wins cleanly. A user Postgres does
not know either becomes an empty user. The user's seq continues from Postgres's, so new event ids
never repeat a ledgered one. Concurrent hydrations of one user in a process share one query.

Hydration never races the flusher: before reading, it reads the bucket's run (``open_bucket``)
and holds the ledger's flush barrier for it (``persistence/runs.py``: every flush of an earlier
incarnation has committed or can no longer commit), and ``hydrate_user`` writes only if the
bucket's run is still that one. A process holds each bucket's barrier once per run.

An entity Redis lost is read back (its owner, who already triggered its once-per-actor
actions) behind the same barriers (``fence_entity``): of every incomplete bucket, because a
creator award's once-per-actor record lives in the entity's bucket while the award's event,
from which Postgres learns it, is in the paid owner's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace

import msgspec

from counters.clock import Clock
from counters.errors import StorageError
from counters.exp.entities import (
    DurableOwner,
    DurableOwnerLookup,
    DurableTriggersLookup,
    Target,
)
from counters.exp.leaderboard import Period
from counters.exp.leaderboard import window as leaderboard_window
from counters.exp.types import DayWindow
from counters.metrics import HYDRATIONS
from counters.redis.calls import (
    HydrateUser,
    HydrateUserKeys,
    MetaKey,
    OpenBucket,
    RecordKeys,
    RestoreRecord,
)
from counters.redis.codes import HydrateOutcome
from counters.redis.keys import UserKeys, bucket_of, meta_key
from counters.redis.scripts import Scripts
from persistence.leaderboard import user_award_sums
from persistence.marks import LedgerMark
from persistence.store import DurableUser, Store

_BATCH = 256  # buckets opened (runs, barriers) per round trip and per Postgres transaction
Trigger = tuple[str, str, str, int]  # action, actor, owner, ts_ms
DayWindowOf = Callable[[str, float], DayWindow]  # (user_id, now) -> today's key and expiry


class PostgresHydrator:
    """Loads users from Postgres into Redis; a missing user is never assumed new."""

    may_create = False

    def __init__(
        self,
        store: Store,
        scripts: Scripts,
        clock: Clock,
        *,
        buckets: int,
        window: DayWindowOf,
        board_grace: int | None = None,
    ) -> None:
        self._store = store
        self._scripts = scripts
        self._clock = clock
        self._buckets = buckets
        self._window = window
        self._board_grace = board_grace  # None: leaderboards off, none restored
        self._inflight: dict[str, asyncio.Future[None]] = {}
        self._barriers: dict[int, str] = {}  # bucket -> the run whose barrier this process holds
        # bucket -> its run when this process last held the barriers of every incomplete bucket
        # (fence_entity): an entity of that incarnation needs no further barrier
        self._fenced: dict[int, str] = {}
        self._sweep = asyncio.Lock()  # one sweep of every barrier at a time per process
        # every stream ledgered up to where it stood at a loss, before entities are read back
        self.ledger = LedgerMark(scripts, buckets=buckets)
        # may_create of the user scripts: "0" while a complete bucket speaks for its users
        # (every Redis node evicts nothing: trust_complete, set by persistence.restore's
        # eviction check), "2" until then (hydrate every missing user)
        self.may_create_code = "2"

    @property
    def trust_complete(self) -> bool:
        """Whether a complete bucket speaks for its users (``may_create_code`` "0")."""
        return self.may_create_code == "0"

    @trust_complete.setter
    def trust_complete(self, trusted: bool) -> None:
        self.may_create_code = "0" if trusted else "2"

    async def hydrate(self, user_id: str) -> None:
        """Load the user's durable totals into Redis unless Redis already has the user."""
        running = self._inflight.get(user_id)
        if running is not None:
            await asyncio.shield(running)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._inflight[user_id] = future
        try:
            restored = await self._hydrate(user_id)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            HYDRATIONS.child("failed").inc()
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it; nobody else must log it
            raise
        else:
            HYDRATIONS.child("restored" if restored else "new").inc()
            future.set_result(None)
        finally:
            del self._inflight[user_id]

    def now(self) -> float:
        """The service clock's now (unix seconds)."""
        return self._clock.now()

    async def open_bucket(self, bucket: int, *, barrier: bool = True) -> tuple[str, bool]:
        """The bucket's run (made if missing) and whether Redis holds the bucket completely;
        with ``barrier``, returns behind the flush barrier of that run."""
        reply = await self._scripts.run(MetaKey(meta_key(bucket)), OpenBucket())
        run = reply[1].decode() if isinstance(reply[1], bytes) else str(reply[1])
        complete = bool(reply[2])
        if barrier and self._barriers.get(bucket) != run:
            await self._store.barrier(bucket, run)
            self._barriers[bucket] = run
        return run, complete

    async def open_buckets(self, buckets: list[int]) -> dict[int, str]:
        """``open_bucket`` of many buckets: their runs in one pipelined round trip, then the
        flush barriers of those this process does not hold yet in one Postgres transaction
        (the restore after a loss: issue #12). Raises ``StorageError``."""
        replies = await self._scripts.run_many(
            [(MetaKey(meta_key(b)), OpenBucket()) for b in buckets]
        )
        runs: dict[int, str] = {}
        for bucket, reply in zip(buckets, replies, strict=True):
            if isinstance(reply, StorageError):
                raise reply
            runs[bucket] = reply[1].decode() if isinstance(reply[1], bytes) else str(reply[1])
        needed = [(b, run) for b, run in runs.items() if self._barriers.get(b) != run]
        await self._store.barriers(needed)
        self._barriers.update(needed)
        return runs

    async def incomplete_buckets(self) -> list[int]:
        """The buckets whose record lacks ``complete``: one ``HEXISTS`` per bucket (one slot
        each), all in one pipelined round trip (a pass over 1,024 buckets used to be 1,024
        script calls one after the other: issue #12). Raises ``StorageError``."""
        replies = await self._scripts.send_many(
            [("HEXISTS", meta_key(bucket), "complete") for bucket in range(self._buckets)]
        )
        return [bucket for bucket, found in enumerate(replies) if not int(found)]

    async def open_all(self, buckets: list[int]) -> dict[int, str]:
        """``open_buckets`` of any number of buckets, ``_BATCH`` at a time. Returns each one's
        run; every barrier is held when it returns. Raises ``StorageError``."""
        runs: dict[int, str] = {}
        for start in range(0, len(buckets), _BATCH):
            runs.update(await self.open_buckets(buckets[start : start + _BATCH]))
        return runs

    async def fence_entity(self, identity: str) -> str:
        """Before an entity (``<type>:<id>``) Redis does not hold is read from Postgres: returns
        once no flush of a lost Redis incarnation can still add its owner or a creator award on
        it, and no award made before the loss is still waiting in a stream that survived it.
        Nothing to wait for in a complete bucket (the restore that completed it did both
        first); else the barriers of every incomplete bucket and the ledger's mark
        (``persistence/marks.py``), once per process and incarnation. Returns the entity's
        bucket's run fenced: what is read then may be written only into it. Raises
        ``StorageError`` (Postgres down, a flush holding a barrier or the flusher behind the
        mark past the request's time budget: the caller answers 503)."""
        bucket = bucket_of(identity, self._buckets)
        run, complete = await self.open_bucket(bucket, barrier=False)
        if complete or self._fenced.get(bucket) == run:
            return run
        # The requests right after a loss wait for one sweep, within their own budget: a sweep
        # waiting for the flusher may take all of its own, and the queue must not add up.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._store.timeout
        try:
            async with asyncio.timeout_at(deadline):
                await self._sweep.acquire()
        except TimeoutError:
            raise StorageError("the flush barriers are being read for another request") from None
        try:
            if self._fenced.get(bucket) == run:
                return run
            runs = await self.open_all(await self.incomplete_buckets())
            if runs.get(bucket, run) != run:
                raise StorageError(f"Redis lost bucket {bucket} again while an entity was read")
            await self.ledger.reach({**runs, bucket: run}, max(deadline - loop.time(), 0.0))
            self._fenced.update(runs)
            self._fenced[bucket] = run
        finally:
            self._sweep.release()
        return run

    async def _hydrate(self, user_id: str) -> bool:
        """Hydrate one user; True when Postgres knew them (a restore), False for a new user."""
        bucket = bucket_of(user_id, self._buckets)
        keys = UserKeys.of(user_id, self._buckets)
        for _ in range(3):  # another loss between the barrier and the write: barrier again
            run, _complete = await self.open_bucket(bucket)
            now = self._clock.now()
            window = self._window(user_id, now)
            user = await self._store.load_user(user_id, window.day, int(now * 1000))
            if not await self._restore_records(user, keys.meta, run, int(now * 1000)):
                continue
            boards = (keys.unused, keys.unused, keys.unused)
            week_ttl, board_exp = 0, [0, 0, 0]
            if self._board_grace is not None:
                week = leaderboard_window(Period.WEEK, now, self._board_grace)
                boards = (keys.board(f"day:{window.day}"), keys.board(week.id), keys.board("all"))
                week_ttl = week.ttl or 0
                board_exp = [user.day_exp, *await user_award_sums(self._store, user_id, week)]
            reply = await self._scripts.run(
                HydrateUserKeys(keys.user, keys.day(window.day), *boards, keys.meta),
                hydrate_call(user, window, week_ttl, board_exp, run),
            )
            if reply[0] != HydrateOutcome.RUN_CHANGED:
                return user.seq > 0 or user.xp_state is not None
        raise StorageError(f"Redis kept losing bucket {bucket} while user {user_id} was hydrated")

    async def _restore_records(self, user: DurableUser, meta: str, run: str, now_ms: int) -> bool:
        """The user's records first (a request that sees the user sees them too); False when
        Redis lost the bucket again meanwhile."""
        calls = [
            self._scripts.run(RecordKeys(key, meta), RestoreRecord(value, expires_ms - now_ms, run))
            for key, value, expires_ms in user.records
            if expires_ms > now_ms
        ]
        replies = await asyncio.gather(*calls)
        return all(reply[0] != HydrateOutcome.RUN_CHANGED for reply in replies)


def hydrate_call(
    user: DurableUser,
    window: DayWindow,
    week_ttl: int = 0,
    board_exp: list[int] | None = None,
    run: str = "",
) -> HydrateUser:
    """The ``hydrate_user.lua`` call that puts ``user`` back; ``board_exp`` is their EXP from
    awards today, this ISO week and all time (``week_ttl`` 0: leaderboards off)."""
    fields: list[str] = []
    if user.day_counts:
        fields += ["exp", str(user.day_exp)]
        for action, count in sorted(user.day_counts.items()):
            fields += [f"a:{action}", str(count)]
    return HydrateUser(
        exp=user.exp, level=user.level, seq=user.seq, xp_state=user.xp_state or "",
        day_ttl=window.ttl, day_fields=msgspec.json.encode(fields).decode(), week_ttl=week_ttl,
        board_exp=msgspec.json.encode(board_exp or [0, 0, 0]).decode(), user_id=user.user_id,
        run=run,
    )  # fmt: skip


def durable_triggers_lookup(store: Store) -> DurableTriggersLookup:
    """``Entities``'s lookup of who already triggered an entity's once-per-actor actions: only
    asked when Redis lost the entity's records."""

    async def lookup(target: Target, actions: list[str], since_ms: int) -> list[Trigger]:
        found = await store.creator_awards(str(target), actions, since_ms)
        return [(action, actor, owner, ts_ms) for _, action, actor, owner, ts_ms in found]

    return lookup


def durable_owner_lookup(store: Store, fence: PostgresHydrator | None) -> DurableOwnerLookup:
    """``Entities``'s cold-path owner lookup: only asked when Redis has no owner. With a
    ``fence`` it reads behind the flush barriers (``PostgresHydrator.fence_entity``); the
    once-per-actor lookup (``durable_triggers_lookup``) runs after it, behind the same."""

    async def lookup(target: Target) -> DurableOwner | None:
        run = await fence.fence_entity(str(target)) if fence is not None else ""
        found = await store.owner_of(target.type, target.id)
        return None if found is None else replace(found, run=run)

    return lookup
