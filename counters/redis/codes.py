"""Every reply code of every Lua script, in one place.

A script replies with a fixed-shape array whose first element is a code. Each code family below
is the set of codes one script (or the scripts sharing a library) answers; the family of each
script is ``Call.codes`` in ``counters/redis/calls.py``. Each script's header lists its codes, one
a line, as ``code <n> <name>`` with ``<name>`` the member's lower-cased name;
``tests/redis/test_lua_contract.py`` compares the two, so a header and its enum cannot drift.

Codes 6 and 7 mean the same in every script that touches a user, so each has its own family.
"""

from __future__ import annotations

from enum import IntEnum


class Hydration(IntEnum):
    """The user is missing from Redis and must be hydrated first (counters/redis/hydration.py)."""

    NEEDS_HYDRATION = 6


class KeyReuse(IntEnum):
    """The Idempotency-Key was used before with a different request (lua/lib/idempotency.lua)."""

    KEY_REUSED = 7


class AwardOutcome(IntEnum):
    """The outcomes a caller of ``POST /api/exp/gain`` sees (stored in idempotency records)."""

    AWARDED = 1
    LIMIT_REACHED = 2
    CAP_REACHED = 3
    ALREADY_TRIGGERED = 4


class AwardApplied(IntEnum):
    """What ``award_exp`` did in the receiving user's slot (same values as ``AwardOutcome``;
    a repeated once-per-actor action is refused in the entity's slot, by
    ``reserve_creator_award``)."""

    AWARDED = 1
    LIMIT_REACHED = 2
    CAP_REACHED = 3


class OwnerRestore(IntEnum):
    """The entity's owner record is missing from Redis and a durable store is configured:
    restore it from Postgres (``Entities.restore``), then call again."""

    NEEDS_OWNER_RESTORE = 8


class ReserveOutcome(IntEnum):
    """Step B of a creator-targeted award (``reserve_creator_award``, the entity's slot)."""

    RESERVED = 1
    ALREADY_TRIGGERED = 4
    PENDING = 9
    NO_OWNER = 10
    OWN_ENTITY = 11


class CreatorChain(IntEnum):
    """``creator_award`` (a whole creator award in one script) left this request to the chain
    B, C, D, with nothing written (counters/exp/creator.py)."""

    CHAIN = 12


class SettleOutcome(IntEnum):
    """Step D (``settle_creator_award``): the reservation of that request id done or released."""

    NOT_SETTLED = 0
    SETTLED = 1


class RecallOutcome(IntEnum):
    """Step A (``recall_request``): no answer recorded yet (else the stored ``AwardOutcome``)."""

    NO_RECORD = 0


class RememberOutcome(IntEnum):
    """Step E (``remember_request``): the answer is recorded."""

    REMEMBERED = 1


class AdjustOutcome(IntEnum):
    ADJUSTED = 1


class ReadOutcome(IntEnum):
    READ = 1


class XpOutcome(IntEnum):
    """Reply codes of the XP scripts (``lua/lib/xp_state.lua``; 6 and 7 as above)."""

    DONE = 1
    INSUFFICIENT = 2
    TIER_REQUIRED = 3
    NOT_FOUND = 4
    ALREADY_SETTLED = 5
    HOLD_EXPIRED = 8
    ABOVE_HELD = 9
    NOT_CAPTURED = 10
    NO_SUBSCRIPTION = 11
    UNCHANGED = 12
    TOO_MANY = 13
    PERIOD_START_CONFLICT = 14


class ImportSkip(IntEnum):
    """``import_user`` left a subscription line out: the user already has an active one."""

    SUBSCRIPTION_ACTIVE = 15


class AssignOutcome(IntEnum):
    """What ``assign_entity`` did with an entity's owner."""

    RECORDED = 1
    CLAIM_REFUSED = 2
    RUN_CHANGED = 3  # a restore for another run of the bucket than Redis's: nothing written


class WriteIfOutcome(IntEnum):
    """``repair_user`` writes only if the user is as expected."""

    SKIPPED = 0
    WRITTEN = 1


class HydrateOutcome(IntEnum):
    """``hydrate_user`` writes only if the user is missing and the bucket's run is as expected."""

    SKIPPED = 0
    WRITTEN = 1
    RUN_CHANGED = 2  # Redis lost the bucket again since the flush barrier: barrier and retry


class BucketOutcome(IntEnum):
    """``open_bucket``: the bucket's run and whether it is complete follow."""

    OPEN = 1


class CompleteOutcome(IntEnum):
    """``complete_bucket``."""

    COMPLETED = 1
    RUN_CHANGED = 2  # the run is not the one restored: nothing written


class RestoreOnceOutcome(IntEnum):
    """``restore_once``: how many entries were written follows."""

    RESTORED = 1
    RUN_CHANGED = 2  # the bucket's run is not the one restored: nothing written


class MarkOutcome(IntEnum):
    """``stream_mark``: an entry id follows (persistence/marks.py)."""

    MARKED = 1  # the stream's newest id, its mark ("": empty)
    REACHED = 2  # every entry up to the mark was ledgered (and deleted)
    BEHIND = 3  # the oldest entry at or before the mark is still there
