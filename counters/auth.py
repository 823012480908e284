"""Who is calling: a user with a JWT, or a trusted service with a key acting for a user.

- ``Bearer <JWT>``: HS256 signed with COUNTERS_JWT_SECRET; ``sub`` is the user, ``exp`` required.
  A user acts only as themself: ``X-User-Id`` naming anybody else is refused.
- ``Bearer <service key>``: one of COUNTERS_SERVICE_KEYS, acting for the user in ``X-User-Id``.
- Neither acts as a user id the ledger uses for another actor (``counters.ids.is_reserved_actor``:
  ``service:0``, ``import``, ...): a token whose ``sub`` is one is 401, such an ``X-User-Id`` 422
  (as such a user id in a path, a request body or an import line: ``counters.ids.UserId``).

JWT expiry is checked against real time (``now``, injectable), not the shifted service clock:
tokens come from an issuer that lives in real time. Verified tokens are cached until they expire.

The caches are keyed by the Authorization header's raw bytes as the ASGI scope carries them, so a
request whose header was seen before pays one dict lookup: no decode, no split, no comparison of
keys. A service key's header enters its cache only after the constant-time comparison matched it.
Looking an attacker's header up in a dict does not leak the key byte by byte: Python compares the
bytes only after the full (per-process randomised) hash matched, and a header that matched is one
that already holds a valid key.
"""

from __future__ import annotations

import hmac
import math
import time
from collections.abc import Callable, Sequence

import jwt
import msgspec

from counters.clock import LATEST
from counters.errors import AuthError, ForbiddenError, InvalidRequest
from counters.ids import RESERVED_FORMS, USER_ID, is_reserved_actor, is_whole

_CACHE_LIMIT = 65_536
_SERVICE_HEADERS_LIMIT = 256  # spellings of valid service-key headers remembered ("Bearer k", ...)


class Principal(msgspec.Struct, frozen=True, gc=False):
    """Who a request acts as and who sent it (a Struct: built per request, ~5x cheaper than a
    frozen dataclass)."""

    user_id: str  # the user the request acts as
    caller: str  # who sent it: "user:<id>" or "service:<n>"; scopes idempotency keys
    is_service: bool


def is_service_caller(caller: str) -> bool:
    """Whether a ``Principal.caller`` id names a service key (``"service:<n>"``)."""
    return caller.startswith("service:")


def check_user_id(user_id: str, where: str) -> str:
    """A valid user id, or ``InvalidRequest`` naming where it came from and why (a reserved
    actor's form first: ``USER_ID`` refuses those too, and the message would not say so)."""
    if is_reserved_actor(user_id):
        raise InvalidRequest(f"{where} names a reserved actor ({RESERVED_FORMS}), not a user")
    if not is_whole(USER_ID, user_id):
        raise InvalidRequest(
            f"{where} must be 1-128 characters of letters, digits and ._@:- "
            "starting with a letter or digit"
        )
    return user_id


