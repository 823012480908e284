"""The hot lane's award_exp command, packed as RESP bytes from segments built once a day.

An award to oneself (``daily_chat``, ``create_*`` without a target) is the hot lane's one
script call. Built as typed Structs (``AwardExpKeys``, ``AwardExp``: counters/redis/calls.py),
turned into a 26-argument tuple and packed by hiredis, it cost ~4 us of a request's ~19 in
process (``python -m bench.hot_split``: "call built" ~2.5 us, hiredis's pack ~1.6 us). Most of
those arguments are the same for every award of a UTC day in one bucket (the stream, meta and
board keys, the unused record key) or of one action (its name, reward and limit, the rules
version, the day): ``AwardCommands`` packs them once, per rules version, day and
``may_create``, and one bytes format per award fills in the rest (the user's two keys and id,
the TTLs and the time, the request's record, fingerprint and key).

The typed call stays the contract: the bytes are exactly what hiredis packs for
``Scripts.command`` of ``ExpService.award_call``'s keys and call
(tests/exp/test_packed_award.py compares them for awards with and without keys, boards on and
off, every action), and the rare paths (NOSCRIPT recovery, hydration, a cluster) build it.
"""

from __future__ import annotations

from collections.abc import Callable

from counters.redis.calls import (
    Arg,
    AwardExp,
    AwardExpKeys,
    CreatorAward,
    CreatorAwardKeys,
    packed_args,
    packed_head,
    packed_idempotency,
)
from counters.redis.keys import UserKeys, bucket_tag

# award_exp's command, after the constant head (EVALSHA, SHA, numkeys): KEYS then ARGV in
# the order of AwardExpKeys and AwardExp, one placeholder group per argument (%b for a
# segment packed already, $%d ... for one packed here).
_FORMAT = (
    b"%b"  # *<count>, EVALSHA, the SHA, 8
    b"$%d\r\n%b%b\r\n"  # KEYS[1] user: the bucket's prefix and the user id
    b"$%d\r\n%b%b\r\n"  # KEYS[2] today: the bucket's and day's prefix and the user id
    b"%b"  # KEYS[3] events
    b"%b"  # KEYS[4] record: the request's idempotency record, or the bucket's unused key
    b"%b"  # KEYS[5-8] day, week and all-time boards, meta
    b"$%d\r\n%b\r\n"  # ARGV[1] user_id
    b"%b"  # ARGV[2-6] action, reward, daily_limit, rules, day
    b"$%d\r\n%d\r\n"  # ARGV[7] day_ttl
    b"$%d\r\n%d\r\n"  # ARGV[8] now_ms
    b"%b"  # ARGV[9] fingerprint
    b"%b"  # ARGV[10] idem_ttl
    b"$%d\r\n%b\r\n"  # ARGV[11] actor (the user: an award to oneself)
    b"%b"  # ARGV[12-13] may_create, target ("": none)
    b"%b"  # ARGV[14] idem_key
    b"$%d\r\n%d\r\n"  # ARGV[15] week_ttl
)
_KEYS = len(AwardExpKeys.__struct_fields__)  # 8
_ARGV = len(AwardExp.__struct_fields__)  # 15


class _Bucket:
    """One bucket's packed pieces for one day: key prefixes and the constant keys."""

    __slots__ = ("boards_meta", "day_prefix", "events", "unused", "user_prefix")

    def __init__(self, user: UserKeys, day: str, boards: tuple[str, str, str]) -> None:
        self.user_prefix = user.user.encode()  # "ctr:{bN}:user:" (the user id is empty)
        self.day_prefix = user.day(day).encode()  # "ctr:{bN}:day:YYYYMMDD:"
        self.events = packed_args(user.events)
        self.unused = packed_args(user.unused)
        self.boards_meta = packed_args(*boards, user.meta)


