"""The ledger mark: before a lost bucket's entities are read back from Postgres, every bucket
stream is ledgered up to where it stood when the loss was seen (issue #11).

A creator award's once-per-actor record lives in the entity's bucket, but Postgres learns of it
from the award's event, which is in the stream of the paid owner's bucket. When Redis loses
every bucket at once (one Redis restarted empty) that event was either ledgered before the loss
or lost with the record. When it loses only some (a Redis Cluster failover losing a few slots),
the owner's bucket may survive with the award not yet flushed: the entity's records read back
then would lack it, and the like would be paid again. The flush barriers (``persistence/runs.py``)
do not see it: they fence the flushes of lost incarnations, and the owner's bucket lost nothing.

So before such a read, each stream's newest entry id is taken (its mark, ``lua/stream_mark.lua``)
and the read waits until the flusher has ledgered and deleted every entry up to it. An award
made before the loss is at or before its stream's mark. One made after it needed the entity's
owner in Redis, which comes back only with the entity's records, read behind this wait.

Why wait rather than keep the record with the event (the other way to make them lost together):
the award's event must stay in the owner's stream (the owner's seq and limits are there), and a
second event in the entity's stream would change the scripts' stream entries. The wait costs
nothing in steady state: it runs only when a bucket was lost, once per process and loss (the
marks are kept across retries, so a retry waits for the same marks, not newer ones), and while
the flusher keeps up it is one or two pipelined round trips.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from counters.errors import StorageError
from counters.redis.calls import StreamKey, StreamMark
from counters.redis.codes import MarkOutcome
from counters.redis.keys import stream_key
from counters.redis.scripts import Scripts

POLL_SECONDS = 0.02  # between two looks at the streams still short of their mark


class LedgerMark:
    """Waits until every bucket stream was ledgered up to its mark, the marks taken once per
    set of lost incarnations (``reach``)."""

    def __init__(self, scripts: Scripts, *, buckets: int, poll: float = POLL_SECONDS) -> None:
        self._scripts = scripts
        self._buckets = buckets
        self._poll = poll
        self._covers: dict[int, str] = {}  # bucket -> run: losses seen before the marks
        self._behind: dict[int, str] = {}  # bucket -> its stream's mark, entries up to it left
        self.behind = 0  # streams short of their mark at the last look (/readyz)

    async def reach(
        self,
        runs: dict[int, str],
        seconds: float,
        on_look: Callable[[int], None] | None = None,
    ) -> None:
        """Return once every stream has been ledgered up to where it stood when the loss of
        ``runs`` (incomplete bucket -> its current run) was seen: the marks are taken at the
        first call naming a run they do not cover. ``on_look`` gets the number of streams
        still behind after each look. Raises ``StorageError`` after ``seconds`` (the flusher is
        behind: Postgres down, or no flusher running) or when Redis fails."""
        if any(self._covers.get(bucket) != run for bucket, run in runs.items()):
            self._behind = await self._take()  # later marks cover every earlier loss too
            self._covers |= runs
        deadline = asyncio.get_running_loop().time() + seconds
        while True:
            if self._behind:
                self._behind = await self._look(self._behind)
            self.behind = len(self._behind)
            if on_look is not None:
                on_look(self.behind)
            if not self._behind:
                return
            if asyncio.get_running_loop().time() + self._poll > deadline:
                raise StorageError(
                    f"{self.behind} bucket streams are not yet ledgered up to where they stood"
                    " when Redis lost buckets: a lost bucket's once-per-actor records are read"
                    " back only after that (is a flusher running?)"
                )
            await asyncio.sleep(self._poll)

    async def _take(self) -> dict[int, str]:
        """Every non-empty stream's newest id (one pipelined round trip)."""
        calls = [(StreamKey(stream_key(b)), StreamMark()) for b in range(self._buckets)]
        marks: dict[int, str] = {}
        for bucket, reply in enumerate(await self._scripts.run_many(calls)):
            if isinstance(reply, StorageError):
                raise reply
            mark = reply[1].decode() if isinstance(reply[1], bytes) else str(reply[1])
            if mark:
                marks[bucket] = mark
        return marks

    async def _look(self, marks: dict[int, str]) -> dict[int, str]:
        """Those of ``marks`` whose stream still holds an entry at or before its mark."""
        buckets = list(marks)
        replies = await self._scripts.run_many(
            [(StreamKey(stream_key(b)), StreamMark(mark=marks[b])) for b in buckets]
        )
        left: dict[int, str] = {}
        for bucket, reply in zip(buckets, replies, strict=True):
            if isinstance(reply, StorageError):
                raise reply
            if reply[0] == MarkOutcome.BEHIND:
                left[bucket] = marks[bucket]
        return left
