"""What one EXP award adds to the metrics (``counters.metrics``): its outcome, and near-limit
hits counted the way envoy's ratelimit counts them."""

from __future__ import annotations

import math

from counters.exp.types import AwardResult
from counters.metrics import AWARD_OUTCOMES, NEAR_LIMIT, NEAR_LIMIT_RATIO
from counters.redis.codes import AwardOutcome
from counters.rules import Action

_OUTCOME_LABEL = {
    AwardOutcome.LIMIT_REACHED: "limit",
    AwardOutcome.CAP_REACHED: "cap",
    AwardOutcome.ALREADY_TRIGGERED: "refused",
    AwardOutcome.TOTAL_LIMIT: "refused",
}


_FLOORS: dict[int, int] = {}  # limit -> floor(limit x 0.8): the rules' limits and caps, a few


def near(used: int, limit: int) -> bool:
    """envoy's near_limit: within ``limit`` and above ``floor(limit x 0.8)``."""
    floor = _FLOORS.get(limit)
    if floor is None:
        floor = math.floor(limit * NEAR_LIMIT_RATIO)
        if len(_FLOORS) < 1_024:
            _FLOORS[limit] = floor
    return floor < used <= limit


def count_award(action: Action, result: AwardResult) -> None:
    """Count one award that ran (not a replay) by action and outcome (awarded, partial: the
    daily cap cut it short, limit, cap or refused), and its near-limit hits."""
    if result.outcome is not AwardOutcome.AWARDED:
        AWARD_OUTCOMES.child(result.action, _OUTCOME_LABEL[result.outcome]).inc()
        return
    awarded = "awarded" if result.exp_added >= action.exp else "partial"  # cut by the cap
    AWARD_OUTCOMES.child(result.action, awarded).inc()
    if action.daily_limit is not None and near(result.action_count, action.daily_limit):
        NEAR_LIMIT.child(result.action, "action").inc()
    if near(result.daily_exp_gained, result.daily_exp_cap):
        NEAR_LIMIT.child(result.action, "cap").inc()
