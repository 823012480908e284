"""Recovery: a user Redis forgot is loaded back from Postgres before the operation runs.

When Redis loses state (a restart without persistence, a failover, FLUSHALL), the next script
that touches a user answers "needs hydration" (``counters.redis.hydration``).
``PostgresHydrator`` then
loads the user's durable totals (EXP, level, seq, the XP state) and today's EXP counters (summed
from today's ``exp_award`` rows) and writes them with ``lua/hydrate_user.lua``, which writes only
if the user is still missing, so a concurrent hydration or write wins cleanly. A user Postgres does
not know either becomes an empty user. The user's seq continues from Postgres's, so new event ids
never repeat a ledgered one. Concurrent hydrations of one user in a process share one query.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import msgspec

from counters.clock import Clock
from counters.exp.entities import DurableOwner, DurableOwnerLookup, Target
from counters.exp.leaderboard import Period
from counters.exp.leaderboard import window as leaderboard_window
from counters.exp.types import DayWindow
from counters.metrics import HYDRATIONS
from counters.redis.calls import HydrateUser, HydrateUserKeys
from counters.redis.keys import UserKeys
from counters.redis.scripts import Scripts
from persistence.leaderboard import user_award_sums
from persistence.store import DurableUser, Store

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

    async def _hydrate(self, user_id: str) -> bool:
        """Hydrate one user; True when Postgres knew them (a restore), False for a new user."""
        now = self._clock.now()
        window = self._window(user_id, now)
        user = await self._store.load_user(user_id, window.day)
        keys = UserKeys.of(user_id, self._buckets)
        boards = (keys.unused, keys.unused, keys.unused)
        week_ttl, board_exp = 0, [0, 0, 0]
        if self._board_grace is not None:
            week = leaderboard_window(Period.WEEK, now, self._board_grace)
            boards = (keys.board(f"day:{window.day}"), keys.board(week.id), keys.board("all"))
            week_ttl = week.ttl or 0
            board_exp = [user.day_exp, *await user_award_sums(self._store, user_id, week)]
        await self._scripts.run(
            HydrateUserKeys(keys.user, keys.day(window.day), *boards),
            hydrate_call(user, window, week_ttl, board_exp),
        )
        return user.seq > 0 or user.xp_state is not None


def hydrate_call(
    user: DurableUser, window: DayWindow, week_ttl: int = 0, board_exp: list[int] | None = None
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
    )  # fmt: skip


def durable_owner_lookup(store: Store) -> DurableOwnerLookup:
    """``Entities``'s cold-path owner lookup: only asked when Redis has no owner."""

    async def lookup(target: Target) -> DurableOwner | None:
        return await store.owner_of(target.type, target.id)

    return lookup
