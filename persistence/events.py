"""Stream entries as the flusher reads them, turned into ledger rows, totals and owner records.

The event schema (``Event``, a tagged union on ``kind``) is defined once below: what the Lua
scripts XADD, checked by tests/ledger/test_event_schema.py. The parser takes its field lists
from it but stays generic on purpose: any event carrying the common fields is ledgered whatever
its kind (and keeps its exact rejection reasons), and every other field lands in the row's
``totals`` JSON. The per-user totals know two families of fields (EXP, XP); an event updates a
family only when it carries that family's fields.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

# -- the event schema: what the Lua scripts XADD, one Struct per kind, tagged on `kind` ---------
# tests/ledger/test_event_schema.py runs every script that writes an event and decodes what it
# added with ``Event``; the parser's field lists and the writer's XP columns come from here.


class Change(
    msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", forbid_unknown_fields=True
):
    """A change to one user's EXP or XP: a ledger row (``event_id`` is "<user>:<seq>")."""

    event_id: str
    user: str
    seq: int  # the user's change counter after this change
    ts: int  # unix milliseconds
    amount: int  # signed change
    action: str = ""
    actor: str = ""
    target: str = ""
    idem: str = ""  # the request's Idempotency-Key ("" if none)
    run: str = ""  # the Redis incarnation of the bucket that made it (persistence/runs.py)


class ExpAward(Change, frozen=True, tag="exp_award"):
    day: str  # YYYYMMDD (UTC): the daily window it counted in
    exp: int  # totals after
    level: int


class ExpAdjust(Change, frozen=True, tag="exp_adjust"):
    exp: int
    level: int


class ExpImport(Change, frozen=True, tag="exp_import"):
    """EXP added by ``counters import`` (lua/import_user.lua); ``idem`` is the line's import id."""

    exp: int
    level: int


class XpChange(Change, frozen=True):
    """Any XP change; ``effective_ts`` is when a transition that came due took effect."""

    effective_ts: int
    xp_balance: int  # totals after
    xp_allocation: int
    xp_topup: int
    xp_held: int
    tier: str
    xp_state: str  # the whole XP state (JSON), kept in totals, not on every ledger row


class XpSubscription(XpChange, frozen=True, tag="xp_subscription"): ...


class XpAllocation(XpChange, frozen=True, tag="xp_allocation"): ...


class XpGrant(XpChange, frozen=True, tag="xp_grant"): ...


class XpGrantExpired(XpChange, frozen=True, tag="xp_grant_expired"): ...


class XpDebit(XpChange, frozen=True, tag="xp_debit"): ...


class XpHold(XpChange, frozen=True, tag="xp_hold"): ...


class XpCapture(XpChange, frozen=True, tag="xp_capture"):
    xp_captured: int


class XpRelease(XpChange, frozen=True, tag="xp_release"): ...


class XpHoldExpired(XpChange, frozen=True, tag="xp_hold_expired"): ...


class XpRefund(XpChange, frozen=True, tag="xp_refund"): ...


class XpImport(XpChange, frozen=True, tag="xp_import"):
    """A subscription (action ``subscription``) or top-up (``topup``) from ``counters import``."""


class OwnerChange(
    msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", tag="entity_owner",
    forbid_unknown_fields=True,
):  # fmt: skip
    """An entity's owner changed (lua/assign_entity.lua), in the entity's bucket's stream."""

    target: str  # "<type>:<id>"
    owner: str
    version: int = 0  # the owner record's version after this change (absent before issue #10)
    ts: int = 0  # unix milliseconds


class RecordChange(
    msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", tag="record",
    forbid_unknown_fields=True,
):  # fmt: skip
    """A record a Redis loss must not forget (lua/lib/records.lua): an idempotency record or an
    XP debit or hold record, kept in ``redis_records`` and put back when its scope is hydrated."""

    scope: str  # the user whose slot holds it
    key: str  # its Redis key
    value: str
    expires_ms: int  # unix milliseconds by the service clock
    run: str = ""


