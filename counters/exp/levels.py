"""Level progress: where a total EXP stands between its level and the next."""

from __future__ import annotations

import msgspec

from counters.rules import ExpRules


class Progress(msgspec.Struct, frozen=True, kw_only=True):
    current_level: int
    level_name: str
    total_exp: int
    current_level_exp: int
    exp_needed_for_next: int
    exp_to_next_level: int
    progress_percentage: float
    is_max_level: bool


def progress(rules: ExpRules, total_exp: int) -> Progress:
    """The seed's progress block for a total EXP (130 EXP: 30 of 200 into level 2, 15.0%)."""
    level = rules.level_for(total_exp)
    floor = rules.thresholds[level - 1]
    is_max = level == len(rules.levels)
    if is_max:
        needed, to_next, percentage = 0, 0, 100.0
    else:
        ceiling = rules.thresholds[level]
        needed = ceiling - floor
        to_next = ceiling - total_exp
        percentage = round((total_exp - floor) * 100 / needed, 1)
    return Progress(
        current_level=level,
        level_name=rules.levels[level - 1].name,
        total_exp=total_exp,
        current_level_exp=total_exp - floor,
        exp_needed_for_next=needed,
        exp_to_next_level=to_next,
        progress_percentage=percentage,
        is_max_level=is_max,
    )
