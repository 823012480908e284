"""The flusher's reading loop on a Redis Cluster (issue #12).

The single-node flusher (persistence/flusher.py) reads every bucket's stream in one XREADGROUP and
acknowledges a batch in one MULTI; a cluster refuses both when the streams live in several slots
(CROSSSLOT). Here, on the ``RedisCluster`` client (counters/runtime/services.py), each stream is
read by its own ``XREADGROUP ... STREAMS <stream> <id>`` and acknowledged by its own XACK + XDEL,
in non-transactional pipelines that redis-py splits per node (one round trip per master, the
masters in parallel; MOVED/ASK followed by redis-py, so a resharding or a failover re-groups the
streams by their new nodes). Parsing, the Postgres write and the acknowledgement order (write,
commit, then ack) are the single-node flusher's, unchanged: an entry is acknowledged only after
its transaction committed, and a write twice is a no-op.

Its cost does not grow with the bucket count: a read polls only the *active* streams (those that
held entries in the last ``active_seconds``) and sweeps every stream only every ``sweep_seconds``,
so 1,024 idle buckets cost 1,024 cheap XREADGROUPs a second across the cluster, and a busy one is
read as often as the single-node flusher reads. A new event in an idle bucket is ledgered within
``sweep_seconds`` (plus the write). A drain (``counters flush``, burst mode) reads every stream
each time, until none holds anything. There is no blocking read (BLOCK holds a connection per
stream); between empty polls the flusher sleeps ``idle_poll_seconds``.

Acknowledging per stream is not atomic across streams as the single MULTI was: a crash between
two streams' XACK/XDEL leaves the rest pending, delivered again and written again as a no-op.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from redis.exceptions import RedisError

from counters.errors import RedisStorageError
from persistence.flusher import FORGET_EVERY, GROUP, Entry, Flusher


class ClusterFlusher(Flusher):
    """A ``Flusher`` whose reads and acks are per stream (see the module's text).

    Takes the ``Flusher``'s arguments, and ``sweep_seconds`` (every stream read at least this
    often), ``active_seconds`` (a stream that held entries this recently is read every time),
    ``idle_poll_seconds`` (the pause after a read that found nothing, when blocking)."""

    def __init__(
        self,
        *args: Any,
        sweep_seconds: float = 1.0,
        active_seconds: float = 10.0,
        idle_poll_seconds: float = 0.05,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._sweep_seconds = sweep_seconds
        self._active_seconds = active_seconds
        self._idle_poll = idle_poll_seconds
        self._active: dict[str, float] = {}  # stream -> monotonic time it last held entries
        self._next_sweep = 0.0
        self.polls = 0  # XREADGROUPs sent (for the bench and the tests: cost per bucket count)

    def _streams_to_read(self, start: str, burst: bool) -> list[str]:
        now = time.monotonic()
        # Own pending entries, or a drain (burst: until nothing is left): look everywhere.
        if start != ">" or burst or now >= self._next_sweep:
            if start == ">":
                self._next_sweep = now + self._sweep_seconds
            return self.streams
        horizon = now - self._active_seconds
        self._active = {s: t for s, t in self._active.items() if t >= horizon}
        return list(self._active)

    async def _read_group(self, start: str, block_ms: int | None) -> list[Entry]:
        streams = self._streams_to_read(start, burst=block_ms is None)
        entries = await self._read_streams(streams, start)
        if not entries and block_ms is not None:
            await asyncio.sleep(min(self._idle_poll, block_ms / 1000))
        return entries

    async def _read_streams(self, streams: list[str], start: str) -> list[Entry]:
        if not streams:
            return []
        self.polls += len(streams)
        async with self._redis.pipeline(transaction=False) as pipe:
            for stream in streams:
                pipe.xreadgroup(GROUP, self.consumer, {stream: start}, count=self._batch)
            replies = await pipe.execute()
        entries: list[Entry] = []
        now = time.monotonic()
        for reply in replies:
            for stream, items in reply or []:
                if items:
                    self._active[stream] = now
                    self._full = self._full or len(items) >= self._batch
                entries += [(stream, sid, fields) for sid, fields in items]
        return entries

    async def _following(self, tails: dict[str, str], count: int) -> dict[str, list[Entry]]:
        """``Flusher._following`` through a cluster pipeline (the streams live on several
        nodes)."""
        streams = list(tails)
        async with self._redis.pipeline(transaction=False) as pipe:
            for stream in streams:
                pipe.xrange(stream, min=f"({tails[stream]}", max="+", count=count)
            replies = await pipe.execute()
        return {
            stream: [(stream, sid, fields) for sid, fields in found]
            for stream, found in zip(streams, replies, strict=True)
        }

    async def _claim(self) -> list[Entry]:
        """``Flusher._claim`` through a cluster pipeline (the streams live on several nodes)."""
        forgetting = self._claims % FORGET_EVERY == 0
        self._claims += 1
        async with self._redis.pipeline(transaction=False) as pipe:
            for stream in self.streams:
                pipe.xautoclaim(stream, GROUP, self.consumer, self._claim_idle(), count=self._batch)
                if forgetting:
                    pipe.xinfo_consumers(stream, GROUP)
            replies = await pipe.execute()
        step = 2 if forgetting else 1
        entries: list[Entry] = []
        for stream, claimed in zip(self.streams, replies[::step], strict=True):
            entries += [(stream, sid, fields) for sid, fields in claimed[1]]
        if forgetting:
            await self._forget(
                [
                    (stream, c["name"])
                    for stream, consumers in zip(self.streams, replies[1::2], strict=True)
                    for c in consumers
                    if self._forgettable(c)
                ]
            )
        return entries

    async def _ack(self, entries: list[Entry]) -> None:
        by_stream: dict[str, list[str]] = {}
        for stream, sid, _ in entries:
            by_stream.setdefault(stream, []).append(sid)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for stream, ids in by_stream.items():
                    pipe.xack(stream, GROUP, *ids)
                    pipe.xdel(stream, *ids)
                await pipe.execute()
        except RedisError as exc:
            # Written but not acknowledged: delivered again later, and written again as a no-op.
            raise RedisStorageError(f"flusher ack: {exc}") from exc
