"""The background restore: Redis holds every bucket completely again after it lost them.

A bucket is complete when its record (``ctr:{bN}:meta``) says so (``lua/lib/bucket.lua``): a
user missing from a complete bucket is new, with no Postgres read, so new users work while
Postgres is down and cost nothing when it is up. Redis loses the record with the bucket, so after
a loss every bucket is incomplete: a user touched then is hydrated alone (one Postgres read,
``persistence/recovery.py``), and this loop refills the rest. For each incomplete bucket it holds
the flush barrier of the bucket's current run (``persistence/runs.py``), hydrates every user
Postgres has in the bucket (``hydrate_user.lua`` skips users Redis already holds), then marks
the bucket complete unless Redis lost it again meanwhile (``complete_bucket.lua``).

Entities too (``EntityRestore``): before a bucket is marked complete, the owner of every entity
of the bucket Postgres knows, and who already triggered its once-per-actor actions, are put
back, so a missing owner in a complete bucket is no owner and a brand-new entity is claimed
with no Postgres read (issue #11). They are read only once every bucket stream was ledgered up
to where it stood when the loss was seen (``persistence/marks.py``): an award on an entity of a
lost bucket may still wait, unflushed, in the stream of a bucket that survived.

Only while Redis evicts nothing (``EvictionCheck``): a complete bucket speaks for its users and
entities while every node reports ``maxmemory-policy noeviction`` (else an evicted user would
come back empty, an evicted owner look claimable), and each marker records its node's
``run_id`` and ``evicted_keys`` when written: a node that evicted a key since (a policy that
evicted, then was switched back) or was restarted since (its count back at 0) has its markers
dropped, and the restore refills those buckets. While a node may evict, the restore waits:
nothing it completed could be trusted.

On an empty ledger (a first start) there is nobody to restore: every bucket is marked complete
at once. Progress is in ``/readyz`` (``restore``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from counters.errors import StorageError
from counters.exp.creator import restore_once_calls
from counters.redis.calls import (
    AssignEntity,
    AssignEntityKeys,
    Call,
    CompleteBucket,
    Keys,
    MetaKey,
    RestoreOnceKeys,
)
from counters.redis.codes import CompleteOutcome
from counters.redis.keys import LAYOUT_FIELD, LAYOUT_KEY, EntityKeys, bucket_of, meta_key
from counters.redis.scripts import Scripts
from counters.rules import ExpRules
from persistence.recovery import PostgresHydrator
from persistence.store import Store

log = logging.getLogger("persistence.restore")

_PARALLEL = 32  # hydrations in flight while a bucket is restored
_BATCH = 256  # buckets opened (runs, barriers) and completed per round trip
_CALLS = 1_024  # entity restore scripts per pipelined round trip


@dataclass(slots=True)
class RestoreProgress:
    """What ``/readyz`` shows: buckets Redis holds completely, users restored, the last error."""

    buckets: int
    complete: int = 0
    users_restored: int = 0
    passes: int = 0
    last_error: str | None = None
    ledger_behind: int = 0  # streams not yet ledgered up to where they stood at the loss

    def as_json(self) -> dict[str, object]:
        body: dict[str, object] = {
            "complete_buckets": self.complete, "buckets": self.buckets,
            "users_restored": self.users_restored,
        }  # fmt: skip
        if self.ledger_behind:
            body["ledger_streams_behind"] = self.ledger_behind
        if self.last_error is not None:
            body["last_error"] = self.last_error
        return body


async def eviction_marks(redis: Redis) -> dict[str, str] | None:
    """Each Redis node's ``<run_id>:<evicted_keys>`` (INFO server and stats: this run of the
    node, and the keys it evicted since it started) by node name ("" for a single Redis); None
    when a node refuses or lacks them. A restart resets ``evicted_keys`` to 0 and makes another
    ``run_id``, so a marker recording the pair tells a restarted node from one that evicted
    nothing. Raises ``RedisError`` when a node does not answer."""
    try:
        if hasattr(redis, "get_primaries"):
            primaries = redis.get_primaries()
            reply: Any = await redis.info("server", "stats", target_nodes=primaries)
            if "evicted_keys" in reply:  # one primary: its reply alone
                reply = {primaries[0].name: reply}
            return {name: _mark(info) for name, info in reply.items()}
        return {"": _mark(await redis.info("server", "stats"))}
    except (ResponseError, KeyError, TypeError, ValueError):
        return None


def _mark(info: dict[str, Any]) -> str:
    return f"{info['run_id']}:{int(info['evicted_keys'])}"


async def eviction_safe(redis: Redis) -> bool:
    """True when every Redis node answers ``maxmemory-policy noeviction``: no key can vanish
    but by a loss (which takes the bucket's ``complete`` with it) or its own TTL. Any other
    policy, or a refused ``CONFIG GET`` (some managed Redis), is False. Raises ``RedisError``
    when a node does not answer."""
    try:
        if hasattr(redis, "get_primaries"):  # a cluster: every primary holds buckets
            reply: Any = await redis.config_get(
                "maxmemory-policy", target_nodes=redis.get_primaries()
            )
        else:
            reply = await redis.config_get("maxmemory-policy")
    except ResponseError:
        return False
    tokens = list(_strings(reply))
    policies = [tokens[i + 1] for i, t in enumerate(tokens[:-1]) if t == "maxmemory-policy"]
    return bool(policies) and all(policy == "noeviction" for policy in policies)


def _strings(reply: Any) -> Iterator[str]:
    """Every string in a reply, in order (lists, maps of node -> reply, pairs flattened)."""
    if isinstance(reply, bytes):
        yield reply.decode(errors="replace")
    elif isinstance(reply, str):
        yield reply
    elif isinstance(reply, dict):
        for key, value in reply.items():
            yield from _strings(key)
            yield from _strings(value)
    elif isinstance(reply, (list, tuple)):
        for item in reply:
            yield from _strings(item)


EntityCalls = list[tuple[Keys, Call]]


class Trusting(Protocol):
    """Told whether a complete bucket speaks for what Redis lacks (``PostgresHydrator`` for
    users, ``Entities`` for owners and once-per-actor records)."""

    trust_complete: bool


class EvictionCheck:
    """The rule by which complete buckets speak for users and entities Redis lacks (issue #11).

    A check reads every node's ``maxmemory-policy``, ``run_id`` and ``evicted_keys`` and every
    bucket's marker (``complete`` and its node's ``<run_id>:<evicted_keys>`` when it was
    written: ``complete_bucket.lua``), drops each marker whose node has evicted a key since or
    was restarted since (a node set to evict, evicting and restarted with its data between two
    checks has its count back at 0, but another ``run_id``), or that records neither (written
    before this rule), then trusts complete buckets only while every node answers
    ``noeviction``. Run by the restore before each pass and by a loop of its own, so requests
    read a flag and pay no round trip."""

    def __init__(
        self, redis: Redis, scripts: Scripts, trusting: list[Trusting], *, buckets: int
    ) -> None:
        self._redis = redis
        self._scripts = scripts
        self._trusting = trusting
        self._buckets = buckets
        self.trusted = False
        # What /readyz reports: None until a check answered; else whether a node may evict keys
        # (a policy other than noeviction, or CONFIG/INFO refused) and so change answers.
        self.may_evict: bool | None = None
        self._counts: dict[str, str] = {}

    def evicted(self, bucket: int) -> str:
        """``<run_id>:<evicted_keys>`` of the node holding ``bucket`` at the last check ("":
        not known; what the restore records in the markers it writes, read before it reads
        Postgres)."""
        return self._counts.get(self._node_of(bucket), "")

    def _node_of(self, bucket: int) -> str:
        if not hasattr(self._redis, "get_node_from_key"):
            return ""
        node = self._redis.get_node_from_key(meta_key(bucket))
        return "" if node is None else str(node.name)

    async def check(self) -> list[int]:
        """Check; returns the buckets not complete now (markers dropped included). Raises
        ``StorageError`` when Redis does not answer (trust is withdrawn first)."""
        for attempt in range(2):  # a pooled connection Redis's restart broke fails once
            try:
                safe = await eviction_safe(self._redis)
                counts = await eviction_marks(self._redis)
                break
            except (RedisError, OSError) as exc:
                if attempt:
                    self._trust(False)
                    raise StorageError(f"Redis did not answer the eviction check: {exc}") from exc
        if counts is None:
            safe = False
        else:
            self._counts = counts
        self.may_evict = not safe
        if not safe:
            log.warning(
                "Redis may evict keys (maxmemory-policy is not noeviction on every node, or"
                " CONFIG/INFO is refused): evicted records can change answers; run noeviction"
            )
        try:
            markers = await self._scripts.send_many(
                [("HMGET", meta_key(b), "complete", "evicted") for b in range(self._buckets)]
            )
        except StorageError:
            self._trust(False)
            raise
        incomplete, stale = [], []
        for bucket, (complete, evicted) in enumerate(markers):
            if complete is None:
                incomplete.append(bucket)
            elif counts is not None and evicted != self.evicted(bucket):
                stale.append(bucket)
        if stale:  # the restore refills them; until then a missing user is hydrated
            log.warning(
                "%d bucket markers dropped: Redis evicted keys or restarted since", len(stale)
            )
            await self._scripts.send_many([("HDEL", meta_key(b), "complete") for b in stale])
        self._trust(safe)
        return sorted(incomplete + stale)

    def _trust(self, trusted: bool) -> None:
        self.trusted = trusted
        for part in self._trusting:
            part.trust_complete = trusted


class EntityRestore:
    """The entities of incomplete buckets, from Postgres: each one's owner (with its version)
    and who already triggered its once-per-actor actions within ``liker_memory_days``.

    Read behind the barriers the restore holds for every incomplete bucket (a like's record is
    in the entity's bucket, its award event in the owner's: ``PostgresHydrator.fence_entity``).
    Written with the scripts the on-demand path uses, which never overwrite what Redis holds:
    an owner or an entry written since the loss is newer."""

    def __init__(self, store: Store, rules_of: Callable[[], ExpRules], *, buckets: int) -> None:
        self._store = store
        self._rules_of = rules_of
        self._buckets = buckets

    async def calls(
        self, runs: dict[int, str], now_ms: int
    ) -> dict[int, tuple[EntityCalls, EntityCalls]]:
        """Per incomplete bucket (``runs``: its run, whose barriers are held), its
        once-per-actor restores and its owner restores (written in that order: no award may see
        an owner without its records), each written only while the bucket is still that run.
        Raises ``StorageError``."""
        found: dict[int, tuple[EntityCalls, EntityCalls]] = {}

        def of(identity: str) -> tuple[EntityKeys, str, tuple[EntityCalls, EntityCalls] | None]:
            entity_type, _, entity_id = identity.partition(":")
            keys = EntityKeys.of(entity_type, entity_id, self._buckets)
            bucket = bucket_of(identity, self._buckets)
            if bucket not in runs:
                return keys, "", None
            return keys, runs[bucket], found.setdefault(bucket, ([], []))

        rules = self._rules_of()
        once = [name for name, action in rules.actions.items() if action.once_per_actor]
        ttl = rules.liker_memory_days * 86_400
        if once:
            triggers: dict[str, list[tuple[str, str, str, int]]] = {}
            since_ms = now_ms - ttl * 1000
            for target, action, actor, owner, ts_ms in await self._store.creator_awards(
                None, once, since_ms
            ):
                triggers.setdefault(target, []).append((action, actor, owner, ts_ms))
            for target, rows in triggers.items():
                keys, run, into = of(target)
                if into is not None:
                    into[0].extend(
                        (RestoreOnceKeys(keys.once(action), keys.meta), call)
                        for action, call in restore_once_calls(rows, ttl, run).items()
                    )
        for entity_type, entity_id, owner, version in await self._store.entity_owners():
            target = f"{entity_type}:{entity_id}"
            keys, run, into = of(target)
            if into is not None:
                restore = AssignEntity(
                    owner_id=owner, mode="restore", ledger="0", target=target, may_create="1",
                    version=version, now_ms=now_ms, run=run,
                )  # fmt: skip
                into[1].append((AssignEntityKeys(keys.owner, keys.events, keys.meta), restore))
        return found


class BucketRestore:
    """Refills incomplete buckets from Postgres: ``restore_once`` is one idempotent pass."""

    def __init__(
        self,
        hydrator: PostgresHydrator,
        store: Store,
        scripts: Scripts,
        *,
        buckets: int,
        entities: EntityRestore | None = None,
        eviction: EvictionCheck | None = None,
    ) -> None:
        self._hydrator = hydrator
        self._store = store
        self._scripts = scripts
        self._buckets = buckets
        self._entities = entities
        self._eviction = eviction
        self.progress = RestoreProgress(buckets)

    @property
    def eviction(self) -> EvictionCheck | None:
        """The eviction rule this restore obeys (None: not checked)."""
        return self._eviction

    async def restore_once(self) -> int:
        """Restore every incomplete bucket; returns how many are still incomplete (lost again
        while being restored, or left while Redis may evict: ``EvictionCheck``). Raises
        ``StorageError`` when Redis or Postgres fails."""
        eviction = self._eviction
        pending = await (self.incomplete_buckets() if eviction is None else eviction.check())
        incomplete: dict[int, str] = dict.fromkeys(pending, "")
        self.progress.complete = self._buckets - len(incomplete)
        if not incomplete:
            return 0
        # Redis lost buckets, so maybe the deployment's bucket count too: record it again, or
        # the next start would depend on Postgres answering (counters/runtime/layout.py).
        await self._scripts.send_many([("HSETNX", LAYOUT_KEY, LAYOUT_FIELD, str(self._buckets))])
        if eviction is not None and not eviction.trusted:
            return len(incomplete)  # a marker written now could not be trusted: wait
        await self._store.forget_expired_records(int(self._hydrator.now() * 1000))
        # runs read first: the barrier of each (after a loss: every bucket, in batches), then
        # the one read
        incomplete.update(await self._hydrator.open_all(list(incomplete)))
        users: dict[int, list[str]] = {bucket: [] for bucket in incomplete}
        for user_id in await self._store.user_ids():
            found = users.get(bucket_of(user_id, self._buckets))
            if found is not None:
                found.append(user_id)
        entities = {}
        if self._entities is not None:
            # awards on their entities still unflushed in streams that survived: ledgered first
            await self._hydrator.ledger.reach(incomplete, self._store.write_timeout, self._behind)
            now_ms = int(self._hydrator.now() * 1000)
            entities = await self._entities.calls(incomplete, now_ms)
        evicted = eviction.evicted if eviction is not None else lambda _: ""
        left = 0
        ordered = sorted(incomplete.items())
        for first in range(0, len(ordered), _BATCH):  # hydrate a batch's users, then complete it
            batch = ordered[first : first + _BATCH]
            for part in (0, 1):  # every once-per-actor record of the batch, then the owners
                await self._run_all([c for b, _ in batch for c in entities.get(b, ([], []))[part]])
            for bucket, _ in batch:
                ids = users[bucket]
                for start in range(0, len(ids), _PARALLEL):
                    chunk = ids[start : start + _PARALLEL]
                    await asyncio.gather(*(self._hydrator.hydrate(uid) for uid in chunk))
                    self.progress.users_restored += len(chunk)
            replies = await self._scripts.run_many(
                [
                    (MetaKey(meta_key(b)), CompleteBucket(run=run, evicted=evicted(b)))
                    for b, run in batch
                ]
            )
            for reply in replies:
                if isinstance(reply, StorageError):
                    raise reply
                if reply[0] == CompleteOutcome.COMPLETED:
                    self.progress.complete += 1
                else:
                    left += 1
        self.progress.passes += 1
        return left

    def _behind(self, streams: int) -> None:
        self.progress.ledger_behind = streams

    async def _run_all(self, calls: EntityCalls) -> None:
        """Run ``calls``, ``_CALLS`` per pipelined round trip; raises the first failure."""
        for start in range(0, len(calls), _CALLS):
            for reply in await self._scripts.run_many(calls[start : start + _CALLS]):
                if isinstance(reply, StorageError):
                    raise reply

    async def incomplete_buckets(self) -> list[int]:
        """The buckets Redis does not hold completely (``PostgresHydrator.incomplete_buckets``).
        Raises ``StorageError``."""
        return await self._hydrator.incomplete_buckets()

    async def check_eviction(self) -> None:
        """One ``EvictionCheck.check`` (the loop's step). Raises ``StorageError``."""
        if self._eviction is not None:
            await self._eviction.check()

    async def watch_eviction(self, stop: asyncio.Event, interval: float) -> None:
        """``EvictionCheck.check`` every ``interval`` seconds until ``stop``, whether or not
        Postgres is up (``run`` starts only once the schema is applied): a process started
        while Postgres is down still lets complete buckets speak for users and entities, and
        a node that evicted loses its markers."""
        while not stop.is_set() and self._eviction is not None:
            try:
                await self.check_eviction()
            except StorageError as exc:
                log.warning("eviction check failed (%s)", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    async def run(self, stop: asyncio.Event, interval: float) -> None:
        """Pass after pass until ``stop``; a failure (Redis or Postgres down) waits a pass."""
        while not stop.is_set():
            try:
                await self.restore_once()
                self.progress.last_error = None
            except StorageError as exc:
                self.progress.last_error = str(exc)
                log.warning("bucket restore failed (%s); retrying in %.1fs", exc, interval)
            except Exception as exc:  # a bug: keep serving, keep trying, loudly
                self.progress.last_error = str(exc)
                log.exception("bucket restore failed unexpectedly")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
