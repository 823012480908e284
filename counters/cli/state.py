"""The state file of a running ``counters serve``: how other commands find its servers.

``serve`` writes ``<data dir>/serve.json`` (mode 0600: the URLs carry the embedded servers'
passwords) once its Redis and Postgres are up, and removes it when it exits. ``counters
flush|reconcile|migrate`` run with the same data dir read it for any URL not set in their
environment, so they work beside ``make run`` instead of starting a second embedded server.
A file whose process is gone (``serve`` was killed) is ignored and replaced.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from counters.cli.private import write_private

STATE_FILE = "serve.json"


@dataclass(frozen=True, slots=True)
class ServeState:
    pid: int
    api_url: str
    redis_url: str
    database_url: str


def write_state(data_dir: Path, state: ServeState) -> Path:
    """Record the running serve; the file's path."""
    path = data_dir / STATE_FILE
    write_private(path, json.dumps(asdict(state), indent=2) + "\n")
    return path


def running_serve(data_dir: Path) -> ServeState | None:
    """The serve running on ``data_dir``, if its state file names a live process."""
    try:
        state = ServeState(**json.loads((data_dir / STATE_FILE).read_text("utf-8")))
    except (OSError, ValueError, TypeError):
        return None
    try:
        os.kill(state.pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, another user's
    return state


def clear_state(data_dir: Path) -> None:
    """Remove the state file if it is this process's."""
    path = data_dir / STATE_FILE
    try:
        if json.loads(path.read_text("utf-8")).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError, AttributeError):
        pass


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***``, for messages."""
    scheme, sep, rest = url.partition("://")
    if sep and "," in rest.partition("/")[0]:  # redis+cluster://:pw@h:p,h:p (several hosts)
        auth, at, hosts = rest.rpartition("@")
        if not at or ":" not in auth:
            return url
        return f"{scheme}://{auth.partition(':')[0]}:***@{hosts}"
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
