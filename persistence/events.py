"""Stream entries as the flusher reads them, turned into ledger rows, totals and owner records.

The event schema (``Event``, a tagged union on ``kind``) is defined once below: what the Lua
scripts XADD, checked by tests/ledger/test_event_schema.py. The flusher's parser decodes every entry
with the union member its ``kind`` names (an unknown kind, a missing or extra field, a value of
the wrong type is quarantined), and the writer's ledger columns are the common fields of
``Change``; a kind's other fields land in the row's ``totals`` JSON. The per-user totals know
two families of fields (EXP, XP); an event updates a family only when it carries that family's
fields.
"""

from __future__ import annotations

import contextlib
import gc
import re
import typing
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Annotated, Any

import msgspec
from msgspec import Meta

# Every integer fits Postgres bigint, and a timestamp is one Postgres can convert (before the year
# 10000): checked by msgspec while it decodes, so out-of-range values never reach a batch's write.
BigInt = Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)]
Millis = Annotated[int, Meta(ge=0, lt=253_402_300_800_000)]  # unix milliseconds

# -- the event schema: what the Lua scripts XADD, one Struct per kind, tagged on `kind` ---------
# tests/ledger/test_event_schema.py runs every script that writes an event and decodes what it
# added with ``Event``; the parser's field lists and the writer's XP columns come from here.


class Change(
    msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", forbid_unknown_fields=True
):
    """A change to one user's EXP or XP: a ledger row (``event_id`` is "<user>:<seq>")."""

    event_id: str
    user: str
    seq: BigInt  # the user's change counter after this change
    ts: Millis
    amount: BigInt  # signed change
    action: str = ""
    actor: str = ""
    target: str = ""
    idem: str = ""  # the request's Idempotency-Key ("" if none)
    run: str = ""  # the Redis incarnation of the bucket that made it (persistence/runs.py)


class ExpAward(Change, frozen=True, tag="exp_award"):
    day: str  # YYYYMMDD (UTC): the daily window it counted in
    exp: BigInt  # totals after
    level: BigInt


class ExpAdjust(Change, frozen=True, tag="exp_adjust"):
    exp: BigInt
    level: BigInt


class ExpImport(Change, frozen=True, tag="exp_import"):
    """EXP added by ``counters import`` (lua/import_user.lua); ``idem`` is the line's import id."""

    exp: BigInt
    level: BigInt


class XpChange(Change, frozen=True):
    """Any XP change; ``effective_ts`` is when a transition that came due took effect."""

    effective_ts: BigInt
    xp_balance: BigInt  # totals after
    xp_allocation: BigInt
    xp_topup: BigInt
    xp_held: BigInt
    tier: str
    xp_state: str  # the whole XP state (JSON), kept in totals, not on every ledger row


class XpSubscription(XpChange, frozen=True, tag="xp_subscription"): ...


class XpAllocation(XpChange, frozen=True, tag="xp_allocation"): ...


class XpGrant(XpChange, frozen=True, tag="xp_grant"): ...


class XpGrantExpired(XpChange, frozen=True, tag="xp_grant_expired"): ...


class XpDebit(XpChange, frozen=True, tag="xp_debit"): ...


class XpHold(XpChange, frozen=True, tag="xp_hold"): ...


class XpCapture(XpChange, frozen=True, tag="xp_capture"):
    xp_captured: BigInt


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
    version: BigInt = 0  # the owner record's version after this change (absent before issue #10)
    ts: Millis = 0
    run: str = ""  # the entity's bucket's run (absent before the flush fence of owners, #11)


class RecordChange(
    msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", tag="record",
    forbid_unknown_fields=True,
):  # fmt: skip
    """A record a Redis loss must not forget (lua/lib/records.lua): an idempotency record or an
    XP debit or hold record, kept in ``redis_records`` and put back when its scope is hydrated."""

    scope: str  # the user whose slot holds it
    key: str  # its Redis key
    value: str
    expires_ms: BigInt  # unix milliseconds by the service clock
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


def _base(annotation: Any) -> Any:
    """``int`` for ``BigInt``: the Python type under a constrained alias."""
    return (
        typing.get_args(annotation)[0] if typing.get_origin(annotation) is Annotated else annotation
    )


