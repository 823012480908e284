"""Every Redis key name, built here and nowhere else.

Each user belongs to one of ``buckets`` buckets (crc32 of the id), and so does each entity (crc32
of ``<type>:<id>``). All keys of one identity, and the event stream of its bucket, carry the
bucket's hash tag ``{bN}``, so every script touches one Cluster slot and runs unchanged on Redis
Cluster. The bucket count is fixed for the life of a deployment (changing it moves every key):
recorded by its first start in ``ctr:layout`` and Postgres (counters/runtime/layout.py).

A record belongs to the identity it describes (issue #10): a request's idempotency record to the
acting user, an award's at-most-once record to the user it pays, an entity's owner and its
once-per-actor records to the entity. Ids may contain ``:``; a key built from two of them
(caller and Idempotency-Key) hashes them, length-prefixed, so no two pairs share a key.

What rebuilds each record after a Redis loss (issue #11; README "What survives a Redis loss"):
users and days by hydration (``user_totals``, today's ledger rows); idempotency, award and XP
transaction records from ``redis_records`` (``lua/lib/records.lua``), with their user; an owner
from its ``entity_owner`` events (owner, version); a once-per-actor entry ("done") from
``creator_awards`` (the first ledgered award per target, action and actor), with its owner.

    ctr:{bN}:user:<uid>                 HASH    exp, level, seq, xp (the XP state, JSON), ...
                                                (every write sets seq: no seq, no user)
    ctr:{bN}:day:<YYYYMMDD>:<uid>       HASH    exp gained and a:<action> counts that UTC day
    ctr:{bN}:idem:<digest>              STRING  "<fingerprint>|<reply json>" of an idempotent
                                                request; digest = request_digest(caller, uid, key)
                                                of the ACTING user uid (a service's own key:
                                                uid = the caller), kept idempotency_ttl; while
                                                a keyed creator award runs, its claim
                                                "<fingerprint>|pending:<attempts>"
    ctr:{bN}:award:<rid>                STRING  "<fingerprint>|<reply json>": the creator award
                                                with request id rid, applied to this (receiving)
                                                user at most once; kept idempotency_ttl
    ctr:{bN}:events                     STREAM  the ledger events of the bucket's users and
                                                entities (entity_owner events carry a version)
    ctr:{bN}:meta                       HASH    run (this Redis incarnation of the bucket, on
                                                every user event), complete (present: a user
                                                missing from the bucket is new): lua/lib/bucket.lua
    ctr:{bN}:xptx:<uid>:<txid>          STRING  an XP debit or hold (JSON), kept for refunds
    ctr:{bE}:entity:<type>:<id>         HASH    owner (user id), version (int, +1 per change):
                                                in the entity's own bucket, changed only by
                                                lua/assign_entity.lua
    ctr:{bE}:request:<rid>              STRING  the owner a keyed creator award that is not once per
                                                actor chose (its retries pay the same), idem TTL
    ctr:{bE}:once:<action>:<type>:<id>  HASH    actor -> JSON {"state": "pending"|"done", "rid",
                                                "owner", "fp", "ts"}: who triggered a
                                                once-per-actor action on the entity (whoever owns
                                                it), kept liker_memory_days after the last write
    ctr:{bN}:board:<period>             ZSET    EXP the bucket's users earned in a period
                                                (day:<YYYYMMDD>, week:<YYYY>W<ww>, all)
    ctr:{bN}:board_ok:<period>          STRING  the board above is complete w.r.t. the ledger
    ctr:layout                          HASH    key_buckets: the deployment's bucket count (no
                                                bucket tag: one key, read once at start)
"""

from __future__ import annotations

import functools
import hashlib
import zlib
from dataclasses import dataclass

import msgspec

PREFIX = "ctr"
LAYOUT_KEY = f"{PREFIX}:layout"  # the deployment's recorded bucket count (issue #12)
LAYOUT_FIELD = "key_buckets"  # ... in this field of that hash
SERVED_TIERS_KEY = f"{PREFIX}:tiers"  # SET: every tier name the deployment served (reload.py)
FLUSH_LEASE_KEY = f"{PREFIX}:flush:lease"  # which flusher flushes (persistence/flusher.py)
# HASH: Functions library name -> unix ms a process last loaded it (counters/redis/scripts.py,
# "Retiring libraries")
LIBRARIES_KEY = f"{PREFIX}:libraries"


def bucket_of(identity: str, buckets: int) -> int:
    """The bucket an identity (user id, or ``type:id`` of an entity) hashes to."""
    return zlib.crc32(identity.encode()) % buckets


@functools.cache  # a few thousand buckets at most; formatted once each
def bucket_tag(bucket: int) -> str:
    return f"{PREFIX}:{{b{bucket}}}"