class Authenticator:
    def __init__(
        self,
        jwt_secret: str | None,
        service_keys: Sequence[str],
        now: Callable[[], float] = time.time,
    ) -> None:
        self._secret = jwt_secret
        self._now = now
        self._service_keys = [key.encode() for key in service_keys]
        # Raw Authorization header -> the service caller id it names (only headers that matched).
        self._service_headers: dict[bytes, str] = {}
        # Raw Authorization header -> (the user's principal, the token's expiry).
        self._user_headers: dict[bytes, tuple[Principal, float]] = {}

    def authenticate(self, authorization: str | None, x_user_id: str | None) -> Principal:
        """The principal of a request, from its Authorization and X-User-Id headers (as str)."""
        raw = None if authorization is None else authorization.encode("latin-1")
        return self.authenticate_raw(raw, x_user_id)

    def authenticate_raw(self, authorization: bytes | None, x_user_id: str | None) -> Principal:
        """As ``authenticate``, from the Authorization header's raw bytes (the hot lane's way:
        a header seen before is one dict lookup). ``AuthError`` (401) for missing or bad
        credentials, ``InvalidRequest`` (422) for a service key without a valid X-User-Id,
        ``ForbiddenError`` (403) for a user token naming another user."""
        if authorization is not None:
            caller = self._service_headers.get(authorization)
            if caller is not None:
                return _acting_for(caller, x_user_id)
            cached = self._user_headers.get(authorization)
            if cached is not None and cached[1] > self._now():
                return _as_user(cached[0], x_user_id)
        token = _bearer(None if authorization is None else authorization.decode("latin-1"))
        service = self._service_index(token)
        if service is not None:
            caller = f"service:{service}"
            assert authorization is not None  # _bearer refused a missing header
            if len(self._service_headers) < _SERVICE_HEADERS_LIMIT:
                self._service_headers[authorization] = caller
            return _acting_for(caller, x_user_id)
        user_id, expires = self._verify_jwt(token)
        principal = Principal(user_id, f"user:{user_id}", False)
        if authorization is not None:
            if len(self._user_headers) >= _CACHE_LIMIT:  # evict the oldest (dicts keep order)
                del self._user_headers[next(iter(self._user_headers))]
            self._user_headers[authorization] = (principal, expires)
        return _as_user(principal, x_user_id)

    def authenticate_service(self, authorization: str | None) -> str:
        """The caller id of a service key (routes that name their user in the body)."""
        token = _bearer(authorization)
        service = self._service_index(token)
        if service is None:
            self._verify_jwt(token)  # 401 for a bad token, else a valid user: 403
            raise ForbiddenError("This route is for services only")
        return f"service:{service}"

    def _service_index(self, token: str) -> int | None:
        encoded = token.encode()
        found = None
        for index, key in enumerate(self._service_keys):
            if hmac.compare_digest(encoded, key):  # no early exit: constant time over keys
                found = index
        return found

    def _verify_jwt(self, token: str) -> tuple[str, float]:
        """The user a JWT names and its expiry (unix seconds); ``AuthError`` if it is not
        valid now."""
        now = self._now()
        if token.count(".") != 2:  # not shaped like a JWT: a service key, or a broken token
            # Not "Unknown service key": a user whose JWT was cut short read that it had been
            # taken for a service key (a reviewer helper-63 finding).
            raise AuthError(
                "The bearer credential is neither a known service key nor a valid token"
                " (a token is a JWT: three parts separated by dots)"
            )
        if self._secret is None:
            raise AuthError("Unknown service key, and user tokens are not enabled")
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=["HS256"],
                options={"require": ["sub", "exp"], "verify_exp": False},
            )
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"Invalid token: {exc}") from exc
        expires = _expiry(claims["exp"])
        if expires <= now:  # checked here rather than by PyJWT so that time is injectable
            raise AuthError("Token has expired")
        sub = claims["sub"]
        if isinstance(sub, str) and is_reserved_actor(sub):  # before USER_ID, which refuses it
            raise AuthError(
                f"Invalid token: 'sub' names a reserved actor ({RESERVED_FORMS}), not a user"
            )
        if not isinstance(sub, str) or not is_whole(USER_ID, sub):
            raise AuthError("Invalid token: 'sub' is not a valid user id")
        return sub, float(expires)


def _acting_for(caller: str, x_user_id: str | None) -> Principal:
    """A service key's principal: the user named in X-User-Id (422 when missing or invalid)."""
    if not x_user_id:
        raise InvalidRequest("A service key must name the user in the X-User-Id header")
    return Principal(check_user_id(x_user_id, "X-User-Id"), caller, True)


def _as_user(principal: Principal, x_user_id: str | None) -> Principal:
    """A user token's principal; 403 when X-User-Id names somebody else."""
    if x_user_id is not None and x_user_id != principal.user_id:
        raise ForbiddenError("A user token acts only as its own user; X-User-Id is refused")
    return principal


def _expiry(value: object) -> float:
    """A token's ``exp`` as unix seconds; ``AuthError`` unless it is a finite number in range.

    PyJWT parses the payload with ``json.loads``, which reads ``NaN``, ``Infinity`` and ``1e400``
    (infinity) as floats and a 400-digit integer as an int that overflows ``float()``: each would
    be a token that never expires, or a 500 (issue #10, item 10).
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AuthError("Invalid token: 'exp' is not a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise AuthError("Invalid token: 'exp' is not a finite number")
    if not 0 <= value <= LATEST:  # 9999-12-31T23:59:59Z: later than any token may live
        raise AuthError("Invalid token: 'exp' is out of range")
    return float(value)


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise AuthError("Missing Authorization header: send 'Authorization: Bearer <token>'")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthError("Authorization must be 'Bearer <token>'")
    return token


def issue_token(secret: str, user_id: str, ttl_seconds: int = 86_400) -> str:
    """A user token (for dev credentials, tests and load generators)."""
    now = int(time.time())
    return jwt.encode({"sub": user_id, "iat": now, "exp": now + ttl_seconds}, secret, "HS256")
