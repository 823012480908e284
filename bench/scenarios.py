"""The requests each target receives, precomputed: one per distinct user, in a seeded order.

Callers authenticate as a chat/generation server would: the service key, acting for the user
named in ``X-User-Id``. (``user_token_requests`` builds the same awards with a JWT per user, to
measure what verifying tokens costs.)
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec

from counters.auth import issue_token

SERVICE_KEY = "bench-service-key-0123456789abcdef0123"
JWT_SECRET = "bench-jwt-secret-0123456789abcdef0123456789"
USERS = 100_000
OWNED_CHARACTERS = 10_000
OWNED_SCENES = 2_000
_ZIPF = 1.1

# (action, weight): what a chat server's traffic looks like, mostly the daily chat award.
GAIN_MIX: tuple[tuple[str, int], ...] = (
    ("daily_chat", 50),
    ("create_character", 5),
    ("create_scene", 5),
    ("character_liked", 25),
    ("forked", 15),
)


def user_id(n: int) -> str:
    return f"u{n}"


@dataclass(frozen=True, slots=True)
class Award:
    user_id: str  # who triggers it (the actor)
    action: str
    target_type: str | None = None
    target_id: str | None = None

    def body(self) -> dict[str, str]:
        body = {"action": self.action}
        if self.target_type is not None and self.target_id is not None:
            body |= {"target_type": self.target_type, "target_id": self.target_id}
        return body


def owner_of_character(n: int) -> str:
    """Pre-owned characters and scenes belong to every tenth user."""
    return user_id(n * 10 % USERS)


def owned_entities() -> list[tuple[str, str, str]]:
    """(type, id, owner) of the entities that exist before the run."""
    characters = [("character", f"c{n}", owner_of_character(n)) for n in range(OWNED_CHARACTERS)]
    scenes = [("scene", f"s{n}", owner_of_character(n)) for n in range(OWNED_SCENES)]
    return characters + scenes


def _popularity(count: int) -> list[float]:
    """Cumulative Zipf weights (s = 1.1): a few entities get most likes and forks, as on any
    platform (and as an owner cache sees it)."""
    return list(itertools.accumulate(1 / (rank + 1) ** _ZIPF for rank in range(count)))


def gain_awards(count: int = USERS, seed: int = 5, prefix: str = "u") -> list[Award]:
    """``count`` awards, one per distinct user (``<prefix><n>``), with the actions of
    ``GAIN_MIX``. Likes and forks go to the pre-owned entities, by popularity."""
    rng = random.Random(seed)
    actions = [name for name, _ in GAIN_MIX]
    weights = [weight for _, weight in GAIN_MIX]
    characters = _popularity(OWNED_CHARACTERS)
    scenes = _popularity(OWNED_SCENES)
    users = list(range(count))
    rng.shuffle(users)
    awards = []
    for n, action in zip(users, rng.choices(actions, weights, k=count), strict=True):
        actor = f"{prefix}{n}"
        if action in ("create_character", "create_scene"):
            kind = action.removeprefix("create_")
            awards.append(Award(actor, action, kind, f"new-{kind}-{n}"))
        elif action == "character_liked":
            [character] = rng.choices(range(OWNED_CHARACTERS), cum_weights=characters)
            if owner_of_character(character) == actor:
                character = (character + 1) % OWNED_CHARACTERS
            awards.append(Award(actor, action, "character", f"c{character}"))
        elif action == "forked":
            [scene] = rng.choices(range(OWNED_SCENES), cum_weights=scenes)
            if owner_of_character(scene) == actor:
                scene = (scene + 1) % OWNED_SCENES
            awards.append(Award(actor, action, "scene", f"s{scene}"))
        else:
            awards.append(Award(actor, action))
    return awards


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