def stream_key(bucket: int) -> str:
    """The event stream of one bucket."""
    return f"{bucket_tag(bucket)}:events"


def meta_key(bucket: int) -> str:
    """The bucket's own record: its run and whether Redis holds it completely."""
    return f"{bucket_tag(bucket)}:meta"


def bucket_of_key(key: str) -> int:
    """The bucket of any key built here (``ctr:{bN}:...``); ValueError for another key."""
    start = key.index("{b") + 2
    return int(key[start : key.index("}", start)])


class UserKeys(msgspec.Struct, frozen=True, gc=False):
    """The keys of one user; every one shares the user's hash tag (a Struct: built on every
    request, several times cheaper than a frozen dataclass)."""

    user_id: str
    tag: str

    @classmethod
    def of(cls, user_id: str, buckets: int) -> UserKeys:
        return cls(user_id, bucket_tag(bucket_of(user_id, buckets)))

    @property
    def user(self) -> str:
        return f"{self.tag}:user:{self.user_id}"

    def day(self, day: str) -> str:
        return f"{self.tag}:day:{day}:{self.user_id}"

    @property
    def events(self) -> str:
        return f"{self.tag}:events"

    @property
    def meta(self) -> str:
        """The bucket's record (run, complete), in the user's slot."""
        return f"{self.tag}:meta"

    def idempotency(self, caller: str, key: str) -> str:
        """The record of ``caller``'s request with Idempotency-Key ``key`` acting as this user."""
        return f"{self.tag}:idem:{request_digest(caller, self.user_id, key)}"

    def award_record(self, request_id: str) -> str:
        """The at-most-once record of creator award ``request_id`` paid to this user."""
        return f"{self.tag}:award:{request_id}"

    @property
    def imports(self) -> str:
        """SET of the import ids applied to this user (``counters import``); never expires."""
        return f"{self.tag}:imports:{self.user_id}"

    def xp_transaction(self, transaction_id: str) -> str:
        """An XP debit or hold of this user: what it burned, and whether it was refunded."""
        return f"{self.tag}:xptx:{self.user_id}:{transaction_id}"

    def board(self, period: str) -> str:
        """The leaderboard of the user's bucket for ``period`` (``day:20261121``, ...)."""
        return _board(self.tag, period)

    @property
    def unused(self) -> str:
        """Fills a KEYS slot a script will not touch on this call (keeps KEYS fixed-shape)."""
        return f"{self.tag}:unused"


@dataclass(frozen=True, slots=True)
class EntityKeys:
    """The keys of one entity (``<type>:<id>``); every one shares the entity's hash tag."""

    identity: str  # "<type>:<id>": neither part contains ":" (counters/ids.py)
    tag: str

    @classmethod
    def of(cls, target_type: str, target_id: str, buckets: int) -> EntityKeys:
        identity = f"{target_type}:{target_id}"
        return cls(identity, bucket_tag(bucket_of(identity, buckets)))

    @property
    def owner(self) -> str:
        """HASH owner, version: who owns the entity."""
        return f"{self.tag}:entity:{self.identity}"

    def once(self, action: str) -> str:
        """HASH actor -> JSON: who already triggered once-per-actor ``action`` on the entity."""
        return f"{self.tag}:once:{action}:{self.identity}"

    def request(self, request_id: str) -> str:
        """STRING: the owner keyed creator award ``request_id`` pays (not once-per-actor)."""
        return f"{self.tag}:request:{request_id}"

    @property
    def events(self) -> str:
        return f"{self.tag}:events"

    @property
    def meta(self) -> str:
        """The entity's bucket's record (run, complete), in the entity's slot."""
        return f"{self.tag}:meta"

    @property
    def unused(self) -> str:
        return f"{self.tag}:unused"


def request_digest(caller: str, acting_user: str, key: str) -> str:
    """A fixed-size name for (caller, acting user, Idempotency-Key): each part length-prefixed,
    so ``("a:b", "c")`` and ``("a", "b:c")`` never meet. Also the request id (rid) of a keyed
    creator award: its retries carry the same rid to every slot they touch."""
    parts = (caller, acting_user, key)
    raw = b"".join(len(p.encode()).to_bytes(4, "big") + p.encode() for p in parts)
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


def board_keys(bucket: int, period: str) -> tuple[str, str]:
    """One bucket's leaderboard for ``period`` and its completeness marker (one hash tag)."""
    tag = bucket_tag(bucket)
    return _board(tag, period), f"{tag}:board_ok:{period}"


def _board(tag: str, period: str) -> str:
    return f"{tag}:board:{period}"
