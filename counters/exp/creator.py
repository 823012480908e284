"""Creator-targeted awards (a like, a fork): one request, three identities, exact.

The actor's, the entity's and the owner's records each live in their own slot (issue #10), so
the award is a short protocol of single-slot scripts (valid on Redis Cluster), each exact on its
own and the whole exact under retries, races and a crash between any two steps:

    A  actor slot   claim_request.lua             claim the key (a keyed request answered
                                                  before: replay it; another request's: 422)
    B  entity slot  reserve_creator_award.lua     read the owner; once-per-actor: reserve the
                                                  actor as pending under request id rid
    C  owner slot   award_exp.lua                 apply at most once per rid (its record there)
    D  entity slot  settle_creator_award.lua      reservation done (awarded) or released (refused)
    E  actor slot   remember_request.lua          a keyed request's answer, with whom it paid
                                                  (it replaces the claim)

rid is ``request_digest(caller, actor, Idempotency-Key)`` for a keyed request (its retries carry
the same rid), a random one otherwise. Round trips: 3 for an unkeyed like (B, C, D), 4 for a keyed
one (A, B, C, then D and E together); an award to oneself stays one (counters/exp/service.py).

A keyed request holds its key from A on: A records a pending claim with the request's
fingerprint in the actor's slot, atomically, so of two requests racing with one key and
different bodies (two entities, or a like and a ``daily_chat``) one runs and the other is 422,
while either is pending or done. Another attempt of the same request (a client's retry while
the first still runs, or after it crashed) joins the claim and runs the chain too: B, C and D
are at most once per rid, so it completes the first attempt's award instead of waiting for it
(a 409 would leave a crashed attempt's key stuck until it expired). A request that fails before
it applied anything (no owner, one's own entity) releases its claim.

The one-script shortcut: an unkeyed award whose entity's and owner's keys are on one Redis node
(no Cluster, or one slot) runs B, C and D as one script, lua/creator_award.lua: one round trip.
The owner it pays is the one an earlier answer named for the entity (a bounded in-process hint),
or on one node, the first time this process sees the entity, the one a plain HGET just read
(two round trips, against the chain's three scripts: a fifth of row 2's likes and forks);
the script reads the owner in the same atomic step, answers a repeat that paid this same owner
(already triggered, as B would), and leaves anything else (a transfer, an unknown entity, a
repeat pending or paid to another owner, a user to hydrate) to the chain with nothing written,
so the answer and the state are the chain's (tests/exp/test_creator_shortcut.py runs both and
compares).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec

from counters.errors import ConflictError, NotFound, ScriptReplyError, StorageError
from counters.exp.entities import Entities, Target
from counters.exp.stats import count_award
from counters.exp.types import AwardCall, AwardResult
from counters.ids import random_hex
from counters.redis.calls import (
    ClaimKeys,
    ClaimRequest,
    CreatorAward,
    CreatorAwardKeys,
    IdemKey,
    OnceKey,
    ReleaseRequest,
    RememberKeys,
    RememberRequest,
    ReserveCreatorAward,
    ReserveKeys,
    RestoreOnce,
    RestoreOnceKeys,
    SettleCreatorAward,
)
from counters.redis.codes import (
    AwardOutcome,
    ClaimOutcome,
    CreatorChain,
    Hydration,
    OwnerRestore,
    ReserveOutcome,
)
from counters.redis.idempotency import Idempotency, reject_reused_key
from counters.redis.keys import EntityKeys, UserKeys, request_digest
from counters.redis.pipelining import RedisRefusal
from counters.redis.scripts import Scripts
from counters.rules import Action

if TYPE_CHECKING:
    from counters.exp.service import ExpService

_RESERVED, _ALREADY, _PENDING = (
    ReserveOutcome.RESERVED,
    ReserveOutcome.ALREADY_TRIGGERED,
    ReserveOutcome.PENDING,
)
_NO_OWNER, _OWN = ReserveOutcome.NO_OWNER, ReserveOutcome.OWN_ENTITY
_NEEDS_OWNER_RESTORE = OwnerRestore.NEEDS_OWNER_RESTORE
_CLAIMED = ClaimOutcome.CLAIMED, ClaimOutcome.JOINED  # run the request (else: its answer)
_UNKEYED = "-"  # the fingerprint of an unkeyed request's rid record: C still records it
_ROUNDS = 4  # B answers "pending" at most once: completed, the entry is done (then B answers
# already triggered) or refused (then this request answers that refusal); this bounds the loop
_CHAIN = CreatorChain.CHAIN
_astuple = msgspec.structs.astuple
_NEEDS_HYDRATION = Hydration.NEEDS_HYDRATION
_OWNER_HINTS = 65_536  # entities whose last seen owner is kept (then the hints start over)


class _Award(NamedTuple):
    """What one creator award is about: who acted, which action, on which entity."""

    actor: str
    action_name: str
    action: Action
    target: Target


class CreatorAwards:
    """Runs creator-targeted awards for ``ExpService`` (which builds and decodes award calls)."""

    def __init__(
        self,
        exp: ExpService,
        scripts: Scripts,
        entities: Entities,
        buckets: int,
        idempotency_ttl: int,
        *,
        shortcut: bool = True,
    ) -> None:
        self._exp = exp
        self._scripts = scripts
        self._entities = entities
        self._buckets = buckets
        self._idempotency_ttl = idempotency_ttl
        # entity "<type>:<id>" -> the owner B last reserved for: whom the one-script shortcut
        # expects (a hint only: lua/creator_award.lua checks it atomically). Off: the chain only.
        self._owners: dict[str, str] | None = {} if shortcut else None
        # Whenever an owner record comes back from Postgres (a like, a fork, a claim or a
        # transfer after a Redis loss), who already triggered the entity's once-per-actor
        # actions comes back with it, before anything else writes the entity.
        entities.after_restore = self._restore_once

    async def award(
        self, actor: str, action_name: str, action: Action, target: Target, idem: Idempotency | None
    ) -> AwardResult:
        """Pay ``target``'s owner for ``actor``'s action; refused outcomes are results, and
        ``NotFound`` (no owner), ``ConflictError`` (one's own entity) and
        ``IdempotencyMismatch`` (the key is another request's, answered or still running) are
        raised."""
        award = _Award(actor, action_name, action, target)
        if idem is None:
            if self._owners is not None:
                shortcut = await self._shortcut(award)
                if shortcut is not None:
                    return shortcut
            result, settle = await self._reserve_and_pay(award, random_hex(16), _UNKEYED, "")
            await settle  # D
            return result
        asked_ms = int(self._exp.clock.now() * 1000)  # kept in the record (remember_request)
        acting = UserKeys.of(actor, self._buckets)
        record = acting.idempotency(idem.caller, idem.key)
        claim = ClaimRequest(
            idem.fingerprint, self._exp.may_create, self._idempotency_ttl, "pending"
        )
        # A (after a loss, the actor's records first)
        stored = await self._exp.run_hydrated(
            actor, ClaimKeys(record, acting.user, acting.meta), claim
        )
        reject_reused_key(int(stored[0]))
        if stored[0] not in _CLAIMED:
            call = self._call(award, str(stored[9]), "", "")
            return self._exp.award_result(call, [int(n) for n in stored[:9]])
        rid = request_digest(idem.caller, actor, idem.key)
        try:
            result, settle = await self._reserve_and_pay(award, rid, idem.fingerprint, idem.key)
        except (NotFound, ConflictError):  # B refused: nothing reserved or paid for rid
            with contextlib.suppress(StorageError):  # kept: the key stays this request's
                await self._scripts.run(IdemKey(record), ReleaseRequest(idem.fingerprint))
            raise
        reply = [
            int(result.outcome), result.exp_added, result.total_exp, result.level,
            result.previous_level, result.daily_exp_gained, result.action_count, 0, asked_ms,
            result.awarded_to,
        ]  # fmt: skip
        remember = RememberRequest(
            idem.fingerprint, self._idempotency_ttl, json.dumps(reply),
            ledger="0" if self._exp.may_create == "1" else "1", scope=actor,
            now_ms=int(self._exp.clock.now() * 1000),
        )  # fmt: skip
        keys = RememberKeys(record, acting.events, acting.meta)
        await asyncio.gather(settle, self._scripts.run(keys, remember))  # D, E
        return result

    async def _shortcut(self, award: _Award) -> AwardResult | None:
        """The unkeyed award in one script (lua/creator_award.lua) when the entity's owner is
        hinted and its keys share a node with the entity's; None: run the chain instead."""
        assert self._owners is not None
        keys = self._entities.keys(award.target)
        owner = self._owners.get(keys.identity)  # str(award.target), already formatted
        if owner is None and self._scripts.one_node:
            # No hint yet: read the owner (a plain HGET, cheaper than the chain's three
            # scripts and round trips); the script checks it again, atomically
            owner = await self._scripts.hget(keys.owner, "owner")
            if owner is not None:
                self._learn_owner(award.target, owner)
        if owner is None or owner == award.actor:
            return None
        user = None  # the owner's keys: built only where used (on one node, only to recover)
        if not self._scripts.one_node:
            user = UserKeys.of(owner, self._buckets)
            if user.tag != keys.tag:
                return None
        rid = random_hex(16)
        send = self._scripts.send_packed
        if send is None:  # the pool: the typed call
            user = user or UserKeys.of(owner, self._buckets)
            reply = await self._scripts.run(*self._shortcut_call(award, owner, user, keys, rid))
        else:  # the auto-pipeline: the same command packed from the day's segments
            try:
                reply = await send(
                    self._exp.packed_creator(
                        owner, award.actor, award.action_name, award.action, award.target, rid,
                        self._once_ttl, keys,
                    )
                )  # fmt: skip
            except RedisRefusal as exc:  # NOSCRIPT (a restarted Redis): the typed call's recovery
                self._exp.forget_packers()  # built again from the typed command as it is now
                user = user or UserKeys.of(owner, self._buckets)
                script_keys, call = self._shortcut_call(award, owner, user, keys, rid)
                command = self._scripts.command(script_keys, call)
                reply = await self._scripts.refused(call, command, exc)
        if reply[0] == _CHAIN or reply[0] == _NEEDS_HYDRATION:
            return None
        return self._exp.result_of(
            award.action_name, award.action, owner, award.actor, award.target, reply
        )

    def _shortcut_call(
        self, award: _Award, owner: str, user: UserKeys, keys: EntityKeys, rid: str
    ) -> tuple[CreatorAwardKeys, CreatorAward]:
        """creator_award's typed keys and call (``ExpService.packed_creator`` packs the same)."""
        once = award.action.once_per_actor
        base = self._exp.award_call(
            award.action_name, award.action, owner, award.actor, award.target, user.unused,
            "", "", user,
        )  # fmt: skip
        # award_exp's call and keys, extended (positional: the fields of AwardExp, AwardExpKeys
        # first; tests/redis/test_lua_contract.py checks the header lays them out the same)
        argv = (*_astuple(base.call), "once" if once else "plain", rid, self._once_ttl)
        call = CreatorAward(*argv)
        once_key = keys.once(award.action_name) if once else keys.unused
        return CreatorAwardKeys(*(*_astuple(base.keys), keys.owner, once_key)), call

    def _learn_owner(self, target: Target, owner: str) -> None:
        """Keep ``owner`` as the hint for ``target`` (bounded: all hints go when full)."""
        owners = self._owners
        if owners is None:
            return
        if len(owners) >= _OWNER_HINTS:
            owners.clear()
        owners[str(target)] = owner

    async def _reserve_and_pay(
        self, award: _Award, rid: str, fingerprint: str, idem_key: str
    ) -> tuple[AwardResult, Coroutine[Any, Any, None]]:
        """B, then C: the owner's result, and D to await."""
        keys = self._entities.keys(award.target)
        if award.action.once_per_actor:
            mode, record = "once", keys.once(award.action_name)
        elif idem_key:
            mode, record = "keyed", keys.request(rid)
        else:
            mode, record = "plain", keys.unused
        may_create = self._entities.may_create
        started_ms = int(self._exp.clock.now() * 1000)
        for _ in range(_ROUNDS):
            reserve = ReserveCreatorAward(
                actor=award.actor, rid=rid, fingerprint=fingerprint, mode=mode,
                now_ms=int(self._exp.clock.now() * 1000),
                stale_ms=self._idempotency_ttl * 1000, once_ttl=self._once_ttl,
                may_create=may_create,
            )  # fmt: skip
            reply = await self._scripts.run(
                ReserveKeys(entity=keys.owner, record=record, meta=keys.meta), reserve
            )
            code, owner, got_rid, got_fp = reply[:4]
            owner, code = str(owner), int(code)
            if code == _NEEDS_OWNER_RESTORE:
                if not await self._entities.restore(award.target):  # with its once-records
                    break
                may_create = "1"
            elif code == _NO_OWNER:
                break
            elif code == _OWN:
                kind = award.target.type
                raise ConflictError(
                    f"{award.action_name} on your own {kind} awards nothing", code="self_action"
                )
            elif code == _ALREADY:
                refused = self._call(award, owner, "", "")
                reply = [_ALREADY, 0, 0, 1, 1, 0, 0, 0, 0]
                return self._exp.award_result(refused, reply), _done()
            elif code == _PENDING:  # another request of this actor: finish it first
                competing, settle = await self._pay(award, owner, str(got_rid), str(got_fp), "")
                await settle
                if competing.outcome is not AwardOutcome.AWARDED and _refusal_holds(
                    owner, reply, started_ms
                ):
                    # Refused (the owner's daily limit or cap) and released: this request, of
                    # the same actor and action, meets the same refusal when the entity still
                    # has that owner (B pays the owner now: not the one the entry was reserved
                    # for before a transfer) and the refusal was decided while this request ran
                    # (the entry was reserved after it started, so its C ran after that too: a
                    # refusal stored earlier may be stale, from yesterday, before a reload or
                    # before the owner's level-up raised the cap). Asking B again could meet
                    # yet another competitor's fresh pending entry every round (released
                    # entries are reserved again), and a burst of repeats at the limit ran out
                    # of rounds: 503 with nothing down. An entry reserved before this request
                    # started is completed and B asked again, so every round after the first
                    # ends in a payment (then 409), this request's own reservation, or this.
                    # This request's answer, counted as one (as a held refusal is): C's run
                    # counted the competitor's, whichever request ran it
                    competing = msgspec.structs.replace(competing, replayed=False)
                    count_award(award.action, competing)
                    return competing, _done()
            elif code == _RESERVED:
                self._learn_owner(award.target, owner)
                return await self._pay(award, owner, str(got_rid), str(got_fp), idem_key)
            else:
                raise ScriptReplyError(f"reserve_creator_award replied with unknown code {code}")
        else:
            raise ScriptReplyError(f"{award.target} stayed reserved by other requests")
        target = award.target
        raise NotFound(f"Unknown {target.type} {target.id}: no owner is recorded")

    async def _pay(
        self, award: _Award, owner: str, rid: str, fingerprint: str, idem_key: str
    ) -> tuple[AwardResult, Coroutine[Any, Any, None]]:
        """C: pay ``owner`` at most once for ``rid``; and D, to await, settling the reservation.

        An ``IdempotencyMismatch`` from C means rid's record holds another request (the key was
        reused with a different body): the reservation stays, and whoever completes it replays
        the recorded award."""
        result = await self._exp.run_award(self._call(award, owner, rid, fingerprint, idem_key))
        return result, self._settle(award, rid, result)

    async def _settle(self, award: _Award, rid: str, result: AwardResult) -> None:
        """D: the reservation is done when EXP was awarded, released when refused."""
        if not award.action.once_per_actor:
            return
        outcome = "done" if result.outcome is AwardOutcome.AWARDED else "release"
        once = self._entities.keys(award.target).once(award.action_name)
        settle = SettleCreatorAward(
            actor=award.actor, rid=rid, outcome=outcome, once_ttl=self._once_ttl
        )
        await self._scripts.run(OnceKey(once), settle)

    def _call(
        self, award: _Award, owner: str, rid: str, fingerprint: str, idem_key: str = ""
    ) -> AwardCall:
        """award_exp paying ``owner``, under rid's at-most-once record in the owner's slot."""
        user = UserKeys.of(owner, self._buckets)
        record = user.award_record(rid) if rid else user.unused
        return self._exp.award_call(
            award.action_name, award.action, owner, award.actor, award.target, record,
            fingerprint, idem_key,
        )  # fmt: skip

    async def _restore_once(self, target: Target, run: str) -> None:
        """Redis lost the entity's records: put back who already triggered its once-per-actor
        actions (from the ledger, as done) before the first award after the loss; only into
        ``run``, the incarnation of the entity's bucket they were read for ("": any)."""
        lookup = self._entities.triggers_lookup
        once = [name for name, a in self._exp.rules.actions.items() if a.once_per_actor]
        if lookup is None or not once:
            return
        since = int(self._exp.clock.now() * 1000) - self._once_ttl * 1000
        keys = self._entities.keys(target)
        await asyncio.gather(
            *(
                self._scripts.run(RestoreOnceKeys(keys.once(action), keys.meta), call)
                for action, call in restore_once_calls(
                    await lookup(target, once, since), self._once_ttl, run
                ).items()
            )
        )

    @property
    def _once_ttl(self) -> int:
        return self._exp.rules.liker_memory_days * 86_400


def restore_once_calls(
    triggers: list[tuple[str, str, str, int]], once_ttl: int, run: str = ""
) -> dict[str, RestoreOnce]:
    """The ``restore_once.lua`` call of each action, from ledgered ``(action, actor, owner,
    ts_ms)`` of one entity: each actor's entry as "done" (the ledger holds only paid awards),
    its hash kept ``once_ttl`` seconds; with a ``run``, written only while the entity's bucket
    is still that incarnation."""
    entries: dict[str, list[list[str]]] = {}
    for action, actor, owner, ts_ms in triggers:
        entry = {"state": "done", "rid": "", "owner": owner, "fp": "", "ts": ts_ms}
        entries.setdefault(action, []).append([actor, json.dumps(entry)])
    return {
        action: RestoreOnce(json.dumps(found), once_ttl, run) for action, found in entries.items()
    }


def _refusal_holds(owner: str, reply: list[Any], started_ms: int) -> bool:
    """Whether a competitor's refusal (B's pending ``reply``: its entry's owner, then the
    entity's owner now and the entry's ts, Unix ms) is this request's answer too: the same
    owner, and the entry reserved at or after ``started_ms`` (this request's first B), so C
    decided it while this request ran (linearizable: this request takes effect just after)."""
    if len(reply) < 6 or str(reply[4]) != owner:
        return False
    return int(reply[5]) >= started_ms


async def _done() -> None:
    """Nothing to settle."""
