"""Every Redis key name, built here and nowhere else.

Each user belongs to one of ``buckets`` buckets (crc32 of the id). All keys of one user, and the
event stream of the user's bucket, carry the bucket's hash tag ``{bN}``, so every script touches
one Cluster slot and runs unchanged on Redis Cluster. The bucket count is fixed for the life of
a deployment (changing it moves every key).

    ctr:{bN}:user:<uid>                 HASH    exp, level, seq, xp (the XP state, JSON), ...
                                                (every write sets seq: no seq, no user)
    ctr:{bN}:day:<YYYYMMDD>:<uid>       HASH    exp gained and a:<action> counts that UTC day
    ctr:{bN}:idem:<caller>:<key>        STRING  fingerprint and reply of an idempotent write
    ctr:{bN}:events                     STREAM  the ledger events of the bucket's users
    ctr:{bN}:owned:<type>:<id>          STRING  present while the bucket's user owns the entity
    ctr:{bN}:likers:<type>:<id>         SET     actors who already triggered a once-per-actor award
    ctr:{bN}:xptx:<uid>:<txid>          STRING  an XP debit or hold (JSON), kept for refunds
    ctr:{bE}:entity:<type>:<id>         STRING  owner id, in the entity's own bucket
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

PREFIX = "ctr"


def bucket_of(identity: str, buckets: int) -> int:
    """The bucket an identity (user id, or ``type:id`` of an entity) hashes to."""
    return zlib.crc32(identity.encode()) % buckets


def bucket_tag(bucket: int) -> str:
    return f"{PREFIX}:{{b{bucket}}}"


def stream_key(bucket: int) -> str:
    """The event stream of one bucket."""
    return f"{bucket_tag(bucket)}:events"


@dataclass(frozen=True, slots=True)
class UserKeys:
    """The keys of one user; every one shares the user's hash tag."""

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

    def idempotency(self, caller: str, key: str) -> str:
        return f"{self.tag}:idem:{caller}:{key}"

    def owned(self, target_type: str, target_id: str) -> str:
        return f"{self.tag}:owned:{target_type}:{target_id}"

    def likers(self, target_type: str, target_id: str) -> str:
        return f"{self.tag}:likers:{target_type}:{target_id}"

    @property
    def imports(self) -> str:
        """SET of the import ids applied to this user (``counters import``); never expires."""
        return f"{self.tag}:imports:{self.user_id}"

    def xp_transaction(self, transaction_id: str) -> str:
        """An XP debit or hold of this user: what it burned, and whether it was refunded."""
        return f"{self.tag}:xptx:{self.user_id}:{transaction_id}"

    @property
    def unused(self) -> str:
        """Fills a KEYS slot a script will not touch on this call (keeps KEYS fixed-shape)."""
        return f"{self.tag}:unused"


def entity_key(target_type: str, target_id: str, buckets: int) -> str:
    """Where the owner of an entity is looked up, in the entity's own bucket."""
    identity = f"{target_type}:{target_id}"
    return f"{bucket_tag(bucket_of(identity, buckets))}:entity:{identity}"
