"""The hot lane's debit_xp command, packed as RESP bytes from segments built once.

As for awards (``counters.exp.packed``): built as typed Structs (``XpTxKeys``, ``DebitXp``),
turned into a 22-argument tuple and packed by hiredis, a debit's call cost ~4 us of Python;
most of its arguments are the same for every debit of one bucket (the stream, meta and unused
keys), one rules version (the version, max holds, the record TTL) or one generation type.
``DebitCommands`` packs those once per rules version and ``may_create``, and one bytes format
per debit or hold fills in the rest.

The typed call stays the contract: the bytes are exactly what hiredis packs for
``Scripts.command`` of the typed keys and ``XpService.charge_call``'s call
(tests/xp/test_packed_debit.py), and the rare paths (NOSCRIPT recovery, hydration, a cluster)
build it.
"""

from __future__ import annotations

from counters.redis.calls import (
    Arg,
    DebitXp,
    XpTxKeys,
    packed_args,
    packed_head,
    packed_idempotency,
)
from counters.redis.keys import UserKeys, bucket_of, bucket_tag

# debit_xp's command after its head: KEYS then ARGV in the order of XpTxKeys and DebitXp.
_FORMAT = (
    b"%b"  # *<count>, EVALSHA, the SHA, 5
    b"$%d\r\n%b%b\r\n"  # KEYS[1] user: the bucket's prefix and the user id
    b"%b"  # KEYS[2] events
    b"%b"  # KEYS[3] idem: the request's idempotency record, or the bucket's unused key
    b"%b"  # KEYS[4] meta
    b"$%d\r\n%b%b%b%b\r\n"  # KEYS[5] transaction: prefix, user id, separator, transaction id
    b"$%d\r\n%b\r\n"  # ARGV[1] user_id
    b"$%d\r\n%d\r\n"  # ARGV[2] now_ms
    b"%b"  # ARGV[3] fingerprint
    b"%b"  # ARGV[4] idem_ttl
    b"%b"  # ARGV[5] idem_key
    b"$%d\r\n%b\r\n"  # ARGV[6] actor
    b"%b"  # ARGV[7-9] may_create, rules, generation_type
    b"$%d\r\n%b\r\n"  # ARGV[10] transaction_id
    b"%b"  # ARGV[11] mode: "debit" or "hold"
    b"$%d\r\n%d\r\n"  # ARGV[12] hold_expires_at
    b"%b"  # ARGV[13-14] max_holds, record_ttl
)
_KEYS = len(XpTxKeys.__struct_fields__)  # 5
_ARGV = len(DebitXp.__struct_fields__)  # 14
_MODES = {False: packed_args("debit"), True: packed_args("hold")}


class _Bucket:
    """One bucket's packed pieces: key prefixes and the constant keys."""

    __slots__ = ("events", "meta", "transaction", "unused", "user_prefix")

    def __init__(self, tag: str) -> None:
        user = UserKeys("", tag)
        self.user_prefix = user.user.encode()  # "ctr:{bN}:user:" (the user id is empty)
        self.events = packed_args(user.events)
        self.unused = packed_args(user.unused)
        self.meta = packed_args(user.meta)
        # The transaction key around its two ids, as UserKeys.xp_transaction formats it
        prefix, rest = UserKeys("\0", tag).xp_transaction("\1").split("\0")
        middle, suffix = rest.split("\1")
        assert suffix == "", suffix  # the transaction id ends the key
        self.transaction = (prefix.encode(), middle.encode())


class DebitCommands:
    """Packs debit_xp commands (debits and holds) of one rules version and ``may_create``.

    ``head`` is the command's start as ``Scripts.command`` makes it before the keys (EVALSHA,
    the version's SHA, the key count). Bounded: one entry per bucket and generation type seen.
    """

    def __init__(
        self,
        head: tuple[Arg, ...],
        *,
        buckets: int,
        rules_version: str,
        may_create: str,
        idempotency_ttl: int,
        max_holds: int,
        record_ttl: int,
    ) -> None:
        self._head = packed_head(head, _KEYS + _ARGV)
        self._buckets = buckets
        self._rules = (may_create, rules_version)
        self._idem_ttl = packed_args(idempotency_ttl)
        self._tail = packed_args(max_holds, record_ttl)
        self._by_bucket: dict[int, _Bucket] = {}
        self._by_type: dict[str, bytes] = {}

    def pack(
        self,
        user_id: str,
        actor: str,
        generation_type: str,
        transaction_id: str,
        hold: bool,
        now_ms: int,
        hold_expires_at: int,
        idem: tuple[str, str, str] | None,
    ) -> bytes:
        """debit_xp's command for one debit (or hold), as ``XpService.charge_call`` builds it
        with these values; ``idem`` is the request's (record key, fingerprint,
        Idempotency-Key), None without one."""
        encoded = user_id.encode()
        bucket = bucket_of(user_id, self._buckets)
        at = self._by_bucket.get(bucket)
        if at is None:
            at = self._by_bucket[bucket] = _Bucket(bucket_tag(bucket))
        rule = self._by_type.get(generation_type)
        if rule is None:
            rule = self._by_type[generation_type] = packed_args(*self._rules, generation_type)
        record, fingerprint, key = packed_idempotency(at.unused, idem)
        tid = transaction_id.encode()
        by = actor.encode()
        n = len(encoded)
        prefix, middle = at.transaction
        return _FORMAT % (
            self._head,
            len(at.user_prefix) + n, at.user_prefix, encoded,
            at.events, record, at.meta,
            len(prefix) + n + len(middle) + len(tid), prefix, encoded, middle, tid,
            n, encoded,
            len(str(now_ms)), now_ms,
            fingerprint, self._idem_ttl, key,
            len(by), by,
            rule,
            len(tid), tid,
            _MODES[hold],
            len(str(hold_expires_at)), hold_expires_at,
            self._tail,
        )  # fmt: skip
