"""All settings, read once from ``COUNTERS_*`` environment variables into one typed object.

Parsing is strict: a value that is not exactly of its type, or is out of its range, is a
``ConfigError`` naming the variable (``COUNTERS_FLUSHER_ENABLED='ture': not a boolean (...)``),
never a silent default. Adding a setting is one line: a field with its type (``bool``, ``int``,
``float``, ``str``, ``Path``, a ``tuple[str, ...]`` read as comma-separated; ``X | None`` for
optional) and, when it has one, a range (``bounded(default, ge=..., le=...)``) or a choice of
words (``one_of(default, "a", "b")``). The ``parse_*`` helpers are reusable on their own: each
takes the variable's name and its raw text and raises ``ConfigError`` naming the variable.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from counters.errors import ConfigError
from counters.ids import is_digits

_TRUE = frozenset({"1", "true", "yes"})
_FALSE = frozenset({"0", "false", "no"})


def parse_bool(name: str, raw: str) -> bool:
    """true/false, 1/0, yes/no (any case); anything else is an error naming ``name``."""
    word = raw.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ConfigError(f"{name}={raw!r}: not a boolean (use true/false, 1/0 or yes/no)")


def parse_int(name: str, raw: str) -> int:
    """A base-10 integer in ASCII (underscores allowed); an error naming ``name`` otherwise.
    ``int`` also reads other scripts' digits (``COUNTERS_PORT=``U+FF18... was port 8000: a
    reviewer's finding), which no operator means and no log shows as a number."""
    try:
        if not raw.isascii():
            raise ValueError(raw)
        return int(raw.strip())
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: not an integer") from None


def parse_float(name: str, raw: str) -> float:
    """A finite decimal number in ASCII (underscores allowed, as ``parse_int``); an error
    naming ``name`` otherwise."""
    try:
        if not raw.isascii():
            raise ValueError(raw)
        value = float(raw.strip())
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ConfigError(f"{name}={raw!r}: not a finite number")
    return value


def parse_str(name: str, raw: str) -> str:
    """The text as given."""
    return raw


def parse_path(name: str, raw: str) -> Path:
    """A filesystem path; ``~`` expands to the home directory."""
    return Path(raw).expanduser()


def parse_csv(name: str, raw: str) -> tuple[str, ...]:
    """Comma-separated words; blanks around and between commas are dropped."""
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def check_range(
    name: str, value: float, *, ge: float | None = None, gt: float | None = None,
    le: float | None = None,
) -> None:  # fmt: skip
    """Raise ``ConfigError`` naming ``name`` when ``value`` is outside the bounds given."""
    if (
        (ge is not None and value < ge)
        or (gt is not None and value <= gt)
        or (le is not None and value > le)
    ):
        low = f">= {ge}" if ge is not None else f"> {gt}" if gt is not None else ""
        high = f"<= {le}" if le is not None else ""
        bounds = " and ".join(part for part in (low, high) if part)
        raise ConfigError(f"{name}={value!r}: out of range (must be {bounds})")


REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster")
DATABASE_SCHEMES = ("postgresql", "postgres")


