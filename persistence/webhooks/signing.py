"""Signing webhook bodies the way Stripe does, so receivers can use the same checks.

Header ``Counters-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``.
The timestamp is signed with the body, so a receiver that rejects old timestamps (``tolerance``)
also rejects replays of a captured request.
"""

from __future__ import annotations

import hashlib
import hmac

from counters.ids import is_digits

HEADER = "Counters-Signature"
EVENT_ID_HEADER = "Counters-Event-Id"


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``"<timestamp>.<body>"`` under ``secret``."""
    signed = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``Counters-Signature`` header value for ``body`` sent at ``timestamp``."""
    return f"t={timestamp},v1={signature(secret, timestamp, body)}"


def verify(secret: str, header: str, body: bytes, now: float, tolerance: float = 300) -> bool:
    """A receiver's check: the header is well formed, a ``v1`` matches, and ``t`` is within
    ``tolerance`` seconds of ``now``. Constant-time comparison."""
    parts = [part.partition("=") for part in header.split(",")]
    stamps = [value for key, _, value in parts if key == "t"]
    # is_digits: ASCII digits only, and not too many for int() (a ValueError out of a check
    # that answers True or False), where str.isdigit also took "²" and other scripts' digits
    if len(stamps) != 1 or not is_digits(stamps[0]):
        return False
    timestamp = int(stamps[0])
    if abs(now - timestamp) > tolerance:
        return False
    expected = signature(secret, timestamp, body)
    return any(key == "v1" and hmac.compare_digest(value, expected) for key, _, value in parts)