class _Segments:
    """What both packers keep: a day's pieces per bucket and an action's rule segment."""

    def __init__(
        self, day: str, rules_version: str, boards: Callable[[UserKeys], tuple[str, str, str]]
    ) -> None:
        self._day = day
        self._rules_day = packed_args(rules_version, day)
        self._boards = boards
        self._by_bucket: dict[int, _Bucket] = {}
        self._by_action: dict[tuple[str, int, int], bytes] = {}

    def _bucket(self, bucket: int) -> _Bucket:
        at = self._by_bucket.get(bucket)
        if at is None:
            user = UserKeys("", bucket_tag(bucket))
            at = self._by_bucket[bucket] = _Bucket(user, self._day, self._boards(user))
        return at

    def _rule(self, action: str, reward: int, daily_limit: int) -> bytes:
        """ARGV action, reward, daily_limit, rules, day, packed."""
        rule = self._by_action.get((action, reward, daily_limit))
        if rule is None:
            rule = packed_args(action, reward, daily_limit) + self._rules_day
            self._by_action[(action, reward, daily_limit)] = rule
        return rule


class AwardCommands(_Segments):
    """Packs award_exp commands of one rules version, UTC day and ``may_create``.

    ``head`` is the command's start as ``Scripts.command`` makes it before the keys (EVALSHA,
    the version's SHA, the key count); ``boards`` gives a user's (day, week, all-time) board
    keys (the bucket's unused key thrice when leaderboards are off). Bounded: one entry per
    bucket (``buckets``) and per (action, reward, limit) seen.
    """

    def __init__(
        self,
        head: tuple[Arg, ...],
        *,
        day: str,
        rules_version: str,
        may_create: str,
        idempotency_ttl: int,
        boards: Callable[[UserKeys], tuple[str, str, str]],
    ) -> None:
        super().__init__(day, rules_version, boards)
        self._head = packed_head(head, _KEYS + _ARGV)
        self._idem_ttl = packed_args(idempotency_ttl)
        self._may_create = packed_args(may_create, "")  # and the target: none on this path

    def pack(
        self,
        user_id: bytes,
        bucket: int,
        action: str,
        reward: int,
        daily_limit: int,
        day_ttl: int,
        now_ms: int,
        week_ttl: int,
        idem: tuple[str, str, str] | None,
    ) -> bytes:
        """award_exp's command paying ``user_id`` (UTF-8, in ``bucket``) for ``action``, as
        ``ExpService.award_call`` builds it with no target; ``idem`` is the request's (record
        key, fingerprint, Idempotency-Key), None without one."""
        at = self._bucket(bucket)
        rule = self._rule(action, reward, daily_limit)
        record, fingerprint, key = packed_idempotency(at.unused, idem)
        n = len(user_id)
        return _FORMAT % (
            self._head,
            len(at.user_prefix) + n, at.user_prefix, user_id,
            len(at.day_prefix) + n, at.day_prefix, user_id,
            at.events, record, at.boards_meta,
            n, user_id,
            rule,
            len(str(day_ttl)), day_ttl,
            len(str(now_ms)), now_ms,
            fingerprint, self._idem_ttl,
            n, user_id,
            self._may_create, key,
            len(str(week_ttl)), week_ttl,
        )  # fmt: skip


