"""Metrics of the rules: which version each worker runs, reloads, and what shadow rules refused.

They live with every other metric in ``counters.metrics`` (one module, one multiprocess set-up);
this module names the ones the rules code uses. Names: ``counters_rules_version_info{version}``
(1 for the loaded version),
``counters_rules_reloads_total{result="ok"|"invalid"|"unchanged"|"error"}`` and
``counters_shadow_refused_total{rule="daily_limit"|"daily_cap"|"tier_gate", name}``.
"""

from __future__ import annotations

from counters.metrics import (
    RULES_RELOADS,
    RULES_VERSION,
    SHADOW_REFUSED,
    count_shadow_refusal,
    set_rules_version,
)

__all__ = [
    "RULES_RELOADS",
    "RULES_VERSION",
    "SHADOW_REFUSED",
    "count_shadow_refusal",
    "set_rules_version",
]
