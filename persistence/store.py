"""The Postgres side of the service: one asyncpg pool and the queries the service runs on it.

Only cold paths use it: the flusher, hydrating a user Redis forgot, an owner Redis does not
know, health checks and reconciliation. Driver failures become ``StorageError``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import asyncpg  # type: ignore[import-untyped]

from counters.errors import PostgresStorageError, StorageError
from counters.exp.entities import DurableOwner
from counters.history import HistoryPage, HistoryQuery
from counters.tasks import log_orphaned_driver_futures, shielded
from persistence.events import Batch, Rejected
from persistence.history import read_history
from persistence.runs import barrier, barriers
from persistence.webhooks.outbox import OutboxPolicy
from persistence.writer import WriteResult, quarantine, requeue_upgraded, write_batch

# The link failed, not the rows sent (transient for the flusher). InternalClientError: a pooled
# connection left mid-operation when the server went away (seen with Postgres stopped while a
# migration retry held the pool).
_LINK_ERRORS = (
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    asyncio.TimeoutError,
)
# What asyncpg raises when the server is down, restarting or the connection broke.
DRIVER_ERRORS = (asyncpg.PostgresError, *_LINK_ERRORS)

# SQLSTATE classes that blame the server, not the rows sent: connection (08), invalid transaction
# state (25), rollback: serialization failure, deadlock (40), schema not there yet (42),
# object in use / lock not available (55), resources (53), operator intervention: shutdown,
# restart (57), system (58), internal (XX). Any other failure of a write (22 data exception,
# 23 constraint, 54 program limit, a value the driver cannot encode) is the data's fault.
_TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "25", "40", "42", "53", "55", "57", "58", "XX"})


@dataclass(frozen=True, slots=True)
class DurableUser:
    """What Postgres knows of a user: totals and today's EXP counters (from the ledger)."""

    user_id: str
    seq: int = 0
    exp: int = 0
    level: int = 1
    xp_state: str | None = None
    day_exp: int = 0
    day_counts: dict[str, int] = field(default_factory=dict)
    # (key, value, expires_ms) of its records still alive (lua/lib/records.lua)
    records: list[tuple[str, str, int]] = field(default_factory=list)


def is_transient(exc: BaseException) -> bool:
    """True when ``exc`` (or the driver error a ``StorageError`` wraps) says Postgres could not
    be reached or could not work right now; False when the data written is what failed.

    The flusher retries the first kind with backoff and splits the batch on the second."""
    if isinstance(exc, StorageError) and exc.__cause__ is not None:
        exc = exc.__cause__
    if isinstance(exc, asyncpg.exceptions._base.DataError):  # a value the driver cannot encode
        return False
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = str(getattr(exc, "sqlstate", "") or "")
        return sqlstate[:2] in _TRANSIENT_SQLSTATE_CLASSES
    return isinstance(exc, (*_LINK_ERRORS, StorageError))


@asynccontextmanager
async def storage_errors(what: str) -> AsyncIterator[None]:
    """Re-raise driver failures as ``StorageError`` naming ``what`` was being done."""
    try:
        yield
    except DRIVER_ERRORS as exc:
        raise PostgresStorageError(f"postgres {what}: {type(exc).__name__}: {exc}") from exc


_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


def plain_on_loopback(url: str) -> bool | None:
    """``False`` (no TLS) for a Postgres URL on this machine that names no ``sslmode``, else
    ``None`` (asyncpg's default: the URL's ``sslmode``, or ``prefer``).

    ``prefer`` first asks the server for TLS, one more round trip per connection; on loopback TLS
    protects nothing, and the embedded Postgres has none. It also leaves, when a connection
    attempt times out in that step (a pool acquire's deadline), a future whose exception
    nobody reads (asyncpg's ``TLSUpgradeProto``): asyncio logs it, and a test's event loop
    reports it as an error (seen once in CI, after a test that froze its loop for a second)."""
    parts = urlsplit(url)
    if "sslmode" in parse_qs(parts.query) or parts.hostname not in _LOOPBACK:
        return None
    return False


