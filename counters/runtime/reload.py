"""Rules that change without a restart: SIGHUP, or a change to the rules file, reloads them.

Every worker reloads on its own (``counters serve`` forwards SIGHUP to each worker, see
counters/cli/supervisor.py; every worker also polls the file's modification time). A reload
reads and validates the whole file first; only valid rules are swapped in, in one step with no
await in between (``Services.use_rules``), so a request sees the old rules or the new ones. An
invalid file keeps the old rules, logs one line and counts ``counters_rules_reloads_total``
with ``result="invalid"``; a reload that fails for any other reason (a bug) is logged with its
traceback, counted with ``result="error"`` and shown in ``/readyz``, and the file watch goes on.
Counters live in Redis and are never touched by a reload: a new limit or cap applies to today's
counts from the next request on.

Tiers are the exception to "anything valid goes": users' states hold their tier by name, so
rules that drop (or rename) a tier this deployment served are refused like an invalid file
(``check_tiers_kept``; retire a tier with ``retired = true`` instead). "Served" spans restarts:
every tier name served is recorded in Redis (the SET ``ctr:tiers``, ``settle_tiers``), and a
start whose rules lack one of them does not start (``ConfigError``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from redis.asyncio import Redis
from redis.exceptions import RedisError

from counters.errors import ConfigError, RulesError
from counters.redis.keys import SERVED_TIERS_KEY
from counters.rules import Rules, check_tiers_kept, parse_rules, rules_text, rules_version
from counters.rules.metrics import RULES_RELOADS

if TYPE_CHECKING:
    from counters.runtime.services import Services

log = logging.getLogger("counters.rules")

ReloadResult = Literal["ok", "unchanged", "invalid"]


def tier_names(rules: Rules) -> set[str]:
    """The names of the tiers ``rules`` define."""
    return {tier.name for tier in rules.xp.tiers}


async def settle_tiers(redis: Redis, rules: Rules, timeout: float) -> set[str]:
    """The tier names this deployment served (recorded in Redis) together with ``rules``',
    recorded in the same step. Raises ``ConfigError`` (the process must not start) when
    ``rules`` lack a recorded tier. Redis unreachable: not checked (a warning; ``serve`` must
    start and answer 503 while Redis is down), and only ``rules``' names are returned."""
    names = tier_names(rules)
    try:
        async with asyncio.timeout(timeout):
            recorded = {str(name) for name in await redis.smembers(SERVED_TIERS_KEY)}
            check_tiers_kept(recorded, rules)
            await redis.sadd(SERVED_TIERS_KEY, *names)
    except RulesError as exc:
        raise ConfigError(f"rules: {exc}") from exc
    except (RedisError, TimeoutError, OSError) as exc:
        log.warning("served tiers not checked against Redis (%s)", exc or type(exc).__name__)
        return names
    return recorded | names


class RulesReloader:
    """Reloads ``path`` (None: the shipped defaults, which never change) into ``services``.

    ``served``: the tier names the deployment served before (``settle_tiers``); a reload that
    drops one of them, or one of the running rules', is refused."""

    def __init__(
        self,
        services: Services,
        path: Path | None,
        watch_seconds: float,
        served: set[str] | None = None,
    ) -> None:
        self.services = services
        self.path = path
        self.watch_seconds = watch_seconds
        self.last_error: str | None = None
        self.served = (served or set()) | tier_names(services.rules)
        self._mtime = self._stat()
        self._task: asyncio.Task[None] | None = None
        self._record: asyncio.Task[None] | None = None
        self._signal = False

    def _stat(self) -> float | None:
        if self.path is None:
            return None
        try:
            return self.path.stat().st_mtime
        except OSError:
            return None

    def reload(self) -> ReloadResult:
        """Read, validate and swap in the rules file; an invalid one keeps the rules served."""
        try:
            rules = parse_rules(*rules_text(self.path))
            check_tiers_kept(self.served, rules)
        except RulesError as exc:
            self.last_error = str(exc)
            RULES_RELOADS.labels(result="invalid").inc()
            log.error(
                "rules reload refused, still serving %s: %s", self.services.rules_version, exc
            )
            return "invalid"
        self.last_error = None
        if rules_version(rules) == self.services.rules_version:
            RULES_RELOADS.labels(result="unchanged").inc()
            return "unchanged"
        self.services.use_rules(rules)
        RULES_RELOADS.labels(result="ok").inc()
        log.info("rules reloaded: version %s", self.services.rules_version)
        added = tier_names(rules) - self.served
        if added:
            self.served |= added
            with contextlib.suppress(RuntimeError):  # no running loop: recorded at next start
                self._record = asyncio.get_running_loop().create_task(
                    self._record_tiers(added), name="rules-record-tiers"
                )
        return "ok"

    async def _record_tiers(self, names: set[str]) -> None:
        """Record new tier names as served (``ctr:tiers``); a failure is logged: the names are
        recorded again by the next start that serves them."""
        timeout = max(self.services.settings.redis_timeout_seconds, 1.0)
        try:
            async with asyncio.timeout(timeout):
                await self.services.redis.sadd(SERVED_TIERS_KEY, *names)
        except (RedisError, TimeoutError, OSError) as exc:
            log.warning("new tiers not recorded in Redis (%s)", exc or type(exc).__name__)

    def start(self) -> None:
        """Reload on SIGHUP, and poll the file every ``watch_seconds`` (0: no polling)."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not main thread
            loop.add_signal_handler(signal.SIGHUP, self._reload_guarded)
            self._signal = True
        if self.path is not None and self.watch_seconds > 0:
            self._task = loop.create_task(self._watch(), name="rules-watch")

    def _reload_guarded(self) -> None:
        """``reload``, where nothing awaits its result (SIGHUP, the file watch): an unexpected
        exception is logged, counted (``result="error"``) and shown in ``/readyz``, not raised.

        Raised, it ended the watch task silently (nothing awaits it until ``close``) and never
        reloaded again, or became asyncio's "Exception in callback" traceback for SIGHUP
        (reviewer helper-66, with a rules file that was not UTF-8)."""
        try:
            self.reload()
        except Exception as exc:  # a bug, not a bad file: the next change is still read
            self.last_error = f"{self.path}: reload failed: {exc!r}"
            RULES_RELOADS.labels(result="error").inc()
            log.exception("rules reload failed, still serving %s", self.services.rules_version)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.watch_seconds)
            mtime = self._stat()
            if mtime is not None and mtime != self._mtime:
                self._mtime = mtime
                self._reload_guarded()

    async def close(self) -> None:
        """Stop watching (and listening for SIGHUP)."""
        if self._signal:
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        for task in (self._task, self._record):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
