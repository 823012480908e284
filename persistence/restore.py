"""The background restore: Redis holds every bucket completely again after it lost them.

A bucket is complete when its record (``ctr:{bN}:meta``) says so (``lua/lib/bucket.lua``): a
user missing from a complete bucket is new, with no Postgres read, so new users work while
Postgres is down and cost nothing when it is up. Redis loses the record with the bucket, so after
a loss every bucket is incomplete: a user touched then is hydrated alone (one Postgres read,
``persistence/recovery.py``), and this loop refills the rest. For each incomplete bucket it holds
the flush barrier of the bucket's current run (``persistence/runs.py``), hydrates every user
Postgres has in the bucket (``hydrate_user.lua`` skips users Redis already holds), then marks
the bucket complete unless Redis lost it again meanwhile (``complete_bucket.lua``).

On an empty ledger (a first start) there is nobody to restore: every bucket is marked complete
at once. Progress is in ``/readyz`` (``restore``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from counters.errors import StorageError
from counters.redis.calls import CompleteBucket, MetaKey
from counters.redis.codes import CompleteOutcome
from counters.redis.keys import LAYOUT_FIELD, LAYOUT_KEY, bucket_of, meta_key
from counters.redis.scripts import Scripts
from persistence.recovery import PostgresHydrator
from persistence.store import Store

log = logging.getLogger("persistence.restore")

_PARALLEL = 32  # hydrations in flight while a bucket is restored
_BATCH = 256  # buckets opened (runs, barriers) and completed per round trip


@dataclass(slots=True)
class RestoreProgress:
    """What ``/readyz`` shows: buckets Redis holds completely, users restored, the last error."""

    buckets: int
    complete: int = 0
    users_restored: int = 0
    passes: int = 0
    last_error: str | None = None

    def as_json(self) -> dict[str, object]:
        body: dict[str, object] = {
            "complete_buckets": self.complete, "buckets": self.buckets,
            "users_restored": self.users_restored,
        }  # fmt: skip
        if self.last_error is not None:
            body["last_error"] = self.last_error
        return body


class BucketRestore:
    """Refills incomplete buckets from Postgres: ``restore_once`` is one idempotent pass."""

    def __init__(
        self, hydrator: PostgresHydrator, store: Store, scripts: Scripts, *, buckets: int
    ) -> None:
        self._hydrator = hydrator
        self._store = store
        self._scripts = scripts
        self._buckets = buckets
        self.progress = RestoreProgress(buckets)

    async def restore_once(self) -> int:
        """Restore every incomplete bucket; returns how many are still incomplete (lost again
        while being restored). Raises ``StorageError`` when Redis or Postgres fails."""
        incomplete: dict[int, str] = dict.fromkeys(await self.incomplete_buckets(), "")
        self.progress.complete = self._buckets - len(incomplete)
        if not incomplete:
            return 0
        # Redis lost buckets, so maybe the deployment's bucket count too: record it again, or
        # the next start would depend on Postgres answering (counters/runtime/layout.py).
        await self._scripts.send_many([("HSETNX", LAYOUT_KEY, LAYOUT_FIELD, str(self._buckets))])
        await self._store.forget_expired_records(int(self._hydrator.now() * 1000))
        # runs read first: the barrier of each (after a loss: every bucket, in batches), then
        # the one read
        incomplete.update(await self._hydrator.open_all(list(incomplete)))
        users: dict[int, list[str]] = {bucket: [] for bucket in incomplete}
        for user_id in await self._store.user_ids():
            found = users.get(bucket_of(user_id, self._buckets))
            if found is not None:
                found.append(user_id)
        left = 0
        ordered = sorted(incomplete.items())
        for first in range(0, len(ordered), _BATCH):  # hydrate a batch's users, then complete it
            batch = ordered[first : first + _BATCH]
            for bucket, _ in batch:
                ids = users[bucket]
                for start in range(0, len(ids), _PARALLEL):
                    chunk = ids[start : start + _PARALLEL]
                    await asyncio.gather(*(self._hydrator.hydrate(uid) for uid in chunk))
                    self.progress.users_restored += len(chunk)
            replies = await self._scripts.run_many(
                [(MetaKey(meta_key(bucket)), CompleteBucket(run=run)) for bucket, run in batch]
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

    async def incomplete_buckets(self) -> list[int]:
        """The buckets Redis does not hold completely (``PostgresHydrator.incomplete_buckets``).
        Raises ``StorageError``."""
        return await self._hydrator.incomplete_buckets()

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
