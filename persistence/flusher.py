"""The flusher: moves the event streams into the Postgres ledger, each event exactly once.

One iteration (``flush_once``) reads a batch from every bucket's stream through the consumer
group ``flusher``, writes it to Postgres in one transaction, then acknowledges and deletes the
entries (XACK + XDEL in one MULTI, packed by hiredis). So a stream holds exactly the events not
yet in Postgres, and its length and oldest id are the flusher's lag.

Exactly once: the write is idempotent (``persistence.writer``: the ledger's key is the event id,
totals only move forward), and an entry is acknowledged only after its transaction committed.
A crash before the commit leaves the entries pending, a crash after it leaves them pending too;
either way they are delivered again (this consumer re-reads its own pending entries first; a dead
consumer's are claimed with XAUTOCLAIM once idle) and the second write changes nothing.

Every ``serve`` worker runs one consumer in the same group. With a lease (``lease_ms``, the
setting ``COUNTERS_FLUSH_LEASE_MS``), one of them flushes at a time: the one holding the Redis
key ``ctr:flush:lease``, renewed at every iteration; the others stand by, checking it every
quarter of its time, and take it over when it expires or is released (a worker stopping). So a
deployment makes one transaction per linger instead of one per worker, each twice as large with
two workers (a batch's fixed cost, not its rows, is most of the CPU at a steady rate). While the
holder is behind (a read filled a stream's ``COUNTERS_FLUSH_BATCH``: more was waiting) it says
so in the lease, and the others flush too, as without a lease, until it has caught up. The lease
is about cost only: two flushers at once (a holder whose write outlasted the lease) are as safe
as ever, and a worker that dies has its pending entries claimed by the next holder.

Bad data never stops it: a batch whose write fails for a reason other than Postgres being
unreachable (``persistence.store.is_transient``) is split in halves, each written on its own,
until the entries that fail alone are isolated; those go to ``ledger_quarantine`` (escaped, so
that write cannot fail on their content) and everything else is ledgered. Unreachable Postgres
is retried with backoff, the events waiting in Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import hiredis
from redis._parsers import hiredis as redis_hiredis_parser
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from counters.errors import RedisStorageError, StorageError
from counters.metrics import FLUSH_FAILURES, LEDGER_QUARANTINED, LEDGER_ROWS, count_store_error
from counters.redis.keys import FLUSH_LEASE_KEY, stream_key
from persistence.events import (
    Batch,
    RecordEvent,
    Rejected,
    gc_paused,
    parse,
    sort_entries,
)
from persistence.store import Store, is_transient
from persistence.writer import WriteResult

log = logging.getLogger("persistence.flusher")
# What redis-py's hiredis reader answers while a reply is incomplete (``_read_replies``).
_NOT_ENOUGH_DATA = getattr(redis_hiredis_parser, "NOT_ENOUGH_DATA", False)

GROUP = "flusher"
_FORGET_CONSUMER_MS = 3_600_000  # a consumer with nothing pending, idle this long, is removed
FORGET_EVERY = 8  # claims (every claim_idle_ms / 2): dead consumers are looked for every 40 s
_IDLE_BLOCK_DOUBLINGS = 2  # idle, a blocking read waits up to 4 x block_ms (2 s by default)
_TRAILING = 8  # entries looked at past the last one of a stream read up to the batch size

# The flush lease (see the module's docstring): KEYS[1] the lease, ARGV: this consumer, the
# lease's time (ms), this consumer's state: "0" keeping up, "1" behind, "2" failing (its last
# write failed: it cannot reach Postgres, say). The value is "<consumer>|<state>".
# Returns 1: this consumer holds it (taken or renewed); 2: another holds it and is behind (help
# it: flush too); 3: another holds it and is failing (help, and take over what it read and
# could not write); 0: another holds it (stand by). A key this code did not write is taken over,
# never obeyed: one without an expiry, one expiring later than any lease can (``MAX_LEASE_MS``),
# or a value that is not "<consumer>|<state>" (a stray SET: an attacker's findings, the first
# stopped the ledger for good, the others until the key expired, every write refused with 503
# once the durability window filled).
MAX_LEASE_MS = 60_000  # the most COUNTERS_FLUSH_LEASE_MS allows (counters/settings.py)
_LEASE = f"""
local mine = ARGV[1] .. '|'
local holder = redis.call('GET', KEYS[1])
local ttl = holder and redis.call('PTTL', KEYS[1])
if not holder or string.sub(holder, 1, #mine) == mine or ttl < 0 or ttl > {MAX_LEASE_MS}
    or not string.find(holder, '^[^|]+|[012]$') then
  redis.call('SET', KEYS[1], mine .. ARGV[3], 'PX', ARGV[2])
  return 1
end
local state = string.sub(holder, -2)
if state == '|1' then return 2 end
if state == '|2' then return 3 end
return 0
"""
# Releases the lease if this consumer (ARGV[1]) holds it: a stopping worker hands over at once.
_RELEASE = """
local holder = redis.call('GET', KEYS[1])
if holder and string.sub(holder, 1, #ARGV[1] + 1) == ARGV[1] .. '|' then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
HOLD, HELP, STAND_BY = 1, 2, 0
_RESCUE = 3  # the lease script's "help, the holder is failing" (self.role says HELP)
REQUEUE_EVERY = 30.0  # seconds between looks for compact entries an older flusher quarantined


def longest_block_ms(block_ms: int) -> int:
    """The longest a flusher's blocking read may wait (its client's timeout must exceed it)."""
    return block_ms << _IDLE_BLOCK_DOUBLINGS


Entry = tuple[str, str, dict[str, str] | None]  # (stream, id, fields; None if deleted)
AfterCommit = Callable[[Batch], Awaitable[None]]


@dataclass(slots=True)
class FlusherStats:
    events: int = 0  # entries acknowledged (ledgered, duplicate or quarantined)
    inserted: int = 0
    duplicates: int = 0
    quarantined: int = 0
    failures: int = 0  # consecutive failed iterations (0 when healthy)
    last_error: str | None = None
    split_writes: int = 0  # writes of part of a batch while isolating bad entries
    last_progress: float = field(default_factory=time.monotonic)  # last iteration that ended well


@dataclass(frozen=True, slots=True)
class Lag:
    events: int  # entries not yet in Postgres
    seconds: float  # age of the oldest of them


class Flusher:
    def __init__(
        self,
        redis: Redis,
        store: Store,
        *,
        buckets: int,
        batch: int = 1_000,
        block_ms: int = 500,
        linger_ms: int = 0,
        claim_idle_ms: int = 10_000,
        backoff_max: float = 5.0,
        consumer: str | None = None,
        after_commit: AfterCommit | None = None,
        lease_ms: int = 0,
    ) -> None:
        self._redis = redis
        self._store = store
        self.streams = [stream_key(bucket) for bucket in range(buckets)]
        self._batch = batch
        self._block_ms = block_ms
        self._linger = linger_ms / 1000
        self._claim_idle_ms = claim_idle_ms
        self._backoff_max = backoff_max
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self._after_commit = after_commit  # tests inject a crash between commit and ack here
        self._groups_ready = False
        self._own_pending_first = True  # after a start or a failure, retry our own entries first
        self._next_claim = 0.0
        self._idle_reads = 0  # blocking reads in a row that found nothing
        self._claims = 0  # claims made (dead consumers are forgotten every FORGET_EVERY)
        self._lease_ms = lease_ms  # 0: no lease, this consumer always flushes
        self._full = False  # the last read filled a stream's COUNT: more was waiting
        self._behind = False  # ... and that iteration ended well: the lease says so
        self.role = STAND_BY if lease_ms else HOLD  # what the lease said last
        self._rescuing = False  # the holder is failing: its unwritten entries are claimed soon
        self._next_requeue = 0.0  # when to look for entries an older release quarantined
        self.stats = FlusherStats()

    async def flush_once(self, *, block: bool = True) -> int:
        """One iteration: read, write in one transaction, acknowledge. Returns entries handled."""
        try:
            try:
                entries = await self._read(block)
            except ResponseError as exc:
                if "NOGROUP" not in str(exc) and "no such key" not in str(exc):
                    raise
                self._groups_ready = False  # Redis lost the streams (FLUSHALL, failover)
                entries = await self._read(block=False)
            entries = await self._with_trailing_records(entries)
        except RedisError as exc:
            raise RedisStorageError(f"flusher read: {exc}") from exc
        if not entries:
            return 0
        try:
            result = await self._write_isolating(entries)
            if self._after_commit is not None:
                await self._after_commit(sort_entries(entries))
            await self._ack(entries)
        except BaseException:
            self._own_pending_first = True  # they stay pending with us: read them again first
            raise
        self.stats.events += len(entries)
        self.stats.inserted += result.inserted
        self.stats.duplicates += result.duplicates
        self.stats.quarantined += result.quarantined
        LEDGER_ROWS.inc(result.inserted)
        if result.quarantined:
            LEDGER_QUARANTINED.inc(result.quarantined)
        if result.quarantined:
            log.error("flusher quarantined %d entries (see ledger_quarantine)", result.quarantined)
        return len(entries)

    async def _with_trailing_records(self, entries: list[Entry]) -> list[Entry]:
        """``entries`` and, after the last entry of each stream read up to the batch size, the
        ``record`` entries that follow it (``lua/lib/records.lua``).

        A script appends its events, then the records of the same step (an award's or a
        debit's idempotency record), and a read of ``batch`` entries may stop between them.
        Written in separate transactions, a Redis loss between the two found the event ledgered
        and its record gone: the keyed retry of an acknowledged, ledgered request was applied
        again (seen as the flaky ``test_postgres_down_then_redis_emptied_under_load...``).
        So the records that follow go in the same transaction and are deleted with the batch.
        They were never delivered to the group: a consumer that reads them meanwhile writes
        them again, which changes nothing. So every script appends its records *after* its
        event (an XP script's transaction record too: ``lua/debit_xp.lua``); a record ahead of
        its event could be ledgered a transaction before it, and a refund of a debit that a
        loss then erased would create XP. Raises ``RedisError``."""
        if len(entries) < self._batch:  # no stream can have been read up to the batch size
            return entries
        counts: dict[str, int] = {}
        tails: dict[str, str] = {}
        for stream, sid, _ in entries:  # a read's entries come in order in each stream
            counts[stream] = counts.get(stream, 0) + 1
            tails[stream] = sid  # the last: parsing every id to compare was ~1 us an entry
        tails = {stream: sid for stream, sid in tails.items() if counts[stream] >= self._batch}
        extra: list[Entry] = []
        while tails:
            following = await self._following(tails, _TRAILING)
            more: dict[str, str] = {}
            for stream, found in following.items():
                records = 0
                for entry in found:
                    if not _is_record(entry):
                        break
                    extra.append(entry)
                    records += 1
                if records == len(found) == _TRAILING:  # records all the way: look further
                    more[stream] = found[-1][1]
            tails = more
        return entries + extra if extra else entries

    async def _following(self, tails: dict[str, str], count: int) -> dict[str, list[Entry]]:
        """Up to ``count`` entries of each stream after the id ``tails`` gives it, in order
        (one round trip; XRANGE: nothing is delivered to the group). Raises ``RedisError``."""
        streams = list(tails)
        commands = [("XRANGE", s, f"({tails[s]}", "+", "COUNT", count) for s in streams]
        replies = await _send_packed(self._redis, commands)
        return {s: _entries([(s, reply)]) for s, reply in zip(streams, replies, strict=True)}

    async def _write_isolating(self, entries: list[Entry]) -> WriteResult:
        """Write ``entries``; on a failure caused by their content, halve until the entries
        that fail alone are found and quarantine them. Transient failures are raised."""
        try:
            return await self._store.write(sort_entries(entries))
        except Exception as exc:
            if is_transient(exc):
                raise
            failure = exc
        if len(entries) == 1:
            stream, sid, fields = entries[0]
            reason = f"write failed: {type(failure).__name__}: {failure}"
            log.error("flusher quarantines %s %s: %s", stream, sid, reason)
            await self._store.quarantine([Rejected(stream, sid, reason, dict(fields or {}))])
            return WriteResult(0, 0, 1)
        self.stats.split_writes += 2
        middle = len(entries) // 2
        first = await self._write_isolating(entries[:middle])
        second = await self._write_isolating(entries[middle:])
        return WriteResult(
            first.inserted + second.inserted,
            first.duplicates + second.duplicates,
            first.quarantined + second.quarantined,
        )

    async def run(
        self,
        stop: asyncio.Event | None = None,
        *,
        burst: bool = False,
        max_failures: int | None = None,
    ) -> int:
        """Flush until ``stop`` is set (or, in burst mode, until the streams are drained).

        Failures are retried with capped exponential backoff: while Postgres is down the events
        wait in Redis, and the flusher catches up when it returns. After ``max_failures`` failures
        in a row the last one is raised. Returns the entries handled.
        """
        stop = stop or asyncio.Event()
        try:
            return await self._run(stop, burst, max_failures)
        finally:
            if self._lease_ms and not burst:
                await self._release()

    async def _run(self, stop: asyncio.Event, burst: bool, max_failures: int | None) -> int:
        total = 0
        failing = False  # the last iteration failed: the lease asks the others to help
        while not stop.is_set():
            if self._lease_ms and not burst and await self._lease(failing) == STAND_BY:
                self.stats.last_progress = time.monotonic()  # standing by is no stall
                self.stats.failures, self.stats.last_error = 0, None  # nor a failure (/readyz)
                await _wait(stop, self._lease_ms / 4000)
                continue
            if time.monotonic() >= self._next_requeue:
                self._next_requeue = time.monotonic() + REQUEUE_EVERY
                await self._requeue()
            try:
                handled = await self.flush_once(block=not burst)
            except Exception as exc:
                failing = True
                FLUSH_FAILURES.inc()
                count_store_error(exc)
                if max_failures is not None and self.stats.failures + 1 >= max_failures:
                    self.stats.failures += 1
                    self.stats.last_error = str(exc)
                    raise
                self.stats.failures += 1
                self.stats.last_error = str(exc)
                delay = min(self._backoff_max, 0.05 * 2 ** min(self.stats.failures, 16))
                delay *= random.uniform(0.5, 1.0)
                if self._lease_ms and not burst:
                    # Retrying its own entries keeps them young: wait long enough for another
                    # worker, told by the lease that this one fails, to claim them (a quarter
                    # of the lease unacknowledged) and write them if it can.
                    delay = max(delay, self._lease_ms / 2000)
                if isinstance(exc, StorageError):
                    log.warning("flush failed (%s); retrying in %.2fs", exc, delay)
                else:  # a bug: keep the events safe in Redis and keep trying, loudly
                    log.exception("flush failed unexpectedly; retrying in %.2fs", delay)
                await _wait(stop, delay)
                continue
            failing = False
            self.stats.last_progress = time.monotonic()
            if self.stats.failures:
                log.info("flusher recovered after %d failed attempts", self.stats.failures)
                self.stats.failures, self.stats.last_error = 0, None
            total += handled
            if burst and handled == 0:
                break
            self.iteration_done()
            if not burst and 0 < handled < self._batch and self._linger:
                await _wait(stop, self._linger)  # let the next batch grow (settings: linger)
        return total

    async def _requeue(self) -> None:
        """Ledger the compact entries a flusher of the release before quarantined during a
        rolling upgrade (``writer.requeue_upgraded``); a failure is logged and tried again
        ``REQUEUE_EVERY`` seconds later, never stopping the flusher."""
        try:
            result = await self._store.requeue_upgraded()
        except Exception as exc:
            log.warning("flusher: entries quarantined by an older release not requeued: %s", exc)
            return
        if result.inserted or result.duplicates or result.lost:
            log.info(
                "flusher ledgered %d entries an older release had quarantined (%d already in)",
                result.inserted, result.duplicates,
            )  # fmt: skip
            LEDGER_ROWS.inc(result.inserted)

    def iteration_done(self) -> None:
        """After an iteration that ended well: the next lease renewal says whether it left
        more waiting (a read filled a stream's batch)."""
        self._behind, self._full = self._full, False

    async def _lease(self, failing: bool = False) -> int:
        """Take or renew the flush lease: ``HOLD``, ``HELP`` (another holds it and is behind or
        failing) or ``STAND_BY``. ``failing``: this consumer's last write failed, so the lease
        says so and the others flush too: a holder that cannot reach Postgres (a partition of
        its own) must not stop a deployment whose other workers can (an attacker's finding:
        the ledger stopped and every write got 503 while the holder renewed its lease). When
        Redis fails, ``HOLD``: the iteration's own read fails next, with the usual backoff."""
        state = 2 if failing else int(self._behind)
        try:
            role = await self._redis.eval(
                _LEASE, 1, FLUSH_LEASE_KEY, self.consumer, self._lease_ms, state
            )
        except RedisError:
            return HOLD
        rescuing = int(role) == _RESCUE
        if rescuing and not self._rescuing:
            self._next_claim = 0.0  # claim what the failing holder read, from the next read
        self._rescuing = rescuing
        self.role = HELP if rescuing else int(role)
        return self.role

    def _claim_idle(self) -> int:
        """How long (ms) another consumer's entry must have waited unacknowledged before this
        one claims it: ``claim_idle_ms``; while the lease's holder is failing, a quarter of the
        lease: the entries it read and cannot write (it retries them, which keeps them young)
        would otherwise wait for it, not for Postgres. A claim of entries it does write after
        all writes them again: a no-op."""
        if self._rescuing:
            return min(self._claim_idle_ms, self._lease_ms // 4)
        return self._claim_idle_ms

    async def _release(self) -> None:
        """Give the lease up if held (best effort: it expires anyway)."""
        with contextlib.suppress(RedisError, OSError):
            await self._redis.eval(_RELEASE, 1, FLUSH_LEASE_KEY, self.consumer)

    async def drain(self, max_failures: int | None = None) -> int:
        """Burst mode: flush (retrying failures) until nothing is left to flush."""
        return await self.run(burst=True, max_failures=max_failures)

    async def ensure_groups(self) -> None:
        """Create the consumer group on every stream (and the stream) if missing."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for stream in self.streams:
                pipe.xgroup_create(stream, GROUP, id="0", mkstream=True)
            replies = await pipe.execute(raise_on_error=False)
        for reply in replies:
            if isinstance(reply, Exception) and "BUSYGROUP" not in str(reply):
                raise RedisStorageError(f"create consumer group: {reply}")
        self._groups_ready = True

    async def _read(self, block: bool) -> list[Entry]:
        if not self._groups_ready:
            await self.ensure_groups()
        if self._own_pending_first:
            entries = await self._read_group("0", block_ms=None)
            if entries:
                return entries
            self._own_pending_first = False
        if time.monotonic() >= self._next_claim:
            self._next_claim = time.monotonic() + self._claim_idle() / 2000
            entries = await self._claim()
            if entries:
                return entries
        entries = await self._read_group(">", block_ms=self._idle_block_ms() if block else None)
        self._idle_reads = 0 if entries else self._idle_reads + 1
        return entries

    def _idle_block_ms(self) -> int:
        """How long the next blocking read waits: ``block_ms``, doubled after each read that
        found nothing, up to ``_IDLE_BLOCK_FACTOR`` times it. A blocking XREADGROUP returns as
        soon as any stream gets an entry, so waiting longer delays no event; it makes idle
        reads rarer, and each costs Redis and this process O(buckets) (issue #12)."""
        return self._block_ms << min(self._idle_reads, _IDLE_BLOCK_DOUBLINGS)

    async def _read_group(self, start: str, block_ms: int | None) -> list[Entry]:
        """XREADGROUP over every stream, sent packed by hiredis and its reply read flat.

        Why not ``Redis.xreadgroup``: redis-py turns each entry's field list into a dict in
        Python (``pairs_to_dict``) and walks the reply again to shape it; that was about a
        sixth of the flusher's CPU per event. Here the reply hiredis already decoded (C) is
        reshaped once, each entry's fields paired by ``dict(zip(...))`` (C)."""
        command: list[str | int] = ["XREADGROUP", "GROUP", GROUP, self.consumer]
        command += ["COUNT", self._batch]
        if block_ms is not None:
            command += ["BLOCK", block_ms]
        command += ["STREAMS", *self.streams, *[start] * len(self.streams)]
        (reply,) = await _send_packed(self._redis, [tuple(command)])
        with gc_paused():
            entries = _entries(reply)
        streams = reply.values() if isinstance(reply, dict) else (s[1] for s in reply or ())
        self._full = self._full or any(len(items) >= self._batch for items in streams)
        return entries

    async def _claim(self) -> list[Entry]:
        """Take over entries another consumer read but did not acknowledge for a while; every
        ``FORGET_EVERY`` claims, also forget dead consumers with nothing pending (one more
        command per stream: at 1,024 buckets a claim with it cost ~30 ms of CPU, issue #12)."""
        forgetting = self._claims % FORGET_EVERY == 0
        self._claims += 1
        commands: list[tuple[str | int, ...]] = []
        me, idle, count = self.consumer, self._claim_idle(), self._batch
        for stream in self.streams:  # packed by hiredis: redis-py's packer was ~1 ms a bucket
            commands.append(("XAUTOCLAIM", stream, GROUP, me, idle, "0-0", "COUNT", count))
            if forgetting:
                commands.append(("XINFO", "CONSUMERS", stream, GROUP))
        replies = await _send_packed(self._redis, commands)
        step = 2 if forgetting else 1
        entries: list[Entry] = []
        with gc_paused():
            for stream, claimed in zip(self.streams, replies[::step], strict=True):
                entries += _entries([(stream, claimed[1])])
        if forgetting:
            await self._forget(
                [
                    (stream, consumer["name"])
                    for stream, consumers in zip(self.streams, replies[1::2], strict=True)
                    for consumer in map(_as_dict, consumers)
                    if self._forgettable(consumer)
                ]
            )
        if entries:
            log.info("flusher claimed %d entries left by other consumers", len(entries))
        return entries

    async def _forget(self, consumers: list[tuple[str, str]]) -> None:
        """Remove ``(stream, consumer)`` pairs from the group."""
        if consumers:
            async with self._redis.pipeline(transaction=False) as pipe:
                for stream, name in consumers:
                    pipe.xgroup_delconsumer(stream, GROUP, name)
                await pipe.execute()

    def _forgettable(self, consumer: dict[str, Any]) -> bool:
        return (
            consumer["name"] != self.consumer
            and int(consumer["pending"]) == 0
            and int(consumer["idle"]) > _FORGET_CONSUMER_MS
        )

    async def _ack(self, entries: list[Entry]) -> None:
        by_stream: dict[str, list[str]] = {}
        for stream, sid, _ in entries:
            by_stream.setdefault(stream, []).append(sid)
        commands: list[tuple[str, ...]] = [("MULTI",)]
        for stream, ids in by_stream.items():
            commands += [("XACK", stream, GROUP, *ids), ("XDEL", stream, *ids)]
        commands.append(("EXEC",))
        try:
            await _send_packed(self._redis, commands)
        except RedisError as exc:
            # Written but not acknowledged: delivered again later, and written again as a no-op.
            raise RedisStorageError(f"flusher ack: {exc}") from exc


def _entries(reply: Any) -> list[Entry]:
    """XREADGROUP's reply (RESP3: ``{stream: [[id, [field, value, ...] or None], ...]}``;
    RESP2: ``[[stream, [...]], ...]``; None when nothing came) as entries; a deleted entry's
    fields are None."""
    entries: list[Entry] = []
    for stream, items in reply.items() if isinstance(reply, dict) else reply or ():
        for sid, flat in items:
            if flat is None:
                entries.append((stream, sid, None))
            else:
                pairs = iter(flat)
                entries.append((stream, sid, dict(zip(pairs, pairs, strict=False))))
    return entries


def _is_record(entry: Entry) -> bool:
    """Whether a stream entry is a ``record`` (one that does not parse is not)."""
    stream, sid, fields = entry
    if fields is None:
        return False
    try:
        return isinstance(parse(stream, sid, fields), RecordEvent)
    except ValueError:
        return False


def _as_dict(reply: Any) -> dict[str, Any]:
    """A map reply as a dict: RESP3 sends a map, RESP2 a flat ``[key, value, ...]`` list."""
    if isinstance(reply, dict):
        return reply
    pairs = iter(reply)
    return dict(zip(pairs, pairs, strict=False))


async def _send_packed(redis: Redis, commands: Sequence[tuple[str | int, ...]]) -> list[Any]:
    """Send ``commands`` in one write and read their replies, packed by hiredis (C).

    Why not a redis-py pipeline: its pure-Python packer copies its buffer once per argument,
    and an acknowledgement sends each entry id twice (XACK, XDEL): about a tenth of the
    flusher's CPU per event. The connection's own timeouts apply; on any failure it is
    dropped rather than returned to the pool with replies unread. An error reply raises."""
    # hiredis's stub types the argument as a 1-tuple; it takes a tuple of any length.
    payload = b"".join(hiredis.pack_command(c) for c in commands)  # type: ignore[arg-type]
    pool = redis.connection_pool
    conn = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        await conn.send_packed_command(payload)
        replies = await _read_replies(conn, len(commands))
    except BaseException:
        await conn.disconnect()
        raise
    finally:
        await pool.release(conn)
    last = replies[-1] if replies and isinstance(replies[-1], list) else []  # EXEC's replies
    for reply in (*replies, *last):
        if isinstance(reply, Exception):
            raise reply
    return replies


async def _read_replies(conn: Any, count: int) -> list[Any]:
    """``count`` replies from ``conn``, taken from its own hiredis reader (C) in one loop.

    Why: redis-py's ``read_response`` costs ~10 us of Python a reply (its timeout scope, its
    checks), and an acknowledgement sends two commands per stream in the batch: at a few
    thousand events/s a batch spreads over ~200 streams, and reading the ~400 replies one by one
    took 4.7 ms, ~19 us per event. The reader is redis-py's (the parser's ``_reader``, fed by
    its ``read_from_socket``), so no byte is buffered twice; a connection without one (redis-py
    without hiredis) is read reply by reply. Replies decode as ``read_response`` decodes them;
    the connection's socket timeout bounds the whole read."""
    parser: Any = getattr(conn, "_parser", None)
    reader = getattr(parser, "_reader", None)
    if reader is None or not hasattr(parser, "read_from_socket"):
        return [await conn.read_response() for _ in range(count)]
    replies: list[Any] = []
    async with asyncio.timeout(conn.socket_timeout):
        first = reader.gets()
        if first is _NOT_ENOUGH_DATA:
            await parser.read_from_socket()  # the wait (a blocking read's BLOCK): collector on
        else:
            replies.append(first)
        # The rest with the collector paused, awaits included: once the first bytes came, the
        # rest follows at once. The reader builds a reply's objects as its bytes arrive (64 KiB
        # a read), two lists and ~31 strings per stream entry of an XREADGROUP, and the
        # collections those allocations start (finding nothing) cost more than the parse: 6.6
        # us per entry of the memory scenario's reply fed in 64 KiB pieces, 4.3 with the
        # collector paused over all of it (7.0 paused only around each ``gets``: the
        # collections come right after). Bounded by the socket timeout; garbage other tasks
        # make meanwhile is collected after it.
        with gc_paused():
            while len(replies) < count:
                reply = reader.gets()
                if reply is _NOT_ENOUGH_DATA:
                    await parser.read_from_socket()
                else:
                    replies.append(reply)
    return replies


async def stream_lag(redis: Redis, streams: list[str]) -> Lag:
    """How far Postgres is behind: entries left in the streams, and the oldest one's age.

    Redis's clock is read by its own call: a cluster pipeline refuses TIME (no key, no node)."""
    async with redis.pipeline(transaction=False) as pipe:
        for stream in streams:
            pipe.xlen(stream)
            pipe.xrange(stream, count=1)
        replies = await pipe.execute()
    clock, micros = await redis.time()
    now_ms = clock * 1000 + micros // 1000
    events = sum(int(n) for n in replies[0::2])
    firsts = [int(first[0][0].split("-")[0]) for first in replies[1::2] if first]
    seconds = max(now_ms - min(firsts), 0) / 1000 if firsts else 0.0
    return Lag(events, seconds)


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


@dataclass(slots=True)
class FlusherTask:
    """A flusher running in the background of a process, stopped cleanly on ``stop()``."""

    flusher: Flusher
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[int] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self.flusher.run(self._stop), name="flusher")

    async def stop(self, timeout: float = 10.0) -> None:
        """Let the current iteration finish (cancel it after ``timeout``); safe at any point."""
        self._stop.set()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except TimeoutError:
            self._task.cancel()  # safe: an interrupted iteration is redone by the next consumer
        except Exception:
            log.exception("flusher stopped with an error")
