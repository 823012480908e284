"""Files only their owner may read: credentials, passwords, the running server's URLs.

``write_private`` creates the file at mode 0600 from its first byte (a temporary file opened
with that mode, then renamed over the target), so no reader ever sees it 0644 or half written.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, readable and writable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def private_secret(path: Path) -> str:
    """The secret kept in ``path``, made (32 random URL-safe bytes, file 0600) if missing."""
    try:
        return path.read_text("utf-8").strip()
    except FileNotFoundError:
        secret = secrets.token_urlsafe(32)
        write_private(path, secret + "\n")
        return secret
