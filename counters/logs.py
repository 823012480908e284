r"""Logging, configured once at start, and the request id every line of a request carries.

``configure`` gives the root logger one handler on stderr: level from COUNTERS_LOG_LEVEL,
format from COUNTERS_LOG_FORMAT (``text``: ``2026-11-21T12:00:00.123Z INFO logger [request id]
message``; ``json``: one object a line with ``ts``, ``level``, ``logger``, ``request_id``,
``message`` and ``exc_info`` when there is one). uvicorn's own loggers propagate to it.

A record is one line in either format, whatever a caller put in it: a request path with ``%0A``
or ``%1b[31m`` in it, an id, a rules file's text. The text format escapes every character that
is not printable (``str.isprintable``: controls, line and paragraph separators, unassigned code
points) as ``\n``, ``\r``, ``\t`` or ``\xNN`` / ``\uNNNN`` / ``\UNNNNNNNN``, so a forged
line or a terminal escape never reaches the log raw (a traceback keeps its own line breaks, its
other characters escaped alike); the JSON format's strings escape them as ``\uNNNN``.

The request id lives in a context variable: the HTTP layer sets it when a request arrives
(``X-Request-Id`` when the caller sent a usable one, else a fresh id), and every line logged
while serving that request, from any module, carries it; ``-`` outside a request.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import secrets
import sys
import time
from collections.abc import Callable
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


_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _python_escape(char: str) -> str:
    code = ord(char)
    if char in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[char]
    return (
        f"\\x{code:02x}"
        if code < 0x100
        else f"\\u{code:04x}"
        if code < 0x10000
        else f"\\U{code:08x}"
    )


def _json_escape(char: str) -> str:
    code = ord(char)
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000  # a JSON string escapes an astral character as its UTF-16 surrogate pair
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def _escape_with(text: str, how: Callable[[str], str]) -> str:
    """``text`` with each character that is not printable replaced by ``how(char)``; unchanged,
    at the cost of one C loop, when all of it is printable (the access log's usual line)."""
    if text.isprintable():
        return text
    bad = "".join(re.escape(char) for char in set(text) if not char.isprintable())
    return re.sub(f"[{bad}]", lambda found: how(found[0]), text)


def escape(text: str) -> str:
    """``text`` with every character that is not printable escaped as Python writes it (a
    newline becomes the two characters backslash and n, ESC the four of ``\\x1b``); a backslash
    is left as it is."""
    return _escape_with(text, _python_escape)


def _utc(record: logging.LogRecord) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


class TextFormatter(logging.Formatter):
    """``<UTC ISO time> <LEVEL> <logger> [<request id>] <message>``, with what is not printable
    escaped (see the module's docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        line = (
            f"{_utc(record)} {record.levelname} {record.name}"
            f" [{getattr(record, 'request_id', '-')}] {escape(record.getMessage())}"
        )
        if record.exc_info:
            trace = self.formatException(record.exc_info).split("\n")
            line += "\n" + "\n".join(escape(part) for part in trace)
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
        # json.dumps escapes U+0000-U+001F; the other characters that are not printable
        # (U+007F-U+009F: a terminal's CSI among them, U+2028 for ``splitlines``, ...) too.
        return _escape_with(json.dumps(entry, ensure_ascii=False), _json_escape)


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
