"""Every exception the service raises, in one place.

    CountersError
    ├── ConfigError            settings or environment that cannot work
    │   └── RulesError         the rules file is invalid (names the bad entry)
    ├── StorageError           Redis or Postgres failed; wraps the driver's exception
    │   └── ScriptReplyError   a Lua script answered with a shape we do not know
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


class CountersError(Exception):
    """Base of every error raised by this service."""


class ConfigError(CountersError):
    """Settings or environment that cannot work."""


class RulesError(ConfigError):
    """The rules file is invalid."""


class StorageError(CountersError):
    """A backing store failed."""


class ScriptReplyError(StorageError):
    """A Lua script replied with an unknown code or shape."""


class RequestError(CountersError):
    """The request is wrong; ``detail`` says how. Nothing was changed."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class AuthError(RequestError):
    """Missing, malformed, expired or unknown credentials."""


class ForbiddenError(RequestError):
    """The credentials may not do this."""


class MalformedBody(RequestError):
    """The body is not JSON at all."""


class InvalidRequest(RequestError):
    """Wrong types, missing fields or bad values."""


class PayloadTooLarge(RequestError):
    """The body is over the size limit."""


class NotFound(RequestError):
    """An unknown target, type or resource."""


class ConflictError(RequestError):
    """The resource's state forbids the request."""


class IdempotencyMismatch(RequestError):
    """An Idempotency-Key was reused with a different request."""
