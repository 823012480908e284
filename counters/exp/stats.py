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


def award_outcome_label(action: Action, result: AwardResult) -> str:
    """awarded, partial (the daily cap cut the award short), limit, cap or refused."""
    if result.outcome is AwardOutcome.AWARDED:
        return "awarded" if result.exp_added >= action.exp else "partial"
    return _OUTCOME_LABEL[result.outcome]


def near(used: int, limit: int) -> bool:
    """envoy's near_limit: within ``limit`` and above ``floor(limit x 0.8)``."""
    return math.floor(limit * NEAR_LIMIT_RATIO) < used <= limit


def count_award(action: Action, result: AwardResult) -> None:
    """Count one award that ran (not a replay) by action and outcome, and its near-limit hits."""
    AWARD_OUTCOMES.child(result.action, award_outcome_label(action, result)).inc()
    if result.outcome is not AwardOutcome.AWARDED:
        return
    if action.daily_limit is not None and near(result.action_count, action.daily_limit):
        NEAR_LIMIT.child(result.action, "action").inc()
    if near(result.daily_exp_gained, result.daily_exp_cap):
        NEAR_LIMIT.child(result.action, "cap").inc()
