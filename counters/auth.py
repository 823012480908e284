"""Who is calling: a user with a JWT, or a trusted service with a key acting for a user.

- ``Bearer <JWT>``: HS256 signed with COUNTERS_JWT_SECRET; ``sub`` is the user, ``exp`` required.
  A user acts only as themself: ``X-User-Id`` naming anybody else is refused.
- ``Bearer <service key>``: one of COUNTERS_SERVICE_KEYS, acting for the user in ``X-User-Id``.

JWT expiry is checked against real time (``now``, injectable), not the shifted service clock:
tokens come from an issuer that lives in real time. Verified tokens are cached until they expire.
"""

from __future__ import annotations

import hmac
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jwt

from counters.errors import AuthError, ForbiddenError, InvalidRequest
from counters.ids import USER_ID, is_whole

_CACHE_LIMIT = 65_536
_MAX_EXP = 253_402_300_799  # 9999-12-31T23:59:59Z: later than any token may live


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: str  # the user the request acts as
    caller: str  # who sent it: "user:<id>" or "service:<n>"; scopes idempotency keys
    is_service: bool


def is_service_caller(caller: str) -> bool:
    """Whether a ``Principal.caller`` id names a service key (``"service:<n>"``)."""
    return caller.startswith("service:")


def check_user_id(user_id: str, where: str) -> str:
    """A valid user id, or ``InvalidRequest`` naming where it came from."""
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
        self._verified: dict[str, tuple[str, float]] = {}

    def authenticate(self, authorization: str | None, x_user_id: str | None) -> Principal:
        """The principal of a request, from its Authorization and X-User-Id headers."""
        token = _bearer(authorization)
        service = self._service_index(token)
        if service is not None:
            if not x_user_id:
                raise InvalidRequest("A service key must name the user in the X-User-Id header")
            user_id = check_user_id(x_user_id, "X-User-Id")
            return Principal(user_id, f"service:{service}", True)
        user_id = self._verify_jwt(token)
        if x_user_id is not None and x_user_id != user_id:
            raise ForbiddenError("A user token acts only as its own user; X-User-Id is refused")
        return Principal(user_id, f"user:{user_id}", False)

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

    def _verify_jwt(self, token: str) -> str:
        now = self._now()
        cached = self._verified.get(token)
        if cached is not None and cached[1] > now:
            return cached[0]
        if token.count(".") != 2:  # not shaped like a JWT: meant as a service key
            raise AuthError("Unknown service key")
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
        if not isinstance(sub, str) or not is_whole(USER_ID, sub):
            raise AuthError("Invalid token: 'sub' is not a valid user id")
        if len(self._verified) >= _CACHE_LIMIT:  # evict the oldest entry (dicts keep order)
            del self._verified[next(iter(self._verified))]
        self._verified[token] = (sub, float(expires))
        return sub


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
    if not 0 <= value <= _MAX_EXP:
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
