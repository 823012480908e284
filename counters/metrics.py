"""Prometheus metrics: every metric object of the service, in one module (prometheus-client).

Domain code, the durable side and the API all count here; nothing else creates a metric. Names
and labels are listed in the README ("Operations"). To add one: declare it below with a
``counters_`` name and a help text. A metric counted per request goes through ``Batched``
(``AWARD_OUTCOMES.child(action, outcome).inc()``): the request only adds to a plain Python
number (one dict lookup, one addition: ~0.2 us), and ``flush()`` moves what accumulated into
prometheus-client, whose multiprocess values cost 3-10 us per update (a lock and an mmap
write each; measured). ``flush()`` runs every second in each serving process
(``flush_every``), before every scrape, and at shutdown, so a scrape is at most a second behind
the other workers. Metrics updated a few times a second (the flusher's) are used directly.

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

import asyncio
import math
import os
import shutil
from bisect import bisect_left
from collections.abc import Callable
from pathlib import Path
from typing import Any

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

from counters.errors import StorageError

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Read once, as prometheus-client does at import: the two must agree for the whole process.
MULTIPROCESS_DIR: str | None = os.environ.get(MULTIPROC_ENV) or None
CONTENT_TYPE = CONTENT_TYPE_LATEST


class PendingCount:
    """A counter child's increments, held in this process until ``flush()``."""

    __slots__ = ("_child", "pending")

    def __init__(self, child: Counter) -> None:
        self._child = child
        self.pending = 0.0

    def inc(self, amount: float = 1.0) -> None:
        """Count ``amount`` (>= 0)."""
        self.pending += amount

    def flush(self) -> None:
        if self.pending:
            amount, self.pending = self.pending, 0.0
            self._child.inc(amount)


class PendingObservations:
    """A histogram child's observations, bucketed here until ``flush()``."""

    __slots__ = ("_bounds", "_child", "counts", "total")

    def __init__(self, child: Histogram, bounds: tuple[float, ...]) -> None:
        self._child = child
        self._bounds = (*bounds, math.inf)
        self.counts = [0] * len(self._bounds)
        self.total = 0.0

    def observe(self, amount: float) -> None:
        """Observe ``amount`` (seconds): its bucket is the first bound >= it, as in Prometheus."""
        self.total += amount
        self.counts[bisect_left(self._bounds, amount)] += 1

    def flush(self) -> None:
        counts, self.counts = self.counts, [0] * len(self._bounds)
        if not any(counts):
            return
        total, self.total = self.total, 0.0
        # prometheus-client has no observe-many: add to its per-bucket values (non-cumulative,
        # one per bound in order, as its own observe() does) and to the sum.
        for value, count in zip(self._child._buckets, counts, strict=True):
            if count:
                value.inc(count)
        self._child._sum.inc(total)


_PENDING: list[PendingCount | PendingObservations] = []


class Batched:
    """A labelled counter or histogram whose children are updated in batches (see above)."""

    def __init__(self, metric: Counter | Histogram, buckets: tuple[float, ...] = ()) -> None:
        self.metric = metric
        self._buckets = buckets
        self._children: dict[tuple[str, ...], Any] = {}

    def child(self, *labels: str) -> Any:
        """The child for ``labels`` (in the metric's label order): ``inc()`` for a counter,
        ``observe(seconds)`` for a histogram."""
        found = self._children.get(labels)
        if found is None:
            child = self.metric.labels(*labels)
            if isinstance(child, Histogram):
                found = PendingObservations(child, self._buckets)
            else:
                found = PendingCount(child)
            self._children[labels] = found
            _PENDING.append(found)
        return found


def flush() -> None:
    """Move every batched update of this process into prometheus-client."""
    for pending in _PENDING:
        pending.flush()


async def flush_every(seconds: float) -> None:
    """``flush()`` every ``seconds`` until cancelled (then once more)."""
    try:
        while True:
            await asyncio.sleep(seconds)
            flush()
    finally:
        flush()


# HTTP, every route including the hot lane. Its _count is the request count per route+status.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
HTTP_REQUESTS = Batched(
    Histogram(
        "counters_http_request_duration_seconds",
        "Time from the request's arrival in the app to its last byte sent, per route and status"
        " (_count: requests); route is the route's path, or 'other' for unknown paths.",
        ["route", "status"],
        buckets=_LATENCY_BUCKETS,
    ),
    _LATENCY_BUCKETS,
)

