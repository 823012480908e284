"""Writing one batch of events to Postgres: ledger rows, totals, owners, in one transaction.

Exactly once: a ledger row's key is the event's ``event_id``: new events are copied straight in,
and a batch holding one already ledgered goes by ``ON CONFLICT DO NOTHING`` instead, where a
re-delivered event is a no-op (``_insert_ledger``); totals move only forward (per family, by
seq), and owners only to a later stream position. So the whole write is idempotent: writing a
batch twice changes nothing the second time. Each statement sends the batch by binary COPY or as
arrays (``unnest``): one round trip per table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from operator import attrgetter

import asyncpg  # type: ignore[import-untyped]
import orjson

from counters.redis.keys import bucket_of_key
from persistence.events import (
    CHANGE_TYPES,
    COMMON,
    COMPACT,
    XP_FIELDS,
    XP_TYPES,
    Batch,
    LedgerEvent,
    OwnerEvent,
    RecordEvent,
    Rejected,
    collapse,
    gc_paused,
    sort_entries,
)
from persistence.runs import retired_runs
from persistence.staging import copy_in, stage
from persistence.webhooks.outbox import OutboxPolicy, write_outbox

# The ledger's columns, from the event schema (persistence/events.py): each field of ``Change``
# plus ``kind`` and ``day`` (COMMON) but ``run`` (the ledger has no such column: runs live in
# bucket_runs and lost_entries, migration 0004) and ``ts``, then ``occurred_at`` (``ts`` as a
# timestamp), ``totals`` and ``stream_id``. ``user`` is renamed in SQL; the Python side reads each
# column from the ``LedgerEvent`` attribute named here. A row goes to Postgres typed as its
# column (binary COPY), so nothing is converted by SQL on the way.
_COLUMN = {"user": "user_id"}
_ATTRIBUTE = {"user": "user_id"}
_PLAIN = tuple(f for f in COMMON if f not in ("run", "ts"))  # read as they are
_LEDGER_ROW = attrgetter(*(_ATTRIBUTE.get(f, f) for f in _PLAIN))
_SQL_TYPE = {name: "bigint" if typ is int else "text" for name, typ in CHANGE_TYPES.items()}
_SQL_TYPE |= dict.fromkeys(("kind", "day"), "text")
_LEDGER_STAGED = [(_COLUMN.get(f, f), _SQL_TYPE[f]) for f in _PLAIN] + [
    ("occurred_at", "timestamptz"), ("totals", "jsonb"), ("stream_id", "text"),
]  # fmt: skip
_LEDGER_COLUMNS = [name for name, _ in _LEDGER_STAGED]
_INSERT_LEDGER = f"""
INSERT INTO ledger ({", ".join(_LEDGER_COLUMNS)})
SELECT {", ".join(_LEDGER_COLUMNS)}
FROM ledger_in  -- staged by COPY (persistence/staging.py)
ON CONFLICT (event_id) DO NOTHING
RETURNING event_id
"""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_XP_COLUMNS = XP_FIELDS  # user_totals columns, named as the events name them
_TOTALS_STAGED = [
    ("user_id", "text"), ("seq", "bigint"), ("exp_seq", "bigint"), ("exp", "bigint"),
    ("level", "integer"), ("xp_seq", "bigint"),
    *((c, "text" if CHANGE_TYPES.get(c, XP_TYPES[c]) is str else "bigint") for c in _XP_COLUMNS),
    ("xp_state", "text"),
]  # fmt: skip
_NEWER_XP = "CASE WHEN excluded.xp_seq > t.xp_seq THEN excluded.{0} ELSE t.{0} END"
_UPSERT_TOTALS = f"""
INSERT INTO user_totals AS t ({", ".join(name for name, _ in _TOTALS_STAGED)})
SELECT {", ".join(name for name, _ in _TOTALS_STAGED[:-1])}, xp_state::jsonb
FROM totals_in  -- staged by COPY (persistence/staging.py)
ON CONFLICT (user_id) DO UPDATE SET
    seq = GREATEST(t.seq, excluded.seq),
    exp = CASE WHEN excluded.exp_seq > t.exp_seq THEN excluded.exp ELSE t.exp END,
    level = CASE WHEN excluded.exp_seq > t.exp_seq THEN excluded.level ELSE t.level END,
    exp_seq = GREATEST(t.exp_seq, excluded.exp_seq),
    {", ".join(f"{c} = {_NEWER_XP.format(c)}" for c in _XP_COLUMNS)},
    xp_state = CASE WHEN excluded.xp_seq > t.xp_seq
                    THEN COALESCE(excluded.xp_state, t.xp_state) ELSE t.xp_state END,
    xp_seq = GREATEST(t.xp_seq, excluded.xp_seq),
    updated_at = now()
