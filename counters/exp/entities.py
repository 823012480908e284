"""Who owns an entity (character, scene, persona): the user creator-targeted awards go to.

The owner is recorded twice: ``entity:<type>:<id>`` in the entity's own bucket (to look it up),
and an ``owned`` marker in the owner's bucket that award scripts check, so a stale cached owner is
caught inside the same atomic step as the award. Owners are cached in-process for a short time:
a creator-targeted award is then one round trip, like any other.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from counters.errors import ConflictError, StorageError
from counters.redis import keys
from counters.redis.calls import AssignEntity, AssignEntityKeys
from counters.redis.codes import AssignOutcome
from counters.redis.scripts import Scripts


@dataclass(frozen=True, slots=True)
class Target:
    type: str
    id: str

    def __str__(self) -> str:
        return f"{self.type}:{self.id}"


# Looks an owner up in the durable store when Redis has none (wired by the persistence layer).
DurableOwnerLookup = Callable[[Target], Awaitable[str | None]]


class Entities:
    def __init__(
        self,
        redis: Redis,
        scripts: Scripts,
        buckets: int,
        durable_lookup: DurableOwnerLookup | None = None,
        cache_seconds: float = 30.0,
        cache_size: int = 100_000,
    ) -> None:
        self._redis = redis
        self._scripts = scripts
        self._buckets = buckets
        self._durable_lookup = durable_lookup
        self._cache_seconds = cache_seconds
        self._cache_size = cache_size
        self._cache: OrderedDict[Target, tuple[str, float]] = OrderedDict()

    async def owner_of(self, target: Target) -> str | None:
        """The owner of ``target``, or None when nobody owns it."""
        cached = self._cache.get(target)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        # Through the auto-pipeline: the lookup shares the tick's write with other requests'.
        owner = await self._scripts.get(keys.entity_key(target.type, target.id, self._buckets))
        if owner is None and self._durable_lookup is not None:
            owner = await self._durable_lookup(target)
            if owner is not None:
                await self._record(target, owner, previous="")
        if owner is not None:
            self._remember(target, owner)
        return owner

    async def repair_marker(self, target: Target) -> str | None:
        """Forget the cached owner, look it up afresh and make sure its marker is in place."""
        self._cache.pop(target, None)
        owner = await self.owner_of(target)
        if owner is not None:
            await self._set(keys.UserKeys.of(owner, self._buckets).owned(target.type, target.id))
        return owner

    async def claim(self, target: Target, owner: str) -> None:
        """Record ``owner`` as the creator of a new entity; refused if somebody else owns it."""
        code, _previous = await self._assign_entity(target, owner, "claim")
        if code == AssignOutcome.CLAIM_REFUSED:
            raise ConflictError(f"{target.type} {target.id} is already owned by another user")
        self._remember(target, owner)

    async def assign(self, target: Target, owner: str) -> str | None:
        """Make ``owner`` the owner (a transfer, or a service's record); returns the previous."""
        _, previous = await self._assign_entity(target, owner, "assign")
        await self._record(target, owner, previous)
        self._remember(target, owner)
        return previous or None

    async def _assign_entity(self, target: Target, owner: str, mode: str) -> tuple[int, str]:
        """Run assign_entity.lua; with a durable store it also ledgers an owner change."""
        identity = str(target)
        entity = keys.entity_key(target.type, target.id, self._buckets)
        stream = keys.stream_key(keys.bucket_of(identity, self._buckets))
        ledger = "1" if self._durable_lookup is not None else "0"
        code, previous = await self._scripts.run(
            AssignEntityKeys(entity=entity, events=stream),
            AssignEntity(owner_id=owner, mode=mode, ledger=ledger, target=identity),
        )
        return int(code), str(previous)

    async def _record(self, target: Target, owner: str, previous: str) -> None:
        new_marker = keys.UserKeys.of(owner, self._buckets).owned(target.type, target.id)
        try:
            if previous and previous != owner:
                old = keys.UserKeys.of(previous, self._buckets).owned(target.type, target.id)
                await self._redis.delete(old)
            await self._redis.set(keys.entity_key(target.type, target.id, self._buckets), owner)
            await self._redis.set(new_marker, "1")
        except RedisError as exc:
            raise StorageError(f"record owner: {exc}") from exc

    async def _set(self, key: str) -> None:
        try:
            await self._redis.set(key, "1")
        except RedisError as exc:
            raise StorageError(f"record owner: {exc}") from exc

    def _remember(self, target: Target, owner: str) -> None:
        self._cache[target] = (owner, time.monotonic() + self._cache_seconds)
        self._cache.move_to_end(target)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
