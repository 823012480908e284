"""Every exception the service raises, in one place.

    CountersError
    ├── ConfigError            settings or environment that cannot work
    │   └── RulesError         the rules file is invalid (names the bad entry)
    ├── StorageError           Redis or Postgres failed; wraps the driver's exception
    │   ├── RedisStorageError    raised where a Redis call failed (``store = "redis"``)
    │   │   ├── ScriptReplyError   a Lua script answered with a shape we do not know
    │   │   └── OutcomeUnknown     a command reached Redis and its reply never came: it may have run
    │   ├── PostgresStorageError raised where a Postgres call failed (``store = "postgres"``)
    │   └── BacklogFull        too many acknowledged changes not yet ledgered: writes wait
    └── RequestError           the caller asked for something wrong; nothing was changed
        ├── AuthError          no or bad credentials
        ├── ForbiddenError     valid credentials, not allowed to do this
        ├── MalformedBody      the body is not JSON at all
        ├── InvalidRequest     wrong types, missing fields, bad values
        ├── PayloadTooLarge    body over the size limit
        ├── NotFound           unknown target, type or resource
        ├── ConflictError      the resource's state forbids it (self-like, double capture, ...)
        └── IdempotencyMismatch  an Idempotency-Key reused with a different request

HTTP status codes are assigned only at the boundary, in ``api/errors.py``.
"""

from __future__ import annotations

SHOWN_CHARS = 80  # of a caller's text quoted back in a message


def shown(text: str, limit: int = SHOWN_CHARS) -> str:
    """``text`` as a message may quote it: at most ``limit`` characters, then how many more.

    Messages echo what the caller sent (an unknown type, action or tier) so they can see the
    typo; a 5,000-character path must not come back as a 5,000-character ``detail``."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


class CountersError(Exception):
    """Base of every error raised by this service."""


class ConfigError(CountersError):
    """Settings or environment that cannot work."""


class RulesError(ConfigError):
    """The rules file is invalid."""


class StorageError(CountersError):
    """A backing store failed. ``store`` names which (metrics label it): the subclasses below are
    raised at each store's boundary, because the driver's exception alone cannot tell (a refused
    connection is the builtin ``ConnectionRefusedError`` for both)."""

    store = "unknown"


class RedisStorageError(StorageError):
    """A Redis call failed (connection, timeout, or an error reply)."""

    store = "redis"


class PostgresStorageError(StorageError):
    """A Postgres call failed (connection, timeout, or the server refused the statement)."""

    store = "postgres"


class ScriptReplyError(RedisStorageError):
    """A Lua script replied with an unknown code or shape."""


class OutcomeUnknown(RedisStorageError):
    """A command was written to Redis and no reply came (the timeout cut the connection, or it
    was lost after the write): Redis may have run it, or may still run it once it resumes.

    Every other ``StorageError`` of a call means its command never left the service (connection
    refused, a connection lost before the write, the durability window full). The API answers
    503 ``outcome_unknown``: a retry with the same Idempotency-Key is safe and replays the first
    answer (issue #11)."""


class BacklogFull(StorageError):
    """The durability window is full (COUNTERS_MAX_UNFLUSHED_*): the message says how full."""


class RequestError(CountersError):
    """The request is wrong; ``detail`` says how and ``code`` names it. Nothing was changed.

    ``code`` is the stable, machine-readable name callers branch on (the error bodies' ``code``):
    each class has its own, and a raise site may name a more precise one.
    """

    code = "invalid_request"

    def __init__(self, detail: str, *, code: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code


class AuthError(RequestError):
    """Missing, malformed, expired or unknown credentials."""

    code = "unauthorized"


class ForbiddenError(RequestError):
    """The credentials may not do this."""

    code = "forbidden"


class MalformedBody(RequestError):
    """The body is not JSON at all."""

    code = "malformed_body"


class InvalidRequest(RequestError):
    """Wrong types, missing fields or bad values."""

    code = "invalid_request"


class PayloadTooLarge(RequestError):
    """The body is over the size limit."""

    code = "payload_too_large"


class UnsupportedMediaType(RequestError):
    """The body is declared as something other than JSON (``Content-Type``)."""

    code = "unsupported_media_type"


class NotFound(RequestError):
    """An unknown target, type or resource."""

    code = "not_found"


class ConflictError(RequestError):
    """The resource's state forbids the request."""

    code = "conflict"


class IdempotencyMismatch(RequestError):
    """An Idempotency-Key was reused with a different request."""

    code = "idempotency_key_reused"