# EXP awards (counters.exp.service): awarded, partial (cut by the daily cap), limit, cap,
# refused (the actor already triggered it for this target). Replays are not counted again.
AWARD_OUTCOMES = Batched(
    Counter(
        "counters_exp_awards_total",
        "EXP award attempts per action and outcome",
        ["action", "outcome"],
    )
)
# As envoy's ratelimit counts near_limit: a hit that is within the limit but leaves usage above
# 80% of it. limit="action" is the action's daily limit, limit="cap" the daily EXP cap.
NEAR_LIMIT_RATIO = 0.8
NEAR_LIMIT = Batched(
    Counter(
        "counters_exp_near_limit_total",
        "Awards within a daily limit that left usage above 80% of it, per action and limit",
        ["action", "limit"],
    )
)
# XP debits and holds (counters.xp.service): debited (or held), insufficient (402),
# tier_required (403), other (any other script outcome).
XP_OUTCOMES = Batched(
    Counter(
        "counters_xp_debits_total",
        "XP debit and hold attempts per generation type and outcome",
        ["generation_type", "outcome"],
    )
)
# Users Redis did not hold, loaded from Postgres: restored (Postgres knew them), new, failed.
HYDRATIONS = Batched(
    Counter("counters_hydrations_total", "Users hydrated from Postgres, by result", ["result"])
)
# Store failures seen by requests and the flusher: store=redis|postgres, kind=error|timeout.
STORE_ERRORS = Batched(
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
# Webhook delivery (persistence/webhooks/deliverer.py): a few updates a second, used directly.
WEBHOOK_ATTEMPTS = Counter(
    "counters_webhook_attempts",
    "Webhook POSTs by event type and result (ok: 2xx; error: anything else, or no answer)",
    ["type", "result"],
)
WEBHOOK_DELIVERED = Counter(
    "counters_webhook_delivered", "Webhook events every endpoint accepted", ["type"]
)
WEBHOOK_FAILED = Counter(
    "counters_webhook_failed", "Webhook events given up after the last attempt", ["type"]
)
WEBHOOK_SECONDS = Histogram("counters_webhook_request_seconds", "Time of one webhook POST")
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
    """Show ``version`` as the one this worker serves (1); a reload calls this again. An earlier
    version disappears, or shows 0 with several workers (prometheus-client cannot remove a
    label in multiprocess mode)."""
    if MULTIPROCESS_DIR is None:
        RULES_VERSION.clear()  # one process: the old version simply disappears
    for old in _rules_versions - {version} if MULTIPROCESS_DIR is not None else ():
        RULES_VERSION.labels(old).set(0)
    _rules_versions.add(version)
    RULES_VERSION.labels(version).set(1)


def count_shadow_refusal(rule: str, name: str) -> None:
    """One request that ``rule`` (``daily_limit``, ``daily_cap``, ``tier_gate``) of ``name``
    (an action, a level, a tier) would have refused in enforcing mode."""
    SHADOW_REFUSED.child(rule, name).inc()


def count_store_error(exc: BaseException) -> None:
    """Count a store failure; the store and kind are read from the exception and its causes.

    The store is the one the outermost ``StorageError`` that names one was raised for (each
    store's boundary raises its own subclass); failing that, Postgres when an asyncpg exception
    is among the causes, else Redis. A timeout when any cause is a ``TimeoutError`` (redis-py's
    timeout error, asyncio's and the builtin one)."""
    named, guessed, kind = "", "redis", "error"
    seen: BaseException | None = exc
    for _ in range(8):  # causes chain a few levels deep at most
        if seen is None:
            break
        if not named and isinstance(seen, StorageError) and seen.store != StorageError.store:
            named = seen.store
        if type(seen).__module__.startswith("asyncpg"):
            guessed = "postgres"
        if isinstance(seen, TimeoutError) or type(seen).__name__ == "TimeoutError":
            kind = "timeout"
        seen = seen.__cause__ or seen.__context__
    STORE_ERRORS.child(named or guessed, kind).inc()


def prepare_multiprocess_dir(path: Path) -> dict[str, str]:
    """Empty ``path`` (left from an earlier run) and return the environment that points
    worker processes at it."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, mode=0o700)
    return {MULTIPROC_ENV: str(path.resolve())}


def render() -> tuple[bytes, str]:
    """The exposition text of every metric (summed over the worker processes) and its type."""
    flush()
    if MULTIPROCESS_DIR is None:
        return generate_latest(REGISTRY), CONTENT_TYPE
    registry = CollectorRegistry()
    _multiprocess.MultiProcessCollector(registry, MULTIPROCESS_DIR)  # type: ignore[no-untyped-call]
    return generate_latest(registry), CONTENT_TYPE


Observe = Callable[[float], None]
