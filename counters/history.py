"""A user's history from the ledger (issue #14): the query, its page, and the opaque cursor.

The ledger lives in Postgres only (``persistence/history.py`` runs the query); nothing here is on
the hot path. Pages are newest first and keyset-paginated on ``(occurred_at, seq)``: a cursor
names the last row of a page, and the next page starts strictly before it, so rows written
meanwhile never shift a page (new rows are newer than every cursor).

Two families share one ledger: ``exp`` (kinds ``exp_*``) and ``xp`` (kinds ``xp_*``); a
``reconcile_repair`` row belongs to the family its action names, as reconciliation counts it.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import msgspec

from counters.errors import InvalidRequest, shown
from counters.ids import NAME, is_digits, is_whole

Family = Literal["exp", "xp"]
REPAIR_KIND = "reconcile_repair"
DEFAULT_LIMIT = 50
MAX_LIMIT = 200
_CURSOR_VERSION = "v1"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# A cursor's parts as this service writes them: plain ASCII digits, a time Python's datetime can
# hold and a seq Postgres's bigint can (a tampered cursor is a 422, never a 500 or a 503).
_CURSOR_NUMBER = re.compile(r"[0-9]{1,19}")
_MAX_CURSOR_US = (datetime(9999, 12, 31, tzinfo=UTC) - _EPOCH) // timedelta(microseconds=1)
_MAX_SEQ = 2**63 - 1
# A "+" in a URL query arrives as a space: "...T00:00:00 00:00" was "...T00:00:00+00:00".
_LOST_PLUS = re.compile(r" (\d{2}:?\d{2})$")


class Cursor(msgspec.Struct, frozen=True, array_like=True):
    """The position of a page's last row: its time (µs since the epoch, UTC) and seq."""

    occurred_us: int
    seq: int

    def encode(self) -> str:
        """Opaque to clients: URL-safe base64 of ``v1:<µs>:<seq>``."""
        raw = f"{_CURSOR_VERSION}:{self.occurred_us}:{self.seq}".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        """A cursor this service made; ``InvalidRequest`` for anything else."""
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
            version, occurred, seq = raw.split(":")
            if version != _CURSOR_VERSION:
                raise ValueError(version)
            if not (_CURSOR_NUMBER.fullmatch(occurred) and _CURSOR_NUMBER.fullmatch(seq)):
                raise ValueError(raw)
            if int(occurred) > _MAX_CURSOR_US or int(seq) > _MAX_SEQ:
                raise ValueError(raw)
            return cls(int(occurred), int(seq))
        except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
            raise InvalidRequest("Invalid cursor: pass next_cursor from a previous page") from exc

    @classmethod
    def of(cls, occurred_at: datetime, seq: int) -> Cursor:
        """The cursor of a row (its time exact to the microsecond Postgres keeps)."""
        return cls((occurred_at - _EPOCH) // timedelta(microseconds=1), seq)

    @property
    def occurred_at(self) -> datetime:
        return _EPOCH + timedelta(microseconds=self.occurred_us)


class HistoryQuery(msgspec.Struct, frozen=True, kw_only=True):
    """One page request: whose rows, which family and kinds, a time range, where to start."""

    user_id: str
    family: Family
    kinds: tuple[str, ...] = ()  # empty: every kind of the family
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive
    cursor: Cursor | None = None
    limit: int = DEFAULT_LIMIT


class HistoryEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One ledger row as a client sees it: the change and the totals after it."""

    id: str  # the event id "<user>:<seq>": stable, the same in webhooks
    seq: int
    kind: str
    action: str
    amount: int  # signed change (EXP for the exp family, XP for xp)
    occurred_at: datetime
    actor: str
    target: str
    idempotency_key: str | None
    totals: dict[str, Any]  # after the change: exp and level, or xp_balance and its parts


class HistoryPage(msgspec.Struct, frozen=True, kw_only=True):
    """A page, newest first; ``next_cursor`` is None on the last page."""

    items: list[HistoryEntry]
    next_cursor: str | None


def parse_query(user_id: str, family: Family, params: Mapping[str, Sequence[str]]) -> HistoryQuery:
    """A query from URL parameters ``kind`` (repeated or comma-separated), ``since``, ``until``
    (ISO 8601; a time without offset is UTC; in UTC, within years 1-9999, as Python's datetime
    and so the driver), ``cursor`` and ``limit`` (1-200, default 50).

    Raises ``InvalidRequest`` naming the bad parameter."""
    unknown = sorted(set(params) - {"kind", "since", "until", "cursor", "limit"})
    if unknown:
        raise InvalidRequest(f"Unknown query parameter(s): {', '.join(unknown)}")
    kinds = tuple(k for value in params.get("kind", ()) for k in value.split(",") if k)
    for kind in kinds:
        if not is_whole(NAME, kind) or not (kind.startswith(f"{family}_") or kind == REPAIR_KIND):
            expected = f"{family}_... or {REPAIR_KIND}"  # "an": "exp" and "xp" open with a vowel
            raise InvalidRequest(
                f"kind '{shown(kind)}' is not an {family} ledger kind ({expected})"
            )
    since, until = _time(params, "since"), _time(params, "until")
    if since is not None and until is not None and since >= until:
        raise InvalidRequest("since must be before until")
    cursor = _single(params, "cursor")
    return HistoryQuery(
        user_id=user_id, family=family, kinds=kinds, since=since, until=until,
        cursor=Cursor.decode(cursor) if cursor is not None else None, limit=_limit(params),
    )  # fmt: skip


def _single(params: Mapping[str, Sequence[str]], name: str) -> str | None:
    values = params.get(name, ())
    if len(values) > 1:
        raise InvalidRequest(f"{name} may be given once")
    return values[0] if values else None


def _limit(params: Mapping[str, Sequence[str]]) -> int:
    raw = _single(params, "limit")
    if raw is None:
        return DEFAULT_LIMIT
    if not is_digits(raw) or not 1 <= int(raw) <= MAX_LIMIT:
        raise InvalidRequest(f"limit must be an integer from 1 to {MAX_LIMIT}")
    return int(raw)


def _time(params: Mapping[str, Sequence[str]], name: str) -> datetime | None:
    raw = _single(params, name)
    if raw is None:
        return None
    try:
        if not raw.isprintable():  # fromisoformat took "...Z" and a NUL after it as a time
            raise ValueError(raw)
        at = datetime.fromisoformat(_LOST_PLUS.sub(r"+\1", raw.strip()))
    except ValueError as exc:
        raise InvalidRequest(f"{name} must be an ISO 8601 time, e.g. 2026-11-21T00:00:00Z") from exc
    try:
        # The query compares in UTC, and asyncpg converts to it: a time whose UTC instant leaves
        # datetime's years 1-9999 (0001-01-01T00:00:00+14:00 is in year 0 there) was the
        # driver's DataError, answered 503 storage_unavailable and counted as a store failure.
        return at.astimezone(UTC) if at.tzinfo is not None else at.replace(tzinfo=UTC)
    except OverflowError as exc:
        raise InvalidRequest(
            f"{name} must be a time from 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999Z"
            f" in UTC;"
            f" {shown(raw)} is outside them"
        ) from exc
