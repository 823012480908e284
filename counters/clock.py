"""The one place that decides "now", and the UTC-day arithmetic built on it.

Scripts never read Redis's clock: they receive the day and timestamps as arguments, so a test
can stand one second before midnight and one second after.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Protocol

import msgspec

SECONDS_PER_DAY = 86_400
# A time a caller hands in (a request body, an import line) must name its offset: a time without
# one means the sender's local time, which the service cannot know (``datetime.timestamp`` would
# read it in the server's).
AwareDatetime = Annotated[datetime, msgspec.Meta(tz=True)]


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
    """``ts`` as an aware UTC datetime."""
    return datetime.fromtimestamp(ts, UTC)
