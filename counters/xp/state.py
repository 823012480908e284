"""One user's XP state as the scripts keep it (the ``xp`` field of the user hash), and the
fixed-shape reply every XP script answers with.

The state is written only by ``lua/lib/xp_state.lua``; Python decodes it to report balances.
Times are unix seconds; an ``expires_at`` of None never expires.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from counters.clock import LATEST, iso_utc
from counters.errors import ScriptReplyError
from counters.redis.codes import XpOutcome


class Part(msgspec.Struct, frozen=True, kw_only=True):
    """XP a hold or debit took from one credit: the period's allocation or a top-up."""

    src: Literal["alloc", "grant"]
    xp: int
    epoch: int = 0
    id: str | None = None
    expires_at: int | None = None


class Grant(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    left: int
    expires_at: int | None


class Hold(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    amount: int
    expires_at: int
    generation_type: str
    parts: tuple[Part, ...]


class XpState(msgspec.Struct, frozen=True, kw_only=True):
    tier: str | None = None
    anchor: int = 0
    period_start: int = 0
    period_end: int = 0
    alloc: int = 0
    epoch: int = 0
    next_tier: str | None = None
    cancel_at_period_end: bool = False
    grants: tuple[Grant, ...] = ()
    holds: tuple[Hold, ...] = ()

    @property
    def topup(self) -> int:
        return sum(grant.left for grant in self.grants)

    @property
    def held(self) -> int:
        return sum(hold.amount for hold in self.holds)

    @property
    def balance(self) -> int:
        """What the user can spend: the allocation left plus top-ups (held XP is not in it)."""
        return self.alloc + self.topup


_state_decoder = msgspec.json.Decoder(XpState)
_OUTCOMES = {int(outcome): outcome for outcome in XpOutcome}


class XpReply(msgspec.Struct, frozen=True, gc=False):
    """A decoded script reply; what ``amount``, ``ref`` and ``extra`` mean is per script."""

    outcome: XpOutcome
    amount: int
    ref: str
    expires_at: int
    extra: int
    seq: int
    replayed: bool
    state: XpState


def decode_reply(script: str, reply: list[Any]) -> XpReply:
    """The typed reply of an XP script; an unknown code or shape is a ``ScriptReplyError``."""
    try:
        code, amount, ref, expires_at, extra, seq, replayed, state = reply
        outcome = _OUTCOMES.get(code)  # a dict lookup: XpOutcome(code) costs ~4x as much
        if outcome is None:
            outcome = XpOutcome(code)  # ValueError, naming the code
        decoded = _state_decoder.decode(state)
    except (ValueError, TypeError, msgspec.DecodeError) as exc:
        raise ScriptReplyError(f"{script} replied {reply[:7]!r}: {exc}") from exc
    return XpReply(
        outcome, int(amount), str(ref), int(expires_at), int(extra), int(seq), bool(replayed),
        decoded,
    )  # fmt: skip


def period_start_problem(start: int, now: float) -> str | None:
    """Why ``start`` (unix seconds, as the scripts keep it: ``counters.clock.unix_seconds`` of
    the caller's time) cannot start a subscription period, or None if it can: the rule of
    PUT /api/v1/subscriptions/{user_id} and of an import's subscription line alike.

    The bound is what the scripts can hold: they keep periods in whole seconds (a fraction of the
    caller's time is dropped, and the reply shows the start kept), and a period_start of 0 means
    "now" in their ARGV, so the earliest expressible start is 1970-01-01T00:00:01Z; a start later
    than ``now`` would be a period that has not begun. (The message said "after
    1970-01-01T00:00:00Z", which 1970-01-01T00:00:00.5Z is: a reviewer's finding.)"""
    if start <= 0:
        return (
            "period_start must be 1970-01-01T00:00:01Z or later (periods are kept in whole"
            " seconds: a fraction of a second is dropped)"
        )
    if start > now:
        return f"period_start must not be in the future (now is {iso_utc(int(now))})"
    return None


def expiry_problem(expires_at: int, now: float) -> str | None:
    """Why ``expires_at`` (unix seconds, as the scripts keep it) cannot end a top-up, or None if
    it can: the rule of POST /api/v1/xp/grants and of an import's topup line alike.

    It must be in the future (a top-up granted expired would be taken back at once), and its UTC
    instant at most 9999-12-31T23:59:59Z (``counters.clock.LATEST``): every reply that shows the
    top-up writes its expiry as a time, and none can be written later than that."""
    if expires_at <= now:
        return f"expires_at must be in the future (now is {iso_utc(int(now))})"
    if expires_at > LATEST:
        return (
            f"expires_at must be at most {iso_utc(LATEST)} in UTC, the latest time the service can"
            " show (leave it out for a top-up that never expires)"
        )
    return None
