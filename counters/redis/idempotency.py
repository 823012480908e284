"""Idempotency keys: a retried write with the same key is applied once (as Stripe's are).

The record lives beside the user's keys (same hash tag) and is read and written inside the same
script as the change it guards, so "applied once" holds under any race. A record remembers the
request's fingerprint: the same key with a different request is refused.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from counters.errors import IdempotencyMismatch, InvalidRequest
from counters.ids import IDEMPOTENCY_KEY, is_whole
from counters.redis.codes import KeyReuse

_KEY_REUSED = KeyReuse.KEY_REUSED


@dataclass(frozen=True, slots=True)
class Idempotency:
    caller: str
    key: str
    fingerprint: str

    @classmethod
    def of(cls, caller: str, key: str | None, operation: str, payload: bytes) -> Idempotency | None:
        """The idempotency of one request, or None when it carries no ``Idempotency-Key``."""
        if key is None:
            return None
        if not is_whole(IDEMPOTENCY_KEY, key):
            raise InvalidRequest(
                "Idempotency-Key must be 1-255 visible ASCII characters without spaces"
            )
        digest = hashlib.blake2b(operation.encode() + b"\0" + payload, digest_size=16)
        return cls(caller, key, digest.hexdigest())


def script_args(idem: Idempotency | None) -> tuple[str, str]:
    """(fingerprint, key) as scripts take them: empty strings when not idempotent."""
    return ("", "") if idem is None else (idem.fingerprint, idem.key)


def reject_reused_key(code: int) -> None:
    """Raise ``IdempotencyMismatch`` when a script answered that the key was reused."""
    if code == _KEY_REUSED:
        raise IdempotencyMismatch("Idempotency-Key was already used with a different request")
