"""Who a load run acts as, and what it awards: shared by ``counters loadtest`` and ``make bench``.

A population is N distinct users ``<prefix><n>`` and the characters and scenes that exist before
the run (every tenth user owns some), liked and forked by popularity (Zipf, s = 1.1: a few
entities get most likes and forks, as on any platform, and as an owner cache sees it).
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

# (action, weight): what a chat server's traffic looks like, mostly the daily chat award.
GAIN_MIX: tuple[tuple[str, int], ...] = (
    ("daily_chat", 50),
    ("create_character", 5),
    ("create_scene", 5),
    ("character_liked", 25),
    ("forked", 15),
)
_ZIPF = 1.1


@dataclass(frozen=True, slots=True)
class Award:
    """One award request: who triggers it (the actor), the action and its target."""

    user_id: str
    action: str
    target_type: str | None = None
    target_id: str | None = None

    def body(self) -> dict[str, str]:
        """The JSON body of ``POST /api/exp/gain``."""
        body = {"action": self.action}
        if self.target_type is not None and self.target_id is not None:
            body |= {"target_type": self.target_type, "target_id": self.target_id}
        return body


@dataclass(frozen=True, slots=True)
class Population:
    """``users`` distinct users named ``<prefix><n>``; ``characters`` and ``scenes`` pre-owned
    entities, ids ``<entity_prefix>c<n>`` and ``<entity_prefix>s<n>``."""

    prefix: str
    users: int
    characters: int
    scenes: int
    entity_prefix: str = ""

    def user(self, n: int) -> str:
        return f"{self.prefix}{n}"

    def owner(self, n: int) -> str:
        """Pre-owned characters and scenes belong to every tenth user."""
        return self.user(n * 10 % self.users)

    def owned_entities(self) -> list[tuple[str, str, str]]:
        """(type, id, owner) of the entities that exist before the run."""
        e = self.entity_prefix
        characters = [("character", f"{e}c{n}", self.owner(n)) for n in range(self.characters)]
        scenes = [("scene", f"{e}s{n}", self.owner(n)) for n in range(self.scenes)]
        return characters + scenes

    def gain_awards(
        self,
        count: int | None = None,
        seed: int = 5,
        actor_prefix: str | None = None,
        mix: tuple[tuple[str, int], ...] = GAIN_MIX,
    ) -> list[Award]:
        """``count`` awards (default: one per user), one per distinct actor
        ``<actor_prefix><n>`` in a seeded order, with the actions of ``mix``. Likes and forks go
        to the pre-owned entities, by popularity; creations name a new entity each."""
        count = self.users if count is None else count
        prefix = self.prefix if actor_prefix is None else actor_prefix
        rng = random.Random(seed)
        actions = [name for name, _ in mix]
        weights = [weight for _, weight in mix]
        characters = _popularity(self.characters)
        scenes = _popularity(self.scenes)
        e = self.entity_prefix
        users = list(range(count))
        rng.shuffle(users)
        awards = []
        for n, action in zip(users, rng.choices(actions, weights, k=count), strict=True):
            actor = f"{prefix}{n}"
            if action in ("create_character", "create_scene", "create_persona"):
                kind = action.removeprefix("create_")
                awards.append(Award(actor, action, kind, f"{e}new-{kind}-{n}"))
            elif action == "character_liked":
                [character] = rng.choices(range(self.characters), cum_weights=characters)
                if self.owner(character) == actor:
                    character = (character + 1) % self.characters
                awards.append(Award(actor, action, "character", f"{e}c{character}"))
            elif action == "forked":
                [scene] = rng.choices(range(self.scenes), cum_weights=scenes)
                if self.owner(scene) == actor:
                    scene = (scene + 1) % self.scenes
                awards.append(Award(actor, action, "scene", f"{e}s{scene}"))
            else:
                awards.append(Award(actor, action))
        return awards


def _popularity(count: int) -> list[float]:
    """Cumulative Zipf weights of ``count`` entities by rank."""
    return list(itertools.accumulate(1 / (rank + 1) ** _ZIPF for rank in range(count)))
