"""Logging, configured once at start, and the request id every line of a request carries.

``configure`` gives the root logger one handler on stderr: level from COUNTERS_LOG_LEVEL,
format from COUNTERS_LOG_FORMAT (``text``: ``2026-11-21T12:00:00.123Z INFO logger [request id]
message``; ``json``: one object a line with ``ts``, ``level``, ``logger``, ``request_id``,
``message`` and ``exc_info`` when there is one). uvicorn's own loggers propagate to it.

The request id lives in a context variable: the HTTP layer sets it when a request arrives
(``X-Request-Id`` when the caller sent a usable one, else a fresh id), and every line logged
while serving that request, from any module, carries it; ``-`` outside a request.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import secrets
import sys
import time
from contextvars import ContextVar

from counters.ids import REQUEST_ID as REQUEST_ID_SHAPE
from counters.ids import is_whole

REQUEST_ID: ContextVar[str] = ContextVar("request_id", default="-")
ACCESS = logging.getLogger("counters.access")

_PREFIX = secrets.token_hex(4)
_COUNTER = itertools.count(1)


def new_request_id() -> str:
    """A request id unique to this process's life: a random prefix and a counter (cheap on the
    hot lane: no uuid, no syscall)."""
    return f"{_PREFIX}-{next(_COUNTER):x}"


def request_id_from(header: str | None) -> str:
    """The caller's ``X-Request-Id`` if it is 1-128 safe characters, else a fresh id."""
    if header is not None and is_whole(REQUEST_ID_SHAPE, header):
        return header
    return new_request_id()


def _reset_prefix_after_fork() -> None:
    global _PREFIX, _COUNTER
    _PREFIX, _COUNTER = secrets.token_hex(4), itertools.count(1)


os.register_at_fork(after_in_child=_reset_prefix_after_fork)


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


def _utc(record: logging.LogRecord) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


class TextFormatter(logging.Formatter):
    """``<UTC ISO time> <LEVEL> <logger> [<request id>] <message>``."""

    def format(self, record: logging.LogRecord) -> str:
        line = (
            f"{_utc(record)} {record.levelname} {record.name}"
            f" [{getattr(record, 'request_id', '-')}] {record.getMessage()}"
        )
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": _utc(record),
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        for extra in ("method", "route", "status", "duration_ms"):
            if hasattr(record, extra):
                entry[extra] = getattr(record, extra)
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(level: str = "info", fmt: str = "text") -> None:
    """Send every logger's records to stderr at ``level`` in ``fmt`` (text or json)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):  # theirs go through ours
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    # uvicorn writes an access line whenever "uvicorn.access" has a handler, its ancestors'
    # included, whatever ``access_log=False`` said: it must reach none. The app writes its own
    # (``access`` below, COUNTERS_ACCESS_LOG), with the route and the request id.
    uvicorn_access = logging.getLogger("uvicorn.access")
    uvicorn_access.handlers.clear()
    uvicorn_access.propagate = False


def access(method: str, route: str, path: str, status: int, seconds: float) -> None:
    """One access-log line (logger ``counters.access``, INFO)."""
    duration_ms = round(seconds * 1000, 3)
    ACCESS.info(
        "%s %s %d %.3fms", method, path, status, duration_ms,
        extra={"method": method, "route": route, "status": status, "duration_ms": duration_ms},
    )  # fmt: skip
