"""Rules reload in a running app: validated first, swapped for the next request, today's counts
kept; a bad file keeps the old rules, says why once and counts it. A tier subscribers may hold
is never dropped, by a reload or a restart; ``retired = true`` takes it off sale."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import httpx2
import pytest
import redis
from prometheus_client import REGISTRY, generate_latest
from starlette.applications import Starlette

from api.app import create_app
from counters.clock import ManualClock
from counters.errors import ConfigError
from counters.redis.keys import SERVED_TIERS_KEY
from counters.settings import Settings
from tests.support.core import NOON, service_headers, user_headers
from tests.support.http import asgi_client
from tests.support.rules import DAILY_CHAT, default_text, write_rules
from tests.support.serve import refused_serve
from tests.support.xp import balance, subscribe

pytestmark = pytest.mark.anyio
CHAT = {"action": "daily_chat"}
TWICE = (DAILY_CHAT, DAILY_CHAT.replace("daily_limit = 1", "daily_limit = 2"))
RICHER = (DAILY_CHAT, DAILY_CHAT.replace("exp = 20", "exp = 25"))
BOTH = (DAILY_CHAT, "[exp.actions.daily_chat]\nexp = 25\ndaily_limit = 2\n")
DEARER = ("[xp.costs.NEW_IMAGE]\nxp = 12\n", "[xp.costs.NEW_IMAGE]\nxp = 13\n")
IMAGE = {"generation_type": "NEW_IMAGE"}
VIDEO_GEN = {"generation_type": "NEW_VIDEO"}
DAY = 86_400
# The arcade_artist block of the shipped rules, and game_master renumbered to fill its level.
ARCADE = re.search(r'\[\[xp\.tiers\]\]\nname = "arcade_artist"\n.*?\n\n', default_text(), re.S)
assert ARCADE is not None
WITHOUT_ARCADE = (
    (ARCADE.group(0), ""),
    ("level = 3\nprice_aud = 33", "level = 2\nprice_aud = 33"),
    ("arcade_artist = 80\n", ""),
)
RENAMED = (
    ('name = "arcade_artist"', 'name = "arcade_pro"'),
    ("arcade_artist = 80", "arcade_pro = 80"),
)
RETIRED = (("monthly_xp = 800\n", "monthly_xp = 800\nretired = true\n"),)


def reloads(result: str) -> float:
    return REGISTRY.get_sample_value("counters_rules_reloads_total", {"result": result}) or 0.0


@pytest.fixture
def rules_path(tmp_path: Path) -> Path:
    return write_rules(tmp_path / "rules.toml")


@pytest.fixture
async def app(settings: Settings, clock: ManualClock, rules_path: Path) -> AsyncIterator[Starlette]:
    app = create_app(replace(settings, rules=rules_path, rules_watch_seconds=0.05), clock=clock)
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def http(app: Starlette) -> AsyncIterator[httpx2.AsyncClient]:
    async with asgi_client(app) as client:
        yield client


async def version(http: httpx2.AsyncClient) -> str:
    body = (await http.get("/readyz")).json()
    assert isinstance(body["rules_version"], str)
    return body["rules_version"]


async def test_a_new_limit_applies_to_todays_counts_from_the_next_request(
    app: Starlette, http: httpx2.AsyncClient, rules_path: Path
) -> None:
    first = await http.post("/api/exp/gain", json=CHAT, headers=service_headers("u1"))
    refused = await http.post("/api/exp/gain", json=CHAT, headers=service_headers("u1"))
    assert (first.status_code, refused.status_code) == (200, 429)
    sub = {"tier": "pixel_rookie"}
    await http.put("/api/v1/subscriptions/u1", json=sub, headers=service_headers())
    before = await http.post("/api/v1/xp/debit", json=IMAGE, headers=service_headers("u1"))
    assert before.json()["xp_debited"] == 12
    old = await version(http)
    write_rules(rules_path, BOTH, DEARER)
    assert app.state.rules_reloader.reload() == "ok"
    after = await http.post("/api/v1/xp/debit", json=IMAGE, headers=service_headers("u1"))
    assert after.json()["xp_debited"] == 13 and after.json()["xp_balance"] == 600 - 12 - 13
    second = await http.post("/api/exp/gain", json=CHAT, headers=service_headers("u1"))
    assert second.status_code == 200
    body = second.json()
    # today's count (1) was kept: the raised limit allows exactly one more, worth the new reward
    assert (body["action_count"], body["action_limit"], body["exp_added"]) == (2, 2, 25)
    new = await version(http)
    assert new != old
    # what /metrics shows (the default registry): this worker serves the new version only
    exposed = generate_latest(REGISTRY).decode()
    assert f'counters_rules_version_info{{version="{new}"}} 1.0' in exposed
    assert f'version="{old}"' not in exposed
    limits = (await http.get("/api/exp/limits", headers=service_headers("u1"))).json()
    assert limits["action_limits"]["daily_chat"] == 2


async def test_a_bad_file_keeps_the_old_rules_and_says_so(
    app: Starlette, http: httpx2.AsyncClient, rules_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old = await version(http)
    invalid = reloads("invalid")
    rules_path.write_text(
        rules_path.read_text().replace("daily_limit = 1", "daily_limit = -1"), "utf-8"
    )
    assert app.state.rules_reloader.reload() == "invalid"
    assert reloads("invalid") == invalid + 1
    errors = [r for r in caplog.records if r.name == "counters.rules"]
    assert len(errors) == 1 and "daily_chat" in errors[0].getMessage()
    ready = (await http.get("/readyz")).json()
    assert ready["rules_version"] == old and "daily_chat" in ready["rules_reload_error"]
    again = await http.post("/api/exp/gain", json=CHAT, headers=service_headers("u2"))
    assert again.status_code == 200 and again.json()["action_limit"] == 1


async def test_a_template_with_a_format_spec_is_refused_not_served(
    app: Starlette, http: httpx2.AsyncClient, rules_path: Path
) -> None:
    """It used to pass validation and make check-xp and preview answer 500 for everyone."""
    old = await version(http)
    rules_path.write_text(
        rules_path.read_text().replace(
            "Need {xp_required} XP, have", "Need {xp_required:s} XP, have"
        ),
        "utf-8",
    )
    assert app.state.rules_reloader.reload() == "invalid"
    ready = (await http.get("/readyz")).json()
    assert ready["rules_version"] == old
    assert str(rules_path) in ready["rules_reload_error"]
    assert "xp.messages.sufficient" in ready["rules_reload_error"]
    assert "format spec" in ready["rules_reload_error"]
    check = await http.get("/api/v1/subscriptions/check-xp/NEW_IMAGE", headers=user_headers("u9"))
    assert check.status_code == 200, check.text
    preview = await http.post(
        "/api/v1/subscriptions/preview-generation-cost", json=IMAGE, headers=user_headers("u9")
    )
    assert preview.status_code == 200, preview.text


async def test_sighup_and_a_changed_file_reload(http: httpx2.AsyncClient, rules_path: Path) -> None:
    old = await version(http)
    write_rules(rules_path, TWICE)
    os.kill(os.getpid(), signal.SIGHUP)  # the app's handler runs on this event loop
    for _ in range(50):
        await asyncio.sleep(0.02)
        if await version(http) != old:
            break
    hup = await version(http)
    assert hup != old
    write_rules(rules_path, RICHER)  # picked up by the file watch (every 0.05 s here)
    os.utime(rules_path, (1, 1))  # a different mtime even within the clock's resolution
    for _ in range(50):
        await asyncio.sleep(0.02)
        if await version(http) != hup:
            break
    assert await version(http) not in (old, hup)


def touch(rules_path: Path, mtime: int) -> None:
    """Give the file its own mtime, so the file watch (every 0.05 s here) notices a change even
    within the clock's resolution."""
    os.utime(rules_path, (mtime, mtime))


