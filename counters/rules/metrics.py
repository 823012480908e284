"""Metrics of the rules: which version each worker runs, reloads, and what shadow rules refused.

Defined with prometheus-client in the default registry, so whatever serves ``/metrics`` shows
them. Names: ``counters_rules_version_info{version}`` (1 for the loaded version),
``counters_rules_reloads_total{result="ok"|"invalid"|"unchanged"}`` and
``counters_shadow_refused_total{rule="daily_limit"|"daily_cap"|"tier_gate", name}``.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

RULES_VERSION = Gauge(
    "counters_rules_version_info", "The rules version this worker serves (value 1)", ["version"]
)
RULES_RELOADS = Counter(
    "counters_rules_reloads", "Rules reloads by result (invalid: the old rules stay)", ["result"]
)
SHADOW_REFUSED = Counter(
    "counters_shadow_refused",
    "Requests a rule in shadow mode would have refused (they were served)",
    ["rule", "name"],
)


def set_rules_version(version: str) -> None:
    """Show ``version`` as the one this worker serves (and no other)."""
    RULES_VERSION.clear()
    RULES_VERSION.labels(version=version).set(1)


def count_shadow_refusal(rule: str, name: str) -> None:
    """One request that ``rule`` (``daily_limit``, ``daily_cap``, ``tier_gate``) of ``name``
    (an action, a level, a tier) would have refused in enforcing mode."""
    SHADOW_REFUSED.labels(rule=rule, name=name).inc()
