"""Leaderboards: EXP earned from awards today, this ISO week and all time (issue #14).

Written by ``award_exp.lua`` in the same atomic step as the award (``ZINCRBY`` on the three
boards of the user's bucket). Read here, merged across buckets:

- **Periods in the key.** ``day:<YYYYMMDD>`` and ``week:<YYYY>W<ww>`` (ISO week, Monday 00:00
  UTC) are part of the key name, so an award one second after midnight lands on the next day's
  board whatever the TTL does; the TTL (period end + grace) only frees memory. ``all`` never
  expires and holds one member per user who ever earned EXP.
- **Cluster.** Each bucket has its own boards under the bucket's hash tag, so the award script
  touches one slot. A read asks every bucket for its top ``limit`` (users are in exactly one
  bucket, so the overall top ``limit`` is among them) and merges; a rank is 1 + the number of
  users with more EXP, counted bucket by bucket (``ZCOUNT``).
- **Cached per worker.** The tops (every bucket's top ``limit``, merged) are the same for every
  caller, so each worker keeps them for ``cache_seconds`` (COUNTERS_LEADERBOARD_CACHE_SECONDS,
  1 s) per (period, limit): a read within that sends one ``ZSCORE`` (the caller's EXP) and the
  ``ZCOUNT`` s its rank needs, instead of 2 commands per bucket (2,048 at 1,024 buckets, ~6 ms of
  Redis CPU at 10k users). Concurrent misses share one read. The staleness: entries and ranks may
  be up to ``cache_seconds`` old (the caller's own EXP is read live).
- **Rebuilt after a Redis loss.** Hydrating a user Redis forgot (``lua/hydrate_user.lua``) puts
  their sums back with ``ZADD GT`` before their next award counts. And a bucket's board is
  trusted once its ``board_ok`` marker exists.
  A read that finds no marker sums the period's ``exp_award`` rows from the ledger (one query for
  every bucket missing it), merges them with ``ZADD GT`` (each user keeps the higher of the two:
  in normal operation Redis is ahead of the ledger, so nothing changes), then sets the marker.
  Without Postgres the marker is set at once (Redis is the only store).
"""

from __future__ import annotations

import asyncio
import heapq
import time
from bisect import bisect_right
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from itertools import islice
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.exceptions import RedisError

from counters.clock import Clock, utc_day
from counters.errors import InvalidRequest, NotFound, StorageError
from counters.redis.keys import board_keys, bucket_of
from counters.redis.scripts import Scripts
from counters.tasks import retrieve

MAX_LIMIT = 100
_TIMEOUT = 2.0

# The ledger's sums of awards in a period, by user: (period kind, first day, last day) -> sums.
# Days are YYYYMMDD; kind "all" has no days.
LedgerSums = Callable[[str, str | None, str | None], Awaitable[dict[str, int]]]


@asynccontextmanager
async def _redis_errors() -> AsyncIterator[None]:
    """A time limit on Redis calls, and their failures as ``StorageError``."""
    try:
        async with asyncio.timeout(_TIMEOUT):
            yield
    except (RedisError, TimeoutError) as exc:
        raise StorageError(f"redis leaderboard: {type(exc).__name__}: {exc}") from exc


class Period(StrEnum):
    DAY = "day"
    WEEK = "week"
    ALL = "all"

    @classmethod
    def parse(cls, text: str) -> Period:
        try:
            return cls(text)
        except ValueError as exc:
            raise InvalidRequest("period must be one of day, week, all") from exc


class PeriodWindow(msgspec.Struct, frozen=True):
    """One period as keys see it: its id, its first and last UTC day, when its keys expire."""

    period: Period
    id: str  # "day:20261121", "week:2026W47", "all"
    first_day: str | None
    last_day: str | None
    ttl: int | None  # seconds from now the board lives (period end + grace); None: forever


def window(period: Period, now: float, grace: int) -> PeriodWindow:
    """The ``period`` containing ``now`` (UTC); ISO weeks start on Monday."""
    at = datetime.fromtimestamp(now, UTC)
    midnight = at.replace(hour=0, minute=0, second=0, microsecond=0)
    if period is Period.DAY:
        end = midnight + timedelta(days=1)
        day = utc_day(now)
        return PeriodWindow(period, f"day:{day}", day, day, _ttl(end, now, grace))
    if period is Period.WEEK:
        monday = midnight - timedelta(days=at.weekday())
        year, week, _ = at.isocalendar()
        end = monday + timedelta(days=7)
        first, last = monday.strftime("%Y%m%d"), (end - timedelta(days=1)).strftime("%Y%m%d")
        return PeriodWindow(period, f"week:{year}W{week:02d}", first, last, _ttl(end, now, grace))
    return PeriodWindow(period, "all", None, None, None)


def _top_read(board: str, marker: str, limit: int) -> tuple[tuple[str, ...], ...]:
    """One bucket's share of a read (one hash slot): its marker and its top ``limit``."""
    return ("EXISTS", marker), ("ZRANGE", board, "0", str(limit - 1), "REV", "WITHSCORES")


