"""The one place that decides "now", and the UTC-day arithmetic built on it.

Scripts never read Redis's clock: they receive the day and timestamps as arguments, so a test
can stand one second before midnight and one second after.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Protocol

import msgspec

SECONDS_PER_DAY = 86_400
# A time a caller hands in (a request body, an import line) must name its offset: a time without
# one means the sender's local time, which the service cannot know (``datetime.timestamp`` would
# read it in the server's).
AwareDatetime = Annotated[datetime, msgspec.Meta(tz=True)]
# The last second a reply can show: Python's datetime ends at 9999-12-31T23:59:59.999999, so a
# later time cannot be written as one. A time a caller hands in to be kept and shown later (a
# top-up's expires_at) must be at most this: a grant expiring in year 10000 UTC was applied,
# then answered 500, and so did the user's balance from then on (a reviewer's finding).
LATEST = 253_402_300_799  # 9999-12-31T23:59:59Z
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = timedelta(seconds=1)


class Clock(Protocol):
    def now(self) -> float:
        """Unix time in seconds."""
        ...


@dataclass(frozen=True, slots=True)
class SystemClock:
    """Wall-clock time, shifted by ``offset_seconds`` (COUNTERS_CLOCK_OFFSET_SECONDS)."""

    offset_seconds: float = 0.0

    def now(self) -> float:
        return time.time() + self.offset_seconds


@dataclass(slots=True)
class ManualClock:
    """A clock that moves only when told to (tests, simulations)."""

    at: float

    def now(self) -> float:
        return self.at

    def advance(self, seconds: float) -> None:
        self.at += seconds


def utc_day(ts: float) -> str:
    """The UTC calendar day of ``ts`` as ``YYYYMMDD``: the window part of daily keys."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y%m%d")


def next_utc_midnight(ts: float) -> int:
    """Unix time of the first UTC midnight after ``ts``."""
    return (int(ts) // SECONDS_PER_DAY + 1) * SECONDS_PER_DAY


def to_datetime(ts: float) -> datetime:
    """``ts`` as an aware UTC datetime; a time past ``LATEST`` as ``LATEST``.

    Input is refused past ``LATEST``; the clamp is for what was stored before it was: a top-up
    expiring in year 10000 UTC, granted or imported then, would otherwise make every reply that
    shows it a 500 for good (the user's balance, the grant's replay), and no route removes a
    top-up. Shown at most a day early, in year 9999: for every purpose here, "never"."""
    return datetime.fromtimestamp(ts if ts <= LATEST else LATEST, UTC)


def iso_utc(ts: float) -> str:
    """``ts`` as the replies write a time, in JSON bodies and in a ``detail`` alike: ISO 8601
    in UTC with ``Z`` (``2026-11-20T00:00:00Z``, as msgspec encodes an aware UTC datetime)."""
    return to_datetime(ts).isoformat().replace("+00:00", "Z")


def unix_seconds(at: datetime) -> int:
    """The unix second an aware ``at`` falls in (a fraction of a second is dropped): how the
    scripts keep a time a caller hands in. Exact, where ``int(at.timestamp())`` is not: a float
    cannot hold 9999-12-31T23:59:59.999999Z, which rounds up into year 10000."""
    return (at - _EPOCH) // _SECOND
