"""counters_client against a real `counters serve`: typed results, exceptions by code, awards
that fail open, debits that fail closed, retried writes applied once, the seed's helpers and
its tier-permissions middleware."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import time
import uuid
from pathlib import Path
from types import ModuleType

import httpx2
import pytest

from counters.cli.embedded import free_port
from counters.xp import guidance as server_guidance
from counters_client import (
    AsyncCountersClient,
    CountersClient,
    DailyLimitReached,
    InsufficientXp,
    SelfAction,
    TierRequired,
    Unauthorized,
    Unavailable,
    format_xp_guidance_message,
    xp_utils,
)
from counters_client.types import Award
from tests.support.core import SERVICE_KEY, issue_token_for

pytestmark = pytest.mark.anyio
EXAMPLE = Path(__file__).resolve().parents[2] / "clients" / "python" / "examples" / "app.py"


def new_user() -> str:
    return f"pc-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def counters(live_url: str, redis_url: str) -> AsyncCountersClient:
    async with AsyncCountersClient(live_url, service_key=SERVICE_KEY) as client:
        yield client  # type: ignore[misc]


async def test_an_award_is_typed_and_a_refusal_raises_by_code(
    counters: AsyncCountersClient,
) -> None:
    user = new_user()
    award = await counters.award("daily_chat", user_id=user)
    assert isinstance(award, Award)
    assert (award.awarded_to, award.exp_added, award.progress.level_name) == (user, 20, "Newbie")
    with pytest.raises(DailyLimitReached) as refused:
        await counters.award("daily_chat", user_id=user)
    assert refused.value.status == 429 and refused.value.code == "daily_limit_reached"
    assert refused.value.detail == "Daily limit reached for daily_chat (1/day)"
    assert refused.value.retry_after is not None and refused.value.retry_after > 0
    # The seed's name fails open: nothing awarded is None, not an exception.
    assert await counters.award_exp_with_limits(user, "daily_chat") is None


async def test_a_user_token_acts_as_its_user(
    live_url: str, redis_url: str, counters: AsyncCountersClient
) -> None:
    user = new_user()
    # Only a service records who created an entity; the user's token then acts as its owner.
    await counters.award("create_character", user_id=user, target=("character", f"c-{user}"))
    async with AsyncCountersClient(live_url, token=issue_token_for(user)) as client:
        assert (await client.progress()).total_exp == 30
        award = await client.award("daily_chat")
        assert award.awarded_to == user
        with pytest.raises(SelfAction):
            await client.award("character_liked", target=("character", f"c-{user}"))
        assert (await client.progress()).total_exp == 50


async def test_when_the_service_is_down_awards_fail_open_and_debits_fail_closed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    async with AsyncCountersClient(dead, service_key="k", timeout=0.5, backoff=0.01) as client:
        with caplog.at_level(logging.WARNING, "counters_client"):
            assert await client.award_exp_with_limits("u1", "daily_chat") is None
        assert "no EXP for daily_chat by u1" in caplog.text
        with pytest.raises(Unavailable):
            await client.debit("NEW_IMAGE", user_id="u1")
        check = await client.check_xp_availability("u1", "NEW_IMAGE")
        assert "check-xp NEW_IMAGE for u1" in caplog.text
        assert check["has_sufficient_xp"] is False
        assert check["subscription_url"] == "/subscriptions"
        assert check["guidance"] and check["code"] == "unavailable"
    strict = AsyncCountersClient(dead, service_key="k", retries=0, exp_fail_open=False)
    with pytest.raises(Unavailable):
        await strict.award_exp_with_limits("u1", "daily_chat")
    await strict.aclose()


async def test_a_stalled_service_costs_a_call_its_deadline_not_every_retry() -> None:
    """A service that accepts connections and never answers (stopped, or a black hole): the
    call gives up at its deadline. Per-attempt timeouts alone would let 1 + retries attempts
    each wait the full timeout (6 attempts x 0.4 s here)."""
    requests: list[bytes] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests.append(await reader.readuntil(b"\r\n\r\n"))
        await reader.read()  # never answers; returns when the client hangs up
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    async with AsyncCountersClient(
        url, service_key="k", timeout=0.4, retries=5, backoff=0.01, deadline=1.0
    ) as client:
        started = time.monotonic()
        with pytest.raises(Unavailable):
            await client.debit("NEW_IMAGE", user_id="u1")
        elapsed = time.monotonic() - started
    server.close()
    await server.wait_closed()
    assert 2 <= len(requests) <= 3, requests  # 0.4 + 0.4 + what is left of the 1.0 s
    assert elapsed < 3.0  # generous: the point is 1 s, not 6 x 0.4 s + backoff
    with pytest.raises(ValueError, match="timeout and deadline"):
        AsyncCountersClient(url, service_key="k", timeout=2.0, deadline=1.0)


async def test_a_refused_service_key_is_raised_even_by_fail_open_awards(live_url: str) -> None:
    """A bad service key is the deployment's mistake, not an outage: swallowed like one, every
    award would be lost with only a warning in a log."""
    async with AsyncCountersClient(live_url, service_key="not-the-key") as client:
        with pytest.raises(Unauthorized):
            await client.award_exp_with_limits(new_user(), "daily_chat")
    with (
        CountersClient(live_url, service_key="not-the-key") as sync_client,
        pytest.raises(Unauthorized),
    ):
        sync_client.award_exp_with_limits(new_user(), "daily_chat")


class LoseFirstAnswer(httpx2.AsyncBaseTransport):
    """Sends every request, but the first answer is lost on the way back (a read timeout)."""

    def __init__(self) -> None:
        self.inner = httpx2.AsyncHTTPTransport()
        self.sent: list[httpx2.Request] = []

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        self.sent.append(request)
        response = await self.inner.handle_async_request(request)
        if len(self.sent) == 1:
            await response.aread()
            raise httpx2.ReadTimeout("answer lost", request=request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_retried_debit_is_applied_once(live_url: str, redis_url: str) -> None:
    user = new_user()
    transport = LoseFirstAnswer()
    async with AsyncCountersClient(
        live_url, service_key=SERVICE_KEY, transport=transport, backoff=0.01
    ) as client:
        await client.set_subscription(user, "pixel_rookie")
        transport.sent.clear()
        debit = await client.debit("NEW_IMAGE", user_id=user)
        keys = [r.headers["idempotency-key"] for r in transport.sent]
        assert len(keys) == 2 and keys[0] == keys[1]  # one key for both attempts
        assert debit.xp_balance == 600 - 12
        assert (await client.balance(user)).xp_balance == 600 - 12  # applied once


async def test_insufficient_xp_carries_the_numbers(counters: AsyncCountersClient) -> None:
    user = new_user()
    await counters.set_subscription(user, "arcade_artist")  # 800 XP
    for _ in range(5):
        await counters.debit("IMAGE_TO_VIDEO", user_id=user)  # 150 each
    with pytest.raises(InsufficientXp) as short:
        await counters.debit("IMAGE_TO_VIDEO", user_id=user)
    assert (short.value.xp_balance, short.value.xp_required, short.value.xp_deficit) == (
        50,
        150,
        100,
    )
    assert short.value.status == 402 and short.value.guidance
    with pytest.raises(TierRequired):
        await counters.hold("NEW_IMAGE", user_id=new_user())  # no subscription


async def test_the_seeds_helpers(counters: AsyncCountersClient) -> None:
    assert await counters.get_generation_cost("NEW_IMAGE", user_tier=1) == 12
    assert await counters.get_generation_cost("NEW_VIDEO_WITH_AUDIO", "Game Master") == 720
    xp_utils.configure(counters)
    assert await xp_utils.get_generation_cost("EDIT_IMAGE") == 9
    user = new_user()
    await counters.set_subscription(user, "pixel_rookie")
    simple = await xp_utils.check_user_xp_for_generation(user, "NEW_IMAGE")
    assert simple["has_sufficient_xp"] is True and "guidance" not in simple
    unknown = await counters.check_xp_availability(user, "NO_SUCH_TYPE")
    assert (unknown["has_sufficient_xp"], unknown["code"]) == (False, "not_found")
    full = await counters.check_xp_availability(user, "NEW_VIDEO")
    assert full["has_sufficient_xp"] is False
    assert full["recommended_tier"] and full["recommended_tier"]["tier_name"] == "arcade_artist"


@pytest.mark.parametrize("has_xp", [True, False])
@pytest.mark.parametrize("balance", [0, 5, 700])
@pytest.mark.parametrize("required", [12, 720, 1500])
@pytest.mark.parametrize("tier", [None, "Pixel Rookie", "Arcade Artist", "Game Master"])
def test_format_xp_guidance_message_says_what_the_service_says(
    has_xp: bool, balance: int, required: int, tier: str | None
) -> None:
    ours = format_xp_guidance_message(has_xp, balance, required, tier)
    theirs = server_guidance.format_xp_guidance_message(has_xp, balance, required, tier)
    assert ours == theirs


def test_the_seed_example_guidance() -> None:
    assert format_xp_guidance_message(False, 5, 12, "Pixel Rookie") == (
        "⚡ You need 7 more XP credits. 💎 Upgrade your tier or wait for your monthly XP refresh "
        "to continue creating. 🎯 Recommended: Arcade Artist (A$20/month) gives you 800 XP "
        "monthly!"
    )


def test_the_sync_client(live_url: str, redis_url: str) -> None:
    user = new_user()
    with CountersClient(live_url, service_key=SERVICE_KEY) as client:
        client.set_subscription(user, "pixel_rookie")
        hold = client.hold("NEW_IMAGE", user_id=user)
        capture = client.capture(hold.hold_id, 10, user_id=user)
        assert (capture.xp_captured, capture.xp_released) == (10, 2)
        assert client.award_exp_with_limits(user, "daily_chat") is not None
        assert client.award_exp_with_limits(user, "daily_chat") is None
        assert client.check_xp_availability(user, "NEW_IMAGE")["xp_balance"] == 590
        assert client.get_generation_cost("NEW_IMAGE") == 12


def example_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("counters_example_app", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_the_example_apps_tier_gate_answers_the_seeds_402(
    counters: AsyncCountersClient,
) -> None:
    app = example_module().create_example_app(counters)
    user = new_user()
    await counters.set_subscription(user, "pixel_rookie")
    transport = httpx2.ASGITransport(app=app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://example") as http:
        ok = await http.post("/generate/NEW_IMAGE", headers={"X-User-Id": user})
        assert ok.status_code == 200
        assert ok.json() == {
            "generated": "NEW_IMAGE", "xp_required": 12, "xp_debited": 12, "xp_balance": 588,
        }  # fmt: skip
        refused = await http.post("/generate/NEW_VIDEO", headers={"X-User-Id": user})
        assert refused.status_code == 402
        assert refused.json() == {
            "error": "insufficient_xp",
            "message": "NEW_VIDEO is not included in Pixel Rookie.",
            "guidance": "🔒 NEW_VIDEO is not included in Pixel Rookie. 💎 Upgrade your tier to "
            "unlock it. 🎯 Recommended: Arcade Artist (A$20/month) gives you 800 XP monthly!",
            "subscription_url": "/subscriptions",
            "recommended_tier": {
                "tier_name": "arcade_artist",
                "tier_display_name": "Arcade Artist",
                "tier_level": 2,
                "monthly_xp_allocation": 800,
                "monthly_price_aud": 20,
            },
        }
        chat = await http.post("/chat", headers={"X-User-Id": user})
        assert chat.json() == {"reply": "hello!", "exp_added": 20}
        for path in ("/chat", "/generate/NEW_IMAGE"):  # no user: a 401, not a 500
            anonymous = await http.post(path)
            assert anonymous.status_code == 401, anonymous.text


def test_sync_refunds_and_limits(live_url: str, redis_url: str) -> None:
    user = new_user()
    with CountersClient(live_url, service_key=SERVICE_KEY) as client:
        client.set_subscription(user, "pixel_rookie")
        debit = client.debit("EDIT_IMAGE", user_id=user)
        refund = client.refund(debit.transaction_id, user_id=user)
        assert (refund.xp_refunded, refund.xp_balance) == (9, 600)
        client.award("daily_chat", user_id=user)
        limits = client.limits(user)
        assert (limits.daily_exp_gained, limits.daily_action_counts) == (20, {"daily_chat": 1})
        assert client.check_user_xp_for_generation(user, "NEW_IMAGE")["has_sufficient_xp"]
