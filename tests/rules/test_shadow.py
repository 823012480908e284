"""Shadow mode: a limit, a cap or a tier gate marked ``shadow = true`` counts what it would
refuse (a metric and ``shadow_refused`` in the reply) and refuses nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import httpx2
import pytest
from prometheus_client import REGISTRY

from api.app import create_app
from counters import metrics
from counters.clock import ManualClock
from counters.settings import Settings
from tests.support.core import service_headers, user_headers
from tests.support.http import asgi_client
from tests.support.rules import DAILY_CHAT, LOW_CAP, ROOKIE, write_rules

pytestmark = pytest.mark.anyio

SHADOWED = (
    (DAILY_CHAT, DAILY_CHAT + "shadow = true\n"),
    (LOW_CAP, LOW_CAP + "shadow = true\n"),
    (ROOKIE, ROOKIE + "shadow = true\n"),
)
SHORT = "Insufficient credits. Need 720 XP, have 600 XP (120 XP short)."


def refused(rule: str, name: str) -> float:
    metrics.flush()  # per-request counts are batched until then (counters.metrics)
    value = REGISTRY.get_sample_value("counters_shadow_refused_total", {"rule": rule, "name": name})
    return value or 0.0


@pytest.fixture
async def shadow_client(
    settings: Settings, clock: ManualClock, tmp_path: Path
) -> AsyncIterator[httpx2.AsyncClient]:
    path = write_rules(tmp_path / "rules.toml", *SHADOWED)
    app = create_app(replace(settings, rules=path, rules_watch_seconds=0), clock=clock)
    async with app.router.lifespan_context(app), asgi_client(app) as http:
        yield http


async def test_a_shadow_action_limit_counts_without_refusing(
    shadow_client: httpx2.AsyncClient,
) -> None:
    before = refused("daily_limit", "daily_chat")
    chat = {"action": "daily_chat"}
    first = await shadow_client.post("/api/exp/gain", json=chat, headers=service_headers("u1"))
    assert first.status_code == 200 and "shadow_refused" not in first.json()
    second = await shadow_client.post("/api/exp/gain", json=chat, headers=service_headers("u1"))
    assert second.status_code == 200
    body = second.json()
    assert (body["shadow_refused"], body["action_count"], body["total_exp"]) == (
        "daily_limit", 2, 40,
    )  # fmt: skip
    assert refused("daily_limit", "daily_chat") == before + 1


async def test_one_refusal_is_reported_per_award(
    shadow_client: httpx2.AsyncClient,
) -> None:
    before = refused("daily_cap", "level_1")
    # daily_chat (shadowed limit, 20 EXP) seven times: 140 EXP, under the level-1 cap of 150
    for _ in range(7):
        await shadow_client.post(
            "/api/exp/gain", json={"action": "daily_chat"}, headers=service_headers("u2")
        )
    crossing = await shadow_client.post(
        "/api/exp/gain", json={"action": "daily_chat"}, headers=service_headers("u2")
    )
    body = crossing.json()
    assert crossing.status_code == 200
    # Enforced, the cap would have given 10 of the 20; in shadow mode all 20 are awarded.
    assert (body["exp_added"], body["daily_exp_gained"], body["daily_exp_cap"]) == (20, 160, 150)
    assert body["shadow_refused"] == "daily_limit"  # the action's limit is reported first
    assert refused("daily_cap", "level_1") == before  # one refusal is reported per award


async def test_a_shadow_cap_alone_is_reported(
    settings: Settings, clock: ManualClock, tmp_path: Path
) -> None:
    path = write_rules(tmp_path / "rules.toml", (LOW_CAP, LOW_CAP + "shadow = true\n"))
    app = create_app(replace(settings, rules=path, rules_watch_seconds=0), clock=clock)
    before = refused("daily_cap", "level_2")
    async with app.router.lifespan_context(app), asgi_client(app) as http:
        scene = {"action": "create_scene", "target_type": "scene", "target_id": "s1"}
        await http.post("/api/exp/gain", json=scene, headers=service_headers("owner"))
        fork = {"action": "forked", "target_type": "scene", "target_id": "s1"}  # 10, no limit
        replies = [
            await http.post("/api/exp/gain", json=fork, headers=service_headers(f"fan{n}"))
            for n in range(14)
        ]
    assert all(r.status_code == 200 for r in replies)
    last = replies[-1].json()
    # 15 + 13 x 10 = 145 today; enforced, the 14th fork would have added 5 (the cap is 150)
    assert (last["exp_added"], last["daily_exp_gained"], last["level"]) == (10, 155, 2)
    assert last["shadow_refused"] == "daily_cap"
    assert all("shadow_refused" not in r.json() for r in replies[:-1])
    assert refused("daily_cap", "level_2") == before + 1


async def test_a_shadow_tier_gate_charges_and_counts(shadow_client: httpx2.AsyncClient) -> None:
    before = refused("tier_gate", "pixel_rookie")
    response = await shadow_client.put(
        "/api/v1/subscriptions/u3", json={"tier": "pixel_rookie"}, headers=service_headers()
    )
    assert response.status_code == 200, response.text
    video = await shadow_client.post(
        "/api/v1/xp/debit", json={"generation_type": "NEW_VIDEO"}, headers=service_headers("u3")
    )
    assert video.status_code == 200, video.text
    assert (video.json()["xp_debited"], video.json()["shadow_refused"]) == (15, "tier_gate")
    image = await shadow_client.post(
        "/api/v1/xp/debit", json={"generation_type": "NEW_IMAGE"}, headers=service_headers("u3")
    )
    assert image.status_code == 200 and "shadow_refused" not in image.json()
    assert refused("tier_gate", "pixel_rookie") == before + 1


async def test_a_shadow_tier_gate_short_of_xp_says_so(shadow_client: httpx2.AsyncClient) -> None:
    """A 402 for the balance describes the balance (as the debit charges the base cost), not
    the gate that is only watched; it names the gate that would have refused it first."""
    before = refused("tier_gate", "pixel_rookie")
    response = await shadow_client.put(
        "/api/v1/subscriptions/u4", json={"tier": "pixel_rookie"}, headers=service_headers()
    )
    assert response.status_code == 200 and response.json()["xp_balance"] == 600
    audio = {"generation_type": "NEW_VIDEO_WITH_AUDIO"}  # 720 XP, not allowed on pixel_rookie
    for path in ("/api/v1/xp/debit", "/api/v1/xp/holds"):
        short = await shadow_client.post(path, json=audio, headers=service_headers("u4"))
        assert short.status_code == 402, short.text
        body = short.json()
        assert (body["error"], body["code"], body["xp_deficit"]) == (
            "insufficient_xp", "insufficient_xp", 120,
        )  # fmt: skip
        assert body["message"] == body["detail"] == SHORT
        assert body["guidance"].startswith("⚡ You need 120 more XP credits.")
        assert "not included" not in body["guidance"]
        assert body["shadow_refused"] == "tier_gate"
    assert refused("tier_gate", "pixel_rookie") == before + 2


async def test_check_and_preview_answer_what_a_shadow_gate_serves(
    shadow_client: httpx2.AsyncClient,
) -> None:
    """check-xp and preview say what the debit would do: a shadowed gate refuses nothing."""
    response = await shadow_client.put(
        "/api/v1/subscriptions/u5", json={"tier": "pixel_rookie"}, headers=service_headers()
    )
    assert response.status_code == 200, response.text
    before = refused("tier_gate", "pixel_rookie")
    check = await shadow_client.get(
        "/api/v1/subscriptions/check-xp/NEW_VIDEO_WITH_AUDIO?include_guidance=true",
        headers=user_headers("u5"),
    )
    assert check.status_code == 200, check.text
    body = check.json()
    assert (body["has_sufficient_xp"], body["xp_required"], body["message"]) == (False, 720, SHORT)
    assert body["guidance"].startswith("⚡ You need 120 more XP credits.")
    assert "shadow_refused" not in body
    preview = await shadow_client.post(
        "/api/v1/subscriptions/preview-generation-cost",
        json={"generation_type": "NEW_VIDEO"},
        headers=user_headers("u5"),
    )
    assert preview.status_code == 200, preview.text
    body = preview.json()
    assert (body["has_sufficient_xp"], body["tier_allows"], body["xp_balance_after"]) == (
        True, True, 585,
    )  # fmt: skip
    assert body["message"] == "Sufficient credits. Need 15 XP, have 600 XP."
    assert refused("tier_gate", "pixel_rookie") == before  # a check is not a request refused