class Store:
    """The pool, with two time budgets: ``timeout`` (seconds) bounds every call made on a
    request's path (connecting included), ``write_timeout`` a flusher batch."""

    def __init__(
        self, pool: asyncpg.Pool, *, timeout: float = 1.0, write_timeout: float = 30.0
    ) -> None:
        self.pool = pool
        self.timeout = timeout
        self.write_timeout = write_timeout
        # Set when webhooks are configured: each write also fills the webhook outbox.
        self.outbox: OutboxPolicy | None = None

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        max_connections: int = 10,
        timeout: float = 1.0,
        write_timeout: float = 30.0,
    ) -> Store:
        """A pool that connects lazily: creating it succeeds while Postgres is down."""
        log_orphaned_driver_futures()  # asyncpg's unreachable waiters (counters.tasks)
        pool = await asyncpg.create_pool(
            url,
            ssl=plain_on_loopback(url),
            min_size=0,
            max_size=max_connections,
            timeout=max(timeout, 5.0),  # connecting; request paths are bounded by ``timeout``
            command_timeout=write_timeout,
        )
        return cls(pool, timeout=timeout, write_timeout=write_timeout)

    async def close(self, timeout: float = 10.0) -> None:
        """Close the pool; connections still busy after ``timeout`` seconds are cut."""
        try:
            await asyncio.wait_for(self.pool.close(), timeout)
        except TimeoutError:
            self.pool.terminate()

    @asynccontextmanager
    async def connection(self, what: str) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; failures while acquiring or using it are ``StorageError``."""
        async with storage_errors(what):
            conn = await self.pool.acquire()
            try:
                yield conn
            finally:
                await shielded(self.pool.release(conn))

    @asynccontextmanager
    async def bounded(self, what: str, seconds: float) -> AsyncIterator[asyncpg.Connection]:
        """``connection`` whose acquiring and use together take at most ``seconds``; past
        that, ``StorageError`` (a stalled Postgres is a prompt error, never a hang).

        Every call on a request's path goes through here (issue #11, fast failure). A plain
        ``asyncio.timeout`` around ``pool.acquire()`` is not enough: on a stopped server the
        interrupted query's release waits for the connection's reset (and asyncpg's cancel
        request to the postmaster), so the answer came only when Postgres resumed."""
        async with storage_errors(what):
            deadline = asyncio.get_running_loop().time() + seconds
            conn = await asyncio.wait_for(self.pool.acquire(), seconds)
            try:
                async with asyncio.timeout_at(deadline):
                    yield conn
            except BaseException:
                # Interrupted mid-query (timeout, cancel, a broken link): a graceful release
                # would wait on the same stalled server to reset the connection. Drop it (one
                # the server already closed is back in the pool: that says nothing of the cause).
                with contextlib.suppress(asyncpg.InterfaceError):
                    conn.terminate()
                raise
            finally:
                await shielded(self.pool.release(conn, timeout=seconds))

    async def ping(self, timeout: float = 1.0) -> bool:
        """True when Postgres answers within ``timeout`` seconds."""
        try:
            async with self.bounded("ping", timeout) as conn:
                await conn.fetchval("SELECT 1")
        except StorageError:
            return False
        return True

    async def write(self, batch: Batch) -> WriteResult:
        """Write one batch of events in one transaction (idempotent)."""
        async with self.bounded("write batch", self.write_timeout) as conn:
            return await write_batch(conn, batch, self.outbox)

    async def requeue_upgraded(self) -> WriteResult:
        """Ledger compact entries an older flusher quarantined (``writer.requeue_upgraded``)."""
        async with self.bounded("requeue upgraded", self.write_timeout) as conn:
            return await requeue_upgraded(conn, self.outbox)

    async def quarantine(self, rejected: list[Rejected]) -> None:
        """Set entries aside in ``ledger_quarantine`` whatever their content."""
        async with self.bounded("quarantine", self.write_timeout) as conn:
            await quarantine(conn, rejected)

    async def history(self, query: HistoryQuery, timeout: float = 5.0) -> HistoryPage:
        """One page of a user's ledger rows; ``StorageError`` when Postgres fails or takes
        longer than ``timeout`` seconds (acquiring the connection included; an interrupted
        connection is dropped, not reset on a stalled server: ``bounded``)."""
        async with self.bounded("history", timeout) as conn:
            return await read_history(conn, query)

    async def owner_of(self, entity_type: str, entity_id: str) -> DurableOwner | None:
        """The recorded owner of an entity and the version of that record, or None."""
        async with self.bounded("owner lookup", self.timeout) as conn:
            row = await conn.fetchrow(
                "SELECT owner_id, version FROM entity_owners"
                " WHERE entity_type = $1 AND entity_id = $2",
                entity_type,
                entity_id,
            )
        return None if row is None else DurableOwner(row["owner_id"], row["version"])

    async def load_user(self, user_id: str, day: str, now_ms: int = 0) -> DurableUser:
        """The user's durable totals, ``day``'s awards and the records of their slot still alive
        at ``now_ms`` (service clock); an unknown user is an empty one."""
        async with self.bounded("load user", self.timeout) as conn:
            kept = await conn.fetch(
                "SELECT key, value, expires_ms FROM redis_records"
                " WHERE scope = $1 AND expires_ms > $2",
                user_id,
                now_ms,
            )
            records = [(row["key"], row["value"], row["expires_ms"]) for row in kept]
            totals = await conn.fetchrow(
                "SELECT seq, exp, level, xp_state::text AS xp_state FROM user_totals"
                " WHERE user_id = $1",
                user_id,
            )
            awards = await conn.fetch(
                "SELECT action, count(*) AS n, sum(amount) AS exp FROM ledger"
                " WHERE user_id = $1 AND day = $2 AND kind = 'exp_award' GROUP BY action",
                user_id,
                day,
            )
        if totals is None:
            return DurableUser(user_id, records=records)
        return DurableUser(
            user_id=user_id,
            seq=totals["seq"],
            exp=totals["exp"],
            level=totals["level"],
            xp_state=totals["xp_state"],
            day_exp=sum(int(row["exp"]) for row in awards),
            day_counts={row["action"]: int(row["n"]) for row in awards},
            records=records,
        )

    async def barrier(self, bucket: int, run: str) -> None:
        """The flush barrier of ``bucket`` for its Redis incarnation ``run`` (persistence/runs.py):
        returns once no open or later flush can add rows of an earlier incarnation."""
        async with self.bounded("flush barrier", self.timeout) as conn:
            await barrier(conn, bucket, run)

    async def barriers(self, runs: list[tuple[int, str]]) -> None:
        """``barrier`` of many ``(bucket, run)`` in one transaction (persistence/runs.py)."""
        async with self.bounded("flush barriers", self.timeout) as conn:
            await barriers(conn, runs)

    async def creator_awards(
        self, target: str | None, actions: list[str], since_ms: int
    ) -> list[tuple[str, str, str, str, int]]:
        """(target, action, actor, owner, ts_ms) of the ledgered awards of ``actions`` on
        ``target`` (None: every entity, for the restore of incomplete buckets, bounded by
        ``write_timeout``) since ``since_ms``: who already triggered them."""
        budget = self.timeout if target is not None else self.write_timeout
        async with self.bounded("creator awards", budget) as conn:
            rows = await conn.fetch(
                "SELECT target, action, actor, owner_id, ts_ms FROM creator_awards"
                " WHERE ($1::text IS NULL OR target = $1) AND action = ANY($2::text[])"
                " AND ts_ms >= $3",
                target,
                actions,
                since_ms,
            )
        return [(r["target"], r["action"], r["actor"], r["owner_id"], r["ts_ms"]) for r in rows]

    async def forget_expired_records(self, now_ms: int) -> int:
        """Delete the ``redis_records`` rows expired at ``now_ms``; returns how many."""
        async with self.bounded("forget expired records", self.write_timeout) as conn:
            status: str = await conn.execute(
                "DELETE FROM redis_records WHERE expires_ms <= $1", now_ms
            )
        return int(status.rsplit(" ", 1)[-1])

    async def user_ids(self) -> list[str]:
        """Every user Postgres has totals for (the restore of incomplete buckets)."""
        async with self.bounded("list users", self.write_timeout) as conn:
            rows = await conn.fetch("SELECT user_id FROM user_totals")
        return [row["user_id"] for row in rows]

    async def entity_owners(self) -> list[tuple[str, str, str, int]]:
        """(entity_type, entity_id, owner_id, version) of every entity Postgres has an owner
        for (the restore of incomplete buckets)."""
        async with self.bounded("list owners", self.write_timeout) as conn:
            rows = await conn.fetch(
                "SELECT entity_type, entity_id, owner_id, version FROM entity_owners"
            )
        return [(r["entity_type"], r["entity_id"], r["owner_id"], r["version"]) for r in rows]

    async def imported(self, import_ids: list[str]) -> set[str]:
        """Which of ``import_ids`` the ledger already holds (``counters import`` lines whose
        events were flushed; the ids are the events' ``idem``)."""
        async with self.connection("import check") as conn:
            rows = await conn.fetch(
                "SELECT idem FROM ledger WHERE kind IN ('exp_import', 'xp_import')"
                " AND idem = ANY($1::text[])",
                import_ids,
            )
        return {row["idem"] for row in rows}
