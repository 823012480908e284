"""Who owns an entity (character, scene, persona): the user creator-targeted awards go to.

One record per entity, in the entity's own slot (``ctr:{bE}:entity:<type>:<id>``: owner,
version), written only by ``lua/assign_entity.lua``. A change bumps the version and appends an
``entity_owner`` event with it to the entity's bucket stream in the same atomic step, so Postgres
applies owner changes in version order and names the owner Redis names. Nothing caches an owner:
award scripts read the record (``lua/reserve_creator_award.lua``), so once a transfer answered,
no worker pays the former owner.

Only services record or transfer ownership (``ExpService`` checks the credential; issue #10,
item 6). When Redis has no record (a new entity, or Redis lost it) and a durable store is
configured, the record is restored from Postgres first, with its version (and, through
``after_restore``, who already triggered its once-per-actor actions), then the claim, transfer or
award runs again: a claim never overwrites an owner Postgres knows, and a transfer after a loss
never lets a like be paid twice. Unless the entity's bucket is complete and Redis evicts
nothing: the bucket restore (``persistence/restore.py``) put back every owner and once-per-actor
record of the bucket before marking it, so a missing owner is no owner and a new entity is
claimed with no Postgres read (issue #11).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from counters.clock import Clock
from counters.errors import ConflictError, ScriptReplyError, StorageError
from counters.redis.calls import AssignEntity, AssignEntityKeys
from counters.redis.codes import AssignOutcome, OwnerRestore
from counters.redis.keys import EntityKeys
from counters.redis.scripts import Scripts

_CLAIM_REFUSED = AssignOutcome.CLAIM_REFUSED
_RUN_CHANGED = AssignOutcome.RUN_CHANGED
_NEEDS_OWNER_RESTORE = OwnerRestore.NEEDS_OWNER_RESTORE


@dataclass(frozen=True, slots=True)
class Target:
    type: str
    id: str

    def __str__(self) -> str:
        return f"{self.type}:{self.id}"


@dataclass(frozen=True, slots=True)
class DurableOwner:
    """An owner as Postgres recorded it: the user, and the version of that record; ``run``:
    the incarnation of the entity's bucket it was read for (behind that run's flush barriers,
    ``persistence/recovery.py``), the only one it may be written into ("": any)."""

    owner_id: str
    version: int
    run: str = ""


# Looks an owner up in the durable store when Redis has none (wired by the persistence layer).
DurableOwnerLookup = Callable[[Target], Awaitable[DurableOwner | None]]
# (target, actions, since unix ms) -> (action, actor, owner, ts_ms) of the ledgered awards of
# those actions on the target: who already triggered them (issue #11, wired by persistence).
DurableTriggersLookup = Callable[
    [Target, list[str], int], Awaitable[list[tuple[str, str, str, int]]]
]


class Entities:
    def __init__(
        self,
        scripts: Scripts,
        buckets: int,
        clock: Clock,
        durable_lookup: DurableOwnerLookup | None = None,
        triggers_lookup: DurableTriggersLookup | None = None,
    ) -> None:
        self._scripts = scripts
        self._buckets = buckets
        self._clock = clock
        self._durable_lookup = durable_lookup
        self.triggers_lookup = triggers_lookup
        # Called with the target and the run its owner was read for, after its owner record
        # came back from Postgres (set by the creator awards: puts back its once-per-actor
        # records, written only into that run, issue #11).
        self.after_restore: Callable[[Target, str], Awaitable[None]] | None = None
        # Whether a complete bucket speaks for its entities: only while Redis evicts nothing
        # (maxmemory-policy noeviction; checked by persistence.restore.eviction_safe), or an
        # evicted owner would look like no owner and anyone could claim the entity.
        self.trust_complete = False

    @property
    def may_create(self) -> str:
        """``may_create`` of the entity scripts (``lua/lib/bucket.lua``): "1" with no durable
        store (a missing record is new); "0" when the bucket's completeness decides (the
        restore put back every owner and once-per-actor record Postgres has: issue #11); "2"
        when Redis may evict keys, so a missing record is always looked up in Postgres."""
        if self._durable_lookup is None:
            return "1"
        return "0" if self.trust_complete else "2"

    def keys(self, target: Target) -> EntityKeys:
        return EntityKeys.of(target.type, target.id, self._buckets)

    async def claim(self, target: Target, owner: str) -> None:
        """Record ``owner`` as the creator of a new entity; ``ConflictError`` if somebody else
        owns it (in Redis, or in Postgres when Redis lost the record)."""
        code, _previous = await self._assign_entity(target, owner, "claim")
        if code == _CLAIM_REFUSED:
            raise ConflictError(
                f"{target.type} {target.id} is already owned by another user", code="already_owned"
            )

    async def assign(self, target: Target, owner: str) -> str | None:
        """Make ``owner`` the owner (a transfer, or a service's record); returns the previous."""
        _, previous = await self._assign_entity(target, owner, "assign")
        return previous or None

    async def restore(self, target: Target) -> bool:
        """Put Postgres's owner record back into Redis (unless Redis has one again); False when
        Postgres knows no owner either. Written only into the incarnation of the entity's
        bucket it was read for (``DurableOwner.run``): if Redis lost the bucket again since,
        what was read may miss owner changes the lost incarnation flushed, so it is read
        again. Raises ``StorageError`` when Redis keeps losing the bucket."""
        if self._durable_lookup is None:
            return False
        for _ in range(3):
            found = await self._durable_lookup(target)
            if found is None:
                return False
            if self.after_restore is not None:  # before the owner: no award sees it without them
                await self.after_restore(target, found.run)
            code, _ = await self._run(
                target, found.owner_id, "restore", "1", found.version, found.run
            )
            if code != _RUN_CHANGED:
                return True
        raise StorageError(f"Redis kept losing the bucket of {target} while its owner was read")

    async def _assign_entity(self, target: Target, owner: str, mode: str) -> tuple[int, str]:
        code, previous = await self._run(target, owner, mode, self.may_create, 0)
        if code == _NEEDS_OWNER_RESTORE:
            await self.restore(target)
            code, previous = await self._run(target, owner, mode, "1", 0)
        if code not in AssignOutcome.__members__.values():
            raise ScriptReplyError(f"assign_entity replied with unknown code {code}")
        return code, previous

    def assign_call(
        self, target: Target, owner: str, mode: str, may_create: str, version: int, run: str = ""
    ) -> tuple[AssignEntityKeys, AssignEntity]:
        """assign_entity's typed keys and call making ``owner`` ``target``'s owner (``mode``
        "claim" or "assign"; ``may_create``, ``version`` and ``run`` as the script's header
        describes them), timed by the service clock."""
        keys = self.keys(target)
        ledger = "1" if self._durable_lookup is not None else "0"
        now_ms = int(self._clock.now() * 1000)
        return (
            AssignEntityKeys(entity=keys.owner, events=keys.events, meta=keys.meta),
            AssignEntity(
                owner_id=owner, mode=mode, ledger=ledger, target=str(target),
                may_create=may_create, version=version, now_ms=now_ms, run=run,
            ),
        )  # fmt: skip

    async def _run(
        self, target: Target, owner: str, mode: str, may_create: str, version: int, run: str = ""
    ) -> tuple[int, str]:
        call = self.assign_call(target, owner, mode, may_create, version, run)
        code, previous, _version = await self._scripts.run(*call)
        return int(code), str(previous)