Event = (
    ExpAward | ExpAdjust | ExpImport | XpSubscription | XpAllocation | XpGrant | XpGrantExpired
    | XpDebit | XpHold | XpCapture | XpRelease | XpHoldExpired | XpRefund | XpImport | OwnerChange
    | RecordChange
)  # fmt: skip


def _fields(struct: type[msgspec.Struct]) -> tuple[str, ...]:
    return tuple(f.name for f in msgspec.structs.fields(struct))


def _required(struct: type[msgspec.Struct]) -> tuple[str, ...]:
    return tuple(f.name for f in msgspec.structs.fields(struct) if f.required)


# The parser is generic on purpose (see above): these lists are the schema's, not its own.
COMMON = (*_fields(Change), "kind", "day")  # a ledger row's own columns; the rest is totals
REQUIRED = ("kind", *_required(Change))
XP_STATE = "xp_state"
assert XP_STATE in _fields(XpChange)
XP_FIELDS = tuple(
    f for f in _fields(XpChange) if f not in COMMON and f not in ("effective_ts", XP_STATE)
)
_XP_FIELD_SET = frozenset(XP_FIELDS)
_NOT_TOTALS = frozenset((*COMMON, XP_STATE))
OWNER_KIND = OwnerChange.__struct_config__.tag
RECORD_KIND = RecordChange.__struct_config__.tag


@dataclass(frozen=True, slots=True)
class LedgerEvent:
    stream: str
    stream_id: str
    event_id: str
    user_id: str
    seq: int
    kind: str
    action: str
    amount: int
    actor: str
    target: str
    day: str | None
    idem: str | None
    ts_ms: int
    totals: dict[str, Any]
    xp_state: str | None
    run: str = ""  # "" (events made before issue #11): no flush barrier applies


@dataclass(frozen=True, slots=True)
class OwnerEvent:
    entity_type: str
    entity_id: str
    owner_id: str
    position: tuple[int, int]
    version: int = 0  # the owner record's version in Redis: newer versions win

    @property
    def order(self) -> tuple[int, int, int]:
        """Which of two owner events of one entity is newer: version, then stream position."""
        return (self.version, *self.position)


@dataclass(frozen=True, slots=True)
class RecordEvent:
    stream: str
    stream_id: str
    scope: str
    key: str
    value: str
    expires_ms: int
    run: str

    @property
    def position(self) -> tuple[int, int]:
        return position(self.stream_id)


@dataclass(frozen=True, slots=True)
class Rejected:
    stream: str
    stream_id: str
    reason: str
    fields: dict[str, str]


@dataclass(slots=True)
class Batch:
    """What one read of the streams holds, sorted by destination."""

    events: list[LedgerEvent] = field(default_factory=list)
    owners: list[OwnerEvent] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    records: list[RecordEvent] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.events) + len(self.owners) + len(self.rejected) + len(self.records)


def position(stream_id: str) -> tuple[int, int]:
    """A stream id ``<ms>-<n>`` as a comparable pair."""
    ms, _, n = stream_id.partition("-")
    return int(ms), int(n or 0)


_BIGINT = 2**63
_YEAR_10000_MS = 253_402_300_800_000


def _scalar(value: str) -> int | str:
    try:
        number = int(value)
    except ValueError:
        return value
    return number if -_BIGINT <= number < _BIGINT else value


def _timestamp_ms(fields: Mapping[str, str]) -> int:
    ts = _bigint(fields, "ts")
    if not 0 <= ts < _YEAR_10000_MS:
        raise ValueError("ts out of range")
    return ts


def _bigint(fields: Mapping[str, str], name: str) -> int:
    number = int(fields[name])  # ValueError for anything but an integer
    if not -_BIGINT <= number < _BIGINT:
        raise ValueError(f"{name} out of range")
    return number