def _tag(struct: type[msgspec.Struct]) -> str:
    return str(struct.__struct_config__.tag)


# The parser decodes each entry with the union member its `kind` names (msgspec's lax mode turns
# the stream's strings into the declared ints); these lists are the schema's, not the parser's.
CHANGES: dict[str, type[Change]] = {
    _tag(t): t for t in typing.get_args(Event) if t not in (OwnerChange, RecordChange)
}
COMMON = (*_fields(Change), "kind", "day")  # a ledger row's own columns; the rest is totals
CHANGE_TYPES = {
    f.name: _base(f.type) for f in msgspec.structs.fields(Change)
}  # the writer's SQL types
REQUIRED = ("kind", *_required(Change))
XP_STATE = "xp_state"
assert XP_STATE in _fields(XpChange)
XP_FIELDS = tuple(
    f for f in _fields(XpChange) if f not in COMMON and f not in ("effective_ts", XP_STATE)
)
_XP_FIELD_SET = frozenset(XP_FIELDS)
XP_TYPES = {
    f.name: _base(f.type) for f in msgspec.structs.fields(XpChange)
}  # user_totals SQL types
# Per kind, the fields that land in a ledger row's `totals` JSON (every field but its columns).
TOTALS: dict[str, tuple[str, ...]] = {
    kind: tuple(f for f in _fields(t) if f not in COMMON and f != XP_STATE)
    for kind, t in CHANGES.items()
}
_INTEGERS = tuple(name for name, typ in CHANGE_TYPES.items() if typ is int)
# Per kind, a getter of its TOTALS fields as a tuple (attrgetter of one name would return the
# value alone: every kind has two or more).
assert all(len(names) > 1 for names in TOTALS.values())
_TOTALS_OF = {kind: attrgetter(*names) for kind, names in TOTALS.items()}
OWNER_KIND = _tag(OwnerChange)
RECORD_KIND = _tag(RecordChange)


class LedgerEvent(msgspec.Struct, frozen=True, gc=False):
    """One change as a ledger row: its columns, ``totals`` (its kind's other fields, as JSON)
    and the XP state it left. A Struct, not a frozen dataclass: built once per event, its
    constructor is ten times cheaper."""

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
    stream: str = ""  # the entity's bucket's stream
    run: str = ""  # its run: the flush barrier refuses a retired one (persistence/runs.py)

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


# -- the compact entry format (issue #11): one field per stream entry -------------------------
# An entry written by this release holds one field, named ``COMPACT`` ("v1", the format's
# version), whose value is the kind and then the kind's fields in ``LAYOUTS`` order, separated by
# ``SEP`` (U+001F). No field can hold that character: ids and names are validated
# (counters/ids.py: no control characters), free text refuses control characters at the API
# (422), numbers are digits, and JSON (``xp_state``, a record's ``value``) escapes control
# characters; so an entry that splits into more or fewer fields than its kind's layout is refused
# (quarantined), never read shifted. An event's ``event_id`` is not sent: it is always
# "<user>:<seq>". Why: hiredis builds one string per field name and value (31 per entry of the
# named format, 3 here), Redis encodes and copies each, and the parse below is a C ``split`` and
# a few ``int`` instead of a msgspec ``convert`` of a dict. Entries of the named format (older
# workers, entries already in the streams) are still read: ``parse`` tells them apart by their
# fields. Kept in step with lua/lib/entry.lua and each script's ``Entry.add``
# (tests/ledger/test_event_schema.py decodes what they write, both ways).
COMPACT = "v1"
SEP = "\x1f"
_COMPACT_COMMON = ("user", "seq", "ts", "run", "action", "amount", "actor", "target", "idem")


def _layout(struct: type[msgspec.Struct]) -> tuple[str, ...]:
    """A kind's fields in its compact entry, after the kind: the common ones, then its own
    (``day`` first, ``xp_state`` last), from the schema above."""
    kind = _tag(struct)
    if kind == OWNER_KIND:
        return ("target", "owner", "version", "ts", "run")
    if kind == RECORD_KIND:
        return ("scope", "key", "expires_ms", "run", "value")
    own = _fields(struct)
    day = ("day",) if "day" in own else ()
    state = (XP_STATE,) if XP_STATE in own else ()
    return (*_COMPACT_COMMON, *day, *TOTALS[kind], *state)


