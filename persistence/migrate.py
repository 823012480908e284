"""Versioned SQL migrations: ``persistence/migrations/NNNN_name.sql``, applied in order, once.

Each file runs in its own transaction together with its row in ``schema_migrations``, under an
advisory lock, so several processes starting at once apply each migration exactly once.
"""

from __future__ import annotations

import importlib.resources
import re
from dataclasses import dataclass

import asyncpg  # type: ignore[import-untyped]

from counters.errors import ConfigError

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_LOCK = 0x636F756E74657273  # "counters": the advisory lock every migrator takes


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """Every migration shipped with the package, in version order."""
    folder = importlib.resources.files(__package__ or "persistence").joinpath("migrations")
    found: list[Migration] = []
    for entry in folder.iterdir():
        match = _FILE.match(entry.name)
        if match is None:
            continue
        found.append(Migration(int(match.group(1)), match.group(2), entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise ConfigError(f"two migrations share a version: {versions}")
    return found


async def migrate(conn: asyncpg.Connection) -> list[Migration]:
    """Apply every migration not applied yet; returns the ones applied now."""
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        applied = {
            row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")
        }
        done: list[Migration] = []
        for migration in migrations():
            if migration.version in applied:
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
            done.append(migration)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK)


async def migrate_url(url: str, timeout: float = 60.0) -> list[Migration]:
    """Connect to ``url`` (within ``timeout`` seconds) and migrate it."""
    conn = await asyncpg.connect(url, timeout=timeout)
    try:
        return await migrate(conn)
    finally:
        await conn.close()
