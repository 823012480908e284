"""Rules that change without a restart: SIGHUP, or a change to the rules file, reloads them.

Every worker reloads on its own (``counters serve`` forwards SIGHUP to each worker, see
counters/cli/supervisor.py; every worker also polls the file's modification time). A reload
reads and validates the whole file first; only valid rules are swapped in, in one step with no
await in between (``Services.use_rules``), so a request sees the old rules or the new ones. An
invalid file keeps the old rules, logs one line and counts ``counters_rules_reloads_total``
with ``result="invalid"``. Counters live in Redis and are never touched by a reload: a new limit
or cap applies to today's counts from the next request on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from counters.errors import RulesError
from counters.rules import parse_rules, rules_text, rules_version
from counters.rules.metrics import RULES_RELOADS

if TYPE_CHECKING:
    from counters.runtime.services import Services

log = logging.getLogger("counters.rules")

ReloadResult = Literal["ok", "unchanged", "invalid"]


class RulesReloader:
    """Reloads ``path`` (None: the shipped defaults, which never change) into ``services``."""

    def __init__(self, services: Services, path: Path | None, watch_seconds: float) -> None:
        self.services = services
        self.path = path
        self.watch_seconds = watch_seconds
        self.last_error: str | None = None
        self._mtime = self._stat()
        self._task: asyncio.Task[None] | None = None
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
        return "ok"

    def start(self) -> None:
        """Reload on SIGHUP, and poll the file every ``watch_seconds`` (0: no polling)."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not main thread
            loop.add_signal_handler(signal.SIGHUP, self.reload)
            self._signal = True
        if self.path is not None and self.watch_seconds > 0:
            self._task = loop.create_task(self._watch(), name="rules-watch")

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.watch_seconds)
            mtime = self._stat()
            if mtime is not None and mtime != self._mtime:
                self._mtime = mtime
                self.reload()

    async def close(self) -> None:
        """Stop watching (and listening for SIGHUP)."""
        if self._signal:
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
