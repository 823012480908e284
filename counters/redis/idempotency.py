"""Idempotency keys: a retried write with the same key is applied once (as Stripe's are).

The record lives beside the user's keys (same hash tag) and is read and written inside the same
script as the change it guards, so "applied once" holds under any race. A record remembers the
request's fingerprint: the same key with a different request is refused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from counters.errors import IdempotencyMismatch, InvalidRequest
from counters.ids import IDEMPOTENCY_KEY, is_whole
from counters.redis.calls import ClaimKeys, ClaimRequest
from counters.redis.codes import AwardOutcome, KeyReuse
from counters.redis.keys import UserKeys
from counters.redis.scripts import Scripts

_KEY_REUSED = KeyReuse.KEY_REUSED
# What a service caller's key records (a reply of the claim's shape; only its fingerprint is
# ever compared: the work keeps its own records)
_CALLERS_KEY = json.dumps([int(AwardOutcome.AWARDED), 0, 0, 0, 0, 0, 0, 0, 0, ""])


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


async def claim_callers_key(scripts: Scripts, idem: Idempotency, buckets: int, ttl: int) -> None:
    """Record ``idem``'s key as its service caller's, in the caller's slot (the caller acting
    as itself), with the request's fingerprint, in one atomic step (lua/claim_request.lua);
    ``IdempotencyMismatch`` when the caller used the key for a different request, also when
    the two race. Scope: the caller alone, whatever user the request names (a batch, a grant,
    an adjust). The record only guards the key: the work runs after it under records of its
    own in each user's slot (keyed by caller, user and key), so a retry of the same request
    passes here and replays there, and is applied once under any race. ``ttl``: seconds.

    The caller is a service, not a user: nothing to hydrate ("1"). After a Redis loss the
    record is gone (it is not ledgered) and a retry replays through the users' records."""
    caller = UserKeys.of(idem.caller, buckets)
    keys = ClaimKeys(caller.idempotency(idem.caller, idem.key), caller.user, caller.meta)
    claimed = await scripts.run(keys, ClaimRequest(idem.fingerprint, "1", ttl, _CALLERS_KEY))
    reject_reused_key(int(claimed[0]))