def check_url(name: str, url: str, schemes: tuple[str, ...]) -> None:
    """Raise ``ConfigError`` naming ``name`` unless ``url`` is ``<scheme>://...`` with one of
    ``schemes`` and, when it names one, a port that is a number from 0 to 65535. The URL is not
    repeated in the message: it may hold a password."""
    scheme, sep, _ = url.partition("://")
    if not sep or scheme.lower() not in schemes:
        wanted = ", ".join(f"{s}://" for s in schemes)
        raise ConfigError(f"{name}: not a URL of {wanted}")
    if "+cluster" in scheme.lower():
        return  # several host:port seeds; parse_cluster_url (counters/redis/cluster.py) reads them
    try:
        urlsplit(url).port  # noqa: B018 - reading it checks it
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def _webhook_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be POSTed to, or None: it must be ``http(s)://host[:port]...`` with a
    host and, when it names one, a port from 1 to 65535 (RFC 3986 section 3.2.2-3.2.3; port 0
    cannot be connected to)."""
    if not url.startswith(("http://", "https://")):
        return "not http(s)"
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. an unclosed [IPv6 address
        return str(exc)
    if not parts.hostname:
        return "no host"
    host_port = parts.netloc.rpartition("@")[2]
    after_host = host_port.partition("]")[2] if host_port.startswith("[") else host_port
    port = after_host.partition(":")[2]
    if port and not (is_digits(port) and 1 <= int(port) <= 65535):
        return f"port {port!r} is not a number from 1 to 65535"
    return None


def check_webhook_urls(name: str, urls: tuple[str, ...]) -> None:
    """Raise ``ConfigError`` naming ``name`` and each entry that cannot be POSTed to.

    Reviewer helper-66: ``http://`` (no host) and ``http://127.0.0.1:99999/x`` were accepted
    and served, and every delivery to them failed, while ``ftp://...`` was refused."""
    bad = [f"{url} ({why})" for url in urls if (why := _webhook_url_problem(url))]
    if bad:
        raise ConfigError(f"{name}: not an http(s)://host[:port] URL: {', '.join(bad)}")


# An origin as a browser sends it (RFC 6454 section 6.1): scheme://host[:port], no path.
_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://(\[[0-9a-f:.]+\]|[^\s/?#@:\[\]]+)(:[0-9]{1,5})?")


