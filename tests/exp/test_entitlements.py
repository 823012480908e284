"""Entitlements from levels (issue #14): the rules' grants, the two routes, the level-up reply."""

from __future__ import annotations

import re

import httpx2
import pytest

from api.app import create_app
from counters.clock import ManualClock
from counters.errors import RulesError
from counters.rules import load_rules, parse_rules
from counters.settings import Settings
from tests.exp.test_rules import DEFAULTS
from tests.support.core import service_headers, user_headers

SEED_FEATURES = {
    "create_characters": 1, "create_scenes": 1, "create_personas": 1, "fork": 2,
    "private_characters": 2, "paid_characters": 3, "basic_analytics": 3, "prompt_controls": 4,
    "featured_chance": 5, "beta_tools": 5, "creator_badge": 6, "early_revenue_tools": 6,
}  # fmt: skip


def test_the_default_grants_are_the_seed_unlocks() -> None:
    rules = load_rules().entitlements
    assert {name: grants[0].level for name, grants in rules.features.items()} == SEED_FEATURES
    paid = [(g.level, g.quantity) for g in rules.features["paid_characters"]]
    assert paid == [(3, 1), (4, 2)]  # "1 paid char" at level 3, "2 paid chars" at level 4
    assert rules.unlocked_between(1, 2) == ["fork", "private_characters"]
    assert rules.unlocked_between(3, 4) == ["paid_characters", "prompt_controls"]
    assert rules.unlocked_between(4, 4) == []


@pytest.mark.parametrize(
    ("grants", "error"),
    [
        ('feature = "x"\nlevel = 7', "entitlements.grants[0]: level 7 does not exist (1-6)"),
        ('feature = "x"\nlevel = 2\n[[entitlements.grants]]\nfeature = "x"\nlevel = 2',
         "two grants at the same level"),
        ('feature = "x"\nlevel = 2\nquantity = 1\n[[entitlements.grants]]\nfeature = "x"\n'
         "level = 3", "give a quantity on every grant of a feature, or none"),
        ('feature = "x"\nlevel = 2\nquantity = 2\n[[entitlements.grants]]\nfeature = "x"\n'
         "level = 3\nquantity = 2", "a later grant must raise the quantity"),
        ('feature = "Bad-Name"\nlevel = 2', "Expected `str` matching regex"),
    ],
)  # fmt: skip
def test_bad_grants_name_the_entry(grants: str, error: str) -> None:
    base = DEFAULTS.split("[[entitlements.grants]]")[0]
    with pytest.raises(RulesError, match=re.escape(error)):
        parse_rules(f"{base}[[entitlements.grants]]\n{grants}\n")


def test_low_balance_thresholds_name_known_tiers() -> None:
    text = DEFAULTS.replace("game_master = 130", "platinum = 5")
    with pytest.raises(RulesError, match=r"webhooks\.low_balance: unknown tier"):
        parse_rules(text)


@pytest.mark.anyio
async def test_entitlements_follow_the_level(client: httpx2.AsyncClient) -> None:
    fresh = await client.get("/api/exp/entitlements", headers=user_headers("u1"))
    assert fresh.status_code == 200
    body = fresh.json()
    assert (body["user_id"], body["level"]) == ("u1", 1)
    by_name = {e["feature"]: e for e in body["entitlements"]}
    assert set(by_name) == set(SEED_FEATURES)
    assert by_name["create_characters"] == {
        "feature": "create_characters", "allowed": True, "quantity": None, "unlock_level": 1,
        "next_level": None,
    }  # fmt: skip
    assert by_name["paid_characters"] == {
        "feature": "paid_characters", "allowed": False, "quantity": 0, "unlock_level": 3,
        "next_level": 3,
    }  # fmt: skip
    adjust = {"user_id": "u1", "delta": 300, "reason": "to level 3"}
    await client.post("/api/admin/exp/adjust", json=adjust, headers=service_headers())
    paid = await client.get("/api/exp/entitlements/paid_characters", headers=user_headers("u1"))
    assert paid.json() == {
        "user_id": "u1", "level": 3, "feature": "paid_characters", "allowed": True,
        "quantity": 1, "unlock_level": 3, "next_level": 4,
    }  # fmt: skip
    # A service asks for a user, as a generation server would before a paid character.
    forked = await client.get("/api/exp/entitlements/fork", headers=service_headers("u1"))
    assert (forked.json()["allowed"], forked.json()["quantity"]) == (True, None)
    beta = await client.get("/api/exp/entitlements/beta_tools", headers=service_headers("u1"))
    assert (beta.json()["allowed"], beta.json()["unlock_level"]) == (False, 5)


@pytest.mark.anyio
async def test_unknown_feature_and_no_auth(client: httpx2.AsyncClient) -> None:
    unknown = await client.get("/api/exp/entitlements/teleport", headers=user_headers("u1"))
    assert unknown.status_code == 404
    assert unknown.json()["detail"].startswith("Unknown feature 'teleport'; known features: ")
    long = await client.get("/api/exp/entitlements/" + "x" * 5000, headers=user_headers("u1"))
    assert long.status_code == 404 and len(long.json()["detail"]) < 500  # quoted, not echoed
    assert "(4" in long.json()["detail"] and "more characters)" in long.json()["detail"]
    assert (await client.get("/api/exp/entitlements")).status_code == 401


@pytest.mark.anyio
async def test_a_level_up_reply_lists_what_it_unlocked(client: httpx2.AsyncClient) -> None:
    adjust = {"user_id": "u2", "delta": 90, "reason": "near level 2"}
    await client.post("/api/admin/exp/adjust", json=adjust, headers=service_headers())
    chat = await client.post(
        "/api/exp/gain", json={"action": "daily_chat"}, headers=user_headers("u2")
    )
    body = chat.json()
    assert (body["leveled_up"], body["level"]) == (True, 2)
    assert body["unlocked_features"] == ["fork", "private_characters"]
    again = await client.post(
        "/api/exp/gain", json={"action": "create_scene"}, headers=user_headers("u2")
    )
    assert (again.json()["leveled_up"], again.json()["unlocked_features"]) == (False, [])


@pytest.mark.anyio
async def test_a_rules_reload_changes_entitlements_at_once(
    settings: Settings, clock: ManualClock
) -> None:
    app = create_app(settings, clock=clock)
    async with app.router.lifespan_context(app):
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://counters") as http:
            url = "/api/exp/entitlements/paid_characters"
            before = (await http.get(url, headers=user_headers("r1"))).json()
            cheaper = DEFAULTS.replace(
                'feature = "paid_characters"\nlevel = 3', 'feature = "paid_characters"\nlevel = 1'
            )
            app.state.services.use_rules(parse_rules(cheaper))
            after = (await http.get(url, headers=user_headers("r1"))).json()
    assert (before["allowed"], after["allowed"], after["quantity"]) == (False, True, 1)