# creator_award's command (lua/creator_award.lua): award_exp's KEYS and ARGV for the owner,
# with the actor and the target, then the entity's two keys and three more ARGV.
_CREATOR_FORMAT = (
    b"%b"  # *<count>, FCALL (or EVALSHA), the function (or SHA), 10
    b"$%d\r\n%b%b\r\n"  # KEYS[1] user: the owner's
    b"$%d\r\n%b%b\r\n"  # KEYS[2] today: the owner's
    b"%b"  # KEYS[3] events
    b"%b"  # KEYS[4] record: the bucket's unused key (no Idempotency-Key on this path)
    b"%b"  # KEYS[5-8] day, week and all-time boards, meta
    b"$%d\r\n%b\r\n"  # KEYS[9] entity: its owner record
    b"$%d\r\n%b\r\n"  # KEYS[10] once: its once-per-actor HASH, or its unused key
    b"$%d\r\n%b\r\n"  # ARGV[1] user_id: the owner
    b"%b"  # ARGV[2-6] action, reward, daily_limit, rules, day
    b"$%d\r\n%d\r\n"  # ARGV[7] day_ttl
    b"$%d\r\n%d\r\n"  # ARGV[8] now_ms
    b"%b"  # ARGV[9-10] fingerprint (""), idem_ttl
    b"$%d\r\n%b\r\n"  # ARGV[11] actor
    b"%b"  # ARGV[12] may_create
    b"$%d\r\n%b\r\n"  # ARGV[13] target
    b"%b"  # ARGV[14] idem_key ("")
    b"$%d\r\n%d\r\n"  # ARGV[15] week_ttl
    b"%b"  # ARGV[16] mode
    b"$%d\r\n%b\r\n"  # ARGV[17] rid
    b"%b"  # ARGV[18] once_ttl
)
_CREATOR_KEYS = len(CreatorAwardKeys.__struct_fields__)  # 10
_CREATOR_ARGV = len(CreatorAward.__struct_fields__)  # 18


class CreatorCommands(_Segments):
    """Packs creator_award commands (the one-script creator award, counters/exp/creator.py)
    of one rules version, UTC day and ``may_create``, as ``AwardCommands`` packs award_exp's:
    the bytes hiredis packs for ``Scripts.command`` of the typed ``CreatorAward`` call
    (tests/exp/test_packed_award.py). Bounded as ``AwardCommands``."""

    def __init__(
        self,
        head: tuple[Arg, ...],
        *,
        day: str,
        rules_version: str,
        may_create: str,
        idempotency_ttl: int,
        once_ttl: int,
        boards: Callable[[UserKeys], tuple[str, str, str]],
    ) -> None:
        super().__init__(day, rules_version, boards)
        self._head = packed_head(head, _CREATOR_KEYS + _CREATOR_ARGV)
        self._no_fingerprint = packed_args("", idempotency_ttl)
        self._may_create = packed_args(may_create)
        self._no_key = packed_args("")
        self._modes = {True: packed_args("once"), False: packed_args("plain")}
        self._once_ttl = packed_args(once_ttl)

    def pack(
        self,
        owner: bytes,
        bucket: int,
        action: str,
        reward: int,
        daily_limit: int,
        day_ttl: int,
        now_ms: int,
        week_ttl: int,
        actor: bytes,
        target: bytes,
        entity: bytes,
        once: bytes | None,
        unused: bytes,
        rid: bytes,
    ) -> bytes:
        """creator_award's command paying ``owner`` (UTF-8, in ``bucket``) for ``actor``'s
        ``action`` on ``target`` ("type:id"); ``entity`` its owner record key, ``once`` its
        once-per-actor HASH (None: the action is not once per actor, ``unused`` goes there)."""
        at = self._bucket(bucket)
        rule = self._rule(action, reward, daily_limit)
        n = len(owner)
        once_key = unused if once is None else once
        return _CREATOR_FORMAT % (
            self._head,
            len(at.user_prefix) + n, at.user_prefix, owner,
            len(at.day_prefix) + n, at.day_prefix, owner,
            at.events, at.unused, at.boards_meta,
            len(entity), entity,
            len(once_key), once_key,
            n, owner,
            rule,
            len(str(day_ttl)), day_ttl,
            len(str(now_ms)), now_ms,
            self._no_fingerprint,
            len(actor), actor,
            self._may_create,
            len(target), target,
            self._no_key,
            len(str(week_ttl)), week_ttl,
            self._modes[once is not None],
            len(rid), rid,
            self._once_ttl,
        )  # fmt: skip