def parse(
    stream: str, stream_id: str, fields: Mapping[str, str]
) -> LedgerEvent | OwnerEvent | RecordEvent:
    """One stream entry; ``ValueError`` says why it cannot be ledgered."""
    if fields.get("kind") == RECORD_KIND:
        if any("\x00" in text for item in fields.items() for text in item):
            raise ValueError("a NUL character (Postgres text cannot hold it)")
        missing = [n for n in ("scope", "key", "value", "expires_ms") if not fields.get(n)]
        if missing:
            raise ValueError(f"record without {', '.join(missing)}")
        return RecordEvent(
            stream, stream_id, fields["scope"], fields["key"], fields["value"],
            _bigint(fields, "expires_ms"), fields.get("run", ""),
        )  # fmt: skip
    if fields.get("kind") == OWNER_KIND:
        entity_type, sep, entity_id = fields.get("target", "").partition(":")
        owner = fields.get("owner", "")
        if not (sep and entity_type and entity_id and owner):
            raise ValueError("entity_owner event without target <type>:<id> and owner")
        version = _bigint(fields, "version") if "version" in fields else 0
        return OwnerEvent(entity_type, entity_id, owner, position(stream_id), version)
    missing = [name for name in REQUIRED if not fields.get(name)]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    if any("\x00" in text for item in fields.items() for text in item):
        raise ValueError("a NUL character (Postgres text cannot hold it)")
    totals = {name: _scalar(value) for name, value in fields.items() if name not in _NOT_TOTALS}
    return LedgerEvent(
        stream=stream,
        stream_id=stream_id,
        event_id=fields["event_id"],
        user_id=fields["user"],
        seq=_bigint(fields, "seq"),
        kind=fields["kind"],
        action=fields.get("action", ""),
        amount=_bigint(fields, "amount"),
        actor=fields.get("actor", ""),
        target=fields.get("target", ""),
        day=fields.get("day") or None,
        idem=fields.get("idem") or None,
        ts_ms=_timestamp_ms(fields),
        totals=totals,
        xp_state=fields.get(XP_STATE) or None,
        run=fields.get("run", ""),
    )


def sort_entries(entries: Iterable[tuple[str, str, Mapping[str, str] | None]]) -> Batch:
    """Sort (stream, id, fields) entries into a batch; a deleted entry (fields None) is skipped."""
    batch = Batch()
    for stream, stream_id, fields in entries:
        if fields is None:
            continue
        try:
            parsed = parse(stream, stream_id, fields)
        except ValueError as exc:
            batch.rejected.append(Rejected(stream, stream_id, str(exc), dict(fields)))
            continue
        if isinstance(parsed, OwnerEvent):
            batch.owners.append(parsed)
        elif isinstance(parsed, RecordEvent):
            batch.records.append(parsed)
        else:
            batch.events.append(parsed)
    return batch


@dataclass(slots=True)
class TotalsRow:
    """The newest totals of one user in a batch, family by family."""

    user_id: str
    seq: int = 0
    exp_seq: int = 0
    exp: int = 0
    level: int = 1
    xp_seq: int = 0
    xp: dict[str, Any] = field(default_factory=dict)
    xp_state: str | None = None


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) else default


def collapse(events: Iterable[LedgerEvent]) -> list[TotalsRow]:
    """One totals row per user: each family as the highest-seq event carrying it left it."""
    rows: dict[str, TotalsRow] = {}
    for event in events:
        row = rows.get(event.user_id)
        if row is None:
            row = rows[event.user_id] = TotalsRow(event.user_id)
        row.seq = max(row.seq, event.seq)
        if "exp" in event.totals and event.seq > row.exp_seq:
            row.exp_seq = event.seq
            row.exp = _int(event.totals["exp"], 0)
            row.level = _int(event.totals.get("level"), 1)
        has_xp = event.xp_state is not None or not _XP_FIELD_SET.isdisjoint(event.totals)
        if has_xp and event.seq > row.xp_seq:
            row.xp_seq = event.seq
            row.xp = {name: event.totals.get(name) for name in XP_FIELDS}
            row.xp_state = event.xp_state
    return sorted(rows.values(), key=lambda r: r.user_id)  # a fixed lock order across writers
