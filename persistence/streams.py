"""The ledger's lag over every bucket stream, cheap when the streams are idle (issue #12).

With 1,024 buckets (the default) there are 1,024 streams. Asking each for its length and oldest
entry every ``lag_refresh_seconds`` (4 times a second, in every worker) cost more CPU than the
rest of an idle worker together (``python -m bench.buckets``). Every command here touches one
stream (one hash slot), so each works unchanged on Redis Cluster.

- ``LagProbe.refresh`` (the durability window's watcher): each refresh looks at the streams that
  held entries at their last look (the *active* ones) and at the next slice of the others, round
  robin (``SLICE`` streams, their length only). Idle, a refresh costs ``SLICE`` XLEN whatever the
  bucket count; a stream that starts filling is seen within ``buckets / SLICE`` refreshes (1,024
  buckets, 0.25 s: 4 s), the flusher meanwhile draining it as usual. Busy streams are looked at
  every refresh, so the durability window's verdict on them is as prompt as before.
  With ``buckets <= SLICE`` (16 buckets) every refresh looks at every stream, as before.
- ``exact_lag`` (``/readyz``): every stream, as before, but lengths first and the oldest entry
  only of the streams that hold any.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from redis.asyncio import Redis

from persistence.flusher import Lag

SLICE = 64  # idle streams looked at per refresh
SendMany = Callable[[Sequence[Sequence[Any]]], Awaitable[list[Any]]]  # Scripts.send_many


def _age(now: tuple[Any, Any], firsts: Sequence[Any]) -> float:
    """Seconds since the oldest of ``firsts`` (XRANGE COUNT 1 replies) at Redis ``TIME``."""
    now_ms = int(now[0]) * 1000 + int(now[1]) // 1000
    oldest = [int(first[0][0].split("-")[0]) for first in firsts if first]
    return max(now_ms - min(oldest), 0) / 1000 if oldest else 0.0


async def _look(redis: Redis, streams: Sequence[str]) -> tuple[list[int], list[Any], Any]:
    """Each stream's length and first entry (one round trip), and Redis's clock (TIME on its
    own: a Redis Cluster pipeline takes only commands with a key)."""
    async with redis.pipeline(transaction=False) as pipe:
        for stream in streams:
            pipe.xlen(stream)
            pipe.xrange(stream, count=1)
        replies = await pipe.execute()
    return [int(n) for n in replies[0::2]], replies[1::2], await redis.time()


async def exact_lag(redis: Redis, streams: Sequence[str], send_many: SendMany | None = None) -> Lag:
    """Entries in every stream and the oldest one's age: lengths of all (one round trip, on
    ``send_many`` when given: the scripts' hiredis auto-pipeline, ~4 x cheaper per command than a
    redis-py pipeline), then the first entry of those that hold any (on ``redis``: entries may
    hold bytes that are not UTF-8). Raises ``RedisError`` or ``StorageError``."""
    if send_many is not None:
        lengths = [int(n) for n in await send_many([("XLEN", stream) for stream in streams])]
    else:
        async with redis.pipeline(transaction=False) as pipe:
            for stream in streams:
                pipe.xlen(stream)
            lengths = [int(n) for n in await pipe.execute()]
    busy = [stream for stream, n in zip(streams, lengths, strict=True) if n]
    counts, firsts, now = await _look(redis, busy)
    return Lag(sum(counts), _age(now, firsts))


class LagProbe:
    """The durability window's view of the lag: active streams every refresh, idle ones a
    slice at a time (see the module's docstring)."""

    def __init__(self, redis: Redis, streams: Sequence[str], slice_size: int = SLICE) -> None:
        self._redis = redis
        self._streams = list(streams)
        self._slice = max(1, slice_size)
        self._next = 0  # where the next slice of idle streams starts
        self._active: dict[str, tuple[int, Any]] = {}  # stream -> (length, first entry)

    async def refresh(self) -> Lag:
        """One look (two round trips: the streams, then TIME); the lag over what is known.
        Active streams give their length and first entry; the slice of idle ones only its
        length (a stream found filling becomes active: its oldest entry is read from the next
        refresh on). Raises ``RedisError``."""
        active = list(self._active)
        idle: list[str] = []
        for _ in range(min(self._slice, len(self._streams))):
            stream = self._streams[self._next]
            self._next = (self._next + 1) % len(self._streams)
            if stream not in self._active:
                idle.append(stream)
        async with self._redis.pipeline(transaction=False) as pipe:
            for stream in active:
                pipe.xlen(stream)
                pipe.xrange(stream, count=1)
            for stream in idle:
                pipe.xlen(stream)
            replies = await pipe.execute()
        # TIME on its own: a Redis Cluster pipeline takes only commands with a key.
        now = await self._redis.time()
        looked = 2 * len(active)
        for stream, length, first in zip(
            active, replies[0:looked:2], replies[1:looked:2], strict=True
        ):
            if int(length):
                self._active[stream] = (int(length), first)
            else:
                del self._active[stream]
        for stream, length in zip(idle, replies[looked:], strict=True):
            if int(length):
                self._active[stream] = (int(length), [])  # its oldest entry: next refresh
        known = self._active.values()
        return Lag(sum(n for n, _ in known), _age(now, [first for _, first in known]))
