"""All settings, read once from ``COUNTERS_*`` environment variables into one typed object."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from counters.errors import ConfigError


def _csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _path(value: str) -> Path:
    return Path(value).expanduser()


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Service settings; each field is read from ``COUNTERS_<FIELD NAME IN CAPITALS>``."""

    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    # None: `counters serve` starts the embedded server under data_dir.
    redis_url: str | None = None
    database_url: str | None = None
    data_dir: Path = Path(".counters")
    rules: Path | None = None
    jwt_secret: str | None = None
    service_keys: tuple[str, ...] = ()
    clock_offset_seconds: float = 0.0
    # Hash-tag buckets for user keys and event streams; fixed for the life of a deployment.
    key_buckets: int = 16
    idempotency_ttl_seconds: int = 86_400
    # Daily keys expire at the next UTC midnight plus this grace, plus up to jitter seconds.
    day_grace_seconds: int = 3_600
    day_jitter_seconds: int = 600
    max_body_bytes: int = 65_536
    redis_max_connections: int = 256
    # Script calls issued in one event-loop tick go to Redis as one write
    # (counters/redis/pipelining.py).
    redis_autopipeline: bool = True
    # An XP hold not captured or released by then returns to the balance by itself.
    hold_ttl_seconds: int = 900
    # The durable ledger (persistence/): the flusher runs inside every `serve` worker by default.
    database_max_connections: int = 10
    flusher_enabled: bool = True
    flush_batch: int = 1_000  # events read per stream per iteration (one transaction)
    flush_block_ms: int = 500  # how long one read waits for new events
    flush_claim_idle_ms: int = 30_000  # a dead consumer's unacknowledged events are taken after
    flush_backoff_max_seconds: float = 5.0  # retry delay cap while Postgres (or Redis) is down
    # Every worker polls the rules file this often and reloads it when it changed (0: only on
    # SIGHUP); see counters/runtime/reload.py.
    rules_watch_seconds: float = 2.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``COUNTERS_*`` variables; a bad value names its variable."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in fields(cls):
            name = f"COUNTERS_{field.name.upper()}"
            raw = env.get(name)
            if raw is None or raw == "":
                continue
            try:
                values[field.name] = _PARSERS[field.name](raw)
            except ValueError as exc:
                raise ConfigError(f"{name}={raw!r}: {exc}") from exc
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Reject values that cannot work."""
        checks = {
            "COUNTERS_PORT": 0 < self.port < 65_536,
            "COUNTERS_WORKERS": self.workers >= 1,
            "COUNTERS_KEY_BUCKETS": 1 <= self.key_buckets <= 16_384,
            "COUNTERS_IDEMPOTENCY_TTL_SECONDS": self.idempotency_ttl_seconds > 0,
            "COUNTERS_DAY_GRACE_SECONDS": self.day_grace_seconds >= 0,
            "COUNTERS_DAY_JITTER_SECONDS": self.day_jitter_seconds >= 0,
            "COUNTERS_MAX_BODY_BYTES": self.max_body_bytes > 0,
            "COUNTERS_REDIS_MAX_CONNECTIONS": self.redis_max_connections > 0,
            "COUNTERS_HOLD_TTL_SECONDS": 0 < self.hold_ttl_seconds <= 7 * 86_400,
            "COUNTERS_DATABASE_MAX_CONNECTIONS": self.database_max_connections > 0,
            "COUNTERS_FLUSH_BATCH": self.flush_batch > 0,
            "COUNTERS_FLUSH_BLOCK_MS": self.flush_block_ms > 0,
            "COUNTERS_FLUSH_CLAIM_IDLE_MS": self.flush_claim_idle_ms >= 0,
            "COUNTERS_FLUSH_BACKOFF_MAX_SECONDS": self.flush_backoff_max_seconds > 0,
            "COUNTERS_RULES_WATCH_SECONDS": self.rules_watch_seconds >= 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"out of range: {', '.join(bad)}")


def _parser(field_name: str) -> Callable[[str], Any]:
    special: dict[str, Callable[[str], Any]] = {
        "service_keys": _csv,
        "data_dir": _path,
        "rules": _path,
    }
    if field_name in special:
        return special[field_name]
    default = next(f.default for f in fields(Settings) if f.name == field_name)
    if isinstance(default, bool):
        return lambda raw: raw.strip().lower() in {"1", "true", "yes", "on"}
    if isinstance(default, int):
        return int
    if isinstance(default, float):
        return float
    return str


_PARSERS = {field.name: _parser(field.name) for field in fields(Settings)}