async def test_a_file_that_is_not_utf8_is_refused_and_the_watch_takes_the_next_valid_one(
    app: Starlette, http: httpx2.AsyncClient, rules_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The decode error used to end the watch task silently (no log, no metric, no
    ``rules_reload_error``), and the file was never reloaded again (reviewer helper-66)."""
    old = await version(http)
    invalid = reloads("invalid")
    rules_path.write_bytes(b"\xff\xfe")
    touch(rules_path, 1)
    for _ in range(100):
        await asyncio.sleep(0.02)
        if reloads("invalid") > invalid:
            break
    assert reloads("invalid") == invalid + 1
    errors = [r.getMessage() for r in caplog.records if r.name == "counters.rules"]
    assert len(errors) == 1 and f"{rules_path}: not valid UTF-8 at byte 0" in errors[0]
    ready = (await http.get("/readyz")).json()
    assert ready["rules_version"] == old
    assert ready["rules_reload_error"] == f"{rules_path}: not valid UTF-8 at byte 0" + (
        " (invalid start byte); a TOML file is UTF-8"
    )
    assert app.state.rules_reloader.reload() == "invalid"  # SIGHUP's path: no traceback either
    touch(write_rules(rules_path, TWICE), 2)
    for _ in range(100):
        await asyncio.sleep(0.02)
        if await version(http) != old:
            break
    ready = (await http.get("/readyz")).json()
    assert ready["rules_version"] != old and "rules_reload_error" not in ready


async def test_an_unexpected_error_in_a_reload_is_logged_and_counted_and_the_watch_goes_on(
    http: httpx2.AsyncClient, rules_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """An exception a reload does not expect (a bug) ended the watch task silently, and made
    SIGHUP's an asyncio "Exception in callback" traceback (reviewer helper-66)."""
    old = await version(http)
    errors = reloads("error")

    def broken(text: str, source: str) -> object:
        raise RuntimeError("a bug")

    monkeypatch.setattr("counters.runtime.reload.parse_rules", broken)
    os.kill(os.getpid(), signal.SIGHUP)
    touch(rules_path, 1)
    for _ in range(100):
        await asyncio.sleep(0.02)
        if reloads("error") >= errors + 2:
            break
    assert reloads("error") == errors + 2  # SIGHUP's, and the watch's
    failed = [r for r in caplog.records if r.name == "counters.rules"]
    assert len(failed) == 2 and all(r.exc_info and r.exc_info[0] is RuntimeError for r in failed)
    ready = (await http.get("/readyz")).json()
    assert ready["rules_version"] == old and "RuntimeError('a bug')" in ready["rules_reload_error"]
    monkeypatch.undo()
    touch(write_rules(rules_path, TWICE), 2)
    for _ in range(100):
        await asyncio.sleep(0.02)
        if await version(http) != old:
            break
    assert await version(http) != old


async def test_comments_do_not_change_the_version(
    app: Starlette, http: httpx2.AsyncClient, rules_path: Path
) -> None:
    old = await version(http)
    rules_path.write_text("# a comment\n" + rules_path.read_text(), "utf-8")
    assert app.state.rules_reloader.reload() == "unchanged"
    assert await version(http) == old


async def test_the_progress_block_follows_a_reload(
    app: Starlette, http: httpx2.AsyncClient, rules_path: Path
) -> None:
    """The progress blocks kept by total EXP (ExpService.progress) go with the old rules."""
    before = await http.get("/api/exp/progress", headers=service_headers("u1"))
    assert before.json()["progress"]["level_name"] == "Newbie"
    write_rules(rules_path, ('name = "Newbie"', 'name = "Rookie"'))
    assert app.state.rules_reloader.reload() == "ok"
    after = await http.get("/api/exp/progress", headers=service_headers("u1"))
    assert after.json()["progress"] == before.json()["progress"] | {"level_name": "Rookie"}


@pytest.mark.parametrize("change", [WITHOUT_ARCADE, RENAMED], ids=["removed", "renamed"])
async def test_a_reload_that_drops_a_held_tier_is_refused(
    app: Starlette, http: httpx2.AsyncClient, rules_path: Path, change: tuple[tuple[str, str]]
) -> None:
    """The attack (FINDINGS F3): arcade_artist dropped under its subscriber, who then was
    "upgraded" from nothing twice in one period (+600, +720)."""
    await subscribe(http, "u1", "arcade_artist")
    assert (await http.post("/api/v1/xp/debit", json=VIDEO_GEN, headers=user_headers("u1"))).json()[
        "xp_balance"
    ] == 800 - 15
    old = (await http.get("/readyz")).json()["rules_version"]
    invalid = reloads("invalid")
    write_rules(rules_path, *change)
    assert app.state.rules_reloader.reload() == "invalid"
    assert reloads("invalid") == invalid + 1
    ready = (await http.get("/readyz")).json()
    assert ready["rules_version"] == old
    assert "arcade_artist" in ready["rules_reload_error"]
    assert "retired = true" in ready["rules_reload_error"]
    held = await balance(http, "u1")
    arcade = {"tier_name": "arcade_artist", "tier_display_name": "Arcade Artist", "tier_level": 2}
    assert held["current_tier"] == arcade
    # pixel_rookie is a downgrade at renewal, not a second allocation
    lower = await subscribe(http, "u1", "pixel_rookie")
    assert (lower["change"], lower["xp_balance"]) == ("downgrade_scheduled", 785)


async def test_a_retired_tier_takes_no_new_subscribers_and_keeps_its_own(
    app: Starlette, http: httpx2.AsyncClient, rules_path: Path, clock: ManualClock
) -> None:
    await subscribe(http, "u1", "arcade_artist")
    write_rules(rules_path, *RETIRED)
    assert app.state.rules_reloader.reload() == "ok"
    refused = await http.put(
        "/api/v1/subscriptions/u2", json={"tier": "arcade_artist"}, headers=service_headers()
    )
    assert refused.status_code == 422
    assert refused.json()["code"] == "tier_retired"
    assert "pixel_rookie, game_master" in refused.json()["detail"]
    assert (await balance(http, "u2"))["current_tier"] is None  # nothing changed
    tiers = (await http.get("/api/v1/subscriptions/tiers")).json()
    assert sorted(tiers) == ["game_master", "pixel_rookie"]
    # never recommended: a rookie short of video is pointed at game_master
    await subscribe(http, "u3", "pixel_rookie")
    check = await http.get(
        "/api/v1/subscriptions/check-xp/NEW_VIDEO?include_guidance=true", headers=user_headers("u3")
    )
    assert "Game Master" in check.json()["guidance"] and "Arcade" not in check.json()["guidance"]
    # its subscriber debits, and renews with its allocation a month later
    debit = await http.post("/api/v1/xp/debit", json=VIDEO_GEN, headers=user_headers("u1"))
    assert debit.status_code == 200 and debit.json()["xp_balance"] == 785
    clock.at = NOON + 31 * DAY
    renewed = await balance(http, "u1")
    assert renewed["xp_balance"] == 800
    assert renewed["current_tier"]["tier_name"] == "arcade_artist"  # type: ignore[index]


async def test_a_start_without_a_tier_served_before_does_not_start(
    app: Starlette, http: httpx2.AsyncClient, settings: Settings, clock: ManualClock, tmp_path: Path
) -> None:
    """Across a restart the running rules are gone: the tiers served are recorded in Redis."""
    await subscribe(http, "u1", "arcade_artist")
    dropped = write_rules(tmp_path / "dropped.toml", *WITHOUT_ARCADE)
    restart = create_app(replace(settings, rules=dropped), clock=clock)
    with pytest.raises(ConfigError, match="arcade_artist removed or renamed"):
        async with restart.router.lifespan_context(restart):
            pass
    retired = write_rules(tmp_path / "retired.toml", *RETIRED)
    again = create_app(replace(settings, rules=retired), clock=clock)
    async with again.router.lifespan_context(again), asgi_client(again) as client:
        assert (await balance(client, "u1"))["xp_balance"] == 800


def test_serve_refuses_rules_without_a_served_tier_in_one_line(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """As for a contradicting bucket count: exit 2 and one line, before any worker starts."""
    redis_client.sadd(SERVED_TIERS_KEY, "pixel_rookie", "arcade_artist", "game_master")
    dropped = write_rules(tmp_path / "dropped.toml", *WITHOUT_ARCADE)
    refused = refused_serve(settings.redis_url or "", tmp_path, COUNTERS_RULES=str(dropped))
    assert refused.exit_code == 2, refused.output
    assert "arcade_artist removed or renamed" in refused.output
    assert "Traceback" not in refused.output