LAYOUTS: dict[str, tuple[str, ...]] = {_tag(t): _layout(t) for t in typing.get_args(Event)}
_BIG = 2**63 - 1
_MILLIS_END = 253_402_300_800_000


_WIDTH = {kind: len(LAYOUTS[kind]) for kind in CHANGES}  # a change's fields after its kind
# ``_parse_compact`` reads a change's own fields by position: these are the positions.
_XP_OWN = ("effective_ts", "xp_balance", "xp_allocation", "xp_topup", "xp_held", "tier")
assert all(
    LAYOUTS[kind][9:] == ("day", "exp", "level")
    if kind == "exp_award"
    else ("exp", "level")
    if kind.startswith("exp_")
    else (*_XP_OWN, *(("xp_captured",) if kind == "xp_capture" else ()), XP_STATE)
    for kind in CHANGES
)
assert all(
    TOTALS[kind] == tuple(n for n in LAYOUTS[kind][9:] if n not in (*COMMON, XP_STATE))
    for kind in CHANGES
)


def expand(fields: Mapping[str, str]) -> dict[str, str]:
    """An entry's fields by name, whichever format it came in: a compact entry's payload is
    split by its kind's layout (and ``event_id`` put back for a change); a named one is copied.
    ``ValueError`` if a compact entry's kind is unknown or its field count wrong."""
    if len(fields) != 1 or COMPACT not in fields:
        return dict(fields)
    kind, _, rest = fields[COMPACT].partition(SEP)
    layout = LAYOUTS.get(kind)
    if layout is None:
        raise ValueError(f"unknown kind {kind!r}")
    values = rest.split(SEP)
    if len(values) != len(layout):
        raise ValueError(f"{kind} entry with {len(values)} fields, its layout has {len(layout)}")
    named = {"kind": kind, **dict(zip(layout, values, strict=True))}
    if kind in CHANGES:
        named["event_id"] = f"{named['user']}:{named['seq']}"
    return named


def _parse_compact(
    stream: str, stream_id: str, payload: str
) -> LedgerEvent | OwnerEvent | RecordEvent:
    """A compact entry (see ``COMPACT``). A change is read here by position, its fields where
    ``LAYOUTS`` puts them (the common case, no dict built: ~2 us against ~3.4 for a named
    entry's ``convert``); an owner or record change, rare, by name."""
    kind, _, rest = payload.partition(SEP)
    width = _WIDTH.get(kind)
    if width is None:
        return parse(stream, stream_id, expand({COMPACT: payload}))
    values = rest.split(SEP)
    if len(values) != width:
        raise ValueError(f"{kind} entry with {len(values)} fields, its layout has {width}")
    if "\x00" in payload:
        raise ValueError("a NUL character (Postgres text cannot hold it)")
    user, seq_text, ts_text, run, action, amount_text, actor, target, idem = values[:9]
    if not (user and seq_text and ts_text and amount_text):
        named = dict(zip(_COMPACT_COMMON, values, strict=False))
        raise ValueError(f"missing {', '.join(n for n in REQUIRED[2:] if not named.get(n))}")
    seq, ts, amount = int(seq_text), int(ts_text), int(amount_text)
    totals: dict[str, Any]
    if kind[0] == "e":  # exp_*: [day,] exp, level
        exp, level = int(values[-2]), int(values[-1])
        totals = {"exp": exp, "level": level}
        least, most = min(seq, amount, exp, level), max(seq, amount, exp, level)
        day, state = values[9] or None if width == 12 else None, None
    else:  # xp_*: effective_ts, xp_balance, xp_allocation, xp_topup, xp_held, tier, ...
        numbers: tuple[int, ...] = (int(values[9]), int(values[10]), int(values[11]))
        numbers += (int(values[12]), int(values[13]))
        if width == 17:  # xp_capture: xp_captured
            numbers += (int(values[15]),)
        totals = dict(zip(TOTALS[kind], numbers[:5], strict=False))
        totals["tier"] = values[14]
        if width == 17:
            totals["xp_captured"] = numbers[5]
        least, most = min(seq, amount, *numbers), max(seq, amount, *numbers)
        day, state = None, values[-1] or None
    if least < -_BIG - 1 or most > _BIG:
        checked = {"seq": seq, "amount": amount, **totals}
        wrong = next(
            name for name, v in checked.items() if type(v) is int and not -_BIG - 1 <= v <= _BIG
        )
        raise ValueError(f"{wrong} out of range")
    if not 0 <= ts < _MILLIS_END:
        raise ValueError("ts out of range")
    return LedgerEvent(  # positional, in field order (as ``parse``)
        stream, stream_id, f"{user}:{seq_text}", user, seq, kind, action, amount, actor, target,
        day, idem or None, ts, totals, state, run,
    )  # fmt: skip


