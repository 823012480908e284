"""The requests each target receives, precomputed: one per distinct user, in a seeded order.

Callers authenticate as a chat/generation server would: the service key, acting for the user
named in ``X-User-Id``. (``user_token_requests`` builds the same awards with a JWT per user, to
measure what verifying tokens costs.)
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from counters.auth import issue_token
from counters.cli.loadtest.population import GAIN_MIX, Award, Population

SERVICE_KEY = "bench-service-key-0123456789abcdef0123"
JWT_SECRET = "bench-jwt-secret-0123456789abcdef0123456789"
USERS = 100_000
OWNED_CHARACTERS = 10_000
OWNED_SCENES = 2_000
# The bench's users u0..u99999 and its pre-owned entities c<n>, s<n> (shared with
# ``counters loadtest``, which builds its own population).
POPULATION = Population("u", USERS, OWNED_CHARACTERS, OWNED_SCENES)
__all__ = ["GAIN_MIX", "Award"]


def user_id(n: int) -> str:
    return POPULATION.user(n)


def owned_entities() -> list[tuple[str, str, str]]:
    """(type, id, owner) of the entities that exist before the run."""
    return POPULATION.owned_entities()


def gain_awards(count: int = USERS, seed: int = 5, prefix: str = "u") -> list[Award]:
    """``count`` awards, one per distinct user (``<prefix><n>``), with the actions of
    ``GAIN_MIX``. Likes and forks go to the pre-owned entities, by popularity."""
    return POPULATION.gain_awards(count, seed, actor_prefix=prefix)


def http_request(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    """One raw HTTP/1.1 keep-alive request."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def service_headers(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {SERVICE_KEY}", "X-User-Id": user}


def gain_requests(awards: Sequence[Award], path: str = "/api/exp/gain") -> list[bytes]:
    """One POST per award, sent with the service key acting for the award's user."""
    encode = msgspec.json.encode
    return [
        http_request("POST", path, service_headers(a.user_id), encode(a.body())) for a in awards
    ]


def user_token_requests(awards: Sequence[Award]) -> list[bytes]:
    """The same awards, each sent with its user's own JWT."""
    encode = msgspec.json.encode
    return [
        http_request(
            "POST",
            "/api/exp/gain",
            {"Authorization": f"Bearer {issue_token(JWT_SECRET, a.user_id)}"},
            encode(a.body()),
        )
        for a in awards
    ]


def batch_requests(awards: Sequence[Award], size: int) -> list[bytes]:
    """Awards grouped ``size`` to a POST /api/exp/gain/batch, sent with the service key."""
    encode = msgspec.json.encode
    requests = []
    for start in range(0, len(awards) - size + 1, size):
        items = [{"user_id": a.user_id, **a.body()} for a in awards[start : start + size]]
        body = encode({"awards": items})
        headers = {"Authorization": f"Bearer {SERVICE_KEY}"}
        requests.append(http_request("POST", "/api/exp/gain/batch", headers, body))
    return requests