def _exp(score: Any) -> int:
    """A board's score (RESP2 text, or a float from redis-py) as EXP."""
    return int(float(score))


def _ranked(flat: list[Any]) -> Iterator[tuple[int, str]]:
    """``ZRANGE ... REV WITHSCORES`` as RESP2 sends it (member, score, ... highest first) as
    ``(-exp, member)``, parsed lazily: merging 1,024 of them for a top 10 parses about 1,034
    scores, not 10,240 (issue #12). Redis sends ties (REV) in descending member order; each run
    of ties is yielded reversed, so the whole is ascending in ``(-exp, member)``."""
    start, end = 0, len(flat)
    while start < end:
        score = flat[start + 1]
        stop = start + 2
        while stop < end and flat[stop + 1] == score:
            stop += 2
        exp = _exp(score)
        for i in range(stop - 2, start - 2, -2):
            yield -exp, str(flat[i])
        start = stop


def _ttl(end: datetime, now: float, grace: int) -> int:
    return max(int(end.timestamp() - now) + grace, 1)


class Standing(msgspec.Struct, frozen=True, kw_only=True):
    rank: int  # 1 + the number of users with more EXP (ties share a rank)
    user_id: str
    exp: int


class Board(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /api/exp/leaderboard``: the top of a period and the caller's own standing."""

    period: Period
    period_id: str
    entries: list[Standing]
    me: Standing | None  # None: the caller earned nothing in the period


class _Tops:
    """What every caller's read of one (period, limit) shares: each bucket's top ``limit``
    (flat, highest first), the merged entries, and (built on the first rank asked) the index
    ranks are counted from."""

    __slots__ = ("_index", "entries", "limit", "tops")

    def __init__(self, tops: list[list[Any]], entries: list[Standing], limit: int) -> None:
        self.tops, self.entries, self.limit = tops, entries, limit
        self._index: tuple[list[int], list[int], list[int]] | None = None

    def index(self) -> tuple[list[int], list[int], list[int]]:
        """Every score in the tops (ascending); the last (lowest) score of each full top
        (``limit`` entries, so the bucket may hold more), ascending; those tops' buckets, in
        the same order."""
        if self._index is None:
            scores = sorted(_exp(score) for top in self.tops for score in top[1::2])
            full = sorted(
                (_exp(top[-1]), bucket)
                for bucket, top in enumerate(self.tops)
                if len(top) >= 2 * self.limit
            )
            self._index = scores, [last for last, _ in full], [bucket for _, bucket in full]
        return self._index


class Leaderboards:
    """Reads the boards of every bucket; rebuilds a bucket's board from the ledger if lost."""

    def __init__(
        self,
        redis: Redis,
        clock: Clock,
        *,
        buckets: int,
        grace: int,
        ledger_sums: LedgerSums | None = None,
        enabled: bool = True,
        scripts: Scripts | None = None,
        cache_seconds: float = 0.0,
    ) -> None:
        self._redis = redis
        self._scripts = scripts  # reads go on its transport (None: on the client's pool)
        self._clock = clock
        self._buckets = buckets
        self._grace = grace
        self._ledger_sums = ledger_sums
        self._enabled = enabled
        self._rebuilding: dict[str, asyncio.Lock] = {}
        self._cache_seconds = cache_seconds
        # (period id, limit) -> (monotonic time it was asked, the read shared by its callers)
        self._cache: dict[tuple[str, int], tuple[float, asyncio.Task[_Tops]]] = {}

    async def board(self, period: Period, limit: int, user_id: str) -> Board:
        """The top ``limit`` (1-100) of ``period`` and ``user_id``'s standing; ``NotFound``
        when leaderboards are off (COUNTERS_LEADERBOARDS_ENABLED=false)."""
        if not self._enabled:
            raise NotFound("Leaderboards are off on this deployment")
        if not 1 <= limit <= MAX_LIMIT:
            raise InvalidRequest(f"limit must be an integer from 1 to {MAX_LIMIT}")
        span = window(period, self._clock.now(), self._grace)
        keys = [board_keys(bucket, span.id) for bucket in range(self._buckets)]
        own_board = keys[bucket_of(user_id, self._buckets)][0]
        shared = await self._shared_tops(span, keys, limit)
        async with _redis_errors():
            [mine] = await self._send([("ZSCORE", own_board, user_id)])
            me = await self._standing(keys, shared, user_id, mine)
        return Board(period=period, period_id=span.id, entries=shared.entries, me=me)

    async def _shared_tops(
        self, span: PeriodWindow, keys: list[tuple[str, str]], limit: int
    ) -> _Tops:
        """The tops of ``span`` read at most ``cache_seconds`` ago in this worker (0: read
        now); callers that miss at once share one read (shielded: a caller that goes away does
        not cancel it for the others); a failed read is not kept."""
        if self._cache_seconds <= 0:
            return await self._read_tops(span, keys, limit)
        now = time.monotonic()
        key = (span.id, limit)
        cached = self._cache.get(key)
        if cached is None or now - cached[0] >= self._cache_seconds:
            for old in [k for k, (at, _) in self._cache.items() if now - at >= self._cache_seconds]:
                del self._cache[old]  # past periods and limits nobody asks for go too
            reading = asyncio.ensure_future(self._read_tops(span, keys, limit))
            reading.add_done_callback(retrieve)  # its callers may all have gone (shielded)
            cached = (now, reading)
            self._cache[key] = cached
        try:
            return await asyncio.shield(cached[1])
        except BaseException:
            if self._cache.get(key) is cached and cached[1].done():
                del self._cache[key]
            raise

    async def _read_tops(
        self, span: PeriodWindow, keys: list[tuple[str, str]], limit: int
    ) -> _Tops:
        """Every bucket's top ``limit`` (one pipelined round trip, the markers with it: a bucket
        whose marker is missing is rebuilt first), merged into the entries."""
        for attempt in range(2):  # the markers ride with the read; a missing one: rebuild, again
            async with _redis_errors():
                replies = await self._send(
                    [cmd for board, marker in keys for cmd in _top_read(board, marker, limit)]
                )
            if attempt == 0 and not all(replies[0::2]):
                await self._ensure_complete(span, keys)
                continue
            break
        tops: list[list[Any]] = replies[1::2]  # flat (member, score, ...), highest first
        entries: list[Standing] = []
        for index, (minus, member) in enumerate(islice(heapq.merge(*map(_ranked, tops)), limit)):
            exp = -minus
            tied = entries and entries[-1].exp == exp
            rank = entries[-1].rank if tied else index + 1
            entries.append(Standing(rank=rank, user_id=member, exp=exp))
        return _Tops(tops, entries, limit)

    async def _standing(
        self, keys: list[tuple[str, str]], tops: _Tops, user_id: str, score: object
    ) -> Standing | None:
        """The caller's rank: 1 + the users with more EXP. A bucket whose top ``limit`` reaches
        down to the caller's EXP (or holds the whole bucket) is counted from that list; only
        the others (a full top whose lowest score is above the caller's: all its ``limit``
        scores are above) are asked (``ZCOUNT``), in one round trip. With the tops' index,
        two bisections and the asked buckets, not a pass over every top."""
        if score is None:
            return None
        exp = int(float(str(score)))
        scores, lasts, full = tops.index()
        ask = full[bisect_right(lasts, exp) :]
        above = len(scores) - bisect_right(scores, exp) - tops.limit * len(ask)
        if ask:
            counts = await self._send([("ZCOUNT", keys[b][0], f"({exp}", "+inf") for b in ask])
            above += sum(int(count) for count in counts)
        return Standing(rank=1 + above, user_id=user_id, exp=exp)

    async def _send(self, commands: list[tuple[str, ...]]) -> list[Any]:
        """One pipelined round trip: the scripts' transport (hiredis-packed and parsed, several
        times cheaper per command than a redis-py pipeline at 1,024 buckets), else the client."""
        if self._scripts is not None:
            return await self._scripts.send_many(commands)
        async with self._redis.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            return list(await pipe.execute())

    async def _missing(self, keys: list[tuple[str, str]]) -> list[int]:
        async with _redis_errors(), self._redis.pipeline(transaction=False) as pipe:
            for _, marker in keys:
                pipe.exists(marker)
            present = await pipe.execute()
        return [bucket for bucket, found in enumerate(present) if not found]

    async def _ensure_complete(self, span: PeriodWindow, keys: list[tuple[str, str]]) -> None:
        """Rebuild, from the ledger, every bucket's board whose marker is missing. One rebuild
        of a period at a time in this process: readers arriving meanwhile wait for it."""
        if not await self._missing(keys):
            return
        lock = self._rebuilding.setdefault(span.id, asyncio.Lock())
        async with lock:
            missing = await self._missing(keys)  # another reader may have rebuilt it
            if missing:
                await self._rebuild(span, keys, missing)
        if not lock.locked():
            self._rebuilding.pop(span.id, None)

    async def _rebuild(
        self, span: PeriodWindow, keys: list[tuple[str, str]], missing: list[int]
    ) -> None:
        sums: dict[str, int] = {}
        if self._ledger_sums is not None:  # its own timeout: an "all" rebuild may take a while
            sums = await self._ledger_sums(span.period.value, span.first_day, span.last_day)
        by_bucket: dict[int, dict[str, int]] = {bucket: {} for bucket in missing}
        for user, exp in sums.items():
            bucket = bucket_of(user, self._buckets)
            if bucket in by_bucket and exp > 0:
                by_bucket[bucket][user] = exp
        async with _redis_errors(), self._redis.pipeline(transaction=False) as pipe:
            for bucket, members in by_bucket.items():
                board, marker = keys[bucket]
                if members:
                    pipe.zadd(board, members, gt=True)  # never lowers what Redis counted
                    if span.ttl is not None:
                        pipe.expire(board, span.ttl)
                if span.ttl is None:
                    pipe.set(marker, "1")
                else:
                    pipe.set(marker, "1", ex=span.ttl)
            await pipe.execute()