_PATH = re.compile(r"at `\$\.(\w+)`")


def _invalid(exc: msgspec.ValidationError) -> ValueError:
    """msgspec's reason, in the parser's words for a number out of range."""
    text = str(exc)
    where = _PATH.search(text)
    if where and ("<=" in text or ">=" in text or "< " in text):
        return ValueError(f"{where.group(1)} out of range")
    return ValueError(text)


def parse(
    stream: str, stream_id: str, fields: Mapping[str, str]
) -> LedgerEvent | OwnerEvent | RecordEvent:
    """One stream entry, decoded with the ``Event`` member its ``kind`` names; ``ValueError``
    says why it cannot be ledgered (missing common fields, a NUL, a value of the wrong type).
    Either format: a compact entry (``COMPACT``) or one field per name (before it)."""
    if len(fields) == 1 and COMPACT in fields:
        return _parse_compact(stream, stream_id, fields[COMPACT])
    kind = fields.get("kind")
    if kind == RECORD_KIND:
        return _record(stream, stream_id, fields)
    if kind == OWNER_KIND:
        return _owner(stream, stream_id, fields)
    if not all(map(fields.get, REQUIRED)):  # one C loop; the names only when it fails
        raise ValueError(f"missing {', '.join(n for n in REQUIRED if not fields.get(n))}")
    # Values only: a name with a NUL is no field of the schema, so ``convert`` below refuses it
    # as unknown (``forbid_unknown_fields``); joining the names too cost ~0.3 us an event.
    if "\x00" in "".join(fields.values()):
        raise ValueError("a NUL character (Postgres text cannot hold it)")
    for name in _INTEGERS:  # Lua writes integers: "1e3" or "1.0" is not one (msgspec lax is)
        int(fields[name])
    struct = CHANGES.get(kind or "")
    if struct is None:
        raise ValueError(f"unknown kind {kind!r}")
    try:
        event: Any = msgspec.convert(fields, struct, strict=False)
    except msgspec.ValidationError as exc:
        raise _invalid(exc) from None
    totals = dict(zip(TOTALS[kind or ""], _TOTALS_OF[kind or ""](event), strict=True))
    return LedgerEvent(  # positional (a Struct's keyword parsing costs more), in field order
        stream, stream_id, event.event_id, event.user, event.seq, kind or "", event.action,
        event.amount, event.actor, event.target, getattr(event, "day", None) or None,
        event.idem or None, event.ts, totals, getattr(event, XP_STATE, None) or None, event.run,
    )  # fmt: skip


# Computed once: ``msgspec.structs.fields`` resolves the Struct's annotations on every call
# (~60 us, more than the rest of a record's parse; it was called per record entry).
_RECORD_REQUIRED = _required(RecordChange)


def _record(stream: str, stream_id: str, fields: Mapping[str, str]) -> RecordEvent:
    if "\x00" in "".join(fields) or "\x00" in "".join(fields.values()):
        raise ValueError("a NUL character (Postgres text cannot hold it)")
    missing = [n for n in _RECORD_REQUIRED if not fields.get(n)]
    if missing:
        raise ValueError(f"record without {', '.join(missing)}")
    int(fields["expires_ms"])  # Lua writes integers: "1e3" is not one (msgspec lax is)
    try:
        record = msgspec.convert(fields, RecordChange, strict=False)
    except msgspec.ValidationError as exc:
        raise _invalid(exc) from None
    _check_record_key(stream, record.scope, record.key)
    return RecordEvent(
        stream, stream_id, record.scope, record.key, record.value, record.expires_ms, record.run
    )


