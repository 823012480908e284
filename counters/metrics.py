"""Prometheus metrics: every metric object of the service, in one module (prometheus-client).

Domain code, the durable side and the API all count here; nothing else creates a metric. Names
and labels are listed in the README ("Operations"). To add one: declare it below with a
``counters_`` name and a help text, and for a labelled metric used per request, go through a
``Children`` cache (``AWARD_OUTCOMES.child(action, outcome).inc()``) so the request pays one dict
lookup instead of prometheus-client's locked label resolution.

Across processes: ``counters serve --workers N`` (N > 1) points ``PROMETHEUS_MULTIPROC_DIR`` at a
fresh directory under the data dir before the workers start (``prepare_multiprocess_dir``);
prometheus-client then keeps every value in a memory-mapped file per process, and ``render()``
sums them, so any worker's ``GET /metrics`` shows the whole server. The variable must be set
before this module is first imported in a process (prometheus-client picks its value store at
import); a single-process server keeps the values in memory.

Gauges are "most recent" across processes: the flusher lag of the last worker that measured it,
the rules version last loaded.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Read once, as prometheus-client does at import: the two must agree for the whole process.
MULTIPROCESS_DIR: str | None = os.environ.get(MULTIPROC_ENV) or None
CONTENT_TYPE = CONTENT_TYPE_LATEST

M = TypeVar("M", Counter, Gauge, Histogram)


class Children(Generic[M]):
    """A metric's labelled children, resolved once per label tuple and then looked up."""

    def __init__(self, metric: M) -> None:
        self.metric: M = metric
        self._children: dict[tuple[str, ...], M] = {}

    def child(self, *labels: str) -> M:
        """The child for ``labels`` (in the metric's label order)."""
        found = self._children.get(labels)
        if found is None:
            found = self._children[labels] = self.metric.labels(*labels)
        return found


# HTTP, every route including the hot lane. Its _count is the request count per route+status.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
HTTP_REQUESTS = Children(
    Histogram(
        "counters_http_request_duration_seconds",
        "Time from the request's arrival in the app to its last byte sent, per route and status"
        " (_count: requests); route is the route's path, or 'other' for unknown paths.",
        ["route", "status"],
        buckets=_LATENCY_BUCKETS,
    )
)

# EXP awards (counters.exp.service): awarded, partial (cut by the daily cap), limit, cap,
# refused (the actor already triggered it for this target). Replays are not counted again.
AWARD_OUTCOMES = Children(
    Counter(
        "counters_exp_awards_total",
        "EXP award attempts per action and outcome",
        ["action", "outcome"],
    )
)
# As envoy's ratelimit counts near_limit: a hit that is within the limit but leaves usage above
# 80% of it. limit="action" is the action's daily limit, limit="cap" the daily EXP cap.
NEAR_LIMIT_RATIO = 0.8
NEAR_LIMIT = Children(
    Counter(
        "counters_exp_near_limit_total",
        "Awards within a daily limit that left usage above 80% of it, per action and limit",
        ["action", "limit"],
    )
)
# XP debits and holds (counters.xp.service): debited (or held), insufficient (402),
# tier_required (403), other (any other script outcome).
XP_OUTCOMES = Children(
    Counter(
        "counters_xp_debits_total",
        "XP debit and hold attempts per generation type and outcome",
        ["generation_type", "outcome"],
    )
)
# Users Redis did not hold, loaded from Postgres: restored (Postgres knew them), new, failed.
HYDRATIONS = Children(
    Counter("counters_hydrations_total", "Users hydrated from Postgres, by result", ["result"])
)
# Store failures seen by requests and the flusher: store=redis|postgres, kind=error|timeout.
STORE_ERRORS = Children(
    Counter(
        "counters_store_errors_total",
        "Redis and Postgres failures, by store and kind",
        ["store", "kind"],
    )
)
# The flusher (persistence.flusher).
FLUSHER_LAG_EVENTS = Gauge(
    "counters_flusher_lag_events", "Events in the streams not yet in the ledger",
    multiprocess_mode="mostrecent",
)  # fmt: skip
FLUSHER_LAG_SECONDS = Gauge(
    "counters_flusher_lag_seconds", "Age of the oldest event not yet in the ledger",
    multiprocess_mode="mostrecent",
)  # fmt: skip
LEDGER_ROWS = Counter("counters_ledger_rows_total", "Events written to the Postgres ledger")
LEDGER_QUARANTINED = Counter(
    "counters_ledger_quarantined_total", "Events the flusher could not ledger (ledger_quarantine)"
)
FLUSH_FAILURES = Counter("counters_flusher_failures_total", "Flusher iterations that failed")
# The rules (counters.rules, counters.runtime.reload): the version each worker serves, reloads,
# and what a rule in shadow mode would have refused.
RULES_VERSION = Gauge(
    "counters_rules_version_info", "The rules version this worker serves (value 1)",
    ["version"], multiprocess_mode="mostrecent",
)  # fmt: skip
RULES_RELOADS = Counter(
    "counters_rules_reloads", "Rules reloads by result (invalid: the old rules stay)", ["result"]
)
SHADOW_REFUSED = Batched(
    Counter(
        "counters_shadow_refused",
        "Requests a rule in shadow mode would have refused (they were served)",
        ["rule", "name"],
    )
)

_rules_versions: set[str] = set()  # reported by this process


def set_rules_version(version: str) -> None:
    """Show ``version`` as the one this worker serves (1) and any earlier one as gone (0); a
    reload calls this again. (prometheus-client cannot remove a label in multiprocess mode.)"""
    for old in _rules_versions - {version}:
        RULES_VERSION.labels(old).set(0)
    _rules_versions.add(version)
    RULES_VERSION.labels(version).set(1)


def count_shadow_refusal(rule: str, name: str) -> None:
    """One request that ``rule`` (``daily_limit``, ``daily_cap``, ``tier_gate``) of ``name``
    (an action, a level, a tier) would have refused in enforcing mode."""
    SHADOW_REFUSED.child(rule, name).inc()


def count_store_error(exc: BaseException) -> None:
    """Count a store failure; the store and kind are read from the exception's causes.

    Postgres when an asyncpg exception is among the causes, else Redis; a timeout when any
    cause is a ``TimeoutError`` (redis-py's timeout error, asyncio's and the builtin one)."""
    store, kind = "redis", "error"
    seen: BaseException | None = exc
    for _ in range(8):  # causes chain a few levels deep at most
        if seen is None:
            break
        module = type(seen).__module__
        if module.startswith("asyncpg"):
            store = "postgres"
        if isinstance(seen, TimeoutError) or type(seen).__name__ == "TimeoutError":
            kind = "timeout"
        seen = seen.__cause__ or seen.__context__
    STORE_ERRORS.child(store, kind).inc()


def prepare_multiprocess_dir(path: Path) -> dict[str, str]:
    """Empty ``path`` (left from an earlier run) and return the environment that points
    worker processes at it."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, mode=0o700)
    return {MULTIPROC_ENV: str(path.resolve())}


def render() -> tuple[bytes, str]:
    """The exposition text of every metric (summed over the worker processes) and its type."""
    if MULTIPROCESS_DIR is None:
        return generate_latest(REGISTRY), CONTENT_TYPE
    registry = CollectorRegistry()
    _multiprocess.MultiProcessCollector(registry, MULTIPROCESS_DIR)  # type: ignore[no-untyped-call]
    return generate_latest(registry), CONTENT_TYPE


Observe = Callable[[float], None]
