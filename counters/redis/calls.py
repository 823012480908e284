"""One typed call per Lua script: its KEYS and its ARGV as named fields, in the header's order.

A script call is two Structs: a ``Keys`` (the script's ``KEYS[1..n]``) and a ``Call`` (its
``ARGV[1..m]``), each with its fields in exactly the order of the script's header, so nothing
builds a call by position. ``Call.SCRIPT`` names the file in ``lua/``, ``Call.KEYS`` the type of
its keys, and ``Call.CODES`` the families of reply codes it answers (``counters/redis/codes.py``).
``tests/redis/test_lua_contract.py`` reads every header and compares it with these fields and
codes, so a header and its call cannot drift apart.

A script that requires the compiled rules (``lua/lib/award.lua``, ``lua/lib/xp_state.lua``,
``lua/adjust_exp.lua``: counters/rules/compiled.py) takes a ``rules`` field, the rules version
the call was built with: ``Scripts`` sends the call to that version's script, which refuses any
other version.

XP scripts share their first three KEYS and eight ARGV (``lua/lib/xp_state.lua``): their calls
extend ``XpCall`` (and ``XpTxKeys`` when they take a transaction record), as the headers do.

Structs, not dataclasses: an award builds one of each per request on the hot path, and
``msgspec.structs.astuple`` turns one into the command's arguments in C.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum
from typing import ClassVar, cast

import hiredis
import msgspec

from counters.redis.codes import (
    AdjustOutcome,
    AssignOutcome,
    AwardApplied,
    AwardOutcome,
    BucketOutcome,
    ClaimOutcome,
    CompleteOutcome,
    CreatorChain,
    HydrateOutcome,
    Hydration,
    ImportSkip,
    KeyReuse,
    MarkOutcome,
    OwnerRestore,
    ReadOutcome,
    ReleaseOutcome,
    RememberOutcome,
    ReserveOutcome,
    RestoreOnceOutcome,
    SettleOutcome,
    WriteIfOutcome,
    XpOutcome,
)

Arg = str | int | float

_astuple = msgspec.structs.astuple


class Keys(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """A script's KEYS, in order (each key's shape is in the script's header)."""