# The keys a record may name (counters/redis/keys.py: ``UserKeys.idempotency``, ``award_record``,
# ``xp_transaction``), in the bucket of the stream that carries it; an XP record names its user.
_RECORD_KEY = re.compile(
    r"ctr:\{b(\d+)\}:(?:idem:[0-9a-f]+|award:[0-9a-f]+|xptx:(.+):[^:]+)\Z", re.S
)


def _check_record_key(stream: str, scope: str, key: str) -> None:
    """``ValueError`` unless ``key`` is a record key of ``stream``'s bucket (an XP record's, of
    ``scope``). A recovery writes a record back at its key, before its user (``restore_record``
    with SET NX): an attacker's forged record naming ``ctr:{bN}:user:<uid>`` was ledgered, and
    after a Redis loss it took the user's key, so every request of that user answered 503
    (WRONGTYPE) until the record expired, its expiry as forged, and ``counters reconcile``
    stopped on it with a traceback."""
    match = _RECORD_KEY.match(key)
    if match is None:
        raise ValueError("record key is not an idempotency, award or XP record key")
    stream_tag = stream.partition("}")[0]
    if stream_tag.startswith("ctr:{b") and stream_tag[6:] != match[1]:
        raise ValueError("record key of another bucket than its stream's")
    if match[2] is not None and match[2] != scope:
        raise ValueError("XP record key of another user than its scope")


def _owner(stream: str, stream_id: str, fields: Mapping[str, str]) -> OwnerEvent:
    entity_type, sep, entity_id = fields.get("target", "").partition(":")
    if not (sep and entity_type and entity_id and fields.get("owner")):
        raise ValueError("entity_owner event without target <type>:<id> and owner")
    try:
        owner = msgspec.convert(fields, OwnerChange, strict=False)
    except msgspec.ValidationError as exc:
        raise _invalid(exc) from None
    return OwnerEvent(
        entity_type, entity_id, owner.owner, position(stream_id), owner.version, stream, owner.run
    )


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off for a block, back on after it as it was (a block inside
    another keeps it off). Meant for blocks that do not ``await`` (so no other task allocates
    meanwhile); one that does must be bounded in time (the flusher's read of a reply: its
    socket timeout), as other tasks' garbage waits for its end.

    Why: a batch of up to 16k entries allocates a few hundred thousand containers in one go (the
    reply's lists, the entries, the rows), none of them garbage; each 700 allocations start a
    collection, and the growing heap starts full ones, that find nothing. Measured on a 60k-event
    drain: 27-30 us of the flusher's CPU per event with the collector on, 19-22 off. The objects
    stay tracked: the first collection after the block sees them, once."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def sort_entries(entries: Iterable[tuple[str, str, Mapping[str, str] | None]]) -> Batch:
    """Sort (stream, id, fields) entries into a batch; a deleted entry (fields None) is skipped.
    Runs with the collector paused (``gc_paused``)."""
    with gc_paused():
        return _sort_entries(entries)


def _sort_entries(entries: Iterable[tuple[str, str, Mapping[str, str] | None]]) -> Batch:
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
    for event in events:  # the cheap comparisons first: this runs once per event of a batch
        row = rows.get(event.user_id)
        if row is None:
            row = rows[event.user_id] = TotalsRow(event.user_id)
        seq, totals = event.seq, event.totals
        if seq > row.seq:
            row.seq = seq
        if seq > row.exp_seq and "exp" in totals:
            row.exp_seq = seq
            row.exp = _int(totals["exp"], 0)
            row.level = _int(totals.get("level"), 1)
        if seq > row.xp_seq and (
            event.xp_state is not None or not _XP_FIELD_SET.isdisjoint(totals)
        ):
            row.xp_seq = seq
            row.xp = {name: totals.get(name) for name in XP_FIELDS}
            row.xp_state = event.xp_state
    return sorted(rows.values(), key=_USER)  # a fixed lock order across writers


_USER = attrgetter("user_id")