def check_origins(name: str, origins: tuple[str, ...]) -> None:
    """Raise ``ConfigError`` naming ``name`` for an entry that is neither ``*`` nor an origin as
    browsers send it in ``Origin`` (lower case ``scheme://host[:port]``, no path, not even
    ``/``): it could never match, and the browser's calls would be refused without a word."""
    bad = [o for o in origins if o != "*" and (o != o.lower() or not _ORIGIN.fullmatch(o))]
    if bad:
        raise ConfigError(
            f"{name}: not an origin (scheme://host[:port] in lower case, no path, or *):"
            f" {', '.join(repr(o) for o in bad)}"
        )


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise ``ConfigError`` naming ``name`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{name}={value!r}: must be one of {', '.join(choices)}")


def bounded(
    default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None
) -> Any:
    """A numeric field with a range, checked by ``Settings.validate``."""
    return field(default=default, metadata={"range": {"ge": ge, "gt": gt, "le": le}})


def one_of(default: str, *choices: str) -> Any:
    """A text field taking one of a few lower-case words, checked by ``Settings.validate``; the
    environment may spell them in any case (``COUNTERS_LOG_LEVEL=INFO``)."""
    return field(default=default, metadata={"choices": choices})


_PARSERS: dict[str, Callable[[str, str], Any]] = {
    "bool": parse_bool,
    "int": parse_int,
    "float": parse_float,
    "str": parse_str,
    "Path": parse_path,
    "tuple[str, ...]": parse_csv,
}


DEFAULT_KEY_BUCKETS = 1_024  # issue #12: "a default of 1,024 buckets or more"
# RFC 7518 section 3.2: "A key of the same size as the hash output (for instance, 256 bits for
# "HS256") or larger MUST be used with this algorithm."
MIN_JWT_SECRET_BYTES = 32
MAX_CLOCK_OFFSET = 315_576_000  # ten years of 365.25 days: COUNTERS_CLOCK_OFFSET_SECONDS


def env_name(field_name: str) -> str:
    """The variable a field is read from: ``port`` -> ``COUNTERS_PORT``."""
    return f"COUNTERS_{field_name.upper()}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Service settings; each field is read from ``COUNTERS_<FIELD NAME IN CAPITALS>``."""

    host: str = "127.0.0.1"
    port: int = bounded(8000, ge=1, le=65_535)
    workers: int = bounded(1, ge=1, le=256)
    # None: `counters serve` starts the embedded server under data_dir. A Redis Cluster is
    # named by seed nodes: redis+cluster://[:password@]host:port[,host:port...] (issue #12).
    redis_url: str | None = None
    # With no redis_url: start a local Redis Cluster (3 masters, each with a replica) instead
    # of the embedded single Redis (counters/cli/cluster.py), to try the service on a cluster.
    local_cluster: bool = False
    database_url: str | None = None
    data_dir: Path = Path(".counters")
    rules: Path | None = None
    jwt_secret: str | None = None
    service_keys: tuple[str, ...] = ()
    # Development mode: `serve` may mint development credentials when no secrets are set
    # (`make run` turns it on), and serves the JS client's demo page at /demo. Off, `serve`
    # without secrets refuses to start.
    dev_mode: bool = False
    # Shifts "now" by up to ten years either way (staging, load tests that simulate later days).
    # Bounded, because every time the service stores or shows is counted from now: 1e308 made
    # "now" infinite, and every award and progress read a 500 (a reviewer's finding). Ten years
    # is more than any simulation needs, and keeps now, a hold's expiry and a period's end far
    # inside what the replies (years 1-9999 UTC) and Postgres can hold.
    clock_offset_seconds: float = bounded(0.0, ge=-MAX_CLOCK_OFFSET, le=MAX_CLOCK_OFFSET)
    # Daily windows and hold expiries follow each worker's clock: /readyz compares it with
    # Redis's (TIME) and says "degraded" (strict: not ready) past this many seconds; 0: no check.
    max_clock_skew_seconds: float = bounded(5.0, ge=0)
    # Hash-tag buckets for user keys and event streams (issue #12). Recorded by the deployment
    # on its first start (counters/runtime/layout.py): when not given, the recorded count is used;
    # given and different from the recorded count, the service refuses to start.
    key_buckets: int = bounded(DEFAULT_KEY_BUCKETS, ge=1, le=16_384)
    # Set by ``from_env`` when COUNTERS_KEY_BUCKETS is in the environment (not read itself).
    key_buckets_given: bool = field(default=False, metadata={"env": False})
    idempotency_ttl_seconds: int = bounded(86_400, gt=0)
    # Daily keys expire at the next UTC midnight plus this grace, plus up to jitter seconds.
    day_grace_seconds: int = bounded(3_600, ge=0)
    day_jitter_seconds: int = bounded(600, ge=0)
    max_body_bytes: int = bounded(65_536, gt=0)
    redis_max_connections: int = bounded(256, gt=0)
    # Script calls issued in one event-loop tick go to Redis as one write
    # (counters/redis/pipelining.py).
    redis_autopipeline: bool = True
    # An XP hold not captured or released by then returns to the balance by itself.
    hold_ttl_seconds: int = bounded(900, gt=0, le=7 * 86_400)
    # The durable ledger (persistence/): the flusher runs inside every `serve` worker by default.
    database_max_connections: int = bounded(10, gt=0)
    flusher_enabled: bool = True
    flush_batch: int = bounded(1_000, gt=0)  # events read per stream per iteration
    flush_block_ms: int = bounded(500, gt=0)  # how long one read waits for new events
    # After an iteration that moved fewer than flush_batch events, the flusher waits this long
    # before reading again: fewer, larger transactions (a batch's fixed cost is most of the CPU
    # per event at a few thousand events/s), for a durability window at most this much longer.
    flush_linger_ms: int = bounded(150, ge=0, le=1_000)
    # One flusher at a time per deployment: the one holding a Redis lease of this many ms
    # (renewed every iteration); the other workers stand by and take over when it lapses, and
    # help while the holder is behind (persistence/flusher.py). 0: every worker flushes. Above
    # 4 x flush_block_ms (an idle holder's longest read), or it lapses between renewals.
    flush_lease_ms: int = bounded(5_000, ge=0, le=60_000)
    # A dead consumer's events are taken by another after this. Well under
    # max_unflushed_seconds: a worker killed mid-batch must not fill the durability window
    # (an attacker's finding: both were 30 s, so every such kill refused writes for ~8 s).
    flush_claim_idle_ms: int = bounded(10_000, ge=0)
    flush_backoff_max_seconds: float = bounded(5.0, gt=0)  # retry delay cap while a store is down
    # How often each worker checks for buckets Redis does not hold completely and restores them
    # from Postgres (persistence/restore.py); 0: never (users are then hydrated one by one).
    restore_interval_seconds: float = bounded(2.0, ge=0)
    # Every worker polls the rules file this often and reloads it when it changed (0: only on
    # SIGHUP); see counters/runtime/reload.py.
    rules_watch_seconds: float = bounded(2.0, ge=0)
    # A flusher that has not advanced for this long (or whose oldest unledgered event is this
    # old) makes /readyz "degraded", with the reason.
    flush_stall_seconds: float = bounded(30.0, gt=0)
    # Every Redis call on a request's path (the auto-pipeline, the pool) fails after this long:
    # a stalled Redis gives a prompt 503 + Retry-After instead of a hang.
    redis_timeout_seconds: float = bounded(0.5, gt=0)
    # Postgres calls on a request's path (hydrating a user, an owner lookup) fail after this
    # long; the flusher's batches get flush_timeout_seconds.
    database_timeout_seconds: float = bounded(1.0, gt=0)
    flush_timeout_seconds: float = bounded(30.0, gt=0)
    # `serve` retries the schema migrations in the background this often while Postgres is down.
    migrate_retry_seconds: float = bounded(2.0, gt=0)
    # The durability window: acknowledged changes not yet in the Postgres ledger (what a Redis
    # loss without AOF would erase). Past either bound, writes answer 503 + Retry-After until
    # the flusher catches up; 0 turns a bound off. Checked against a lag each worker refreshes
    # every lag_refresh_seconds (no round trip on the request's path).
    max_unflushed_events: int = bounded(50_000, ge=0)
    max_unflushed_seconds: float = bounded(30.0, ge=0)
    lag_refresh_seconds: float = bounded(0.25, gt=0)
    # Operations (README, "Operations").
    log_level: str = one_of("info", "debug", "info", "warning", "error")
    log_format: str = one_of("text", "text", "json")
    access_log: bool = False  # one line per request (route, status, duration, request id)
    metrics_enabled: bool = True  # Prometheus counters and histograms, served at GET /metrics
    # The cyclic garbage collector's first threshold in each worker (gc.set_threshold): net
    # allocations of container objects between two young collections. At CPython's 700, 64
    # requests in flight alone reach it: a collection every ~70 requests (api/main.py).
    gc_threshold: int = bounded(10_000, ge=100, le=10_000_000)
    # A request's head and body must arrive within this from the connection (or its first
    # byte, for the next request on a kept-alive connection); then the connection is closed.
    request_read_timeout_seconds: float = bounded(10.0, gt=0, le=3_600)
    max_header_bytes: int = bounded(65_536, ge=1_024)  # a longer request head gets a 431
    keep_alive_seconds: int = bounded(5, ge=1, le=3_600)  # idle time between two requests
    # Browser origins allowed to call the API (CORS), comma-separated; "*" allows any. None
    # by default: a browser on another origin gets no CORS headers, so its calls are refused.
    cors_origins: tuple[str, ...] = ()
    # Awards add to the leaderboards (counters/exp/leaderboard.py): 3 ZINCRBY in the award script.
    leaderboards_enabled: bool = True
    # How long a worker reuses the tops of a (period, limit) read (counters/exp/leaderboard.py):
    # the staleness of entries and ranks; 0: every read asks every bucket.
    leaderboard_cache_seconds: float = bounded(1.0, ge=0, le=60)
    # An unkeyed like or fork runs as one script when its entity and owner share a Redis node
    # (lua/creator_award.lua); false: always the chain of single-slot scripts (issue #10).
    creator_shortcut: bool = True
    # A worker answers an unkeyed self-award whose (user, action) it has already seen refused
    # at its daily limit today without asking Redis (counters/exp/service.py, "Refusals held
    # locally", as envoy's ratelimit caches over-limit keys): at most this many pairs per
    # worker, the oldest dropped first; 0: every award asks Redis.
    limit_cache_entries: int = bounded(65_536, ge=0, le=10_000_000)
    # Webhooks (persistence/webhooks): endpoints every event is POSTed to, and the HMAC secret
    # of the Counters-Signature header. No endpoints: no outbox rows, no deliverer.
    webhook_urls: tuple[str, ...] = ()
    webhook_secret: str | None = None
    webhook_deliverer_enabled: bool = True  # run the deliverer inside every `serve` worker
    webhook_timeout_seconds: float = bounded(5.0, gt=0, le=300)  # per request
    webhook_backoff_seconds: float = bounded(1.0, gt=0)  # the first retry's delay; it doubles
    webhook_backoff_max_seconds: float = bounded(3_600.0, gt=0)
    webhook_max_attempts: int = bounded(15, ge=1)  # then the event is marked failed and left
    webhook_poll_seconds: float = bounded(1.0, gt=0)  # how often the deliverer looks for events
    webhook_batch: int = bounded(100, gt=0)  # events sent per iteration

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``COUNTERS_*`` variables; a bad value names its variable."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for spec in fields(cls):
            if spec.metadata.get("env") is False:
                continue
            name = env_name(spec.name)
            raw = env.get(name)
            if raw is None or raw == "":
                continue
            kind = str(spec.type).removesuffix(" | None")
            values[spec.name] = _PARSERS[kind](name, raw)
            if "choices" in spec.metadata:
                values[spec.name] = values[spec.name].lower()
        if "key_buckets" in values:
            values["key_buckets_given"] = True
        settings = cls(**values)
        settings.validate()
        return settings

    @property
    def buckets_given(self) -> bool:
        """Whether the bucket count was chosen (COUNTERS_KEY_BUCKETS set, or a value other than
        the default handed in): only then may it contradict the deployment's recorded count."""
        return self.key_buckets_given or self.key_buckets != DEFAULT_KEY_BUCKETS

    def validate(self) -> None:
        """Reject values outside their range or choices, a JWT secret shorter than 32 bytes
        (development mode too: its generated secret has 43), Redis and Postgres URLs of another
        scheme or with a bad port, CORS origins a browser never sends, and webhook URLs that are
        not http(s) or have no secret (``ConfigError`` naming the variable)."""
        for spec in fields(self):
            value = getattr(self, spec.name)
            if "range" in spec.metadata:
                check_range(env_name(spec.name), value, **spec.metadata["range"])
            if "choices" in spec.metadata:
                check_choice(env_name(spec.name), value, spec.metadata["choices"])
        if self.jwt_secret is not None and len(self.jwt_secret.encode()) < MIN_JWT_SECRET_BYTES:
            raise ConfigError(
                f"COUNTERS_JWT_SECRET: {len(self.jwt_secret.encode())} bytes, too short (at least"
                f" {MIN_JWT_SECRET_BYTES}: an HS256 key of 256 bits or more, RFC 7518 section 3.2)"
            )
        if self.redis_url is not None:
            check_url("COUNTERS_REDIS_URL", self.redis_url, REDIS_SCHEMES)
        if self.database_url is not None:
            check_url("COUNTERS_DATABASE_URL", self.database_url, DATABASE_SCHEMES)
        check_origins("COUNTERS_CORS_ORIGINS", self.cors_origins)
        check_webhook_urls("COUNTERS_WEBHOOK_URLS", self.webhook_urls)
        window_ms = self.max_unflushed_seconds * 1000
        for name, ms in (("FLUSH_CLAIM_IDLE_MS", self.flush_claim_idle_ms),
                         ("FLUSH_LEASE_MS", self.flush_lease_ms)):  # fmt: skip
            if window_ms and ms >= window_ms / 2:
                raise ConfigError(
                    f"COUNTERS_{name}: {ms} ms, at least half of COUNTERS_MAX_UNFLUSHED_SECONDS"
                    f" ({self.max_unflushed_seconds:g} s): a worker killed mid-batch would fill"
                    " the durability window and refuse writes; keep it under half"
                )
        if self.webhook_urls and not self.webhook_secret:
            raise ConfigError("COUNTERS_WEBHOOK_SECRET is required with COUNTERS_WEBHOOK_URLS")