class Call(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """A script's ARGV, in order; the class names the script, its KEYS and its reply codes."""

    SCRIPT: ClassVar[str]
    KEYS: ClassVar[type[Keys]]
    CODES: ClassVar[tuple[type[IntEnum], ...]]


def command_args(keys: Keys, call: Call) -> tuple[Arg, ...]:
    """``numkeys key... arg...``: what EVAL and EVALSHA take after the script."""
    key_values = _astuple(keys)
    return (len(key_values), *key_values, *_astuple(call))


# -- packed commands (the hot lane) ---------------------------------------------------------------


def bulk(value: bytes) -> bytes:
    """``value`` as one RESP bulk string, ``$<length>\r\n<value>\r\n``: one argument of a
    command packed by hand (``AutoPipeline.submit_packed``)."""
    return b"$%d\r\n%b\r\n" % (len(value), value)


def packed_args(*args: Arg | bytes) -> bytes:
    """``args`` as consecutive RESP bulk strings, exactly as hiredis packs them in a command
    (str as UTF-8, numbers in decimal), without the command's ``*<count>`` header."""
    packed = _pack(args)
    return packed[packed.index(b"\r\n") + 2 :]


def packed_head(head: tuple[Arg, ...], arguments: int) -> bytes:
    """A packed command's start: ``*<count>`` for ``head`` (what ``Scripts.command`` puts
    before the keys: EVALSHA and the SHA, or FCALL and the function, then the key count) and
    ``arguments`` more, then ``head`` packed."""
    return b"*%d\r\n%b" % (len(head) + arguments, packed_args(*head))


_EMPTY = bulk(b"")


def packed_idempotency(
    unused: bytes, idem: tuple[str, str, str] | None
) -> tuple[bytes, bytes, bytes]:
    """The packed (record key, fingerprint, Idempotency-Key) arguments of a write: the
    request's, or without a key the bucket's ``unused`` key (packed) and two empty strings, as
    the typed calls send them."""
    if idem is None:
        return unused, _EMPTY, _EMPTY
    record, fingerprint, key = idem
    return bulk(record.encode()), bulk(fingerprint.encode()), bulk(key.encode())


_pack = cast(Callable[[tuple[Arg | bytes, ...]], bytes], hiredis.pack_command)


# -- keys -------------------------------------------------------------------------------------


class UserKey(Keys, frozen=True):
    user: str


class UserDayKeys(Keys, frozen=True):
    user: str
    today: str
    meta: str  # the bucket's record (run, complete): keys.UserKeys.meta


class UserWriteKeys(Keys, frozen=True):
    """The keys of a write to one user: totals, the bucket's ledger stream, the idempotency
    record (or an unused key), the bucket's record (run, complete)."""

    user: str
    events: str
    idem: str
    meta: str


class XpTxKeys(UserWriteKeys, frozen=True):
    transaction: str


class ImportUserKeys(UserWriteKeys, frozen=True):
    imports: str


class AwardExpKeys(Keys, frozen=True):
    """``record``: the request's idempotency record (an award to oneself) or its request id's
    at-most-once record (a creator-targeted award), in the receiving user's slot."""

    user: str
    today: str
    events: str
    record: str
    day_board: str
    week_board: str
    all_board: str
    meta: str


class CreatorAwardKeys(AwardExpKeys, frozen=True):
    """award_exp's keys (the owner's), then the entity's owner record and its once-per-actor
    HASH (or an unused key): one script on one node (lua/creator_award.lua)."""

    entity: str
    once: str


class AssignEntityKeys(Keys, frozen=True):
    entity: str
    events: str
    meta: str  # the entity's bucket's record: its run goes on the owner event


class ReserveKeys(Keys, frozen=True):
    """The entity's owner record, and its once-per-actor HASH or keyed request STRING."""

    entity: str
    record: str
    meta: str  # the entity's bucket's record: is it complete (a missing owner means none)?


class OnceKey(Keys, frozen=True):
    once: str


class RestoreOnceKeys(Keys, frozen=True):
    """An entity's once-per-actor HASH, and its bucket's record (the run restored for)."""

    once: str
    meta: str


class IdemKey(Keys, frozen=True):
    idem: str


class MetaKey(Keys, frozen=True):
    meta: str


class StreamKey(Keys, frozen=True):
    events: str


class ClaimKeys(Keys, frozen=True):
    idem: str
    user: str
    meta: str


class RememberKeys(Keys, frozen=True):
    idem: str
    events: str
    meta: str


class RecordKeys(Keys, frozen=True):
    record: str
    meta: str


# -- EXP ----------------------------------------------------------------------------------------


class AwardExp(Call, frozen=True):
    SCRIPT: ClassVar[str] = "award_exp"
    KEYS: ClassVar[type[Keys]] = AwardExpKeys
    CODES: ClassVar[tuple[type[IntEnum], ...]] = (AwardApplied, Hydration, KeyReuse)

    user_id: str
    action: str
    reward: int
    daily_limit: int
    rules: str
    day: str
    day_ttl: int
    now_ms: int
    fingerprint: str
    idem_ttl: int
    actor: str
    may_create: str
    target: str
    idem_key: str
    week_ttl: int


class CreatorAward(AwardExp, frozen=True):
    """award_exp's ARGV, then how the entity's once-per-actor record is kept."""

    SCRIPT = "creator_award"
    KEYS = CreatorAwardKeys
    CODES = (AwardOutcome, Hydration, KeyReuse, CreatorChain)

    mode: str
    rid: str
    once_ttl: int


class AdjustExp(Call, frozen=True):
    SCRIPT = "adjust_exp"
    KEYS = UserWriteKeys
    CODES = (AdjustOutcome, Hydration, KeyReuse)

    user_id: str
    delta: int
    reason: str
    rules: str
    now_ms: int
    fingerprint: str
    idem_ttl: int
    actor: str
    may_create: str
    idem_key: str


class ReadExp(Call, frozen=True):
    SCRIPT = "read_exp"
    KEYS = UserDayKeys
    CODES = (ReadOutcome, Hydration)

    may_create: str


class AssignEntity(Call, frozen=True):
    SCRIPT = "assign_entity"
    KEYS = AssignEntityKeys
    CODES = (AssignOutcome, OwnerRestore)

    owner_id: str
    mode: str
    ledger: str
    target: str
    may_create: str
    version: int
    now_ms: int
    run: str = ""  # "restore" mode: write only while the bucket's run is this ("": always)


# -- a creator-targeted award's steps (counters/exp/creator.py) ---------------------------------


class ClaimRequest(Call, frozen=True):
    """Claim an Idempotency-Key for a request of several scripts (lua/claim_request.lua)."""

    SCRIPT = "claim_request"
    KEYS = ClaimKeys
    CODES = (ClaimOutcome, AwardOutcome, Hydration, KeyReuse)

    fingerprint: str
    may_create: str
    idem_ttl: int
    claim: str  # "pending", or a reply (json) recorded at once


class ReleaseRequest(Call, frozen=True):
    """Free a pending claim whose request failed before applying anything."""

    SCRIPT = "release_request"
    KEYS = IdemKey
    CODES = (ReleaseOutcome,)

    fingerprint: str


class ReserveCreatorAward(Call, frozen=True):
    SCRIPT = "reserve_creator_award"
    KEYS = ReserveKeys
    CODES = (ReserveOutcome, OwnerRestore)

    actor: str
    rid: str
    fingerprint: str
    mode: str
    now_ms: int
    stale_ms: int
    once_ttl: int
    may_create: str


class SettleCreatorAward(Call, frozen=True):
    SCRIPT = "settle_creator_award"
    KEYS = OnceKey
    CODES = (SettleOutcome,)

    actor: str
    rid: str
    outcome: str
    once_ttl: int


class RememberRequest(Call, frozen=True):
    SCRIPT = "remember_request"
    KEYS = RememberKeys
    CODES = (RememberOutcome,)

    fingerprint: str
    idem_ttl: int
    reply: str
    ledger: str
    scope: str
    now_ms: int


# -- users put back or repaired -----------------------------------------------------------------


class HydrateUserKeys(Keys, frozen=True):
    user: str
    today: str
    day_board: str
    week_board: str
    all_board: str
    meta: str


class HydrateUser(Call, frozen=True):
    SCRIPT = "hydrate_user"
    KEYS = HydrateUserKeys
    CODES = (HydrateOutcome,)

    exp: int
    level: int
    seq: int
    xp_state: str
    day_ttl: int
    day_fields: str
    week_ttl: int
    board_exp: str
    user_id: str
    run: str


class RepairUser(Call, frozen=True):
    SCRIPT = "repair_user"
    KEYS = UserKey
    CODES = (WriteIfOutcome,)

    expected_seq: int
    exp: int
    level: int
    seq: int
    xp_state: str


# -- XP -----------------------------------------------------------------------------------------


class XpCall(Call, frozen=True):
    """The ARGV every XP script starts with (``lua/lib/xp_state.lua``)."""

    KEYS: ClassVar[type[Keys]] = UserWriteKeys
    CODES: ClassVar[tuple[type[IntEnum], ...]] = (XpOutcome, Hydration, KeyReuse)

    user_id: str
    now_ms: int
    fingerprint: str
    idem_ttl: int
    idem_key: str
    actor: str
    may_create: str
    rules: str


class ReadXp(XpCall, frozen=True):
    SCRIPT = "read_xp"


class CancelSubscription(XpCall, frozen=True):
    SCRIPT = "cancel_subscription"


class SetSubscription(XpCall, frozen=True):
    SCRIPT = "set_subscription"

    tier: str
    period_start: int


class GrantXp(XpCall, frozen=True):
    SCRIPT = "grant_xp"

    grant_id: str
    xp_amount: int
    expires_at: int
    reason: str
    max_grants: int


class DebitXp(XpCall, frozen=True):
    SCRIPT = "debit_xp"
    KEYS = XpTxKeys

    generation_type: str
    transaction_id: str
    mode: str
    hold_expires_at: int
    max_holds: int
    record_ttl: int


class CaptureHold(XpCall, frozen=True):
    SCRIPT = "capture_hold"
    KEYS = XpTxKeys

    hold_id: str
    xp_amount: int
    record_ttl: int


class ReleaseHold(XpCall, frozen=True):
    SCRIPT = "release_hold"
    KEYS = XpTxKeys

    hold_id: str


class RefundXp(XpCall, frozen=True):
    SCRIPT = "refund_xp"
    KEYS = XpTxKeys

    transaction_id: str


class ImportUser(XpCall, frozen=True):
    """One line of ``counters import`` (counters/bulkimport/)."""

    SCRIPT = "import_user"
    KEYS = ImportUserKeys
    CODES = (XpOutcome, Hydration, KeyReuse, ImportSkip)

    op: str
    amount: int
    tier: str
    at: int
    max_grants: int
    reason: str


class OpenBucket(Call, frozen=True):
    """The bucket's run (made if missing) and whether Redis holds it completely."""

    SCRIPT = "open_bucket"
    KEYS = MetaKey
    CODES = (BucketOutcome,)


class CompleteBucket(Call, frozen=True):
    """Mark the bucket complete, if Redis did not lose it since ``run`` was read; ``evicted``
    is its node's ``<run_id>:<evicted_keys>`` read before the restore read Postgres."""

    SCRIPT = "complete_bucket"
    KEYS = MetaKey
    CODES = (CompleteOutcome,)

    run: str
    evicted: str = ""


class RestoreRecord(Call, frozen=True):
    """Put back a record the ledger kept (lib/records.lua) unless Redis holds a newer one."""

    SCRIPT = "restore_record"
    KEYS = RecordKeys
    CODES = (HydrateOutcome,)

    value: str
    ttl_ms: int
    run: str


class RestoreOnce(Call, frozen=True):
    """Put back once-per-actor entries the ledger knows (as done) unless Redis has the actor."""

    SCRIPT = "restore_once"
    KEYS = RestoreOnceKeys
    CODES = (RestoreOnceOutcome,)

    entries: str
    once_ttl: int
    run: str = ""  # write only while the entity's bucket's run is this ("": always)


class StreamMark(Call, frozen=True):
    """A bucket stream's mark (``mark`` ""), or whether the flusher ledgered every entry up to
    ``mark`` (persistence/marks.py)."""

    SCRIPT = "stream_mark"
    KEYS = StreamKey
    CODES = (MarkOutcome,)

    mark: str = ""


CALLS: tuple[type[Call], ...] = (
    AwardExp, CreatorAward, AdjustExp, ReadExp, AssignEntity, ClaimRequest, ReserveCreatorAward,
    SettleCreatorAward, RememberRequest, ReleaseRequest, HydrateUser, RepairUser, ReadXp,
    CancelSubscription, SetSubscription, GrantXp, DebitXp, CaptureHold, ReleaseHold, RefundXp,
    ImportUser, OpenBucket, CompleteBucket, RestoreRecord, RestoreOnce,
    StreamMark,
)  # fmt: skip
"""Every script's call type: one per file in ``lua/`` (the contract test checks both ways)."""