WHERE excluded.seq > t.seq OR excluded.exp_seq > t.exp_seq OR excluded.xp_seq > t.xp_seq
"""

_UPSERT_OWNERS = """
INSERT INTO entity_owners AS o
    (entity_type, entity_id, owner_id, position_ms, position_seq, version)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[])
ON CONFLICT (entity_type, entity_id) DO UPDATE SET
    owner_id = excluded.owner_id, position_ms = excluded.position_ms,
    position_seq = excluded.position_seq, version = excluded.version, updated_at = now()
WHERE (excluded.version, excluded.position_ms, excluded.position_seq)
    > (o.version, o.position_ms, o.position_seq)
"""

_UPSERT_RECORDS = """
INSERT INTO redis_records AS r (key, scope, value, expires_ms, pos_ms, pos_n)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[])
ON CONFLICT (key) DO UPDATE SET
    scope = EXCLUDED.scope, value = EXCLUDED.value, expires_ms = EXCLUDED.expires_ms,
    pos_ms = EXCLUDED.pos_ms, pos_n = EXCLUDED.pos_n
WHERE (EXCLUDED.pos_ms, EXCLUDED.pos_n) > (r.pos_ms, r.pos_n)
"""

_CREATOR_STAGED = [
    ("target", "text"), ("action", "text"), ("actor", "text"), ("owner_id", "text"),
    ("ts_ms", "bigint"),
]  # fmt: skip
_CREATOR_AWARDS = """
INSERT INTO creator_awards (target, action, actor, owner_id, ts_ms)
SELECT * FROM creator_in  -- staged by COPY, in the batch's order: the first award of an actor wins
ON CONFLICT (target, action, actor) DO NOTHING
"""

_LOST = """
INSERT INTO lost_entries (stream, stream_id, run, fields)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]::jsonb[])
ON CONFLICT (stream, stream_id) DO NOTHING
"""

_QUARANTINE = """
INSERT INTO ledger_quarantine (stream, stream_id, reason, fields)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]::jsonb[])
ON CONFLICT (stream, stream_id) DO NOTHING
"""


@dataclass(frozen=True, slots=True)
class WriteResult:
    inserted: int  # new ledger rows
    duplicates: int  # events already ledgered (re-deliveries)
    quarantined: int  # entries set aside (malformed, or an event_id reused by another entry)
    lost: int = 0  # entries of a retired run: lost with Redis before they were ledgered


async def write_batch(
    conn: asyncpg.Connection, batch: Batch, outbox: OutboxPolicy | None = None
) -> WriteResult:
    """Write ``batch`` in one transaction; writing the same batch again changes nothing.

    New ledger rows and creator awards go by binary COPY straight into their tables: the common
    case, every one new, costs Postgres one plain insert per row (issue #11). COPY has no
    ``ON CONFLICT``: if one collides with a row already there (a re-delivery after a crash, an
    event id reused by another entry), its unique key fails the transaction, which is rolled
    back and written again by merging (staging tables, ``INSERT ... ON CONFLICT DO NOTHING``),
    where the collisions are skipped. With an ``outbox`` policy, the webhooks the newly inserted
    ledger rows cause are written in the same transaction (``persistence.webhooks.outbox``)."""
    try:
        return await _write(conn, batch, outbox, merging=False)
    except asyncpg.UniqueViolationError:
        return await _write(conn, batch, outbox, merging=True)


# How long a flush transaction may sit idle, waiting for its own process, before Postgres ends
# it. An attacker's finding: a worker frozen (SIGSTOP, a paused container) with its batch's
# transaction open kept its ledger rows and its users' ``user_totals`` row locks: every other
# worker's batch waited behind them, the ledger stopped for the whole deployment, and once the
# oldest event was ``COUNTERS_MAX_UNFLUSHED_SECONDS`` (30) old every write got 503, for as long
# as the process stayed frozen. Ended, its entries stay pending and the others claim them after
# ``COUNTERS_FLUSH_CLAIM_IDLE_MS`` (10 s); the frozen worker, resumed, finds its connection
# gone (a transient error: it retries, and writes nothing twice). A live flusher is never idle
# that long inside a transaction (its statements follow each other; only the event loop's
# other work runs between them).
IDLE_IN_TRANSACTION_MS = 10_000
# How long one statement of a flush transaction may run before Postgres cancels it: the same
# bound for a process frozen in the middle of a statement. A COPY is not idle while it waits
# for the rest of its rows, so a worker frozen halfway through sending them held its batch's
# locks past IDLE_IN_TRANSACTION_MS, for as long as it stayed frozen. Cancelled (SQLSTATE
# 57014, transient), the write is retried and writes nothing twice. A live flusher's statement
# that runs this long (a batch waiting on locks another transaction holds) is retried too.
STATEMENT_TIMEOUT_MS = 10_000


async def _write(
    conn: asyncpg.Connection, batch: Batch, outbox: OutboxPolicy | None, *, merging: bool
) -> WriteResult:
    async with conn.transaction():
        await conn.execute(
            f"SET LOCAL idle_in_transaction_session_timeout = {int(IDLE_IN_TRANSACTION_MS)};"
            f"SET LOCAL statement_timeout = {int(STATEMENT_TIMEOUT_MS)}"
        )
        batch, lost = await _refuse_retired(conn, batch)
        new, skipped = await _insert_ledger(conn, batch.events, merging)
        if outbox is not None and new:
            await write_outbox(conn, outbox.rows(new))
        rejected = list(batch.rejected)
        if skipped:
            rejected += await _collisions(conn, skipped)
        if batch.events:
            with gc_paused():
                totals_rows = _totals_rows(batch.events)
            await stage(conn, "totals_in", _TOTALS_STAGED, totals_rows)
            await conn.execute(_UPSERT_TOTALS)
        if batch.owners:
            await conn.execute(_UPSERT_OWNERS, *_owner_columns(batch.owners))
        if batch.records:
            await conn.execute(_UPSERT_RECORDS, *_record_columns(batch.records))
        creator = [_creator_row(e) for e in batch.events if _creator_award(e)]
        if creator:
            await copy_in(
                conn,
                "creator_awards",
                _CREATOR_STAGED,
                creator,
                merge=merging and ("creator_in", _CREATOR_AWARDS),
            )
        if rejected:
            await _quarantine(conn, rejected)
    duplicates = len(skipped) - (len(rejected) - len(batch.rejected))
    return WriteResult(len(new), duplicates, len(rejected), lost)


async def _refuse_retired(conn: asyncpg.Connection, batch: Batch) -> tuple[Batch, int]:
    """The batch without the entries of runs a hydration retired, and how many those were.

    They were acknowledged by a Redis that lost them before they were ledgered (the durability
    window): they go to ``lost_entries`` for the record, not to the ledger, where they would
    land behind a user rebuilt without them, and not to quarantine: nothing is to be repaired.
    Entity owner changes carry their bucket's run too: a flush open across a loss must not name
    an owner after the restore read the entity back (``tests/ledger/test_flush_fence.py``)."""
    both: list[LedgerEvent | RecordEvent | OwnerEvent] = [
        *batch.events, *batch.records, *batch.owners
    ]  # fmt: skip
    # Distinct (stream, run) first: a batch has a few thousand entries but at most one run per
    # bucket stream, and parsing the bucket out of each entry's key was ~1 us per event.
    pairs = {(e.stream, e.run) for e in both if e.run}
    runs = {(bucket_of_key(stream), run) for stream, run in pairs}
    retired = await retired_runs(conn, runs)
    if not retired:
        return batch, 0

    def lost(e: LedgerEvent | RecordEvent | OwnerEvent) -> bool:
        return bool(e.run) and (bucket_of_key(e.stream), e.run) in retired

    gone = [e for e in both if lost(e)]
    await conn.execute(
        _LOST,
        [e.stream for e in gone],
        [_stream_id(e) for e in gone],
        [e.run for e in gone],
        [orjson.dumps(_lost_fields(e)).decode() for e in gone],
    )
    events = [e for e in batch.events if not lost(e)]
    records = [r for r in batch.records if not lost(r)]
    owners = [o for o in batch.owners if not lost(o)]
    return Batch(events, owners, batch.rejected, records), len(gone)


def _stream_id(e: LedgerEvent | RecordEvent | OwnerEvent) -> str:
    """The entry's id in its stream (an owner event keeps it as its position)."""
    return f"{e.position[0]}-{e.position[1]}" if isinstance(e, OwnerEvent) else e.stream_id


def _lost_fields(e: LedgerEvent | RecordEvent | OwnerEvent) -> dict[str, object]:
    """What ``lost_entries`` keeps of an entry of a retired run."""
    if isinstance(e, LedgerEvent):
        return dict(_fields_of(e))
    if isinstance(e, RecordEvent):
        return {"key": e.key}
    return {"target": f"{e.entity_type}:{e.entity_id}", "owner": e.owner_id, "version": e.version}


def _creator_award(e: LedgerEvent) -> bool:
    """An award paid to someone else than its actor, for an entity (a like, a fork, a sale)."""
    return e.kind == "exp_award" and bool(e.target) and e.actor not in ("", e.user_id)


def _creator_row(e: LedgerEvent) -> tuple[str, str, str, str, int]:
    """A ``creator_awards`` row, in ``_CREATOR_STAGED`` order."""
    return (e.target, e.action, e.actor, e.user_id, e.ts_ms)


def _record_columns(records: list[RecordEvent]) -> list[list[object]]:
    """One row per key, the newest by stream position (one statement cannot update a row twice)."""
    newest: dict[str, RecordEvent] = {}
    for r in records:
        if r.key not in newest or r.position > newest[r.key].position:
            newest[r.key] = r
    rows = list(newest.values())
    return [
        [r.key for r in rows], [r.scope for r in rows], [r.value for r in rows],
        [r.expires_ms for r in rows], [r.position[0] for r in rows], [r.position[1] for r in rows],
    ]  # fmt: skip


async def quarantine(conn: asyncpg.Connection, rejected: list[Rejected]) -> None:
    """Set entries aside in ``ledger_quarantine`` (in one transaction); never fails on their
    content: every string is stored through ``escape_text``."""
    async with conn.transaction():
        await _quarantine(conn, rejected)


async def _quarantine(conn: asyncpg.Connection, rejected: list[Rejected]) -> None:
    await conn.execute(
        _QUARANTINE,
        [r.stream for r in rejected],
        [r.stream_id for r in rejected],
        [escape_text(r.reason) for r in rejected],
        [
            orjson.dumps({escape_text(k): escape_text(v) for k, v in r.fields.items()}).decode()
            for r in rejected
        ],
    )


# What a flusher of the release before the compact entry format says of a compact entry (it
# finds none of the named fields) when it quarantines one during a rolling upgrade.
OLD_READER_REASON = "missing kind, event_id, user, seq, ts, amount"
_UPGRADED = """
SELECT stream, stream_id, fields->>'v1' AS payload FROM ledger_quarantine
WHERE resolved_at IS NULL AND reason = $1 AND fields ? 'v1' AND fields - 'v1' = '{}'::jsonb
ORDER BY stream, stream_id LIMIT $2
"""
_RESOLVED = """
UPDATE ledger_quarantine SET resolved_at = now()
FROM unnest($1::text[], $2::text[]) AS r(stream, stream_id)
WHERE ledger_quarantine.stream = r.stream AND ledger_quarantine.stream_id = r.stream_id
"""
_HELD = "SELECT event_id, stream_id FROM ledger WHERE event_id = ANY($1::text[])"
_LOST_OF = """
SELECT l.stream, l.stream_id FROM lost_entries l
JOIN unnest($1::text[], $2::text[]) AS r(stream, stream_id)
    ON l.stream = r.stream AND l.stream_id = r.stream_id
"""
_REASON = """
UPDATE ledger_quarantine SET reason = r.reason
FROM unnest($1::text[], $2::text[], $3::text[]) AS r(stream, stream_id, reason)
WHERE ledger_quarantine.stream = r.stream AND ledger_quarantine.stream_id = r.stream_id
"""


async def requeue_upgraded(
    conn: asyncpg.Connection, outbox: OutboxPolicy | None = None, limit: int = 5_000
) -> WriteResult:
    """Ledger the compact entries an older flusher quarantined during a rolling upgrade.

    Workers of the release before the compact format (persistence/events.py, ``COMPACT``) read
    one written by a new worker as an entry without any field and quarantine it (reason
    ``OLD_READER_REASON``, its one field kept as written). Those are read here as a new flusher
    reads them and written as a batch (``write_batch``: idempotent; a run a hydration retired
    meanwhile goes to ``lost_entries``, as from a stream), then marked resolved. One that the
    new reader refuses too keeps its row with the new reason (so it is not tried again). Up to
    ``limit`` rows a call; ``WriteResult`` of what was written."""
    rows = await conn.fetch(_UPGRADED, OLD_READER_REASON, limit)
    if not rows:
        return WriteResult(0, 0, 0)
    entries = [(r["stream"], r["stream_id"], {COMPACT: unescape_text(r["payload"])}) for r in rows]
    batch = sort_entries(entries)
    refused = batch.rejected
    batch.rejected = []
    result = await write_batch(conn, batch, outbox)
    # Resolved: what is now in the ledger from this very entry, or set aside as lost; not an
    # event whose id another entry holds (``write_batch`` quarantines it: its row stays open).
    not_done = {(x.stream, x.stream_id) for x in refused}
    if batch.events:
        held = await conn.fetch(_HELD, [e.event_id for e in batch.events])
        lost = await conn.fetch(
            _LOST_OF, [e.stream for e in batch.events], [e.stream_id for e in batch.events]
        )
        mine = {(r["event_id"], r["stream_id"]) for r in held}
        gone = {(r["stream"], r["stream_id"]) for r in lost}
        not_done |= {
            (e.stream, e.stream_id)
            for e in batch.events
            if (e.event_id, e.stream_id) not in mine and (e.stream, e.stream_id) not in gone
        }
    done = [r for r in rows if (r["stream"], r["stream_id"]) not in not_done]
    async with conn.transaction():
        await conn.execute(_RESOLVED, [r["stream"] for r in done], [r["stream_id"] for r in done])
        if refused:
            await conn.execute(
                _REASON,
                [r.stream for r in refused],
                [r.stream_id for r in refused],
                [escape_text(r.reason) for r in refused],
            )
    return result


_ESCAPED = re.compile(r"\\(\\|x([0-9a-f]{2}))")


def unescape_text(text: str) -> str:
    """The text ``escape_text`` was given (a byte that was not UTF-8 comes back as the
    ``surrogateescape`` character it was read as)."""
    if "\\" not in text:
        return text

    def one(match: re.Match[str]) -> str:
        if match.group(2) is None:
            return "\\"
        code = int(match.group(2), 16)
        return chr(code) if code < 0x80 else chr(0xDC00 + code)

    return _ESCAPED.sub(one, text)


def escape_text(text: str) -> str:
    """``text`` as Postgres text and jsonb always accept it, reversibly.

    A backslash becomes two, NUL becomes ``\\x00`` (Postgres text cannot hold NUL, jsonb not
    even escaped), and a byte that was not UTF-8 (read from Redis with ``surrogateescape``)
    becomes ``\\xNN``; everything else is kept. Plain text passes unchanged."""
    if text.isascii() and "\\" not in text and "\x00" not in text:
        return text
    raw = text.replace("\\", "\\\\").replace("\x00", "\\x00")
    try:
        data = raw.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that was no undecodable byte: \\udNNN
        data = raw.encode("utf-8", "backslashreplace")
    return data.decode("utf-8", "backslashreplace")


async def _collisions(conn: asyncpg.Connection, skipped: list[LedgerEvent]) -> list[Rejected]:
    """Skipped events whose event_id was ledgered from a different stream entry."""
    rows = await conn.fetch(
        "SELECT event_id, stream_id FROM ledger WHERE event_id = ANY($1::text[])",
        [e.event_id for e in skipped],
    )
    stored = {row["event_id"]: row["stream_id"] for row in rows}
    return [
        Rejected(
            e.stream,
            e.stream_id,
            f"event_id {e.event_id} already ledgered from stream entry {stored[e.event_id]}",
            _fields_of(e),
        )
        for e in skipped
        if stored.get(e.event_id, e.stream_id) != e.stream_id
    ]


def _fields_of(e: LedgerEvent) -> dict[str, str]:
    fields = {
        "event_id": e.event_id, "user": e.user_id, "seq": str(e.seq), "ts": str(e.ts_ms),
        "kind": e.kind, "action": e.action, "amount": str(e.amount), "actor": e.actor,
        "target": e.target, "day": e.day or "", "idem": e.idem or "",
    }  # fmt: skip
    fields.update({k: str(v) for k, v in e.totals.items()})
    if e.xp_state is not None:
        fields["xp_state"] = e.xp_state
    if e.run:
        fields["run"] = e.run
    return fields


async def _insert_ledger(
    conn: asyncpg.Connection, events: list[LedgerEvent], merging: bool
) -> tuple[list[LedgerEvent], list[LedgerEvent]]:
    """Ledger ``events``: ``(inserted now, skipped)``, skipped being those whose event id the
    ledger already had (only when ``merging``: else a collision raises)."""
    if not events:
        return [], []
    with gc_paused():
        rows = _ledger_rows(events)
    merged = await copy_in(
        conn, "ledger", _LEDGER_STAGED, rows, merge=merging and ("ledger_in", _INSERT_LEDGER)
    )
    if merged is None:
        return events, []
    inserted = {row["event_id"] for row in merged}
    new = [e for e in events if e.event_id in inserted]
    return new, [e for e in events if e.event_id not in inserted]


def _ledger_rows(events: list[LedgerEvent]) -> list[tuple[object, ...]]:
    """Each event as a tuple in ``_LEDGER_COLUMNS`` order, typed as the columns are."""
    dumps, epoch, ms = orjson.dumps, _EPOCH, timedelta(milliseconds=1)
    return [
        (*_LEDGER_ROW(e), epoch + e.ts_ms * ms, dumps(e.totals).decode(), e.stream_id)
        for e in events
    ]


def _totals_rows(events: list[LedgerEvent]) -> list[tuple[object, ...]]:
    return [
        (
            r.user_id, r.seq, r.exp_seq, r.exp, r.level, r.xp_seq,
            *((_typed(name, r.xp.get(name)) for name in _XP_COLUMNS) if r.xp else _NO_XP),
            r.xp_state,
        )
        for r in collapse(events)
    ]  # fmt: skip


_NO_XP = (None,) * len(_XP_COLUMNS)  # a user whose batch holds no XP change: nothing to type


def _typed(name: str, value: object) -> object:
    if value is None:
        return None
    if name == "tier":
        return str(value)
    return value if isinstance(value, int) else None


def _owner_columns(owners: list[OwnerEvent]) -> list[list[object]]:
    latest: dict[tuple[str, str], OwnerEvent] = {}
    for owner in owners:  # one row per entity: a statement may not update a row twice
        key = (owner.entity_type, owner.entity_id)
        if key not in latest or owner.order > latest[key].order:
            latest[key] = owner
    chosen = list(latest.values())
    return [
        [o.entity_type for o in chosen],
        [o.entity_id for o in chosen],
        [o.owner_id for o in chosen],
        [o.position[0] for o in chosen],
        [o.position[1] for o in chosen],
        [o.version for o in chosen],
    ]
