"""Writing one batch of events to Postgres: ledger rows, totals, owners, in one transaction.

Exactly once: a ledger row's key is the event's ``event_id``, and ``ON CONFLICT DO NOTHING`` makes
a re-delivered event a no-op; totals move only forward (per family, by seq), and owners only to
a later stream position. So the whole write is idempotent: writing a batch twice changes nothing
the second time. Each statement sends the batch as arrays (``unnest``): one round trip per table.
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import attrgetter

import asyncpg  # type: ignore[import-untyped]
import orjson

from persistence.events import (
    CHANGE_TYPES,
    COMMON,
    XP_FIELDS,
    XP_TYPES,
    Batch,
    LedgerEvent,
    OwnerEvent,
    Rejected,
    collapse,
)
from persistence.staging import stage
from persistence.webhooks.outbox import OutboxPolicy, write_outbox

# The ledger's columns, from the event schema (persistence/events.py): each field of ``Change``
# plus ``kind`` and ``day`` (COMMON), then what the flusher adds. Two are renamed in SQL, one is
# converted (the others go as they are); the Python side reads each column from the
# ``LedgerEvent`` attribute named here.
_COLUMN = {"user": "user_id", "ts": "occurred_at"}
_ATTRIBUTE = {"user": "user_id", "ts": "ts_ms"}
_CONVERT = {"ts": 'to_timestamp("ts" / 1000.0)', "totals": '"totals"::jsonb'}
_LEDGER_FIELDS = (*COMMON, "totals", "stream_id")
_SQL_TYPE = {name: "bigint" if typ is int else "text" for name, typ in CHANGE_TYPES.items()}
_SQL_TYPE |= dict.fromkeys(("kind", "day", "totals", "stream_id"), "text")
_LEDGER_ROW = attrgetter(*(_ATTRIBUTE.get(f, f) for f in _LEDGER_FIELDS if f != "totals"))
_LEDGER_STAGED = [(f, _SQL_TYPE[f]) for f in _LEDGER_FIELDS if f != "totals"] + [("totals", "text")]
_INSERT_LEDGER = f"""
INSERT INTO ledger ({", ".join(_COLUMN.get(f, f) for f, _ in _LEDGER_STAGED)})
SELECT {", ".join(_CONVERT.get(f, f'"{f}"') for f, _ in _LEDGER_STAGED)}
FROM ledger_in  -- staged by COPY (persistence/staging.py); quoted: "user" is a keyword
ON CONFLICT (event_id) DO NOTHING
RETURNING event_id
"""

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


async def write_batch(
    conn: asyncpg.Connection, batch: Batch, outbox: OutboxPolicy | None = None
) -> WriteResult:
    """Write ``batch`` in one transaction; writing the same batch again changes nothing.

    With an ``outbox`` policy, the webhooks the newly inserted ledger rows cause are written in
    the same transaction (``persistence.webhooks.outbox``)."""
    async with conn.transaction():
        inserted: set[str] = set()
        if batch.events:
            await stage(conn, "ledger_in", _LEDGER_STAGED, _ledger_rows(batch.events))
            rows = await conn.fetch(_INSERT_LEDGER)
            inserted = {row["event_id"] for row in rows}
        if outbox is not None and inserted:
            new = [e for e in batch.events if e.event_id in inserted]
            await write_outbox(conn, outbox.rows(new))
        rejected = list(batch.rejected)
        skipped = [e for e in batch.events if e.event_id not in inserted]
        if skipped:
            rejected += await _collisions(conn, skipped)
        if batch.events:
            await stage(conn, "totals_in", _TOTALS_STAGED, _totals_rows(batch.events))
            await conn.execute(_UPSERT_TOTALS)
        if batch.owners:
            await conn.execute(_UPSERT_OWNERS, *_owner_columns(batch.owners))
        if rejected:
            await _quarantine(conn, rejected)
    duplicates = len(skipped) - (len(rejected) - len(batch.rejected))
    return WriteResult(len(inserted), duplicates, len(rejected))


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
    return fields


def _ledger_rows(events: list[LedgerEvent]) -> list[tuple[object, ...]]:
    dumps = orjson.dumps
    return [(*_LEDGER_ROW(e), dumps(e.totals).decode()) for e in events]


def _totals_rows(events: list[LedgerEvent]) -> list[tuple[object, ...]]:
    return [
        (
            r.user_id, r.seq, r.exp_seq, r.exp, r.level, r.xp_seq,
            *(_typed(name, r.xp.get(name)) for name in _XP_COLUMNS),
            r.xp_state,
        )
        for r in collapse(events)
    ]  # fmt: skip


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
